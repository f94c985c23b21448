//! The datagram path: a small authenticated UDP heartbeat sent to the peer on every VIP
//! network, so the peer counts as silent only when the link *and* these are. It carries the
//! same [`PeerStatus`] as the link's heartbeat (state, epoch, role, the question and answer
//! of a fenced node) and the sender's config digest (so a pair whose link is blocked still
//! sees that its configs differ), and nothing else: no handoff, no leases, no config keys.
//!
//! A frame is `magic "AHB1" ‖ boot u64 ‖ seq u64 ‖ to u64 ‖ len u16 ‖ payload ‖ HMAC`, all
//! big-endian; the payload is the JSON status, the MAC is HMAC-SHA256 over everything before
//! it with a key derived from `shared_secret` for this purpose alone
//! (`HMAC(shared_secret, "athena-ha/heartbeat/1")`, so it never equals a link key).
//! The digest is one more key of the JSON object (`config_digest`, per section, ~350
//! bytes), not a new frame version: a node that predates it ignores the key (the status
//! has no `deny_unknown_fields`) and its frames, without the key, still open here. A digest
//! this version cannot read is ignored, never a reason to drop the status.
//! - `boot` is the sender's incarnation (wall-clock µs at start) and `seq` counts its frames
//!   from 1: per path the receiver accepts only a higher (boot, seq) than it has seen, so a
//!   replayed or reordered frame is dropped.
//! - `to` is the receiver's incarnation as the sender last heard it. A frame not addressed to
//!   this incarnation (sent to its previous life, or before the sender heard from it) proves
//!   the sender authentic (its `boot` is learned, and echoed) but is no news: replaying frames
//!   recorded before a restart changes nothing. After a restart news flows after one round
//!   trip.
//!
//! Invariants: every datagram is checked for length before anything else and for its MAC
//! before its content is read; a bad one is one [`HeartbeatError`], counted by kind, logged
//! at debug, dropped; nothing reaches the state machine that did not pass every check.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::ConfigDigest;
use crate::ha::machine::PeerStatus;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 4] = b"AHB1";
const HEADER: usize = 4 + 8 + 8 + 8 + 2;
const MAC_LEN: usize = 32;
/// Largest datagram accepted or sent: a status is ~250 bytes of JSON; one Ethernet frame.
pub const MAX_DATAGRAM: usize = 1400;

/// Why a datagram was dropped. Each is counted under [`HeartbeatError::kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error("truncated: {0} bytes, shorter than a heartbeat")]
    Truncated(usize),
    #[error("oversize: {0} bytes, a heartbeat is at most {MAX_DATAGRAM}")]
    Oversize(usize),
    #[error("not a heartbeat (bad magic or length field)")]
    Malformed,
    #[error("MAC does not verify (wrong shared_secret or tampered)")]
    BadMac,
    #[error(
        "frame ({boot}, {seq}) not newer than ({last_boot}, {last_seq}): replayed or reordered"
    )]
    Replay {
        boot: u64,
        seq: u64,
        last_boot: u64,
        last_seq: u64,
    },
    #[error("this node's own heartbeat came back")]
    Reflected,
    #[error("addressed to another incarnation of this node (sent before the peer heard it)")]
    NotForThisBoot,
    #[error("status does not parse: {0}")]
    BadStatus(String),
    #[error("from {0}, which is no path to the peer")]
    UnknownSource(std::net::IpAddr),
}

impl HeartbeatError {
    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            HeartbeatError::Truncated(_) => "truncated",
            HeartbeatError::Oversize(_) => "oversize",
            HeartbeatError::Malformed => "malformed",
            HeartbeatError::BadMac => "bad_mac",
            HeartbeatError::Replay { .. } => "replay",
            HeartbeatError::Reflected => "reflected",
            HeartbeatError::NotForThisBoot => "not_for_this_boot",
            HeartbeatError::BadStatus(_) => "bad_status",
            HeartbeatError::UnknownSource(_) => "unknown_source",
        }
    }
}

/// One opened datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub status: PeerStatus,
    /// The sender's config digest (absent from older nodes).
    pub config: Option<ConfigDigest>,
    /// The frame's (boot, seq): the order of the sender's frames over all its paths.
    pub order: (u64, u64),
}

