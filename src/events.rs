//! Events and the bus that carries them from DHCP, HA and the VIP manager to hooks, the DNS
//! zone and the API.
//!
//! Invariants: publishing never blocks and never fails the publisher (DHCP and HA must not
//! wait on a slow consumer); each subscriber has its own bounded queue, so one slow consumer
//! cannot make another lose events; every event a full queue refuses is counted.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::Role;
use crate::ha::HaState;

/// Every event the daemon publishes. The serde name is the wire name hooks, webhooks, the SSE
/// stream and `events = [...]` patterns use; code matches on the variant, never on the text.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum EventKind {
    #[serde(rename = "lease.discover")]
    LeaseDiscover,
    #[serde(rename = "lease.offer")]
    LeaseOffer,
    #[serde(rename = "lease.ack")]
    LeaseAck,
    #[serde(rename = "lease.renew")]
    LeaseRenew,
    #[serde(rename = "lease.nak")]
    LeaseNak,
    #[serde(rename = "lease.release")]
    LeaseRelease,
    #[serde(rename = "lease.decline")]
    LeaseDecline,
    #[serde(rename = "lease.expire")]
    LeaseExpire,
    /// An address was found in use by a host that is not its client (conflict detection).
    #[serde(rename = "lease.conflict")]
    LeaseConflict,
    /// The HA state changed, or (old = new = ACTIVE) the service is announced again.
    #[serde(rename = "ha.failover")]
    HaFailover,
    #[serde(rename = "ha.peer_up")]
    HaPeerUp,
    #[serde(rename = "ha.peer_down")]
    HaPeerDown,
    #[serde(rename = "ha.sync_complete")]
    HaSyncComplete,
    #[serde(rename = "ha.split_brain")]
    HaSplitBrain,
    /// The two nodes' shared configs differ (payload: the differing keys with both values).
    #[serde(rename = "ha.config_mismatch")]
    HaConfigMismatch,
    /// They agree again after a mismatch.
    #[serde(rename = "ha.config_agreed")]
    HaConfigAgreed,
    /// One path to the peer went quiet while another still carries its heartbeats.
    #[serde(rename = "ha.path_down")]
    HaPathDown,
    #[serde(rename = "vip.claimed")]
    VipClaimed,
    #[serde(rename = "vip.released")]
    VipReleased,
    #[serde(rename = "vip.conflict")]
    VipConflict,
    #[serde(rename = "vip.error")]
    VipError,
    /// The lease database cannot be written (a commit failed); DHCPACKs wait until it can.
    #[serde(rename = "store.failed")]
    StoreFailed,
    /// The lease database was reopened and takes durable writes again.
    #[serde(rename = "store.healed")]
    StoreHealed,
}

impl EventKind {
    /// Every kind, in the order the docs and config errors list them.
    pub const ALL: [EventKind; 23] = [
        EventKind::LeaseDiscover,
        EventKind::LeaseOffer,
        EventKind::LeaseAck,
        EventKind::LeaseRenew,
        EventKind::LeaseNak,
        EventKind::LeaseRelease,
        EventKind::LeaseDecline,
        EventKind::LeaseExpire,
        EventKind::LeaseConflict,
        EventKind::HaFailover,
        EventKind::HaPeerUp,
        EventKind::HaPeerDown,
        EventKind::HaSyncComplete,
        EventKind::HaSplitBrain,
        EventKind::HaConfigMismatch,
        EventKind::HaConfigAgreed,
        EventKind::HaPathDown,
        EventKind::VipClaimed,
        EventKind::VipReleased,
        EventKind::VipConflict,
        EventKind::VipError,
        EventKind::StoreFailed,
        EventKind::StoreHealed,
    ];

