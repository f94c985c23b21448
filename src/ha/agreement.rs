//! Do both nodes serve one configuration? The decisions, apart from the link and the clock.
//!
//! Each node sends the per-section digest of its shared config ([`SharedConfig`]) in the
//! hello and again after every reload. When the peer's digest differs from ours, we ask for
//! its shared entries (over the authenticated link, never from a file) and name each differing
//! key with both values. When the digests agree again the mismatch is cleared. The peer's
//! entries are asked for once per digest it announces, so a mismatch costs one exchange.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigDigest, Difference, SharedConfig};

/// What the node task must do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgreementAction {
    /// Send our digest to the peer (after a reload).
    SendDigest(ConfigDigest),
    /// Ask the peer for its shared entries.
    RequestEntries,
    /// Answer the peer's request.
    SendEntries(SharedConfig),
    /// The configs differ in these keys (log each, event, health degraded, metric).
    Mismatch(Vec<Difference>),
    /// They agree again after a mismatch (log, event, health cleared).
    Agreed,
}

/// What `/api/v1/ha/config` and the status show (read back by `athena-dhcpd status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgreementView {
    pub digest: ConfigDigest,
    /// This node's shared entries (what `check-config --peer` compares a file with).
    pub shared: SharedConfig,
    pub peer: Option<String>,
    pub peer_digest: Option<ConfigDigest>,
    /// Sections whose digests differ, known as soon as the peer's digest arrives.
    pub differing_sections: Vec<String>,
    /// Differing keys with both values, once the peer's entries arrived.
    pub differences: Vec<Difference>,
    pub agreed: Option<bool>,
}

pub struct Agreement {
    mine: SharedConfig,
    digest: ConfigDigest,
    peer: Option<String>,
    peer_digest: Option<ConfigDigest>,
    /// The peer digest whose entries we asked for (not asked twice in a row).
    asked_for: Option<ConfigDigest>,
    /// The peer's entries arrived for its current digest; until then every heartbeat asks
    /// again (a request or its answer can be lost with a link that is being replaced).
    answered: bool,
    differences: Vec<Difference>,
    mismatch: bool,
}

impl Agreement {
    pub fn new(mine: SharedConfig) -> Agreement {
        Agreement {
            digest: mine.digest(),
            mine,
            peer: None,
            peer_digest: None,
            asked_for: None,
            answered: false,
            differences: Vec::new(),
            mismatch: false,
        }
    }

    pub fn digest(&self) -> &ConfigDigest {
        &self.digest
    }

    /// A reload: a new digest to send; the comparison is redone when the peer answers.
    pub fn reloaded(&mut self, mine: SharedConfig) -> Vec<AgreementAction> {
        let digest = mine.digest();
        if digest == self.digest {
            return Vec::new();
        }
        self.mine = mine;
        self.digest = digest.clone();
        let mut out = vec![AgreementAction::SendDigest(digest)];
        if let (Some(node), Some(d)) = (self.peer.clone(), self.peer_digest.clone()) {
            self.asked_for = None;
            out.extend(self.peer_digest(&node, d));
        }
        out
    }

    /// The peer's digest, from its hello or a later announcement.
    pub fn peer_digest(&mut self, node: &str, d: ConfigDigest) -> Vec<AgreementAction> {
        self.peer = Some(node.to_string());
        if self.peer_digest.as_ref() != Some(&d) {
            self.answered = false;
        }
        self.peer_digest = Some(d.clone());
        if d == self.digest {
            self.differences.clear();
            self.asked_for = None;
            if std::mem::take(&mut self.mismatch) {
                return vec![AgreementAction::Agreed];
            }
            return Vec::new();
        }
        if self.asked_for.as_ref() == Some(&d) {
            return Vec::new();
        }
        self.asked_for = Some(d);
        vec![AgreementAction::RequestEntries]
    }

    /// The peer asked for our entries.
    pub fn entries_requested(&self) -> AgreementAction {
        AgreementAction::SendEntries(self.mine.clone())
    }

