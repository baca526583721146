//! The circuit breaker: settings, state, and how the shipper moves between states.

#[allow(unused_imports)]
use super::*;

/// Circuit-breaker settings. Closed: batches flow. After `failure_threshold`
/// consecutive transient failures it opens: no call reaches the sink for `open_for`.
/// Then it is half-open: the next batch is a trial; success closes it, failure opens it
/// again. Permanent errors are answers from a working sink and do not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    /// Consecutive transient failures that open the breaker (default 5).
    pub failure_threshold: u32,
    /// How long it stays open before a trial (default 30 s; a longer retry-after hint
    /// wins).
    pub open_for: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Batches flow.
    #[default]
    Closed,
    /// The sink is considered down; nothing is sent.
    Open,
    /// One trial batch is allowed through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open` (as in the metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// Failure counts carried across batches.
#[derive(Debug, Default)]
pub(super) struct BreakerRun {
    /// Consecutive failed attempts of any kind (drives the backoff).
    pub(super) failures: u32,
    /// Consecutive transient failures (drives the breaker).
    pub(super) transient: u32,
}

impl<S: Storage, T: DeserializeOwned + Send + Sync + 'static> Shipper<S, T> {
    pub(super) fn set_breaker(&self, s: BreakerState) {
        let prev = {
            let mut st = lock(&self.shared.status);
            let prev = st.breaker;
            st.breaker = s;
            if prev != s {
                match s {
                    BreakerState::Open => st.breaker_opened += 1,
                    BreakerState::HalfOpen => st.breaker_half_opened += 1,
                    BreakerState::Closed => {}
                }
            }
            prev
        };
        if prev != s {
            tracing::info!(consumer = %self.consumer_name, from = prev.as_str(), to = s.as_str(), "circuit breaker");
        }
        self.consumer
            .wal()
            .hooks()
            .record_breaker_state(&self.consumer_name, s);
    }

    pub(super) fn breaker(&self) -> BreakerState {
        lock(&self.shared.status).breaker
    }
}
