//! Caching DNS proxy that answers from the address it was asked on (the VIP).
//!
//! Clients are handed the VIP as their resolver, so whichever node holds the VIP must answer
//! from it: the UDP socket is bound to the wildcard address and every reply is sent with
//! `IP_PKTINFO` naming the address the query came in on ([`udp`]), which also covers a VIP
//! added after start. Queries run through the local zone ([`zone`]: static records, lease
//! hostnames under `[dns] domain`), the answer cache ([`cache`]) and the forwarders
//! ([`upstream`]); [`server`] holds the pipeline and the serving loops, [`wire`] the
//! allocation-free message handling they use.
//!
//! Life cycle: [`bind`] opens both sockets in `daemon::prepare` (port 53 needs
//! CAP_NET_BIND_SERVICE, which is dropped afterwards); [`DnsServer::start`] spawns the
//! serving loops inside the runtime; SIGHUP reloads apply the static records, the forwarders
//! and zone overrides, and the serve-stale settings ([`DnsServer::follow_config`]); lease
//! events add and remove host names. [`probe`] is the HA witness: "does the VIP answer DNS?".

pub mod cache;
pub mod metrics;
pub mod server;
pub mod udp;
pub mod upstream;
pub mod warm;
pub mod wire;
pub mod zone;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DnsConfig};
use crate::events::{EventData, EventKind, Subscription};
use crate::ha::HaState;
use crate::health::Health;
use crate::privileges::explain_bind_error;

pub use server::TcpOptions;
pub use warm::WarmLink;

/// How long the serving loop may go without progress before health calls it stuck.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// The idle UDP loop wakes this often to tick its health handle and look for shutdown.
const IDLE_WAKE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A socket could not be opened; the message names the address and the capability.
    #[error("{0}")]
    Bind(String),
    #[error(transparent)]
    Zone(#[from] zone::ZoneError),
    #[error("DNS socket setup: {0}")]
    Io(#[from] std::io::Error),
}

/// Both listening sockets, opened while the process still may bind port 53.
pub struct DnsSockets {
    pub udp: std::net::UdpSocket,
    pub tcp: std::net::TcpListener,
}

/// Opens the UDP (with pktinfo) and TCP sockets of `[dns]`.
pub fn bind(cfg: &DnsConfig) -> Result<DnsSockets, DnsError> {
    bind_addrs(cfg.listen_udp, cfg.tcp_addr())
}

/// Opens the sockets on explicit addresses (tests use port 0).
pub fn bind_addrs(udp_addr: SocketAddr, tcp_addr: SocketAddr) -> Result<DnsSockets, DnsError> {
    use socket2::{Domain, Socket, Type};
    let explain = |e: std::io::Error, what: String| {
        DnsError::Bind(explain_bind_error(&e, &what, "CAP_NET_BIND_SERVICE"))
    };
    let udp_what = || format!("DNS UDP listener on {udp_addr}");
    let udp = Socket::new(Domain::for_address(udp_addr), Type::DGRAM, None)
        .map_err(|e| explain(e, udp_what()))?;
    crate::pktinfo::enable(&udp, udp_addr.is_ipv6()).map_err(|e| explain(e, udp_what()))?;
    // Room for bursts while the serving loop is busy; the kernel caps it at rmem_max.
    let _ = udp.set_recv_buffer_size(4 << 20);
    udp.set_nonblocking(true)
        .map_err(|e| explain(e, udp_what()))?;
    udp.bind(&udp_addr.into())
        .map_err(|e| explain(e, udp_what()))?;
    let tcp_what = || format!("DNS TCP listener on {tcp_addr}");
    let tcp = Socket::new(Domain::for_address(tcp_addr), Type::STREAM, None)
        .map_err(|e| explain(e, tcp_what()))?;
    tcp.set_reuse_address(true)
        .map_err(|e| explain(e, tcp_what()))?;
    tcp.set_nonblocking(true)
        .map_err(|e| explain(e, tcp_what()))?;
    tcp.bind(&tcp_addr.into())
        .map_err(|e| explain(e, tcp_what()))?;
    tcp.listen(1024).map_err(|e| explain(e, tcp_what()))?;
    Ok(DnsSockets {
        udp: udp.into(),
        tcp: tcp.into(),
    })
}

/// Tuning that is not in the config file.
#[derive(Debug, Clone, Copy)]
pub struct DnsOptions {
    pub tcp: TcpOptions,
    /// UDP serving threads on the one socket. One is plenty (a hit costs about a
    /// microsecond of compute); more share the socket's queue.
    pub udp_workers: usize,
    /// Longest a UDP query may wait so several are answered per wake-up under load (see
    /// `server::serve_udp`); zero answers every datagram at once.
    pub udp_coalesce: Duration,
    /// After every forwarder failed for a name served stale: how long further queries get
    /// the stale answer at once before one of them tries upstream again (RFC 8767's
    /// "failure recheck timer"; 30 s).
    pub stale_retry: Duration,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            tcp: TcpOptions::default(),
            udp_workers: 1,
            udp_coalesce: Duration::from_micros(250),
            stale_retry: Duration::from_secs(30),
        }
    }
}

