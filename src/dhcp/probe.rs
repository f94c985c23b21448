//! Conflict detection in the DHCP server: an OFFER of an address that is not the client's
//! own waits for the prober's verdict off the receive path; an address found in use is
//! recorded as a conflict (durable, replicated like a lease) and the next candidate is
//! probed, up to `max_probes_per_discover`. Late answers and ARP sightings come in from the
//! prober and are judged here against the leases ([`judge_sighting`], pure).
//!
//! Invariants: no receive task waits for a probe; an OFFER never leaves for an address that
//! answered; only a serving node records conflicts or sends the delayed OFFER; lock order as
//! everywhere: handler state, then the lease index.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::handler::{handle, Ingress};
use super::packet::{Reply, Request};
use super::plan::Plan;
use super::server::{send_reply, try_send_reply, ReplyTo, Shared};
use crate::config::Dur;
use crate::conflict::api::{ClearError, ClearRequest};
use crate::conflict::{log_conflict, ConflictMetrics, Prober, Sighting, Source, Verdict, Via};
use crate::events::{Event, EventData, EventKind};
use crate::lease::{Lease, LeaseIndex, LeaseState};

/// What the server probes with (absent when `[conflict_detection] enabled = false`).
pub struct Probing {
    pub prober: Prober,
    pub hold: Dur,
    pub max_probes: u32,
    pub metrics: ConflictMetrics,
}

/// How to probe `ip` for this request: ARP out of the interface it came in on when the
/// subnet is attached there (named as its interface, or the interface has an address in it),
/// else ICMP (a subnet behind a relay). A relayed request from an attached subnet is probed
/// by ARP too: an echo to an on-link address would make the kernel resolve it first, one
/// neighbour entry per probe, and at a few thousand a second the table overflows
/// (`gc_thresh3`) and the echoes cannot be sent.
pub(super) fn via_for(plan: &Plan, ing: &Ingress, ifindex: u32, ip: Ipv4Addr) -> Via {
    let attached = ifindex != 0
        && plan.subnet_of(ip).is_some_and(|i| {
            let s = &plan.subnets[i];
            s.interface
                .as_deref()
                .is_some_and(|n| Some(n) == ing.ifname.as_deref())
                || ing.if_addrs.iter().any(|n| s.network.contains(&n.addr()))
        });
    if attached {
        Via::Arp { ifindex }
    } else {
        Via::Icmp
    }
}

/// Where the delayed OFFER goes once its address is found free.
pub(super) struct Pending {
    pub req: Request,
    pub ingress: Ingress,
    pub to: ReplyTo,
    pub t0: Instant,
}

/// An OFFER waiting for its address's probe: what it takes to send it, or to ask the
/// handler for the next candidate when the address is in use.
pub(super) struct HeldOffer {
    pub sh: Arc<Shared>,
    pub pending: Pending,
    pub ip: Ipv4Addr,
    pub via: Via,
    pub reply: Reply,
    /// Its `lease.offer` event, published when the OFFER leaves.
    pub events: Vec<Event>,
    /// Which candidate this is (1: the handler's first choice).
    pub attempt: u32,
}

/// Probes the offer's address, counting the timeout from `since`; the prober's task sends
/// the OFFER (and publishes its event) when the address is found free. No task waits: the
/// offer is the probe's continuation, one allocation.
pub(super) fn offer_when_free(o: HeldOffer, since: Instant) {
    let sh = o.sh.clone();
    let Some(probing) = sh.probing.as_ref() else {
        return;
    };
    let (ip, via) = (o.ip, o.via);
    probing
        .prober
        .probe_then(ip, via, since, Box::new(move |v| on_verdict(o, v)));
}

/// Runs on the prober's task: must not wait. A free address's OFFER leaves at once; an
/// address in use is recorded (which waits for the disk) on a task of its own.
fn on_verdict(o: HeldOffer, verdict: Verdict) {
    if !o.sh.ha.borrow().serves() {
        o.sh.metrics.ignored("not_active");
        return;
    }
    match verdict {
        Verdict::Free => {
            let HeldOffer {
                sh,
                pending: p,
                reply,
                events,
                ..
            } = o;
            sh.announce.now(events);
            if try_send_reply(&sh, &p.to, &reply) {
                sh.metrics
                    .offer_latency
                    .observe(p.t0.elapsed().as_secs_f64());
            } else {
                // The socket's buffer is full: wait for it off the prober's task.
                tokio::spawn(async move {
                    send_reply(&sh, &p.to, &reply).await;
                    sh.metrics
                        .offer_latency
                        .observe(p.t0.elapsed().as_secs_f64());
                });
            }
        }
        Verdict::InUse { mac } => {
            tokio::spawn(next_candidate(o, mac));
        }
    }
}

