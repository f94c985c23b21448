//! `athena-dhcpd status`: one terminal screen on the pair, from the API of one node and of
//! its peer (`[ha] peer_address`; the peer's HA status needs no token): both nodes' state,
//! epoch and last heartbeat, who holds each VIP, each pool's use, the DNS query rate and
//! cache hit rate over a short sample, and the pair's latest HA transitions.
//!
//! [`gather`] does the I/O and returns a [`StatusReport`] (what `--json` prints); [`render`]
//! is a pure function of that report and the time, tested on reports built from the
//! daemon's own types.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::client::{ApiClient, ClientError};
use super::{ago, clock, utc_datetime};
use crate::dhcp::pools::PoolUsage;
use crate::ha::agreement::AgreementView;
use crate::ha::{HaStatus, HaTransition, TRANSITION_HISTORY};

/// Everything the screen shows, as fetched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The API asked.
    pub api: String,
    /// Unix milliseconds when the node's status was read.
    pub taken_at: u64,
    pub node: HaStatus,
    /// The peer's own view, from its API; `None` standalone or when it did not answer.
    pub peer: Option<HaStatus>,
    /// Why `peer` is missing although HA is on.
    pub peer_error: Option<String>,
    /// `None`: this node serves no DHCP (or the pools could not be read: see `problems`).
    pub pools: Option<Vec<PoolUsage>>,
    /// `None`: DNS is off here (or could not be read).
    pub dns: Option<DnsSample>,
    /// Do both nodes serve one config? `None` with HA off (or a daemon without the check).
    #[serde(default)]
    pub config: Option<AgreementView>,
    /// Parts of the screen that could not be read (a missing token, an error).
    pub problems: Vec<String>,
}

/// DNS counters at one moment: the part of `GET /api/v1/dns/stats` the screen needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCounters {
    pub queries: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
}

#[derive(Deserialize)]
struct DnsStatsWire {
    queries: BTreeMap<String, u64>,
    cache: CacheWire,
}

#[derive(Deserialize)]
struct CacheWire {
    hits: u64,
    misses: u64,
}

impl From<DnsStatsWire> for DnsCounters {
    fn from(w: DnsStatsWire) -> Self {
        DnsCounters {
            queries: w.queries.values().sum(),
            cache_hits: w.cache.hits,
            cache_misses: w.cache.misses,
        }
    }
}

/// Two readings of the DNS counters `window_ms` apart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DnsSample {
    pub window_ms: u64,
    pub before: DnsCounters,
    pub after: DnsCounters,
}

impl DnsSample {
    pub fn queries_per_second(&self) -> f64 {
        let n = self.after.queries.saturating_sub(self.before.queries);
        n as f64 * 1000.0 / self.window_ms.max(1) as f64
    }

    /// Cache hits among cache lookups in the window (local answers are neither): (hits, lookups).
    pub fn window_hits(&self) -> (u64, u64) {
        let h = self.after.cache_hits.saturating_sub(self.before.cache_hits);
        let m = self
            .after
            .cache_misses
            .saturating_sub(self.before.cache_misses);
        (h, h + m)
    }
}

/// The peer's API base: this API's scheme with the peer's address.
pub fn peer_base(api: &str, peer_address: &str) -> String {
    let scheme = if api.starts_with("https://") {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{peer_address}")
}

/// Reads everything; fails only when the node's own HA status cannot be read. The DNS
/// rate is measured over `sample`, which is how long this takes at least.
pub async fn gather(api: &ApiClient, sample: Duration) -> Result<StatusReport, ClientError> {
    let node: HaStatus = api.get("/api/v1/ha/status").await?;
    let taken_at = crate::events::now_ms();
    let mut problems = Vec::new();
    let peer_client = match (&node.peer_address, node.enabled) {
        (Some(addr), true) => Some(api.for_base(&peer_base(api.base(), addr))),
        _ => None,
    };
    let peer_fut = async {
        match &peer_client {
            Some(Ok(c)) => Some(c.get::<HaStatus>("/api/v1/ha/status").await),
            Some(Err(e)) => Some(Err(ClientError::BadUrl(e.to_string()))),
            None => None,
        }
    };
    let dns_before = async {
        let t = Instant::now();
        (api.get::<DnsStatsWire>("/api/v1/dns/stats").await, t)
    };
    let config_fut = async {
        match node.enabled {
            true => Some(api.get::<AgreementView>("/api/v1/ha/config").await),
            false => None,
        }
    };
    let (peer, pools, (dns_before, t0), config) = tokio::join!(
        peer_fut,
        api.get::<Vec<PoolUsage>>("/api/v1/pools"),
        dns_before,
        config_fut
    );
    let config = match config {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) if e.is_not_found() => None,
        Some(Err(e)) => {
            problems.push(format!("config agreement: {e}"));
            None
        }
        None => None,
    };
    let (peer, peer_error) = match peer {
        Some(Ok(p)) => (Some(p), None),
        Some(Err(e)) => (None, Some(e.to_string())),
        None => (None, None),
    };
    let pools = match pools {
        Ok(p) => Some(p),
        Err(e) if e.is_not_found() => None,
        Err(e) => {
            problems.push(format!("pools: {e}"));
            None
        }
    };
    let dns = match dns_before {
        Ok(before) => {
            tokio::time::sleep(sample.saturating_sub(t0.elapsed())).await;
            let after = api.get::<DnsStatsWire>("/api/v1/dns/stats").await;
            let window_ms = t0.elapsed().as_millis() as u64;
            match after {
                Ok(after) => Some(DnsSample {
                    window_ms,
                    before: before.into(),
                    after: after.into(),
                }),
                Err(e) => {
                    problems.push(format!("DNS: {e}"));
                    None
                }
            }
        }
        Err(e) if e.is_not_found() => None,
        Err(e) => {
            problems.push(format!("DNS: {e}"));
            None
        }
    };
    Ok(StatusReport {
        api: api.base().to_string(),
        taken_at,
        node,
        peer,
        peer_error,
        pools,
        dns,
        config,
        problems,
    })
}

