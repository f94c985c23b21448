//! The HTTP API (axum): health, HA status, metrics, the live event stream (server-sent
//! events); other modules add their routes (leases, DNS, failover, the peer-link upgrade)
//! through `extra`. JSON is compact on purpose: the
//! reference keepalived check script greps for `"status":"ok"` and `"state":"ACTIVE"`.
//! Every route, the modules' included, sits behind [`access`]: client data needs a token
//! unless the request comes from loopback.

pub mod access;
pub mod ha;
pub mod tls;

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::{EventBus, EventKind};
use crate::ha::HaStatus;
use crate::health::Health;
use crate::vip::VipBoard;

/// What the built-in endpoints read.
#[derive(Clone)]
pub struct ApiState {
    pub node: String,
    pub health: Health,
    pub ha: watch::Receiver<HaStatus>,
    pub vips: VipBoard,
    pub registry: Arc<Registry>,
    /// For `/api/v1/events`; each stream is a bus subscriber while it is open.
    pub bus: EventBus,
    /// Ends the event streams, so a watching client never holds up the daemon's exit.
    pub shutdown: CancellationToken,
    /// The live config: the API tokens a request is checked against (a reload changes them).
    pub config: watch::Receiver<Arc<Config>>,
}

/// Events a slow `/api/v1/events` client may fall behind by before it misses some (counted
/// like any other subscriber's drops).
const STREAM_QUEUE: usize = 1024;

/// The full router: built-in endpoints merged with the modules' own routes.
pub fn router(state: ApiState, extra: Router) -> Router {
    let config = state.config.clone();
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/ha/status", get(ha::status))
        .route("/metrics", get(metrics))
        .route("/api/v1/events", get(events))
        .with_state(state)
        .merge(extra)
        .layer(axum::middleware::from_fn_with_state(config, access::layer))
}

/// Serves until `shutdown` fires; over HTTPS when `tls` is given (see [`tls`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Some(tls) = tls {
        return tls::serve(listener, app, tls, shutdown).await;
    }
    // Connect info: the HA peer link logs and rate-limits by the peer's address.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

/// The health body and its HTTP status (separate from the handler so it is testable).
pub fn health_body(state: &ApiState) -> (StatusCode, String) {
    let problems = state.health.problems();
    let ha = state.ha.borrow().clone();
    let body = if problems.is_empty() {
        json!({"status": "ok", "node": state.node, "version": env!("CARGO_PKG_VERSION"), "ha_state": ha.state})
    } else {
        json!({"status": "degraded", "node": state.node, "version": env!("CARGO_PKG_VERSION"), "ha_state": ha.state, "reasons": problems})
    };
    let code = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body.to_string())
}

