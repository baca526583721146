//! The `metrics` feature end to end: `MetricsExporter` publishing to the recorder of
//! `metrics-exporter-prometheus` (installed as the global recorder); its rendering
//! carries the same families as `Metrics::render_prometheus` and passes `promtool
//! check metrics` (installed by scripts/test.sh; without it the promtool step fails
//! under CI=true and is skipped loudly otherwise).
#![cfg(feature = "metrics")]

use std::time::{Duration, Instant};

use futures::executor::block_on;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use walspool_test_support::promtool_check;
use walspool_wal::metrics::{
    CONSUMER_FIGURES, FIGURES, FSYNC_BUCKETS_US, FSYNC_HISTOGRAM_METRIC, SINK_DESTINATION_METRIC,
    SINK_FIGURES, SINK_INFO_METRIC,
};
use walspool_wal::metrics_export::MetricsExporter;
use walspool_wal::shipper::{Batch, Shipper, Sink, SinkError, SinkMetricsSource};
use walspool_wal::{Durability, Memory, Options, SinkMetrics, Wal};

/// A sink that counts what it acknowledged and reports it (`Sink::metrics_source`).
struct Counting(std::sync::Arc<std::sync::atomic::AtomicU64>);

#[async_trait::async_trait]
impl Sink<u64> for Counting {
    async fn send(&mut self, batch: &Batch<u64>) -> Result<(), SinkError> {
        self.0
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn metrics_source(&self) -> Option<SinkMetricsSource> {
        let n = self.0.clone();
        Some(std::sync::Arc::new(move || {
            let n = n.load(std::sync::atomic::Ordering::SeqCst);
            SinkMetrics::new("counting")
                .stored(n)
                .latency_us(1_000, 2_000, 3_000)
                .per_destination([("audit.x".to_string(), n)].into())
        }))
    }
}

#[test]
fn prometheus_recorder_renders_the_same_families_and_promtool_accepts_them() {
    // The same buckets as render_prometheus (without them the recorder renders a
    // facade histogram as a summary).
    let buckets: Vec<f64> = FSYNC_BUCKETS_US.iter().map(|&us| us as f64 / 1e6).collect();
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(FSYNC_HISTOGRAM_METRIC.into()), &buckets)
        .unwrap()
        .install_recorder()
        .expect("the only recorder of this test binary");
    let wal = Wal::open(
        Memory::new(),
        Options::default().durability(Durability::Sync),
    )
    .unwrap();
    let _c = wal.consumer("slow").unwrap();
    let shipper = Shipper::builder(
        wal.consumer("shipped").unwrap(),
        Counting(Default::default()),
    )
    .linger(Duration::from_millis(1))
    .build()
    .unwrap()
    .spawn_on_thread()
    .unwrap();
    let exporter =
        MetricsExporter::start(&wal, Duration::from_millis(20), [("service", "orders")]).unwrap();
    for i in 0..20u64 {
        block_on(wal.append(&i)).unwrap();
    }
    let id = wal.id().to_string();
    let t = Instant::now();
    let text = loop {
        let text = handle.render();
        if text.contains(&format!(
            "wal_last_seq{{wal_id=\"{id}\",service=\"orders\"}} 20"
        )) && text.contains(&format!(
            "wal_sink_destination_records_total{{wal_id=\"{id}\",service=\"orders\",consumer=\"shipped\",destination=\"audit.x\"}} 20"
        )) {
            break text;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "not published:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    exporter.stop();
    shipper.shutdown().unwrap();

    let own = wal.metrics().render_prometheus();
    for name in FIGURES
        .iter()
        .map(|f| f.name)
        .chain(CONSUMER_FIGURES.iter().map(|f| f.name))
        .chain(SINK_FIGURES.iter().map(|f| f.name))
        .chain([
            FSYNC_HISTOGRAM_METRIC,
            SINK_INFO_METRIC,
            SINK_DESTINATION_METRIC,
        ])
    {
        for t in [&text, &own] {
            assert!(
                t.contains(&format!("# TYPE {name} ")),
                "{name} missing from\n{t}"
            );
        }
    }
    assert!(
        text.contains("# TYPE wal_fsync_duration_seconds histogram\n")
            && text.contains(&format!(
                "wal_fsync_duration_seconds_bucket{{wal_id=\"{id}\",service=\"orders\",le=\"+Inf\"}}"
            )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "wal_consumer_backlog_records{{wal_id=\"{id}\",service=\"orders\",consumer=\"slow\"}} 20"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "wal_sink_info{{wal_id=\"{id}\",service=\"orders\",consumer=\"shipped\",kind=\"counting\"}} 1"
        )) && text.contains(&format!(
            "wal_sink_publish_latency_p99_seconds{{wal_id=\"{id}\",service=\"orders\",consumer=\"shipped\"}} 0.002"
        )),
        "{text}"
    );
    promtool_check(&text);
    promtool_check(&own);
    block_on(wal.close()).unwrap();
}
