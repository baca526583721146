//! Test support shared by backends/tests/{nats,kafka}.rs: a broker sink's own figures
//! must reach the WAL's metrics (`ConsumerMetrics::sink`: the stats file, `walspool
//! status`, `walspool top`) unchanged.

use std::collections::BTreeMap;

use walspool_wal::{SinkMetrics, Storage, Wal};

/// The sink figures the WAL publishes for consumer `name`.
pub fn sink_of<S: Storage>(wal: &Wal<S>, name: &str) -> Option<SinkMetrics> {
    wal.metrics()
        .consumers
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.sink.clone())
}

/// Consumer `name`'s figures in the WAL's metrics: sink `kind`, `n` records stored,
/// nothing in flight or failed, `per_destination` records per topic or subject, and
/// the sink's own batch-acknowledgement latencies `(p50, p99, max)` in µs.
pub fn assert_sink_figures<S: Storage>(
    wal: &Wal<S>,
    name: &str,
    kind: &str,
    n: u64,
    per_destination: &BTreeMap<String, u64>,
    latency_us: (u64, u64, u64),
) {
    let s = sink_of(wal, name)
        .unwrap_or_else(|| panic!("the {kind} sink's figures in the WAL's metrics"));
    assert_eq!(
        (s.kind.as_str(), s.stored, s.in_flight, s.failed),
        (kind, n, 0, 0)
    );
    assert_eq!(&s.per_destination, per_destination);
    assert_eq!((s.p50_us, s.p99_us, s.max_us), latency_us);
}
