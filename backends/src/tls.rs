//! TLS settings shared by the sinks that speak TLS through rustls (features `http`,
//! `otlp`, `postgres`): the *ring* provider (no OpenSSL), the webpki roots (default) or
//! the system's roots, plus CA certificates from PEM files or text, and an optional
//! client certificate (mTLS). Certificates are always verified, host name included.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use walspool_wal::Error;

/// Which trust anchors verify the server's certificate (besides any CA file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Roots {
    /// Mozilla's roots, compiled in (`webpki-roots`): the same on every machine.
    #[default]
    Webpki,
    /// The operating system's store (`rustls-native-certs`: `/etc/ssl/certs`,
    /// `SSL_CERT_FILE`, ...).
    System,
    /// None: only the CA certificates given with [`TlsConfig::ca_file`] /
    /// [`TlsConfig::ca_pem`] (a private PKI).
    None,
}

#[derive(Clone)]
enum Pem {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl Pem {
    fn load(&self, what: &'static str) -> Result<Vec<u8>, Error> {
        match self {
            Pem::Bytes(b) => Ok(b.clone()),
            Pem::File(p) => std::fs::read(p).map_err(|e| Error::Io {
                op: what,
                path: p.display().to_string(),
                source: e,
            }),
        }
    }

    fn name(&self) -> String {
        match self {
            Pem::File(p) => p.display().to_string(),
            Pem::Bytes(_) => "<PEM given in memory>".into(),
        }
    }
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pem::File(p) => write!(f, "{p:?}"),
            Pem::Bytes(b) => write!(f, "<{} PEM bytes>", b.len()),
        }
    }
}

/// TLS settings of the HTTP, OTLP and PostgreSQL sinks: trust anchors, extra CA
/// certificates and an optional client certificate. Certificates are always verified,
/// host name included.
///
/// ```
/// # #[cfg(feature = "http")] {
/// use walspool_backends::client::{Roots, TlsConfig};
/// let tls = TlsConfig::new()
///     .roots(Roots::None)
///     .ca_file("/etc/walspool/ingest-ca.pem")
///     .client_cert_files("/etc/walspool/client.pem", "/etc/walspool/client.key");
/// // Files are read when the sink is built.
/// # let _ = tls;
/// # }
/// ```
#[derive(Clone, Default)]
pub struct TlsConfig {
    roots: Roots,
    cas: Vec<Pem>,
    client: Option<(Pem, Pem)>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("roots", &self.roots)
            .field("cas", &self.cas)
            // The certificate is public; the key is not shown, even as a path.
            .field(
                "client_cert",
                &self.client.as_ref().map(|(c, _)| (c, "<key redacted>")),
            )
            .finish()
    }
}

impl TlsConfig {
    /// Webpki roots, no extra CA, no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// The trust anchors (default [`Roots::Webpki`]).
    pub fn roots(mut self, roots: Roots) -> Self {
        self.roots = roots;
        self
    }

    /// Also trusts the CA certificate(s) in this PEM file (read when the sink is built).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cas.push(Pem::File(path.into()));
        self
    }

    /// Also trusts the CA certificate(s) in this PEM text.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.cas.push(Pem::Bytes(pem.into()));
        self
    }

    /// Presents a client certificate (mTLS): the chain and its private key (PKCS#8,
    /// PKCS#1 or SEC1), PEM files read when the sink is built.
    pub fn client_cert_files(mut self, chain: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client = Some((Pem::File(chain.into()), Pem::File(key.into())));
        self
    }

    /// Presents a client certificate (mTLS) given as PEM text.
    pub fn client_cert_pem(mut self, chain: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.client = Some((Pem::Bytes(chain.into()), Pem::Bytes(key.into())));
        self
    }

    /// The rustls configuration: ring provider, TLS 1.2 and 1.3.
    pub(crate) fn build(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        let cfg = |m: String| Error::Config(format!("TLS: {m}"));
        let mut roots = rustls::RootCertStore::empty();
        match self.roots {
            Roots::Webpki => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Roots::System => {
                let found = rustls_native_certs::load_native_certs();
                for e in &found.errors {
                    tracing::warn!("TLS: loading the system's root certificates: {e}");
                }
                let (ok, _bad) = roots.add_parsable_certificates(found.certs);
                if ok == 0 && self.cas.is_empty() {
                    return Err(cfg(
                        "no usable root certificate in the system's store".into()
                    ));
                }
            }
            Roots::None => {
                if self.cas.is_empty() {
                    return Err(cfg(
                        "Roots::None needs a CA certificate (ca_file or ca_pem)".into(),
                    ));
                }
            }
        }
        for ca in &self.cas {
            let pem = ca.load("read CA file")?;
            let mut n = 0;
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| cfg(format!("CA {}: {e}", ca.name())))?;
                roots
                    .add(c)
                    .map_err(|e| cfg(format!("CA {}: {e}", ca.name())))?;
                n += 1;
            }
            if n == 0 {
                return Err(cfg(format!("CA {}: no certificate in it", ca.name())));
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| cfg(e.to_string()))?
        .with_root_certificates(roots);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => {
                let chain_pem = chain.load("read client certificate")?;
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(&chain_pem)
                        .collect::<Result<_, _>>()
                        .map_err(|e| cfg(format!("client certificate {}: {e}", chain.name())))?;
                if chain.is_empty() {
                    return Err(cfg("client certificate: no certificate in it".into()));
                }
                let key_pem = key.load("read client key")?;
                // The error names the file, never the key material.
                let key = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| cfg(format!("client key {}: {e}", key.name())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| cfg(format!("client certificate: {e}")))?
            }
        };
        Ok(Arc::new(config))
    }
}

/// The rustls error somewhere in `e`'s chain (`io::Error::source` skips the error it
/// wraps, so each io::Error is looked into).
pub(crate) fn find_tls_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if let Some(t) = x.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(io) = x.downcast_ref::<std::io::Error>() {
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(t);
            }
        }
        cur = x.source();
    }
    None
}

/// For a TLS failure a retry cannot cure (a configuration mistake), what it is about;
/// `None` when a retry may help. The sinks make the former a permanent error.
pub(crate) fn permanent_tls_failure(e: &rustls::Error) -> Option<&'static str> {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType
        | rustls::Error::PeerIncompatible(_) => Some("the server's certificate or TLS setup"),
        rustls::Error::AlertReceived(
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired
            | A::HandshakeFailure
            | A::ProtocolVersion,
        ) => Some("the server refused the handshake (client certificate?)"),
        _ => None,
    }
}
