//! `ArchiveStore`: an object store, a key prefix and the runtime to drive it, opened
//! from a URL.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme};

use super::runtime::OwnedRuntime;
use super::ArchiveError;

/// Extension of archived segment objects.
pub const SEGMENT_OBJECT_EXT: &str = "seg";

/// The object name (last key component) of an archived segment:
/// `{first_seq:020}-{last_seq:020}.seg`.
pub fn segment_object_name(first_seq: u64, last_seq: u64) -> String {
    format!("{first_seq:020}-{last_seq:020}.{SEGMENT_OBJECT_EXT}")
}

/// Parses an archived segment's object name back into `(first_seq, last_seq)`.
pub fn parse_segment_object_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SEGMENT_OBJECT_EXT)?.strip_suffix('.')?;
    let (a, b) = stem.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        if s.len() != 20 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (first, last) = (num(a)?, num(b)?);
    (first <= last).then_some((first, last))
}

/// A segment found in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedSegment {
    /// Sequence number of its first record (its base).
    pub first_seq: u64,
    /// Sequence number of its last record.
    pub last_seq: u64,
    /// Object size in bytes (the segment file's size).
    pub size: u64,
    /// Full object key.
    pub key: Path,
}

/// Options for opening an [`ArchiveStore`] from a URL. Explicit values override the
/// usual AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT`/
/// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`), which are read for `s3://` URLs; `gs://` reads
/// the `GOOGLE_*` and `az://` the `AZURE_*` variables. `Debug` redacts the secrets.
#[derive(Clone)]
pub struct StoreOptions {
    endpoint: Option<String>,
    allow_http: Option<bool>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    request_timeout: Duration,
    connect_timeout: Duration,
    client_retries: usize,
    options: Vec<(String, String)>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            endpoint: None,
            allow_http: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            client_retries: 2,
            options: Vec::new(),
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        let secret = |k: &str| {
            let k = k.to_ascii_lowercase();
            [
                "key",
                "secret",
                "token",
                "password",
                "sas",
                "credential",
                "service_account",
            ]
            .iter()
            .any(|w| k.contains(w))
                && !k.ends_with("key_id")
        };
        let options: Vec<(&str, &str)> = self
            .options
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if secret(k) { "<redacted>" } else { v.as_str() },
                )
            })
            .collect();
        f.debug_struct("StoreOptions")
            .field(
                "endpoint",
                &self.endpoint.as_deref().map(crate::redact::redact_url),
            )
            .field("allow_http", &self.allow_http)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redact(&self.secret_access_key))
            .field("session_token", &redact(&self.session_token))
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("client_retries", &self.client_retries)
            .field("options", &options)
            .finish()
    }
}

impl StoreOptions {
    /// S3 endpoint, for S3-compatible servers (MinIO, moto, R2...): `http://127.0.0.1:5055`;
    /// for Azure, the blob endpoint (an emulator such as Azurite).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }
    /// Allow plain `http://` endpoints (a local server).
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.allow_http = Some(allow);
        self
    }
    /// AWS region (default: from the environment, else `us-east-1`).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }
    /// Static credentials (default: from the environment / instance metadata).
    pub fn credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(secret_access_key.into());
        self
    }
    /// A session token to go with the credentials.
    pub fn session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(token.into());
        self
    }
    /// Timeout of one HTTP request (default 60 s).
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }
    /// Timeout of establishing a connection (default 5 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    /// A store-specific option by object_store's key name, applied before the typed
    /// options above: `aws_…` for S3 (`AmazonS3ConfigKey`), `google_…` for GCS
    /// (`GoogleConfigKey`: `google_service_account`, `google_service_account_key`, ...),
    /// `azure_…` for Azure (`AzureConfigKey`: `azure_storage_account_name`,
    /// `azure_storage_account_key`, `azure_storage_use_emulator`, ...). A key the store
    /// does not know is a configuration error when the store is opened.
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }
    /// Retries object_store's HTTP client makes by itself before an error reaches the
    /// archiver, which then backs off and retries on its own schedule (default 2).
    pub fn client_retries(mut self, n: usize) -> Self {
        self.client_retries = n;
        self
    }
}

struct StoreInner {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    identity: String,
    rt: OwnedRuntime,
}

