//! Forwarders: asks the configured upstream resolvers, best first.
//!
//! Each query goes out from a fresh UDP socket (a random source port on top of a random ID,
//! so a spoofed reply must guess both) connected to the upstream, so the kernel drops
//! datagrams from any other address; of the rest only a reply with the same ID and the same
//! question is accepted, anything else is counted (`athena_dns_malformed_total{transport=
//! "upstream"}`: `wrong_id`, `wrong_question`, `short`, `not_response`) and ignored while the
//! wait goes on. A reply that matches but does not parse is counted too and moves on to the
//! next upstream, as do a timeout, a network error, SERVFAIL and REFUSED. A truncated reply is
//! retried over TCP with the same upstream. Order: upstreams that failed recently go last; the
//! rest by smoothed round-trip time.
//!
//! [`Forwarders`] picks the upstreams of a name: the longest `[[dns.zone_override]]` zone it
//! is at or below, else `[dns] forwarders`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::metrics::DnsMetrics;
use super::wire::{
    build_query, is_at_or_below, is_truncated, rcode, reply_mismatch, Answer, RCODE_REFUSED,
    RCODE_SERVFAIL,
};
use crate::health::mono_ms;

/// How long an upstream stays at the back of the line after a failure.
const PENALTY_MS: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no forwarders configured")]
    NoForwarders,
    #[error("every forwarder failed: {0}")]
    AllFailed(String),
}

struct Upstream {
    addr: SocketAddr,
    srtt_us: AtomicU64,
    failed_at_ms: AtomicU64,
    queries: AtomicU64,
    errors: AtomicU64,
    consecutive_failures: AtomicU32,
}

/// What `/api/v1/dns/stats` shows per upstream.
#[derive(Debug, Serialize)]
pub struct UpstreamStats {
    pub address: String,
    pub srtt_ms: f64,
    pub queries: u64,
    pub errors: u64,
    pub consecutive_failures: u32,
}

pub struct Upstreams {
    servers: Vec<Upstream>,
    timeout: Duration,
}

