//! The record shapes of ADR-0017 (one WAL mechanism for logs, audit and future kinds).
//!
//! `LogRecord { ts, service, level, category?, msg?, ctx?, data? }` and
//! `AuditRecord { ts, service, actor, action, resource, outcome, ctx?, data? }`, carried
//! in an [`Envelope`] `{ kind, record }` whose `kind` is `"log"`, `"audit"` or a future
//! kind. All of them encode with postcard (in the WAL) and with serde_json (for ingest
//! endpoints): `ctx` is a flat string map and `data` a JSON document kept as text,
//! because postcard, being compact and not self-describing, cannot carry an untyped
//! JSON value.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
}
