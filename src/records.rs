//! The record shapes of ADR-0017 (one WAL mechanism for logs, audit and future kinds).
//!
//! `LogRecord { ts, service, level, category?, msg?, ctx?, data? }` and
//! `AuditRecord { ts, service, actor, action, resource, outcome, ctx?, data?, tenant? }`, carried
//! in an [`Envelope`] `{ kind, record }` whose `kind` is `"log"`, `"audit"` or a future
//! kind. All of them encode with postcard (in the WAL) and with serde_json (for ingest
//! endpoints): `ctx` is a flat string map and `data` a JSON document kept as text,
//! because postcard, being compact and not self-describing, cannot carry an untyped
//! JSON value.
//!
//! All three are [`Versioned`]: `AuditRecord` and `Envelope` are at schema version 2
//! (`AuditRecord.tenant` was added), `LogRecord` at 1. Register the type the WAL holds
//! (`Options::default().schema::<Envelope>()`) and records written before `tenant`
//! existed read back with `tenant: None` (README, "Changing your record type").

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use walspool_wal::schema::{UpgradeError, Versioned};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An operational log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// The emitting service.
    pub service: String,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// A category (the `tracing` target, say).
    pub category: Option<String>,
    /// The message.
    pub msg: Option<String>,
    /// Context: request ids, span names, ...
    pub ctx: Option<BTreeMap<String, String>>,
    /// Structured data as a JSON document.
    pub data: Option<String>,
}

/// A security/compliance audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// The service where it happened.
    pub service: String,
    /// Who.
    pub actor: String,
    /// Did what.
    pub action: String,
    /// To what.
    pub resource: String,
    /// With which outcome (`success`, `denied`, `error`, ...).
    pub outcome: String,
    /// Context: request ids, client address, ...
    pub ctx: Option<BTreeMap<String, String>>,
    /// Structured data as a JSON document.
    pub data: Option<String>,
    /// The tenant (organisation, account) the action belongs to. Added in schema
    /// version 2: records of version 1 read back with `None`.
    pub tenant: Option<String>,
}

/// The shapes of earlier schema versions, frozen: only to read old records.
pub mod v1 {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    /// [`AuditRecord`](super::AuditRecord) as schema version 1 wrote it (no `tenant`).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub struct AuditRecord {
        pub ts: u64,
        pub service: String,
        pub actor: String,
        pub action: String,
        pub resource: String,
        pub outcome: String,
        pub ctx: Option<BTreeMap<String, String>>,
        pub data: Option<String>,
    }

    impl From<AuditRecord> for super::AuditRecord {
        fn from(r: AuditRecord) -> Self {
            super::AuditRecord {
                ts: r.ts,
                service: r.service,
                actor: r.actor,
                action: r.action,
                resource: r.resource,
                outcome: r.outcome,
                ctx: r.ctx,
                data: r.data,
                tenant: None,
            }
        }
    }
}

/// Version 1; unchanged since.
impl Versioned for LogRecord {
    const VERSION: u8 = 1;
}

/// Version 2 added `tenant`.
impl Versioned for AuditRecord {
    const VERSION: u8 = 2;
    fn upgrade(from: u8, bytes: &[u8]) -> Result<Self, UpgradeError> {
        match from {
            1 => Ok(postcard::from_bytes::<v1::AuditRecord>(bytes)?.into()),
            _ => Err(UpgradeError::unknown(from)),
        }
    }
}

/// Version 2: its `AuditRecord` gained `tenant`. A WAL of envelopes registers
/// `Options::default().schema::<Envelope>()`.
impl Versioned for Envelope {
    const VERSION: u8 = 2;
    fn upgrade(from: u8, bytes: &[u8]) -> Result<Self, UpgradeError> {
        if from != 1 {
            return Err(UpgradeError::unknown(from));
        }
        // postcard: the kind, then the record as that version declared it.
        let (kind, rest): (String, &[u8]) = postcard::take_from_bytes(bytes)?;
        Ok(match kind.as_str() {
            "log" => Envelope::Log(postcard::from_bytes(rest)?),
            "audit" => Envelope::Audit(postcard::from_bytes::<v1::AuditRecord>(rest)?.into()),
            _ => Envelope::Other {
                record: postcard::from_bytes(rest)?,
                kind,
            },
        })
    }
}

/// `{ kind, record }`: one record of any kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// `kind: "log"`.
    Log(LogRecord),
    /// `kind: "audit"`.
    Audit(AuditRecord),
    /// A future kind; its record as a JSON document.
    Other {
        /// The kind.
        kind: String,
        /// The record, JSON text.
        record: String,
    },
}

