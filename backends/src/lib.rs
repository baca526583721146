//! # walspool-backends
//!
//! Storage backends and integrations for [walspool](https://docs.rs/walspool):
//!
//! * [`LocalDisk`]: one directory per WAL, segment files `{base_seq:020}.wal` (mode
//!   0600) in a directory of mode 0700, locked against a second writer.
//!
//! ```
//! use walspool_backends::LocalDisk;
//! use walspool_wal::{Options, Wal};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let wal = Wal::open(LocalDisk::open(dir.path())?, Options::default())?;
//! let seq = futures::executor::block_on(wal.append(&"hello"))?;
//! assert_eq!(seq, 1);
//! futures::executor::block_on(wal.close())?;
//! # Ok(())
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

#[cfg(feature = "object-store")]
#[cfg_attr(docsrs, doc(cfg(feature = "object-store")))]
pub mod archive;
#[cfg(any(feature = "nats", feature = "kafka"))]
mod broker_stats;
#[cfg(any(feature = "http", feature = "otlp"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "http", feature = "otlp"))))]
pub mod client;
pub mod file;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub mod kafka;
pub mod local;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
#[cfg(feature = "otlp")]
#[cfg_attr(docsrs, doc(cfg(feature = "otlp")))]
pub mod otlp;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
pub mod redact;
#[cfg(any(feature = "http", feature = "otlp", feature = "postgres"))]
mod tls;

pub use local::LocalDisk;
