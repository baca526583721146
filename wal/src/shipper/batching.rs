//! Gathering batches: reading records after the checkpoint, waiting for more, setting aside the ones that do not decode.

#[allow(unused_imports)]
use super::*;

impl<S: Storage, T: DeserializeOwned + Send + Sync + 'static> Shipper<S, T> {
    /// The next raw record, skipping gaps; `Ok(None)` at the durable end.
    pub(super) fn next_raw(&self, reader: &mut RawReader<S>) -> Result<Option<RawEntry>> {
        loop {
            match reader.next_frame() {
                Ok(f) => {
                    return Ok(f.map(|(seq, ts_us, version, record)| {
                        (version, Entry { seq, ts_us, record })
                    }))
                }
                Err(e @ Error::Gap { .. }) => {
                    tracing::warn!(consumer = %self.consumer_name, error = %e, "records were dropped by retention bounds before they were shipped");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Collects the next batch; `None` on shutdown or when the WAL closed.
    pub(super) async fn gather(
        &mut self,
        inner: &Arc<Inner<S>>,
        reader: &mut RawReader<S>,
        carry: &mut Option<RawEntry>,
    ) -> Result<Option<Batch<T>>> {
        loop {
            let mut entries: Vec<Entry<T>> = Vec::new();
            let mut bytes = 0usize;
            let mut deadline: Option<Instant> = None;
            // Records that do not decode: stored together, with one durable write,
            // before the batch (or the checkpoint) moves past them.
            let mut letters: Vec<DeadLetter> = Vec::new();
            while entries.len() < self.cfg.batch_max
                && letters.len() < self.cfg.batch_max
                && bytes < self.cfg.batch_max_bytes
            {
                if self.stopping() {
                    return Ok(None);
                }
                let raw = match carry.take() {
                    Some(r) => Some(r),
                    None => self.next_raw(reader)?,
                };
                let Some((version, raw)) = raw else {
                    if inner.writer_done.load(Ordering::Acquire) {
                        // The WAL is closed: what was gathered cannot be committed.
                        return Ok(None);
                    }
                    if !letters.is_empty() && entries.is_empty() {
                        break; // commit past the dead letters now
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    match wait(&self.shared, inner, reader.next, deadline).await {
                        Woke::Shutdown => return Ok(None),
                        Woke::Timeout => break,
                        Woke::Data => continue,
                    }
                };
                let size = raw.record.len();
                if !entries.is_empty() && bytes + size > self.cfg.batch_max_bytes {
                    *carry = Some((version, raw));
                    break;
                }
                match inner.opts.schema.decode::<T>(raw.seq, version, &raw.record) {
                    Ok(record) => {
                        entries.push(Entry {
                            seq: raw.seq,
                            ts_us: raw.ts_us,
                            record,
                        });
                        bytes += size;
                        if deadline.is_none() {
                            deadline = Some(Instant::now() + self.cfg.linger);
                        }
                    }
                    Err(e) => {
                        if letters.is_empty() {
                            tracing::error!(consumer = %self.consumer_name, error = %e, "a record does not decode: moving it to the dead letter (more may follow; see dead_letter_total)");
                        }
                        letters.push(self.letter(
                            raw.seq,
                            raw.ts_us,
                            0,
                            format!("does not decode: {e}"),
                            version,
                            raw.record,
                        ));
                    }
                }
            }
            let lettered = !letters.is_empty();
            if lettered && !self.put_dead_letters(letters).await {
                return Ok(None);
            }
            if !entries.is_empty() {
                return Ok(Some(Batch {
                    wal_id: self.wal_id.clone(),
                    consumer: self.consumer_name.clone(),
                    entries,
                    attempt: 0,
                }));
            }
            // Only dead letters (or records dropped by retention): nothing to send, but the checkpoint moves past them.
            let last = reader.next - 1;
            if last > self.consumer.committed() {
                match self.consumer.commit(last).await {
                    Ok(()) => self.shared.committed(last),
                    Err(Error::Closed) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
        }
    }

    pub(super) fn letter(
        &self,
        seq: u64,
        ts_us: u64,
        attempts: u32,
        reason: String,
        schema_version: u8,
        payload: Vec<u8>,
    ) -> DeadLetter {
        DeadLetter {
            wal_id: self.wal_id.to_string(),
            consumer: self.consumer_name.to_string(),
            seq,
            ts_us,
            attempts,
            reason,
            dead_lettered_at_ms: now_ms(),
            schema_version,
            payload,
        }
    }

    /// Stores dead letters (with one durable write when the store batches), retrying
    /// with backoff until they are stored; false on shutdown (then the records stay
    /// uncommitted).
    pub(super) async fn put_dead_letters(&mut self, letters: Vec<DeadLetter>) -> bool {
        let mut failures = 0u32;
        let (first, last, n) = (
            letters.first().map_or(0, |l| l.seq),
            letters.last().map_or(0, |l| l.seq),
            letters.len() as u64,
        );
        loop {
            match self.dead_letter.put_batch(&letters).await {
                Ok(()) => {
                    tracing::warn!(
                        consumer = %self.consumer_name,
                        first_seq = first,
                        last_seq = last,
                        records = n,
                        reason = %letters[0].reason,
                        "records moved to the dead letter"
                    );
                    self.consumer.wal().hooks().record_dead_letter(n);
                    self.shared.update(|s| s.dead_lettered += n);
                    return true;
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(consumer = %self.consumer_name, first_seq = first, error = %e, "could not store dead letters; retrying");
                    let d = self.rng.upto(self.cfg.backoff.ceiling(failures));
                    if !sleep(&self.shared, d).await {
                        return false;
                    }
                }
            }
        }
    }

    pub(super) async fn put_dead_letter(&mut self, letter: DeadLetter) -> bool {
        self.put_dead_letters(vec![letter]).await
    }
}

/// Waits for new durable records, a deadline, or shutdown.
pub(super) async fn wait<S: Storage>(
    shared: &Shared,
    inner: &Inner<S>,
    next: u64,
    deadline: Option<Instant>,
) -> Woke {
    let mut delay = deadline.map(|d| Delay::new(d.saturating_duration_since(Instant::now())));
    let readable = || {
        inner.durable_seq.load(Ordering::Acquire) >= next
            || inner.writer_done.load(Ordering::Acquire)
    };
    future::poll_fn(|cx| {
        shared.waker.register(cx.waker());
        if shared.shutdown.load(Ordering::Acquire) {
            return Poll::Ready(Woke::Shutdown);
        }
        if let Some(d) = delay.as_mut() {
            if d.poll_unpin(cx).is_ready() {
                return Poll::Ready(Woke::Timeout);
            }
        }
        if readable() {
            return Poll::Ready(Woke::Data);
        }
        lock(&inner.read_wakers).push(cx.waker().clone());
        if readable() {
            return Poll::Ready(Woke::Data);
        }
        Poll::Pending
    })
    .await
}
