//! Forwarders: asks the configured upstream resolvers, best first.
//!
//! Each query goes out from a fresh UDP socket (a random source port on top of a random ID,
//! so a spoofed reply must guess both) connected to the upstream; only a reply with the same
//! ID and the same question is accepted. A truncated reply is retried over TCP with the same
//! upstream. A timeout, a network error, SERVFAIL or REFUSED moves on to the next upstream.
//! Order: upstreams that failed recently go last; the rest by smoothed round-trip time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::metrics::DnsMetrics;
use super::wire::{build_query, is_truncated, rcode, reply_matches, RCODE_REFUSED, RCODE_SERVFAIL};
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
    Ok(Vec<u8>),
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

    /// Resolves `question` (wire name + type + class) upstream; the raw reply on success.
    pub async fn resolve(
        &self,
        question: &[u8],
        dnssec_ok: bool,
        metrics: &DnsMetrics,
    ) -> Result<Vec<u8>, ForwardError> {
        if self.servers.is_empty() {
            return Err(ForwardError::NoForwarders);
        }
        let mut why = Vec::new();
        for i in self.order() {
            let s = &self.servers[i];
            s.queries.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let attempt = self.ask(s.addr, question, dnssec_ok).await;
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

    async fn ask(&self, addr: SocketAddr, question: &[u8], dnssec_ok: bool) -> Attempt {
        let id: u16 = rand::random();
        let query = build_query(id, question, dnssec_ok);
        let udp = tokio::time::timeout(self.timeout, ask_udp(addr, &query, id, question)).await;
        let reply = match udp {
            Err(_) => return Attempt::Failed("timeout"),
            Ok(Err(_)) => return Attempt::Failed("network"),
            Ok(Ok(r)) => r,
        };
        let reply = if is_truncated(&reply) {
            match tokio::time::timeout(self.timeout, ask_tcp(addr, &query, id, question)).await {
                Err(_) => return Attempt::Failed("tcp_timeout"),
                Ok(Err(_)) => return Attempt::Failed("tcp_network"),
                Ok(Ok(r)) => r,
            }
        } else {
            reply
        };
        match rcode(&reply) {
            RCODE_SERVFAIL | RCODE_REFUSED => Attempt::Poor(reply),
            _ => Attempt::Ok(reply),
        }
    }
}

async fn ask_udp(
    addr: SocketAddr,
    query: &[u8],
    id: u16,
    question: &[u8],
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
        if reply_matches(&buf[..n], id, question) {
            buf.truncate(n);
            return Ok(buf);
        }
        // Anything else is ignored: a late reply to someone else, or a spoofing attempt.
        tracing::debug!(upstream = %addr, len = n, "ignored an upstream reply that does not match the query");
    }
}

async fn ask_tcp(
    addr: SocketAddr,
    query: &[u8],
    id: u16,
    question: &[u8],
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
        if reply_matches(&buf, id, question) {
            return Ok(buf);
        }
    }
}