/// The payload as sent: the status's keys and the digest beside them.
#[derive(Serialize)]
struct PayloadOut<'a> {
    #[serde(flatten)]
    status: &'a PeerStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    config_digest: Option<&'a ConfigDigest>,
}

#[derive(Deserialize)]
struct PayloadIn {
    #[serde(flatten)]
    status: PeerStatus,
    /// Read leniently: a later version's digest must not cost the status.
    #[serde(default)]
    config_digest: Option<serde_json::Value>,
}

/// The heartbeat key: derived from the shared secret for this use only.
pub fn derive_key(shared_secret: &[u8]) -> [u8; 32] {
    let Ok(mut m) = HmacSha256::new_from_slice(shared_secret) else {
        return [0; 32];
    };
    m.update(b"athena-ha/heartbeat/1");
    m.finalize().into_bytes().into()
}

/// The sending side: this incarnation and its frame counter.
#[derive(Debug)]
pub struct Sealer {
    key: [u8; 32],
    boot: u64,
    seq: u64,
}

impl Sealer {
    pub fn new(key: [u8; 32], boot: u64) -> Sealer {
        Sealer { key, boot, seq: 0 }
    }

    /// One datagram for a peer whose incarnation we last heard as `to` (0: not yet), with
    /// our config digest when it fits (it always does with the sections we have; the status
    /// matters more). `None` when the status alone does not fit (a node name of a kilobyte).
    pub fn seal(
        &mut self,
        to: u64,
        status: &PeerStatus,
        config: Option<&ConfigDigest>,
    ) -> Option<Vec<u8>> {
        let payload = |config_digest| {
            serde_json::to_vec(&PayloadOut {
                status,
                config_digest,
            })
            .ok()
        };
        let p = payload(config)?;
        let p = if HEADER + p.len() + MAC_LEN <= MAX_DATAGRAM {
            p
        } else {
            payload(None)?
        };
        self.seal_payload(to, &p)
    }

    fn seal_payload(&mut self, to: u64, payload: &[u8]) -> Option<Vec<u8>> {
        let len = u16::try_from(payload.len()).ok()?;
        if HEADER + payload.len() + MAC_LEN > MAX_DATAGRAM {
            return None;
        }
        self.seq += 1;
        let mut out = Vec::with_capacity(HEADER + payload.len() + MAC_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.boot.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&to.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        let mut m = HmacSha256::new_from_slice(&self.key).ok()?;
        m.update(&out);
        out.extend_from_slice(&m.finalize().into_bytes());
        Some(out)
    }
}

/// The receiving side of one path: the newest (boot, seq) accepted on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathGuard {
    last: (u64, u64),
}

