//! Archive acceptance suite (issue 5): the same scenarios on a real S3-compatible server
//! (moto on 127.0.0.1), on `file://` and on object_store's in-memory store; from tokio,
//! smol and `futures::executor::block_on`; an object-store outage; and (with
//! `WALSPOOL_MEASURE=1`) upload throughput of 64 MiB segments.
//!
//! moto: the tests use `WALSPOOL_S3_ENDPOINT` when a server answers there, else start
//! their own with `scripts/moto.sh start PORT` (which installs moto into `.venv-moto`)
//! and stop it at the end. With `CI=true` a missing moto fails the suite; elsewhere the
//! S3 tests skip with a loud message.
#![cfg(feature = "object-store")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::ObjectStoreExt;
use walspool_backends::archive::{
    replay, restore, ArchiveReader, ArchiveStore, Archiver, ArchiverOptions, RestoreOptions,
    RestoreProgress, StoreOptions, ARCHIVE_STATE_KEY,
};
use walspool_backends::LocalDisk;
use walspool_wal::format::segment_file_name;
use walspool_wal::{Options, Storage, Wal};

// ---------------------------------------------------------------- moto helpers

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/moto.sh")
}

fn answers(endpoint: &str) -> bool {
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read(&mut buf)
        .is_ok_and(|n| n >= 12 && buf.starts_with(b"HTTP/1."))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A moto server: either one already running at `WALSPOOL_S3_ENDPOINT`, or one this
/// test started (and stops when dropped).
struct Moto {
    endpoint: String,
    port: Option<u16>,
}

impl Moto {
    /// The shared server, or a fresh one; `None` (after a loud message) outside CI when
    /// moto cannot be started.
    fn get() -> Option<Moto> {
        if let Ok(ep) = std::env::var("WALSPOOL_S3_ENDPOINT") {
            if answers(&ep) {
                return Some(Moto {
                    endpoint: ep,
                    port: None,
                });
            }
            eprintln!("archive tests: nothing answers at WALSPOOL_S3_ENDPOINT={ep}; starting moto");
        }
        Self::dedicated()
    }

    /// A server of this test's own, which it may stop and start.
    fn dedicated() -> Option<Moto> {
        let port = free_port();
        let m = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            port: Some(port),
        };
        match m.start() {
            Ok(()) => Some(m),
            Err(e) if in_ci() => {
                panic!("CI=true: the S3 archive suite must run, but moto could not start: {e}")
            }
            Err(e) => {
                eprintln!();
                eprintln!(
                    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
                );
                eprintln!("!!! SKIPPING the S3 archive tests: moto could not be started: {e}");
                eprintln!("!!! (run scripts/moto.sh start, or set WALSPOOL_S3_ENDPOINT)");
                eprintln!(
                    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
                );
                None
            }
        }
    }

    fn start(&self) -> Result<(), String> {
        let port = self.port.expect("only a dedicated server can be started");
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(port.to_string())
            .output()
            .map_err(|e| format!("running {}: {e}", script().display()))?;
        if !out.status.success() || !answers(&self.endpoint) {
            return Err(format!(
                "scripts/moto.sh start {port} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    fn stop(&self) {
        let port = self.port.expect("only a dedicated server can be stopped");
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(port.to_string())
            .status();
        wait_until("moto to stop", || !answers(&self.endpoint));
    }

    /// Creates a bucket with a plain HTTP PUT (moto accepts any credentials).
    fn create_bucket(&self, bucket: &str) {
        let addr = self.endpoint.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).expect("connect to moto");
        let req = format!("PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).expect("send PUT bucket");
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "creating bucket {bucket}: {resp}"
        );
    }

    fn store(&self, bucket: &str, prefix: &str) -> ArchiveStore {
        let opts = StoreOptions::default()
            .endpoint(&self.endpoint)
            .allow_http(true)
            .region("us-east-1")
            .credentials("testing", "testing")
            .client_retries(1)
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(60));
        ArchiveStore::open_with(&format!("s3://{bucket}/{prefix}"), opts).expect("open s3 store")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(port) = self.port {
            let _ = Command::new("bash")
                .arg(script())
                .arg("stop")
                .arg(port.to_string())
                .status();
        }
    }
}

// ---------------------------------------------------------------- small helpers

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    // A safety net against hangs, not a timing assertion.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fast() -> ArchiverOptions {
    ArchiverOptions::default()
        .backoff(Duration::from_millis(20), Duration::from_millis(300))
        .verify_readback(true)
}

