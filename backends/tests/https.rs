//! The HTTP sink over TLS against a real rustls server on 127.0.0.1, with a CA and
//! certificates generated here (rcgen): records arrive over one kept-alive connection;
//! a server certificate from another CA and a missing client certificate (mTLS) are
//! clear, permanent errors; plain http:// works only when asked for; a token provider
//! renews an expired token on a 401 without restarting the shipper.

#![cfg(feature = "http")]

#[path = "support/loopback.rs"]
mod loopback;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loopback::{serve, write_file, Pki, Response};
use walspool_backends::http::{HttpSink, Roots, TlsConfig, WireRecord};
use walspool_wal::shipper::{Batch, Shipper, Sink, SinkError};
use walspool_wal::{Entry, Memory, Options, Wal};

fn seqs_of(body: &[u8]) -> Vec<u64> {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice::<WireRecord<u64>>(l)
                .expect("wire record")
                .seq
        })
        .collect()
}

fn batch(seq: u64) -> Batch<u64> {
    Batch::new(
        "w",
        "c",
        vec![Entry {
            seq,
            ts_us: 0,
            record: seq,
        }],
    )
}

fn send(sink: &mut HttpSink, b: &Batch<u64>) -> Result<(), SinkError> {
    futures::executor::block_on(Sink::<u64>::send(sink, b))
}

#[test]
fn records_arrive_over_https_on_one_kept_alive_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new("walspool test CA");
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let server = serve(Some(pki.server_config(None)), move |req| {
        assert_eq!(req.header("Authorization"), Some("Bearer tls-token"));
        g.lock().unwrap().extend(seqs_of(&req.decoded_body()));
        Response::ok()
    });
    let ca = write_file(tmp.path(), "ca.pem", &pki.ca_pem);
    let sink = HttpSink::builder(format!("{}/ingest", server.base))
        .tls(TlsConfig::new().roots(Roots::None).ca_file(&ca))
        .bearer_token("tls-token")
        .gzip(true)
        .build()
        .unwrap();
    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    let total = 2000u64;
    let records: Vec<u64> = (1..=total).collect();
    futures::executor::block_on(wal.append_batch(&records)).unwrap();
    let shipper = Shipper::<_, u64>::builder(wal.consumer("tls").unwrap(), sink)
        .batch_max(100)
        .linger(Duration::ZERO)
        .build()
        .expect("valid shipper configuration");
    let t = shipper.spawn_on_thread().unwrap();
    assert!(t
        .handle()
        .wait_committed_timeout(total, Duration::from_secs(60)));
    let st = t.shutdown().unwrap();
    assert_eq!(*got.lock().unwrap(), records);
    assert_eq!(st.committed_seq, total);
    assert!(server.requests.load(Ordering::SeqCst) >= 20);
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        1,
        "every batch went over the one kept-alive TLS connection"
    );
}

#[test]
fn a_server_certificate_from_another_ca_is_a_clear_permanent_error() {
    let pki = Pki::new("the server's CA");
    let other = Pki::new("some other CA");
    let server = serve(Some(pki.server_config(None)), |_| Response::ok());
    let mut sink = HttpSink::builder(format!("{}/ingest", server.base))
        .tls(
            TlsConfig::new()
                .roots(Roots::None)
                .ca_pem(other.ca_pem.clone()),
        )
        .build()
        .unwrap();
    let err = send(&mut sink, &batch(1)).expect_err("must not trust the server");
    let SinkError::Batch { reason } = &err else {
        panic!("a wrong CA must be a permanent batch error, got {err:?}");
    };
    assert!(
        reason.starts_with("TLS:")
            && reason.contains("certificate")
            && reason.contains("UnknownIssuer"),
        "the reason names the problem: {reason}"
    );
    // With the webpki roots (the default), a private CA is not trusted either.
    let mut default_roots = HttpSink::builder(format!("{}/ingest", server.base))
        .build()
        .unwrap();
    assert!(matches!(
        send(&mut default_roots, &batch(1)),
        Err(SinkError::Batch { .. })
    ));
    // The right CA works.
    let mut right = HttpSink::builder(format!("{}/ingest", server.base))
        .tls(
            TlsConfig::new()
                .roots(Roots::None)
                .ca_pem(pki.ca_pem.clone()),
        )
        .build()
        .unwrap();
    assert_eq!(send(&mut right, &batch(1)), Ok(()));
}

