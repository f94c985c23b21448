//! The admin commands' HTTP client: GETs JSON from a node's API with the bearer token, over
//! `http://` or `https://` (rustls, trusting the system's CA store or `--ca-file`). The
//! same hyper client the webhooks use; no second HTTP stack.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::api::tls;

/// Why a request gave no usable answer; each names the URL.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("{url}: {cause}")]
    Connect { url: String, cause: String },
    #[error("{url}: no answer within {limit:?}")]
    Timeout { url: String, limit: Duration },
    /// The API refused or failed; `message` is its `error` field when it sent one.
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        url: String,
        status: StatusCode,
        message: String,
    },
    #[error("{url}: unexpected answer: {cause}")]
    Body { url: String, cause: String },
    #[error("--ca-file {0}")]
    CaFile(String),
}

impl ClientError {
    /// HTTP 404: the node does not serve this endpoint (DNS or DHCP off there).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Status { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

/// One node's API.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    timeout: Duration,
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl ApiClient {
    /// `base`: `http://host:port` (a trailing `/` is fine). `ca_file`: extra trust for an
    /// `https://` API with its own certificate (like `curl --cacert`).
    pub fn new(
        base: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<ApiClient, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let ok = (base.starts_with("http://") || base.starts_with("https://"))
            && base.parse::<Uri>().is_ok_and(|u| u.host().is_some());
        if !ok {
            return Err(ClientError::BadUrl(base));
        }
        let roots = match ca_file {
            // Plain http trusts nothing: reading the system store would only cost time.
            None if !base.starts_with("https://") => rustls::RootCertStore::empty(),
            _ => tls::client_roots(ca_file).map_err(ClientError::CaFile)?,
        };
        Ok(ApiClient {
            base,
            token,
            timeout,
            http: Client::builder(TokioExecutor::new()).build(tls::client_connector(roots)),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The same client for another node (the peer), with the same token and trust.
    pub fn for_base(&self, base: &str) -> Result<ApiClient, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(ClientError::BadUrl(base));
        }
        Ok(ApiClient {
            base,
            ..self.clone()
        })
    }

    /// GET `path` (with its query) and parse the JSON body.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = hyper::Request::get(&url).header(
            hyper::header::USER_AGENT,
            concat!("athena-dhcpd/", env!("CARGO_PKG_VERSION")),
        );
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::new())
            .map_err(|_| ClientError::BadUrl(url.clone()))?;
        let call = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| ClientError::Connect {
                    url: url.clone(),
                    cause: crate::hooks::webhook::error_chain(&e),
                })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Body {
                    url: url.clone(),
                    cause: e.to_string(),
                })?
                .to_bytes();
            Ok::<_, ClientError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                limit: self.timeout,
            })??;
        if !status.is_success() {
            // The API's refusals say which token is missing: pass that on as it is.
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
            return Err(ClientError::Status {
                url,
                status,
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Body {
            url,
            cause: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_are_taken() {
        let t = Duration::from_secs(1);
        assert!(ApiClient::new("http://127.0.0.1:8067/", None, None, t).is_ok());
        for bad in ["127.0.0.1:8067", "ftp://x", "http://"] {
            let e = ApiClient::new(bad, None, None, t).err().expect(bad);
            assert!(e.to_string().contains("not an http"), "{e}");
        }
    }

    #[tokio::test]
    async fn https_trusts_the_ca_file_and_refuses_an_unknown_issuer_or_a_bad_ca_file() {
        let (addr, ca_pem, mut reqs) = tls::test_server::tls_server().await;
        let dir = tempfile::tempdir().expect("tmp");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &ca_pem).expect("write ca");
        let base = format!("https://{addr}");
        let t = Duration::from_secs(5);

        let trusted = ApiClient::new(&base, Some("tok".into()), Some(&ca), t).expect("client");
        let v: serde_json::Value = trusted.get("/api/v1/health").await.expect("over TLS");
        assert_eq!(v, serde_json::json!({}));
        let req = reqs.recv().await.expect("request over TLS");
        assert!(req.starts_with("GET /api/v1/health HTTP/1.1"), "{req}");
        assert!(req.contains("Bearer tok"), "{req}");

        // Without --ca-file the system store decides, and it does not know this issuer.
        let system = ApiClient::new(&base, None, None, t).expect("client");
        let e = system
            .get::<serde_json::Value>("/api/v1/health")
            .await
            .expect_err("an unknown issuer must be refused");
        assert!(
            e.to_string().to_ascii_lowercase().contains("certificate"),
            "{e}"
        );

        let missing = dir.path().join("missing.pem");
        let e = ApiClient::new(&base, None, Some(&missing), t)
            .err()
            .expect("a missing --ca-file is an error");
        assert!(
            e.to_string().contains("--ca-file") && e.to_string().contains("missing.pem"),
            "{e}"
        );
    }
}
