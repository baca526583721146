//! Record types that change: a schema version stored with every record, and upgrade
//! functions that turn records of older versions into the current type.
//!
//! postcard, walspool's encoding, is not self-describing: a record is only its field
//! values in declaration order. A type that gains, loses, renames or reorders a field
//! cannot read the records its previous version wrote. So every record carries the
//! schema version of its type (one byte in front of its payload, see `docs/format.md`),
//! and a type that changes says how to read its older versions:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use walspool_wal::schema::{UpgradeError, Versioned};
//! use walspool_wal::{Memory, Options, Wal};
//!
//! // What version 1 looked like: kept, frozen, only to read old records.
//! #[derive(Deserialize)]
//! struct AuditV1 { user: String, action: String }
//!
//! // The current type.
//! #[derive(Debug, Serialize, Deserialize, PartialEq)]
//! struct Audit { user: String, action: String, tenant: Option<String> }
//!
//! impl Versioned for Audit {
//!     const VERSION: u8 = 2;
//!     fn upgrade(from: u8, bytes: &[u8]) -> Result<Self, UpgradeError> {
//!         match from {
//!             1 => {
//!                 let v1: AuditV1 = postcard::from_bytes(bytes)?;
//!                 Ok(Audit { user: v1.user, action: v1.action, tenant: None })
//!             }
//!             _ => Err(UpgradeError::unknown(from)),
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), walspool_wal::Error> {
//! let wal = Wal::open(Memory::new(), Options::default().schema::<Audit>())?;
//! # Ok(())
//! # }
//! ```
//!
//! Reading (`read_from`, consumers, `Consumer::replay`, the shipper, re-drives of dead
//! letters) hands a record of an older version to [`Versioned::upgrade`] and a record
//! of the current version to postcard. A record that can be neither — no upgrade for
//! its version, a version newer than the type, bytes that do not decode — is an
//! [`Error::Schema`] or [`Error::Decode`]
//! naming the record, the version found and the type expected. Nothing is skipped or
//! deleted on the way: the reader yields the error, `replay` stops on it, the shipper
//! moves the record, bytes intact, to the dead letter, from where
//! [`Wal::redrive_dead_letters`](crate::Wal::redrive_dead_letters) delivers it once an
//! upgrade is deployed.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// The schema version of records appended to a WAL without [`Options::schema`]
/// (and of every record in segments written before versions were recorded).
///
/// [`Options::schema`]: crate::Options::schema
pub const DEFAULT_SCHEMA_VERSION: u8 = 1;

/// Why an upgrade failed. `?` converts any error into it (postcard's, say).
#[derive(Debug)]
pub struct UpgradeError(String);

impl UpgradeError {
    /// The record's version is not one this upgrade knows.
    pub fn unknown(from: u8) -> Self {
        UpgradeError(format!("no upgrade from schema version {from}"))
    }

    /// Any other reason.
    pub fn new(reason: impl Into<String>) -> Self {
        UpgradeError(reason.into())
    }
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for UpgradeError {
    fn from(e: E) -> Self {
        UpgradeError(e.to_string())
    }
}

/// A record type with a schema version. Register it with
/// [`Options::schema`](crate::Options::schema); see the [module documentation](self).
///
/// Rules: bump `VERSION` with every change of the type's fields (added, removed,
/// renamed, reordered, retyped); keep the older shapes as frozen structs; make
/// `upgrade` read every older version still on disk (directly, or one step at a time:
/// `1 => Self::upgrade(2, &postcard::to_allocvec(&V2::from(v1))?)`).
pub trait Versioned: Serialize + DeserializeOwned {
    /// The current schema version, 1..=255. Stored with every record appended.
    const VERSION: u8;

    /// Reads a record written as version `from` (`from < VERSION`). The default knows
    /// no older version.
    fn upgrade(from: u8, bytes: &[u8]) -> Result<Self, UpgradeError> {
        let _ = bytes;
        Err(UpgradeError::unknown(from))
    }
}

type UpgradeFn = dyn Fn(u8, &[u8]) -> Result<Vec<u8>, UpgradeError> + Send + Sync;

/// A WAL's record schema: its current version, the type's name, and the upgrade that
/// turns older records into the current version's bytes. Built by
/// [`Options::schema`](crate::Options::schema).
#[derive(Clone)]
pub struct Schema {
    version: u8,
    type_name: &'static str,
    upgrade: Option<Arc<UpgradeFn>>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("version", &self.version)
            .field("type_name", &self.type_name)
            .finish()
    }
}

impl Default for Schema {
    fn default() -> Self {
        Schema {
            version: DEFAULT_SCHEMA_VERSION,
            type_name: "",
            upgrade: None,
        }
    }
}

impl Schema {
    /// The schema of `T`.
    pub fn of<T: Versioned>() -> Self {
        Schema {
            version: T::VERSION,
            type_name: std::any::type_name::<T>(),
            upgrade: Some(Arc::new(|from, bytes| {
                let v = T::upgrade(from, bytes)?;
                postcard::to_allocvec(&v).map_err(UpgradeError::from)
            })),
        }
    }

    /// The version records are appended with.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The registered type's name (empty when none is registered).
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// Decodes a record of schema version `version` as `T`, upgrading it when it is older.
    pub fn decode<T: DeserializeOwned>(&self, seq: u64, version: u8, bytes: &[u8]) -> Result<T> {
        let type_name = || {
            if self.type_name.is_empty() {
                std::any::type_name::<T>()
            } else {
                self.type_name
            }
            .to_string()
        };
        let schema_err = |reason: String| Error::Schema {
            seq,
            found: version,
            expected: self.version,
            type_name: type_name(),
            reason,
        };
        if version == self.version {
            return postcard::from_bytes(bytes).map_err(|e| Error::Decode {
                seq,
                context: format!(
                    "schema version {version} as {}; did the type change without a new \
                     Versioned::VERSION?",
                    type_name()
                ),
                source: Box::new(e),
            });
        }
        if version > self.version {
            return Err(schema_err(
                "the record is newer than this build's type: deploy the newer program".into(),
            ));
        }
        let Some(up) = &self.upgrade else {
            return Err(schema_err(
                "no upgrade is registered (implement Versioned and use Options::schema)".into(),
            ));
        };
        let current = up(version, bytes).map_err(|e| schema_err(format!("upgrade failed: {e}")))?;
        postcard::from_bytes(&current).map_err(|e| {
            schema_err(format!(
                "the upgraded record does not decode as the type read: {e}"
            ))
        })
    }
}