/// The offered address answered: records the conflict and probes the handler's next
/// candidate, up to `max_probes_per_discover`.
async fn next_candidate(mut o: HeldOffer, mac: Option<[u8; 6]>) {
    let sh = o.sh.clone();
    let Some(probing) = sh.probing.as_ref() else {
        return;
    };
    record(&sh, probing, o.ip, mac, Source::Probe).await;
    if o.attempt >= probing.max_probes {
        sh.metrics.ignored("conflict_probes_exhausted");
        return;
    }
    let p = &o.pending;
    let now = crate::events::now_ms();
    let (out, via) = {
        let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut ix = sh.store.index();
        let out = handle(&mut st, &mut ix, &p.req, &p.ingress, now);
        let via = out
            .probe
            .map(|ip| via_for(&st.plan, &p.ingress, p.to.ifindex, ip));
        (out, via)
    };
    // The DISCOVER itself was announced with the first candidate.
    let events: Vec<Event> = out
        .events
        .into_iter()
        .filter(|(k, _)| *k != EventKind::LeaseDiscover && sh.announce.wants(*k))
        .map(|(k, ev)| Event::new(k, sh.node.clone(), EventData::Lease(ev)))
        .collect();
    match (out.reply, out.probe.zip(via)) {
        (Some(r), Some((next, via))) => {
            o.reply = r;
            o.ip = next;
            o.via = via;
            o.events = events;
            o.attempt += 1;
            offer_when_free(o, Instant::now());
        }
        (Some(r), None) => {
            sh.announce.now(events);
            send_reply(&sh, &p.to, &r).await;
        }
        (None, _) => {
            sh.metrics.ignored(out.ignored.unwrap_or("no_free_address"));
        }
    }
}

/// Records `ip` as in use by `mac`, durably and on the standby, then logs, counts and
/// announces it.
async fn record(
    sh: &Shared,
    probing: &Probing,
    ip: Ipv4Addr,
    mac: Option<[u8; 6]>,
    source: Source,
) {
    let now = crate::events::now_ms();
    let (lease, pending) = {
        let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut ix = sh.store.index();
        let hold_s = probing.hold.0.as_secs().max(1);
        let Some(l) = st.record_conflict(&mut ix, ip, mac.unwrap_or_default(), hold_s, now) else {
            return;
        };
        let pending = sh.store.submit(vec![l.clone()]);
        (l, pending)
    };
    commit_and_replicate(sh, pending, lease.clone()).await;
    probing.metrics.conflict(source);
    if lease.state == (LeaseState::Conflict { seen: 1 }) {
        log_conflict(ip, mac, probing.hold, source);
    } else {
        tracing::debug!(ip = %ip, "address conflict on {ip} seen again ({:?})", lease.state);
    }
    sh.announce.now(vec![Event::new(
        EventKind::LeaseConflict,
        sh.node.clone(),
        EventData::Lease(lease.event()),
    )]);
}

async fn commit_and_replicate(
    sh: &Shared,
    pending: crate::lease::store::PendingCommit,
    lease: Lease,
) {
    if let Err(e) = pending.wait().await {
        sh.metrics.commit_failed.inc();
        tracing::error!(ip = %lease.ip, "recording the conflict on {} failed: {e}", lease.ip);
        return;
    }
    if let Some(rep) = &sh.replication {
        sh.metrics
            .replicated(rep.replicate(vec![lease], sh.max_ack_delay).await);
    }
}

