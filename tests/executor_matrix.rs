//! Every public async and blocking entry point of a WAL, its consumers, its shipper
//! and the `tracing` layer, driven from each executor walspool promises to work with:
//! tokio (current-thread and multi-thread), smol, `futures::executor::block_on`, a
//! `futures` `LocalPool`, and plain threads (issue 17).
//!
//! Each executor runs the same future, [`exercise`], which also makes the blocking calls
//! (`append_nowait`, `append_blocking`, `flush_blocking`, the `tracing` layer with and
//! without `wait_durable`) from inside the executor: that is where a nested
//! `futures::executor::block_on` used to panic ("cannot execute `LocalPool` executor
//! from within another executor").

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tracing_subscriber::prelude::*;
use walspool::shipper::{Batch, FnSink, Shipper, Sink};
use walspool::tracing_layer::WalLayer;
use walspool::{Memory, Options, Wal};

const DEADLINE: Duration = Duration::from_secs(30);

/// A sink that remembers the sequence numbers it was given.
fn recording_sink(got: Arc<Mutex<Vec<u64>>>) -> impl Sink<String> + 'static {
    FnSink::new(move |batch: &Batch<String>| {
        got.lock()
            .unwrap()
            .extend(batch.entries().iter().map(|e| e.seq));
        futures::future::ready(Ok(()))
    })
}

/// The blocking entry points, called from whatever thread runs them.
fn blocking_calls(wal: &Wal<Memory>, label: &str) {
    let a = wal
        .append_nowait(&format!("{label} nowait"))
        .expect("append_nowait");
    let b = wal
        .append_blocking(&format!("{label} blocking"))
        .expect("append_blocking");
    assert!(b > a, "{label}: {a} then {b}"); // other threads may append in between
    wal.flush_blocking().expect("flush_blocking");
    assert!(wal.durable_seq() >= b);
    wal.roll();
    let c = wal.consumer(&format!("{label}-sync")).expect("consumer");
    assert_eq!(c.committed(), 0);
    assert!(wal.consumers().iter().any(|(n, _)| n == c.name()));
    let _ = wal.metrics();
    assert!(wal.dead_letters("nobody").expect("dead_letters").is_empty());

    // The tracing layer, both ways, on this thread (into a WAL of its own: its
    // records are `LogRecord`s).
    let logs = Wal::open(Memory::new(), Options::default()).expect("open");
    for wait in [false, true] {
        let wal = &logs;
        let before = wal.last_seq();
        let layer = WalLayer::new(wal.clone(), "matrix").wait_durable(wait);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "matrix", label, wait, "an event");
        });
        assert_eq!(
            wal.last_seq(),
            before + 1,
            "{label}: layer (wait_durable {wait})"
        );
        if wait {
            assert!(wal.durable_seq() > before);
        }
    }
}

/// Every async entry point, with the blocking ones called in the middle.
async fn exercise(label: &str) {
    let wal = Wal::open(Memory::new(), Options::default()).expect("open");

    let first = wal.append(&format!("{label} 1")).await.expect("append");
    let range = wal
        .append_batch(&[format!("{label} 2"), format!("{label} 3")])
        .await
        .expect("append_batch");
    assert_eq!(range, first + 1..first + 3);
    let payload = postcard::to_stdvec(&format!("{label} 4")).unwrap();
    let p = wal
        .append_payloads(vec![payload])
        .await
        .expect("append_payloads");
    assert_eq!(p, first + 3..first + 4);
    wal.flush().await.expect("flush");

    blocking_calls(&wal, label);

    // Readers.
    let mut stream = wal.read_from::<String>(first);
    let e = stream.next().await.expect("one").expect("ok");
    assert_eq!(e.record, format!("{label} 1"));
    let got: Vec<_> = wal
        .read_range::<String>(first, first + 3)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(got.len(), 4);

    // A consumer: commit, replay, remove.
    let c = wal.consumer("replayer").expect("consumer");
    c.commit(first).await.expect("commit");
    assert_eq!(c.committed(), first);
    let replayed = c
        .replay::<String, _, _, std::convert::Infallible>(2, |_| async { Ok(()) })
        .await
        .expect("replay");
    assert_eq!(replayed, wal.durable_seq() - first, "{label}: replay");
    assert_eq!(c.committed(), wal.durable_seq());
    wal.remove_consumer("replayer")
        .await
        .expect("remove_consumer");

    // A shipper driven by this executor, watched with the async wait.
    let last = wal.last_seq();
    let got = Arc::new(Mutex::new(Vec::new()));
    let shipper =
        Shipper::<_, String>::builder(wal.consumer("ship").unwrap(), recording_sink(got.clone()))
            .linger(Duration::from_millis(1))
            .build()
            .expect("valid shipper configuration");
    let handle = shipper.handle();
    let run = shipper.run();
    let watch = async {
        handle.wait_committed(last).await;
        handle.request_shutdown();
    };
    let (status, ()) = futures::join!(run, watch);
    let status = status.expect("run");
    assert!(status.committed_seq >= last, "{label}: {status:?}");

    // A shipper on its own thread, watched with the blocking wait.
    let thread =
        Shipper::<_, String>::builder(wal.consumer("thread").unwrap(), recording_sink(got.clone()))
            .linger(Duration::from_millis(1))
            .build()
            .expect("valid shipper configuration")
            .spawn_on_thread()
            .expect("spawn_on_thread");
    assert!(thread.handle().wait_committed_timeout(last, DEADLINE));
    thread.shutdown().expect("shutdown");

    // Dead-letter re-drive (nothing to re-drive, but the call runs).
    let mut sink = recording_sink(got);
    let r = wal
        .redrive_dead_letters::<String, _>("ship", &mut sink)
        .await
        .expect("redrive");
    assert_eq!(r.delivered, 0);

    wal.close().await.expect("close");
    assert!(wal.append(&"late".to_string()).await.is_err());
}

