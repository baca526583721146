//! The housekeeping thread: consumer checkpoints, retention, `max_age`, and the
//! stats file. It keeps fsyncs of metadata off the append path.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures::channel::oneshot;

use crate::error::{Error, Result};
use crate::format::{SegmentFooter, SegmentHeader, FOOTER_LEN};
use crate::metrics::{StatsFile, STATS_FILE, STATS_SCHEMA};
use crate::storage::{Storage, StorageExt};
use crate::wal::{encode_checkpoint, lock, now_ms, now_us, Inner, META_CONSUMER_PREFIX};

pub(crate) enum HkMsg {
    Commit {
        name: String,
        seq: u64,
        tx: oneshot::Sender<Result<()>>,
    },
    Remove {
        name: String,
        tx: oneshot::Sender<Result<()>>,
    },
    Retention,
    Rolled,
    Stop(std::sync::mpsc::Sender<()>),
}

pub(crate) fn start<S: Storage>(inner: Arc<Inner<S>>) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    *lock(&inner.hk_tx) = Some(tx);
    // The thread holds only a weak reference so that dropping every `Wal` handle ends it.
    let weak = Arc::downgrade(&inner);
    std::thread::Builder::new()
        .name("walspool-housekeeper".into())
        .spawn(move || run(weak, rx))
        .map_err(|e| Error::io("spawn housekeeping thread", "walspool-housekeeper", e))?;
    Ok(())
}

pub(crate) fn send<S: Storage>(inner: &Inner<S>, msg: HkMsg) {
    if let Some(tx) = lock(&inner.hk_tx).as_ref() {
        let _ = tx.send(msg);
    }
}

/// Stops the thread after a final stats publication; waits for it briefly.
pub(crate) fn stop<S: Storage>(inner: &Inner<S>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let sender = lock(&inner.hk_tx).take();
    if let Some(s) = sender {
        if s.send(HkMsg::Stop(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }
}

fn run<S: Storage>(weak: std::sync::Weak<Inner<S>>, rx: mpsc::Receiver<HkMsg>) {
    let mut last_stats = Instant::now() - Duration::from_secs(3600);
    let mut last_age_check = Instant::now() - Duration::from_secs(3600);
    let mut last_end = Instant::now();
    loop {
        let tick = {
            let Some(inner) = weak.upgrade() else { return };
            inner
                .opts
                .stats_interval
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1))
        };
        let msg = rx.recv_timeout(tick);
        let Some(inner) = weak.upgrade() else { return };
        match msg {
            Ok(HkMsg::Commit { name, seq, tx }) => {
                let r = commit(&inner, &name, seq);
                let _ = tx.send(r);
                retention(&inner);
            }
            Ok(HkMsg::Remove { name, tx }) => {
                let key = format!("{META_CONSUMER_PREFIX}{name}");
                let r = inner
                    .storage
                    .remove_meta(&key)
                    .map_err(|e| Error::io("remove checkpoint", inner.storage.location(), e));
                if r.is_ok() {
                    lock(&inner.consumers).remove(&name);
                }
                let _ = tx.send(r);
                retention(&inner);
            }
            Ok(HkMsg::Retention) | Ok(HkMsg::Rolled) => retention(&inner),
            Ok(HkMsg::Stop(done)) => {
                retention(&inner);
                inner.persist_counters();
                publish_stats(&inner, true);
                let _ = done.send(());
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                inner.persist_counters();
                publish_stats(&inner, true);
                return;
            }
        }
        if inner.counters_dirty.load(Ordering::Acquire) {
            inner.persist_counters();
        }
        // The recovery point follows the fdatasyncs (see `recovery`), once per tick.
        if last_end.elapsed() >= tick {
            last_end = Instant::now();
            inner.persist_end(0);
        }
        if inner.opts.max_age.is_some() && last_age_check.elapsed() >= Duration::from_millis(200) {
            last_age_check = Instant::now();
            enforce_max_age(&inner);
        }
        if let Some(every) = inner.opts.stats_interval {
            if last_stats.elapsed() >= every {
                last_stats = Instant::now();
                publish_stats(&inner, false);
            }
        }
    }
}

