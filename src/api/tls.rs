//! HTTPS for the API (`[api] tls_cert` + `tls_key`, rustls). One port still serves the API
//! and the HA peer link, so each connection is sorted by its first byte: a TLS handshake
//! (record type 22) goes to rustls and then to the full API; anything else is plain HTTP,
//! which gets only what never needed TLS:
//! - the peer-link upgrade (`/api/v1/ha/peer`): the link authenticates itself with
//!   `[ha] shared_secret`, and a peer mid-upgrade without TLS still links;
//! - requests from loopback: they never cross a network (the token rule trusts loopback
//!   too), so a local check script (`curl http://127.0.0.1:8067/api/v1/health`) keeps working.
//!
//! Anything else over plain HTTP gets `400` and a body that says to use https. Sorting and
//! handshakes run in their own tasks, bounded in number and time, so a client that connects
//! and says nothing holds up no one.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::ListenerExt;
use axum::Router;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// Longest a connection may take to send its first byte and finish the TLS handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// Connections being sorted or in their handshake at once; more are closed at once.
const MAX_PENDING: usize = 256;
/// The first byte of a TLS record carrying a handshake (RFC 8446, 5.1).
const TLS_HANDSHAKE: u8 = 22;

/// What is wrong with `tls_cert` / `tls_key`; each names the config key it belongs to.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("{path}: no PEM {what} in it")]
    Empty {
        key: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("{path}: broken PEM (a BEGIN line without its END?)")]
    Broken { key: &'static str, path: String },
    #[error("{key_path} does not fit the certificate in {cert_path}: {reason}")]
    Mismatch {
        key_path: String,
        cert_path: String,
        reason: String,
    },
}

impl TlsError {
    /// The config key the problem belongs to (`api.tls_cert` or `api.tls_key`).
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. }
            | TlsError::Empty { key, .. }
            | TlsError::Broken { key, .. } => key,
            TlsError::Mismatch { .. } => "api.tls_key",
        }
    }
}

fn pem_error(
    key: &'static str,
    path: &Path,
    what: &'static str,
    e: rustls::pki_types::pem::Error,
) -> TlsError {
    use rustls::pki_types::pem::Error as E;
    let path = path.display().to_string();
    match e {
        E::Io(e) => TlsError::Read {
            key,
            path,
            reason: e.to_string(),
        },
        E::NoItemsFound => TlsError::Empty { key, path, what },
        // pki-types' other PEM errors print raw bytes; the file's name says more.
        _ => TlsError::Broken { key, path },
    }
}

/// Reads the certificate chain and private key and checks that they belong together.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_error("api.tls_cert", cert, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("api.tls_cert", cert, "certificate", e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            key: "api.tls_cert",
            path: cert.display().to_string(),
            what: "certificate",
        });
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| pem_error("api.tls_key", key, "private key", e))?;
    CertifiedKey::from_der(certs, private, &provider()).map_err(|e| TlsError::Mismatch {
        key_path: key.display().to_string(),
        cert_path: cert.display().to_string(),
        reason: e.to_string(),
    })
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The certificate the API presents. A reload (SIGHUP) swaps it, so a renewed certificate
/// needs no restart, and with HA on no handoff.
#[derive(Debug)]
pub struct ApiCert(RwLock<Arc<CertifiedKey>>);

impl ApiCert {
    pub fn new(key: CertifiedKey) -> Arc<ApiCert> {
        Arc::new(ApiCert(RwLock::new(Arc::new(key))))
    }

    fn set(&self, key: CertifiedKey) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }

    /// The server side of rustls, presenting this certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        // The ring provider supports the default protocol versions: this does not fail.
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Follows config reloads: reads `tls_cert` / `tls_key` again after each one (the files
    /// may have been renewed in place). A file that no longer loads is logged and the
    /// certificate in use kept; the reload itself already refused a broken one.
    pub fn follow_reloads(
        self: Arc<Self>,
        mut config: watch::Receiver<Arc<crate::config::Config>>,
        shutdown: CancellationToken,
    ) {
        config.mark_unchanged();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = config.changed() => if r.is_err() { return },
                }
                let api = config.borrow_and_update().api.clone();
                let (Some(cert), Some(key)) = (api.tls_cert, api.tls_key) else {
                    continue;
                };
                match load(&cert, &key) {
                    Ok(k) => {
                        self.set(k);
                        tracing::info!(cert = %cert.display(), "API certificate reloaded from {}", cert.display());
                    }
                    Err(e) => {
                        tracing::error!("API certificate not reloaded, keeping the one in use: {e}")
                    }
                }
            }
        });
    }
}

