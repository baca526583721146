//! The CLI end to end: `demo --headless`, then `status --json`, `dump`, `verify` on the
//! directory it left, and `verify` again after one byte of a sealed segment is flipped.

use std::path::Path;
use std::process::{Command, Output};

fn walspool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walspool"))
        .args(args)
        .output()
        .expect("run walspool")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sealed_segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    segs.pop(); // the last one is the active segment
    segs
}

#[test]
fn demo_then_status_dump_verify_and_a_flipped_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let d = dir.to_str().unwrap();
    let archive = tmp.path().join("archive");
    let o = walspool(&[
        "demo",
        "--headless",
        "--for",
        "5s",
        "--dir",
        d,
        "--segment-size",
        "8192",
        "--archive-dir",
        archive.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("closed"),
        "{}",
        text(&o)
    );

    let o = walspool(&["status", d, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status --json is JSON");
    for key in walspool_monitor::cli::ADR_METRICS {
        assert!(v.get(key).is_some(), "status --json lacks {key}: {v}");
    }
    assert!(v["current_file"].as_str().unwrap().ends_with(".wal"), "{v}");
    assert!(v["current_offset"].as_u64().unwrap() >= 32, "{v}");
    assert_eq!(v["writer"]["state"], "closed", "{v}");
    assert!(v["last_seq"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["dropped_records_total"], 0, "{v}");

    let o = walspool(&["status", d]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("not running since"),
        "{}",
        text(&o)
    );

    let first = v["first_seq"].as_u64().unwrap();
    let o = walspool(&[
        "dump",
        d,
        "--from",
        &first.to_string(),
        "--limit",
        "3",
        "--json",
        "--as",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", text(&o));
    assert_eq!(lines[0]["seq"].as_u64(), Some(first));
    assert_eq!(lines[1]["seq"].as_u64(), Some(first + 1));
    assert!(lines[0]["value"]["actor"].is_string(), "{}", lines[0]);

    let o = walspool(&["verify", d]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("ok:"),
        "{}",
        text(&o)
    );

    // One flipped byte in a sealed segment: verify names the segment and the offset.
    let sealed = sealed_segments(&dir);
    assert!(
        !sealed.is_empty(),
        "the demo should leave sealed segments on disk"
    );
    let victim = &sealed[sealed.len() / 2];
    let mut bytes = std::fs::read(victim).unwrap();
    let at = 32 + 24 + 5; // inside the first frame's payload
    bytes[at] ^= 0x01;
    std::fs::write(victim, &bytes).unwrap();
    let o = walspool(&["verify", d]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(victim.to_str().unwrap()), "{}", text(&o));
    assert!(err.contains("byte offset 32"), "{}", text(&o));
    assert!(err.contains("frame CRC mismatch"), "{}", text(&o));
}

#[test]
fn verify_and_status_of_a_missing_directory_fail_clearly() {
    let o = walspool(&["verify", "/nonexistent/walspool-dir"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/walspool-dir"));
    let o = walspool(&["status", "/nonexistent/walspool-dir", "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

fn all_segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut all: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    all.sort();
    all
}

/// Issue 13, cases 1 and 2 as a user meets them: one flipped byte in the active segment
/// of a cleanly closed WAL, and a deleted newest segment. `verify` exits non-zero naming
/// the place, and the writer (the demo) refuses to open it instead of cutting
/// acknowledged records and reusing their sequence numbers.
#[test]
fn damaged_active_segment_and_missing_tail_are_refused_not_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let run_demo = |d: &str| {
        walspool(&[
            "demo",
            "--headless",
            "--for",
            "3s",
            "--dir",
            d,
            "--rate",
            "3000",
            "--segment-size",
            "65536",
            "--sink",
            "stalled",
            "--no-archive",
        ])
    };
    // Case 1: a flipped byte in the newest segment.
    let dir = tmp.path().join("flip");
    let d = dir.to_str().unwrap();
    let o = run_demo(d);
    assert!(o.status.success(), "{}", text(&o));
    let newest = all_segments(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    assert!(bytes.len() > 20_000, "{} bytes", bytes.len());
    bytes[20_000] ^= 0x5a;
    std::fs::write(&newest, &bytes).unwrap();
    let o = walspool(&["verify", d]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let name = newest.file_name().unwrap().to_str().unwrap();
    assert!(
        err.contains(name) && err.contains("intact record(s) follow"),
        "{}",
        text(&o)
    );
    let o = run_demo(d);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("refusing to cut them"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&newest).unwrap(), bytes, "nothing was cut");

    // Case 2: the newest segment deleted.
    let dir = tmp.path().join("cut");
    let d = dir.to_str().unwrap();
    let o = run_demo(d);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_file(all_segments(&dir).pop().unwrap()).unwrap();
    let o = walspool(&["verify", d]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("are missing"),
        "{}",
        text(&o)
    );
    let o = run_demo(d);
    assert!(!o.status.success(), "{}", text(&o));
}