/// Where archived segments live: an [`ObjectStore`], a key prefix, and the tokio
/// runtime walspool owns to drive it. Cheap to clone; clones share the store (a
/// `memory://` store is shared only between clones).
///
/// Every `async fn` of the archive runs its object-store calls on that runtime, so the
/// caller may use any executor.
#[derive(Clone)]
pub struct ArchiveStore {
    inner: Arc<StoreInner>,
}

impl std::fmt::Debug for ArchiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveStore")
            .field("store", &self.inner.identity)
            .field("prefix", &self.inner.prefix.as_ref())
            .finish()
    }
}

impl ArchiveStore {
    /// Opens a store from a URL with default [`StoreOptions`]. The URL is parsed by
    /// object_store ([`object_store::ObjectStoreScheme::parse`] and each store
    /// builder's `with_url`), so every form object_store knows works:
    ///
    /// * `s3://bucket/prefix` (or `s3a://`, `https://s3.<region>.amazonaws.com/bucket/...`,
    ///   `https://<bucket>.s3.<region>.amazonaws.com/...`): Amazon S3 or an
    ///   S3-compatible server; credentials, region and endpoint from the options and the
    ///   AWS environment variables.
    /// * `gs://bucket/prefix`: Google Cloud Storage; credentials from
    ///   `GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_APPLICATION_CREDENTIALS`, the
    ///   `google_service_account` option, else the instance's metadata server.
    /// * `az://container/prefix` (or `azure://`, `adl://`,
    ///   `abfs[s]://container@account.dfs.core.windows.net/prefix`,
    ///   `https://account.blob.core.windows.net/container/prefix`): Azure Blob Storage;
    ///   the account and credentials from the URL, the `AZURE_*` environment variables or
    ///   options such as `azure_storage_account_name` and `azure_storage_account_key`.
    /// * `file:///absolute/path`: a directory (created if missing); the embedded default.
    /// * `memory:///prefix` (object_store's form) or `memory://prefix`: a fresh in-memory
    ///   store (for tests; shared only between clones of the returned value).
    ///
    /// Building a store does not touch the network; the first request does.
    pub fn open(url: &str) -> Result<Self, ArchiveError> {
        Self::open_with(url, StoreOptions::default())
    }

