//! The HTTP(S) client the HTTP and OTLP sinks share (features `http`, `otlp`).
//!
//! * [`TlsConfig`]: rustls with the *ring* provider (no OpenSSL): the webpki roots
//!   (default) or the system's roots, plus CA certificates from PEM files, and an
//!   optional client certificate (mTLS).
//! * [`TokenProvider`]: a bearer token fetched per request, and fetched again with
//!   `refresh = true` after the server answered 401 (the request is then sent once more
//!   with the new token), so a short-lived token is renewed without restarting the
//!   shipper. Tokens never appear in `Debug` output.
//! * The client is a blocking HTTP/1.1 client (`ureq`) on a thread the sink owns, with
//!   keep-alive (one pooled connection per host, reused while the server keeps it open).
//!   The sinks therefore need no async runtime and work under tokio, smol or a plain
//!   `futures` executor alike.
//!
//! A server certificate the client refuses (unknown issuer, wrong name, expired), a
//! TLS alert refusing the client certificate, or an incompatible peer is a *permanent*
//! error ([`SinkError::Batch`], reason starting with `TLS:`): retrying cannot fix a
//! configuration mistake. (Under TLS 1.3 a server checks the client certificate after
//! the client finished its handshake, so its alert races the request and often shows
//! as a reset connection instead: transient, retried with backoff, counted in
//! `ship_errors_total`.) Note what the shipper does with permanent errors: after
//! `poison_attempts` it splits the batch and sets the records aside in the dead letter
//! (from where [`Wal::redrive_dead_letters`](walspool_wal::Wal::redrive_dead_letters)
//! sends them again once the configuration is fixed). Other connection failures and
//! timeouts are transient.

use std::io::{Read, Write};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use futures::channel::oneshot;
use walspool_wal::shipper::SinkError;
use walspool_wal::Error;

pub use crate::tls::{Roots, TlsConfig};

/// Supplies the bearer token of each request.
///
/// Called on the sink's own thread before every request with `refresh = false` (cache
/// the token and return it until it is about to expire), and with `refresh = true`
/// after the server answered 401 to it: fetch a new one; the request is then sent once
/// more. An `Err` is a transient sink error (the batch is retried after backoff).
/// Blocking inside is fine (it runs on the sink's thread, never on the executor).
///
/// Any `Fn(bool) -> Result<String, String> + Send + Sync` is a provider.
pub trait TokenProvider: Send + Sync {
    /// The token to send (`Authorization: Bearer {token}`).
    fn token(&self, refresh: bool) -> Result<String, String>;
}

impl<F> TokenProvider for F
where
    F: Fn(bool) -> Result<String, String> + Send + Sync,
{
    fn token(&self, refresh: bool) -> Result<String, String> {
        self(refresh)
    }
}

/// A fixed token.
struct Static(String);

impl TokenProvider for Static {
    fn token(&self, _refresh: bool) -> Result<String, String> {
        Ok(self.0.clone())
    }
}

/// How a sink authenticates; shows as `<redacted>` in `Debug`.
#[derive(Clone)]
pub(crate) struct Auth(pub(crate) Arc<dyn TokenProvider>);

impl Auth {
    pub(crate) fn fixed(token: String) -> Self {
        Auth(Arc::new(Static(token)))
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<bearer token redacted>")
    }
}

/// Header list whose values do not show in `Debug` (they may carry API keys).
#[derive(Clone, Default)]
pub(crate) struct Headers(pub(crate) Vec<(String, String)>);

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| format!("{k}: <redacted>")))
            .finish()
    }
}

/// Settings common to both sinks' builders. `Debug` redacts the URL's credentials,
/// the token and header values.
#[derive(Clone)]
pub(crate) struct ClientSettings {
    pub(crate) url: String,
    pub(crate) auth: Option<Auth>,
    pub(crate) tls: TlsConfig,
    pub(crate) allow_http: bool,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) headers: Headers,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("url", &crate::redact::redact_url(&self.url))
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("allow_http", &self.allow_http)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("headers", &self.headers)
            .finish()
    }
}

