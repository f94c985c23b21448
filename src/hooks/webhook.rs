//! `[[hooks.webhook]]`: POSTs the event JSON to `url` (plain http; https is refused when the
//! config is loaded), signed with `X-Athena-Signature: sha256=<hex HMAC-SHA256 of the body>`
//! when a `secret` is set. Each attempt has `timeout`; failures (connection errors, non-2xx)
//! are retried `retries` times with exponential backoff (0.5 s, 1 s, 2 s, ... up to 30 s).
//! One event at a time per hook, so deliveries arrive in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::HookMetrics;
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

/// Delay before retry number `attempt` (1-based).
pub fn retry_delay(attempt: u32) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
    Duration::from_millis(ms).min(Duration::from_secs(30))
}

pub struct Webhook {
    cfg: WebhookConfig,
    client: Client<HttpConnector, Full<Bytes>>,
    metrics: HookMetrics,
    shutdown: CancellationToken,
}

impl Webhook {
    pub fn new(cfg: &WebhookConfig, metrics: HookMetrics, shutdown: CancellationToken) -> Self {
        Webhook {
            cfg: cfg.clone(),
            client: Client::builder(TokioExecutor::new()).build_http(),
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
            .header("X-Athena-Event", ev.kind);
        if let Some(secret) = &self.cfg.secret {
            req = req.header("X-Athena-Signature", signature(secret, body));
        }
        let req = req
            .body(Full::new(body.clone()))
            .map_err(|e| format!("building the request: {e}"))?;
        let send = async {
            let resp = self.client.request(req).await.map_err(|e| format!("{e}"))?;
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
                    tracing::info!(hook = %name, event = ev.kind, status = code, attempts = attempt + 1, "webhook {name} ({}) delivered: HTTP {code} in {:.1} ms", ev.kind, secs * 1000.0);
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
                    tracing::warn!(hook = %name, event = ev.kind, attempts = attempt + 1, "webhook {name} ({}) to {} failed after {} attempts: {e}", ev.kind, self.cfg.url, attempt + 1);
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
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for status in ["500 Internal Server Error", "200 OK"] {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read until the whole body (Content-Length) is in.
                loop {
                    let n = s.read(&mut chunk).await.expect("read");
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
                seen.push(String::from_utf8_lossy(&buf).to_string());
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
            timeout: crate::config::Dur(Duration::from_secs(5)),
            retries: 2,
        };
        let hook = Webhook::new(&cfg, HookMetrics::default(), CancellationToken::new());
        let ev = Event::new(
            "ha.failover",
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
}