/// Longest reason shown on a transition line; `--json` has them whole.
const REASON_WIDTH: usize = 72;

/// The screen, for a report read at `now_ms`.
pub fn render(r: &StatusReport, now_ms: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "athena-dhcpd status from {} at {}",
        r.api,
        utc_datetime(r.taken_at)
    );
    let n = &r.node;
    s.push('\n');
    if !n.enabled {
        let _ = writeln!(
            s,
            "node {} ({}): HA off, serving standalone, state {}",
            n.node, n.role, n.state
        );
    } else {
        let _ = writeln!(
            s,
            "{:<10} {:<10} {:<8} {:>6} {:>10}  {:<5} LAST HEARD FROM ITS PEER",
            "NODE", "ROLE", "STATE", "EPOCH", "LEASE LOG", "LINK"
        );
        node_row(&mut s, n, now_ms);
        match &r.peer {
            Some(p) => node_row(&mut s, p, now_ms),
            None => {
                // What this node knows of its peer, from the peer link.
                let _ = writeln!(
                    s,
                    "{:<10} {:<10} {:<8} {:>6} {:>10}  {:<5} ?",
                    n.peer_node.as_deref().unwrap_or("(peer)"),
                    "?",
                    n.peer_state.map_or("?".to_string(), |st| st.to_string()),
                    n.peer_epoch.map_or("?".to_string(), |e| e.to_string()),
                    n.peer_lease_watermark
                        .map_or("?".to_string(), |w| w.to_string()),
                    if n.peer_connected { "up" } else { "down" },
                );
            }
        }
        if let Some(e) = &r.peer_error {
            let _ = writeln!(s, "  peer API: {e}");
        }
        pair_verdict(&mut s, r);
        if let Some(c) = &r.config {
            config_lines(&mut s, c);
        }
    }

    if !n.vips.is_empty() {
        s.push('\n');
        let _ = writeln!(
            s,
            "{:<12} {:<18} {:<10} {:<16} SINCE",
            "VIP", "ADDRESS", "INTERFACE", "HELD BY"
        );
        for v in &n.vips {
            let peer_v = r
                .peer
                .as_ref()
                .and_then(|p| p.vips.iter().find(|pv| pv.name == v.name).map(|pv| (p, pv)));
            let mut holders = Vec::new();
            let mut since = None;
            if v.held {
                holders.push(n.node.as_str());
                since = v.since;
            }
            if let Some((p, pv)) = peer_v {
                if pv.held {
                    holders.push(p.node.as_str());
                    since = since.or(pv.since);
                }
            }
            let held_by = match holders.len() {
                0 => "nobody".to_string(),
                1 => holders[0].to_string(),
                _ => format!("{} (BOTH)", holders.join("+")),
            };
            let since = since.map_or("-".to_string(), |t| {
                format!("{} ({})", clock(t), ago(now_ms, t))
            });
            let _ = writeln!(
                s,
                "{:<12} {:<18} {:<10} {:<16} {}",
                v.name, v.address, v.interface, held_by, since
            );
            let errors = std::iter::once((n.node.as_str(), v))
                .chain(peer_v.map(|(p, pv)| (p.node.as_str(), pv)));
            for (who, vs) in errors {
                if let Some(e) = &vs.last_error {
                    let _ = writeln!(s, "  error on {who}: {e}");
                }
            }
        }
    }

    if let Some(pools) = &r.pools {
        s.push('\n');
        let _ = writeln!(
            s,
            "{:<31} {:<18} {:>6} {:>8} {:>8} {:>7} {:>8} {:>6} {:>5}",
            "POOL",
            "SUBNET",
            "ACTIVE",
            "DECLINED",
            "CONFLICT",
            "OFFERED",
            "RESERVED",
            "FREE",
            "USED"
        );
        for p in pools {
            let _ = writeln!(
                s,
                "{:<31} {:<18} {:>6} {:>8} {:>8} {:>7} {:>8} {:>6} {:>4.0}%",
                p.pool,
                p.subnet,
                p.active,
                p.declined,
                p.conflict,
                p.offered,
                p.reserved,
                p.free,
                p.used_fraction() * 100.0
            );
        }
    }

    if let Some(d) = &r.dns {
        s.push('\n');
        let (h, lookups) = d.window_hits();
        let total = d.after.cache_hits + d.after.cache_misses;
        let _ = writeln!(
            s,
            "DNS  {:.1} queries/s over {:.1} s; cache hit rate {} now, {} since start",
            d.queries_per_second(),
            d.window_ms as f64 / 1000.0,
            percent(h, lookups),
            percent(d.after.cache_hits, total),
        );
    }

    let transitions = pair_transitions(r);
    s.push('\n');
    if transitions.is_empty() {
        let _ = writeln!(s, "HA TRANSITIONS: none since the nodes started");
    } else {
        let _ = writeln!(
            s,
            "LAST {} HA TRANSITIONS (UTC, oldest first)",
            transitions.len()
        );
        for (who, t) in transitions {
            let _ = writeln!(
                s,
                "{}  {:<10} {:>7} -> {:<7} epoch {:<4} {}",
                clock_ms(t.at),
                who,
                t.from.as_str(),
                t.to.as_str(),
                t.epoch,
                shorten(&t.reason, REASON_WIDTH)
            );
        }
    }
    for p in &r.problems {
        let _ = writeln!(s, "problem: {p}");
    }
    s
}