impl Envelope {
    /// The kind: `"log"`, `"audit"` or the future kind's name.
    pub fn kind(&self) -> &str {
        match self {
            Envelope::Log(_) => "log",
            Envelope::Audit(_) => "audit",
            Envelope::Other { kind, .. } => kind,
        }
    }
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Envelope", 2)?;
        st.serialize_field("kind", self.kind())?;
        match self {
            Envelope::Log(r) => st.serialize_field("record", r)?,
            Envelope::Audit(r) => st.serialize_field("record", r)?,
            Envelope::Other { record, .. } => st.serialize_field("record", record)?,
        }
        st.end()
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        fn build<E: de::Error>(
            kind: String,
            log: impl FnOnce() -> Result<LogRecord, E>,
            audit: impl FnOnce() -> Result<AuditRecord, E>,
            other: impl FnOnce() -> Result<String, E>,
        ) -> Result<Envelope, E> {
            Ok(match kind.as_str() {
                "log" => Envelope::Log(log()?),
                "audit" => Envelope::Audit(audit()?),
                _ => Envelope::Other {
                    record: other()?,
                    kind,
                },
            })
        }
        impl<'de> Visitor<'de> for V {
            type Value = Envelope;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an envelope { kind, record }")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Envelope, A::Error> {
                let kind: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let missing = || de::Error::invalid_length(1, &"an envelope { kind, record }");
                // Each closure is called at most once; the RefCell lets all three borrow `seq`.
                let seq = std::cell::RefCell::new(seq);
                build(
                    kind,
                    || seq.borrow_mut().next_element()?.ok_or_else(missing),
                    || seq.borrow_mut().next_element()?.ok_or_else(missing),
                    || seq.borrow_mut().next_element()?.ok_or_else(missing),
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
                let k: Option<String> = map.next_key()?;
                if k.as_deref() != Some("kind") {
                    return Err(de::Error::custom("an envelope must start with \"kind\""));
                }
                let kind: String = map.next_value()?;
                let k: Option<String> = map.next_key()?;
                if k.as_deref() != Some("record") {
                    return Err(de::Error::missing_field("record"));
                }
                let map = std::cell::RefCell::new(map);
                build(
                    kind,
                    || map.borrow_mut().next_value(),
                    || map.borrow_mut().next_value(),
                    || {
                        // A future kind's record arrives as JSON; keep it as text.
                        let v: serde_json::Value = map.borrow_mut().next_value()?;
                        Ok(match v {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        })
                    },
                )
            }
        }
        d.deserialize_struct("Envelope", &["kind", "record"], V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit() -> Envelope {
        Envelope::Audit(AuditRecord {
            ts: 1,
            service: "gateway".into(),
            actor: "alice".into(),
            action: "login".into(),
            resource: "session".into(),
            outcome: "success".into(),
            ctx: Some([("ip".to_string(), "10.0.0.1".to_string())].into()),
            data: None,
            tenant: Some("acme".into()),
        })
    }

    #[test]
    fn envelope_round_trips_in_postcard_and_json() {
        let log = Envelope::Log(LogRecord {
            ts: 2,
            service: "gateway".into(),
            level: "info".into(),
            category: None,
            msg: Some("hello".into()),
            ctx: None,
            data: Some("{\"n\":1}".into()),
        });
        let other = Envelope::Other {
            kind: "billing".into(),
            record: "{\"cents\":5}".into(),
        };
        for e in [audit(), log, other] {
            let pc = postcard::to_allocvec(&e).unwrap();
            assert_eq!(postcard::from_bytes::<Envelope>(&pc).unwrap(), e);
            let js = serde_json::to_string(&e).unwrap();
            assert!(
                js.starts_with(&format!("{{\"kind\":\"{}\",\"record\":", e.kind())),
                "{js}"
            );
            assert_eq!(serde_json::from_str::<Envelope>(&js).unwrap(), e);
        }
    }

    #[test]
    fn a_wal_written_before_tenant_was_added_reads_back() {
        use futures::executor::block_on;
        use futures::StreamExt;
        use walspool_wal::{Memory, Options, Wal};

        let old = v1::AuditRecord {
            ts: 1,
            service: "gateway".into(),
            actor: "alice".into(),
            action: "login".into(),
            resource: "session".into(),
            outcome: "success".into(),
            ctx: None,
            data: None,
        };
        let log = LogRecord {
            ts: 2,
            service: "gateway".into(),
            level: "info".into(),
            category: None,
            msg: Some("hello".into()),
            ctx: None,
            data: None,
        };
        // The previous release: no schema registered (version 1), the old shapes. An
        // envelope is encoded as its kind, then its record.
        let mem = Memory::new();
        let wal = Wal::open(mem.clone(), Options::default()).unwrap();
        block_on(wal.append(&("audit".to_string(), old.clone()))).unwrap();
        block_on(wal.append(&("log".to_string(), log.clone()))).unwrap();
        block_on(wal.close()).unwrap();
        drop(wal);

        let wal = Wal::open(mem, Options::default().schema::<Envelope>()).unwrap();
        let new = audit();
        block_on(wal.append(&new)).unwrap();
        let got: Vec<Envelope> = block_on(wal.read_range::<Envelope>(1, 3).collect::<Vec<_>>())
            .into_iter()
            .map(|r| r.unwrap().record)
            .collect();
        let upgraded = AuditRecord {
            tenant: None,
            ..AuditRecord::from(old)
        };
        assert_eq!(
            got,
            vec![Envelope::Audit(upgraded), Envelope::Log(log), new]
        );
        block_on(wal.close()).unwrap();
    }

    #[test]
    fn audit_records_alone_upgrade_too() {
        let old = v1::AuditRecord {
            ts: 1,
            service: "s".into(),
            actor: "a".into(),
            action: "x".into(),
            resource: "r".into(),
            outcome: "ok".into(),
            ctx: None,
            data: Some("{}".into()),
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        let r = walspool_wal::Schema::of::<AuditRecord>()
            .decode::<AuditRecord>(7, 1, &bytes)
            .unwrap();
        assert_eq!(r.tenant, None);
        assert_eq!(r.data.as_deref(), Some("{}"));
        // Without the upgrade, the old bytes are refused by name, not misread.
        let e = walspool_wal::Schema::of::<LogRecord>()
            .decode::<LogRecord>(7, 2, &bytes)
            .unwrap_err();
        assert!(e.to_string().contains("schema version 2"), "{e}");
    }
}
