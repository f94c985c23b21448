//! What travels inside the encrypted peer link: [`Msg`] and its payload encoding. A payload
//! is JSON (it starts with `{` or `"`), or binary when its first byte says so: lease frames
//! ([`BIN_LEASES`], for a peer whose hello offered them) and warm-standby DNS batches
//! ([`BIN_DNS_WARM`]). What the peer can read decides what it is sent ([`PeerReads`]); the
//! link's records and their crypto are `peer::noise`, the I/O is `peer`.
//!
//! Invariant: [`decode`] refuses anything it cannot read with one
//! [`LinkError::Malformed`], never a panic; it is only ever given authenticated bytes.

use serde::{Deserialize, Serialize};

use super::LinkError;
use crate::config::{ConfigDigest, SharedConfig};
use crate::ha::machine::{Control, PeerStatus};
use crate::lease::{codec, Lease};

/// What this node reads, in its hello: 1 binary lease frames; 2 also conflict records
/// (`LeaseState::Conflict`). A peer below 2 is not sent conflict records at all (it would
/// refuse the whole frame): its conflict table stays empty until it is upgraded.
pub const LEASE_CODEC: u32 = 2;
/// The first [`LEASE_CODEC`] that reads conflict records.
const CODEC_CONFLICTS: u32 = 2;
/// The first [`LEASE_CODEC`] that reads [`Msg::LeasesNack`]: every node that speaks this
/// peer-link version (the nack predates it; a v1 node, which took it for a malformed frame,
/// cannot link to this version at all). A peer below it is sent none (`sync::spawn_applier`).
pub const CODEC_NACKS: u32 = 2;

/// First payload byte of a binary lease frame; a JSON payload starts with `{` or `"`.
const BIN_LEASES: u8 = 1;
/// First payload byte of a warm-standby DNS frame ([`Msg::DnsWarm`]).
const BIN_DNS_WARM: u8 = 2;
/// This node reads warm-standby DNS frames (and says so in its hello).
pub const DNS_WARM: u32 = 1;

/// Everything that travels on an established link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// The first message each way.
    Hello {
        version: u32,
        status: PeerStatus,
        /// The dialler's number for this link (0 from the acceptor): both ends keep the
        /// highest when two links from one dialler overlap, whatever order they saw them in.
        #[serde(default)]
        dial: u64,
        /// [`LEASE_CODEC`] when the sender reads binary lease frames; 0 (older nodes): JSON
        /// only. Each side sends binary only to a peer that said it reads it.
        #[serde(default)]
        lease_codec: u32,
        /// The digest of what both nodes must serve alike; `None` from nodes that predate
        /// config agreement, which get none of the `Config*` frames.
        #[serde(default)]
        config: Option<ConfigDigest>,
        /// [`DNS_WARM`] when the sender reads [`Msg::DnsWarm`]; 0 (older nodes): none is
        /// sent to it.
        #[serde(default)]
        dns_warm: u32,
    },
    Control(Control),
    /// Our shared config's digest changed (a reload); sent only to a peer whose hello had one.
    ConfigDigest(ConfigDigest),
    /// "Send me your shared config entries": the digests differ.
    ConfigRequest,
    ConfigEntries(SharedConfig),
    /// Lease changes from the active node; answered with `LeasesAck` once durable.
    Leases {
        id: u64,
        leases: Vec<Lease>,
    },
    LeasesAck {
        id: u64,
    },
    /// The answer to `Leases` when the receiver's store could not merge them (its disk
    /// failed): the sender stops waiting for that frame at once.
    LeasesNack {
        id: u64,
    },
    /// "Send me your changes after sequence `since`."
    SyncRequest {
        since: u64,
    },
    /// A batch of changes with their sequence numbers; `done` marks the last one.
    SyncBatch {
        changes: Vec<(u64, Lease)>,
        done: bool,
    },
    /// Questions the active node's DNS cache learned, for the standby to resolve
    /// (`dns::warm`; its own compact encoding). Binary only: never JSON.
    #[serde(skip)]
    DnsWarm(Vec<u8>),
}

/// What the peer's hello said it reads; until the hello, the oldest forms only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerReads {
    /// Binary lease frames ([`LEASE_CODEC`] 1 and up).
    pub binary_leases: bool,
    /// Conflict records ([`LEASE_CODEC`] 2 and up).
    pub conflicts: bool,
}

impl PeerReads {
    /// From the `lease_codec` of the peer's hello (0 from old nodes).
    pub fn from_lease_codec(level: u32) -> Self {
        PeerReads {
            binary_leases: level >= 1,
            conflicts: level >= CODEC_CONFLICTS,
        }
    }
}

/// The payload of `msg` in the form the peer reads.
pub fn encode(msg: &Msg, reads: PeerReads) -> Result<Vec<u8>, LinkError> {
    let filtered;
    let msg = match msg {
        Msg::Leases { .. } | Msg::SyncBatch { .. } if !reads.conflicts => {
            filtered = without_conflicts(msg);
            &filtered
        }
        _ => msg,
    };
    Ok(match msg {
        Msg::Leases { id, leases } if reads.binary_leases => encode_leases(*id, leases),
        Msg::DnsWarm(batch) => {
            let mut p = Vec::with_capacity(1 + batch.len());
            p.push(BIN_DNS_WARM);
            p.extend_from_slice(batch);
            p
        }
        _ => serde_json::to_vec(msg).map_err(|e| LinkError::Malformed {
            what: "outgoing message",
            detail: e.to_string(),
        })?,
    })
}

