//! The HA routes: `GET /api/v1/ha/status`, `POST /api/v1/ha/failover`, `GET /api/v1/ha/config`
//! (do both nodes serve one config?), and the peer link's
//! HTTP upgrade (`GET /ha/peer`, `Upgrade: athena-ha/2`), which hands the upgraded connection
//! to the link's accept side in `ha::link` (a peer asking for another version gets 426 and a
//! reason phrase its log shows). Only HTTP lives here; what a failover or a link
//! means is decided in `ha::node` and `ha::machine`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::{json_response, ApiState};
use crate::ha::node::HaHandle;
use crate::ha::peer;

/// The peer-link upgrade route and `POST /api/v1/ha/failover` of a node running HA.
pub fn routes(h: HaHandle) -> Router {
    Router::new()
        .route(peer::PATH, get(peer_upgrade))
        .route("/api/v1/ha/failover", post(api_failover))
        .route("/api/v1/ha/config", get(config))
        .with_state(h)
}

/// The HA status body with the live VIP list.
pub fn status_body(state: &ApiState) -> String {
    let mut st = state.ha.borrow().clone();
    st.vips = state.vips.read().unwrap_or_else(|e| e.into_inner()).clone();
    serde_json::to_string(&st).unwrap_or_else(|_| "{}".into())
}

/// `GET /api/v1/ha/status` (standalone too: it then says HA is off).
pub(super) async fn status(State(state): State<ApiState>) -> Response {
    json_response(StatusCode::OK, status_body(&state))
}

/// `GET /api/v1/ha/config` (read token off loopback: reservations name clients): this node's
/// shared config and digest, the peer's digest, and the differing keys with both values.
async fn config(State(h): State<HaHandle>) -> Response {
    let view = h.config.borrow().clone();
    json_response(
        StatusCode::OK,
        serde_json::to_string(&view).unwrap_or_else(|_| "{}".into()),
    )
}

async fn peer_upgrade(State(h): State<HaHandle>, mut req: Request) -> Response {
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let wants = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .and_then(peer::upgrade_version);
    if wants != Some(peer::VERSION) {
        let mut refusal = (
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, peer::UPGRADE)],
            format!("the HA peer link needs `Upgrade: {}`\n", peer::UPGRADE),
        )
            .into_response();
        match wants {
            // A node of another version: its log shows the status line of the refusal.
            Some(v) => {
                h.refuse_version(addr, v);
                if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(peer::refusal_reason(v)) {
                    refusal.extensions_mut().insert(reason);
                }
            }
            None => h.metrics().link_error("upgrade"),
        }
        return refusal;
    }
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on.await {
            Ok(up) => h.accept(hyper_util::rt::TokioIo::new(up), addr).await,
            Err(e) => tracing::debug!(peer = %addr, "peer link upgrade from {addr} failed: {e}"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "upgrade"),
            (header::UPGRADE, peer::UPGRADE),
        ],
    )
        .into_response()
}

async fn api_failover(State(h): State<HaHandle>, headers: HeaderMap) -> Response {
    if let Err(r) = super::authorize(&headers, h.api_token()) {
        return r;
    }
    let body = |ok: bool, msg: String| serde_json::json!({"ok": ok, "message": msg}).to_string();
    match h.failover().await {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body(true, "handed off to the peer".into()),
        )
            .into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            [(header::CONTENT_TYPE, "application/json")],
            body(false, e),
        )
            .into_response(),
    }
}
