//! `walspool top` in a real terminal: tmux runs the real binary against live writer
//! processes (`walspool demo --headless`), and `capture-pane` reads the screen.
//!
//! The first test checks that the offset advances between two captures, that a forced
//! drop shows up in the drop count, that after the writer is SIGKILLed the screen says
//! it is not running and shows the backlog computed from the files on disk, and that
//! `q` exits and leaves the terminal usable (cooked mode, echo on).
//!
//! The second runs twelve writers under one root (one with a stalled sink, one
//! dropping, one stopped, one whose sink always fails) and checks the fleet overview:
//! twelve rows, the stalled one first, the alert count in the title, `/` filtering,
//! Enter into the detail view (its charts) and Esc back.
//!
//! The binary is built with `cargo build -p walspool-monitor` in the same profile as
//! this test (a no-op when it is fresh). Deadlines below only stop a hung run; nothing
//! asserts on how long anything takes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(90);

fn walspool_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/monitor_tmux-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .unwrap_or("debug");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "walspool-monitor",
        "--bin",
        "walspool",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p walspool-monitor failed");
    let bin = profile_dir.join("walspool");
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}

/// A writer process, SIGKILLed (and reaped) when dropped.
struct Writer(Child);

impl Writer {
    fn start(bin: &Path, dir: &Path, extra: &[&str]) -> Writer {
        let child = Command::new(bin)
            .args(["demo", "--headless", "--for", "10m", "--dir"])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start walspool demo");
        Writer(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait(); // reap it, so its pid is really gone
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private tmux server (own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(width: u16, height: u16) -> Tmux {
        // One server per test: tests run in parallel threads of one process.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = Tmux {
            socket: format!("walspool-test-{}-{n}", std::process::id()),
        };
        let ok = t
            .cmd()
            .args(["-f", "/dev/null", "new-session", "-d", "-s", "t", "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .args([
                "env",
                "PS1=$ ",
                "TERM=xterm-256color",
                "bash",
                "--norc",
                "--noprofile",
            ])
            .status()
            .expect("run tmux");
        assert!(ok.success(), "tmux new-session failed");
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    /// Sends keys one `send-keys` at a time, a little apart: a lone Esc followed at
    /// once by another key would read as Alt+key.
    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.send(&[k]);
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Types `text` literally (no key names).
    fn literal(&self, text: &str) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", "t", "-l", text])
            .status()
            .expect("tmux send-keys");
        assert!(ok.success());
        std::thread::sleep(Duration::from_millis(150));
    }

    /// From the overview or a detail view: back to the overview, clear the filter,
    /// filter on `name` and open the (only) row.
    fn open(&self, name: &str) {
        self.keys(&["Escape", "Escape", "/"]);
        self.literal(name);
        self.keys(&["Enter", "Enter"]);
    }

    fn send(&self, keys: &[&str]) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", "t"])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(ok.success());
    }

    fn type_line(&self, line: &str) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", "t", "-l", line])
            .status()
            .expect("tmux send-keys");
        assert!(ok.success());
        self.send(&["Enter"]);
    }

