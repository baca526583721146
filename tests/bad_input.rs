//! Bad input everywhere a user can give it (issue 7, item 6): each case gives a clear
//! error, and each has a test.
//!
//! "No permission" and root: root bypasses permission bits, so as root the permission
//! test re-executes this test binary as the unprivileged user `nobody` (uid 65534, via
//! `CommandExt::uid`, no `unsafe`) and runs the checks there; a read-only file system
//! (a `ro` tmpfs, which refuses writes even to root) is tested too. As a normal user the
//! permission checks run directly. `nobody` may not be able to reach the checkout, the
//! target directory or `$TMPDIR` (a clone in `/root`, or in a `mktemp -d` folder of mode
//! 0700), so the child runs from a copy of the binary in a fresh world-readable
//! directory under `/tmp`, with its working directory and temporary files there too.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use futures::executor::block_on;
use futures::StreamExt;
use walspool::format::{SegmentHeader, FORMAT_VERSION};
use walspool::{Durability, Error, LocalDisk, Memory, Options, StatsFile, Storage, Wal};

const PERM_CHILD_ENV: &str = "WALSPOOL_BAD_INPUT_PERM_DIR";

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn config_err(r: walspool::Result<Wal<Memory>>) -> String {
    match r {
        Err(e @ Error::Config(_)) => e.to_string(),
        Err(e) => panic!("expected a configuration error, got {e}"),
        Ok(_) => panic!("expected a configuration error, the WAL opened"),
    }
}

#[test]
fn zero_or_absurd_segment_size_is_a_config_error() {
    for size in [0, 1, 4095, 1 << 40, u64::MAX] {
        let msg = config_err(Wal::open(
            Memory::new(),
            Options::default().segment_size(size),
        ));
        assert!(
            msg.contains("segment_size") && msg.contains(&size.to_string()),
            "{size}: {msg}"
        );
        // The same on disk, and nothing is created in a fresh directory's segments.
        let d = tempfile::tempdir().unwrap();
        let r = Wal::open(
            LocalDisk::open(d.path()).unwrap(),
            Options::default().segment_size(size),
        );
        assert!(matches!(r, Err(Error::Config(_))), "{size}: {r:?}");
        assert!(LocalDisk::open_read_only(d.path())
            .unwrap()
            .list_segments()
            .unwrap()
            .is_empty());
    }
    // Other absurd sizes and intervals are named too.
    let msg = config_err(Wal::open(
        Memory::new(),
        Options::default().segment_size(1 << 20).max_bytes(1 << 20),
    ));
    assert!(msg.contains("max_bytes"), "{msg}");
    let msg = config_err(Wal::open(
        Memory::new(),
        Options::default().durability(Durability::Periodic(std::time::Duration::ZERO)),
    ));
    assert!(msg.contains("Periodic"), "{msg}");
    let msg = config_err(Wal::open(
        Memory::new(),
        Options::default().max_buffered_bytes(0),
    ));
    assert!(msg.contains("max_buffered_bytes"), "{msg}");
    let msg = config_err(Wal::open(
        Memory::new(),
        Options::default().wal_id("../etc"),
    ));
    assert!(msg.contains("wal_id"), "{msg}");
}

#[test]
fn a_directory_that_is_a_file_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("not-a-dir");
    std::fs::write(&file, b"hello").unwrap();
    for r in [LocalDisk::open(&file), LocalDisk::open_read_only(&file)] {
        let e = r.expect_err("a file is not a WAL directory");
        let msg = walspool::error::display_chain(&e);
        assert!(matches!(e, Error::Config(_)), "{msg}");
        assert!(
            msg.contains("not a directory") && msg.contains("not-a-dir"),
            "{msg}"
        );
    }
    // A path that goes through a file.
    let e = LocalDisk::open(file.join("wal")).expect_err("a path under a file");
    let msg = walspool::error::display_chain(&e);
    assert!(
        msg.contains("not-a-dir/wal") && msg.to_lowercase().contains("not a directory"),
        "{msg}"
    );
    // The file is untouched.
    assert_eq!(std::fs::read(&file).unwrap(), b"hello");
}