fn records(from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| format!("record {i} {}", "x".repeat(i * 37 % 300)))
        .collect()
}

async fn append_all(wal: &Wal<LocalDisk>, recs: &[String]) {
    for chunk in recs.chunks(7) {
        wal.append_batch(chunk).await.expect("append");
    }
}

/// Seals the active segment and waits until it is sealed.
async fn roll(wal: &Wal<LocalDisk>) {
    wal.roll();
    wal.flush().await.expect("flush");
}

/// Waits until the housekeeper ran retention after everything queued so far: commits
/// are processed in order on the housekeeping thread, each followed by retention.
async fn retention_barrier(wal: &Wal<LocalDisk>) {
    let c = wal.consumer("audit").expect("consumer");
    c.commit(wal.durable_seq()).await.expect("commit");
    c.commit(wal.durable_seq()).await.expect("commit (barrier)");
}

fn segment_files(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .expect("read WAL dir")
        .filter_map(|e| {
            walspool_wal::format::parse_segment_file_name(e.ok()?.file_name().to_str()?)
        })
        .collect();
    v.sort();
    v
}

async fn object_bytes(store: &ArchiveStore, key: &object_store::path::Path) -> Vec<u8> {
    let key = key.clone();
    store
        .run(|os| async move {
            let r = os
                .get(&key)
                .await
                .map_err(|e| walspool_backends::archive::ArchiveError::Config(e.to_string()))?;
            let b = r
                .bytes()
                .await
                .map_err(|e| walspool_backends::archive::ArchiveError::Config(e.to_string()))?;
            Ok(b.to_vec())
        })
        .await
        .expect("get object")
}

fn opts() -> Options {
    Options::default().segment_size(8 << 10).wal_id("wal-a")
}

// ---------------------------------------------------------------- the scenario

