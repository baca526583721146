//! A [`tracing_subscriber::Layer`] that writes `tracing` events into a WAL as
//! [`LogRecord`]s (feature `tracing`).
//!
//! ```
//! use tracing_subscriber::prelude::*;
//! use walspool::tracing_layer::WalLayer;
//! use walspool::{Memory, Options, Wal};
//!
//! let wal = Wal::open(Memory::new(), Options::default()).unwrap();
//! let subscriber = tracing_subscriber::registry().with(WalLayer::new(wal.clone(), "checkout"));
//! tracing::subscriber::with_default(subscriber, || {
//!     tracing::info!(order = 42, "order placed");
//! });
//! futures::executor::block_on(wal.flush()).unwrap();
//! assert_eq!(wal.durable_seq(), 1);
//! ```
//!
//! By default an event is queued without waiting for any I/O
//! ([`Wal::append_nowait`](walspool_wal::Wal::append_nowait)): the caller's thread never
//! waits for an fsync (it waits only when walspool's buffer is full — back-pressure
//! rather than loss). [`WalLayer::wait_durable`] makes every event wait until it is
//! durable instead. Filter which events go in with the usual `tracing_subscriber`
//! filters (`.with_filter(...)`). Events from walspool itself are never written into a
//! WAL (that could loop).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;
use walspool_wal::{Storage, Wal};

use crate::records::{now_ms, LogRecord};

/// Writes `tracing` events into a WAL.
pub struct WalLayer<S: Storage> {
    wal: Wal<S>,
    service: String,
    wait_durable: bool,
    errors: AtomicU64,
}

impl<S: Storage> std::fmt::Debug for WalLayer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalLayer")
            .field("service", &self.service)
            .field("wait_durable", &self.wait_durable)
            .finish()
    }
}

impl<S: Storage> WalLayer<S> {
    /// A layer writing into `wal`, stamping records with `service`.
    pub fn new(wal: Wal<S>, service: impl Into<String>) -> Self {
        WalLayer {
            wal,
            service: service.into(),
            wait_durable: false,
            errors: AtomicU64::new(0),
        }
    }

    /// Make every event wait until it is durable (blocks the emitting thread on the
    /// WAL's fsync; group commit shares it between threads).
    pub fn wait_durable(mut self, yes: bool) -> Self {
        self.wait_durable = yes;
        self
    }

    /// Events that could not be written (the WAL is closed or poisoned).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct Fields {
    msg: Option<String>,
    data: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = Some(value.to_string());
        } else {
            self.data.insert(field.name().into(), value.into());
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.data.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.data.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.data.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.data.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        if field.name() == "message" {
            self.msg = Some(s);
        } else {
            self.data.insert(field.name().into(), s.into());
        }
    }
}

impl<S, Sub> Layer<Sub> for WalLayer<S>
where
    S: Storage,
    Sub: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, Sub>) {
        let meta = event.metadata();
        if meta.target().starts_with("walspool") {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut c = BTreeMap::new();
        if let Some(scope) = ctx.event_scope(event) {
            let spans: Vec<&str> = scope.from_root().map(|s| s.name()).collect();
            if !spans.is_empty() {
                c.insert("spans".to_string(), spans.join(":"));
            }
        }
        if let (Some(file), Some(line)) = (meta.file(), meta.line()) {
            c.insert("at".to_string(), format!("{file}:{line}"));
        }
        let rec = LogRecord {
            ts: now_ms(),
            service: self.service.clone(),
            level: meta.level().as_str().to_ascii_lowercase(),
            category: Some(meta.target().to_string()),
            msg: fields.msg,
            ctx: (!c.is_empty()).then_some(c),
            data: (!fields.data.is_empty())
                .then(|| serde_json::Value::Object(fields.data).to_string()),
        };
        let r = if self.wait_durable {
            self.wal.append_blocking(&rec).map(|_| ())
        } else {
            self.wal.append_nowait(&rec).map(|_| ())
        };
        if r.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
