//! `walspool restore`: rebuild a WAL directory from the demo's file:// archive.

use std::process::{Command, Output};

fn walspool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walspool"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn restore_from_a_file_archive_then_verify_and_dump() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let archive = tmp.path().join("archive");
    let restored = tmp.path().join("restored");
    let o = walspool(&[
        "demo",
        "--headless",
        "--for",
        "3s",
        "--dir",
        dir.to_str().unwrap(),
        "--archive-dir",
        archive.to_str().unwrap(),
        "--segment-size",
        "8192",
        "--rate",
        "400",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let url = format!("file://{}", archive.display());
    let o = walspool(&[
        "restore",
        "--from",
        &url,
        "--to",
        restored.to_str().unwrap(),
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("restored WAL"), "{out}");
    assert!(err.contains("restore "), "progress is shown: {err}");

    let o = walspool(&["verify", restored.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The restored records are byte-equal to the originals still on disk.
    let dump = |d: &std::path::Path| {
        let o = walspool(&["dump", d.to_str().unwrap(), "--json", "--preview", "4096"]);
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!("{} {} {} {}", v["seq"], v["ts_us"], v["size"], v["hex"])
            })
            .collect::<Vec<_>>()
    };
    let restored_lines = dump(&restored);
    assert!(!restored_lines.is_empty());
    let original: std::collections::HashSet<String> = dump(&dir).into_iter().collect();
    assert!(
        restored_lines.iter().all(|l| original.contains(l)),
        "a restored record differs from the original"
    );

    // Restoring into a non-empty directory is refused.
    let o = walspool(&[
        "restore",
        "--from",
        &url,
        "--to",
        restored.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
}