impl ResolvesServerCert for ApiCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Serves `app` over HTTPS, and the plain-HTTP remainder described in the module doc, on one
/// listener until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let (tls_tx, tls_rx) = mpsc::channel(64);
    let (plain_tx, plain_rx) = mpsc::channel(64);
    let sorter = tokio::spawn(sort_connections(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        tls_tx,
        plain_tx,
        shutdown.clone(),
    ));
    let https = axum::serve(
        Sorted { rx: tls_rx, local }.tap_io(|_| {}),
        app.clone()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let plain = axum::serve(
        Sorted {
            rx: plain_rx,
            local,
        }
        .tap_io(|_| {}),
        app.layer(axum::middleware::from_fn(plain_http_gate))
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned());
    let (a, b) = tokio::join!(async move { https.await }, async move { plain.await });
    sorter.abort();
    a.and(b)
}

/// Accepts connections and hands each, once sorted (and for TLS, after the handshake), to
/// the HTTPS or the plain server.
async fn sort_connections(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tls_tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    plain_tx: mpsc::Sender<(TcpStream, SocketAddr)>,
    shutdown: CancellationToken,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    loop {
        let (stream, addr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum's own loop does.
                    tracing::warn!("API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::debug!(peer = %addr, "API connection from {addr} closed: too many handshakes in progress");
            continue;
        };
        let (acceptor, tls_tx, plain_tx) = (acceptor.clone(), tls_tx.clone(), plain_tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let sorted = tokio::time::timeout(HANDSHAKE_LIMIT, async {
                let mut first = [0u8; 1];
                let n = stream.peek(&mut first).await?;
                if n == 1 && first[0] == TLS_HANDSHAKE {
                    let tls = acceptor.accept(stream).await?;
                    Ok::<_, std::io::Error>(Some(Ok(tls)))
                } else if n == 1 {
                    Ok(Some(Err(stream)))
                } else {
                    Ok(None)
                }
            })
            .await;
            match sorted {
                Ok(Ok(Some(Ok(tls)))) => {
                    let _ = tls_tx.send((tls, addr)).await;
                }
                Ok(Ok(Some(Err(plain)))) => {
                    let _ = plain_tx.send((plain, addr)).await;
                }
                // Closed before a byte: a TCP probe (the VIP witness does this).
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(peer = %addr, "TLS handshake with {addr} failed: {e}")
                }
                Err(_) => tracing::debug!(peer = %addr, "TLS handshake with {addr} timed out"),
            }
        });
    }
}

/// A [`axum::serve::Listener`] fed with connections already sorted by [`sort_connections`].
struct Sorted<S> {
    rx: mpsc::Receiver<(S, SocketAddr)>,
    local: SocketAddr,
}