/// What every path's guard shares: this node's incarnation and the peer's as learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    key: [u8; 32],
    me: u64,
    /// The peer's incarnation, learned from authentic frames (only ever upwards, so replays
    /// from an earlier life cannot move it back); echoed as `to`.
    pub peer_boot: u64,
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl Receiver {
    pub fn new(key: [u8; 32], me: u64) -> Receiver {
        Receiver {
            key,
            me,
            peer_boot: 0,
        }
    }

    /// Checks one datagram received on the path `guard` watches; `Ok` only for a fresh,
    /// authentic status addressed to this incarnation.
    pub fn open(&mut self, guard: &mut PathGuard, buf: &[u8]) -> Result<Heartbeat, HeartbeatError> {
        if buf.len() > MAX_DATAGRAM {
            return Err(HeartbeatError::Oversize(buf.len()));
        }
        if buf.len() < HEADER + MAC_LEN {
            return Err(HeartbeatError::Truncated(buf.len()));
        }
        let len = usize::from(u16::from_be_bytes([buf[HEADER - 2], buf[HEADER - 1]]));
        if &buf[..4] != MAGIC || HEADER + len + MAC_LEN != buf.len() {
            return Err(HeartbeatError::Malformed);
        }
        let (body, tag) = buf.split_at(HEADER + len);
        let mut m = HmacSha256::new_from_slice(&self.key).map_err(|_| HeartbeatError::BadMac)?;
        m.update(body);
        m.verify_slice(tag).map_err(|_| HeartbeatError::BadMac)?;
        let (boot, seq, to) = (be_u64(buf, 4), be_u64(buf, 12), be_u64(buf, 20));
        if boot == self.me {
            return Err(HeartbeatError::Reflected);
        }
        if (boot, seq) <= guard.last {
            return Err(HeartbeatError::Replay {
                boot,
                seq,
                last_boot: guard.last.0,
                last_seq: guard.last.1,
            });
        }
        guard.last = (boot, seq);
        self.peer_boot = self.peer_boot.max(boot);
        if to != self.me {
            return Err(HeartbeatError::NotForThisBoot);
        }
        let p: PayloadIn = serde_json::from_slice(&body[HEADER..])
            .map_err(|e| HeartbeatError::BadStatus(e.to_string()))?;
        Ok(Heartbeat {
            status: p.status,
            config: p.config_digest.and_then(|v| serde_json::from_value(v).ok()),
            order: (boot, seq),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::ha::HaState;

    fn status(node: &str) -> PeerStatus {
        PeerStatus {
            node: node.into(),
            role: Role::Primary,
            state: HaState::Active,
            epoch: 3,
            watermark: 7,
            wants_active: false,
            boot: 11,
            gen: 2,
            ask: 0,
            answer: 0,
            store_failed: false,
        }
    }

    const A: u64 = 1_000;
    const B: u64 = 2_000;

    /// A (boot A) sends to B (boot B), both knowing each other.
    fn pair() -> (Sealer, Receiver, PathGuard) {
        let key = derive_key(b"secret-0123456789");
        let mut rx = Receiver::new(key, B);
        rx.peer_boot = A;
        (Sealer::new(key, A), rx, PathGuard::default())
    }

    #[test]
    fn a_sealed_status_opens_once_and_its_replay_is_dropped() {
        let (mut tx, mut rx, mut g) = pair();
        let f = tx.seal(B, &status("node-a"), None).expect("seal");
        assert_eq!(rx.open(&mut g, &f).map(|h| h.status), Ok(status("node-a")));
        assert_eq!(rx.open(&mut g, &f).unwrap_err().kind(), "replay");
        let f2 = tx.seal(B, &status("node-a"), None).expect("seal");
        let f3 = tx.seal(B, &status("node-a"), None).expect("seal");
        assert!(rx.open(&mut g, &f3).is_ok());
        // Reordered on the path: the older one is dropped, not applied after the newer.
        assert_eq!(rx.open(&mut g, &f2).unwrap_err().kind(), "replay");
    }

    #[test]
    fn wrong_key_truncated_oversize_and_tampered_frames_are_named() {
        let (_, mut rx, mut g) = pair();
        let mut wrong = Sealer::new(derive_key(b"another-secret-xyz"), A);
        let f = wrong.seal(B, &status("node-a"), None).expect("seal");
        assert_eq!(rx.open(&mut g, &f), Err(HeartbeatError::BadMac));
        let (mut tx, _, _) = pair();
        let good = tx.seal(B, &status("node-a"), None).expect("seal");
        assert_eq!(
            rx.open(&mut g, &good[..20]).unwrap_err().kind(),
            "truncated"
        );
        assert_eq!(
            rx.open(&mut g, &good[..good.len() - 1]).unwrap_err().kind(),
            "malformed"
        );
        assert_eq!(
            rx.open(&mut g, &vec![0u8; 2000]).unwrap_err().kind(),
            "oversize"
        );
        let mut bad = good.clone();
        bad[HEADER + 3] ^= 1;
        assert_eq!(rx.open(&mut g, &bad), Err(HeartbeatError::BadMac));
        // None of that moved the replay window: the genuine frame still opens.
        assert!(rx.open(&mut g, &good).is_ok());
    }

    #[test]
    fn a_frame_for_a_previous_life_teaches_the_boot_but_is_no_news() {
        let key = derive_key(b"secret-0123456789");
        let mut a = Sealer::new(key, A);
        let mut b_rx = Receiver::new(key, B);
        let mut g = PathGuard::default();
        // A has not heard B yet (to = 0), or heard B's previous life (to = 1).
        for to in [0, 1] {
            let f = a.seal(to, &status("node-a"), None).expect("seal");
            assert_eq!(b_rx.open(&mut g, &f), Err(HeartbeatError::NotForThisBoot));
        }
        assert_eq!(b_rx.peer_boot, A, "B learned A's incarnation to echo it");
        // A replayed frame of an older incarnation of A does not move it back.
        let mut old = Sealer::new(key, A - 1);
        let f = old.seal(B, &status("node-a"), None).expect("seal");
        assert_eq!(b_rx.open(&mut g, &f).unwrap_err().kind(), "replay");
        assert_eq!(b_rx.peer_boot, A);
        let f = a.seal(B, &status("node-a"), None).expect("seal");
        assert!(b_rx.open(&mut g, &f).is_ok());
    }

    #[test]
    fn a_node_never_takes_its_own_heartbeat_for_the_peer() {
        let key = derive_key(b"secret-0123456789");
        let mut me = Sealer::new(key, B);
        let mut rx = Receiver::new(key, B);
        let f = me.seal(B, &status("node-b"), None).expect("seal");
        assert_eq!(
            rx.open(&mut PathGuard::default(), &f),
            Err(HeartbeatError::Reflected)
        );
    }

    #[test]
    fn an_oversized_status_is_not_sent() {
        let (mut tx, _, _) = pair();
        assert!(tx.seal(B, &status(&"x".repeat(2000)), None).is_none());
    }

    /// The digest of a config with every section (what a real node sends).
    fn digest() -> ConfigDigest {
        let text = "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.pool]]\nrange_start = \"10.0.0.100\"\nrange_end = \"10.0.0.200\"\n[[client_class]]\nname = \"phones\"\n[client_class.match]\nvendor_class = \"phone*\"\n";
        let cfg = crate::config::parse(text, std::path::Path::new("t.toml")).expect("parse");
        crate::config::SharedConfig::of(&cfg).digest()
    }

    #[test]
    fn the_config_digest_rides_with_the_status_and_fits_one_frame() {
        let (mut tx, mut rx, mut g) = pair();
        let d = digest();
        assert_eq!(d.sections.len(), 7, "every section: {d:?}");
        // A long node name too: the frame stays well under one Ethernet frame.
        let st = status(&"node-".repeat(20));
        let f = tx.seal(B, &st, Some(&d)).expect("seal");
        assert!(f.len() < 1000, "{} bytes", f.len());
        let h = rx.open(&mut g, &f).expect("open");
        assert_eq!((h.status, h.config, h.order), (st, Some(d), (A, 1)));
    }

    #[test]
    fn older_and_newer_nodes_read_each_others_heartbeats() {
        let (mut tx, mut rx, mut g) = pair();
        // An older node's frame: the status alone.
        let old = serde_json::to_vec(&status("node-a")).expect("json");
        let f = tx.seal_payload(B, &old).expect("seal");
        let h = rx.open(&mut g, &f).expect("an older frame opens");
        assert_eq!((h.status, h.config), (status("node-a"), None));
        // An older node reads our payload as a bare status: the digest is one key it ignores.
        let d = digest();
        let ours = serde_json::to_vec(&PayloadOut {
            status: &status("node-a"),
            config_digest: Some(&d),
        })
        .expect("json");
        let as_old: PeerStatus = serde_json::from_slice(&ours).expect("an older node parses it");
        assert_eq!(as_old, status("node-a"));
        // A later version's digest this one cannot read costs the digest, not the status.
        let mut v = serde_json::to_value(status("node-a")).expect("json");
        v["config_digest"] = serde_json::json!({"v2": [1, 2, 3]});
        let f = tx
            .seal_payload(B, &serde_json::to_vec(&v).expect("json"))
            .expect("seal");
        let h = rx.open(&mut g, &f).expect("opens");
        assert_eq!((h.status, h.config), (status("node-a"), None));
    }

    #[test]
    fn a_digest_that_does_not_fit_is_left_out_not_the_status() {
        let (mut tx, mut rx, mut g) = pair();
        let mut d = digest();
        for i in 0..40 {
            d.sections.insert(format!("section{i}"), "ab".repeat(16));
        }
        let f = tx.seal(B, &status("node-a"), Some(&d)).expect("seal");
        let h = rx.open(&mut g, &f).expect("open");
        assert_eq!((h.status, h.config), (status("node-a"), None));
    }
}
