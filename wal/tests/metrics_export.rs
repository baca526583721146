//! The `metrics` feature: `MetricsExporter` publishes the same figures as
//! `render_prometheus` through the `metrics` facade, read back here from a real
//! recorder (metrics-util's `DebuggingRecorder`, installed as the global recorder).
#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use walspool_wal::metrics::{
    BREAKER_STATE_METRIC, CONSUMER_FIGURES, FIGURES, FSYNC_HISTOGRAM_METRIC,
};
use walspool_wal::metrics_export::{publish, MetricsExporter};
use walspool_wal::{Durability, Memory, Options, Wal};

type Series = HashMap<(String, Vec<(String, String)>), (MetricKind, DebugValue)>;

fn read(s: &Snapshotter) -> Series {
    s.snapshot()
        .into_vec()
        .into_iter()
        .map(|(ck, _unit, _desc, v)| {
            let (kind, key) = ck.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            labels.sort();
            ((key.name().to_string(), labels), (kind, v))
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn exporter_publishes_every_figure_through_the_facade() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let wal = Wal::open(
        Memory::new(),
        Options::default().durability(Durability::Sync),
    )
    .unwrap();
    let _c = wal.consumer("slow").unwrap();
    block_on(wal.append_batch(&(0..10u64).collect::<Vec<_>>())).unwrap();
    let exporter =
        MetricsExporter::start(&wal, Duration::from_millis(20), [("service", "orders")]).unwrap();
    for i in 0..5u64 {
        block_on(wal.append(&i)).unwrap();
    }
    let id = wal.id().to_string();
    let base = labels(&[("wal_id", &id), ("service", "orders")]);
    let per = labels(&[("wal_id", &id), ("service", "orders"), ("consumer", "slow")]);

    // Gauges and counters: absolute values, the latest snapshot.
    let t = Instant::now();
    let series = loop {
        let s = read(&snapshotter);
        let last = s.get(&("wal_last_seq".to_string(), base.clone()));
        if matches!(last, Some((_, DebugValue::Gauge(v))) if v.into_inner() == 15.0) {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no publication: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    for f in &FIGURES {
        let (kind, _) = series
            .get(&(f.name.to_string(), base.clone()))
            .unwrap_or_else(|| panic!("{} not published", f.name));
        let want = match f.kind {
            walspool_wal::metrics::FigureKind::Counter => MetricKind::Counter,
            walspool_wal::metrics::FigureKind::Gauge => MetricKind::Gauge,
        };
        assert_eq!(*kind, want, "{}", f.name);
    }
    for f in &CONSUMER_FIGURES {
        assert!(
            series.contains_key(&(f.name.to_string(), per.clone())),
            "{} not published per consumer",
            f.name
        );
    }
    assert!(matches!(
        series[&("wal_appended_records_total".to_string(), base.clone())].1,
        DebugValue::Counter(15)
    ));
    match &series[&("wal_consumer_backlog_records".to_string(), per.clone())].1 {
        DebugValue::Gauge(v) => assert_eq!(v.into_inner(), 15.0),
        v => panic!("{v:?}"),
    }
    // No shipper runs: no breaker series.
    assert!(!series.keys().any(|k| k.0 == BREAKER_STATE_METRIC));

    // The fsync histogram: observations recorded as the fsyncs happen.
    block_on(wal.append(&99u64)).unwrap();
    let t = Instant::now();
    loop {
        let s = read(&snapshotter);
        if let Some((MetricKind::Histogram, DebugValue::Histogram(obs))) =
            s.get(&(FSYNC_HISTOGRAM_METRIC.to_string(), base.clone()))
        {
            if !obs.is_empty() {
                assert!(obs
                    .iter()
                    .all(|v| v.into_inner() >= 0.0 && v.into_inner() < 60.0));
                break;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no fsync observation"
        );
        block_on(wal.append(&99u64)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    exporter.stop();

    // Described: help text and unit, for every family.
    // (The unit as its Debug text: the test does not depend on `metrics` itself.)
    let described: HashMap<String, (String, Option<String>)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(ck, unit, desc, _)| {
            let name = ck.key().name().to_string();
            (name, (format!("{unit:?}"), desc.map(|d| d.to_string())))
        })
        .collect();
    for f in &FIGURES {
        let (_, help) = &described[f.name];
        assert_eq!(help.as_deref(), Some(f.help), "{}", f.name);
    }
    assert_eq!(described["wal_backlog_age_seconds"].0, "Some(Seconds)");
    assert_eq!(described["wal_disk_bytes"].0, "Some(Bytes)");
    assert_eq!(described[FSYNC_HISTOGRAM_METRIC].0, "Some(Seconds)");

    // One snapshot by hand, with other labels.
    let m = wal.metrics();
    publish(&m, [("service", "by-hand")]);
    let s = read(&snapshotter);
    let hand = labels(&[("wal_id", &id), ("service", "by-hand")]);
    match &s[&("wal_last_seq".to_string(), hand)].1 {
        DebugValue::Gauge(v) => assert_eq!(v.into_inner(), m.last_seq as f64),
        v => panic!("{v:?}"),
    }
    block_on(wal.close()).unwrap();
}
