//! `GET /api/v1/leases` (filters `mac`, `ip`, `hostname`, `subnet`, `state`; paged with
//! `page` from 1 and `per_page` up to 1000, sorted by address) and `GET /api/v1/leases/{ip}`,
//! read from the in-memory index, which is what the DHCP server answers from; and
//! `GET /api/v1/pools`, each pool's addresses by state as the DHCP housekeeping last counted
//! them (see [`super::pools`]).

use std::borrow::Cow;
use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use super::pools::PoolBoard;
use crate::lease::{hex_colon, Lease, LeaseState, LeaseStore};

/// The filters and page of `GET /api/v1/leases` (also what `athena-dhcpd leases` sends).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct LeaseQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_page: Option<usize>,
}

/// A lease as the API shows it: MAC and client-id as text, state in lower case.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct LeaseView {
    pub ip: Ipv4Addr,
    pub mac: String,
    pub client_id: Option<String>,
    pub hostname: Option<String>,
    pub subnet: String,
    pub state: Cow<'static, str>,
    pub start: u64,
    pub expiry: u64,
    pub updated_ms: u64,
    pub relay_info: Option<String>,
    /// The client classes the lease's request matched.
    pub classes: Vec<String>,
}

fn state_name(s: LeaseState) -> &'static str {
    match s {
        LeaseState::Active => "active",
        LeaseState::Released => "released",
        LeaseState::Expired => "expired",
        LeaseState::Declined => "declined",
        LeaseState::Conflict { .. } => "conflict",
    }
}

impl From<&Lease> for LeaseView {
    fn from(l: &Lease) -> Self {
        LeaseView {
            ip: l.ip,
            mac: l.mac_string(),
            client_id: l.client_id.as_deref().map(hex_colon),
            hostname: l.hostname.clone(),
            subnet: l.subnet.to_string(),
            state: Cow::Borrowed(state_name(l.state)),
            start: l.start,
            expiry: l.expiry,
            updated_ms: l.updated_ms,
            relay_info: l.relay_info.as_deref().map(hex_colon),
            classes: l.classes.clone(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LeasePage {
    pub total: usize,
    pub page: usize,
    pub per_page: usize,
    pub leases: Vec<LeaseView>,
}

/// The filtered, sorted page (pure: testable without HTTP).
pub fn list(leases: impl Iterator<Item = Lease>, q: &LeaseQuery) -> LeasePage {
    let mac = q
        .mac
        .as_deref()
        .map(|m| m.to_ascii_lowercase().replace('-', ":"));
    let mut hits: Vec<Lease> = leases
        .filter(|l| mac.as_deref().is_none_or(|m| l.mac_string() == m))
        .filter(|l| q.ip.as_deref().is_none_or(|ip| l.ip.to_string() == ip))
        .filter(|l| {
            q.hostname.as_deref().is_none_or(|h| {
                l.hostname
                    .as_deref()
                    .is_some_and(|x| x.eq_ignore_ascii_case(h))
            })
        })
        .filter(|l| q.subnet.as_deref().is_none_or(|s| *l.subnet == *s))
        .filter(|l| {
            q.state
                .as_deref()
                .is_none_or(|s| state_name(l.state).eq_ignore_ascii_case(s))
        })
        .collect();
    hits.sort_by_key(|l| u32::from(l.ip));
    let per_page = q.per_page.unwrap_or(100).clamp(1, 1000);
    let page = q.page.unwrap_or(1).max(1);
    let total = hits.len();
    let leases = hits
        .iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .map(LeaseView::from)
        .collect();
    LeasePage {
        total,
        page,
        per_page,
        leases,
    }
}

fn json(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn leases(State(store): State<Arc<LeaseStore>>, Query(q): Query<LeaseQuery>) -> Response {
    let all: Vec<Lease> = store.index().iter().cloned().collect();
    let page = list(all.into_iter(), &q);
    json(
        StatusCode::OK,
        serde_json::to_string(&page).unwrap_or_else(|_| "{}".into()),
    )
}

async fn lease(State(store): State<Arc<LeaseStore>>, Path(ip): Path<String>) -> Response {
    let Ok(addr) = ip.parse::<Ipv4Addr>() else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": format!("{ip:?} is not an IPv4 address")}).to_string(),
        );
    };
    let found = store.index().get(addr).map(LeaseView::from);
    match found {
        Some(v) => json(
            StatusCode::OK,
            serde_json::to_string(&v).unwrap_or_else(|_| "{}".into()),
        ),
        None => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": format!("no lease for {addr}")}).to_string(),
        ),
    }
}

async fn pools(State(board): State<PoolBoard>) -> Response {
    let usage = board.read().unwrap_or_else(|e| e.into_inner()).clone();
    json(
        StatusCode::OK,
        serde_json::to_string(&usage).unwrap_or_else(|_| "[]".into()),
    )
}

/// The lease and pool routes, to merge into the API router.
pub fn router(store: Arc<LeaseStore>, board: PoolBoard) -> Router {
    Router::new()
        .route("/api/v1/leases", get(leases))
        .route("/api/v1/leases/{ip}", get(lease))
        .with_state(store)
        .merge(
            Router::new()
                .route("/api/v1/pools", get(pools))
                .with_state(board),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(last: u8, mac: u8, host: &str, subnet: &str) -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 0, 0, last),
            mac: [2, 0, 0, 0, 0, mac],
            client_id: None,
            hostname: Some(host.into()),
            subnet: subnet.into(),
            state: LeaseState::Active,
            start: 0,
            expiry: 10,
            updated_ms: 0,
            relay_info: None,
            classes: Vec::new(),
        }
    }

    fn all() -> Vec<Lease> {
        vec![
            l(30, 3, "c", "10.0.0.0/24"),
            l(10, 1, "a", "10.0.0.0/24"),
            l(20, 2, "b", "10.0.1.0/24"),
        ]
    }

    #[test]
    fn filters_by_each_field() {
        let q = |f: fn(&mut LeaseQuery)| {
            let mut q = LeaseQuery::default();
            f(&mut q);
            list(all().into_iter(), &q)
                .leases
                .iter()
                .map(|v| v.ip.octets()[3])
                .collect::<Vec<_>>()
        };
        assert_eq!(q(|_| {}), vec![10, 20, 30]);
        assert_eq!(q(|q| q.mac = Some("02-00-00-00-00-02".into())), vec![20]);
        assert_eq!(q(|q| q.ip = Some("10.0.0.30".into())), vec![30]);
        assert_eq!(q(|q| q.hostname = Some("A".into())), vec![10]);
        assert_eq!(q(|q| q.subnet = Some("10.0.0.0/24".into())), vec![10, 30]);
        assert_eq!(q(|q| q.state = Some("expired".into())), Vec::<u8>::new());
    }

    #[test]
    fn pages_are_stable_and_bounded() {
        let q = LeaseQuery {
            page: Some(2),
            per_page: Some(2),
            ..Default::default()
        };
        let p = list(all().into_iter(), &q);
        assert_eq!(p.total, 3);
        assert_eq!(p.leases.len(), 1);
        assert_eq!(p.leases[0].ip, Ipv4Addr::new(10, 0, 0, 30));
        let v = serde_json::to_value(&p.leases[0]).expect("json");
        assert_eq!(v["mac"], "02:00:00:00:00:03");
        assert_eq!(v["state"], "active");
    }
}