    /// The wire name (the same string serde writes).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::LeaseDiscover => "lease.discover",
            EventKind::LeaseOffer => "lease.offer",
            EventKind::LeaseAck => "lease.ack",
            EventKind::LeaseRenew => "lease.renew",
            EventKind::LeaseNak => "lease.nak",
            EventKind::LeaseRelease => "lease.release",
            EventKind::LeaseDecline => "lease.decline",
            EventKind::LeaseExpire => "lease.expire",
            EventKind::LeaseConflict => "lease.conflict",
            EventKind::HaFailover => "ha.failover",
            EventKind::HaPeerUp => "ha.peer_up",
            EventKind::HaPeerDown => "ha.peer_down",
            EventKind::HaSyncComplete => "ha.sync_complete",
            EventKind::HaSplitBrain => "ha.split_brain",
            EventKind::HaConfigMismatch => "ha.config_mismatch",
            EventKind::HaConfigAgreed => "ha.config_agreed",
            EventKind::HaPathDown => "ha.path_down",
            EventKind::VipClaimed => "vip.claimed",
            EventKind::VipReleased => "vip.released",
            EventKind::VipConflict => "vip.conflict",
            EventKind::VipError => "vip.error",
            EventKind::StoreFailed => "store.failed",
            EventKind::StoreHealed => "store.healed",
        }
    }

    /// Does a hook/SSE pattern (`"ha.failover"`, `"ha.*"`, `"*"`) select this kind?
    pub fn matches(self, pattern: &str) -> bool {
        pattern_matches(pattern, self.as_str())
    }

    /// Is `pattern` one that selects at least one event? (A typo like `"vip.claim"` is not.)
    pub fn pattern_is_known(pattern: &str) -> bool {
        Self::ALL.iter().any(|k| k.matches(pattern))
    }

    /// This kind's bit in a [`KindMask`] (its place in [`EventKind::ALL`]).
    fn bit(self) -> u64 {
        1 << (self as u32)
    }

    /// The wire names, comma separated, for error messages.
    pub fn names() -> String {
        Self::ALL.map(EventKind::as_str).join(", ")
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Comparing with a wire name reads naturally in tests and log filters; decisions in the
/// daemon compare variants.
impl PartialEq<&str> for EventKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Does an event pattern (`"ha.failover"`, `"ha.*"`, `"*"`) match an event name?
pub fn pattern_matches(pattern: &str, event: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix(".*") {
        return event
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with('.'));
    }
    pattern == event
}

/// One thing that happened, as hooks and the API see it (JSON with a `type` field).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// `ha.failover`, `lease.ack`, ...
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Unix time in milliseconds.
    pub timestamp_ms: u64,
    /// The node that emitted it.
    pub node: String,
    #[serde(flatten)]
    pub data: EventData,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum EventData {
    Ha(HaEvent),
    Lease(LeaseEvent),
    Vip(VipEvent),
    Config(ConfigEvent),
    Store(StoreEvent),
}

/// `ha.config_*`: what differs between the two nodes' shared configs.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ConfigEvent {
    pub peer: String,
    /// `subnet 10.0.0.0/24 pool[0].range_end: 10.0.0.200 here, 10.0.0.199 on node-b`; empty
    /// when they agree again.
    pub differences: Vec<String>,
}

/// `store.*`: the lease database failed or healed.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct StoreEvent {
    /// The database file.
    pub path: String,
    /// Why it cannot be written (`No space left on device`); `None` once healed.
    pub reason: Option<String>,
}

/// `ha.*`: state changes and peer link news.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct HaEvent {
    pub old_state: HaState,
    pub new_state: HaState,
    /// A sentence a person can read: `peer heartbeat timeout after 10.0s`.
    pub reason: String,
    pub role: Role,
    pub peer_state: Option<HaState>,
    pub epoch: u64,
}

/// `lease.*`: one lease changed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LeaseEvent {
    pub ip: Ipv4Addr,
    pub mac: String,
    pub hostname: Option<String>,
    /// Hex, colon separated.
    pub client_id: Option<String>,
    /// The subnet in CIDR form.
    pub subnet: String,
    /// Unix seconds.
    pub lease_start: u64,
    pub lease_expiry: u64,
    pub lease_duration: u64,
}

/// `vip.*`: the floating IP was claimed, released, contested or failed.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct VipEvent {
    /// With prefix: `10.0.0.3/24`.
    pub address: String,
    pub interface: String,
    pub mac: Option<String>,
    /// Gratuitous ARPs (or unsolicited NAs) sent in this claim.
    pub arps: u32,
    pub duration_ms: f64,
    /// For `vip.conflict`: the other claimant's MAC; for `vip.error`: what failed.
    pub detail: Option<String>,
    pub peer_ip: Option<IpAddr>,
}