enum Attempt {
    Ok(Answer),
    /// SERVFAIL or REFUSED: try the next upstream.
    Poor(Vec<u8>),
    Failed(&'static str),
}

impl Upstreams {
    pub fn new(addrs: Vec<SocketAddr>, timeout: Duration) -> Upstreams {
        Upstreams {
            servers: addrs
                .into_iter()
                .map(|addr| Upstream {
                    addr,
                    // Unknown upstreams start equal, in config order.
                    srtt_us: AtomicU64::new(0),
                    failed_at_ms: AtomicU64::new(0),
                    queries: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                    consecutive_failures: AtomicU32::new(0),
                })
                .collect(),
            timeout,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Every upstream's last query failed, less than the penalty period ago (an answer
    /// clears the mark): asking them now would most likely only make a client wait out
    /// another timeout.
    pub fn all_failing(&self) -> bool {
        let now = mono_ms();
        !self.servers.is_empty()
            && self.servers.iter().all(|s| {
                let failed = s.failed_at_ms.load(Ordering::Relaxed);
                failed != 0 && now.saturating_sub(failed) < PENALTY_MS
            })
    }

    /// Indexes, best first.
    fn order(&self) -> Vec<usize> {
        let now = mono_ms();
        let mut idx: Vec<usize> = (0..self.servers.len()).collect();
        idx.sort_by_key(|&i| {
            let s = &self.servers[i];
            let failed = s.failed_at_ms.load(Ordering::Relaxed);
            let penalised = failed != 0 && now.saturating_sub(failed) < PENALTY_MS;
            (penalised, s.srtt_us.load(Ordering::Relaxed))
        });
        idx
    }

    pub fn stats(&self) -> Vec<UpstreamStats> {
        self.servers
            .iter()
            .map(|s| UpstreamStats {
                address: s.addr.to_string(),
                srtt_ms: s.srtt_us.load(Ordering::Relaxed) as f64 / 1000.0,
                queries: s.queries.load(Ordering::Relaxed),
                errors: s.errors.load(Ordering::Relaxed),
                consecutive_failures: s.consecutive_failures.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Resolves `question` (wire name + type + class) upstream; the checked answer.
    pub async fn resolve(
        &self,
        question: &[u8],
        dnssec_ok: bool,
        metrics: &DnsMetrics,
    ) -> Result<Answer, ForwardError> {
        if self.servers.is_empty() {
            return Err(ForwardError::NoForwarders);
        }
        let mut why = Vec::new();
        for i in self.order() {
            let s = &self.servers[i];
            s.queries.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let attempt = self.ask(s.addr, question, dnssec_ok, metrics).await;
            let took = started.elapsed();
            match attempt {
                Attempt::Ok(reply) => {
                    metrics.upstream_latency(s.addr, took);
                    let us = took.as_micros() as u64;
                    let old = s.srtt_us.load(Ordering::Relaxed);
                    let new = if old == 0 { us } else { (old * 7 + us) / 8 };
                    s.srtt_us.store(new.max(1), Ordering::Relaxed);
                    s.failed_at_ms.store(0, Ordering::Relaxed);
                    s.consecutive_failures.store(0, Ordering::Relaxed);
                    return Ok(reply);
                }
                Attempt::Poor(reply) => {
                    metrics.upstream_latency(s.addr, took);
                    self.failed(s, "servfail_or_refused", metrics);
                    why.push(format!("{}: rcode {}", s.addr, rcode(&reply)));
                }
                Attempt::Failed(kind) => {
                    self.failed(s, kind, metrics);
                    why.push(format!("{}: {kind}", s.addr));
                }
            }
        }
        // Every upstream refused or failed: the caller answers SERVFAIL, not an upstream's
        // REFUSED (that would tell clients this server refuses them).
        Err(ForwardError::AllFailed(why.join(", ")))
    }

    fn failed(&self, s: &Upstream, kind: &'static str, metrics: &DnsMetrics) {
        s.errors.fetch_add(1, Ordering::Relaxed);
        s.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        s.failed_at_ms.store(mono_ms().max(1), Ordering::Relaxed);
        metrics.upstream_error(s.addr, kind);
    }

    async fn ask(
        &self,
        addr: SocketAddr,
        question: &[u8],
        dnssec_ok: bool,
        metrics: &DnsMetrics,
    ) -> Attempt {
        let id: u16 = rand::random();
        let query = build_query(id, question, dnssec_ok);
        let udp =
            tokio::time::timeout(self.timeout, ask_udp(addr, &query, id, question, metrics)).await;
        let reply = match udp {
            Err(_) => return Attempt::Failed("timeout"),
            Ok(Err(_)) => return Attempt::Failed("network"),
            Ok(Ok(r)) => r,
        };
        let reply = if is_truncated(&reply) {
            match tokio::time::timeout(self.timeout, ask_tcp(addr, &query, id, question, metrics))
                .await
            {
                Err(_) => return Attempt::Failed("tcp_timeout"),
                Ok(Err(_)) => return Attempt::Failed("tcp_network"),
                Ok(Ok(r)) => r,
            }
        } else {
            reply
        };
        match rcode(&reply) {
            RCODE_SERVFAIL | RCODE_REFUSED => Attempt::Poor(reply),
            _ => match Answer::from_wire(reply) {
                Ok(a) => Attempt::Ok(a),
                Err(e) => {
                    metrics.malformed("upstream", e.reason());
                    tracing::debug!(upstream = %addr, "unusable upstream reply: {e}");
                    Attempt::Failed("malformed")
                }
            },
        }
    }
}

/// The upstreams of every name: `[[dns.zone_override]]` zones, longest first, then the
/// default forwarders.
pub struct Forwarders {
    default: Upstreams,
    /// (lowercase wire zone, zone as configured, its upstreams), the longest zone first: a
    /// zone containing another is a suffix of it, so it is shorter and matched later.
    zones: Vec<(Box<[u8]>, String, Upstreams)>,
}

impl Forwarders {
    /// `zones`: (zone name, upstreams); names that are no valid domain are left out (the
    /// config was validated).
    pub fn new(default: Upstreams, zones: Vec<(String, Upstreams)>) -> Forwarders {
        let mut zones: Vec<_> = zones
            .into_iter()
            .filter_map(|(z, u)| Some((super::wire::name_to_wire(&z)?.into_boxed_slice(), z, u)))
            .collect();
        zones.sort_by_key(|(w, _, _)| std::cmp::Reverse(w.len()));
        Forwarders { default, zones }
    }

    /// The upstreams for `name` (lowercase wire name).
    pub fn for_name(&self, name: &[u8]) -> &Upstreams {
        self.zones
            .iter()
            .find(|(zone, _, _)| is_at_or_below(name, zone))
            .map_or(&self.default, |(_, _, u)| u)
    }

    pub fn default_stats(&self) -> Vec<UpstreamStats> {
        self.default.stats()
    }

    /// Per override zone: the zone and its upstreams' figures.
    pub fn zone_stats(&self) -> Vec<(String, Vec<UpstreamStats>)> {
        self.zones
            .iter()
            .map(|(_, z, u)| (z.clone(), u.stats()))
            .collect()
    }
}

async fn ask_udp(
    addr: SocketAddr,
    query: &[u8],
    id: u16,
    question: &[u8],
    metrics: &DnsMetrics,
) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        match reply_mismatch(&buf[..n], id, question) {
            None => {
                buf.truncate(n);
                return Ok(buf);
            }
            // Anything else is ignored: a late reply to someone else, a spoofing attempt.
            Some(why) => ignored(addr, n, why, metrics),
        }
    }
}

fn ignored(addr: SocketAddr, len: usize, why: &'static str, metrics: &DnsMetrics) {
    metrics.malformed("upstream", why);
    tracing::debug!(upstream = %addr, len, reason = why, "ignored an upstream reply that does not match the query");
}

async fn ask_tcp(
    addr: SocketAddr,
    query: &[u8],
    id: u16,
    question: &[u8],
    metrics: &DnsMetrics,
) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(query);
    s.write_all(&framed).await?;
    loop {
        let len = s.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        match reply_mismatch(&buf, id, question) {
            None => return Ok(buf),
            Some(why) => ignored(addr, len, why, metrics),
        }
    }
}
