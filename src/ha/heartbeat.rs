//! The datagram path: a small authenticated UDP heartbeat sent to the peer on every VIP
//! network, so the peer counts as silent only when the link *and* these are. It carries the
//! same [`PeerStatus`] as the link's heartbeat (state, epoch, role, the question and answer
//! of a fenced node) and nothing else: no handoff, no leases.
//!
//! A frame is `magic "AHB1" ‖ boot u64 ‖ seq u64 ‖ to u64 ‖ len u16 ‖ payload ‖ HMAC`, all
//! big-endian; the payload is the JSON status, the MAC is HMAC-SHA256 over everything before
//! it with a key derived from `shared_secret` for this purpose alone
//! (`HMAC(shared_secret, "athena-ha/heartbeat/1")`, so it never equals a link key).
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
use sha2::Sha256;

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

    /// One datagram for a peer whose incarnation we last heard as `to` (0: not yet).
    /// `None` when the status does not fit (a node name of a kilobyte).
    pub fn seal(&mut self, to: u64, status: &PeerStatus) -> Option<Vec<u8>> {
        let payload = serde_json::to_vec(status).ok()?;
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
        out.extend_from_slice(&payload);
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
    pub fn open(
        &mut self,
        guard: &mut PathGuard,
        buf: &[u8],
    ) -> Result<PeerStatus, HeartbeatError> {
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
        serde_json::from_slice(&body[HEADER..])
            .map_err(|e| HeartbeatError::BadStatus(e.to_string()))
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
        let f = tx.seal(B, &status("node-a")).expect("seal");
        assert_eq!(rx.open(&mut g, &f), Ok(status("node-a")));
        assert_eq!(rx.open(&mut g, &f).unwrap_err().kind(), "replay");
        let f2 = tx.seal(B, &status("node-a")).expect("seal");
        let f3 = tx.seal(B, &status("node-a")).expect("seal");
        assert!(rx.open(&mut g, &f3).is_ok());
        // Reordered on the path: the older one is dropped, not applied after the newer.
        assert_eq!(rx.open(&mut g, &f2).unwrap_err().kind(), "replay");
    }

    #[test]
    fn wrong_key_truncated_oversize_and_tampered_frames_are_named() {
        let (_, mut rx, mut g) = pair();
        let mut wrong = Sealer::new(derive_key(b"another-secret-xyz"), A);
        let f = wrong.seal(B, &status("node-a")).expect("seal");
        assert_eq!(rx.open(&mut g, &f), Err(HeartbeatError::BadMac));
        let (mut tx, _, _) = pair();
        let good = tx.seal(B, &status("node-a")).expect("seal");
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
            let f = a.seal(to, &status("node-a")).expect("seal");
            assert_eq!(b_rx.open(&mut g, &f), Err(HeartbeatError::NotForThisBoot));
        }
        assert_eq!(b_rx.peer_boot, A, "B learned A's incarnation to echo it");
        // A replayed frame of an older incarnation of A does not move it back.
        let mut old = Sealer::new(key, A - 1);
        let f = old.seal(B, &status("node-a")).expect("seal");
        assert_eq!(b_rx.open(&mut g, &f).unwrap_err().kind(), "replay");
        assert_eq!(b_rx.peer_boot, A);
        let f = a.seal(B, &status("node-a")).expect("seal");
        assert!(b_rx.open(&mut g, &f).is_ok());
    }

    #[test]
    fn a_node_never_takes_its_own_heartbeat_for_the_peer() {
        let key = derive_key(b"secret-0123456789");
        let mut me = Sealer::new(key, B);
        let mut rx = Receiver::new(key, B);
        let f = me.seal(B, &status("node-b")).expect("seal");
        assert_eq!(
            rx.open(&mut PathGuard::default(), &f),
            Err(HeartbeatError::Reflected)
        );
    }

    #[test]
    fn an_oversized_status_is_not_sent() {
        let (mut tx, _, _) = pair();
        assert!(tx.seal(B, &status(&"x".repeat(2000))).is_none());
    }
}
