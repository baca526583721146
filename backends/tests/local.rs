//! `LocalDisk` metadata: temporary files of atomic replacements never clash with keys
//! (issue case 4) and concurrent replacements of one key never share a temporary file
//! (issue case 5).

use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use futures::executor::block_on;
use walspool_backends::local::META_DIR;
use walspool_backends::LocalDisk;
use walspool_wal::{Options, Storage, Wal};

/// A consumer whose name contains `.tmp` keeps its checkpoint across a reopen (it used
/// to be skipped as a temporary file: `consumers()` came back empty and retention could
/// delete records it had not read).
#[test]
fn consumer_named_like_a_temp_file_keeps_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(LocalDisk::open(dir.path()).unwrap(), Options::default()).unwrap();
        for i in 0..5u32 {
            block_on(wal.append(&i)).unwrap();
        }
        for name in ["s3.tmpq", "a.tmp", "x.tmp.y", "tmp"] {
            let c = wal.consumer(name).unwrap();
            block_on(c.commit(3)).unwrap();
        }
        block_on(wal.close()).unwrap();
    }
    let wal = Wal::open(LocalDisk::open(dir.path()).unwrap(), Options::default()).unwrap();
    let mut got = wal.consumers();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("a.tmp".to_string(), 3),
            ("s3.tmpq".to_string(), 3),
            ("tmp".to_string(), 3),
            ("x.tmp.y".to_string(), 3),
        ]
    );
    assert_eq!(wal.consumer("s3.tmpq").unwrap().committed(), 3);
    block_on(wal.close()).unwrap();
}

/// Temporary files a crashed process left, in the old (`<key>.tmp<pid>`) and the new
/// (`.<key>.tmp<pid>.<n>`) form, are not keys, do not break the open, and are removed
/// by the next writer.
#[test]
fn stale_temp_files_are_ignored_and_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(LocalDisk::open(dir.path()).unwrap(), Options::default()).unwrap();
        block_on(wal.append(&1u32)).unwrap();
        block_on(wal.consumer("real").unwrap().commit(1)).unwrap();
        block_on(wal.close()).unwrap();
    }
    let meta = dir.path().join(META_DIR);
    let leftovers = [
        meta.join("counters.tmp1234"),
        meta.join("consumer.ghost.tmp77"),
        meta.join(".consumer.ghost2.tmp77.3"),
        meta.join(".counters.tmp12.0"),
        dir.path().join("stats.json.tmp4321"),
        dir.path().join(".stats.json.tmp4321.9"),
    ];
    for p in &leftovers {
        // Half-written garbage, as a crash mid-write leaves it.
        std::fs::write(p, b"{\"dropped_rec").unwrap();
    }

    // A read-only open (the monitor) neither lists nor removes them.
    let ro = LocalDisk::open_read_only(dir.path()).unwrap();
    assert_eq!(
        ro.list_meta("consumer.").unwrap(),
        vec!["consumer.real".to_string()]
    );
    assert!(leftovers.iter().all(|p| p.exists()));
    drop(ro);

    let wal = Wal::open(LocalDisk::open(dir.path()).unwrap(), Options::default()).unwrap();
    assert_eq!(wal.consumers(), vec![("real".to_string(), 1)]);
    for p in &leftovers {
        assert!(!p.exists(), "{} was not removed", p.display());
    }
    block_on(wal.close()).unwrap();
}

/// Keys that look like temporary files are refused rather than silently hidden.
#[test]
fn temp_like_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = LocalDisk::open(dir.path()).unwrap();
    for key in [
        ".hidden",
        ".x.tmp1.2",
        "counters.tmp1234",
        "consumer.a.tmp9",
    ] {
        let e = disk.put_meta(key, b"x").expect_err(key);
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{key}: {e}");
    }
    disk.put_meta("s3.tmpq", b"x").unwrap();
    assert_eq!(disk.list_meta("s3").unwrap(), vec!["s3.tmpq".to_string()]);
}

/// Many threads replacing the same key at once (as the writer and the housekeeping
/// thread both persist `meta/counters`): every read is one whole written value, and no
/// temporary file is left over. With one temporary file per process, writers truncated
/// and interleaved their bytes in the same inode.
#[test]
fn concurrent_put_meta_of_one_key_never_mixes_versions() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(LocalDisk::open(dir.path()).unwrap());
    const THREADS: usize = 8;
    const ROUNDS: usize = 60;
    let value = |t: usize, r: usize| -> Vec<u8> {
        // Different lengths, so that an interleaving or a truncation shows.
        let body = "x".repeat((t * 997 + r * 131) % 3000);
        serde_json::to_vec(&serde_json::json!({ "t": t, "r": r, "body": body })).unwrap()
    };
    let written: HashSet<Vec<u8>> = (0..THREADS)
        .flat_map(|t| (0..ROUNDS).map(move |r| (t, r)))
        .map(|(t, r)| value(t, r))
        .collect();
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let mut handles = Vec::new();
    for t in 0..THREADS {
        let disk = disk.clone();
        let barrier = barrier.clone();
        handles.push(std::thread::spawn(move || {
            barrier.wait();
            for r in 0..ROUNDS {
                disk.put_meta("counters", &value(t, r)).unwrap();
            }
        }));
    }
    barrier.wait();
    let mut reads = 0;
    while handles.iter().any(|h| !h.is_finished()) {
        if let Some(b) = disk.get_meta("counters").unwrap() {
            reads += 1;
            assert!(
                written.contains(&b),
                "read a value nobody wrote ({} bytes): {}",
                b.len(),
                String::from_utf8_lossy(&b[..b.len().min(200)])
            );
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    let last = disk.get_meta("counters").unwrap().unwrap();
    assert!(written.contains(&last));
    let names: Vec<String> = std::fs::read_dir(dir.path().join(META_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["counters".to_string()], "leftover files");
    eprintln!("{reads} concurrent reads, all whole");
}
