//! The node task's side of the heartbeat datagrams: the status goes to the machine (it is a
//! heartbeat on one more path), the config digest beside it to config agreement, so a pair
//! whose peer link is blocked still sees that its configs differ.

use super::NodeTask;
use crate::ha::heartbeat::Heartbeat;
use crate::ha::machine::Input;

impl NodeTask {
    pub(super) fn on_datagram(&mut self, path: usize, beat: Heartbeat) {
        let Heartbeat {
            status,
            config,
            order,
        } = beat;
        let node = status.node.clone();
        self.step(Input::Datagram { path, status });
        let Some(digest) = config else { return };
        // The paths may reorder between them: a digest older than one seen could undo a
        // reload.
        if order <= self.datagram_digest {
            return;
        }
        self.datagram_digest = order;
        // The link carries the digest in order (the hello, then each reload): while it is up
        // it is the one source.
        if self.link.as_ref().is_some_and(|l| l.agrees) {
            return;
        }
        // Every beat repeats it: only news goes on (the view is rebuilt per change).
        if !self.agreement.knows(&node, &digest) {
            self.on_peer_digest(&node, digest);
        }
    }
}
