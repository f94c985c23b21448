//! Who may read what on the API. With HA on the API listens on every address (the peer link
//! shares its port), so a client on the LAN reaches it: anything that exposes client data
//! (leases, the event stream, DNS statistics, metrics) needs a token unless the request comes
//! from loopback. `/api/v1/health` and `/api/v1/ha/status` stay open (the reference's
//! keepalived check script calls them without one) and carry no client data; the peer-link
//! upgrade authenticates itself. Two tokens: `read_token` reads, `auth_token` (admin) reads
//! and changes state: anything but a GET needs it, from anywhere, loopback included.
//!
//! Pure decisions ([`required`], [`check`]) apart from the axum layer, so each endpoint and
//! origin is tested without sockets.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;
use tokio::sync::watch;

use crate::config::{ApiConfig, Config};

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone: health, HA status, the peer link's own handshake.
    Open,
    /// Loopback, or `read_token` / `auth_token`.
    Read,
    /// `auth_token`, from anywhere (loopback too): it changes state.
    Admin,
}

/// A request that is not a GET changes state and needs [`Need::Admin`]; of the GETs, the
/// paths below are open and every other needs [`Need::Read`], so an endpoint added later is
/// protected by default.
pub fn required(method: &Method, path: &str, api: &ApiConfig) -> Need {
    if method != Method::GET && method != Method::HEAD {
        return Need::Admin;
    }
    match path {
        "/api/v1/health" | "/api/v1/ha/status" | crate::ha::peer::PATH => Need::Open,
        "/metrics" if api.public_metrics => Need::Open,
        _ => Need::Read,
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("client data is served only to loopback: set [api] read_token (or auth_token) to read it from {0}")]
    NoTokenConfigured(IpAddr),
    #[error("this endpoint needs a token from {0}: send 'Authorization: Bearer <[api] read_token or auth_token>'")]
    Missing(IpAddr),
    #[error("wrong bearer token (neither [api] read_token nor auth_token)")]
    Wrong,
    #[error("mutating endpoints are disabled: set [api] auth_token")]
    AdminDisabled,
    #[error("this endpoint changes state: send 'Authorization: Bearer <[api] auth_token>'")]
    AdminMissing,
    #[error("[api] read_token only reads; this endpoint needs auth_token")]
    ReadOnly,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::NoTokenConfigured(_) | Refusal::AdminDisabled | Refusal::ReadOnly => {
                StatusCode::FORBIDDEN
            }
            Refusal::Missing(_) | Refusal::Wrong | Refusal::AdminMissing => {
                StatusCode::UNAUTHORIZED
            }
        }
    }
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn same(given: &str, token: Option<&str>) -> bool {
    token.is_some_and(|t| super::constant_time_eq(given.as_bytes(), t.as_bytes()))
}

/// Decides one request: `peer` is `None` when the connection's address is unknown, which
/// counts as remote.
pub fn check(
    need: Need,
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    api: &ApiConfig,
) -> Result<(), Refusal> {
    let admin = api.auth_token.as_deref();
    let read = api.read_token.as_deref();
    match need {
        Need::Open => Ok(()),
        Need::Admin => {
            if admin.is_none() {
                return Err(Refusal::AdminDisabled);
            }
            let given = bearer(headers).ok_or(Refusal::AdminMissing)?;
            if same(given, admin) {
                Ok(())
            } else if same(given, read) {
                Err(Refusal::ReadOnly)
            } else {
                Err(Refusal::AdminMissing)
            }
        }
        Need::Read if peer.is_some_and(|ip| ip.is_loopback()) => Ok(()),
        Need::Read => {
            let from = peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
            if admin.is_none() && read.is_none() {
                return Err(Refusal::NoTokenConfigured(from));
            }
            let given = bearer(headers).ok_or(Refusal::Missing(from))?;
            // Both compared, each in constant time, whichever matches.
            if same(given, read) | same(given, admin) {
                Ok(())
            } else {
                Err(Refusal::Wrong)
            }
        }
    }
}

