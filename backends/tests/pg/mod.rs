//! Shared helpers of the PostgreSQL sink's tests: the server scripts/test.sh started
//! (scripts/postgres.sh), and a small client to look at what landed.

#![allow(dead_code, reason = "each test file uses a subset")]

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The seeds' audit record, as the tests append it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    pub ts: u64,
    pub service: String,
    pub actor: String,
    pub action: String,
    pub resource: String,
    pub outcome: String,
}

pub fn audit(i: u64) -> Audit {
    Audit {
        ts: 1_700_000_000_000 + i,
        service: "billing".into(),
        actor: format!("user-{}", i % 7),
        action: "invoice.read".into(),
        resource: format!("invoice/{i}"),
        outcome: "success".into(),
    }
}

/// The server's URL from `WALSPOOL_PG_URL` (set by scripts/test.sh). Without it the
/// test is skipped loudly, except with `CI=true`, where it fails.
pub fn url() -> Option<String> {
    match std::env::var("WALSPOOL_PG_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("WALSPOOL_PG_URL is not set: run the tests through scripts/test.sh, which starts PostgreSQL");
            }
            eprintln!("SKIPPED: WALSPOOL_PG_URL is not set (scripts/test.sh starts PostgreSQL and sets it)");
            None
        }
    }
}

/// A table name no other test uses.
pub fn unique_table(prefix: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), n % 1_000_000_000)
}

/// Runs `f` with a fresh client on a throwaway tokio runtime.
pub fn with_client<T>(url: &str, f: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test PostgreSQL");
        let task = tokio::spawn(conn);
        let r = f(&client).await;
        drop(client);
        let _ = task.await;
        r
    })
}

pub fn exec(url: &str, sql: &str) {
    with_client(url, async |c| c.batch_execute(sql).await.unwrap());
}

/// Row count, distinct keys, min and max seq of a table (zeros when it is empty or
/// missing).
pub fn counts(url: &str, table: &str) -> (i64, i64, i64, i64) {
    let sql = format!(
        "SELECT count(*), count(DISTINCT (wal_id, seq)), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM {table}"
    );
    with_client(url, async |c| match c.query_one(&sql, &[]).await {
        Ok(r) => (r.get(0), r.get(1), r.get(2), r.get(3)),
        Err(_) => (0, 0, 0, 0),
    })
}

/// The script that started the server: `pause` / `resume` it.
pub fn server(cmd: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/postgres.sh");
    let port = std::env::var("WALSPOOL_PG_PORT")
        .expect("WALSPOOL_PG_PORT (set by scripts/postgres.sh) names the server to stop");
    let st = std::process::Command::new("bash")
        .args([script, cmd, &port])
        .status()
        .unwrap();
    assert!(st.success(), "scripts/postgres.sh {cmd} {port} failed");
}
