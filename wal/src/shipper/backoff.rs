//! Backoff between delivery attempts: full jitter, retry-after hints.

#[allow(unused_imports)]
use super::*;

/// Exponential backoff with full jitter: after the n-th consecutive failure (n = 0, 1,
/// ...) the shipper waits a delay drawn uniformly from `0..=min(max, initial * 2^n)`.
/// A sink's retry-after hint replaces the draw, capped by `max_retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Cap of the first delay (default 100 ms).
    pub initial: Duration,
    /// Cap of any delay (default 30 s).
    pub max: Duration,
    /// Longest retry-after hint honoured (default 5 min).
    pub max_retry_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The upper bound of the delay after `failures` consecutive failures (≥ 1).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(30);
        self.initial.saturating_mul(1u32 << shift).min(self.max)
    }
}

/// A small xorshift generator for jitter (no `rand` dependency).
#[derive(Debug)]
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(crate::wal::now_us());
        Rng(h.finish() | 1)
    }

    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..=max` (full jitter).
    pub(super) fn upto(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos().min(u64::MAX as u128) as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next() % (nanos + 1))
    }
}

/// Sleeps `d`; false when shutdown was asked for.
pub(super) async fn sleep(shared: &Shared, d: Duration) -> bool {
    if shared.shutdown.load(Ordering::Acquire) {
        return false;
    }
    if d.is_zero() {
        return true;
    }
    let mut delay = Delay::new(d);
    future::poll_fn(|cx| {
        shared.waker.register(cx.waker());
        if shared.shutdown.load(Ordering::Acquire) {
            return Poll::Ready(false);
        }
        delay.poll_unpin(cx).map(|()| true)
    })
    .await
}