fn json_response(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn health(State(state): State<ApiState>) -> Response {
    let (code, body) = health_body(&state);
    json_response(code, body)
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &state.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    /// Comma-separated patterns as in hook `events`: `ha.failover`, `vip.*`, `*` (default).
    events: Option<String>,
}

/// Parses the `events` filter; an error names the pattern and lists the event types.
pub fn event_filter(spec: Option<&str>) -> Result<Vec<String>, String> {
    let pats: Vec<String> = spec
        .unwrap_or("*")
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if pats.is_empty() {
        return Err("empty events filter".into());
    }
    for p in &pats {
        if !EventKind::pattern_is_known(p) {
            return Err(format!(
                "{p:?} matches no event; events: {}",
                EventKind::names()
            ));
        }
    }
    Ok(pats)
}

/// `GET /api/v1/events[?events=ha.*,vip.*]`: the events as they are published, one SSE
/// message each (`event:` the type, `data:` the same JSON a script gets on stdin). Watch a
/// failover live with `curl -N http://node:8067/api/v1/events?events=ha.*,vip.*`.
async fn events(State(state): State<ApiState>, Query(q): Query<EventsQuery>) -> Response {
    let pats = match event_filter(q.events.as_deref()) {
        Ok(p) => p,
        Err(e) => return json_response(StatusCode::BAD_REQUEST, json!({"error": e}).to_string()),
    };
    let sub = state.bus.subscribe("api-events", STREAM_QUEUE);
    let stream = futures::stream::unfold(
        (sub.rx, state.shutdown.clone(), pats),
        |(mut rx, shutdown, pats)| async move {
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    ev = rx.recv() => ev?,
                };
                if pats.iter().any(|p| ev.kind.matches(p)) {
                    let msg = SseEvent::default()
                        .event(ev.kind.as_str())
                        .data(ev.to_json());
                    return Some((Ok::<_, Infallible>(msg), (rx, shutdown, pats)));
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Checks `Authorization: Bearer <token>` for mutating endpoints. With no token configured
/// they are refused outright: an open write API on the network is not a safe default.
#[allow(clippy::result_large_err)]
pub fn authorize(headers: &HeaderMap, token: Option<&str>) -> Result<(), Response> {
    let Some(token) = token else {
        return Err(json_response(
            StatusCode::FORBIDDEN,
            json!({"error": "mutating endpoints are disabled: set [api] auth_token"}).to_string(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or wrong bearer token"}).to_string(),
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::HaState;
    use crate::vip::VipStatus;

    fn state(ha: HaStatus, health: Health) -> ApiState {
        let (_tx, rx) = watch::channel(ha);
        let vips: VipBoard = Default::default();
        vips.write().unwrap().push(VipStatus {
            name: "dns-vip".into(),
            address: "10.0.0.3/24".into(),
            interface: "eth0".into(),
            held: true,
            since: Some(1),
            last_error: None,
        });
        ApiState {
            node: "node-a".into(),
            health,
            ha: rx,
            vips,
            registry: Arc::new(Registry::default()),
            bus: EventBus::new(),
            shutdown: CancellationToken::new(),
            config: watch::channel(Arc::new(Config::default())).1,
        }
    }

    #[test]
    fn the_event_filter_takes_hook_patterns_and_names_a_bad_one() {
        assert_eq!(event_filter(None).unwrap(), vec!["*"]);
        assert_eq!(
            event_filter(Some("ha.*, vip.claimed")).unwrap(),
            vec!["ha.*", "vip.claimed"]
        );
        let e = event_filter(Some("ha.*,vip.claim")).unwrap_err();
        assert!(e.contains("\"vip.claim\" matches no event"), "{e}");
        assert!(event_filter(Some(",")).is_err());
    }

    #[test]
    fn health_is_compact_ok_json_the_reference_script_greps() {
        let s = state(HaStatus::standalone("node-a", "primary"), Health::new());
        let (code, body) = health_body(&s);
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("\"status\":\"ok\""), "{body}");
        assert_eq!(body.matches("\"status\"").count(), 1, "{body}");
    }

    #[test]
    fn health_is_503_degraded_with_reasons() {
        let h = Health::new();
        h.set_problem("vip dns-vip", Some("interface \"eth9\" not found".into()));
        let s = state(HaStatus::standalone("node-a", "primary"), h);
        let (code, body) = health_body(&s);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"status\":\"degraded\""), "{body}");
        assert!(body.contains("interface \\\"eth9\\\" not found"), "{body}");
    }

    #[test]
    fn ha_status_has_exactly_one_state_key_and_the_vips() {
        let mut ha = HaStatus::standalone("node-a", "primary");
        ha.enabled = true;
        ha.peer_state = Some(HaState::Active);
        let s = state(ha, Health::new());
        let body = ha::status_body(&s);
        assert!(
            body.starts_with(
                "{\"enabled\":true,\"node\":\"node-a\",\"role\":\"primary\",\"state\":\"ACTIVE\""
            ),
            "{body}"
        );
        assert_eq!(body.matches("\"state\":").count(), 1, "{body}");
        assert!(body.contains("\"peer_connected\":false"), "{body}");
        assert!(
            body.contains("\"vips\":[{\"name\":\"dns-vip\",\"address\":\"10.0.0.3/24\""),
            "{body}"
        );
        assert!(!body.contains(": "), "not compact: {body}");
    }

    #[test]
    fn standalone_status_says_ha_is_off() {
        let s = state(HaStatus::standalone("node-a", "primary"), Health::new());
        let body = ha::status_body(&s);
        assert!(body.contains("\"enabled\":false"), "{body}");
    }

    #[test]
    fn mutations_need_the_right_token() {
        let mut h = HeaderMap::new();
        assert_eq!(
            authorize(&h, None).unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            authorize(&h, Some("sixteen-byte-tok"))
                .unwrap_err()
                .status(),
            StatusCode::UNAUTHORIZED
        );
        h.insert(
            header::AUTHORIZATION,
            "Bearer wrong-token-xxxxx".parse().unwrap(),
        );
        assert_eq!(
            authorize(&h, Some("sixteen-byte-tok"))
                .unwrap_err()
                .status(),
            StatusCode::UNAUTHORIZED
        );
        h.insert(
            header::AUTHORIZATION,
            "Bearer sixteen-byte-tok".parse().unwrap(),
        );
        assert!(authorize(&h, Some("sixteen-byte-tok")).is_ok());
    }
}
