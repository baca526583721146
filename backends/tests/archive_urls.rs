//! Archive URLs are parsed by object_store: every scheme the README names opens a
//! store. S3 (moto), `file://` and `memory://` are exercised for real by
//! tests/archive.rs; GCS and Azure have no emulator here, so these tests build the
//! store from a URL and options (no network: object_store builds clients lazily) and
//! check where the segments would go.

use walspool_backends::archive::{ArchiveStore, StoreOptions};

fn key(s: &ArchiveStore) -> String {
    s.segment_key("w", 1, 2).as_ref().to_string()
}

#[test]
fn gcs_urls_build_a_gcs_store() {
    let s = ArchiveStore::open("gs://audit-bucket/wal/prod").unwrap();
    assert_eq!(s.identity(), "gs://audit-bucket/wal/prod");
    assert_eq!(
        key(&s),
        "wal/prod/w/00000000000000000001-00000000000000000002.seg"
    );
    let shown = s.object_store().to_string();
    assert!(
        shown.contains("GoogleCloudStorage(audit-bucket)"),
        "{shown}"
    );
}

#[test]
fn azure_urls_build_an_azure_store() {
    // An account key is base64; this one is Azurite's well-known development key.
    let dev_key =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    let opts = StoreOptions::default()
        .option("azure_storage_account_name", "walspoolacct")
        .option("azure_storage_account_key", dev_key);
    let s = ArchiveStore::open_with("az://audit/wal", opts.clone()).unwrap();
    assert_eq!(s.identity(), "az://audit/wal");
    assert_eq!(
        key(&s),
        "wal/w/00000000000000000001-00000000000000000002.seg"
    );
    let shown = s.object_store().to_string();
    assert!(shown.contains("MicrosoftAzure"), "{shown}");
    assert!(shown.contains("audit"), "{shown}");

    // The account can come from the URL itself.
    let s = ArchiveStore::open_with(
        "abfs://audit@walspoolacct.dfs.core.windows.net/wal",
        StoreOptions::default().option("azure_storage_account_key", dev_key),
    )
    .unwrap();
    assert_eq!(
        s.identity(),
        "abfs://audit@walspoolacct.dfs.core.windows.net/wal"
    );
    assert_eq!(
        key(&s),
        "wal/w/00000000000000000001-00000000000000000002.seg"
    );
    let s = ArchiveStore::open_with(
        "https://walspoolacct.blob.core.windows.net/audit/wal/x",
        StoreOptions::default().option("azure_storage_account_key", dev_key),
    )
    .unwrap();
    assert_eq!(
        key(&s),
        "wal/x/w/00000000000000000001-00000000000000000002.seg"
    );
    // An emulator (Azurite) endpoint, over plain HTTP.
    let s = ArchiveStore::open_with(
        "az://audit",
        opts.clone().option("azure_storage_use_emulator", "true"),
    )
    .unwrap();
    assert_eq!(s.identity(), "az://audit");
    // Without any account the builder says so.
    let err = ArchiveStore::open_with("az://audit/wal", StoreOptions::default());
    if std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_none() {
        let err = err.unwrap_err().to_string();
        assert!(err.to_lowercase().contains("account"), "{err}");
    }
}

#[test]
fn s3_url_forms_and_options() {
    for (url, identity, prefix) in [
        ("s3://bucket/a/b", "s3://bucket/a/b", "a/b"),
        ("s3a://bucket/a", "s3://bucket/a", "a"),
        (
            "https://s3.eu-west-1.amazonaws.com/bucket/a",
            "https://s3.eu-west-1.amazonaws.com/bucket/a",
            "a",
        ),
    ] {
        let s = ArchiveStore::open_with(
            url,
            StoreOptions::default()
                .credentials("AKIDEXAMPLE", "not-a-secret")
                .endpoint("http://127.0.0.1:9")
                .allow_http(true),
        )
        .unwrap();
        assert_eq!(s.identity(), identity, "{url}");
        assert_eq!(s.prefix().as_ref(), prefix, "{url}");
        assert!(s.object_store().to_string().contains("bucket"), "{url}");
    }
    // object_store's own option keys pass through; unknown ones are refused.
    ArchiveStore::open_with(
        "s3://bucket",
        StoreOptions::default().option("aws_region", "eu-west-1"),
    )
    .unwrap();
    let err = ArchiveStore::open_with(
        "gs://bucket",
        StoreOptions::default().option("aws_region", "eu-west-1"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("aws_region"), "{err}");
}

#[test]
fn memory_and_file_forms_and_refusals() {
    // object_store's form and the short form.
    let s = ArchiveStore::open("memory:///pre/fix").unwrap();
    assert_eq!(
        key(&s),
        "pre/fix/w/00000000000000000001-00000000000000000002.seg"
    );
    let s = ArchiveStore::open("memory://pre/fix").unwrap();
    assert_eq!(
        key(&s),
        "pre/fix/w/00000000000000000001-00000000000000000002.seg"
    );
    let d = tempfile::tempdir().unwrap();
    let url = format!("file://{}/arch", d.path().display());
    let s = ArchiveStore::open(&url).unwrap();
    assert_eq!(s.identity(), url);
    assert!(d.path().join("arch").is_dir());
    for bad in [
        "ftp://x/y",
        "file://relative",
        "not a url",
        "http://example.com/x",
    ] {
        assert!(ArchiveStore::open(bad).is_err(), "{bad}");
    }
}

#[test]
fn debug_redacts_secrets() {
    let o = StoreOptions::default()
        .credentials("AKIDEXAMPLE", "very-secret")
        .session_token("tok-secret")
        .option("azure_storage_account_key", "key-secret")
        .option("azure_storage_account_name", "acct");
    let shown = format!("{o:?}");
    for secret in ["very-secret", "tok-secret", "key-secret"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(
        shown.contains("AKIDEXAMPLE") && shown.contains("acct"),
        "{shown}"
    );
}
