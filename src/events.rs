//! Events and the bus that carries them from DHCP, HA and the VIP manager to hooks, the DNS
//! zone and the API.
//!
//! Invariants: publishing never blocks and never fails the publisher (DHCP and HA must not
//! wait on a slow consumer); each subscriber has its own bounded queue, so one slow consumer
//! cannot make another lose events; every event a full queue refuses is counted.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;

/// One thing that happened, as hooks and the API see it (JSON with a `type` field).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// `ha.failover`, `lease.ack`, ... (see [`crate::config::EVENT_TYPES`]).
    #[serde(rename = "type")]
    pub kind: &'static str,
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
}

/// `ha.*`: state changes and peer link news.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct HaEvent {
    pub old_state: String,
    pub new_state: String,
    /// A sentence a person can read: `peer heartbeat timeout after 10.0s`.
    pub reason: String,
    pub role: String,
    pub peer_state: Option<String>,
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
    pub fn new(kind: &'static str, node: impl Into<String>, data: EventData) -> Self {
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

/// A subscriber's end: events in publish order.
pub struct Subscription {
    pub name: String,
    pub rx: mpsc::Receiver<Arc<Event>>,
}

struct Subscriber {
    name: String,
    tx: mpsc::Sender<Arc<Event>>,
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
    published: AtomicU64,
    dropped: AtomicU64,
}

impl EventBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a subscriber whose queue holds up to `capacity` events.
    pub fn subscribe(&self, name: &str, capacity: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let sub = Subscriber {
            name: name.to_string(),
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        self.inner
            .subscribers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(sub);
        Subscription {
            name: name.to_string(),
            rx,
        }
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
            for s in subs.iter() {
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
                                event = event.kind,
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
            self.inner
                .subscribers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|s| !s.tx.is_closed());
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
            "ha.failover",
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

    #[test]
    fn event_json_has_type_and_flat_payload() {
        let e = Event {
            kind: "ha.failover",
            timestamp_ms: 1,
            node: "node-a".into(),
            data: EventData::Ha(HaEvent {
                old_state: "STANDBY".into(),
                new_state: "ACTIVE".into(),
                reason: "r".into(),
                role: "primary".into(),
                peer_state: None,
                epoch: 2,
            }),
        };
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).expect("json");
        assert_eq!(v["type"], "ha.failover");
        assert_eq!(v["ha"]["new_state"], "ACTIVE");
        assert_eq!(v["node"], "node-a");
    }
}
