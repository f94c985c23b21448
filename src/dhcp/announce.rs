//! Lease events (`lease.ack`, `lease.release`, ...) published only once what they announce is
//! true: a hook or the DNS zone that sees `lease.ack` can rely on the lease being on disk
//! (and, with HA, replicated or `ha.max_ack_delay` passed), exactly like the client that got
//! the DHCPACK. A commit that fails withholds the ACK and publishes nothing.
//!
//! Invariants: events are published in the order their requests were handled (the receive
//! loop queues them under the handler lock, where it also submits the commit), so an ack and
//! a later release of the same address never reach the bus swapped, however the commits'
//! replication waits resolve; an event whose outcome needs no commit (`lease.offer`,
//! `lease.nak`) waits only for the ones queued before it.

use tokio::sync::{mpsc, oneshot};

use crate::events::{Event, EventBus};

/// The receive loop's end: queues the events of one handled request.
#[derive(Clone)]
pub struct Announcer {
    tx: mpsc::UnboundedSender<Announcement>,
    /// Asked before an event is built: nobody may want it.
    bus: EventBus,
}

struct Announcement {
    events: Vec<Event>,
    /// `None`: nothing to wait for. Otherwise resolved once the commit is durable (and
    /// replicated); dropped unresolved when it failed.
    durable: Option<oneshot::Receiver<()>>,
}

/// Given to whoever waits for the commit: [`Durable::confirm`] it once the ACK may leave;
/// dropping it (a failed commit) discards the events.
pub struct Durable(oneshot::Sender<()>);

impl Durable {
    pub fn confirm(self) {
        // The publisher is gone only at shutdown, when nobody listens any more.
        let _ = self.0.send(());
    }
}

impl Announcer {
    /// Starts the publisher task; it ends when every `Announcer` is dropped.
    pub fn start(bus: EventBus) -> Announcer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(publish_in_order(bus.clone(), rx));
        Announcer { tx, bus }
    }

    /// Whether anyone takes events of `kind` now (see [`EventBus::wants`]).
    pub fn wants(&self, kind: crate::events::EventKind) -> bool {
        self.bus.wants(kind)
    }

    /// Events that need no commit: published after the ones queued before them.
    pub fn now(&self, events: Vec<Event>) {
        if !events.is_empty() {
            let _ = self.tx.send(Announcement {
                events,
                durable: None,
            });
        }
    }

    /// Events that are true only once a commit is durable: published when the returned
    /// [`Durable`] is confirmed, never if it is dropped.
    pub fn once_durable(&self, events: Vec<Event>) -> Option<Durable> {
        if events.is_empty() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Announcement {
            events,
            durable: Some(rx),
        });
        Some(Durable(tx))
    }
}

async fn publish_in_order(bus: EventBus, mut rx: mpsc::UnboundedReceiver<Announcement>) {
    while let Some(a) = rx.recv().await {
        if let Some(durable) = a.durable {
            if durable.await.is_err() {
                continue;
            }
        }
        for ev in a.events {
            bus.publish(ev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventData, HaEvent};
    use std::time::Duration;

    fn ev(reason: &str) -> Event {
        Event::new(
            crate::events::EventKind::LeaseAck,
            "n",
            EventData::Ha(HaEvent {
                reason: reason.into(),
                ..Default::default()
            }),
        )
    }

    fn reason(e: &Event) -> &str {
        match &e.data {
            EventData::Ha(h) => &h.reason,
            _ => "",
        }
    }

    async fn next(sub: &mut crate::events::Subscription) -> Option<String> {
        tokio::time::timeout(Duration::from_millis(200), sub.rx.recv())
            .await
            .ok()
            .flatten()
            .map(|e| reason(&e).to_string())
    }

    #[tokio::test]
    async fn a_withheld_commit_publishes_nothing_and_holds_up_nothing_after_it() {
        let bus = EventBus::new();
        let mut sub = bus.subscribe("t", 16);
        let a = Announcer::start(bus.clone());
        let failed = a.once_durable(vec![ev("failed")]);
        a.now(vec![ev("offer")]);
        assert_eq!(
            next(&mut sub).await,
            None,
            "nothing before the commit resolves"
        );
        drop(failed);
        assert_eq!(next(&mut sub).await.as_deref(), Some("offer"));
        assert_eq!(next(&mut sub).await, None);
    }

    #[tokio::test]
    async fn events_keep_the_handling_order_when_commits_resolve_out_of_order() {
        let bus = EventBus::new();
        let mut sub = bus.subscribe("t", 16);
        let a = Announcer::start(bus.clone());
        let ack = a.once_durable(vec![ev("ack")]).expect("events");
        let release = a.once_durable(vec![ev("release")]).expect("events");
        release.confirm();
        assert_eq!(next(&mut sub).await, None, "the release waits for the ack");
        ack.confirm();
        assert_eq!(next(&mut sub).await.as_deref(), Some("ack"));
        assert_eq!(next(&mut sub).await.as_deref(), Some("release"));
    }
}
