//! Named consumers with durable checkpoints, replay-then-truncate, and the metrics
//! snapshot.

use std::sync::atomic::Ordering;

use futures::channel::oneshot;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::housekeeper::{self, HkMsg};
use crate::metrics::{ConsumerMetrics, Metrics, SegmentMetrics};
use crate::reader::{Entry, ReadStream};
use crate::storage::Storage;
use crate::wal::{encode_checkpoint, lock, now_us, Inner, Wal, META_CONSUMER_PREFIX};

/// A named cursor over the WAL with a durable checkpoint. After a restart it resumes
/// right after its last [`commit`](Consumer::commit): delivery is at-least-once.
pub struct Consumer<S: Storage> {
    wal: Wal<S>,
    name: String,
}

impl<S: Storage> std::fmt::Debug for Consumer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("committed", &self.committed())
            .finish()
    }
}

impl<S: Storage> Clone for Consumer<S> {
    fn clone(&self) -> Self {
        Consumer {
            wal: self.wal.clone(),
            name: self.name.clone(),
        }
    }
}

/// Whether `name` ends in `.tmp` followed by digits: the name temporary files of
/// directory backends had before they started with a `.` (`<key>.tmp<pid>`). Such a
/// checkpoint could not be told apart from a leftover temporary file, so it is refused.
fn looks_like_old_temp_file(name: &str) -> bool {
    name.rsplit_once(".tmp")
        .is_some_and(|(_, digits)| !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()))
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.');
    if !ok {
        return Err(Error::Consumer(format!(
            "invalid consumer name {name:?}: use 1-128 ASCII letters, digits, '-', '_' or '.'"
        )));
    }
    if looks_like_old_temp_file(name) {
        return Err(Error::Consumer(format!(
            "invalid consumer name {name:?}: it must not end in '.tmp' followed by digits \
             (the name of a temporary file)"
        )));
    }
    Ok(())
}

impl<S: Storage> Consumer<S> {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The WAL it reads.
    pub fn wal(&self) -> &Wal<S> {
        &self.wal
    }

    /// Last committed sequence number (0 = nothing committed yet).
    pub fn committed(&self) -> u64 {
        lock(&self.wal.inner.consumers)
            .get(&self.name)
            .copied()
            .unwrap_or(0)
    }

    /// A live stream of records after the checkpoint.
    pub fn read<T: DeserializeOwned>(&self) -> ReadStream<S, T> {
        self.wal.read_from(self.committed() + 1)
    }

    /// Durably records that every record up to `seq` is processed. Never moves the
    /// checkpoint backwards (a smaller `seq` is a no-op). `seq` must be durable.
    pub async fn commit(&self, seq: u64) -> Result<()> {
        self.commit_start(seq).await
    }

    /// [`commit`](Self::commit), started now (before the first poll): the returned
    /// future resolves once the checkpoint is durable. The shipper overlaps that wait
    /// with reading and sending the next batch.
    pub(crate) fn commit_start(
        &self,
        seq: u64,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        housekeeper::send(
            &self.wal.inner,
            HkMsg::Commit {
                name: self.name.clone(),
                seq,
                tx,
            },
        );
        async move { rx.await.map_err(|_| Error::Closed)? }
    }