    /// Opens a store from a URL (see [`open`](Self::open)) with explicit options.
    pub fn open_with(url: &str, opts: StoreOptions) -> Result<Self, ArchiveError> {
        let parsed = url::Url::parse(url).map_err(|e| {
            ArchiveError::Config(format!(
                "{url:?} is not a URL ({e}; want s3://, gs://, az://, file:// or memory://)"
            ))
        })?;
        if parsed.scheme() == "memory" {
            // object_store's own form is `memory:///prefix`; `memory://prefix` is accepted too.
            let prefix = format!("{}{}", parsed.host_str().unwrap_or(""), parsed.path());
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = format!("memory://{}#{n}", std::process::id());
            return Self::with_identity(
                Arc::new(object_store::memory::InMemory::new()),
                &prefix,
                id,
            );
        }
        let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| {
            ArchiveError::Config(format!(
                "unsupported archive URL {url:?}: {e} (want s3://, gs://, az://, abfs://, file:// or memory://)"
            ))
        })?;
        let config = |e: object_store::Error| ArchiveError::Config(format!("{url}: {e}"));
        let allow_http = |env: &str| {
            let env_http = std::env::var(env).is_ok_and(|v| v.eq_ignore_ascii_case("true"));
            let endpoint_http = opts
                .endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://"));
            opts.allow_http.unwrap_or(env_http || endpoint_http)
        };
        // Client options (timeouts, allow-http) are set whole: `with_client_options`
        // replaces them all, including an `*_ALLOW_HTTP` read from the environment,
        // which is therefore read here.
        let client = |allow: bool| {
            object_store::ClientOptions::new()
                .with_timeout(opts.request_timeout)
                .with_connect_timeout(opts.connect_timeout)
                .with_allow_http(allow)
        };
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: opts.client_retries,
            retry_timeout: opts.request_timeout,
        };
        let base = identity_base(&parsed, &prefix);
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::AmazonS3 => {
                let mut b = AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_client_options(client(allow_http("AWS_ALLOW_HTTP")));
                for (k, v) in &opts.options {
                    b = b.with_config(option_key::<AmazonS3ConfigKey>(k, url)?, v);
                }
                if let Some(e) = &opts.endpoint {
                    b = b.with_endpoint(e);
                }
                if let Some(r) = &opts.region {
                    b = b.with_region(r);
                }
                if let (Some(k), Some(s)) = (&opts.access_key_id, &opts.secret_access_key) {
                    b = b.with_access_key_id(k).with_secret_access_key(s);
                }
                if let Some(t) = &opts.session_token {
                    b = b.with_token(t);
                }
                Arc::new(b.with_retry(retry).build().map_err(config)?)
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                let mut b = GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_client_options(client(allow_http("GOOGLE_ALLOW_HTTP")));
                for (k, v) in &opts.options {
                    b = b.with_config(option_key::<GoogleConfigKey>(k, url)?, v);
                }
                Arc::new(b.with_retry(retry).build().map_err(config)?)
            }
            ObjectStoreScheme::MicrosoftAzure => {
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_client_options(client(allow_http("AZURE_ALLOW_HTTP")));
                for (k, v) in &opts.options {
                    b = b.with_config(option_key::<AzureConfigKey>(k, url)?, v);
                }
                if let Some(e) = &opts.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                Arc::new(b.with_retry(retry).build().map_err(config)?)
            }
            ObjectStoreScheme::Local => {
                let dir = parsed.to_file_path().map_err(|()| {
                    ArchiveError::Config(format!(
                        "{url:?}: a file URL needs an absolute local path (file:///var/lib/walspool/archive)"
                    ))
                })?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| ArchiveError::io("create archive directory", dir.display().to_string(), e))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(config)?
                    .with_automatic_cleanup(true);
                return Self::with_identity(Arc::new(fs), "", format!("file://{}", dir.display()));
            }
            other => {
                return Err(ArchiveError::Config(format!(
                    "unsupported archive URL {url:?} ({other:?}; want s3://, gs://, az://, abfs://, file:// or memory://)"
                )))
            }
        };
        Self::with_identity(store, prefix.as_ref(), base)
    }

    /// Wraps any object store, with a key prefix (may be empty).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Self, ArchiveError> {
        let id = store.to_string();
        Self::with_identity(store, prefix, id)
    }

    fn with_identity(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        identity: String,
    ) -> Result<Self, ArchiveError> {
        let prefix = Path::parse(prefix.trim_matches('/'))
            .map_err(|e| ArchiveError::Config(format!("invalid key prefix {prefix:?}: {e}")))?;
        let identity = if prefix.as_ref().is_empty() {
            identity
        } else {
            format!("{identity}/{prefix}")
        };
        Ok(ArchiveStore {
            inner: Arc::new(StoreInner {
                store,
                prefix,
                identity,
                rt: OwnedRuntime::new()?,
            }),
        })
    }

    /// The object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    /// The key prefix.
    pub fn prefix(&self) -> &Path {
        &self.inner.prefix
    }

    /// A stable description of store and prefix (`s3://bucket/prefix`), recorded with
    /// the archived state so that a WAL pointed at another store uploads again.
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// The key prefix of one WAL's segments: `{prefix}/{wal_id}`.
    pub fn wal_prefix(&self, wal_id: &str) -> Path {
        self.inner.prefix.clone().join(wal_id)
    }

    /// The key of a segment: `{prefix}/{wal_id}/{first_seq:020}-{last_seq:020}.seg`.
    pub fn segment_key(&self, wal_id: &str, first_seq: u64, last_seq: u64) -> Path {
        self.wal_prefix(wal_id)
            .join(segment_object_name(first_seq, last_seq))
    }

    /// Runs `f(store)` on the archive's own tokio runtime and awaits it from any
    /// executor: the way to call object_store directly (a raw put, a bucket listing).
    pub async fn run<F, Fut, T>(&self, f: F) -> Result<T, ArchiveError>
    where
        F: FnOnce(Arc<dyn ObjectStore>) -> Fut,
        Fut: Future<Output = Result<T, ArchiveError>> + Send + 'static,
        T: Send + 'static,
    {
        let fut = f(self.inner.store.clone());
        self.inner.rt.spawn(fut).await
    }

    pub(crate) fn spawn<Fut, T>(&self, fut: Fut) -> super::runtime::Bridged<T>
    where
        Fut: Future<Output = Result<T, ArchiveError>> + Send + 'static,
        T: Send + 'static,
    {
        self.inner.rt.spawn(fut)
    }

    pub(crate) fn spawn_detached<Fut>(&self, fut: Fut) -> tokio::task::JoinHandle<()>
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.inner.rt.spawn_detached(fut)
    }

    /// The WAL ids that have segments in this store (the key components under the prefix).
    pub async fn list_wal_ids(&self) -> Result<Vec<String>, ArchiveError> {
        let prefix = self.inner.prefix.clone();
        self.run(|store| async move {
            let p = (!prefix.as_ref().is_empty()).then_some(&prefix);
            let res = store
                .list_with_delimiter(p)
                .await
                .map_err(|e| ArchiveError::store("list", &prefix, e))?;
            let mut ids: Vec<String> = res
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_string))
                .collect();
            ids.sort();
            Ok(ids)
        })
        .await
    }

    /// The archived segments of one WAL, ordered by first sequence number. Objects
    /// whose names do not follow the key scheme are ignored.
    pub async fn list_segments(&self, wal_id: &str) -> Result<Vec<ArchivedSegment>, ArchiveError> {
        let prefix = self.wal_prefix(wal_id);
        self.spawn(list_segments_task(self.inner.store.clone(), prefix))
            .await
    }
}

