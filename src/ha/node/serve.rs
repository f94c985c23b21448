//! The node task's serving gate: the serve lease DHCP answers under, and self-fencing (the
//! VIP and DHCP let go while the machine says this node may not serve).

use std::time::Instant;

use super::NodeTask;

impl NodeTask {
    /// The lease runs out a heartbeat before the peer could take over from a silent node.
    pub(super) fn renew_serve_lease(&mut self, now: u64) {
        if self.m.state().serves() && !self.m.fenced() {
            self.serve_lease
                .renew(now + self.m.config().serve_lease_ms());
        } else {
            self.serve_lease.revoke();
        }
    }

    pub(super) fn fence(&mut self, on: bool, reason: String) {
        // The VIP lets go (or claims again) through the role; DHCP through the
        // serve lease, which `step` revokes while fenced.
        let peer = self.m.peer().map(|p| p.state);
        self.p.role.send_modify(|r| {
            r.fenced = on;
            r.peer_state = if on { None } else { peer };
            r.since = Instant::now();
        });
        if on {
            tracing::warn!(event = "ha.fenced", reason = %reason, "HA fenced: {reason}");
        } else {
            tracing::info!(event = "ha.unfenced", reason = %reason, "HA unfenced: {reason}");
        }
    }
}