/// Upload; restart without re-upload; deletion only after upload; restore into an empty
/// directory with every record byte-equal; replay across archive and local segments.
/// `mk` opens the archive store (again, for the restart).
async fn scenario(mk: &(dyn Fn() -> ArchiveStore + Sync), label: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    let first = records(0, 300);

    // 1. Upload every sealed segment, verified, under the documented keys.
    let wal = Wal::open(LocalDisk::open(&dir).expect("LocalDisk"), opts()).expect("open");
    wal.consumer("audit").expect("consumer");
    let store = mk();
    let archiver = Archiver::start(&wal, store.clone(), fast()).expect("archiver");
    append_all(&wal, &first).await;
    roll(&wal).await;
    let status = archiver.sync().await.expect("sync");
    let sealed = wal.sealed_segments();
    assert!(
        sealed.len() >= 5,
        "{label}: want several sealed segments, got {}",
        sealed.len()
    );
    assert_eq!(status.archived_through_seq, 300, "{label}");
    assert_eq!(status.lag_segments, 0, "{label}");
    let listed = store.list_segments("wal-a").await.expect("list");
    let want: Vec<(u64, u64, u64)> = sealed
        .iter()
        .map(|s| (s.base_seq, s.last_seq, s.bytes))
        .collect();
    let got: Vec<(u64, u64, u64)> = listed
        .iter()
        .map(|s| (s.first_seq, s.last_seq, s.size))
        .collect();
    assert_eq!(got, want, "{label}: archived segments = sealed segments");
    for s in &listed {
        assert_eq!(
            s.key,
            store.segment_key("wal-a", s.first_seq, s.last_seq),
            "{label}"
        );
        assert!(
            s.key
                .as_ref()
                .ends_with(&format!("wal-a/{:020}-{:020}.seg", s.first_seq, s.last_seq)),
            "{label}: key {}",
            s.key
        );
        let local = std::fs::read(dir.join(segment_file_name(s.first_seq))).expect("read segment");
        assert_eq!(
            object_bytes(&store, &s.key).await,
            local,
            "{label}: object {} differs",
            s.key
        );
    }
    let stats = archiver.stats();
    assert_eq!(stats.uploaded_segments, sealed.len() as u64, "{label}");
    let m = wal.metrics();
    assert!(m.archiving, "{label}");
    assert_eq!(
        (m.archive_lag_segments, m.archive_lag_bytes),
        (0, 0),
        "{label}"
    );
    assert!(m.last_archive_ts > 0, "{label}");
    assert!(
        m.segments.iter().filter(|s| s.sealed).all(|s| s.archived),
        "{label}"
    );
    let before: Vec<_> = listed.iter().map(|s| (s.key.clone(), s.size)).collect();

    // 2. Restart: nothing is uploaded again.
    archiver.shutdown().await;
    wal.close().await.expect("close");
    drop(wal);
    let wal = Wal::open(LocalDisk::open(&dir).expect("LocalDisk"), opts()).expect("reopen");
    let store = mk();
    let archiver = Archiver::start(&wal, store.clone(), fast()).expect("archiver 2");
    let status = archiver.sync().await.expect("sync 2");
    assert_eq!(status.archived_through_seq, 300, "{label}");
    let stats = archiver.stats();
    assert_eq!(
        (
            stats.uploaded_segments,
            stats.skipped_existing,
            stats.errors
        ),
        (0, 0, 0),
        "{label}: a restart must not upload again"
    );
    let after: Vec<_> = store
        .list_segments("wal-a")
        .await
        .expect("list")
        .iter()
        .map(|s| (s.key.clone(), s.size))
        .collect();
    assert_eq!(after, before, "{label}");

    // 3. Deletion only after upload: committed-past segments that are archived go,
    //    those not yet archived stay.
    archiver.pause();
    let second = records(300, 150);
    append_all(&wal, &second).await;
    roll(&wal).await;
    retention_barrier(&wal).await;
    let unarchived = wal.sealed_segments();
    assert!(!unarchived.is_empty(), "{label}");
    assert!(
        unarchived.iter().all(|s| s.base_seq > 300),
        "{label}: archived segments were deleted: {unarchived:?}"
    );
    let files = segment_files(&dir);
    for s in &unarchived {
        assert!(
            files.contains(&s.base_seq),
            "{label}: unarchived segment {} was deleted",
            s.base_seq
        );
    }
    for s in &sealed {
        assert!(
            !files.contains(&s.base_seq),
            "{label}: archived, committed segment {} still on disk",
            s.base_seq
        );
    }
    let m = wal.metrics();
    assert_eq!(m.archive_lag_segments, unarchived.len() as u64, "{label}");
    assert_eq!(
        m.archive_lag_bytes,
        unarchived.iter().map(|s| s.bytes).sum::<u64>(),
        "{label}"
    );
    let unarchived_bytes: Vec<Vec<u8>> = unarchived
        .iter()
        .map(|s| std::fs::read(dir.join(segment_file_name(s.base_seq))).expect("read"))
        .collect();
    archiver.resume();
    let status = archiver.sync().await.expect("sync 3");
    assert_eq!(status.archived_through_seq, 450, "{label}");
    retention_barrier(&wal).await;
    assert!(
        wal.sealed_segments().is_empty(),
        "{label}: archived segments should be deleted"
    );
    assert_eq!(
        segment_files(&dir).len(),
        1,
        "{label}: only the active segment stays"
    );
    for (s, bytes) in unarchived.iter().zip(&unarchived_bytes) {
        let key = store.segment_key("wal-a", s.base_seq, s.last_seq);
        assert_eq!(&object_bytes(&store, &key).await, bytes, "{label}");
    }

    // 4. Restore into an empty directory; every record byte-equal.
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    let restored = tmp.path().join("restored");
    let seen: Arc<Mutex<Vec<RestoreProgress>>> = Arc::default();
    let s2 = seen.clone();
    let report = restore(
        &mk(),
        &restored,
        RestoreOptions::default().progress(Arc::new(move |p: &RestoreProgress| {
            s2.lock().unwrap().push(p.clone())
        })),
    )
    .await
    .expect("restore");
    assert_eq!(
        (
            report.source_wal_id.as_str(),
            report.first_seq,
            report.last_seq
        ),
        ("wal-a", 1, 450),
        "{label}"
    );
    // A new id: records appended after the restore never reuse the original's
    // idempotency keys (its unarchived tail may have used those sequence numbers).
    assert!(
        report.wal_id.starts_with("wal-a-restored-"),
        "{label}: {}",
        report.wal_id
    );
    {
        let seen = seen.lock().unwrap();
        let last = seen.last().expect("progress was reported");
        assert_eq!(last.segments_done, last.segments_total, "{label}");
        assert_eq!(last.bytes_done, last.bytes_total, "{label}");
        assert_eq!(last.bytes_total, report.bytes, "{label}");
        assert!(
            seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done),
            "{label}: progress went backwards"
        );
        assert!(
            seen.len() as u64 > report.segments,
            "{label}: progress per segment at least"
        );
    }
    for s in store.list_segments("wal-a").await.expect("list") {
        let local =
            std::fs::read(restored.join(segment_file_name(s.first_seq))).expect("restored segment");
        assert_eq!(
            local,
            object_bytes(&store, &s.key).await,
            "{label}: restored file differs"
        );
    }
    let rwal = Wal::open(
        LocalDisk::open(&restored).expect("LocalDisk"),
        Options::default().segment_size(8 << 10),
    )
    .expect("open restored");
    assert_eq!(rwal.id(), report.wal_id, "{label}: the restored WAL's id");
    let mut rs = rwal.read_from::<String>(1);
    for (i, want) in all.iter().enumerate() {
        let e = rs.try_next_raw().expect("read").expect("record present");
        assert_eq!(e.seq, i as u64 + 1, "{label}");
        assert_eq!(
            e.record,
            postcard::to_allocvec(want).unwrap(),
            "{label}: record {} not byte-equal",
            e.seq
        );
    }
    assert!(rs.try_next_raw().expect("read").is_none(), "{label}");
    // The restored WAL continues after the archive and does not upload it again.
    assert_eq!(
        rwal.append(&"after restore".to_string())
            .await
            .expect("append"),
        451,
        "{label}"
    );
    let rarch = Archiver::start(&rwal, mk(), fast()).expect("archiver on restored");
    rarch.sync().await.expect("sync restored");
    assert_eq!(rarch.stats().uploaded_segments, 0, "{label}");
    rarch.shutdown().await;
    rwal.close().await.expect("close restored");

    // 5. Replay across archive and local segments, from any sequence number.
    let third = records(450, 20);
    append_all(&wal, &third).await;
    let everything: Vec<String> = all.iter().chain(&third).cloned().collect();
    let mut r = replay::<_, String>(&wal, &store, 1);
    for (i, want) in everything.iter().enumerate() {
        let e = r.next().await.expect("replay item").expect("replay record");
        assert_eq!((e.seq, &e.record), (i as u64 + 1, want), "{label}");
    }
    let mut r = replay::<_, String>(&wal, &store, 37);
    assert_eq!(
        r.next().await.unwrap().unwrap().seq,
        37,
        "{label}: start inside the archive"
    );
    let mut r = replay::<_, String>(&wal, &store, 460);
    assert_eq!(
        r.next().await.unwrap().unwrap().record,
        everything[459],
        "{label}: start on local disk"
    );
    let mut ar = ArchiveReader::open(&store, "wal-a", 1)
        .await
        .expect("archive reader");
    let mut n = 0;
    while let Some(e) = ar.next_raw().await.expect("archive read") {
        assert_eq!(e.record, postcard::to_allocvec(&all[n]).unwrap(), "{label}");
        n += 1;
    }
    assert_eq!(n, 450, "{label}");

    archiver.shutdown().await;
    wal.close().await.expect("close");
}

