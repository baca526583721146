//! `walspool status ROOT` over a few WALs left by `demo --headless`: the table, the exit
//! code on a crossed threshold, JSON, and `--prometheus` checked by `promtool check
//! metrics` (installed by scripts/test.sh; without it the promtool step fails under
//! CI=true and is skipped loudly otherwise).

use std::path::Path;
use std::process::{Command, Output};
use walspool_test_support::promtool_check;

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

fn demo(dir: &Path, extra: &[&str]) {
    let mut args = vec!["demo", "--headless", "--for", "1s", "--rate", "100"];
    args.push("--dir");
    args.push(dir.to_str().unwrap());
    args.extend_from_slice(extra);
    let o = walspool(&args);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn status_of_a_root_table_json_exit_code_and_prometheus() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("nv-wal");
    demo(&root.join("orders"), &["--sink", "ok", "--no-archive"]);
    demo(
        &root.join("team/billing"),
        &["--sink", "stalled", "--no-archive"],
    );
    std::fs::create_dir_all(root.join("not-a-wal/empty")).unwrap();
    let r = root.to_str().unwrap();

    // Both writers stopped with records unshipped (the stalled sink never ships): with
    // a 0s backlog-age threshold they alert, and status exits 1.
    let o = walspool(&["status", r, "--sample", "0s", "--warn-backlog-age", "0s"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        out.contains("team/billing") && out.contains("orders"),
        "{out}"
    );
    assert!(out.contains("stopped"), "{out}");
    assert!(out.contains("2 WALs, 2 alerting"), "{out}");
    // Consumers behind are listed under their WAL, each with its backlog age.
    assert!(out.contains("  consumer demo-sink"), "{out}");
    assert!(!out.contains("not-a-wal"), "{out}");

    // With the default thresholds (5m), nothing alerts: exit 0.
    let o = walspool(&["status", r, "--sample", "0s", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["alerting"], 0);
    let wals = v["wals"].as_array().unwrap();
    assert_eq!(wals.len(), 2);
    let billing = wals.iter().find(|w| w["name"] == "team/billing").unwrap();
    assert_eq!(billing["writer"], "stopped");
    assert!(billing["backlog_records"].as_u64().unwrap() > 0);
    assert!(billing["backlog_age_ms"].as_u64().unwrap() > 0);
    // Per consumer: the stalled sink's consumer never committed, its backlog age is
    // the WAL's; each consumer has its own figure.
    let cons = billing["consumers"].as_array().unwrap();
    let sink = cons.iter().find(|c| c["name"] == "demo-sink").unwrap();
    assert!(sink["backlog_records"].as_u64().unwrap() > 0, "{sink}");
    assert_eq!(
        sink["backlog_age_ms"], billing["backlog_age_ms"],
        "{billing}"
    );
    assert!(cons.iter().any(|c| c["name"] == "warehouse"), "{billing}");

    // A config file sets the thresholds too.
    let cfg = tmp.path().join("top.conf");
    std::fs::write(&cfg, "warn-backlog-age = 0s\n").unwrap();
    let o = walspool(&[
        "status",
        r,
        "--sample",
        "0s",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // No WAL under a root: exit 2.
    let o = walspool(&["status", root.join("not-a-wal").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // Prometheus: every WAL labelled, valid for promtool.
    let o = walspool(&["status", r, "--sample", "0s", "--prometheus"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let prom = String::from_utf8(o.stdout).unwrap();
    assert!(
        prom.contains("walspool_backlog_records{wal=\"orders\"}"),
        "{prom}"
    );
    assert!(
        prom.contains("walspool_backlog_age_seconds{wal=\"team/billing\"}"),
        "{prom}"
    );
    assert!(
        prom.contains("walspool_writer_state{wal=\"orders\",state=\"stopped\"} 1"),
        "{prom}"
    );
    assert!(
        prom.contains(
            "walspool_consumer_backlog_age_seconds{wal=\"team/billing\",consumer=\"demo-sink\"}"
        ),
        "{prom}"
    );
    assert_eq!(
        prom.matches("# TYPE walspool_backlog_records gauge")
            .count(),
        1
    );
    promtool_check(&prom);
}
