//! walspool-wal must not depend on an async runtime (issue 2, acceptance 1): runs
//! `cargo tree -e normal` on it and looks for tokio, async-std and smol.

#[test]
fn core_has_no_runtime_in_its_normal_dependencies() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "walspool-wal",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tree.lines().any(|l| l.starts_with("walspool-wal ")),
        "{tree}"
    );
    for rt in [
        "tokio ",
        "async-std ",
        "smol ",
        "async-executor ",
        "async-io ",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(rt)),
            "walspool-wal depends on {rt}:\n{tree}"
        );
    }
}