fn commit<S: Storage>(inner: &Inner<S>, name: &str, seq: u64) -> Result<()> {
    let current = lock(&inner.consumers).get(name).copied();
    let Some(current) = current else {
        return Err(Error::Consumer(format!(
            "unknown consumer {name:?} (was it removed?)"
        )));
    };
    if seq <= current {
        return Ok(()); // checkpoints never go backwards
    }
    let durable = inner.durable_seq.load(Ordering::Acquire);
    if seq > durable {
        return Err(Error::Consumer(format!(
            "cannot commit {seq} for {name:?}: only records up to {durable} are durable"
        )));
    }
    let key = format!("{META_CONSUMER_PREFIX}{name}");
    inner
        .storage
        .put_meta(&key, &encode_checkpoint(seq))
        .map_err(|e| {
            Error::io(
                "write checkpoint",
                format!("{} {key}", inner.storage.location()),
                e,
            )
        })?;
    lock(&inner.consumers).insert(name.to_string(), seq);
    Ok(())
}

/// Deletes sealed segments every consumer has committed past (and every retention hook
/// allows). Without consumers nothing is deleted here; only bounds delete then.
pub(crate) fn retention<S: Storage>(inner: &Inner<S>) {
    let min = lock(&inner.consumers).values().copied().min();
    let Some(min) = min else { return };
    let hooks = lock(&inner.retention_hooks).clone();
    inner.delete_oldest("retention", false, |s| {
        s.last_seq <= min && hooks.iter().all(|h| h.may_delete(s.base))
    });
}

fn enforce_max_age<S: Storage>(inner: &Inner<S>) {
    let Some(max_age) = inner.opts.max_age else {
        return;
    };
    let now = now_us();
    let limit = max_age.as_micros() as u64;
    // Learn the newest-record time of sealed segments lazily from their footers.
    let unknown: Vec<(u64, u64)> = lock(&inner.segments)
        .iter()
        .filter(|s| s.sealed && s.last_ts_us.is_none())
        .map(|s| (s.base, s.bytes))
        .collect();
    for (base, bytes) in unknown {
        let ts = inner
            .storage
            .read_vec(base, bytes.saturating_sub(FOOTER_LEN as u64), FOOTER_LEN)
            .ok()
            .and_then(|b| SegmentFooter::decode(&b))
            .map(|f| f.last_ts_us);
        if let Some(ts) = ts {
            if let Some(s) = lock(&inner.segments).iter_mut().find(|s| s.base == base) {
                s.last_ts_us = Some(ts);
            }
        }
    }
    inner.delete_oldest("max_age", true, |s| {
        s.last_ts_us
            .is_some_and(|ts| now.saturating_sub(ts) > limit)
    });
}

/// Creation time of a segment (from its header, cached).
pub(crate) fn segment_created_us<S: Storage>(inner: &Inner<S>, base: u64) -> Option<u64> {
    if let Some(c) = lock(&inner.segments)
        .iter()
        .find(|s| s.base == base)
        .and_then(|s| s.created_us)
    {
        return Some(c);
    }
    let name = inner.storage.segment_name(base);
    let h = inner
        .storage
        .read_vec(base, 0, crate::format::HEADER_MAX_LEN)
        .ok()?;
    let h = SegmentHeader::decode(&h, &name).ok()?;
    if let Some(s) = lock(&inner.segments).iter_mut().find(|s| s.base == base) {
        s.created_us = Some(h.created_us);
    }
    Some(h.created_us)
}

pub(crate) fn publish_stats<S: Storage>(inner: &Inner<S>, closed: bool) {
    let metrics = inner.snapshot();
    let doc = StatsFile {
        schema: STATS_SCHEMA.to_string(),
        pid: std::process::id(),
        written_at_ms: now_ms(),
        interval_ms: inner
            .opts
            .stats_interval
            .map_or(1000, |d| d.as_millis() as u64),
        location: inner.storage.location(),
        closed,
        metrics,
    };
    match serde_json::to_vec_pretty(&doc) {
        Ok(bytes) => {
            if let Err(e) = inner.storage.publish(STATS_FILE, &bytes) {
                tracing::debug!(error = %e, "could not publish the stats file");
            }
        }
        Err(e) => tracing::debug!(error = %e, "could not encode the stats file"),
    }
}