/// A segment above the multipart threshold goes up in parts and arrives intact.
async fn multipart_scenario(store: ArchiveStore, label: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    let wal = Wal::open(
        LocalDisk::open(&dir).expect("LocalDisk"),
        Options::default().segment_size(32 << 20).wal_id("wal-mp"),
    )
    .expect("open");
    let opts = fast().multipart_threshold(6 << 20).part_size(5 << 20);
    let archiver = Archiver::start(&wal, store.clone(), opts).expect("archiver");
    let big: Vec<Vec<u8>> = (0..200u32)
        .map(|i| vec![(i % 251) as u8; 64 << 10])
        .collect();
    for chunk in big.chunks(20) {
        wal.append_batch(chunk).await.expect("append");
    }
    roll(&wal).await;
    archiver.sync().await.expect("sync");
    let sealed = wal.sealed_segments();
    assert_eq!(sealed.len(), 1, "{label}");
    assert!(
        sealed[0].bytes > 12 << 20,
        "{label}: segment is {} bytes",
        sealed[0].bytes
    );
    let key = store.segment_key("wal-mp", sealed[0].base_seq, sealed[0].last_seq);
    let local = std::fs::read(dir.join(segment_file_name(sealed[0].base_seq))).expect("read");
    assert_eq!(
        object_bytes(&store, &key).await,
        local,
        "{label}: multipart object differs"
    );
    assert_eq!(archiver.stats().uploaded_segments, 1, "{label}");
    archiver.shutdown().await;
    wal.close().await.expect("close");
}