/// Should an address heard outside a probe be recorded as a conflict? When it lies in a
/// subnet of ours and is claimed by a MAC that is not its holder's: leased to another
/// client, reserved for another, or free in a pool. An ICMP answer (no MAC) counts only for
/// an address nobody holds: a client answers ping for its own lease. A conflict already
/// held for the same MAC is refreshed once half its hold has passed, not on every ARP.
pub fn judge_sighting(
    plan: &Plan,
    leases: &LeaseIndex,
    s: &Sighting,
    hold_s: u64,
    now_ms: u64,
) -> bool {
    let Some(si) = plan.subnet_of(s.ip) else {
        return false;
    };
    let subnet = &plan.subnets[si];
    let now_s = now_ms / 1000;
    match leases.get(s.ip) {
        Some(l) if l.state.holds() && l.expiry > now_s => match l.state {
            LeaseState::Conflict { .. } => {
                s.mac.is_some_and(|m| m != l.mac)
                    || (s.mac == Some(l.mac) || l.mac == [0; 6])
                        && now_ms.saturating_sub(l.updated_ms) >= hold_s * 500
            }
            LeaseState::Active => s.mac.is_some_and(|m| m != l.mac),
            // Declined: already held back.
            _ => false,
        },
        _ => {
            if subnet.reserved.contains_key(&s.ip) {
                // Reserved for a MAC other than the one heard; a reservation by client-id
                // names no MAC, so its holder could be anyone: not judged.
                s.mac
                    .is_some_and(|m| subnet.by_mac.get(&m).is_none_or(|r| r.ip != s.ip))
                    && subnet.by_client_id.values().all(|r| r.ip != s.ip)
            } else {
                // In a pool whatever classes it serves: a host squatting it is a conflict.
                subnet.pool_of(s.ip).is_some()
            }
        }
    }
}

/// Late answers and ARP sightings from the prober, and the API's clear requests.
pub(super) async fn conflict_loop(
    sh: Arc<Shared>,
    mut sightings: Option<mpsc::Receiver<Sighting>>,
    mut clears: mpsc::Receiver<ClearRequest>,
    shutdown: CancellationToken,
) {
    loop {
        let sighting = async {
            match sightings.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            s = sighting => match s {
                Some(s) => sighted(&sh, s).await,
                None => sightings = None,
            },
            c = clears.recv() => match c {
                Some(c) => {
                    let r = clear(&sh, c.ip).await;
                    let _ = c.done.send(r);
                }
                None => return,
            },
        }
    }
}

async fn sighted(sh: &Shared, s: Sighting) {
    let Some(probing) = sh.probing.as_ref() else {
        return;
    };
    if !sh.ha.borrow().serves() {
        return;
    }
    let conflict = {
        let st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
        let ix = sh.store.index();
        judge_sighting(
            &st.plan,
            &ix,
            &s,
            probing.hold.0.as_secs(),
            crate::events::now_ms(),
        )
    };
    if conflict {
        let source = if s.late {
            Source::LateReply
        } else {
            Source::PassiveArp
        };
        record(sh, probing, s.ip, s.mac, source).await;
    }
}