fn node_row(s: &mut String, n: &HaStatus, now_ms: u64) {
    let heard = match n.last_heartbeat {
        Some(t) => ago(now_ms, t),
        None => "never".to_string(),
    };
    let _ = writeln!(
        s,
        "{:<10} {:<10} {:<8} {:>6} {:>10}  {:<5} {}",
        n.node,
        n.role,
        n.state.as_str(),
        n.epoch,
        n.lease_watermark,
        if n.peer_connected { "up" } else { "down" },
        heard
    );
}

/// One line on what the two states mean together.
fn pair_verdict(s: &mut String, r: &StatusReport) {
    use crate::ha::HaState::Active;
    let mine = r.node.state;
    let theirs = r
        .peer
        .as_ref()
        .map(|p| p.state)
        .or(r.node.peer_state.filter(|_| r.node.peer_connected));
    let line = match (mine, theirs) {
        (Active, Some(Active)) => "pair: BOTH NODES ACTIVE (split brain)",
        (Active, _) => "pair: one node serves (this one)",
        (_, Some(Active)) => "pair: one node serves (the peer)",
        (_, Some(_)) => "pair: NO NODE IS ACTIVE",
        (_, None) => "pair: this node does not serve and the peer's state is unknown",
    };
    let _ = writeln!(s, "{line}");
}

/// Differences listed on the screen; `--json` and `/api/v1/ha/config` have them all.
const DIFFERENCES_SHOWN: usize = 3;

/// Whether both nodes serve one config, and the first differences when not.
fn config_lines(s: &mut String, c: &AgreementView) {
    let peer = c.peer.as_deref().unwrap_or("the peer");
    match c.agreed {
        Some(true) => {
            let _ = writeln!(s, "config: both nodes serve the same config");
        }
        Some(false) => {
            let _ = writeln!(
                s,
                "config: DIFFERS from {peer}'s in {}",
                if c.differing_sections.is_empty() {
                    "?".to_string()
                } else {
                    c.differing_sections.join(", ")
                }
            );
            if let Some(note) = &c.note {
                // Only the digests came (the peer link is down).
                let _ = writeln!(s, "  ({note})");
            }
            for d in c.differences.iter().take(DIFFERENCES_SHOWN) {
                let _ = writeln!(s, "  {}", shorten(&d.describe(peer), 100));
            }
            if c.differences.len() > DIFFERENCES_SHOWN {
                let _ = writeln!(
                    s,
                    "  and {} more (GET /api/v1/ha/config)",
                    c.differences.len() - DIFFERENCES_SHOWN
                );
            }
        }
        None => {
            let _ = writeln!(s, "config: not compared yet (no peer digest)");
        }
    }
}

/// Both nodes' transitions, oldest first, the latest [`TRANSITION_HISTORY`].
pub fn pair_transitions(r: &StatusReport) -> Vec<(&str, &HaTransition)> {
    let mut all: Vec<(&str, &HaTransition)> = r
        .node
        .transitions
        .iter()
        .map(|t| (r.node.node.as_str(), t))
        .chain(
            r.peer
                .iter()
                .flat_map(|p| p.transitions.iter().map(move |t| (p.node.as_str(), t))),
        )
        .collect();
    all.sort_by_key(|(_, t)| t.at);
    let skip = all.len().saturating_sub(TRANSITION_HISTORY);
    all.split_off(skip)
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!(
            "{:.0}% ({part}/{whole})",
            part as f64 * 100.0 / whole as f64
        )
    }
}

fn clock_ms(ms: u64) -> String {
    format!("{}.{:03}", clock(ms), ms % 1000)
}

fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let cut: String = text.chars().take(width.saturating_sub(3)).collect();
        format!("{cut}...")
    }
}

#[cfg(test)]
mod tests;
