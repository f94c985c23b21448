//! Opening the lease store at start: a damaged file is moved aside and rebuilt from the HA
//! peer, or refused with the command that moves it aside (`[server] damaged_lease_db`); and
//! the task that reports the store's condition (health, events, space gauges).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;

use super::services::Common;
use crate::config::Config;
use crate::lease::LeaseStore;

/// Opens the store, registers its metrics and starts its reporter. Returns the store and,
/// while it is being rebuilt from the peer, the marker that says so (for HA).
pub(super) fn open_store(
    c: &Common,
    registry: &mut Registry,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<(Arc<LeaseStore>, Option<PathBuf>)> {
    let (store, marker) = open_lease_store(&c.cfg)?;
    store.register_metrics(registry);
    if c.cfg.ha.enabled {
        store.set_batch_target(crate::lease::store::BATCH_TARGET_REPLICATED);
    }
    tasks.spawn(
        crate::lease::report::StoreReporter {
            store: store.clone(),
            health: c.health.clone(),
            bus: c.bus.clone(),
            node: c.node.clone(),
            min_free: c.cfg.server.lease_db_min_free,
        }
        .run(c.shutdown.clone()),
    );
    Ok((store, marker))
}

/// Opens the lease database; a file that cannot be read is handled per
/// `[server] damaged_lease_db`. Returns the store and, while it is being rebuilt from the
/// peer, the marker that says so.
fn open_lease_store(
    cfg: &Config,
) -> anyhow::Result<(Arc<crate::lease::LeaseStore>, Option<PathBuf>)> {
    use crate::lease::damaged::{self, DamagedLeaseDb};
    use crate::lease::{LeaseStore, StoreError};
    let path = &cfg.server.lease_db;
    let marker = damaged::marker_path(path);
    let policy = cfg
        .server
        .damaged_lease_db
        .unwrap_or(DamagedLeaseDb::default_for(cfg.ha.enabled));
    let store = match LeaseStore::open(path) {
        Ok(s) => s,
        Err(StoreError::Damaged { detail, .. }) if policy == DamagedLeaseDb::Resync => {
            let aside = damaged::move_aside(path).with_context(|| {
                format!(
                    "lease database {} is damaged ({detail}) and cannot be moved aside",
                    path.display()
                )
            })?;
            tracing::error!(
                path = %path.display(),
                aside = %aside.display(),
                "lease database {} is damaged ({detail}): moved to {}; starting empty, this node serves only after taking every lease from its HA peer",
                path.display(),
                aside.display()
            );
            LeaseStore::open(path).context("opening a new lease database")?
        }
        Err(StoreError::Damaged { detail, .. }) => {
            anyhow::bail!(damaged::refuse_message(path, &detail))
        }
        Err(e) => return Err(e).context("opening the lease database"),
    };
    // A rebuild that did not finish before a restart goes on: the file holds only part of
    // the peer's leases.
    let rebuilding = cfg.ha.enabled && marker.exists();
    Ok((store, rebuilding.then_some(marker)))
}
