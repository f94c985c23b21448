//! `[[hooks.webhook]]`: POSTs the event JSON to `url` (`http://` or `https://`; TLS with
//! rustls, trusting the system's CA certificates or the hook's `ca_file`), signed with
//! `X-Athena-Signature: sha256=<hex HMAC-SHA256 of the body>` when a `secret` is set. Each attempt has `timeout`; failures (connection errors, non-2xx)
//! are retried `retries` times with exponential backoff (0.5 s, 1 s, 2 s, ... up to 30 s).
//! One event at a time per hook, so deliveries arrive in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::HookMetrics;
use crate::api::tls;
use crate::config::WebhookConfig;
use crate::events::Event;

/// `sha256=<hex>` of the body under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// hyper's client error says only "client error (Connect)"; the cause (refused, TLS
/// certificate unknown, ...) is further down the chain and is what an admin needs.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// Delay before retry number `attempt` (1-based).
pub fn retry_delay(attempt: u32) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
    Duration::from_millis(ms).min(Duration::from_secs(30))
}

/// The roots an https webhook trusts: its `ca_file` when set (like `curl --cacert`), else
/// the system store. Problems are logged once here, and each failed delivery names them.
fn trust_roots(cfg: &WebhookConfig) -> rustls::RootCertStore {
    let roots = tls::client_roots(cfg.ca_file.as_deref()).unwrap_or_else(|e| {
        tracing::error!(hook = %cfg.name, "webhook {}: ca_file {e}", cfg.name);
        rustls::RootCertStore::empty()
    });
    if roots.is_empty() && cfg.url.starts_with("https://") {
        tracing::error!(
            hook = %cfg.name,
            "webhook {}: no trusted CA certificate found ({}); https deliveries will fail",
            cfg.name,
            match &cfg.ca_file {
                Some(p) => format!("ca_file {}", p.display()),
                None => "install ca-certificates or set ca_file".to_string(),
            }
        );
    }
    roots
}

fn https_client(cfg: &WebhookConfig) -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(tls::client_connector(trust_roots(cfg)))
}

pub struct Webhook {
    cfg: WebhookConfig,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    metrics: HookMetrics,
    shutdown: CancellationToken,
}

impl Webhook {
    pub fn new(cfg: &WebhookConfig, metrics: HookMetrics, shutdown: CancellationToken) -> Self {
        Webhook {
            cfg: cfg.clone(),
            client: https_client(cfg),
            metrics,
            shutdown,
        }
    }

    async fn attempt(&self, ev: &Event, body: &Bytes) -> Result<u16, String> {
        let mut req = hyper::Request::post(&self.cfg.url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("athena-dhcpd/", env!("CARGO_PKG_VERSION")),
            )
            .header("X-Athena-Event", ev.kind.as_str());
        if let Some(secret) = &self.cfg.secret {
            req = req.header("X-Athena-Signature", signature(secret, body));
        }
        let req = req
            .body(Full::new(body.clone()))
            .map_err(|e| format!("building the request: {e}"))?;
        let send = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = resp.status();
            // Read (and drop) the body so the connection can be reused.
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(status.as_u16())
            } else {
                Err(format!("HTTP {status}"))
            }
        };
        match tokio::time::timeout(self.cfg.timeout.get(), send).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {}", self.cfg.timeout)),
        }
    }

    /// Delivers one event, retrying; logs the final result.
    pub async fn deliver(&self, ev: &Event) -> bool {
        let body = Bytes::from(ev.to_json());
        let started = Instant::now();
        let name = &self.cfg.name;
        let mut attempt = 0u32;
        loop {
            match self.attempt(ev, &body).await {
                Ok(code) => {
                    let secs = started.elapsed().as_secs_f64();
                    self.metrics.record_run(name, "ok", secs);
                    tracing::info!(hook = %name, event = %ev.kind, status = code, attempts = attempt + 1, "webhook {name} ({}) delivered: HTTP {code} in {:.1} ms", ev.kind, secs * 1000.0);
                    return true;
                }
                Err(e) if attempt < self.cfg.retries => {
                    attempt += 1;
                    let d = retry_delay(attempt);
                    tracing::debug!(hook = %name, "webhook {name} attempt {attempt} failed: {e}; retrying in {d:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = self.shutdown.cancelled() => {
                            self.metrics.record_run(name, "failed", started.elapsed().as_secs_f64());
                            return false;
                        }
                    }
                }
                Err(e) => {
                    self.metrics
                        .record_run(name, "failed", started.elapsed().as_secs_f64());
                    tracing::warn!(hook = %name, event = %ev.kind, attempts = attempt + 1, "webhook {name} ({}) to {} failed after {} attempts: {e}", ev.kind, self.cfg.url, attempt + 1);
                    return false;
                }
            }
        }
    }
}