impl ClientSettings {
    pub(crate) fn new(url: String) -> Self {
        ClientSettings {
            url,
            auth: None,
            tls: TlsConfig::default(),
            allow_http: false,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            headers: Headers::default(),
        }
    }

    /// The request for a batch: `Content-Type`, `Idempotency-Key: {batch key}`, the
    /// sink's own `headers`, `Content-Encoding: gzip` and the body gzipped when `gzip`,
    /// then the extra headers of the builder.
    pub(crate) fn batch_request(
        &self,
        content_type: &str,
        batch_key: String,
        headers: impl IntoIterator<Item = (String, String)>,
        body: Vec<u8>,
        gzip: bool,
    ) -> Result<Request, SinkError> {
        let mut all = vec![
            ("Content-Type".to_string(), content_type.to_string()),
            ("Idempotency-Key".to_string(), batch_key),
        ];
        all.extend(headers);
        let body = if gzip {
            all.push(("Content-Encoding".into(), "gzip".into()));
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            gz.write_all(&body)
                .and_then(|()| gz.finish())
                .map_err(|e| SinkError::transient(format!("gzip: {e}")))?
        } else {
            body
        };
        all.extend(self.headers.0.iter().cloned());
        Ok(Request { headers: all, body })
    }

    /// Checks the URL's scheme and builds the agent.
    pub(crate) fn client(&self, what: &str) -> Result<Client, Error> {
        let lower = self.url.to_ascii_lowercase();
        let tls = if lower.starts_with("https://") {
            Some(self.tls.build()?)
        } else if lower.starts_with("http://") {
            if !self.allow_http {
                return Err(Error::Config(format!(
                    "{what} URL {:?} is plain http://: records{} would cross the network \
                     in clear text; use https://, or allow_http(true) to opt in",
                    self.url,
                    if self.auth.is_some() {
                        " and the bearer token"
                    } else {
                        ""
                    }
                )));
            }
            None
        } else {
            return Err(Error::Config(format!(
                "{what} URL {:?} must start with https:// (or http:// with allow_http)",
                self.url
            )));
        };
        let mut agent = ureq::AgentBuilder::new()
            .timeout_connect(self.connect_timeout)
            .timeout(self.timeout)
            .redirects(0)
            .max_idle_connections_per_host(2)
            .user_agent(concat!("walspool/", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = tls {
            agent = agent.tls_config(tls);
        }
        Ok(Client {
            agent: agent.build(),
            url: self.url.clone(),
            auth: self.auth.clone(),
        })
    }
}

/// One request: headers and body ([`ClientSettings::batch_request`]).
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

/// A non-2xx answer.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) code: u16,
    pub(crate) text: String,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) reject_seq: Option<String>,
    pub(crate) body: Vec<u8>,
}

impl Refusal {
    /// A transient error for this answer, with its `Retry-After` (seconds or an
    /// HTTP-date) as the shipper's retry-after hint.
    pub(crate) fn transient(&self, reason: String) -> SinkError {
        SinkError::Transient {
            reason,
            retry_after: self.retry_after,
        }
    }
}

/// Header naming the one record a server refuses in a 4xx answer (HTTP sink).
pub(crate) const REJECT_SEQ_HEADER: &str = "Walspool-Reject-Seq";

/// Bytes of a response body read at most (the rest is dropped with the connection).
const MAX_BODY: u64 = 1 << 20;

pub(crate) struct Client {
    agent: ureq::Agent,
    url: String,
    auth: Option<Auth>,
}