/// An admin cleared the conflict on `ip`: the record ends (expired now, replicated) and the
/// address may be offered again.
async fn clear(sh: &Shared, ip: Ipv4Addr) -> Result<(), ClearError> {
    if !sh.ha.borrow().serves() {
        return Err(ClearError::NotServing);
    }
    let now = crate::events::now_ms();
    let (lease, pending) = {
        let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut ix = sh.store.index();
        let l = ix
            .get(ip)
            .filter(|l| l.state.is_conflict() && l.expiry > now / 1000)
            .cloned()
            .ok_or(ClearError::NotFound(ip))?;
        let l = Lease {
            state: LeaseState::Expired,
            expiry: now / 1000,
            updated_ms: now.max(l.updated_ms + 1),
            ..l
        };
        ix.upsert(l.clone());
        st.conflict_cleared(ip);
        (l.clone(), sh.store.submit(vec![l]))
    };
    pending
        .wait()
        .await
        .map_err(|e| ClearError::Store(e.to_string()))?;
    if let Some(rep) = &sh.replication {
        sh.metrics
            .replicated(rep.replicate(vec![lease], sh.max_ack_delay).await);
    }
    tracing::info!(ip = %ip, "address conflict on {ip} cleared; it may be offered again");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
[[subnet]]
network = "10.0.0.0/24"
[[subnet.pool]]
range_start = "10.0.0.100"
range_end = "10.0.0.150"
[[subnet.reservation]]
mac = "02:00:00:00:00:aa"
ip = "10.0.0.50"
"#;
    const NOW: u64 = 1_700_000_000_000;
    const OTHER: [u8; 6] = [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];

    fn plan() -> Plan {
        Plan::from_config(
            &crate::config::parse(CFG, std::path::Path::new("t.toml")).expect("config"),
        )
    }

    fn seen(last: u8, mac: Option<[u8; 6]>) -> Sighting {
        Sighting {
            ip: Ipv4Addr::new(10, 0, 0, last),
            mac,
            late: false,
        }
    }

    fn lease(last: u8, mac: [u8; 6], state: LeaseState, updated_ms: u64) -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 0, 0, last),
            mac,
            client_id: None,
            hostname: None,
            subnet: "10.0.0.0/24".into(),
            state,
            start: NOW / 1000 - 10,
            expiry: NOW / 1000 + 3000,
            updated_ms,
            relay_info: None,
            classes: Vec::new(),
        }
    }

    #[test]
    fn a_claim_on_another_clients_lease_or_a_free_pool_address_is_a_conflict() {
        let (p, mut ix) = (plan(), LeaseIndex::new());
        let client = [2, 0, 0, 0, 0, 1];
        ix.upsert(lease(100, client, LeaseState::Active, NOW));
        assert!(judge_sighting(&p, &ix, &seen(100, Some(OTHER)), 3600, NOW));
        assert!(
            !judge_sighting(&p, &ix, &seen(100, Some(client)), 3600, NOW),
            "its own"
        );
        assert!(
            !judge_sighting(&p, &ix, &seen(100, None), 3600, NOW),
            "a ping answer"
        );
        assert!(
            judge_sighting(&p, &ix, &seen(120, Some(OTHER)), 3600, NOW),
            "free pool"
        );
        assert!(
            judge_sighting(&p, &ix, &seen(120, None), 3600, NOW),
            "late ping answer"
        );
        assert!(
            !judge_sighting(&p, &ix, &seen(20, Some(OTHER)), 3600, NOW),
            "not pooled"
        );
        assert!(
            !judge_sighting(&p, &ix, &seen(1, Some(OTHER)), 3600, NOW),
            "router"
        );
        let outside = Sighting {
            ip: Ipv4Addr::new(192, 168, 1, 1),
            mac: Some(OTHER),
            late: false,
        };
        assert!(!judge_sighting(&p, &ix, &outside, 3600, NOW));
    }

    #[test]
    fn an_attached_subnet_is_probed_by_arp_and_one_behind_a_relay_by_icmp() {
        let p = plan();
        let ing = |net: &str| Ingress {
            ifname: Some("eth1".into()),
            if_addrs: vec![net.parse().expect("net")].into(),
            dst: Ipv4Addr::BROADCAST,
        };
        let ip = Ipv4Addr::new(10, 0, 0, 120);
        // Relayed or not, an address on the link the request came in on is asked by ARP.
        assert_eq!(
            via_for(&p, &ing("10.0.0.1/24"), 4, ip),
            Via::Arp { ifindex: 4 }
        );
        assert_eq!(via_for(&p, &ing("10.1.0.1/24"), 4, ip), Via::Icmp);
        assert_eq!(via_for(&p, &ing("10.0.0.1/24"), 0, ip), Via::Icmp);
    }

    #[test]
    fn a_reserved_address_is_judged_by_the_reservations_mac() {
        let (p, ix) = (plan(), LeaseIndex::new());
        assert!(!judge_sighting(
            &p,
            &ix,
            &seen(50, Some([2, 0, 0, 0, 0, 0xaa])),
            3600,
            NOW
        ));
        assert!(judge_sighting(&p, &ix, &seen(50, Some(OTHER)), 3600, NOW));
    }

    #[test]
    fn a_held_conflict_is_refreshed_only_after_half_its_hold() {
        let (p, mut ix) = (plan(), LeaseIndex::new());
        ix.upsert(lease(120, OTHER, LeaseState::Conflict { seen: 1 }, NOW));
        let s = seen(120, Some(OTHER));
        assert!(!judge_sighting(&p, &ix, &s, 3600, NOW + 60_000));
        assert!(judge_sighting(&p, &ix, &s, 3600, NOW + 1_800_000));
        // Another MAC on the same address: recorded at once.
        assert!(judge_sighting(
            &p,
            &ix,
            &seen(120, Some([2, 0, 0, 0, 0, 9])),
            3600,
            NOW
        ));
    }
}
