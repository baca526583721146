//! Helpers shared by the tests of several walspool crates (not published).

use std::io::Write;
use std::process::{Command, Stdio};

/// Asserts that `promtool check metrics` (Prometheus' own linter) accepts `text`, the
/// text exposition format. Without promtool the check fails under `CI=true` (the test
/// command installs it: scripts/test.sh) and is skipped loudly otherwise.
pub fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "promtool not found ({e}); scripts/test.sh installs it"
            );
            eprintln!("SKIPPED promtool check metrics: promtool not found ({e})");
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let o = child.wait_with_output().expect("promtool ran");
    assert!(
        o.status.success(),
        "promtool check metrics failed:\n{}\n{}\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