/// The hook's task: one delivery at a time, in order.
pub async fn serve(hook: Webhook, mut rx: mpsc::Receiver<(Arc<Event>, Instant)>) {
    loop {
        let next = tokio::select! {
            biased;
            _ = hook.shutdown.cancelled() => return,
            e = rx.recv() => e,
        };
        let Some((ev, _)) = next else { return };
        hook.deliver(&ev).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tls::test_server::{read_request, tls_server};

    #[test]
    fn signature_is_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap() {
        assert_eq!(retry_delay(1), Duration::from_millis(500));
        assert_eq!(retry_delay(2), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(2));
        assert_eq!(retry_delay(40), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn posts_signed_json_and_retries_after_a_server_error() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for status in ["500 Internal Server Error", "200 OK"] {
                let (mut s, _) = listener.accept().await.expect("accept");
                seen.push(read_request(&mut s).await);
                let resp =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                s.write_all(resp.as_bytes()).await.expect("write");
            }
            seen
        });
        let cfg = WebhookConfig {
            name: "w".into(),
            events: vec!["*".into()],
            url: format!("http://{addr}/hook"),
            secret: Some("s3cret".into()),
            ca_file: None,
            timeout: crate::config::Dur(Duration::from_secs(5)),
            retries: 2,
        };
        let hook = Webhook::new(&cfg, HookMetrics::default(), CancellationToken::new());
        let ev = Event::new(
            crate::events::EventKind::HaFailover,
            "n",
            crate::events::EventData::Ha(Default::default()),
        );
        assert!(hook.deliver(&ev).await);
        let seen = server.await.expect("server");
        assert_eq!(seen.len(), 2, "one failure, one retry");
        let body = ev.to_json();
        for req in &seen {
            assert!(req.starts_with("POST /hook HTTP/1.1"), "{req}");
            let lower = req.to_ascii_lowercase();
            assert!(
                lower.contains(&format!(
                    "x-athena-signature: {}",
                    signature("s3cret", body.as_bytes())
                )),
                "{req}"
            );
            assert!(req.ends_with(&body), "{req}");
        }
    }

    fn https_hook(addr: std::net::SocketAddr, ca_file: Option<std::path::PathBuf>) -> Webhook {
        let cfg = WebhookConfig {
            name: "tls".into(),
            events: vec!["*".into()],
            url: format!("https://{addr}/hook"),
            secret: Some("s3cret".into()),
            ca_file,
            timeout: crate::config::Dur(Duration::from_secs(5)),
            retries: 0,
        };
        Webhook::new(&cfg, HookMetrics::default(), CancellationToken::new())
    }

    #[tokio::test]
    async fn https_delivers_to_a_server_signed_by_the_ca_file_and_refuses_an_unknown_one() {
        let (addr, ca_pem, mut reqs) = tls_server().await;
        let dir = tempfile::tempdir().expect("tmp");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &ca_pem).expect("write ca");
        assert_eq!(tls::load_ca_file(&ca).expect("parses").len(), 1);
        let ev = Event::new(
            crate::events::EventKind::VipClaimed,
            "n",
            crate::events::EventData::Vip(Default::default()),
        );

        // Trusting the test CA: delivered over TLS, signed.
        let hook = https_hook(addr, Some(ca.clone()));
        assert!(hook.deliver(&ev).await, "delivery with the CA trusted");
        let req = reqs.recv().await.expect("request over TLS");
        assert!(req.starts_with("POST /hook HTTP/1.1"), "{req}");
        assert!(req.ends_with(&ev.to_json()), "{req}");

        // The system store does not know a self-signed certificate: the attempt fails and
        // the error names the certificate problem.
        let hook = https_hook(addr, None);
        let err = hook
            .attempt(&ev, &Bytes::from(ev.to_json()))
            .await
            .expect_err("an unknown issuer must be refused");
        assert!(err.to_ascii_lowercase().contains("certificate"), "{err}");
        assert!(
            reqs.try_recv().is_err(),
            "nothing was sent to the untrusted server"
        );
    }
}
