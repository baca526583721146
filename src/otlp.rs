//! OpenTelemetry mapping of the ADR-0017 records (feature `otlp`), for
//! [`OtlpSink`](walspool_backends::otlp::OtlpSink).
//!
//! | field | `LogRecord` | `AuditRecord` |
//! |---|---|---|
//! | resource `service.name` | `service` | `service` |
//! | `time_unix_nano` | `ts` (ms → ns) | `ts` (ms → ns) |
//! | severity | `level` (`trace`…`error`, `fatal`; text = `level`) | `INFO` when `outcome` is `success`, else `WARN` |
//! | body | `msg` (string; absent when `None`) | `"{actor} {action} {resource}: {outcome}"` |
//! | `event_name` | — | `walspool.audit` |
//! | attributes | `walspool.kind = "log"`, `category`, `ctx` entries, `data` (JSON text) | `walspool.kind = "audit"`, `audit.actor`, `audit.action`, `audit.resource`, `audit.outcome`, `ctx` entries, `data` |
//!
//! An [`Envelope`] maps as the record it holds; a future kind becomes a record of
//! service `unknown_service` with its JSON text as body and `walspool.kind` its kind.
//! The sink adds `walspool.wal_id` and `walspool.seq` to every record.
//!
//! ```no_run
//! use walspool::backends::otlp::OtlpSink;
//! use walspool::records::Envelope;
//! use walspool::shipper::Shipper;
//! use walspool::{LocalDisk, Options, Wal};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let wal = Wal::open(LocalDisk::open("/var/lib/svc/wal")?, Options::default())?;
//! let sink = OtlpSink::builder("https://otel-collector.internal:4318")
//!     .gzip(true)
//!     .build::<Envelope>()?;
//! let running = Shipper::builder(wal.consumer("otlp")?, sink).build()?.spawn_on_thread()?;
//! # running.shutdown()?;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;

use walspool_backends::otlp::proto::logs::v1::{LogRecord as OtelLog, SeverityNumber};
use walspool_backends::otlp::{severity_of_level, str_attr, string_value, OtlpLog, ToOtlp};

use crate::records::{AuditRecord, Envelope, LogRecord};

fn common(
    kind: &str,
    ctx: &Option<BTreeMap<String, String>>,
    data: &Option<String>,
) -> Vec<walspool_backends::otlp::proto::common::v1::KeyValue> {
    let mut a = vec![str_attr("walspool.kind", kind)];
    for (k, v) in ctx.iter().flatten() {
        a.push(str_attr(k, v));
    }
    if let Some(d) = data {
        a.push(str_attr("data", d));
    }
    a
}

impl ToOtlp for LogRecord {
    fn to_otlp(&self) -> OtlpLog {
        let mut attributes = common("log", &self.ctx, &self.data);
        if let Some(c) = &self.category {
            attributes.insert(1, str_attr("category", c));
        }
        OtlpLog {
            service: self.service.clone(),
            record: OtelLog {
                time_unix_nano: self.ts.saturating_mul(1_000_000),
                severity_number: severity_of_level(&self.level) as i32,
                severity_text: self.level.clone(),
                body: self.msg.as_ref().map(string_value),
                attributes,
                ..Default::default()
            },
        }
    }
}

impl ToOtlp for AuditRecord {
    fn to_otlp(&self) -> OtlpLog {
        let mut attributes = common("audit", &self.ctx, &self.data);
        attributes.splice(
            1..1,
            [
                str_attr("audit.actor", &self.actor),
                str_attr("audit.action", &self.action),
                str_attr("audit.resource", &self.resource),
                str_attr("audit.outcome", &self.outcome),
            ],
        );
        let (sev, text) = if self.outcome == "success" {
            (SeverityNumber::Info, "INFO")
        } else {
            (SeverityNumber::Warn, "WARN")
        };
        OtlpLog {
            service: self.service.clone(),
            record: OtelLog {
                time_unix_nano: self.ts.saturating_mul(1_000_000),
                severity_number: sev as i32,
                severity_text: text.into(),
                body: Some(string_value(format!(
                    "{} {} {}: {}",
                    self.actor, self.action, self.resource, self.outcome
                ))),
                event_name: "walspool.audit".into(),
                attributes,
                ..Default::default()
            },
        }
    }
}

impl ToOtlp for Envelope {
    fn to_otlp(&self) -> OtlpLog {
        match self {
            Envelope::Log(r) => r.to_otlp(),
            Envelope::Audit(r) => r.to_otlp(),
            Envelope::Other { kind, record } => OtlpLog {
                service: "unknown_service".into(),
                record: OtelLog {
                    body: Some(string_value(record)),
                    attributes: vec![str_attr("walspool.kind", kind)],
                    ..Default::default()
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walspool_backends::otlp::proto::common::v1::any_value::Value;

    fn attr<'a>(l: &'a OtlpLog, k: &str) -> Option<&'a str> {
        l.record
            .attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            })
    }

    #[test]
    fn log_and_audit_records_map_onto_otel_log_records() {
        let log = Envelope::Log(LogRecord {
            ts: 1_700_000_000_123,
            service: "gateway".into(),
            level: "warn".into(),
            category: Some("http".into()),
            msg: Some("slow upstream".into()),
            ctx: Some([("request_id".to_string(), "r-1".to_string())].into()),
            data: Some("{\"ms\":900}".into()),
        })
        .to_otlp();
        assert_eq!(log.service, "gateway");
        assert_eq!(log.record.time_unix_nano, 1_700_000_000_123_000_000);
        assert_eq!(log.record.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(log.record.severity_text, "warn");
        assert_eq!(log.record.body, Some(string_value("slow upstream")));
        assert_eq!(attr(&log, "walspool.kind"), Some("log"));
        assert_eq!(attr(&log, "category"), Some("http"));
        assert_eq!(attr(&log, "request_id"), Some("r-1"));
        assert_eq!(attr(&log, "data"), Some("{\"ms\":900}"));

        let audit = Envelope::Audit(AuditRecord {
            ts: 5,
            service: "billing".into(),
            actor: "alice".into(),
            action: "refund".into(),
            resource: "invoice/7".into(),
            outcome: "denied".into(),
            ctx: None,
            data: None,
            tenant: None,
        })
        .to_otlp();
        assert_eq!(audit.service, "billing");
        assert_eq!(audit.record.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(
            audit.record.body,
            Some(string_value("alice refund invoice/7: denied"))
        );
        assert_eq!(audit.record.event_name, "walspool.audit");
        assert_eq!(attr(&audit, "audit.actor"), Some("alice"));
        assert_eq!(attr(&audit, "audit.outcome"), Some("denied"));

        let other = Envelope::Other {
            kind: "billing".into(),
            record: "{}".into(),
        }
        .to_otlp();
        assert_eq!(other.service, "unknown_service");
        assert_eq!(attr(&other, "walspool.kind"), Some("billing"));
    }
}