// ---------------------------------------------------------------- executors

fn on_tokio<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

// ---------------------------------------------------------------- in-memory and file://

#[test]
fn memory_suite_on_every_executor() {
    let store = ArchiveStore::open("memory://archive").expect("memory store");
    let s = store.clone();
    futures::executor::block_on(scenario(&move || s.clone(), "memory/block_on"));
    let store = ArchiveStore::open("memory://archive").expect("memory store");
    let s = store.clone();
    smol::block_on(scenario(&move || s.clone(), "memory/smol"));
    let store = ArchiveStore::open("memory://").expect("memory store");
    let s = store.clone();
    on_tokio(scenario(&move || s.clone(), "memory/tokio"));
    futures::executor::block_on(multipart_scenario(store, "memory/multipart"));
}

/// Whether an object exists in the archive.
async fn object_exists(store: &ArchiveStore, key: &object_store::path::Path) -> bool {
    let key = key.clone();
    store
        .run(|os| async move {
            match os.head(&key).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(walspool_backends::archive::ArchiveError::Config(
                    e.to_string(),
                )),
            }
        })
        .await
        .expect("head object")
}

/// Issue case 6: sealed segments that `max_age` deletes before the archiver uploads
/// them (here while it is paused) are not reported as archived: they are counted as
/// lost (in the archiver's stats and in the WAL's persisted
/// `archive_lost_segments_total`), no upload or archive time is recorded for them, and
/// the archiver goes on with the next segment.
#[test]
fn segments_deleted_before_archival_are_counted_lost_not_archived() {
    futures::executor::block_on(async {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("wal");
        let store = ArchiveStore::open("memory://lost").expect("memory store");
        let max_age = Duration::from_millis(1500);
        let wal = Wal::open(LocalDisk::open(&dir).unwrap(), opts().max_age(max_age)).unwrap();
        let arch = Archiver::start(&wal, store.clone(), fast().start_paused(true)).unwrap();

        append_all(&wal, &records(0, 40)).await;
        roll(&wal).await;
        append_all(&wal, &records(40, 40)).await;
        roll(&wal).await;
        let doomed = wal.sealed_segments();
        assert!(doomed.len() >= 2, "{doomed:?}");
        // The WAL forgets a segment just before it removes the file: wait for both.
        wait_until("max_age deleting the sealed segments", || {
            wal.sealed_segments().is_empty()
                && doomed
                    .iter()
                    .all(|s| !segment_files(&dir).contains(&s.base_seq))
        });
        for s in &doomed {
            assert!(!segment_files(&dir).contains(&s.base_seq));
        }

        arch.resume();
        let n = doomed.len() as u64;
        wait_until("the lost segments being counted", || {
            arch.stats().lost_segments >= n
        });
        let st = arch.stats();
        assert_eq!(st.lost_segments, n, "{st:?}");
        assert_eq!(
            (st.uploaded_segments, st.skipped_existing),
            (0, 0),
            "{st:?}"
        );
        let m = wal.metrics();
        assert_eq!(m.archive_lost_segments_total, n);
        assert_eq!(
            m.last_archive_ts, 0,
            "a lost segment recorded an archive time"
        );
        assert!(m.render_prometheus().contains(&format!(
            "wal_archive_lost_segments_total{{wal_id=\"wal-a\"}} {n}\n"
        )));
        for s in &doomed {
            let key = store.segment_key("wal-a", s.base_seq, s.last_seq);
            assert!(!object_exists(&store, &key).await, "{key} in the archive");
        }

        // The archiver goes on: the next segment is archived as usual.
        append_all(&wal, &records(80, 20)).await;
        roll(&wal).await;
        let fresh = wal.sealed_segments();
        assert!(!fresh.is_empty());
        arch.sync().await.expect("archive sync");
        let st = arch.stats();
        assert_eq!(
            (st.uploaded_segments, st.lost_segments),
            (fresh.len() as u64, n),
            "{st:?} {fresh:?}"
        );
        for s in &fresh {
            assert!(st.archived_through_seq >= s.last_seq);
            assert!(
                object_exists(&store, &store.segment_key("wal-a", s.base_seq, s.last_seq)).await
            );
        }
        assert!(wal.metrics().last_archive_ts > 0);

        // The count survives a restart, and a restarted archiver does not count again.
        arch.shutdown().await;
        wal.close().await.expect("close");
        drop(wal);
        let wal = Wal::open(LocalDisk::open(&dir).unwrap(), opts()).unwrap();
        assert_eq!(wal.metrics().archive_lost_segments_total, n);
        let arch = Archiver::start(&wal, store.clone(), fast()).unwrap();
        arch.sync().await.expect("archive sync");
        assert_eq!(arch.stats().lost_segments, 0);
        assert_eq!(wal.metrics().archive_lost_segments_total, n);
        arch.shutdown().await;
        wal.close().await.expect("close");
    });
}

