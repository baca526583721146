//! The PostgreSQL sink over TLS against a real server (scripts/postgres.sh starts it
//! with `ssl=on` and a certificate for `localhost` / `127.0.0.1` signed by a throwaway
//! CA, and exports `WALSPOOL_PG_URL` and `WALSPOOL_PG_CA`; without them these tests skip
//! loudly, and fail with `CI=true`).
//!
//! * thousands of records shipped over TLS, verified with that CA, all land, and the
//!   server reports the sink's own session as encrypted (`pg_stat_ssl`);
//! * a CA that did not sign the server's certificate is a clear, permanent error
//!   naming the certificate verification, and nothing lands;
//! * a bad CA (unreadable, no certificate in the PEM) fails `build`.

mod pg;

use std::path::PathBuf;
use std::time::Duration;

use pg::{audit, counts, exec, unique_table, with_client, Audit};
use walspool_backends::postgres::{PgSink, Roots, TlsConfig};
use walspool_wal::shipper::{Batch, Shipper, Sink, SinkError};
use walspool_wal::{Entry, Memory, Options, Wal};

/// The CA that signed the test server's certificate, from `WALSPOOL_PG_CA` (set by
/// scripts/postgres.sh). Without it the test is skipped loudly, except with `CI=true`.
fn ca() -> Option<PathBuf> {
    match std::env::var("WALSPOOL_PG_CA") {
        Ok(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("WALSPOOL_PG_CA is not set: run the tests through scripts/test.sh, which starts PostgreSQL with TLS");
            }
            eprintln!("SKIPPED: WALSPOOL_PG_CA is not set (scripts/test.sh starts PostgreSQL with TLS and sets it)");
            None
        }
    }
}

/// `url` with extra query parameters.
fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

fn batch(seqs: std::ops::RangeInclusive<u64>) -> Batch<Audit> {
    let entries = seqs
        .map(|seq| Entry {
            seq,
            ts_us: 1_700_000_000_000_000 + seq,
            record: audit(seq),
        })
        .collect();
    Batch::new("w", "pg", entries)
}

/// `(ssl, version)` of each session the server has under `application_name`.
fn ssl_sessions(url: &str, app: &str) -> Vec<(bool, Option<String>)> {
    let app = app.to_string();
    with_client(url, async move |c| {
        c.query(
            "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    })
}

#[test]
fn records_ship_over_verified_tls() {
    let (Some(url), Some(ca)) = (pg::url(), ca()) else {
        return;
    };
    const N: u64 = 5_000;
    let table = unique_table("tls");
    let app = unique_table("walspool_tls");
    let tls_url = with_params(&url, &format!("sslmode=verify-full&application_name={app}"));
    let mut sink = PgSink::builder(&tls_url)
        .table(&table)
        .create_table(true)
        .tls(TlsConfig::new().roots(Roots::None).ca_file(&ca))
        .build()
        .unwrap();
    futures::executor::block_on(sink.check()).unwrap();

    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    let shipper = Shipper::<_, Audit>::builder(wal.consumer("pg").unwrap(), sink)
        .batch_max(500)
        .linger(Duration::ZERO)
        .build()
        .unwrap();
    let running = shipper.spawn_on_thread().unwrap();
    for i in 1..=N {
        futures::executor::block_on(wal.append(&audit(i))).unwrap();
    }
    assert!(
        running
            .handle()
            .wait_committed_timeout(N, Duration::from_secs(120)),
        "not all {N} records were committed"
    );
    // The sink's connection is still open: the server saw it encrypted.
    let sessions = ssl_sessions(&url, &app);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert!(
        sessions[0].0,
        "the sink's session is not encrypted: {sessions:?}"
    );
    assert!(
        sessions[0]
            .1
            .as_deref()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "{sessions:?}"
    );
    running.shutdown().unwrap();
    futures::executor::block_on(wal.close()).unwrap();
    assert_eq!(counts(&url, &table), (N as i64, N as i64, 1, N as i64));

    // Without an application_name in the URL the sink sets `walspool`; the CA given
    // as PEM text works as well as a file.
    let pem = std::fs::read(&ca).unwrap();
    let mut sink = PgSink::builder(&with_params(&url, "sslmode=require"))
        .table(&table)
        .tls(TlsConfig::new().roots(Roots::None).ca_pem(pem))
        .build()
        .unwrap();
    futures::executor::block_on(sink.send(&batch(N + 1..=N + 10))).unwrap();
    assert!(
        ssl_sessions(&url, "walspool").iter().any(|(ssl, _)| *ssl),
        "no encrypted session named walspool"
    );
    drop(sink);
    assert_eq!(counts(&url, &table).0, N as i64 + 10);
    exec(&url, &format!("DROP TABLE {table}"));
}

/// A CA certificate (PEM) that signed nothing the server has.
fn stranger_ca() -> String {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "walspool stranger CA");
    params
        .self_signed(&KeyPair::generate().unwrap())
        .unwrap()
        .pem()
}

#[test]
fn a_certificate_that_does_not_verify_is_a_clear_permanent_error() {
    let (Some(url), Some(_ca)) = (pg::url(), ca()) else {
        return;
    };
    let table = unique_table("tls_bad");
    let mut sink = PgSink::builder(&url)
        .table(&table)
        .create_table(true)
        .connect_timeout(Duration::from_secs(5))
        .tls(TlsConfig::new().roots(Roots::None).ca_pem(stranger_ca()))
        .build()
        .unwrap();
    let err = futures::executor::block_on(sink.check()).unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("certificate verification"), "{msg}");
    assert!(
        msg.contains("UnknownIssuer") || msg.contains("unknown issuer"),
        "{msg}"
    );
    // Shipping is the same permanent error, and nothing lands (the table was not even
    // created: the connection never got past the handshake).
    let err = futures::executor::block_on(sink.send(&batch(1..=100))).unwrap_err();
    assert!(matches!(err, SinkError::Batch { .. }), "{err}");
    assert!(
        err.to_string().contains("certificate verification"),
        "{err}"
    );
    assert_eq!(counts(&url, &table), (0, 0, 0, 0));

    // The webpki roots do not know the throwaway CA either.
    let mut sink = PgSink::builder(&url)
        .table(&table)
        .tls(TlsConfig::new())
        .build()
        .unwrap();
    let err = futures::executor::block_on(sink.check()).unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(
        err.to_string().contains("certificate verification"),
        "{err}"
    );
}

#[test]
fn a_bad_ca_fails_at_build() {
    // No server needed.
    let url = "postgres://postgres@127.0.0.1:1/postgres";
    let err = PgSink::builder(url)
        .tls(
            TlsConfig::new()
                .roots(Roots::None)
                .ca_pem("not a certificate"),
        )
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("no certificate in it"), "{err}");
    let err = PgSink::builder(url)
        .tls(
            TlsConfig::new()
                .roots(Roots::None)
                .ca_pem("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"),
        )
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("CA"), "{err}");
    let err = PgSink::builder(url)
        .tls(
            TlsConfig::new()
                .roots(Roots::None)
                .ca_file("/nonexistent/walspool-ca.crt"),
        )
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/walspool-ca.crt"), "{err}");
    let err = PgSink::builder(url)
        .tls(TlsConfig::new().roots(Roots::None))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs a CA certificate"), "{err}");
    // And without TLS, sslmode=require says how to turn it on.
    let err = PgSink::builder(&format!("{url}?sslmode=require"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains(".tls("), "{err}");
}