/// The checks for "no permission", run as an unprivileged user.
fn permission_checks(base: &Path) {
    // A directory we may not enter.
    let e = LocalDisk::open(base.join("locked").join("wal")).expect_err("no permission");
    let msg = walspool::error::display_chain(&e);
    assert!(
        matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied),
        "{msg}"
    );
    assert!(
        msg.contains("locked") && msg.contains("ermission denied"),
        "{msg}"
    );
    // Somebody else's WAL directory (mode 0700).
    let e = LocalDisk::open(base.join("theirs"))
        .and_then(|d| Wal::open(d, Options::default()))
        .expect_err("another user's WAL");
    let msg = walspool::error::display_chain(&e);
    assert!(
        msg.contains("theirs") && msg.contains("ermission denied"),
        "{msg}"
    );
}

#[test]
fn no_permission_is_a_clear_error() {
    if let Ok(dir) = std::env::var(PERM_CHILD_ENV) {
        // Child mode, as `nobody`.
        permission_checks(Path::new(&dir));
        return;
    }
    let root = is_root();
    // As root the checks run as `nobody`: everything it needs is under a fresh
    // directory in /tmp (mode 1777, enterable by anyone), not under $TMPDIR.
    let d = if root {
        tempfile::Builder::new()
            .prefix("walspool-perm-")
            .tempdir_in("/tmp")
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let base = d.path();
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(base.join("locked")).unwrap();
    std::fs::set_permissions(base.join("locked"), std::fs::Permissions::from_mode(0o500)).unwrap();
    {
        let wal = Wal::open(
            LocalDisk::open(base.join("theirs")).unwrap(),
            Options::default(),
        )
        .unwrap();
        block_on(wal.append(&"private".to_string())).unwrap();
        block_on(wal.close()).unwrap();
    }
    if !root {
        permission_checks(base);
        return;
    }
    // Root ignores permission bits: run the checks as `nobody`.
    std::fs::set_permissions(base.join("locked"), std::fs::Permissions::from_mode(0o700)).unwrap();
    // A copy of this binary that `nobody` can reach and execute, and a working and a
    // temporary directory it may use.
    let child_dir = base.join("child");
    std::fs::create_dir(&child_dir).unwrap();
    std::fs::set_permissions(&child_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let exe = base.join("bad_input-as-nobody");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&exe)
        .args([
            "--exact",
            "no_permission_is_a_clear_error",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PERM_CHILD_ENV, base)
        .env("TMPDIR", &child_dir)
        .current_dir(&child_dir)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("re-executing the test as nobody");
    assert!(
        out.status.success(),
        "permission checks as nobody failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

/// A read-only file system refuses writes even to root.
#[test]
fn read_only_file_system_is_a_clear_error_even_for_root() {
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI=true but a tmpfs could not be mounted (run as root)"
        );
        eprintln!("\n!!!! bad_input: read-only file system case SKIPPED: cannot mount a tmpfs here (not root) !!!!\n");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _u = Unmount(&mnt);
    let wal_dir = mnt.join("wal");
    {
        let wal = Wal::open(LocalDisk::open(&wal_dir).unwrap(), Options::default()).unwrap();
        block_on(wal.append(&"before ro".to_string())).unwrap();
        block_on(wal.close()).unwrap();
    }
    assert!(Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    for dir in [wal_dir.clone(), mnt.join("new-wal")] {
        let e = LocalDisk::open(&dir)
            .and_then(|d| Wal::open(d, Options::default()))
            .expect_err("a read-only file system");
        let msg = walspool::error::display_chain(&e);
        assert!(
            msg.contains("Read-only file system") && msg.contains(&mnt.display().to_string()),
            "{msg}"
        );
    }
    // Reading still works, for tools.
    let ro = LocalDisk::open_read_only(&wal_dir).unwrap();
    assert_eq!(ro.list_segments().unwrap().len(), 1);
}

#[test]
fn a_garbage_stats_file_is_replaced_and_parsing_it_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path()).unwrap();
    let stats = d.path().join(walspool::STATS_FILE);
    for garbage in [
        &b"\x00\xffnot json"[..],
        b"{\"schema\":\"walspool-stats/999\"}",
        b"",
    ] {
        std::fs::write(&stats, garbage).unwrap();
        let e = StatsFile::parse(garbage).expect_err("garbage stats");
        assert!(e.contains("stats file"), "{e}");
        // The stats file is the WAL's output, never its input: it opens and replaces it.
        let wal = Wal::open(
            LocalDisk::open(d.path()).unwrap(),
            Options::default().stats_interval(Some(std::time::Duration::from_millis(10))),
        )
        .unwrap();
        block_on(wal.append(&"x".to_string())).unwrap();
        block_on(wal.close()).unwrap();
        let parsed = StatsFile::parse(&std::fs::read(&stats).unwrap()).unwrap();
        assert!(parsed.closed);
    }
}

#[test]
fn a_garbage_checkpoint_or_metadata_file_is_a_clear_error() {
    let cases: [(&str, &[u8], &str); 4] = [
        ("consumer.sink", b"garbage!", "checkpoint"),
        ("consumer.sink", b"\x01\x02\x03", "checkpoint"),
        ("counters", b"{not json", "counters"),
        ("wal_id", b"\xff\xfe", "wal_id"),
    ];
    for (key, bytes, what) in cases {
        let d = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(LocalDisk::open(d.path()).unwrap(), Options::default()).unwrap();
            let c = wal.consumer("sink").unwrap();
            let s = block_on(wal.append(&"a".to_string())).unwrap();
            block_on(c.commit(s)).unwrap();
            block_on(wal.close()).unwrap();
        }
        let path = d.path().join(walspool::backends::local::META_DIR).join(key);
        assert!(path.exists() || key == "counters", "{}", path.display());
        std::fs::write(&path, bytes).unwrap();
        let e = LocalDisk::open(d.path())
            .and_then(|disk| Wal::open(disk, Options::default()))
            .expect_err("garbage metadata must not be taken at face value");
        let msg = walspool::error::display_chain(&e);
        assert!(matches!(e, Error::Corrupt { .. }), "{key}: {msg}");
        assert!(
            msg.contains(what) && msg.contains(&d.path().display().to_string()),
            "{key}: {msg}"
        );
    }
}

fn newer_header(base: u64) -> Vec<u8> {
    SegmentHeader {
        version: FORMAT_VERSION + 1,
        flags: 0,
        base_seq: base,
        created_us: 1,
        chain: None,
    }
    .encode()
}

#[test]
fn a_segment_from_a_newer_format_version_is_a_clear_error() {
    // As the tail segment: open refuses.
    let d = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(LocalDisk::open(d.path()).unwrap(), Options::default()).unwrap();
        block_on(wal.append(&"a".to_string())).unwrap();
        block_on(wal.close()).unwrap();
    }
    let seg = d.path().join(walspool::format::segment_file_name(1));
    let mut b = std::fs::read(&seg).unwrap();
    let h = newer_header(1);
    b[..h.len()].copy_from_slice(&h);
    std::fs::write(&seg, &b).unwrap();
    let e = LocalDisk::open(d.path())
        .and_then(|disk| Wal::open(disk, Options::default()))
        .expect_err("a newer segment");
    let msg = walspool::error::display_chain(&e);
    assert!(
        matches!(e, Error::UnsupportedVersion { found, supported, .. } if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION),
        "{msg}"
    );
    assert!(
        msg.contains("00000000000000000001.wal") && msg.contains("upgrade"),
        "{msg}"
    );
    // The file was not touched (no "repair" of a segment we cannot read).
    assert_eq!(std::fs::read(&seg).unwrap(), b);

    // As a sealed segment before the tail: opening works, reading it is a clear error.
    let mem = Memory::new();
    {
        let wal = Wal::open(mem.clone(), Options::default()).unwrap();
        block_on(wal.append(&"a".to_string())).unwrap();
        wal.roll();
        block_on(wal.append(&"b".to_string())).unwrap();
        block_on(wal.close()).unwrap();
    }
    let mut b = mem.segment_bytes(1).unwrap();
    b[..h.len()].copy_from_slice(&h);
    mem.set_segment_bytes(1, b);
    let wal = Wal::open(mem, Options::default()).unwrap();
    let first = block_on(wal.read_from::<String>(1).next()).unwrap();
    assert!(
        matches!(&first, Err(Error::UnsupportedVersion { found, .. }) if *found == FORMAT_VERSION + 1),
        "{first:?}"
    );
}

#[test]
fn bad_consumer_names_are_clear_errors() {
    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    // `x.tmp1234` is how temporary files of the directory backend used to be named: a
    // checkpoint by that name could not be told apart from a crash leftover.
    for name in [
        "",
        "../escape",
        "a b",
        &"x".repeat(200),
        "x.tmp1234",
        "a.b.tmp0",
    ] {
        let e = wal.consumer(name).expect_err("bad name");
        assert!(
            matches!(e, Error::Consumer(_)) && e.to_string().contains("consumer name"),
            "{e}"
        );
    }
    // Names that merely contain `.tmp` are fine.
    for name in ["s3.tmpq", "x.tmp", "tmp1", ".tmp.x"] {
        wal.consumer(name).unwrap();
    }
}