impl Event {
    pub fn new(kind: EventKind, node: impl Into<String>, data: EventData) -> Self {
        Event {
            kind,
            timestamp_ms: now_ms(),
            node: node.into(),
            data,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"type\":\"{}\"}}", self.kind))
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The kinds a subscriber takes, one bit per [`EventKind`]; shared with the bus, so a
/// subscriber narrows or widens it while subscribed (the hooks follow their patterns across
/// a reload). Publishers ask [`EventBus::wants`] before building an event: with no hook,
/// no SSE stream and no DNS zone fed from leases, a DHCP exchange builds no event at all
/// (the events' construction, queueing and routing were ~15% of the server's CPU per
/// exchange in `benches/dhcp.sh`'s profile).
#[derive(Clone, Debug)]
pub struct KindMask(Arc<MaskCell>);

#[derive(Debug, Default)]
struct MaskCell {
    bits: AtomicU64,
    /// The bus of the subscription this mask belongs to: told of every change, so its union
    /// of all masks ([`EventBus::wants`]) never misses a kind a subscriber takes.
    bus: OnceLock<Weak<BusInner>>,
}

impl KindMask {
    pub fn all() -> Self {
        KindMask::of(EventKind::ALL)
    }

    pub fn of(kinds: impl IntoIterator<Item = EventKind>) -> Self {
        let m = KindMask(Arc::default());
        m.set(kinds);
        m
    }

    /// Replaces the kinds taken from the next publish on.
    pub fn set(&self, kinds: impl IntoIterator<Item = EventKind>) {
        let bits = kinds.into_iter().fold(0, |b, k| b | k.bit());
        self.0.bits.store(bits, Ordering::Relaxed);
        if let Some(bus) = self.0.bus.get().and_then(Weak::upgrade) {
            bus.refresh_wanted();
        }
    }

    pub fn has(&self, kind: EventKind) -> bool {
        self.bits() & kind.bit() != 0
    }

    fn bits(&self) -> u64 {
        self.0.bits.load(Ordering::Relaxed)
    }
}

/// A subscriber's end: events in publish order.
pub struct Subscription {
    pub name: String,
    pub rx: mpsc::Receiver<Arc<Event>>,
    /// What it takes; all kinds unless subscribed with [`EventBus::subscribe_to`].
    pub kinds: KindMask,
    /// Last, so `rx` is closed by the time it runs.
    _leave: Leave,
}

/// Tells the bus that a subscription ended, so what it took stops counting in
/// [`EventBus::wants`] at once. A receiver moved out of its subscription (the SSE stream)
/// outlives this; the first publish that finds it closed prunes it instead.
struct Leave(Weak<BusInner>);

impl Drop for Leave {
    fn drop(&mut self) {
        if let Some(bus) = self.0.upgrade() {
            bus.refresh_wanted();
        }
    }
}

struct Subscriber {
    name: String,
    tx: mpsc::Sender<Arc<Event>>,
    kinds: KindMask,
    dropped: Arc<AtomicU64>,
}

/// Fan-out with a bounded queue per subscriber. Cheap to clone.
#[derive(Clone, Default)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

#[derive(Default)]
struct BusInner {
    subscribers: RwLock<Vec<Subscriber>>,
    /// The union of the open subscribers' kinds: what [`EventBus::wants`] reads on the hot
    /// path without taking the lock. Recomputed when a subscriber comes, changes its mask or
    /// goes; a closed one may count until then, never a taken kind not.
    wanted: AtomicU64,
    published: AtomicU64,
    dropped: AtomicU64,
}

impl BusInner {
    /// Drops closed subscribers and recomputes `wanted`. Under the write lock, so of two
    /// refreshes racing the one that stores last also read the masks last.
    fn refresh_wanted(&self) {
        let mut subs = self.subscribers.write().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| !s.tx.is_closed());
        let union = subs.iter().fold(0, |u, s| u | s.kinds.bits());
        self.wanted.store(union, Ordering::Relaxed);
    }
}