    /// The peer's entries: compare key by key.
    pub fn peer_entries(&mut self, theirs: &SharedConfig) -> Vec<AgreementAction> {
        // Entries for a digest we no longer hold as the peer's (it reloaded meanwhile) are
        // still the best we know; its next digest asks again.
        self.answered = true;
        let diff = self.mine.diff(theirs);
        if diff.is_empty() {
            // Same values under different digests cannot happen for one version; treat as
            // agreement rather than report nothing.
            self.differences.clear();
            return if std::mem::take(&mut self.mismatch) {
                vec![AgreementAction::Agreed]
            } else {
                Vec::new()
            };
        }
        if self.mismatch && diff == self.differences {
            return Vec::new();
        }
        self.mismatch = true;
        self.differences = diff.clone();
        vec![AgreementAction::Mismatch(diff)]
    }

    /// The link is gone or replaced: ask again on the next one.
    pub fn link_down(&mut self) {
        self.asked_for = None;
    }

    /// Every heartbeat: the digests differ and the peer's entries never came, ask again.
    pub fn heartbeat(&mut self) -> Vec<AgreementAction> {
        match &self.peer_digest {
            Some(p) if *p != self.digest && !self.answered => vec![AgreementAction::RequestEntries],
            _ => Vec::new(),
        }
    }

    pub fn view(&self) -> AgreementView {
        AgreementView {
            digest: self.digest.clone(),
            shared: self.mine.clone(),
            peer: self.peer.clone(),
            peer_digest: self.peer_digest.clone(),
            differing_sections: self
                .peer_digest
                .as_ref()
                .map(|p| self.digest.differing_sections(p))
                .unwrap_or_default(),
            differences: self.differences.clone(),
            agreed: self.peer_digest.as_ref().map(|p| *p == self.digest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(pool_end: &str) -> SharedConfig {
        let text = format!(
            "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.pool]]\nrange_start = \"10.0.0.100\"\nrange_end = \"{pool_end}\"\n"
        );
        SharedConfig::of(
            &crate::config::parse(&text, std::path::Path::new("t.toml")).expect("parse"),
        )
    }

    #[test]
    fn equal_digests_need_no_exchange() {
        let mut a = Agreement::new(shared("10.0.0.200"));
        let d = shared("10.0.0.200").digest();
        assert_eq!(a.peer_digest("node-b", d), vec![]);
        assert_eq!(a.view().agreed, Some(true));
    }

    #[test]
    fn a_mismatch_asks_once_reports_once_and_clears_after_a_reload() {
        let mut a = Agreement::new(shared("10.0.0.200"));
        let theirs = shared("10.0.0.199");
        assert_eq!(
            a.peer_digest("node-b", theirs.digest()),
            vec![AgreementAction::RequestEntries]
        );
        // The same digest again (a reconnect's hello) asks nothing more, but until the
        // entries arrive each heartbeat asks again (the request or its answer may be lost).
        assert_eq!(a.peer_digest("node-b", theirs.digest()), vec![]);
        assert_eq!(a.heartbeat(), vec![AgreementAction::RequestEntries]);
        let acts = a.peer_entries(&theirs);
        let [AgreementAction::Mismatch(d)] = acts.as_slice() else {
            panic!("{acts:?}")
        };
        assert_eq!(
            d[0].describe("node-b"),
            "subnet 10.0.0.0/24 pool[0].range_end: 10.0.0.200 here, 10.0.0.199 on node-b"
        );
        assert_eq!(a.peer_entries(&theirs), vec![], "reported once");
        assert_eq!(a.heartbeat(), vec![], "answered: no more requests");
        assert_eq!(a.view().differing_sections, vec!["subnets".to_string()]);
        assert_eq!(a.view().agreed, Some(false));

        // The admin fixes this node's file: the new digest goes out and agreement returns.
        let acts = a.reloaded(shared("10.0.0.199"));
        assert_eq!(
            acts,
            vec![
                AgreementAction::SendDigest(theirs.digest()),
                AgreementAction::Agreed
            ]
        );
        assert!(a.view().differences.is_empty());
        assert_eq!(
            a.reloaded(shared("10.0.0.199")),
            vec![],
            "no change, nothing sent"
        );
    }

    #[test]
    fn the_peer_fixing_its_file_clears_the_mismatch() {
        let mut a = Agreement::new(shared("10.0.0.200"));
        let theirs = shared("10.0.0.199");
        a.peer_digest("node-b", theirs.digest());
        a.peer_entries(&theirs);
        assert_eq!(
            a.peer_digest("node-b", shared("10.0.0.200").digest()),
            vec![AgreementAction::Agreed]
        );
        assert_eq!(a.view().agreed, Some(true));
    }
}
