//! `GET /api/v1/conflicts` (the addresses held back as in use, read from the lease index on
//! either node) and `DELETE /api/v1/conflicts/{ip}` (an admin says the address is free
//! again; served by the active node's DHCP server, which owns the allocator and replicates
//! the change like a lease).

use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::lease::{Lease, LeaseState, LeaseStore};

/// One held address as the API shows it.
#[derive(Debug, Serialize, PartialEq)]
pub struct ConflictView {
    pub ip: Ipv4Addr,
    /// The MAC that answered; `null` for an ICMP answer (it came through a router).
    pub mac: Option<String>,
    pub subnet: String,
    /// Unix seconds.
    pub first_seen: u64,
    /// Unix milliseconds.
    pub last_seen_ms: u64,
    pub count: u32,
    /// Unix seconds when the address may be offered again.
    pub held_until: u64,
}

impl ConflictView {
    /// The view of a live conflict record, None for any other lease.
    pub fn of(l: &Lease, now_s: u64) -> Option<ConflictView> {
        let LeaseState::Conflict { seen } = l.state else {
            return None;
        };
        (l.expiry > now_s).then(|| ConflictView {
            ip: l.ip,
            mac: (l.mac != [0; 6]).then(|| l.mac_string()),
            subnet: l.subnet.to_string(),
            first_seen: l.start,
            last_seen_ms: l.updated_ms,
            count: seen,
            held_until: l.expiry,
        })
    }
}

/// An admin's "this address is free again", for the DHCP server.
pub struct ClearRequest {
    pub ip: Ipv4Addr,
    pub done: oneshot::Sender<Result<(), ClearError>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClearError {
    #[error("this node is not serving DHCP; clear conflicts on the active node")]
    NotServing,
    #[error("no conflict is held for {0}")]
    NotFound(Ipv4Addr),
    #[error("lease store: {0}")]
    Store(String),
}

#[derive(Clone)]
struct ConflictApi {
    store: Arc<LeaseStore>,
    clear: mpsc::Sender<ClearRequest>,
}

fn json(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error(code: StatusCode, msg: String) -> Response {
    json(code, serde_json::json!({ "error": msg }).to_string())
}

async fn list(State(api): State<ConflictApi>) -> Response {
    let now_s = crate::events::now_ms() / 1000;
    let mut all: Vec<ConflictView> = api
        .store
        .index()
        .iter()
        .filter_map(|l| ConflictView::of(l, now_s))
        .collect();
    all.sort_by_key(|c| u32::from(c.ip));
    json(
        StatusCode::OK,
        serde_json::json!({ "total": all.len(), "conflicts": all }).to_string(),
    )
}

async fn clear(State(api): State<ConflictApi>, Path(ip): Path<String>) -> Response {
    let Ok(ip) = ip.parse::<Ipv4Addr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{ip:?} is not an IPv4 address"),
        );
    };
    let (done, rx) = oneshot::channel();
    if api.clear.send(ClearRequest { ip, done }).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the DHCP server is not running".into(),
        );
    }
    match rx.await {
        Ok(Ok(())) => json(
            StatusCode::OK,
            serde_json::json!({ "cleared": ip }).to_string(),
        ),
        Ok(Err(e @ ClearError::NotFound(_))) => error(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e @ ClearError::NotServing)) => error(StatusCode::CONFLICT, e.to_string()),
        Ok(Err(e @ ClearError::Store(_))) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the DHCP server stopped".into(),
        ),
    }
}

/// The conflict routes, to merge into the API router.
pub fn router(store: Arc<LeaseStore>, clear_tx: mpsc::Sender<ClearRequest>) -> Router {
    Router::new()
        .route("/api/v1/conflicts", get(list))
        .route("/api/v1/conflicts/{ip}", axum::routing::delete(clear))
        .with_state(ConflictApi {
            store,
            clear: clear_tx,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_live_conflicts_are_shown_with_their_count() {
        let mut l = Lease {
            ip: Ipv4Addr::new(10, 0, 0, 120),
            mac: [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff],
            client_id: None,
            hostname: None,
            subnet: "10.0.0.0/24".into(),
            state: LeaseState::Conflict { seen: 2 },
            start: 100,
            expiry: 3700,
            updated_ms: 200_000,
            relay_info: None,
            classes: Vec::new(),
        };
        let v = ConflictView::of(&l, 150).expect("live");
        assert_eq!(v.mac.as_deref(), Some("aa:bb:cc:dd:ee:ff"));
        assert_eq!((v.first_seen, v.count, v.held_until), (100, 2, 3700));
        assert_eq!(ConflictView::of(&l, 3700), None, "hold over");
        l.state = LeaseState::Declined;
        assert_eq!(ConflictView::of(&l, 150), None, "not a conflict");
    }
}