    /// Hands every record after the checkpoint (up to the durable end when called) to
    /// `sink` in batches of at most `batch_max`, committing after each batch the sink
    /// accepted: the seeds' "replay unflushed entries into the primary sink, then
    /// truncate". Retention then deletes the segments everyone has committed past.
    /// Returns the number of records replayed. A sink failure ends the replay with
    /// [`Error::Sink`] (its error is the `source`); `batch_max` must be at least 1.
    pub async fn replay<T, F, Fut, E>(&self, batch_max: usize, mut sink: F) -> Result<u64>
    where
        T: DeserializeOwned,
        F: FnMut(Vec<Entry<T>>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), E>>,
        E: Into<crate::error::BoxError>,
    {
        if batch_max == 0 {
            return Err(Error::Config("replay: batch_max must be at least 1".into()));
        }
        let end = self.wal.durable_seq();
        let start = self.committed() + 1;
        if start > end {
            return Ok(0);
        }
        let mut stream = self.wal.read_range::<T>(start, end);
        let mut batch = Vec::new();
        let mut n = 0;
        loop {
            let item = stream.next().await;
            let flush = match &item {
                None => true,
                Some(_) => batch.len() + 1 >= batch_max,
            };
            match item {
                Some(Ok(e)) => batch.push(e),
                Some(Err(e @ Error::Gap { .. })) => {
                    tracing::warn!(consumer = %self.name, error = %e, "replay skipped dropped records");
                }
                Some(Err(e)) => return Err(e),
                None => {}
            }
            if flush && !batch.is_empty() {
                let last = batch.last().map_or(0, |e| e.seq);
                let len = batch.len() as u64;
                sink(std::mem::take(&mut batch))
                    .await
                    .map_err(|e| Error::Sink {
                        consumer: self.name.clone(),
                        source: e.into(),
                    })?;
                self.commit(last).await?;
                n += len;
            }
            if flush && batch.is_empty() && stream.next_seq() > end {
                return Ok(n);
            }
        }
    }
}

impl<S: Storage> Wal<S> {
    /// The named consumer, created (at the start of what is on disk) if it does not exist.
    pub fn consumer(&self, name: &str) -> Result<Consumer<S>> {
        check_name(name)?;
        let exists = lock(&self.inner.consumers).contains_key(name);
        if !exists {
            let key = format!("{META_CONSUMER_PREFIX}{name}");
            self.inner
                .storage
                .put_meta(&key, &encode_checkpoint(0))
                .map_err(|e| {
                    Error::io(
                        "write checkpoint",
                        format!("{} {key}", self.inner.storage.location()),
                        e,
                    )
                })?;
            lock(&self.inner.consumers)
                .entry(name.to_string())
                .or_insert(0);
        }
        Ok(Consumer {
            wal: self.clone(),
            name: name.to_string(),
        })
    }

    /// Every consumer and its checkpoint.
    pub fn consumers(&self) -> Vec<(String, u64)> {
        lock(&self.inner.consumers)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Deletes a consumer and its checkpoint; retention no longer waits for it.
    pub async fn remove_consumer(&self, name: &str) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        housekeeper::send(
            &self.inner,
            HkMsg::Remove {
                name: name.to_string(),
                tx,
            },
        );
        rx.await.map_err(|_| Error::Closed)?
    }

    /// A snapshot of the WAL's figures.
    pub fn metrics(&self) -> Metrics {
        self.inner.snapshot()
    }
}

