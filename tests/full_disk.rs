//! Full disk for real (issue 7, item 3): the WAL runs on a 2 MiB tmpfs.
//!
//! Appends get a clear no-space error (`Error::is_no_space`), nothing is falsely
//! acknowledged, and once space is freed the reopened WAL accepts writes again with
//! everything acknowledged before intact. The same through `Memory::set_capacity` is in
//! `wal/tests/faults.rs`.
//!
//! Mounting needs root (CI runs as root). Outside CI, when `mount` is not permitted,
//! the tests print a loud message and skip; with `CI=true` they fail instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use futures::executor::block_on;
use futures::StreamExt;
use walspool::{Durability, Error, LocalDisk, Options, Wal};

struct Tmpfs {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Mounts a tmpfs of `size` (e.g. "2m"), or explains why not.
fn tmpfs(size: &str) -> Option<Tmpfs> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    let out = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(&dir)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(Tmpfs { dir, _tmp: tmp }),
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but a tmpfs could not be mounted (run as root): {why}");
            }
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !! full_disk: SKIPPED — cannot mount a tmpfs here ({why}).\n\
                 !! Run as root (CI does) to test a real full disk; the Memory\n\
                 !! variant runs in wal/tests/faults.rs.\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            None
        }
    }
}

fn options() -> Options {
    Options::default()
        .durability(Durability::Sync)
        .segment_size(64 << 10)
        .stats_interval(Some(std::time::Duration::from_millis(20)))
}

fn record(writer: u64, n: u64) -> String {
    let body: String = (0..700 + (n % 300))
        .map(|i| (b'a' + ((writer * 7 + n + i) % 26) as u8) as char)
        .collect();
    format!("{writer}:{n}:{body}")
}

fn read_all(wal: &Wal<LocalDisk>) -> BTreeMap<u64, String> {
    let end = wal.durable_seq();
    let start = wal.first_seq_on_disk().unwrap_or(end + 1);
    block_on(async {
        let mut s = wal.read_range::<String>(start, end);
        let mut out = BTreeMap::new();
        while let Some(item) = s.next().await {
            let e = item.expect("no corrupt record after ENOSPC");
            out.insert(e.seq, e.record);
        }
        out
    })
}

#[test]
fn full_tmpfs_gives_no_space_acks_nothing_false_and_recovers_after_space_is_freed() {
    let Some(fs) = tmpfs("2m") else { return };
    let ballast = fs.dir.join("ballast");
    std::fs::write(&ballast, vec![7u8; 400 << 10]).unwrap();
    let dir = fs.dir.join("wal");
    let wal = Wal::open(LocalDisk::open(&dir).unwrap(), options()).unwrap();
    let consumer = wal.consumer("sink").unwrap();

    // Four concurrent appenders (group commit) until the disk is full.
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4u64)
        .map(|w| {
            let (wal, acked, errors) = (wal.clone(), acked.clone(), errors.clone());
            std::thread::spawn(move || {
                for n in 0.. {
                    let r = record(w, n);
                    match block_on(wal.append(&r)) {
                        Ok(seq) => {
                            assert!(
                                acked.lock().unwrap().insert(seq, r).is_none(),
                                "seq {seq} acked twice"
                            );
                        }
                        Err(e) => {
                            errors.lock().unwrap().push(e);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    assert!(acked.len() > 100, "only {} records fit", acked.len());
    for e in &errors {
        assert!(e.is_no_space(), "not a clear no-space error: {e}");
        let msg = walspool::error::display_chain(e);
        assert!(
            msg.contains("No space left on device") || msg.contains("no space"),
            "{msg}"
        );
    }
    let later = block_on(wal.append(&record(9, 0))).unwrap_err();
    assert!(later.is_no_space(), "{later}");
    // A checkpoint write on the full disk either fits or fails clearly.
    let last = *acked.keys().next_back().unwrap();
    let c = block_on(consumer.commit(last));
    assert!(
        c.as_ref().is_ok() || c.as_ref().is_err_and(Error::is_no_space),
        "{c:?}"
    );
    let close = block_on(wal.close());
    assert!(close.as_ref().is_err_and(Error::is_no_space), "{close:?}");
    drop(consumer);
    drop(wal);

    // Still full: reopening either fails clearly or opens and refuses appends clearly.
    match LocalDisk::open(&dir).and_then(|d| Wal::open(d, options())) {
        Ok(w) => {
            let on_disk = read_all(&w);
            for (seq, r) in &acked {
                assert_eq!(
                    on_disk.get(seq),
                    Some(r),
                    "acked record {seq} lost on a full disk"
                );
            }
            let mut refused = false;
            for n in 0..2000 {
                match block_on(w.append(&record(8, n))) {
                    Ok(_) => {}
                    Err(e) => {
                        assert!(e.is_no_space(), "{e}");
                        refused = true;
                        break;
                    }
                }
            }
            assert!(refused, "a 2 MiB disk that was full took 2000 more records");
            let _ = block_on(w.close());
        }
        Err(e) => assert!(e.is_no_space(), "reopen on a full disk: {e}"),
    }

    // Free space: everything acknowledged is there and the WAL takes writes again.
    std::fs::remove_file(&ballast).unwrap();
    let wal = Wal::open(LocalDisk::open(&dir).unwrap(), options()).unwrap();
    let on_disk = read_all(&wal);
    for (seq, r) in &acked {
        assert_eq!(
            on_disk.get(seq),
            Some(r),
            "acked record {seq} lost or changed"
        );
    }
    let before = wal.durable_seq();
    for n in 0..50 {
        let seq = block_on(wal.append(&record(5, n))).unwrap();
        assert!(seq > before);
    }
    block_on(wal.close()).unwrap();
    println!(
        "full_disk: {} records acked before ENOSPC, {} appenders got a no-space error, 0 lost",
        acked.len(),
        errors.len()
    );
}

#[test]
fn creating_a_wal_on_a_full_tmpfs_is_a_clear_no_space_error() {
    let Some(fs) = tmpfs("1m") else { return };
    // Fill the file system to the last byte.
    let fill = fs.dir.join("fill");
    let mut f = std::fs::File::create(&fill).unwrap();
    let chunk = vec![1u8; 64 << 10];
    loop {
        use std::io::Write;
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(28), "{e}");
            break;
        }
    }
    // Then what is left of the last page.
    while std::io::Write::write(&mut f, &[1u8; 512]).is_ok_and(|n| n > 0) {}
    let dir: &Path = &fs.dir.join("wal");
    let r = LocalDisk::open(dir).and_then(|d| Wal::open(d, options()));
    let e = r.expect_err("a WAL cannot be created on a full disk");
    assert!(e.is_no_space(), "not a clear no-space error: {e}");
    assert!(
        e.to_string().contains(&fs.dir.display().to_string()),
        "error does not name the place: {e}"
    );
}
