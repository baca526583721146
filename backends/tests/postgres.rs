//! The PostgreSQL sink against a real server (scripts/test.sh starts one and sets
//! `WALSPOOL_PG_URL`; without it these tests skip loudly, and fail with `CI=true`).
//!
//! * records land once, with their typed columns, from any executor;
//! * a shipping process SIGKILLed mid-stream and restarted leaves every record in the
//!   table exactly once (the child is this test binary, re-executed with
//!   `WALSPOOL_PG_KILL_CHILD` set and `--exact pg_kill_child`);
//! * a table of the wrong shape is a clear, permanent error.
//!
//! The server stopped and restarted mid-stream is tests/postgres_restart.rs (its own
//! binary, so that stopping the server cannot disturb these tests).

#[path = "support/kill.rs"]
mod kill;
mod pg;

use std::process::Child;
use std::time::Duration;

use kill::{finish, kill_when, seed_wal, self_command};
use pg::{audit, counts, exec, unique_table, with_client, Audit};
use walspool_backends::postgres::PgSink;
use walspool_backends::LocalDisk;
use walspool_wal::shipper::{Batch, Shipper, Sink, SinkError};
use walspool_wal::{Entry, Options, Wal};

fn batch(wal_id: &str, seqs: std::ops::RangeInclusive<u64>) -> Batch<Audit> {
    let entries = seqs
        .map(|seq| Entry {
            seq,
            ts_us: 1_700_000_000_000_000 + seq,
            record: audit(seq),
        })
        .collect();
    Batch::new(wal_id, "pg", entries)
}

#[test]
fn records_land_once_with_typed_columns_from_any_executor() {
    let Some(url) = pg::url() else { return };
    let table = unique_table("land");
    let mut sink = PgSink::builder(&url)
        .table(&table)
        .create_table(true)
        .build()
        .unwrap();
    futures::executor::block_on(sink.check()).unwrap();
    // The same batch twice, and an overlapping one, from three executors.
    futures::executor::block_on(sink.send(&batch("w1", 1..=100))).unwrap();
    smol::block_on(sink.send(&batch("w1", 1..=100))).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(sink.send(&batch("w1", 50..=150)))
        .unwrap();
    // Another WAL's seq 1 is another record.
    futures::executor::block_on(sink.send(&batch("w2", 1..=1))).unwrap();
    assert_eq!(counts(&url, &table), (151, 151, 1, 150));
    let sql = format!(
        "SELECT service, actor, action, resource, outcome, \
         (extract(epoch FROM ts) * 1000)::int8, record->>'resource', \
         (extract(epoch FROM appended_at) * 1000000)::int8 \
         FROM {table} WHERE wal_id = 'w1' AND seq = 8"
    );
    let row: (String, String, String, String, String, i64, String, i64) =
        with_client(&url, async |c| {
            let r = c.query_one(&sql, &[]).await.unwrap();
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            )
        });
    assert_eq!(
        row,
        (
            "billing".into(),
            "user-1".into(),
            "invoice.read".into(),
            "invoice/8".into(),
            "success".into(),
            1_700_000_000_008,
            "invoice/8".into(),
            1_700_000_000_000_008,
        )
    );
    // Any T: a plain string goes to `record`, the typed columns stay NULL.
    let mut any = PgSink::builder(&url).table(&table).build().unwrap();
    let b = Batch::new(
        "w3",
        "pg",
        vec![Entry {
            seq: 1,
            ts_us: 1,
            record: "just text".to_string(),
        }],
    );
    futures::executor::block_on(any.send(&b)).unwrap();
    let (rec, service): (String, Option<String>) = with_client(&url, async |c| {
        let r = c
            .query_one(
                &format!("SELECT record #>> '{{}}', service FROM {table} WHERE wal_id = 'w3'"),
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    });
    assert_eq!((rec.as_str(), service), ("just text", None));
    exec(&url, &format!("DROP TABLE {table}"));
}

#[test]
fn a_schema_mismatch_is_a_clear_permanent_error() {
    let Some(url) = pg::url() else { return };
    // Wrong type, missing column, no unique key.
    let table = unique_table("bad");
    exec(
        &url,
        &format!(
            "CREATE TABLE {table} (wal_id text NOT NULL, seq text NOT NULL, appended_at timestamptz, \
             record jsonb, ts timestamptz, service text, actor text, action text, resource text)"
        ),
    );
    // create_table(true) does not touch an existing table: it is still checked.
    let mut sink = PgSink::builder(&url)
        .table(&table)
        .create_table(true)
        .build()
        .unwrap();
    let err = futures::executor::block_on(sink.check()).unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let msg = err.to_string();
    for want in [
        "does not match the walspool sink's schema",
        "column seq is text, want bigint",
        "column outcome is missing (want text)",
        "no primary key or unique index on exactly (wal_id, seq)",
    ] {
        assert!(msg.contains(want), "{want:?} not in {msg}");
    }
    // Shipping into it is the same permanent error, and writes nothing.
    let err = futures::executor::block_on(sink.send(&batch("w", 1..=3))).unwrap_err();
    assert!(matches!(err, SinkError::Batch { .. }), "{err}");
    assert!(err.to_string().contains("column seq is text"), "{err}");
    assert_eq!(counts(&url, &table).0, 0);
    exec(&url, &format!("DROP TABLE {table}"));

    // A missing table without create_table: permanent, and says what to do.
    let mut sink = PgSink::builder(&url)
        .table(unique_table("missing"))
        .build()
        .unwrap();
    let err = futures::executor::block_on(sink.check()).unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn an_unreachable_server_is_transient() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sink = PgSink::builder(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let err = futures::executor::block_on(sink.send(&batch("w", 1..=1))).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("connect"), "{err}");
}

