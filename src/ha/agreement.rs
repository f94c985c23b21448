//! Do both nodes serve one configuration? The decisions, apart from the link and the clock.
//!
//! Each node sends the per-section digest of its shared config ([`SharedConfig`]) in the
//! hello and again after every reload, and with every heartbeat datagram. When the peer's
//! digest differs from ours, we ask for its shared entries (over the authenticated link,
//! never from a file or a datagram) and name each differing key with both values. Without a
//! link (its port blocked) only the digests are known: once the link has stayed down for
//! `grace` heartbeats (a failover timeout: at start-up the datagrams come before the link)
//! the mismatch is reported by section, and by key when the link returns. When the digests agree again the mismatch is
//! cleared. The peer's entries are asked for once per digest it announces, so a mismatch
//! costs one exchange; each report is made once for what it says.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigDigest, Difference, SharedConfig};

/// Shown while only the digests are known.
pub const KEYS_PENDING: &str = "key details when the peer link returns";

/// What the node task must do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgreementAction {
    /// Send our digest to the peer (after a reload).
    SendDigest(ConfigDigest),
    /// Ask the peer for its shared entries.
    RequestEntries,
    /// Answer the peer's request.
    SendEntries(SharedConfig),
    /// The configs differ in these sections, and in these keys when the peer's entries came
    /// (empty: only the digests are known, see [`KEYS_PENDING`]). Log, event, health
    /// degraded, metric.
    Mismatch {
        sections: Vec<String>,
        keys: Vec<Difference>,
    },
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
    /// Why `differences` is empty while the sections differ ([`KEYS_PENDING`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

pub struct Agreement {
    mine: SharedConfig,
    digest: ConfigDigest,
    peer: Option<String>,
    peer_digest: Option<ConfigDigest>,
    /// A link that speaks config agreement is up: the peer's entries can be asked for.
    link: bool,
    /// Heartbeats the digests have differed with no link and no keys known.
    unlinked_beats: u32,
    /// How many of those before the digests alone are reported.
    grace: u32,
    /// The peer digest whose entries we asked for (not asked twice in a row).
    asked_for: Option<ConfigDigest>,
    /// The peer's entries arrived for its current digest; until then every heartbeat asks
    /// again (a request or its answer can be lost with a link that is being replaced).
    answered: bool,
    /// The differing keys for the current pair of digests (empty until the entries came).
    differences: Vec<Difference>,
    /// The last mismatch reported (sections, keys): the same one is not reported twice.
    reported: Option<(Vec<String>, Vec<Difference>)>,
}

impl Agreement {
    /// `grace`: heartbeats without a link before a mismatch is reported by section only.
    pub fn new(mine: SharedConfig, grace: u32) -> Agreement {
        Agreement {
            unlinked_beats: 0,
            grace,
            digest: mine.digest(),
            mine,
            peer: None,
            peer_digest: None,
            link: false,
            asked_for: None,
            answered: false,
            differences: Vec::new(),
            reported: None,
        }
    }

    pub fn digest(&self) -> &ConfigDigest {
        &self.digest
    }

    /// Is this the peer's digest as we hold it (a heartbeat datagram repeating it)?
    pub fn knows(&self, node: &str, d: &ConfigDigest) -> bool {
        self.peer.as_deref() == Some(node) && self.peer_digest.as_ref() == Some(d)
    }

    /// A reload: a new digest to send; the comparison is redone when the peer answers.
    pub fn reloaded(&mut self, mine: SharedConfig) -> Vec<AgreementAction> {
        let digest = mine.digest();
        if digest == self.digest {
            return Vec::new();
        }
        self.mine = mine;
        self.digest = digest.clone();
        // The keys were ours against theirs: ours changed.
        self.differences.clear();
        let mut out = vec![AgreementAction::SendDigest(digest)];
        if let (Some(node), Some(d)) = (self.peer.clone(), self.peer_digest.clone()) {
            self.asked_for = None;
            out.extend(self.peer_digest(&node, d));
        }
        out
    }

    /// The peer's digest, from its hello, a later announcement or a heartbeat datagram.
    pub fn peer_digest(&mut self, node: &str, d: ConfigDigest) -> Vec<AgreementAction> {
        self.peer = Some(node.to_string());
        if self.peer_digest.as_ref() != Some(&d) {
            self.answered = false;
            self.differences.clear();
        }
        self.peer_digest = Some(d.clone());
        if d == self.digest {
            self.differences.clear();
            self.asked_for = None;
            self.unlinked_beats = 0;
            if self.reported.take().is_some() {
                return vec![AgreementAction::Agreed];
            }
            return Vec::new();
        }
        if !self.link {
            return self.report_sections();
        }
        if self.asked_for.as_ref() == Some(&d) {
            return Vec::new();
        }
        self.asked_for = Some(d);
        vec![AgreementAction::RequestEntries]
    }