impl<S: Storage> Inner<S> {
    pub(crate) fn snapshot(&self) -> Metrics {
        let segs = lock(&self.segments).clone();
        let consumers = lock(&self.consumers).clone();
        let next_seq = lock(&self.state).next_seq;
        let last_seq = next_seq - 1;
        let first_seq = segs.first().map_or(next_seq, |s| s.base);
        let disk_bytes: u64 = segs.iter().map(|s| s.bytes).sum();
        // Bytes of records with seq > c, prorated inside the segment that holds c.
        let bytes_after = |c: u64| -> u64 {
            let mut total = 0u64;
            for (i, s) in segs.iter().enumerate() {
                let last = if s.sealed {
                    s.last_seq
                } else {
                    segs.get(i + 1).map_or(last_seq, |n| n.base - 1)
                };
                if last < s.base || last <= c {
                    continue;
                }
                if c < s.base {
                    total += s.bytes;
                } else {
                    let n = last - s.base + 1;
                    total += s.bytes * (last - c) / n;
                }
            }
            total
        };
        // Backlog age: the append time of the first record after a checkpoint, from
        // the times noted at append; records from before the open fall back to the
        // creation time of their segment (an upper bound on their age).
        let now = now_us();
        let age_ms = |want: u64| -> u64 {
            if want > last_seq {
                return 0;
            }
            self.counters
                .append_times
                .time_of(want, first_seq)
                .or_else(|| {
                    let base = segs.iter().rev().find(|s| s.base <= want)?.base;
                    housekeeper::segment_created_us(self, base)
                })
                .map_or(0, |t| now.saturating_sub(t) / 1000)
        };
        let breakers = lock(&self.breaker).clone();
        let sinks = lock(&self.sink_metrics).clone();
        let mut cms: Vec<ConsumerMetrics> = consumers
            .iter()
            .map(|(name, &c)| {
                let from = c.max(first_seq.saturating_sub(1));
                ConsumerMetrics {
                    name: name.clone(),
                    committed_seq: c,
                    backlog_records: last_seq.saturating_sub(from),
                    backlog_bytes: bytes_after(from),
                    backlog_age_ms: age_ms(from + 1),
                    breaker_state: breakers.get(name).cloned().unwrap_or_default(),
                    sink: sinks.get(name).map(|f| f()),
                }
            })
            .collect();
        cms.sort_by(|a, b| a.name.cmp(&b.name));
        let slowest = cms.iter().max_by_key(|c| c.backlog_records);
        let (backlog_records, backlog_bytes) = match slowest {
            Some(c) => (c.backlog_records, c.backlog_bytes),
            None => {
                let from = first_seq.saturating_sub(1);
                (last_seq.saturating_sub(from), bytes_after(from))
            }
        };
        let oldest_unshipped_age_ms = if consumers.is_empty() {
            age_ms(first_seq)
        } else {
            cms.iter().map(|c| c.backlog_age_ms).max().unwrap_or(0)
        };
        let breaker_state = slowest
            .and_then(|c| breakers.get(&c.name).cloned())
            .or_else(|| breakers.values().next().cloned())
            .unwrap_or_default();
        let archive = lock(&self.archive_status).clone();
        let arch = archive.as_ref().map(|f| f()).unwrap_or_default();
        let (p50, p99) = self.counters.fsync_percentiles();
        let current_base = self.current_base.load(Ordering::Acquire);
        let segments = segs
            .iter()
            .enumerate()
            .map(|(i, s)| SegmentMetrics {
                file: self.storage.segment_name(s.base),
                first_seq: s.base,
                last_seq: if s.sealed {
                    s.last_seq
                } else {
                    segs.get(i + 1).map_or(last_seq, |n| n.base - 1)
                },
                bytes: s.bytes,
                sealed: s.sealed,
                archived: archive.is_some() && s.sealed && s.last_seq <= arch.archived_through_seq,
            })
            .collect();
        Metrics {
            backlog_records,
            backlog_bytes,
            ship_errors_total: self.counters.ship_errors.load(Ordering::Relaxed),
            dropped_records_total: self.counters.dropped_records.load(Ordering::Relaxed),
            last_ship_ts: self.counters.last_ship_ts.load(Ordering::Relaxed),
            current_file: self.storage.segment_name(current_base),
            current_offset: self.current_offset.load(Ordering::Acquire),
            wal_id: self.wal_id.clone(),
            first_seq: if last_seq >= first_seq { first_seq } else { 0 },
            last_seq,
            durable_seq: self.durable_seq.load(Ordering::Acquire),
            appended_records_total: self.counters.appended_records.load(Ordering::Relaxed),
            appended_bytes_total: self.counters.appended_bytes.load(Ordering::Relaxed),
            fsyncs_total: self.counters.fsyncs.load(Ordering::Relaxed),
            fsync_latency: self.counters.fsync_histogram(),
            fsync_p50_us: p50,
            fsync_p99_us: p99,
            segment_count: segs.len() as u64,
            disk_bytes,
            oldest_unshipped_age_ms,
            backlog_age_exact_from_seq: self.counters.append_times.first_seq().unwrap_or(0),
            torn_tail_bytes_cut_total: self.counters.torn_tail_bytes.load(Ordering::Relaxed),
            corrupt_skipped_total: self.counters.corrupt_skipped.load(Ordering::Relaxed),
            breaker_state,
            dead_letter_total: self.counters.dead_letter.load(Ordering::Relaxed),
            archive_errors_total: self.counters.archive_errors.load(Ordering::Relaxed),
            archive_lost_segments_total: lock(&self.persisted).archive_lost_segments_total,
            archive_lag_segments: arch.lag_segments,
            archive_lag_bytes: arch.lag_bytes,
            last_archive_ts: self.counters.last_archive_ts.load(Ordering::Relaxed),
            archiving: archive.is_some(),
            consumers: cms,
            segments,
        }
    }
}
