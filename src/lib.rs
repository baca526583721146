//! # walspool
//!
//! A durable, async, runtime-agnostic write-ahead log for the records a service must
//! never lose: audit events, operational logs, billing traces. Records are made durable
//! on local disk first, then shipped at-least-once to sinks, archived to S3-compatible
//! storage, and watched live from a terminal (`walspool top`).
//!
//! This crate re-exports [`walspool_wal`] (the engine) and [`walspool_backends`]
//! (storage backends and integrations).
//!
//! ```
//! use futures::StreamExt;
//! use serde::{Deserialize, Serialize};
//! use walspool::{Durability, LocalDisk, Options, Wal};
//!
//! #[derive(Debug, Serialize, Deserialize, PartialEq)]
//! struct AuditEvent { actor: String, action: String }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! futures::executor::block_on(async {
//!     let wal = Wal::open(
//!         LocalDisk::open(dir.path())?,
//!         Options::default().durability(Durability::Sync),
//!     )?;
//!     // Resolves once the record is fdatasync'd (group commit across appenders).
//!     let seq = wal
//!         .append(&AuditEvent { actor: "alice".into(), action: "login".into() })
//!         .await?;
//!
//!     // A named consumer with a durable checkpoint.
//!     let sink = wal.consumer("audit-sink")?;
//!     let mut records = sink.read::<AuditEvent>();
//!     let entry = records.next().await.expect("one record")?;
//!     assert_eq!(entry.seq, seq);
//!     assert_eq!(entry.record.actor, "alice");
//!     sink.commit(entry.seq).await?;
//!
//!     wal.close().await?;
//!     Ok(())
//! })
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

#[cfg(feature = "otlp")]
#[cfg_attr(docsrs, doc(cfg(feature = "otlp")))]
pub mod otlp;
pub mod records;
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub mod tracing_layer;

pub use walspool_backends as backends;
pub use walspool_backends::LocalDisk;
pub use walspool_wal as wal;
pub use walspool_wal::*;

/// The README's code samples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