impl EventBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a subscriber of every kind whose queue holds up to `capacity` events.
    pub fn subscribe(&self, name: &str, capacity: usize) -> Subscription {
        self.subscribe_to(name, capacity, KindMask::all())
    }

    /// Adds a subscriber of the kinds in `kinds` (which it may change later).
    pub fn subscribe_to(&self, name: &str, capacity: usize, kinds: KindMask) -> Subscription {
        let bus = Arc::downgrade(&self.inner);
        // A mask already subscribed elsewhere reports to that bus only: this subscription
        // gets a copy of its own.
        let kinds = match kinds.0.bus.set(bus.clone()) {
            Ok(()) => kinds,
            Err(bus) => {
                let copy = KindMask(Arc::default());
                copy.0.bits.store(kinds.bits(), Ordering::Relaxed);
                let _ = copy.0.bus.set(bus);
                copy
            }
        };
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let sub = Subscriber {
            name: name.to_string(),
            tx,
            kinds: kinds.clone(),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        self.inner
            .subscribers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(sub);
        self.inner.refresh_wanted();
        Subscription {
            name: name.to_string(),
            rx,
            kinds,
            _leave: Leave(bus),
        }
    }

    /// Whether any open subscriber takes `kind`: a publisher on a hot path checks this
    /// before it builds the event. One atomic load, no lock.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.inner.wanted.load(Ordering::Relaxed) & kind.bit() != 0
    }

    /// Delivers to every subscriber that has room; never waits.
    pub fn publish(&self, event: Event) {
        let event = Arc::new(event);
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        let mut closed = false;
        {
            let subs = self
                .inner
                .subscribers
                .read()
                .unwrap_or_else(|e| e.into_inner());
            for s in subs.iter().filter(|s| s.kinds.has(event.kind)) {
                match s.tx.try_send(event.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                        // Log the first drop and then every 1000th, not every one: a storm
                        // of lease events must not become a storm of log lines.
                        let n = s.dropped.fetch_add(1, Ordering::Relaxed);
                        if n % 1000 == 0 {
                            tracing::warn!(
                                subscriber = %s.name,
                                event = event.kind.as_str(),
                                dropped_total = n + 1,
                                "event queue of {} is full, dropped {} event",
                                s.name,
                                event.kind
                            );
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
                }
            }
        }
        if closed {
            self.inner.refresh_wanted();
        }
    }

    pub fn published(&self) -> u64 {
        self.inner.published.load(Ordering::Relaxed)
    }

    /// Events refused by full queues, over all subscribers.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ha(n: u64) -> Event {
        Event::new(
            EventKind::HaFailover,
            "n",
            EventData::Ha(HaEvent {
                epoch: n,
                ..Default::default()
            }),
        )
    }

    #[tokio::test]
    async fn each_subscriber_gets_events_in_order() {
        let bus = EventBus::new();
        let mut a = bus.subscribe("a", 8);
        let mut b = bus.subscribe("b", 8);
        for i in 0..3 {
            bus.publish(ha(i));
        }
        for sub in [&mut a, &mut b] {
            for i in 0..3 {
                let e = sub.rx.recv().await.expect("event");
                assert!(matches!(&e.data, EventData::Ha(h) if h.epoch == i));
            }
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking_others() {
        let bus = EventBus::new();
        let _slow = bus.subscribe("slow", 1);
        let mut fast = bus.subscribe("fast", 16);
        for i in 0..5 {
            bus.publish(ha(i));
        }
        assert_eq!(bus.dropped(), 4);
        assert_eq!(bus.published(), 5);
        for i in 0..5 {
            let e = fast.rx.recv().await.expect("event");
            assert!(matches!(&e.data, EventData::Ha(h) if h.epoch == i));
        }
    }

    #[tokio::test]
    async fn a_subscriber_gets_only_its_kinds_and_publishers_can_ask_first() {
        let bus = EventBus::new();
        assert!(
            !bus.wants(EventKind::HaFailover),
            "no subscriber, nobody wants it"
        );
        let mut vip = bus.subscribe_to("vip", 8, KindMask::of([EventKind::VipClaimed]));
        assert!(!bus.wants(EventKind::HaFailover));
        assert!(bus.wants(EventKind::VipClaimed));
        bus.publish(ha(1));
        assert!(vip.rx.try_recv().is_err(), "an unwanted kind was delivered");
        assert_eq!(bus.dropped(), 0, "a kind not taken is not a drop");
        // Widened while subscribed (a reload that adds a hook).
        vip.kinds
            .set([EventKind::VipClaimed, EventKind::HaFailover]);
        assert!(bus.wants(EventKind::HaFailover));
        bus.publish(ha(2));
        let e = vip.rx.recv().await.expect("event");
        assert!(matches!(&e.data, EventData::Ha(h) if h.epoch == 2));
        // Every kind has a bit of its own.
        let all = KindMask::all();
        assert!(EventKind::ALL.iter().all(|k| all.has(*k)));
        let bits: std::collections::HashSet<u64> = EventKind::ALL.iter().map(|k| k.bit()).collect();
        assert_eq!(bits.len(), EventKind::ALL.len());
        drop(vip);
        assert!(
            !bus.wants(EventKind::VipClaimed),
            "a closed subscriber wants nothing"
        );
    }

    #[test]
    fn a_subscriber_dropping_its_kind_makes_wants_false_again() {
        let bus = EventBus::new();
        let hooks = bus.subscribe_to(
            "hooks",
            8,
            KindMask::of([EventKind::LeaseAck, EventKind::VipClaimed]),
        );
        assert!(bus.wants(EventKind::LeaseAck));
        // A reload that removes the only hook on lease.ack.
        hooks.kinds.set([EventKind::VipClaimed]);
        assert!(!bus.wants(EventKind::LeaseAck), "nobody takes it any more");
        assert!(bus.wants(EventKind::VipClaimed));
        // While another subscriber takes it, it stays wanted; when that one goes, not.
        let other = bus.subscribe_to("other", 8, KindMask::of([EventKind::LeaseAck]));
        hooks.kinds.set([]);
        assert!(bus.wants(EventKind::LeaseAck));
        assert!(!bus.wants(EventKind::VipClaimed));
        drop(other);
        assert!(!bus.wants(EventKind::LeaseAck));
        // A receiver taken out of its subscription (the SSE stream) counts while it lives;
        // the first publish after it is gone prunes it.
        let rx = bus.subscribe("sse", 8).rx;
        assert!(bus.wants(EventKind::HaFailover));
        drop(rx);
        bus.publish(ha(1));
        assert!(!bus.wants(EventKind::HaFailover));
        // A mask subscribed twice: each subscription answers for its own bus.
        let mask = KindMask::of([EventKind::HaPeerUp]);
        let first = bus.subscribe_to("first", 8, mask.clone());
        let bus2 = EventBus::new();
        let second = bus2.subscribe_to("second", 8, mask);
        second.kinds.set([]);
        assert!(!bus2.wants(EventKind::HaPeerUp));
        assert!(
            bus.wants(EventKind::HaPeerUp),
            "the first bus still has its subscriber"
        );
        first.kinds.set([]);
        assert!(!bus.wants(EventKind::HaPeerUp));
    }

    #[test]
    fn event_json_has_type_and_flat_payload() {
        let e = Event {
            kind: EventKind::HaFailover,
            timestamp_ms: 1,
            node: "node-a".into(),
            data: EventData::Ha(HaEvent {
                old_state: HaState::Standby,
                new_state: HaState::Active,
                reason: "r".into(),
                role: Role::Primary,
                peer_state: Some(HaState::Fault),
                epoch: 2,
            }),
        };
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).expect("json");
        assert_eq!(v["type"], "ha.failover");
        assert_eq!(v["ha"]["new_state"], "ACTIVE");
        assert_eq!(v["ha"]["old_state"], "STANDBY");
        assert_eq!(v["ha"]["peer_state"], "FAULT");
        assert_eq!(v["ha"]["role"], "primary");
        assert_eq!(v["node"], "node-a");
    }

    #[test]
    fn every_kind_serialises_to_its_wire_name_and_back() {
        for k in EventKind::ALL {
            let json = serde_json::to_string(&k).expect("json");
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            let back: EventKind = serde_json::from_str(&json).expect("parse");
            assert_eq!(back, k);
        }
    }

    #[test]
    fn patterns_select_by_name_family_or_all() {
        assert!(EventKind::HaFailover.matches("ha.failover"));
        assert!(!EventKind::HaPeerUp.matches("ha.failover"));
        assert!(EventKind::HaPeerUp.matches("ha.*"));
        assert!(!EventKind::HaFailover.matches("lease.*"));
        assert!(EventKind::VipClaimed.matches("*"));
        assert!(EventKind::pattern_is_known("vip.*"));
        assert!(!EventKind::pattern_is_known("vip.claim"));
        assert!(!EventKind::pattern_is_known("dns.*"));
    }
}