/// The host names of the active leases, read from the lease store: (address, host name).
pub type LeaseNames = Arc<dyn Fn() -> Vec<(std::net::Ipv4Addr, String)> + Send + Sync>;

/// A running DNS server. Cheap to clone.
#[derive(Clone)]
pub struct DnsServer {
    resolver: Arc<server::Resolver>,
    udp_addr: SocketAddr,
    tcp_addr: SocketAddr,
    lease_source: Arc<std::sync::Mutex<Option<LeaseNames>>>,
    shutdown: CancellationToken,
    /// `DnsOptions::stale_retry`, kept for the serve-stale policy of reloads.
    stale_retry: Duration,
}

impl DnsServer {
    /// Spawns the serving loops (call inside the tokio runtime). Registers the metrics on
    /// `registry` and a `dns` worker on `health`.
    pub fn start(
        sockets: DnsSockets,
        cfg: &DnsConfig,
        node: &str,
        registry: &mut Registry,
        health: &Health,
        shutdown: CancellationToken,
        opts: DnsOptions,
    ) -> Result<DnsServer, DnsError> {
        let zone = zone::Zone::new(cfg, node)?;
        let res = Arc::new(server::Resolver::new(
            zone,
            cache::Cache::with_stale(cfg.cache_size, stale_policy(cfg, opts.stale_retry)),
            forwarders_of(cfg),
            metrics::DnsMetrics::new(registry),
            tokio::runtime::Handle::current(),
        ));
        res.set_stale_client_timeout(cfg.stale_client_timeout());
        let ep = Arc::new(udp::UdpEndpoint::new(sockets.udp, IDLE_WAKE)?);
        let udp_addr = ep.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(sockets.tcp)?;
        let tcp_addr = listener.local_addr()?;
        for i in 0..opts.udp_workers.max(1) {
            let name = if i == 0 {
                "dns".to_string()
            } else {
                format!("dns-{}", i + 1)
            };
            let progress = health.worker(&name, STALE_AFTER);
            let (res, ep, sd) = (res.clone(), ep.clone(), shutdown.clone());
            let coalesce = opts.udp_coalesce;
            std::thread::Builder::new()
                .name(format!("athena-{name}-udp"))
                .spawn(move || server::serve_udp(res, ep, progress, coalesce, sd))?;
        }
        tokio::spawn(server::serve_tcp(
            res.clone(),
            listener,
            opts.tcp,
            shutdown.clone(),
        ));
        tracing::info!(
            udp = %udp_addr,
            tcp = %tcp_addr,
            forwarders = ?cfg.forwarders,
            zone_overrides = cfg.zone_overrides.len(),
            domain = cfg.domain.as_deref().unwrap_or("-"),
            records = cfg.records.len(),
            "DNS proxy listening on udp {udp_addr} and tcp {tcp_addr}"
        );
        Ok(DnsServer {
            resolver: res,
            udp_addr,
            tcp_addr,
            lease_source: Default::default(),
            shutdown,
            stale_retry: opts.stale_retry,
        })
    }

    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    pub fn metrics(&self) -> &metrics::DnsMetrics {
        &self.resolver.metrics
    }

    /// Empties the answer cache; returns how many entries it held.
    pub fn flush_cache(&self) -> usize {
        self.resolver.cache.flush()
    }

    /// The warm-standby ends for the HA link (call once): from now on the questions this
    /// node stores for its clients are queued for the peer, and questions from the peer are
    /// resolved into the cache, hidden until this node serves.
    pub fn warm_link(&self) -> WarmLink {
        WarmLink::start(self.resolver.clone(), self.shutdown.clone())
    }