/// The message in an authenticated payload.
pub fn decode(payload: &[u8]) -> Result<Msg, LinkError> {
    match payload.first() {
        Some(&BIN_LEASES) => return decode_leases(payload),
        Some(&BIN_DNS_WARM) => return Ok(Msg::DnsWarm(payload[1..].to_vec())),
        _ => {}
    }
    serde_json::from_slice(payload).map_err(|e| LinkError::Malformed {
        what: "message",
        detail: e.to_string(),
    })
}

/// `Msg::Leases` as a binary payload: [`BIN_LEASES`], the id (u64), then each lease in the
/// store's record format (`lease::codec`), prefixed by its length (u32). JSON cost the
/// standby 9% of its CPU per ACK to decode (and the active node about as much to encode).
fn encode_leases(id: u64, leases: &[Lease]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + leases.len() * 96);
    out.push(BIN_LEASES);
    out.extend_from_slice(&id.to_be_bytes());
    for l in leases {
        codec::push_record(&mut out, &codec::encode(l, 0));
    }
    out
}

fn decode_leases(p: &[u8]) -> Result<Msg, LinkError> {
    let bad = |detail: String| LinkError::Malformed {
        what: "lease frame",
        detail,
    };
    let id = p
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| bad(format!("{} bytes, shorter than its header", p.len())))?;
    let leases = codec::records(&p[9..])
        .map(|rec| {
            let (lease, _) = codec::decode(rec?)?;
            Ok(lease)
        })
        .collect::<Result<Vec<Lease>, codec::CodecError>>()
        .map_err(|e| bad(e.to_string()))?;
    Ok(Msg::Leases { id, leases })
}

/// `msg` without conflict records, for a peer that cannot read them. A lease frame keeps
/// its id even when nothing is left, since the active node waits for its ack.
fn without_conflicts(msg: &Msg) -> Msg {
    match msg {
        Msg::Leases { id, leases } => Msg::Leases {
            id: *id,
            leases: leases
                .iter()
                .filter(|l| !l.state.is_conflict())
                .cloned()
                .collect(),
        },
        Msg::SyncBatch { changes, done } => Msg::SyncBatch {
            changes: changes
                .iter()
                .filter(|(_, l)| !l.state.is_conflict())
                .cloned()
                .collect(),
            done: *done,
        },
        other => other.clone(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn some_lease(last: u8) -> Lease {
        Lease {
            ip: std::net::Ipv4Addr::new(10, 0, 0, last),
            mac: [2, 0, 0, 0, 0, last],
            client_id: Some(vec![1, 2, last]),
            hostname: Some(format!("host-{last}")),
            subnet: "10.0.0.0/24".into(),
            state: crate::lease::LeaseState::Active,
            start: 10,
            expiry: 3610,
            updated_ms: 1_000 + u64::from(last),
            relay_info: None,
            classes: Vec::new(),
        }
    }

    const ALL: PeerReads = PeerReads {
        binary_leases: true,
        conflicts: true,
    };

    #[test]
    fn binary_lease_frames_are_less_than_half_of_json() {
        let frame = Msg::Leases {
            id: 9,
            leases: (1..=3).map(some_lease).collect(),
        };
        let bin = encode(&frame, ALL).expect("binary");
        let json = encode(&frame, PeerReads::default()).expect("json");
        assert_eq!(json.first(), Some(&b'{'));
        assert_eq!(decode(&bin).expect("decode"), frame);
        assert_eq!(decode(&json).expect("decode"), frame);
        assert!(
            bin.len() < json.len() / 2,
            "{} vs {} bytes",
            bin.len(),
            json.len()
        );
    }

    #[test]
    fn conflict_records_are_left_out_for_a_peer_that_cannot_read_them() {
        let mut conflict = some_lease(2);
        conflict.state = crate::lease::LeaseState::Conflict { seen: 3 };
        let frame = Msg::Leases {
            id: 5,
            leases: vec![some_lease(1), conflict.clone()],
        };
        let batch = Msg::SyncBatch {
            changes: vec![(7, conflict)],
            done: true,
        };
        // A node of the binary codec only: the conflict is left out, the frame (and its
        // ack) is not.
        let old = PeerReads::from_lease_codec(1);
        let back = |m: &Msg, r| decode(&encode(m, r).expect("encode")).expect("decode");
        assert_eq!(
            back(&frame, old),
            Msg::Leases {
                id: 5,
                leases: vec![some_lease(1)]
            }
        );
        assert_eq!(
            back(&batch, old),
            Msg::SyncBatch {
                changes: vec![],
                done: true
            }
        );
        let now = PeerReads::from_lease_codec(LEASE_CODEC);
        assert_eq!(back(&frame, now), frame);
        assert_eq!(back(&batch, now), batch);
    }

    #[test]
    fn truncated_binary_lease_frames_are_malformed_not_panics() {
        let p = encode_leases(3, &[some_lease(1), some_lease(2)]);
        assert!(decode(&p).is_ok());
        for n in 1..p.len() {
            let r = decode(&p[..n]);
            // A cut at a record boundary is a shorter, valid frame; anything else is refused.
            if let Ok(Msg::Leases { leases, .. }) = &r {
                assert!(leases.len() < 2, "cut at {n} kept both leases");
            } else {
                assert!(
                    matches!(r, Err(LinkError::Malformed { .. })),
                    "cut at {n}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn junk_is_a_malformed_message() {
        assert!(matches!(
            decode(b"{not json"),
            Err(LinkError::Malformed { .. })
        ));
        assert!(matches!(decode(b""), Err(LinkError::Malformed { .. })));
    }
}