#[test]
fn tokio_current_thread() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(exercise("tokio-ct"));
}

#[test]
fn tokio_multi_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // On a worker thread (spawned), not only in block_on.
    rt.block_on(async { rt_spawned().await });
}

async fn rt_spawned() {
    tokio::spawn(async { exercise("tokio-mt").await })
        .await
        .expect("task");
}

#[test]
fn smol() {
    smol::block_on(exercise("smol"));
}

#[test]
fn smol_executor() {
    let ex = smol::Executor::new();
    let task = ex.spawn(exercise("smol-executor"));
    smol::block_on(ex.run(task));
}

#[test]
fn futures_block_on() {
    futures::executor::block_on(exercise("block-on"));
}

#[test]
fn futures_local_pool() {
    let mut pool = futures::executor::LocalPool::new();
    pool.run_until(exercise("local-pool"));
}

#[test]
fn futures_local_pool_spawned() {
    use futures::task::LocalSpawnExt;
    let mut pool = futures::executor::LocalPool::new();
    let done = Arc::new(Mutex::new(false));
    let d = done.clone();
    pool.spawner()
        .spawn_local(async move {
            exercise("local-pool-spawned").await;
            *d.lock().unwrap() = true;
        })
        .unwrap();
    pool.run();
    assert!(*done.lock().unwrap());
}

/// Plain threads: the blocking entry points with no executor anywhere, several
/// threads at once on one WAL.
#[test]
fn plain_threads() {
    let wal = Wal::open(Memory::new(), Options::default()).expect("open");
    std::thread::scope(|s| {
        for i in 0..4 {
            let wal = &wal;
            s.spawn(move || blocking_calls(wal, &format!("thread-{i}")));
        }
    });
    let got = Arc::new(Mutex::new(Vec::new()));
    let last = wal.last_seq();
    let t = Shipper::<_, String>::builder(wal.consumer("plain").unwrap(), recording_sink(got))
        .build()
        .expect("valid shipper configuration")
        .spawn_on_thread()
        .unwrap();
    assert!(t.handle().wait_committed_timeout(last, DEADLINE));
    t.shutdown().unwrap();
    wal.flush_blocking().unwrap();
}

/// The regression of issue 17: `tracing` events inside `LocalPool` tasks, with the
/// layer installed for the thread (both without and with `wait_durable`), must not
/// panic ("cannot execute `LocalPool` executor from within another executor").
#[test]
fn tracing_layer_inside_local_pool() {
    use futures::task::LocalSpawnExt;
    for wait in [false, true] {
        let wal = Wal::open(Memory::new(), Options::default()).expect("open");
        let layer = WalLayer::new(wal.clone(), "pool").wait_durable(wait);
        let subscriber = tracing_subscriber::registry().with(layer);
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut pool = futures::executor::LocalPool::new();
        pool.spawner()
            .spawn_local(async {
                tracing::warn!(target: "pool", n = 2, "in a task spawned on a LocalPool");
            })
            .unwrap();
        pool.run_until(async {
            tracing::info!(target: "pool", n = 1, "inside LocalPool::run_until");
        });
        pool.run();
        wal.flush_blocking().unwrap();
        assert_eq!(wal.durable_seq(), 2, "wait_durable {wait}");
    }
}