#[test]
fn file_suite() {
    let root = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}/archive", root.path().display());
    smol::block_on(scenario(
        &|| ArchiveStore::open(&url).expect("file store"),
        "file/smol",
    ));
    let url2 = format!("file://{}/archive-mp", root.path().display());
    futures::executor::block_on(multipart_scenario(
        ArchiveStore::open(&url2).expect("file store"),
        "file/multipart",
    ));
    // The objects are plain files under the documented keys.
    let seg = root
        .path()
        .join("archive/wal-a")
        .join(format!("{:020}-", 1));
    let listing: Vec<String> = std::fs::read_dir(root.path().join("archive/wal-a"))
        .expect("archive dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        listing
            .iter()
            .any(|n| n.starts_with(seg.file_name().unwrap().to_str().unwrap())),
        "{listing:?}"
    );
}

// ---------------------------------------------------------------- S3 (moto)

#[test]
fn s3_suite_on_every_executor() {
    let Some(moto) = Moto::get() else { return };
    let bucket = format!("walspool-suite-{}", std::process::id());
    moto.create_bucket(&bucket);
    let (m, b) = (&moto, bucket.as_str());
    futures::executor::block_on(scenario(&|| m.store(b, "block_on"), "s3/block_on"));
    smol::block_on(scenario(&|| m.store(b, "smol/nested"), "s3/smol"));
    on_tokio(scenario(&|| m.store(b, "tokio"), "s3/tokio"));
    smol::block_on(multipart_scenario(m.store(b, "multipart"), "s3/multipart"));
}

#[test]
fn s3_outage_keeps_segments_counts_errors_and_catches_up() {
    let Some(moto) = Moto::dedicated() else {
        return;
    };
    let bucket = "walspool-outage";
    moto.create_bucket(bucket);
    smol::block_on(async {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("wal");
        let wal = Wal::open(LocalDisk::open(&dir).expect("LocalDisk"), opts()).expect("open");
        wal.consumer("audit").expect("consumer");
        let store = moto.store(bucket, "outage");
        let archiver = Archiver::start(&wal, store.clone(), fast()).expect("archiver");
        append_all(&wal, &records(0, 100)).await;
        roll(&wal).await;
        let through = archiver.sync().await.expect("sync").archived_through_seq;
        assert_eq!(through, 100);
        assert_eq!(wal.metrics().archive_errors_total, 0);

        // The object store goes down mid-run.
        moto.stop();
        for round in 0..3 {
            append_all(&wal, &records(100 + round * 60, 60)).await;
            roll(&wal).await;
        }
        wait_until("archive errors to be counted", || {
            wal.metrics().archive_errors_total >= 2
        });
        retention_barrier(&wal).await;
        let pending = wal.sealed_segments();
        assert!(pending.len() >= 3, "{pending:?}");
        assert!(pending.iter().all(|s| s.last_seq > through));
        let files = segment_files(&dir);
        assert!(
            pending.iter().all(|s| files.contains(&s.base_seq)),
            "local segments must be kept while the store is down"
        );
        let m = wal.metrics();
        assert_eq!(m.archive_lag_segments, pending.len() as u64);
        assert_eq!(
            m.archive_lag_bytes,
            pending.iter().map(|s| s.bytes).sum::<u64>()
        );
        assert!(archiver.stats().errors >= 2 && archiver.stats().last_error.is_some());
        let kept: Vec<Vec<u8>> = pending
            .iter()
            .map(|s| std::fs::read(dir.join(segment_file_name(s.base_seq))).expect("read"))
            .collect();

        // It comes back (empty: moto keeps nothing across a restart).
        moto.start().expect("restart moto");
        moto.create_bucket(bucket);
        let status = archiver.sync().await.expect("sync after the outage");
        assert_eq!(status.archived_through_seq, 280);
        assert_eq!((status.lag_segments, status.lag_bytes), (0, 0));
        for (s, bytes) in pending.iter().zip(&kept) {
            let key = store.segment_key("wal-a", s.base_seq, s.last_seq);
            assert_eq!(
                &object_bytes(&store, &key).await,
                bytes,
                "segment {} after the outage",
                s.base_seq
            );
        }
        retention_barrier(&wal).await;
        assert!(
            wal.sealed_segments().is_empty(),
            "archived segments are deleted once the store is back"
        );
        let m = wal.metrics();
        assert!(m.archive_errors_total >= 2);
        assert_eq!(archiver.stats().last_error, None);
        archiver.shutdown().await;
        wal.close().await.expect("close");
    });
}