    /// The digests differ, no keys are known and the link has been down for the grace:
    /// report the sections (once).
    fn report_sections(&mut self) -> Vec<AgreementAction> {
        let Some(theirs) = &self.peer_digest else {
            return Vec::new();
        };
        if *theirs == self.digest
            || !self.differences.is_empty()
            || self.unlinked_beats < self.grace
        {
            return Vec::new();
        }
        let sections = self.digest.differing_sections(theirs);
        self.report(sections, Vec::new())
    }

    fn report(&mut self, sections: Vec<String>, keys: Vec<Difference>) -> Vec<AgreementAction> {
        let now = (sections, keys);
        if self.reported.as_ref() == Some(&now) {
            return Vec::new();
        }
        self.reported = Some(now.clone());
        let (sections, keys) = now;
        vec![AgreementAction::Mismatch { sections, keys }]
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
            return if self.reported.take().is_some() {
                vec![AgreementAction::Agreed]
            } else {
                Vec::new()
            };
        }
        self.differences = diff.clone();
        let sections = self.digest.differing_sections(&theirs.digest());
        self.report(sections, diff)
    }

    /// A link that speaks config agreement is up (also one replacing another): what was
    /// asked on the old one may be lost with it.
    pub fn link_up(&mut self) {
        self.link = true;
        self.asked_for = None;
        self.unlinked_beats = 0;
    }

    /// The link is gone: ask again on the next one; until then only digests come.
    pub fn link_down(&mut self) {
        self.link = false;
        self.asked_for = None;
        self.unlinked_beats = 0;
    }

    /// Every heartbeat: the digests differ and the peer's entries never came, ask again;
    /// without a link, report what the digests say (a link that went down before the
    /// entries came).
    pub fn heartbeat(&mut self) -> Vec<AgreementAction> {
        match &self.peer_digest {
            Some(p) if *p != self.digest => {
                if !self.link {
                    if self.differences.is_empty() {
                        self.unlinked_beats = self.unlinked_beats.saturating_add(1);
                    }
                    self.report_sections()
                } else if !self.answered {
                    vec![AgreementAction::RequestEntries]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    pub fn view(&self) -> AgreementView {
        let differing_sections = self
            .peer_digest
            .as_ref()
            .map(|p| self.digest.differing_sections(p))
            .unwrap_or_default();
        AgreementView {
            digest: self.digest.clone(),
            shared: self.mine.clone(),
            peer: self.peer.clone(),
            peer_digest: self.peer_digest.clone(),
            note: (!differing_sections.is_empty() && self.differences.is_empty())
                .then(|| KEYS_PENDING.to_string()),
            differing_sections,
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
        let mut a = Agreement::new(shared("10.0.0.200"), GRACE);
        let d = shared("10.0.0.200").digest();
        assert_eq!(a.peer_digest("node-b", d), vec![]);
        assert_eq!(a.view().agreed, Some(true));
    }

    #[test]
    fn a_mismatch_asks_once_reports_once_and_clears_after_a_reload() {
        let mut a = Agreement::new(shared("10.0.0.200"), GRACE);
        a.link_up();
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
        let [AgreementAction::Mismatch { keys: d, .. }] = acts.as_slice() else {
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
        let mut a = Agreement::new(shared("10.0.0.200"), GRACE);
        a.link_up();
        let theirs = shared("10.0.0.199");
        a.peer_digest("node-b", theirs.digest());
        a.peer_entries(&theirs);
        assert_eq!(
            a.peer_digest("node-b", shared("10.0.0.200").digest()),
            vec![AgreementAction::Agreed]
        );
        assert_eq!(a.view().agreed, Some(true));
    }

    const GRACE: u32 = 3;

    /// `GRACE` heartbeats without a link: the last one reports what the digests say.
    fn beats_without_link(a: &mut Agreement) -> Vec<AgreementAction> {
        for _ in 1..GRACE {
            assert_eq!(a.heartbeat(), vec![], "not before the grace");
        }
        a.heartbeat()
    }

    fn sections_only() -> AgreementAction {
        AgreementAction::Mismatch {
            sections: vec!["subnets".into()],
            keys: vec![],
        }
    }

    #[test]
    fn without_a_link_the_digests_name_the_sections_and_the_link_brings_the_keys() {
        let mut a = Agreement::new(shared("10.0.0.200"), GRACE);
        let theirs = shared("10.0.0.199");
        // A heartbeat datagram, the peer link blocked. At start-up the link may only be
        // slower than the datagrams: the digests alone are reported after the grace.
        assert_eq!(a.peer_digest("node-b", theirs.digest()), vec![]);
        assert!(a.knows("node-b", &theirs.digest()));
        assert_eq!(beats_without_link(&mut a), vec![sections_only()]);
        assert_eq!(a.view().note.as_deref(), Some(KEYS_PENDING));
        assert_eq!(a.view().agreed, Some(false));
        // Every later datagram and heartbeat says the same: no second report.
        assert_eq!(a.peer_digest("node-b", theirs.digest()), vec![]);
        assert_eq!(a.heartbeat(), vec![]);
        // The link returns: its hello asks for the entries, and the keys are reported.
        a.link_up();
        assert_eq!(
            a.peer_digest("node-b", theirs.digest()),
            vec![AgreementAction::RequestEntries]
        );
        let acts = a.peer_entries(&theirs);
        let [AgreementAction::Mismatch { sections, keys }] = acts.as_slice() else {
            panic!("{acts:?}")
        };
        assert_eq!((sections.len(), keys.len()), (1, 1), "{acts:?}");
        assert_eq!(a.view().note, None);
        // The link goes again: the keys stay known, nothing new to report.
        a.link_down();
        for _ in 0..2 * GRACE {
            assert_eq!(a.heartbeat(), vec![]);
        }
        assert_eq!(a.view().differences.len(), 1);
    }

    #[test]
    fn a_link_that_comes_up_within_the_grace_reports_only_the_keys() {
        let mut a = Agreement::new(shared("10.0.0.200"), GRACE);
        let theirs = shared("10.0.0.199");
        a.peer_digest("node-b", theirs.digest());
        for _ in 1..GRACE {
            assert_eq!(a.heartbeat(), vec![]);
        }
        a.link_up();
        assert_eq!(
            a.peer_digest("node-b", theirs.digest()),
            vec![AgreementAction::RequestEntries]
        );
        let acts = a.peer_entries(&theirs);
        assert!(
            matches!(acts.as_slice(), [AgreementAction::Mismatch { keys, .. }] if keys.len() == 1),
            "one report, with the key: {acts:?}"
        );
    }

    #[test]
    fn without_a_link_a_reload_that_fixes_either_file_clears_the_mismatch() {
        let mut a = Agreement::new(shared("10.0.0.200"), GRACE);
        let theirs = shared("10.0.0.199");
        a.peer_digest("node-b", theirs.digest());
        assert_eq!(beats_without_link(&mut a), vec![sections_only()]);
        // A reload that still differs in the same section says nothing new.
        assert_eq!(
            a.reloaded(shared("10.0.0.198")),
            vec![AgreementAction::SendDigest(shared("10.0.0.198").digest())]
        );
        assert_eq!(
            a.reloaded(shared("10.0.0.199")),
            vec![
                AgreementAction::SendDigest(theirs.digest()),
                AgreementAction::Agreed
            ]
        );
        assert_eq!(a.view().agreed, Some(true));
        assert_eq!(a.view().note, None);
        // And the peer fixing its file (its next datagram) clears it the same way.
        let mut b = Agreement::new(shared("10.0.0.200"), GRACE);
        b.peer_digest("node-b", theirs.digest());
        assert_eq!(beats_without_link(&mut b), vec![sections_only()]);
        assert_eq!(
            b.peer_digest("node-b", shared("10.0.0.200").digest()),
            vec![AgreementAction::Agreed]
        );
    }

    #[test]
    fn a_link_lost_before_the_entries_came_reports_the_sections_after_the_grace() {
        let mut a = Agreement::new(shared("10.0.0.200"), GRACE);
        a.link_up();
        let theirs = shared("10.0.0.199");
        assert_eq!(
            a.peer_digest("node-b", theirs.digest()),
            vec![AgreementAction::RequestEntries]
        );
        a.link_down();
        assert_eq!(beats_without_link(&mut a), vec![sections_only()]);
        assert_eq!(a.heartbeat(), vec![], "reported once");
    }
}
