//! No secret shows in any `Debug` output (issue 17): bearer tokens, header values,
//! passwords and tokens in URLs, NATS credentials, S3 secrets, Azure keys, HMAC keys.
//! Each builder (and what it builds, where building needs no server) is given secrets
//! that all contain `SECRET`, and its `{:?}` and `{:#?}` must not.

#![allow(unused)]

/// Panics if `SECRET` appears in `value`'s debug output, either form.
fn assert_redacted(what: &str, value: &dyn std::fmt::Debug) {
    for s in [format!("{value:?}"), format!("{value:#?}")] {
        assert!(!s.contains("SECRET"), "{what} leaks a secret: {s}");
        assert!(s.contains("redacted") || !s.is_empty(), "{what}: {s}");
    }
}

#[test]
fn redact_url() {
    let s = walspool_backends::redact::redact_url("postgres://app:SECRET@db/x?password=SECRET");
    assert!(!s.contains("SECRET"), "{s}");
    assert!(s.contains("postgres://app:"), "{s}");
}

#[cfg(feature = "http")]
#[test]
fn http_sink() {
    use walspool_backends::http::HttpSink;
    let b = HttpSink::builder("https://user:SECRET@ingest.example/v1?token=SECRET")
        .bearer_token("SECRET-bearer")
        .header("X-Api-Key", "SECRET-header");
    assert_redacted("HttpSinkBuilder", &b);
    let sink = b.build().expect("build");
    assert_redacted("HttpSink", &sink);
}

#[cfg(feature = "otlp")]
#[test]
fn otlp_sink() {
    use walspool_backends::otlp::OtlpSink;
    let b = OtlpSink::builder("https://user:SECRET@otel.example:4318")
        .bearer_token("SECRET-bearer")
        .header("X-Api-Key", "SECRET-header");
    assert_redacted("OtlpSinkBuilder", &b);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_sink() {
    use walspool_backends::postgres::PgSink;
    let b = PgSink::builder("postgres://app:SECRET@db.example:5432/audit");
    assert_redacted("PgSinkBuilder (URL)", &b);
    let b = PgSink::builder("host=db.example user=app password=SECRET dbname=audit");
    assert_redacted("PgSinkBuilder (key=value)", &b);
    let sink = b.build().expect("build");
    assert_redacted("PgSink", &sink);
    // A client key for mTLS, as PEM text or a file, is never shown.
    use walspool_backends::postgres::TlsConfig;
    let b = PgSink::builder("postgres://app@db.example:5432/audit?sslmode=require").tls(
        TlsConfig::new().client_cert_pem(
            "-----BEGIN CERTIFICATE-----",
            "-----BEGIN PRIVATE KEY-----\nSECRET\n-----END PRIVATE KEY-----\n",
        ),
    );
    assert_redacted("PgSinkBuilder (client key PEM)", &b);
    let b = PgSink::builder("postgres://app@db.example:5432/audit")
        .tls(TlsConfig::new().client_cert_files("/etc/pg/client.crt", "/etc/pg/SECRET.key"));
    assert_redacted("PgSinkBuilder (client key file)", &b);
}

#[cfg(feature = "nats")]
#[test]
fn nats_sink() {
    use walspool_backends::nats::NatsSink;
    let url = "nats://user:SECRET@a.example:4222,nats://SECRET@b.example:4222";
    assert_redacted("NatsSinkBuilder (URL)", &NatsSink::builder(url));
    assert_redacted(
        "NatsSinkBuilder (user/password)",
        &NatsSink::builder("nats://a:4222").user_password("user", "SECRET"),
    );
    assert_redacted(
        "NatsSinkBuilder (token)",
        &NatsSink::builder("nats://a:4222").token("SECRET"),
    );
    assert_redacted(
        "NatsSinkBuilder (nkey)",
        &NatsSink::builder("nats://a:4222").nkey("SUSECRET"),
    );
    let err = NatsSink::builder("nats://user:SECRET@[bad").build().err();
    assert_redacted("NatsSinkBuilder::build error", &err);
}

#[cfg(feature = "object-store")]
#[test]
fn store_options() {
    use walspool_backends::archive::StoreOptions;
    let o = StoreOptions::default()
        .endpoint("http://user:SECRET@minio.example:9000")
        .credentials("AKIAEXAMPLE", "SECRET-access-key")
        .session_token("SECRET-session")
        .option("azure_storage_account_key", "SECRET-azure")
        .option("google_service_account_key", "SECRET-gcp");
    assert_redacted("StoreOptions", &o);
    // The key id is not a secret and stays visible.
    assert!(format!("{o:?}").contains("AKIAEXAMPLE"));
}

#[test]
fn hmac_key() {
    let key = walspool_wal::HmacKey::new(b"SECRET-SECRET-SECRET-SECRET-SECRET".to_vec())
        .expect("a 34-byte key");
    assert_redacted("HmacKey", &key);
}