#[test]
fn mutual_tls_needs_the_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new("server CA");
    let clients = Pki::new("client CA");
    let server = serve(Some(pki.server_config(Some(&clients))), |_| Response::ok());
    let url = format!("{}/ingest", server.base);
    let tls = TlsConfig::new()
        .roots(Roots::None)
        .ca_pem(pki.ca_pem.clone());

    let mut anonymous = HttpSink::builder(&url).tls(tls.clone()).build().unwrap();
    // Refused. Under TLS 1.3 the server checks the client certificate after the
    // client's handshake is done, so its alert races the request: the failure shows as
    // a TLS alert (permanent) or as a reset connection (transient); either way the
    // batch is not acknowledged.
    let err = send(&mut anonymous, &batch(1)).expect_err("no client certificate");
    assert!(
        matches!(&err, SinkError::Batch { reason } if reason.starts_with("TLS:"))
            || err.is_transient(),
        "{err:?}"
    );

    let leaf = clients.client("audit-shipper");
    let cert = write_file(tmp.path(), "client.pem", &leaf.cert_pem);
    let key = write_file(tmp.path(), "client.key", &leaf.key_pem);
    let builder = HttpSink::builder(&url).tls(tls.clone().client_cert_files(&cert, &key));
    assert!(
        !format!("{builder:?}").contains("client.key"),
        "the key's path is not shown"
    );
    let mut with_cert = builder.build().unwrap();
    assert_eq!(send(&mut with_cert, &batch(1)), Ok(()));

    // A client certificate from a CA the server does not trust.
    let stranger = Pki::new("stranger").client("x");
    let mut wrong = HttpSink::builder(&url)
        .tls(tls.client_cert_pem(stranger.cert_pem, stranger.key_pem))
        .build()
        .unwrap();
    assert!(send(&mut wrong, &batch(1)).is_err());

    // A missing key file is a build error naming the file.
    let missing = HttpSink::builder(&url)
        .tls(
            TlsConfig::new()
                .ca_pem(pki.ca_pem.clone())
                .client_cert_files(&cert, tmp.path().join("nope.key")),
        )
        .build()
        .expect_err("missing key file");
    assert!(missing.to_string().contains("nope.key"), "{missing}");
}

#[test]
fn plain_http_only_when_asked_for() {
    let server = serve(None, |_| Response::ok());
    let url = format!("{}/ingest", server.base);
    let refused = HttpSink::builder(&url)
        .bearer_token("t")
        .build()
        .expect_err("opt-in needed");
    let msg = refused.to_string();
    assert!(
        msg.contains("allow_http") && msg.contains("clear text"),
        "{msg}"
    );
    let mut sink = HttpSink::builder(&url).allow_http(true).build().unwrap();
    assert_eq!(send(&mut sink, &batch(7)), Ok(()));
    assert!(HttpSink::builder("ftp://127.0.0.1/")
        .allow_http(true)
        .build()
        .is_err());
}

#[test]
fn a_token_provider_renews_an_expired_token_on_401_without_restarting() {
    let pki = Pki::new("CA");
    // The server accepts only the current token, and expires it every 5 requests.
    let current = Arc::new(AtomicU64::new(1));
    let accepted = Arc::new(AtomicU64::new(0));
    let got = Arc::new(Mutex::new(Vec::new()));
    let (c, a, g) = (current.clone(), accepted.clone(), got.clone());
    let server = serve(Some(pki.server_config(None)), move |req| {
        let want = format!("Bearer jwt-{}", c.load(Ordering::SeqCst));
        if req.header("Authorization") != Some(want.as_str()) {
            return Response::status(401);
        }
        g.lock().unwrap().extend(seqs_of(&req.body));
        if a.fetch_add(1, Ordering::SeqCst) % 5 == 4 {
            c.fetch_add(1, Ordering::SeqCst); // the token expires
        }
        Response::ok()
    });
    // The identity provider: hands out the token the server currently accepts, but only
    // when asked to refresh (it caches otherwise), like a real JWT cache.
    let issued = Arc::new(AtomicU64::new(1));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (cur, iss, cl) = (current.clone(), issued.clone(), calls.clone());
    let builder = HttpSink::builder(format!("{}/ingest", server.base))
        .tls(
            TlsConfig::new()
                .roots(Roots::None)
                .ca_pem(pki.ca_pem.clone()),
        )
        .token_provider(move |refresh: bool| {
            cl.lock().unwrap().push(refresh);
            if refresh {
                iss.store(cur.load(Ordering::SeqCst), Ordering::SeqCst);
            }
            Ok(format!("jwt-{}", iss.load(Ordering::SeqCst)))
        });
    assert!(!format!("{builder:?}").contains("jwt-"));
    let sink = builder.build().unwrap();
    assert!(!format!("{sink:?}").contains("jwt-"));

    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    let total = 500u64;
    let records: Vec<u64> = (1..=total).collect();
    futures::executor::block_on(wal.append_batch(&records)).unwrap();
    let shipper = Shipper::<_, u64>::builder(wal.consumer("jwt").unwrap(), sink)
        .batch_max(20)
        .linger(Duration::ZERO)
        .build()
        .expect("valid shipper configuration");
    let t = shipper.spawn_on_thread().unwrap();
    assert!(t
        .handle()
        .wait_committed_timeout(total, Duration::from_secs(60)));
    let st = t.shutdown().unwrap();
    assert_eq!(*got.lock().unwrap(), records);
    // 25 batches, the token expired after every 5th: 4 renewals, each after one 401,
    // and no batch failed (the 401 was answered inside the attempt).
    let calls = calls.lock().unwrap();
    assert_eq!(calls.iter().filter(|r| **r).count(), 4, "{calls:?}");
    assert_eq!(calls.len(), 25 + 4);
    assert_eq!(st.batches_acked, 25);
    assert_eq!(st.failed_attempts, 0);
}
