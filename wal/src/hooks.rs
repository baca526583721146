//! The integration surface for components that extend a WAL: shippers, archivers and
//! other backends that report into its metrics or take part in its retention.
//!
//! An application has no reason to call anything here: these calls change the figures
//! [`Wal::metrics`] reports and what retention may delete. They are reached through
//! [`Wal::hooks`], so they never show up among `Wal`'s own methods.
//!
//! ```
//! use std::sync::Arc;
//! use walspool_wal::hooks::RetentionHook;
//! use walspool_wal::{Memory, Options, SealedSegment, Wal};
//!
//! /// Keeps every sealed segment until it is uploaded somewhere.
//! struct KeepAll;
//! impl RetentionHook for KeepAll {
//!     fn may_delete(&self, _base_seq: u64) -> bool {
//!         false
//!     }
//! }
//!
//! let wal = Wal::open(Memory::new(), Options::default())?;
//! let hooks = wal.hooks();
//! hooks.add_retention_hook(Arc::new(KeepAll));
//! hooks.on_sealed(Arc::new(|seg: SealedSegment| {
//!     println!("sealed {}..={}", seg.base_seq, seg.last_seq)
//! }));
//! hooks.record_archive_error();
//! assert_eq!(wal.metrics().archive_errors_total, 1);
//! # Ok::<(), walspool_wal::Error>(())
//! ```

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::housekeeper::{self, HkMsg};
use crate::shipper::{BreakerState, SinkMetricsSource};
use crate::storage::Storage;
use crate::wal::{lock, now_ms, Wal};

pub use crate::wal::{ArchiveStatus, RetentionHook, SealListener, SealedSegment};

/// The hooks of one WAL; see the [module documentation](self). Get it with
/// [`Wal::hooks`].
pub struct Hooks<'a, S: Storage> {
    wal: &'a Wal<S>,
}

impl<S: Storage> std::fmt::Debug for Hooks<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").field("wal", self.wal).finish()
    }
}

impl<S: Storage> Wal<S> {
    /// The integration hooks of this WAL, for backends (shippers, archivers) that
    /// report into its metrics or take part in its retention. See [`hooks`](crate::hooks).
    pub fn hooks(&self) -> Hooks<'_, S> {
        Hooks { wal: self }
    }
}

impl<S: Storage> Hooks<'_, S> {
    /// Reports a failed delivery attempt (`ship_errors_total`, persisted).
    pub fn record_ship_error(&self) {
        let inner = &self.wal.inner;
        inner.counters.ship_errors.fetch_add(1, Ordering::Relaxed);
        lock(&inner.persisted).ship_errors_total += 1;
        inner.mark_counters_dirty();
    }

    /// Reports a successful delivery (`last_ship_ts`).
    pub fn record_ship_success(&self) {
        self.wal
            .inner
            .counters
            .last_ship_ts
            .store(now_ms(), Ordering::Relaxed);
    }

    /// Reports `n` records moved to a dead letter (`dead_letter_total`, persisted).
    pub fn record_dead_letter(&self, n: u64) {
        let inner = &self.wal.inner;
        inner.counters.dead_letter.fetch_add(n, Ordering::Relaxed);
        lock(&inner.persisted).dead_letter_total += n;
        inner.mark_counters_dirty();
    }

    /// Reports the circuit-breaker state of the shipper of `consumer`.
    pub fn record_breaker_state(&self, consumer: &str, state: BreakerState) {
        lock(&self.wal.inner.breaker).insert(consumer.to_string(), state.as_str().to_string());
    }

    /// Installs where the figures of the sink of `consumer`'s shipper are read: every
    /// snapshot ([`Wal::metrics`], the stats file) calls `source` for
    /// [`ConsumerMetrics::sink`](crate::ConsumerMetrics::sink). One per consumer; a later
    /// call replaces it. A [`Shipper`](crate::shipper::Shipper) installs its sink's
    /// [`metrics_source`](crate::shipper::Sink::metrics_source) when it starts.
    pub fn set_sink_metrics(&self, consumer: &str, source: SinkMetricsSource) {
        lock(&self.wal.inner.sink_metrics).insert(consumer.to_string(), source);
    }

    /// Reports a failed archive upload (`archive_errors_total`, persisted).
    pub fn record_archive_error(&self) {
        let inner = &self.wal.inner;
        inner
            .counters
            .archive_errors
            .fetch_add(1, Ordering::Relaxed);
        lock(&inner.persisted).archive_errors_total += 1;
        inner.mark_counters_dirty();
    }

    /// Reports sealed segments that vanished locally (deleted by `max_age` or
    /// `DropOldest`) before they could be archived (`archive_lost_segments_total`,
    /// persisted).
    pub fn record_archive_lost(&self, segments: u64) {
        if segments == 0 {
            return;
        }
        let inner = &self.wal.inner;
        lock(&inner.persisted).archive_lost_segments_total += segments;
        inner.mark_counters_dirty();
    }

    /// Reports a successful archive upload (`last_archive_ts`).
    pub fn record_archive_success(&self) {
        self.wal
            .inner
            .counters
            .last_archive_ts
            .store(now_ms(), Ordering::Relaxed);
    }

    /// Installs the function the metrics call to learn the archive lag (one per WAL;
    /// a later call replaces it).
    pub fn set_archive_status(&self, f: Arc<dyn Fn() -> ArchiveStatus + Send + Sync>) {
        *lock(&self.wal.inner.archive_status) = Some(f);
    }

    /// Registers a hook that can veto retention's deletion of sealed segments (bounds,
    /// `max_bytes` with `DropOldest` and `max_age`, still delete: they are counted).
    pub fn add_retention_hook(&self, hook: Arc<dyn RetentionHook>) {
        lock(&self.wal.inner.retention_hooks).push(hook);
    }

    /// Calls `f` (on the writer thread) every time a segment is sealed.
    pub fn on_sealed(&self, f: SealListener) {
        lock(&self.wal.inner.seal_listeners).push(f);
    }

    /// Wakes housekeeping: retention runs again (call after a retention hook changed
    /// its mind, e.g. once a segment is uploaded).
    pub fn nudge_retention(&self) {
        housekeeper::send(&self.wal.inner, HkMsg::Retention);
    }
}