// ---------------------------------------------------------------- throughput

/// `WALSPOOL_MEASURE=1 cargo test -p walspool-backends --features object-store --release
/// --test archive measure -- --nocapture`: 64 MiB segments to loopback moto, archiver vs
/// a raw object_store put (and multipart put) of the same bytes, in the same run.
#[test]
fn measure_upload_throughput_64mib() {
    if std::env::var("WALSPOOL_MEASURE").ok().as_deref() != Some("1") {
        eprintln!("measure_upload_throughput_64mib: set WALSPOOL_MEASURE=1 to measure");
        return;
    }
    let Some(moto) = Moto::get() else { return };
    let bucket = format!("walspool-measure-{}", std::process::id());
    moto.create_bucket(&bucket);
    let store = moto.store(&bucket, "measure");
    futures::executor::block_on(async {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("wal");
        let wal = Wal::open(
            LocalDisk::open(&dir).expect("LocalDisk"),
            Options::default()
                .segment_size(64 << 20)
                .wal_id("wal-measure"),
        )
        .expect("open");
        let archiver = Archiver::start(
            &wal,
            store.clone(),
            ArchiverOptions::default().start_paused(true),
        )
        .expect("archiver");
        let rec = vec![0xA5u8; 256 << 10];
        let rounds = 3;
        for _ in 0..rounds {
            for _ in 0..255 {
                wal.append_payloads(vec![rec.clone()])
                    .await
                    .expect("append");
            }
            roll(&wal).await;
        }
        let sealed = wal.sealed_segments();
        let total: u64 = sealed.iter().map(|s| s.bytes).sum();
        let t = Instant::now();
        archiver.resume();
        archiver.sync().await.expect("sync");
        let arch = t.elapsed();
        let mib = |b: u64, d: Duration| b as f64 / (1 << 20) as f64 / d.as_secs_f64();
        println!(
            "MEASURE archiver: {} segments, {:.1} MiB, {:.2} s, {:.1} MiB/s (multipart 8 MiB parts x4, verify size+footer)",
            sealed.len(),
            total as f64 / (1 << 20) as f64,
            arch.as_secs_f64(),
            mib(total, arch)
        );
        let mut raw_put = Duration::ZERO;
        let mut raw_mp = Duration::ZERO;
        for (i, s) in sealed.iter().enumerate() {
            let bytes = std::fs::read(dir.join(segment_file_name(s.base_seq))).expect("read");
            let b2 = bytes.clone();
            let key = object_store::path::Path::from(format!("raw/put-{i}"));
            let t = Instant::now();
            store
                .run(|os| async move {
                    os.put(&key, b2.into()).await.map_err(|e| {
                        walspool_backends::archive::ArchiveError::Config(e.to_string())
                    })?;
                    Ok(())
                })
                .await
                .expect("raw put");
            raw_put += t.elapsed();
            let key = object_store::path::Path::from(format!("raw/mp-{i}"));
            let t = Instant::now();
            store
                .run(|os| async move {
                    let e = |e: object_store::Error| {
                        walspool_backends::archive::ArchiveError::Config(e.to_string())
                    };
                    let up = os.put_multipart(&key).await.map_err(e)?;
                    let mut w = object_store::WriteMultipart::new_with_chunk_size(up, 8 << 20);
                    for c in bytes.chunks(8 << 20) {
                        w.wait_for_capacity(4).await.map_err(e)?;
                        w.write(c);
                    }
                    w.finish().await.map_err(e)?;
                    Ok(())
                })
                .await
                .expect("raw multipart");
            raw_mp += t.elapsed();
        }
        println!(
            "MEASURE raw object_store put: {:.2} s, {:.1} MiB/s",
            raw_put.as_secs_f64(),
            mib(total, raw_put)
        );
        println!(
            "MEASURE raw object_store multipart put (8 MiB x4): {:.2} s, {:.1} MiB/s",
            raw_mp.as_secs_f64(),
            mib(total, raw_mp)
        );
        archiver.shutdown().await;
        wal.close().await.expect("close");
    });
}