    fn capture(&self) -> String {
        let o = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "t"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Captures until `f` finds what it wants; panics with the last screen at the deadline.
    fn wait_for<T>(&self, what: &str, mut f: impl FnMut(&str) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            let screen = self.capture();
            if let Some(v) = f(&screen) {
                return v;
            }
            if start.elapsed() > DEADLINE {
                panic!("timed out waiting for {what}; screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// The number after `label` and spaces on the screen, commas removed.
fn number_after(screen: &str, label: &str) -> Option<u64> {
    let at = screen.find(label)? + label.len();
    let rest = screen[at..].trim_start();
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(|c| *c != ',')
        .collect();
    digits.parse().ok()
}

/// The (current file, offset) the Writer box shows.
fn position(screen: &str) -> Option<(String, u64)> {
    let at = screen.find("current file")? + "current file".len();
    let file: String = screen[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || c.is_ascii_alphabetic())
        .collect();
    Some((file, number_after(screen, "offset")?))
}

fn status_json(bin: &Path, dir: &Path) -> serde_json::Value {
    let o = Command::new(bin)
        .arg("status")
        .arg(dir)
        .arg("--json")
        .output()
        .expect("walspool status");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("JSON")
}

#[test]
fn top_in_tmux_follows_live_writers_drops_a_killed_writer_and_quits_cleanly() {
    let bin = walspool_bin();
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    let drops = tmp.path().join("drops");
    // A normal writer with a flaky sink, big segments (the offset grows in one file).
    let mut live_writer = Writer::start(
        &bin,
        &live,
        &["--rate", "100", "--segment-size", "4194304", "--no-archive"],
    );
    // A writer whose sink never answers and whose bound is tiny: it must drop.
    let _drop_writer = Writer::start(
        &bin,
        &drops,
        &[
            "--rate",
            "300",
            "--segment-size",
            "4096",
            "--max-bytes",
            "8192",
            "--drop-oldest",
            "--sink",
            "stalled",
            "--no-archive",
        ],
    );
    let start = Instant::now();
    while !(live.join("stats.json").exists() && drops.join("stats.json").exists()) {
        assert!(
            start.elapsed() < DEADLINE,
            "the writers never published stats"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let tmux = Tmux::new(120, 40);
    tmux.wait_for("the shell prompt", |s| s.contains('$').then_some(()));
    tmux.type_line(&format!(
        "{} top --refresh 200ms {} {}; echo TOP-EXIT=$?",
        bin.display(),
        live.display(),
        drops.display()
    ));

    // The overview lists both; open the live one.
    tmux.wait_for("the overview", |s| {
        (s.contains("2 WALs") && s.contains("  live") && s.contains("  drops")).then_some(())
    });
    tmux.open("live");

    // 1. The offset advances between two captures.
    let first = tmux.wait_for("a running writer with a position", |s| {
        (s.contains("writer running") && s.contains("walspool top"))
            .then(|| position(s))
            .flatten()
    });
    let later = tmux.wait_for("the offset to advance", |s| {
        position(s).filter(|p| p.0 > first.0 || (p.0 == first.0 && p.1 > first.1))
    });
    assert!(
        later.0 > first.0 || later.1 > first.1,
        "{first:?} -> {later:?}"
    );

    // 2. The drops WAL's detail view shows the forced drops.
    tmux.open("drops");
    let dropped = tmux.wait_for("a non-zero drop count on the drops panel", |s| {
        if !s.contains("writer running") || !s.contains("› drops") {
            return None;
        }
        number_after(s, "dropped").filter(|&n| n > 0)
    });
    assert!(dropped > 0);
    tmux.open("live"); // back to the live WAL
    tmux.wait_for("the live WAL's detail view", |s| {
        s.contains("› live").then_some(())
    });

    // 3. SIGKILL the live writer: the screen says it is not running and shows the
    //    backlog computed from the files on disk.
    let pid = live_writer.0.id();
    live_writer.kill();
    let gone = format!("pid {pid} gone");
    let screen = tmux.wait_for("the killed writer to be shown as not running", |s| {
        (s.contains("writer not running since")
            && s.contains(&gone)
            && s.contains("figures from disk"))
        .then(|| s.to_string())
    });
    let shown_backlog = number_after(&screen, "backlog ").expect("a backlog on screen");
    let on_disk = status_json(&bin, &live);
    assert_eq!(on_disk["writer"]["state"], "not-running", "{on_disk}");
    assert_eq!(on_disk["from_disk"], true);
    assert_eq!(
        Some(shown_backlog),
        on_disk["backlog_records"].as_u64(),
        "screen:\n{screen}\nstatus: {on_disk}"
    );
    assert!(
        screen.contains(&format!(
            "offset        {}",
            fmt_count(on_disk["current_offset"].as_u64().unwrap())
        )),
        "screen:\n{screen}\nstatus: {on_disk}"
    );

    // 4. `q` exits and leaves the terminal usable.
    tmux.send(&["q"]);
    tmux.wait_for("top to exit", |s| s.contains("TOP-EXIT=0").then_some(()));
    tmux.type_line("stty -a | tr ' ' '\\n' | grep -x -e -icanon -e icanon -e echo -e -echo | tr '\\n' ' '; echo; echo US''ABLE");
    let s = tmux.wait_for("the shell to answer", |s| {
        s.lines()
            .any(|l| l.trim() == "USABLE")
            .then(|| s.to_string())
    });
    assert!(
        s.lines().any(|l| l.trim() == "icanon echo"),
        "terminal left in raw mode:\n{s}"
    );
}

/// The overview's data rows (between the header and the bottom border): `(alerting,
/// name)`.
fn overview_rows(screen: &str) -> Vec<(bool, String)> {
    screen
        .lines()
        .skip_while(|l| !l.contains("│wal "))
        .skip(1)
        .take_while(|l| !l.starts_with('└'))
        .filter_map(|l| {
            let row = l.strip_prefix('│')?;
            let alerting = row.starts_with("! ");
            let name = row.get(2..)?.split_whitespace().next()?.to_string();
            (name != "│").then_some((alerting, name))
        })
        .collect()
}

/// The alert count in the title ("· N alerting").
fn title_alerts(screen: &str) -> Option<usize> {
    let title = screen.lines().next()?;
    let at = title.find(" alerting")?;
    title[..at].rsplit(' ').next()?.parse().ok()
}

#[test]
fn top_over_a_fleet_of_twelve_writers_worst_first_filter_and_detail() {
    let bin = walspool_bin();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("nv-wal");
    let dir = |n: &str| root.join(n);
    let mut writers = Vec::new();
    // The stalled sink starts first: its unshipped backlog is the oldest of all.
    writers.push(Writer::start(
        &bin,
        &dir("payments"),
        &["--rate", "20", "--sink", "stalled", "--no-archive"],
    ));
    std::thread::sleep(Duration::from_millis(1500));
    // Dropping: a stalled sink and a tiny bound with DropOldest (its backlog stays young).
    writers.push(Writer::start(
        &bin,
        &dir("sessions"),
        &[
            "--rate",
            "100",
            "--segment-size",
            "4096",
            "--max-bytes",
            "8192",
            "--drop-oldest",
            "--sink",
            "stalled",
            "--no-archive",
        ],
    ));
    // Every delivery fails: errors, then an open breaker and an old backlog.
    writers.push(Writer::start(
        &bin,
        &dir("email"),
        &["--rate", "20", "--fail-percent", "100", "--no-archive"],
    ));
    // Stopped: runs one second and closes cleanly, records left unshipped.
    let stopped = Command::new(&bin)
        .args([
            "demo",
            "--headless",
            "--for",
            "1s",
            "--rate",
            "20",
            "--sink",
            "ok",
            "--no-archive",
            "--dir",
        ])
        .arg(dir("search"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run the stopped writer");
    assert!(stopped.success());
    // Eight healthy ones, in two teams (discovery goes below the root).
    for (i, n) in [
        "audit",
        "billing",
        "cart",
        "catalog",
        "team-a/inventory",
        "team-a/ledger",
        "team-b/orders",
        "team-b/shipping",
    ]
    .iter()
    .enumerate()
    {
        let rate = (10 + 5 * i).to_string();
        let mut args = vec!["--rate", rate.as_str(), "--sink", "ok"];
        if i.is_multiple_of(2) {
            args.push("--no-archive");
        }
        writers.push(Writer::start(&bin, &dir(n), &args));
    }
    let start = Instant::now();
    loop {
        let n = published_stats(&root);
        if n == 12 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "only {n} writers published stats"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Normal writers keep a backlog of a few seconds (the demo's lagging `warehouse`
    // consumer); 15s separates them from the stalled, failing and stopped ones.
    let tmux = Tmux::new(100, 30);
    tmux.wait_for("the shell prompt", |s| s.contains('$').then_some(()));
    tmux.type_line(&format!(
        "{} top --refresh 300ms --warn-backlog-age 15s --warn-errors-rate 1/s {}; echo TOP-EXIT=$?",
        bin.display(),
        root.display()
    ));

    // Twelve rows, the stalled one first, and (once their backlogs are 15s old) three
    // alerting: the stalled, the failing and the stopped one.
    let screen = tmux.wait_for("12 rows with payments first and 3 alerting", |s| {
        let rows = overview_rows(s);
        (s.contains("12 WALs")
            && rows.len() == 12
            && rows[0] == (true, "payments".to_string())
            && title_alerts(s) == Some(3))
        .then(|| s.to_string())
    });
    let rows = overview_rows(&screen);
    let alerting: Vec<&str> = rows.iter().filter(|r| r.0).map(|r| r.1.as_str()).collect();
    assert_eq!(alerting.len(), 3, "{screen}");
    for n in ["payments", "email", "search"] {
        assert!(
            alerting.contains(&n),
            "{n} should alert:
{screen}"
        );
    }
    assert!(screen.contains("stopped"), "{screen}");
    assert!(rows.iter().any(|r| r.1 == "team-b/orders"), "{screen}");
    // status agrees, and exits 1.
    let o = Command::new(&bin)
        .arg("status")
        .arg(&root)
        .args(["--json", "--sample", "500ms", "--warn-backlog-age", "15s"])
        .output()
        .expect("walspool status");
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["alerting"], 3, "{v}");
    assert_eq!(v["wals"][0]["name"], "payments", "{v}");

    // `/` filters by name.
    tmux.keys(&["/"]);
    tmux.literal("team-");
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for("only the four team WALs", |s| {
        (overview_rows(s).len() == 4).then(|| s.to_string())
    });
    assert!(
        overview_rows(&s).iter().all(|r| r.1.starts_with("team-")),
        "{s}"
    );

    // Esc clears the filter; Enter opens the first row's detail view (the stalled WAL).
    tmux.keys(&["Escape"]);
    tmux.wait_for("all twelve rows again", |s| {
        (overview_rows(s).len() == 12).then_some(())
    });
    tmux.keys(&["Home", "Enter"]);
    let s = tmux.wait_for("the payments detail view", |s| {
        (s.contains("› payments") && s.contains("rec/s: append ship")).then(|| s.to_string())
    });
    assert!(s.contains("backlog, records · last 5m"), "{s}");
    assert!(s.contains("age     ") && s.contains("ship    "), "{s}");

    // Esc returns to the overview.
    tmux.keys(&["Escape"]);
    tmux.wait_for("the overview again", |s| {
        (overview_rows(s).len() == 12 && !s.contains("› payments")).then_some(())
    });

    tmux.send(&["q"]);
    tmux.wait_for("top to exit", |s| s.contains("TOP-EXIT=0").then_some(()));
    drop(writers);
}

/// How many WAL directories under `root` have published stats (two levels).
fn published_stats(root: &Path) -> usize {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(root) else {
        return 0;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.join("stats.json").exists() {
            n += 1;
        } else if let Ok(sub) = std::fs::read_dir(&p) {
            n += sub
                .flatten()
                .filter(|e| e.path().join("stats.json").exists())
                .count();
        }
    }
    n
}

fn fmt_count(n: u64) -> String {
    let digits = n.to_string().into_bytes();
    let groups: Vec<String> = digits
        .rchunks(3)
        .rev()
        .map(|g| String::from_utf8_lossy(g).into_owned())
        .collect();
    groups.join(",")
}