    /// Follows the HA serving gate: only while it says ACTIVE do answers resolved for the
    /// peer reach clients, and only then are this node's own answers offered to the peer.
    /// (Without this call the node serves: standalone.)
    pub fn follow_serving(&self, mut serving: watch::Receiver<HaState>) {
        let res = self.resolver.clone();
        res.set_serving(serving.borrow_and_update().serves());
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = serving.changed() => if r.is_err() { return },
                }
                res.set_serving(serving.borrow_and_update().serves());
            }
        });
    }

    /// Loads the lease names from `source` now and again whenever this node becomes ACTIVE
    /// (a standby's zone only hears the lease events of leases it answered itself, and a
    /// restarted node none from before the restart).
    pub fn set_lease_source(&self, source: LeaseNames) {
        let n = reload_lease_names(&self.resolver, &source);
        tracing::info!(
            names = n,
            "DNS: {n} lease host names loaded from the lease store"
        );
        *self.lease_source.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// Adds or removes lease host names as lease events arrive (`register_leases`).
    pub fn follow_leases(&self, mut sub: Subscription, shutdown: CancellationToken) {
        let res = self.resolver.clone();
        let source = self.lease_source.clone();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    e = sub.rx.recv() => match e { Some(e) => e, None => return },
                };
                if let EventData::Ha(h) = &ev.data {
                    let src = source.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if let (true, Some(src)) = (
                        ev.kind == EventKind::HaFailover && h.new_state == HaState::Active,
                        src,
                    ) {
                        let n = reload_lease_names(&res, &src);
                        tracing::info!(
                            names = n,
                            "DNS: {n} lease host names reloaded on becoming ACTIVE"
                        );
                    }
                    continue;
                }
                let EventData::Lease(l) = &ev.data else {
                    continue;
                };
                match ev.kind {
                    EventKind::LeaseAck | EventKind::LeaseRenew => {
                        let Some(host) = l.hostname.as_deref() else {
                            continue;
                        };
                        match res.with_zone(|z| z.add_lease(l.ip, host)) {
                            Some(fqdn) => {
                                tracing::debug!(ip = %l.ip, name = %fqdn, "DNS: {fqdn} -> {}", l.ip)
                            }
                            None => {
                                tracing::debug!(ip = %l.ip, hostname = host, "DNS: host name {host:?} of {} is not usable as a DNS label", l.ip)
                            }
                        }
                    }
                    EventKind::LeaseRelease | EventKind::LeaseExpire => {
                        let removed = res.with_zone(|z| z.remove_lease(l.ip));
                        if removed {
                            tracing::debug!(ip = %l.ip, "DNS: removed the lease name of {}", l.ip);
                        }
                    }
                    _ => {}
                }
            }
        });
    }

    /// Applies SIGHUP reloads: `[[dns.record]]`; `forwarders`, `upstream_timeout` and
    /// `[[dns.zone_override]]` (the upstreams are rebuilt, and their round-trip figures start
    /// over, only when one of these changed); `serve_stale`, `stale_max` and
    /// `stale_answer_client_timeout`. The rest of `[dns]` needs a restart
    /// (`daemon::restart_sections`).
    pub fn follow_config(&self, mut rx: watch::Receiver<Arc<Config>>, shutdown: CancellationToken) {
        let res = self.resolver.clone();
        let stale_retry = self.stale_retry;
        let mut upstreams = UpstreamSettings::of(&rx.borrow().dns);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
                let cfg = rx.borrow_and_update().clone();
                let dns = &cfg.dns;
                match res.with_zone(|z| z.set_records(&dns.records)) {
                    Ok(()) => tracing::info!(
                        records = dns.records.len(),
                        "DNS: {} static records loaded",
                        dns.records.len()
                    ),
                    Err(e) => tracing::error!("DNS: reload kept the old records: {e}"),
                }
                let now = UpstreamSettings::of(dns);
                if now != upstreams {
                    res.set_forwarders(forwarders_of(dns));
                    tracing::info!(
                        forwarders = ?dns.forwarders,
                        zone_overrides = dns.zone_overrides.len(),
                        upstream_timeout = %dns.upstream_timeout,
                        "DNS: forwarders and {} zone overrides loaded",
                        dns.zone_overrides.len()
                    );
                    upstreams = now;
                }
                res.cache.set_stale(stale_policy(dns, stale_retry));
                res.set_stale_client_timeout(dns.stale_client_timeout());
            }
        });
    }

    /// What `GET /api/v1/dns/stats` returns.
    pub fn stats(&self) -> serde_json::Value {
        let r = &self.resolver;
        let m = &r.metrics;
        let (statics, leases) = r.zone_counts();
        let obj = |v: Vec<(&'static str, u64)>| {
            v.into_iter()
                .map(|(k, n)| (k.to_string(), json!(n)))
                .collect::<serde_json::Map<_, _>>()
        };
        json!({
            "queries": obj(m.by_outcome()),
            "queries_by_type": obj(m.by_type()),
            "cache": {
                "entries": r.cache.len(),
                "capacity": r.cache.capacity(),
                "hits": m.cache_hits(),
                "misses": m.cache_misses(),
                "prefetches": m.prefetches(),
            },
            "inflight": r.inflight(),
            "serving": r.serving(),
            "warm": obj(m.warm_counts()),
            "upstreams": r.forwarders().default_stats(),
            "zone_overrides": r.forwarders().zone_stats().into_iter().map(|(zone, ups)| json!({"zone": zone, "upstreams": ups})).collect::<Vec<_>>(),
            "zone": {"static_records": statics, "lease_names": leases},
            "malformed": m.malformed_total(),
            "malformed_by_reason": m.malformed_by_reason().into_iter().map(|(k, n)| (k, json!(n))).collect::<serde_json::Map<_, _>>(),
            "tcp_idle_closed": m.tcp_idle_closed_total(),
        })
    }

    /// `GET /api/v1/dns/stats` and `POST /api/v1/dns/cache/flush` (bearer token).
    pub fn routes(&self, config: watch::Receiver<Arc<Config>>) -> Router {
        Router::new()
            .route("/api/v1/dns/stats", get(stats_handler))
            .route("/api/v1/dns/cache/flush", post(flush_handler))
            .with_state(ApiDns {
                server: self.clone(),
                config,
            })
    }
}