/// An archive state beyond the recovered end of the local log (its tail went missing)
/// is an error, not silently accepted.
#[test]
fn archive_state_beyond_the_log_is_an_error() {
    futures::executor::block_on(async {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("wal");
        let store = ArchiveStore::open("memory://beyond").expect("memory store");
        let wal = Wal::open(LocalDisk::open(&dir).unwrap(), opts()).unwrap();
        append_all(&wal, &records(0, 5)).await;
        let state = format!(
            r#"{{"version":1,"store":"{}","archived_through_seq":900}}"#,
            store.identity()
        );
        wal.storage()
            .put_meta(ARCHIVE_STATE_KEY, state.as_bytes())
            .unwrap();
        let err = Archiver::start(&wal, store, fast()).expect_err("state beyond the log");
        assert!(err.to_string().contains("local tail is missing"), "{err}");
        wal.close().await.unwrap();
    });
}

/// Records archived before their type changed come back through the type's upgrade:
/// `ArchiveReader::next_as` with the new schema, and `replay` on a WAL opened with it.
#[test]
fn archived_records_of_an_older_schema_version_are_upgraded() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct V1 {
        name: String,
    }
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct V2 {
        name: String,
        tenant: Option<String>,
    }
    impl walspool_wal::Versioned for V2 {
        const VERSION: u8 = 2;
        fn upgrade(from: u8, bytes: &[u8]) -> Result<Self, walspool_wal::UpgradeError> {
            match from {
                1 => {
                    let v1: V1 = postcard::from_bytes(bytes)?;
                    Ok(V2 {
                        name: v1.name,
                        tenant: None,
                    })
                }
                _ => Err(walspool_wal::UpgradeError::unknown(from)),
            }
        }
    }
    futures::executor::block_on(async {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("wal");
        let store = ArchiveStore::open("memory://upgrade").expect("memory store");
        // Version 1: no schema registered.
        {
            let wal = Wal::open(LocalDisk::open(&dir).unwrap(), opts()).unwrap();
            let archiver = Archiver::start(&wal, store.clone(), fast()).unwrap();
            for i in 0..50 {
                wal.append(&V1 {
                    name: format!("r{i}"),
                })
                .await
                .unwrap();
            }
            roll(&wal).await;
            assert_eq!(archiver.sync().await.unwrap().archived_through_seq, 50);
            archiver.shutdown().await;
            wal.close().await.unwrap();
        }
        let schema = walspool_wal::Schema::of::<V2>();
        let mut ar = ArchiveReader::open(&store, "wal-a", 1).await.unwrap();
        for i in 0..50u64 {
            let e = ar
                .next_as::<V2>(&schema)
                .await
                .unwrap()
                .expect("archived record");
            assert_eq!(
                (e.seq, e.record),
                (
                    i + 1,
                    V2 {
                        name: format!("r{i}"),
                        tenant: None
                    }
                )
            );
        }
        // replay on the WAL reopened as V2 reads the archive through the WAL's schema.
        let wal = Wal::open(LocalDisk::open(&dir).unwrap(), opts().schema::<V2>()).unwrap();
        let got: Vec<_> = replay::<_, V2>(&wal, &store, 1)
            .take(50)
            .map(|r| r.expect("replayed").record.name)
            .collect()
            .await;
        assert_eq!(got, (0..50).map(|i| format!("r{i}")).collect::<Vec<_>>());
        wal.close().await.unwrap();
    });
}