impl Client {
    /// POSTs `request`: `Ok(Ok(response body))` for 2xx, `Ok(Err(refusal))` for another
    /// status, `Err` for a transport failure (classified). A 401 with a token provider
    /// gets a refreshed token and one more try.
    pub(crate) fn post(&self, request: &Request) -> Result<Result<Vec<u8>, Refusal>, SinkError> {
        let mut refresh = false;
        loop {
            let mut req = self.agent.post(&self.url);
            for (k, v) in &request.headers {
                req = req.set(k, v);
            }
            if let Some(auth) = &self.auth {
                let t = auth
                    .0
                    .token(refresh)
                    .map_err(|e| SinkError::transient(format!("the token provider failed: {e}")))?;
                req = req.set("Authorization", &format!("Bearer {t}"));
            }
            match req.send_bytes(&request.body) {
                Ok(resp) => return Ok(Ok(read_body(resp))),
                Err(ureq::Error::Status(401, _)) if self.auth.is_some() && !refresh => {
                    tracing::debug!("{}: 401, refreshing the bearer token", self.url);
                    refresh = true;
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let retry_after = resp.header("Retry-After").and_then(parse_retry_after);
                    let reject_seq = resp.header(REJECT_SEQ_HEADER).map(str::to_string);
                    let text = resp.status_text().to_string();
                    return Ok(Err(Refusal {
                        code,
                        text,
                        retry_after,
                        reject_seq,
                        body: read_body(resp),
                    }));
                }
                Err(ureq::Error::Transport(t)) => return Err(transport_error(&self.url, &t)),
            }
        }
    }
}

/// Reads the body to its end, so the connection goes back to the pool (keep-alive).
fn read_body(resp: ureq::Response) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = resp.into_reader().take(MAX_BODY).read_to_end(&mut out);
    out
}

/// `Retry-After`: delay-seconds or an HTTP-date.
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Classifies a failure to talk to the server: TLS configuration mistakes are
/// permanent, the rest (refused, reset, timeout, DNS) transient.
fn transport_error(url: &str, t: &ureq::Transport) -> SinkError {
    if let Some(tls) = crate::tls::find_tls_error(t) {
        let permanent = crate::tls::permanent_tls_failure(tls);
        if let Some(what) = permanent {
            return SinkError::batch(format!(
                "TLS: POST {url}: {what}: {tls} (check the CA / roots / client certificate)"
            ));
        }
        return SinkError::transient(format!("TLS: POST {url}: {tls}"));
    }
    SinkError::transient(format!("POST {url}: {t}"))
}

type Job<J, R> = (J, oneshot::Sender<R>);

/// The sink's client thread: runs `f` on each job, in order.
pub(crate) struct Worker<J, R> {
    tx: mpsc::Sender<Job<J, R>>,
}

impl<J: Send + 'static, R: Send + 'static> Worker<J, R> {
    pub(crate) fn spawn(
        name: &str,
        url: &str,
        mut f: impl FnMut(J) -> R + Send + 'static,
    ) -> Result<Self, Error> {
        let (tx, rx) = mpsc::channel::<Job<J, R>>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Ends when the sink (the sender) is dropped.
                for (job, reply) in rx {
                    let _ = reply.send(f(job));
                }
            })
            .map_err(|e| Error::Io {
                op: "spawn sink client thread",
                path: url.to_string(),
                source: e,
            })?;
        Ok(Worker { tx })
    }

    /// Runs `job` on the thread; `None` if the thread is gone.
    pub(crate) async fn call(&self, job: J) -> Option<R> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((job, reply)).ok()?;
        rx.await.ok()
    }
}

impl<J: Send + 'static> Worker<J, Result<(), SinkError>> {
    /// Runs `job` on the thread of the `what` sink; a transient error if the thread is
    /// gone.
    pub(crate) async fn send(&self, job: J, what: &str) -> Result<(), SinkError> {
        self.call(job).await.unwrap_or_else(|| {
            Err(SinkError::transient(format!(
                "the {what} sink's thread is gone"
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).expect("date");
        assert!(
            d <= Duration::from_secs(120) && d >= Duration::from_secs(100),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let mut s = ClientSettings::new("https://x".into());
        s.auth = Some(Auth::fixed("s3cret-token".into()));
        s.headers.0.push(("X-Api-Key".into(), "k3y".into()));
        s.tls = TlsConfig::new().client_cert_pem("CERT", "PRIVATE-KEY");
        let d = format!("{s:?}");
        for secret in ["s3cret-token", "k3y", "PRIVATE-KEY"] {
            assert!(!d.contains(secret), "{d}");
        }
        assert!(d.contains("X-Api-Key"), "{d}");
    }
}