pub(crate) async fn list_segments_task(
    store: Arc<dyn ObjectStore>,
    prefix: Path,
) -> Result<Vec<ArchivedSegment>, ArchiveError> {
    let metas: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| ArchiveError::store("list", &prefix, e))?;
    let mut out: Vec<ArchivedSegment> = metas
        .into_iter()
        .filter_map(|m| {
            let (first_seq, last_seq) = parse_segment_object_name(m.location.filename()?)?;
            // Only direct children of the WAL's prefix.
            let parent_ok = m.location.prefix_match(&prefix).is_some_and(|mut rest| {
                rest.next();
                rest.next().is_none()
            });
            parent_ok.then_some(ArchivedSegment {
                first_seq,
                last_seq,
                size: m.size,
                key: m.location,
            })
        })
        .collect();
    out.sort_by_key(|s| (s.first_seq, s.last_seq));
    Ok(out)
}

/// Reads `range` of an object, on the calling (tokio) task.
pub(crate) async fn get_range(
    store: &Arc<dyn ObjectStore>,
    key: &Path,
    range: std::ops::Range<u64>,
) -> Result<Vec<u8>, ArchiveError> {
    if range.is_empty() {
        return Ok(Vec::new());
    }
    let b = store
        .get_range(key, range)
        .await
        .map_err(|e| ArchiveError::store("get", key, e))?;
    Ok(b.to_vec())
}

/// A store-specific option key (`aws_…`, `google_…`, `azure_…`), as object_store names it.
fn option_key<K: std::str::FromStr<Err = object_store::Error>>(
    key: &str,
    url: &str,
) -> Result<K, ArchiveError> {
    key.parse()
        .map_err(|e| ArchiveError::Config(format!("{url}: option {key:?}: {e}")))
}

/// The store part of an archive identity: the URL without the key prefix, query and
/// fragment (`s3a://` written `s3://`, as it always was).
fn identity_base(url: &url::Url, prefix: &Path) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let full = u.as_str().trim_end_matches('/').to_string();
    let p = prefix.as_ref();
    let base = if p.is_empty() {
        full.as_str()
    } else {
        full.strip_suffix(p)
            .map(|b| b.trim_end_matches('/'))
            .unwrap_or(&full)
    };
    match base.strip_prefix("s3a://") {
        Some(rest) => format!("s3://{rest}"),
        None => base.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_round_trip() {
        let n = segment_object_name(1, 42);
        assert_eq!(n, "00000000000000000001-00000000000000000042.seg");
        assert_eq!(parse_segment_object_name(&n), Some((1, 42)));
        assert_eq!(
            parse_segment_object_name("00000000000000000002-00000000000000000001.seg"),
            None
        );
        assert_eq!(parse_segment_object_name("1-2.seg"), None);
    }

    #[test]
    fn urls() {
        let s = ArchiveStore::open("memory://pre/fix").unwrap();
        assert_eq!(
            s.segment_key("w", 1, 2).as_ref(),
            "pre/fix/w/00000000000000000001-00000000000000000002.seg"
        );
        let s = ArchiveStore::open("s3://bucket/a/b").unwrap();
        assert_eq!(s.identity(), "s3://bucket/a/b");
        assert!(ArchiveStore::open("ftp://x").is_err());
        assert!(ArchiveStore::open("file://relative").is_err());
    }
}
