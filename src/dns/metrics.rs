//! DNS metrics on the daemon's Prometheus registry, and the numbers `/api/v1/dns/stats` shows.
//!
//! The per-query counters are created up front (one handle per query type × outcome), so
//! counting a query is one relaxed atomic add, no label hashing on the hot path.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Query types counted by name; everything else is "other".
pub const QTYPES: [(&str, u16); 12] = [
    ("A", 1),
    ("NS", 2),
    ("CNAME", 5),
    ("SOA", 6),
    ("PTR", 12),
    ("MX", 15),
    ("TXT", 16),
    ("AAAA", 28),
    ("SRV", 33),
    ("HTTPS", 65),
    ("ANY", 255),
    ("other", 0),
];

/// How a query was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From the local zone (including its NXDOMAINs).
    Local,
    Cached,
    Forwarded,
    /// Expired, every forwarder failed: answered from the cache with TTL 30 s (RFC 8767).
    Stale,
    /// Every forwarder failed, or there are none.
    Servfail,
    /// Opcode other than QUERY, or a zone transfer.
    Notimp,
    /// Too many queries waiting for upstreams.
    Overload,
}

pub const OUTCOMES: [Outcome; 7] = [
    Outcome::Local,
    Outcome::Cached,
    Outcome::Forwarded,
    Outcome::Stale,
    Outcome::Servfail,
    Outcome::Notimp,
    Outcome::Overload,
];

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Local => "local",
            Outcome::Cached => "cached",
            Outcome::Forwarded => "forwarded",
            Outcome::Stale => "stale",
            Outcome::Servfail => "servfail",
            Outcome::Notimp => "notimp",
            Outcome::Overload => "overload",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    qtype: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    upstream: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WarmLabels {
    event: &'static str,
}

