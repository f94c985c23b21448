//! Tells the rest of the daemon how the lease store is: health (`degraded` while it cannot
//! write or its filesystem runs short), a `store.failed` / `store.healed` event on each change
//! of state, and the size and free-space gauges.
//!
//! HA reads the store's condition itself (every heartbeat, [`super::LeaseLog::failure`]); this
//! task only reports. The store logs its own changes of state, once each.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::space::{self, ByteSize};
use super::{LeaseStore, StoreCondition};
use crate::events::{Event, EventBus, EventData, EventKind, StoreEvent};
use crate::health::Health;

/// The health key (shown as `lease database: No space left on device`). A failure and a
/// shortage share it; the failure, being the worse, is the one shown.
const KEY: &str = "lease database";

/// How often the size and free space are measured.
const SPACE_EVERY: Duration = Duration::from_secs(2);

pub struct StoreReporter {
    pub store: Arc<LeaseStore>,
    pub health: Health,
    pub bus: EventBus,
    pub node: String,
    pub min_free: ByteSize,
}

impl StoreReporter {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut cond = self.store.condition();
        let mut tick = tokio::time::interval(SPACE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failed: Option<String> = None;
        let mut short: Option<String> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = cond.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let now = cond.borrow_and_update().clone();
                    let was_failed = failed.is_some();
                    failed = now.failure().map(str::to_string);
                    if was_failed != failed.is_some() {
                        self.publish(&now);
                    }
                }
                _ = tick.tick() => {
                    match space::measure(self.store.path()) {
                        Ok(s) => {
                            let m = self.store.metrics();
                            m.db_bytes.set(s.db_bytes as i64);
                            m.fs_free_bytes.set(s.free_bytes as i64);
                            let now = space::shortage(s, self.min_free);
                            if now.is_some() != short.is_some() {
                                match &now {
                                    Some(why) => tracing::warn!(
                                        path = %self.store.path().display(),
                                        "lease database {}: {why}",
                                        self.store.path().display()
                                    ),
                                    None => tracing::info!(
                                        path = %self.store.path().display(),
                                        "lease database {}: free space back above lease_db_min_free ({})",
                                        self.store.path().display(),
                                        self.min_free
                                    ),
                                }
                            }
                            short = now;
                        }
                        Err(e) => tracing::debug!("measuring the lease database's filesystem: {e}"),
                    }
                }
            }
            self.health
                .set_problem(KEY, failed.clone().or_else(|| short.clone()));
        }
    }

    fn publish(&self, now: &StoreCondition) {
        let (kind, reason) = match now {
            StoreCondition::Failed { reason } => (EventKind::StoreFailed, Some(reason.clone())),
            StoreCondition::Writable => (EventKind::StoreHealed, None),
        };
        self.bus.publish(Event::new(
            kind,
            self.node.clone(),
            EventData::Store(StoreEvent {
                path: self.store.path().display().to_string(),
                reason,
            }),
        ));
    }
}