/// The axum layer: reads the tokens from the live config (a reload changes them).
pub async fn layer(
    State(config): State<watch::Receiver<Arc<Config>>>,
    req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let refused = {
        let cfg = config.borrow();
        let need = required(req.method(), req.uri().path(), &cfg.api);
        check(need, peer, req.headers(), &cfg.api).err()
    };
    match refused {
        None => next.run(req).await,
        Some(r) => {
            tracing::debug!(peer = ?peer, path = req.uri().path(), "API request refused: {r}");
            super::json_response(r.status(), json!({"error": r.to_string()}).to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(read: Option<&str>, admin: Option<&str>, public_metrics: bool) -> ApiConfig {
        ApiConfig {
            read_token: read.map(str::to_string),
            auth_token: admin.map(str::to_string),
            public_metrics,
            ..ApiConfig::default()
        }
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        h
    }

    const LAN: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 50)));
    const LO: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    const LO6: Option<IpAddr> = Some(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST));

    #[test]
    fn client_data_endpoints_need_a_token_and_health_and_ha_status_do_not() {
        let a = api(Some("r"), Some("w"), false);
        let get = Method::GET;
        for p in [
            "/api/v1/leases",
            "/api/v1/leases/10.0.0.5",
            "/api/v1/events",
            "/api/v1/dns/stats",
            "/api/v1/conflicts",
            "/metrics",
            "/anything/new",
        ] {
            assert_eq!(required(&get, p, &a), Need::Read, "{p}");
        }
        for p in ["/api/v1/health", "/api/v1/ha/status", crate::ha::peer::PATH] {
            assert_eq!(required(&get, p, &a), Need::Open, "{p}");
        }
        assert_eq!(
            required(&get, "/metrics", &api(None, None, true)),
            Need::Open
        );
        for p in [
            "/api/v1/dns/cache/flush",
            "/api/v1/ha/failover",
            "/api/v1/health",
        ] {
            assert_eq!(required(&Method::POST, p, &a), Need::Admin, "{p}");
        }
        assert_eq!(
            required(&Method::DELETE, "/api/v1/conflicts/10.0.0.9", &a),
            Need::Admin
        );
    }

    #[test]
    fn every_origin_and_token_gets_the_answer_it_should() {
        let both = api(Some("read-tok"), Some("admin-tok"), false);
        let none = HeaderMap::new();
        // Loopback reads without a token, v4 and v6.
        assert_eq!(check(Need::Read, LO, &none, &both), Ok(()));
        assert_eq!(check(Need::Read, LO6, &none, &both), Ok(()));
        // From the LAN: either token reads, none or a wrong one is 401.
        assert_eq!(check(Need::Read, LAN, &bearer("read-tok"), &both), Ok(()));
        assert_eq!(check(Need::Read, LAN, &bearer("admin-tok"), &both), Ok(()));
        assert_eq!(
            check(Need::Read, LAN, &none, &both),
            Err(Refusal::Missing(LAN.unwrap()))
        );
        assert_eq!(
            check(Need::Read, LAN, &bearer("read-to"), &both),
            Err(Refusal::Wrong)
        );
        // An unknown origin counts as remote.
        assert!(check(Need::Read, None, &none, &both).is_err());
        // No token configured: 403 naming the keys to set.
        let r = check(Need::Read, LAN, &bearer("x"), &api(None, None, false)).unwrap_err();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.to_string().contains("read_token"), "{r}");
        // Open paths need nothing from anywhere.
        assert_eq!(
            check(Need::Open, LAN, &none, &api(None, None, false)),
            Ok(())
        );
        // Changing state needs the admin token, from loopback too; the read token is 403.
        assert_eq!(check(Need::Admin, LO, &bearer("admin-tok"), &both), Ok(()));
        assert_eq!(
            check(Need::Admin, LO, &none, &both),
            Err(Refusal::AdminMissing)
        );
        assert_eq!(
            check(Need::Admin, LAN, &bearer("read-tok"), &both),
            Err(Refusal::ReadOnly)
        );
        assert_eq!(Refusal::ReadOnly.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            check(
                Need::Admin,
                LAN,
                &bearer("x"),
                &api(Some("read-tok"), None, false)
            ),
            Err(Refusal::AdminDisabled)
        );
        // A read token alone is enough for reading.
        assert_eq!(
            check(Need::Read, LAN, &bearer("r"), &api(Some("r"), None, false)),
            Ok(())
        );
    }
}