/// Warm-standby question counts (`DnsMetrics::warm`): sent to the peer, dropped (queue or
/// intake full), received from it, skipped as fresh already, resolved.
pub const WARM_EVENTS: [&str; 5] = ["sent", "dropped", "received", "fresh", "resolved"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MalformedLabels {
    transport: &'static str,
    reason: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

pub struct DnsMetrics {
    queries: Vec<[Counter; OUTCOMES.len()]>,
    cache_hits: Counter,
    cache_misses: Counter,
    prefetches: Counter,
    upstream_latency: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    malformed: Family<MalformedLabels, Counter>,
    malformed_total: Counter,
    warm: Family<WarmLabels, Counter>,
    tcp_idle_closed: Counter,
    send_errors: Counter,
}

fn qtype_index(qtype: u16) -> usize {
    QTYPES
        .iter()
        .position(|&(_, t)| t == qtype)
        .unwrap_or(QTYPES.len() - 1)
}

impl DnsMetrics {
    /// Creates the metrics and registers them (names get the registry's `athena_` prefix).
    pub fn new(registry: &mut Registry) -> DnsMetrics {
        let family: Family<QueryLabels, Counter> = Family::default();
        let queries = QTYPES
            .iter()
            .map(|&(qtype, _)| {
                OUTCOMES.map(|o| {
                    family
                        .get_or_create(&QueryLabels {
                            qtype,
                            outcome: o.as_str(),
                        })
                        .clone()
                })
            })
            .collect();
        let m = DnsMetrics {
            queries,
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            prefetches: Counter::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram),
            upstream_errors: Family::default(),
            malformed: Family::default(),
            malformed_total: Counter::default(),
            warm: Family::default(),
            tcp_idle_closed: Counter::default(),
            send_errors: Counter::default(),
        };
        registry.register(
            "dns_queries",
            "DNS queries answered, by query type and outcome",
            family,
        );
        registry.register(
            "dns_cache_hits",
            "DNS queries answered from the cache",
            m.cache_hits.clone(),
        );
        registry.register(
            "dns_cache_misses",
            "DNS queries not in the local zone or the cache",
            m.cache_misses.clone(),
        );
        registry.register(
            "dns_prefetches",
            "Cached answers refreshed in the background in the last tenth of their TTL",
            m.prefetches.clone(),
        );
        registry.register(
            "dns_upstream_latency_seconds",
            "Round-trip time of answered upstream queries",
            m.upstream_latency.clone(),
        );
        registry.register(
            "dns_upstream_errors",
            "Upstream queries that failed, by upstream and kind",
            m.upstream_errors.clone(),
        );
        registry.register(
            "dns_malformed",
            "DNS messages dropped as malformed, by transport and reason",
            m.malformed.clone(),
        );
        registry.register(
            "dns_warm_questions",
            "Warm standby: questions sent to the peer, dropped, received, skipped as fresh, resolved",
            m.warm.clone(),
        );
        registry.register(
            "dns_tcp_idle_closed",
            "DNS TCP connections closed for sending nothing",
            m.tcp_idle_closed.clone(),
        );
        registry.register(
            "dns_send_errors",
            "DNS replies the kernel refused to send",
            m.send_errors.clone(),
        );
        m
    }

    /// Metrics not attached to any registry (tests, tools).
    pub fn unregistered() -> DnsMetrics {
        DnsMetrics::new(&mut Registry::default())
    }

    #[inline]
    pub fn query(&self, qtype: u16, outcome: Outcome) {
        let o = OUTCOMES.iter().position(|&x| x == outcome).unwrap_or(0);
        self.queries[qtype_index(qtype)][o].inc();
    }

    #[inline]
    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    #[inline]
    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    pub fn prefetch(&self) {
        self.prefetches.inc();
    }

    pub fn prefetches(&self) -> u64 {
        self.prefetches.get()
    }

    pub fn upstream_latency(&self, upstream: SocketAddr, took: Duration) {
        self.upstream_latency
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn upstream_error(&self, upstream: SocketAddr, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                upstream: upstream.to_string(),
                kind,
            })
            .inc();
    }

    pub fn malformed(&self, transport: &'static str, reason: &'static str) {
        self.malformed_total.inc();
        self.malformed
            .get_or_create(&MalformedLabels { transport, reason })
            .inc();
    }

    pub fn warm(&self, event: &'static str, n: u64) {
        self.warm.get_or_create(&WarmLabels { event }).inc_by(n);
    }

    /// Warm-standby counts by event.
    pub fn warm_counts(&self) -> Vec<(&'static str, u64)> {
        WARM_EVENTS
            .iter()
            .map(|&event| {
                let n = self.warm.get(&WarmLabels { event }).map_or(0, |c| c.get());
                (event, n)
            })
            .collect()
    }

    pub fn tcp_idle_closed(&self) {
        self.tcp_idle_closed.inc();
    }

    pub fn send_error(&self) {
        self.send_errors.inc();
    }

    pub fn malformed_total(&self) -> u64 {
        self.malformed_total.get()
    }

    pub fn tcp_idle_closed_total(&self) -> u64 {
        self.tcp_idle_closed.get()
    }

    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.get()
    }

    pub fn cache_misses(&self) -> u64 {
        self.cache_misses.get()
    }

    /// Queries per outcome, over all types.
    pub fn by_outcome(&self) -> Vec<(&'static str, u64)> {
        OUTCOMES
            .iter()
            .enumerate()
            .map(|(i, o)| {
                (
                    o.as_str(),
                    self.queries.iter().map(|row| row[i].get()).sum(),
                )
            })
            .collect()
    }

    /// Queries per type, over all outcomes (types never seen left out).
    pub fn by_type(&self) -> Vec<(&'static str, u64)> {
        QTYPES
            .iter()
            .zip(&self.queries)
            .map(|(&(name, _), row)| (name, row.iter().map(|c| c.get()).sum()))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Malformed messages by "transport/reason".
    pub fn malformed_by_reason(&self) -> Vec<(String, u64)> {
        // Family offers no iteration; the reasons are a short fixed list.
        let mut out = Vec::new();
        for transport in ["udp", "tcp", "upstream", "warm"] {
            for reason in [
                "short",
                "not_query",
                "question_count",
                "bad_name",
                "truncated",
                "bad_opt",
                "zero_length_frame",
                "oversized",
                "not_response",
                "wrong_id",
                "wrong_question",
                "bad_question",
            ] {
                let l = MalformedLabels { transport, reason };
                if let Some(c) = self.malformed.get(&l) {
                    out.push((format!("{transport}/{reason}"), c.get()));
                }
            }
        }
        out
    }
}