/// The upstreams of `cfg`: `[dns] forwarders` and each `[[dns.zone_override]]`'s.
fn forwarders_of(cfg: &DnsConfig) -> upstream::Forwarders {
    let timeout = cfg.upstream_timeout.get();
    upstream::Forwarders::new(
        upstream::Upstreams::new(cfg.forwarder_addrs(), timeout),
        cfg.zone_overrides
            .iter()
            .map(|z| {
                let u = upstream::Upstreams::new(z.forwarder_addrs(), timeout);
                (z.zone.clone(), u)
            })
            .collect(),
    )
}

fn stale_policy(cfg: &DnsConfig, retry: Duration) -> cache::StalePolicy {
    cache::StalePolicy {
        max: cfg.stale_window(),
        retry,
    }
}

/// What the upstreams are built from: a reload rebuilds them only when this changed, so
/// their round-trip times and failure marks survive an unrelated reload.
#[derive(PartialEq)]
struct UpstreamSettings {
    forwarders: Vec<std::net::SocketAddr>,
    zones: Vec<(String, Vec<std::net::SocketAddr>)>,
    timeout: Duration,
}

impl UpstreamSettings {
    fn of(cfg: &DnsConfig) -> UpstreamSettings {
        UpstreamSettings {
            forwarders: cfg.forwarder_addrs(),
            zones: cfg
                .zone_overrides
                .iter()
                .map(|z| (z.zone.clone(), z.forwarder_addrs()))
                .collect(),
            timeout: cfg.upstream_timeout.get(),
        }
    }
}

fn reload_lease_names(res: &server::Resolver, source: &LeaseNames) -> usize {
    let names = source();
    res.with_zone(|z| {
        z.clear_leases();
        names
            .iter()
            .filter(|(ip, host)| z.add_lease(*ip, host).is_some())
            .count()
    })
}

#[derive(Clone)]
struct ApiDns {
    server: DnsServer,
    config: watch::Receiver<Arc<Config>>,
}

fn json_response(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn stats_handler(State(s): State<ApiDns>) -> Response {
    json_response(StatusCode::OK, s.server.stats().to_string())
}

async fn flush_handler(State(s): State<ApiDns>, headers: HeaderMap) -> Response {
    let token = s.config.borrow().api.auth_token.clone();
    if let Err(resp) = crate::api::authorize(&headers, token.as_deref()) {
        return resp;
    }
    let n = s.server.flush_cache();
    tracing::info!(
        entries = n,
        "DNS cache flushed through the API ({n} entries)"
    );
    json_response(StatusCode::OK, json!({"flushed": n}).to_string())
}

/// The VIP witness for HA: asks `server` for `id.server. CH TXT` (answered locally by
/// athena-dhcpd, and by most servers, so no upstream is involved) from a connected UDP
/// socket. True if a well-formed DNS reply with the same ID came back within `timeout`,
/// whatever its rcode: any answer proves a DNS service owns that address.
pub async fn probe(server: SocketAddr, timeout: Duration) -> bool {
    let ask = async {
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let sock = tokio::net::UdpSocket::bind(bind).await.ok()?;
        // Connected: the kernel drops replies from any other address, as stub resolvers do.
        sock.connect(server).await.ok()?;
        let id: u16 = rand::random();
        let mut question = wire::name_to_wire("id.server")?;
        question.extend_from_slice(&[0, 16, 0, 3]); // TXT, CH
        let mut query = Vec::with_capacity(32);
        query.extend_from_slice(&id.to_be_bytes());
        query.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        query.extend_from_slice(&question);
        sock.send(&query).await.ok()?;
        let mut buf = [0u8; 1500];
        loop {
            // An ICMP port unreachable (nobody listening) ends this with an error at once.
            let n = sock.recv(&mut buf).await.ok()?;
            let reply = &buf[..n];
            if n >= wire::HEADER_LEN
                && reply[0..2] == id.to_be_bytes()
                && reply[2] & 0x80 != 0
                && hickory_proto::op::Message::from_vec(reply).is_ok()
            {
                return Some(());
            }
        }
    };
    matches!(tokio::time::timeout(timeout, ask).await, Ok(Some(())))
}