impl<S> axum::serve::Listener for Sorted<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Io = S;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (S, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The sorter stopped (shutdown): graceful shutdown ends the server, not us.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The plain-HTTP side of a TLS port: the peer link and loopback only.
async fn plain_http_gate(req: Request, next: Next) -> Response {
    let from = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if plain_http_allowed(req.uri().path(), from) {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("<host>:<port>");
    tracing::debug!(peer = ?from, path = req.uri().path(), "plain HTTP refused on the HTTPS API port");
    super::json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": format!("this port speaks HTTPS ([api] tls_cert is set): use https://{host}{}", req.uri().path())})
            .to_string(),
    )
}

/// Whether a plain-HTTP request may pass on a TLS port.
pub fn plain_http_allowed(path: &str, from: Option<std::net::IpAddr>) -> bool {
    path == crate::ha::peer::PATH || from.is_some_and(|ip| ip.is_loopback())
}

// ---------------------------------------------------------------------------------------------
// The client side: our own outbound calls (the CLI to the API, webhooks)

/// The certificates of a PEM file (a webhook's `ca_file`, the CLI's `--ca-file`); an error
/// says what is wrong with it.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        // pki-types' PEM errors print raw bytes; the file's name says more to an admin.
        .map_err(|_| {
            format!(
                "{}: broken PEM (a BEGIN line without its END?)",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// What an outbound https client trusts: the certificates of `ca_file` when set (like
/// `curl --cacert`), else the system's store. An error says what is wrong with `ca_file`.
pub fn client_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let certs = match ca_file {
        Some(path) => load_ca_file(path)?,
        None => rustls_native_certs::load_native_certs().certs,
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs);
    Ok(roots)
}

/// The connector of an outbound client: https with rustls trusting exactly `roots`, or plain
/// http; HTTP/1.1, which is what the API and webhook receivers are asked to speak.
pub fn client_connector(roots: rustls::RootCertStore) -> HttpsConnector<HttpConnector> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| {
            // The ring provider supports the default versions; this cannot happen.
            rustls::ClientConfig::builder_with_protocol_versions(rustls::DEFAULT_VERSIONS)
        })
        .with_root_certificates(roots)
        .with_no_client_auth();
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build()
}

/// A stand-in https receiver for the tests of our outbound clients (webhooks, the CLI).
#[cfg(test)]
pub(crate) mod test_server {
    use std::sync::Arc;

    /// Reads one HTTP request (head and Content-Length body) from `s`.
    pub(crate) async fn read_request<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&buf).to_string()
    }

    /// An https server on 127.0.0.1 with a fresh self-signed certificate; answers 200 with the
    /// JSON body `{}` to each TLS request it gets and reports them. Returns (address, CA PEM,
    /// requests).
    pub(crate) async fn tls_server() -> (
        std::net::SocketAddr,
        String,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        use tokio::io::AsyncWriteExt;
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    // A client that refuses our certificate ends the handshake here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let req = read_request(&mut tls).await;
                    let _ = tx.send(req);
                    let resp =
                        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (addr, ck.cert.pem(), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn plain_http_passes_only_for_the_peer_link_and_loopback() {
        let lan = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 50)));
        let lo = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(plain_http_allowed(crate::ha::peer::PATH, lan));
        assert!(plain_http_allowed("/api/v1/leases", lo));
        assert!(!plain_http_allowed("/api/v1/health", lan));
        assert!(!plain_http_allowed("/api/v1/leases", None));
    }

    fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, ck.cert.pem()).expect("write cert");
        std::fs::write(&k, ck.key_pair.serialize_pem()).expect("write key");
        (c, k)
    }

    #[test]
    fn a_matching_pair_loads_and_each_problem_names_its_key_and_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let (cert, key) = self_signed(dir.path());
        assert!(load(&cert, &key).is_ok());

        let missing = dir.path().join("nope.pem");
        let e = load(&missing, &key).expect_err("no cert file");
        assert_eq!(e.key(), "api.tls_cert");
        assert!(e.to_string().contains("nope.pem"), "{e}");

        // Key and certificate swapped: the certificate file holds no certificate.
        let e = load(&key, &cert).expect_err("swapped");
        assert_eq!(e.key(), "api.tls_cert");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");

        let e = load(&cert, &cert).expect_err("a certificate as the key");
        assert_eq!(e.key(), "api.tls_key");
        assert!(e.to_string().contains("no PEM private key"), "{e}");

        // Another pair's key does not fit this certificate.
        let other = tempfile::tempdir().expect("tmp");
        let (_, other_key) = self_signed(other.path());
        let e = load(&cert, &other_key).expect_err("foreign key");
        assert_eq!(e.key(), "api.tls_key");
        assert!(
            e.to_string().contains("does not fit the certificate"),
            "{e}"
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("empty.pem");
        std::fs::write(&p, "not a certificate\n").expect("write");
        let e = load_ca_file(&p).expect_err("no cert");
        assert!(
            e.contains("empty.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = load_ca_file(&dir.path().join("missing.pem")).expect_err("missing");
        assert!(
            e.contains("cannot read") && e.contains("missing.pem"),
            "{e}"
        );
    }
}