const TOTAL: u64 = 20_000;
const CONSUMER: &str = "pg";

/// The child: ships the WAL in `WALSPOOL_PG_KILL_DIR` into `WALSPOOL_PG_KILL_TABLE`
/// until everything is committed. Does nothing in a normal test run.
#[test]
fn pg_kill_child() {
    if std::env::var_os("WALSPOOL_PG_KILL_CHILD").is_none() {
        return;
    }
    let dir = std::env::var_os("WALSPOOL_PG_KILL_DIR").unwrap();
    let table = std::env::var("WALSPOOL_PG_KILL_TABLE").unwrap();
    let url = std::env::var("WALSPOOL_PG_URL").unwrap();
    let wal = Wal::open(LocalDisk::open(dir).unwrap(), Options::default()).unwrap();
    let sink = PgSink::builder(&url)
        .table(table)
        .create_table(true)
        .build()
        .unwrap();
    let shipper = Shipper::<_, Audit>::builder(wal.consumer(CONSUMER).unwrap(), sink)
        .batch_max(250)
        .linger(Duration::ZERO)
        .build()
        .expect("valid shipper configuration");
    let t = shipper.spawn_on_thread().unwrap();
    assert!(t
        .handle()
        .wait_committed_timeout(TOTAL, Duration::from_secs(120)));
    t.shutdown().unwrap();
    futures::executor::block_on(wal.close()).unwrap();
}

fn spawn_child(dir: &std::path::Path, table: &str) -> Child {
    self_command("pg_kill_child")
        .env("WALSPOOL_PG_KILL_CHILD", "1")
        .env("WALSPOOL_PG_KILL_DIR", dir)
        .env("WALSPOOL_PG_KILL_TABLE", table)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Delivers the `n` records after the checkpoint into the table without committing:
/// the state a kill between the insert's commit and the checkpoint's leaves behind.
fn deliver_uncommitted(dir: &std::path::Path, url: &str, table: &str, n: u64) -> u64 {
    use futures::StreamExt;
    let wal = Wal::open(LocalDisk::open(dir).unwrap(), Options::default()).unwrap();
    let c = wal
        .consumers()
        .into_iter()
        .find(|(n, _)| n == CONSUMER)
        .map_or(0, |(_, s)| s);
    let to = (c + n).min(TOTAL);
    let entries: Vec<Entry<Audit>> = futures::executor::block_on(
        wal.read_range::<Audit>(c + 1, to)
            .map(|e| e.unwrap())
            .collect(),
    );
    let mut sink = PgSink::builder(url).table(table).build().unwrap();
    futures::executor::block_on(sink.send(&Batch::new(wal.id(), CONSUMER, entries))).unwrap();
    futures::executor::block_on(wal.close()).unwrap();
    to - c
}

fn committed(dir: &std::path::Path) -> u64 {
    kill::committed(dir, Options::default(), CONSUMER)
}

#[test]
fn sigkilled_shipper_restarts_and_every_record_lands_exactly_once() {
    let Some(url) = pg::url() else { return };
    let table = unique_table("kill");
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<Audit> = (1..=TOTAL).map(audit).collect();
    seed_wal(dir.path(), &records, CONSUMER);

    // Kill the shipper twice mid-stream, at a third and at two thirds of the records.
    let mut resent = 0;
    for stop_at in [TOTAL as i64 / 3, 2 * TOTAL as i64 / 3] {
        kill_when(
            spawn_child(dir.path(), &table),
            Duration::from_millis(5),
            || counts(&url, &table).0 >= stop_at,
            || format!("no progress: {:?}", counts(&url, &table)),
        );
        let (rows, distinct, _, max) = counts(&url, &table);
        assert_eq!(rows, distinct);
        let c = committed(dir.path());
        assert!(
            c <= max as u64,
            "committed {c} beyond the table's max seq {max}"
        );
        // Rows in the table past the checkpoint are sent again after the restart. A kill
        // rarely lands in the few µs between the insert's commit and the checkpoint's, so
        // make that state on purpose too: 300 more records in the table, uncommitted.
        let extra = deliver_uncommitted(dir.path(), &url, &table, 300);
        resent += max as u64 - c + extra;
        eprintln!("killed at {rows} rows: committed {c}, table max seq {max}, {extra} more delivered uncommitted");
    }
    finish(spawn_child(dir.path(), &table));
    assert_eq!(committed(dir.path()), TOTAL);
    assert_eq!(
        counts(&url, &table),
        (TOTAL as i64, TOTAL as i64, 1, TOTAL as i64),
        "every record exactly once"
    );
    assert!(resent >= 600, "the restarts re-sent nothing: {resent}");
    eprintln!("{resent} records were sent again after the kills and ignored by ON CONFLICT");
    exec(&url, &format!("DROP TABLE {table}"));
}
