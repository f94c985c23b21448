//! The authenticated peer link: framing, challenge–response, MAC + sequence on every frame.
//!
//! The link rides on the API port through an HTTP upgrade (`GET /api/v1/ha/peer` with
//! `Upgrade: athena-ha/1`), so `peer_address = "10.0.0.2:8067"` reaches it. After the upgrade:
//!
//! 1. dialer → acceptor: `{"v":1,"nonce":N_d}` (plain, at most [`MAX_HANDSHAKE`] bytes);
//! 2. acceptor → dialer: `{"v":1,"nonce":N_a,"proof":HMAC(K,"acceptor"‖N_d‖N_a)}`;
//! 3. dialer → acceptor: `{"proof":HMAC(K,"dialer"‖N_a‖N_d)}` — sent even when step 2 did not
//!    verify, so both ends see (and log) a wrong key;
//! 4. from then on every frame is `len u32 ‖ seq u64 ‖ HMAC(k_dir, seq ‖ payload) ‖ payload`
//!    with a per-direction session key `k_dir = HMAC(K, dir ‖ N_d ‖ N_a)` and `seq` counting
//!    up from 1. A frame from another session, a reflected frame, a replayed or reordered one,
//!    fails the MAC or the sequence check.
//!
//! Invariants: nothing from the peer is trusted before step 3 verified; a frame longer than
//! [`MAX_FRAME`] is refused from its length prefix, before any allocation; every refusal
//! closes the link and is one [`LinkError`] the caller logs and counts. The secret never
//! travels.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{ConfigDigest, SharedConfig};
use crate::ha::machine::{Control, PeerStatus};
use crate::lease::{codec, Lease};

type HmacSha256 = Hmac<Sha256>;

/// The HTTP route and upgrade token of the peer link.
pub const PATH: &str = "/api/v1/ha/peer";
pub const UPGRADE: &str = "athena-ha/1";
/// Protocol version carried in the handshake and the hello.
pub const VERSION: u32 = 1;
/// Largest authenticated frame (a bulk-sync batch of a few hundred leases fits easily).
pub const MAX_FRAME: usize = 4 << 20;

/// What this node reads, in its hello: 1 binary lease frames; 2 also conflict records
/// (`LeaseState::Conflict`). A peer below 2 is not sent conflict records at all (it would
/// refuse the whole frame): its conflict table stays empty until it is upgraded.
pub const LEASE_CODEC: u32 = 2;
/// The first [`LEASE_CODEC`] that reads conflict records.
const CODEC_CONFLICTS: u32 = 2;

/// First payload byte of a binary lease frame; a JSON payload starts with `{` or `"`.
const BIN_LEASES: u8 = 1;
/// First payload byte of a warm-standby DNS frame ([`Msg::DnsWarm`]).
const BIN_DNS_WARM: u8 = 2;
/// This node reads warm-standby DNS frames (and says so in its hello).
pub const DNS_WARM: u32 = 1;

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

/// Largest handshake frame: a nonce and a proof in JSON.
pub const MAX_HANDSHAKE: usize = 1024;
const MAC_LEN: usize = 32;

/// Everything that travels on an established link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// The first authenticated frame each way.
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

/// Why a link was refused or closed. Each is logged once with the peer's address and counted
/// under [`LinkError::kind`].
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out during {0}")]
    Timeout(&'static str),
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversize { len: usize, max: usize },
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("wrong shared_secret: the {0} proof does not verify")]
    WrongKey(&'static str),
    #[error("frame MAC does not verify (tampered or from another session)")]
    BadMac,
    #[error("sequence {got}, expected {want} (replayed or reordered frame)")]
    Replay { got: u64, want: u64 },
    #[error("protocol version {0}, this node speaks {VERSION}")]
    Version(u32),
    #[error("peer closed the link")]
    Closed,
    #[error("HTTP upgrade refused: {0}")]
    Upgrade(String),
}

impl LinkError {
    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            LinkError::Io(_) => "io",
            LinkError::Timeout(_) => "timeout",
            LinkError::Oversize { .. } => "oversize",
            LinkError::Malformed { .. } => "malformed",
            LinkError::WrongKey(_) => "wrong_key",
            LinkError::BadMac => "bad_mac",
            LinkError::Replay { .. } => "replay",
            LinkError::Version(_) => "version",
            LinkError::Closed => "closed",
            LinkError::Upgrade(_) => "upgrade",
        }
    }
}

/// Reads one length-prefixed frame of at most `max` bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Vec<u8>, LinkError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(LinkError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(LinkError::Oversize { len, max });
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            LinkError::Closed
        } else {
            LinkError::Io(e)
        }
    })?;
    Ok(buf)
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> Result<(), LinkError> {
    let len = u32::try_from(body.len()).map_err(|_| LinkError::Oversize {
        len: body.len(),
        max: MAX_FRAME,
    })?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let Ok(mut m) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    for p in parts {
        m.update(p);
    }
    m.verify_slice(tag).is_ok()
}

#[derive(Serialize, Deserialize)]
struct Challenge {
    v: u32,
    nonce: String,
}

#[derive(Serialize, Deserialize)]
struct ChallengeReply {
    v: u32,
    nonce: String,
    proof: String,
}

#[derive(Serialize, Deserialize)]
struct Proof {
    proof: String,
}

fn parse<T: for<'de> Deserialize<'de>>(what: &'static str, b: &[u8]) -> Result<T, LinkError> {
    serde_json::from_slice(b).map_err(|e| LinkError::Malformed {
        what,
        detail: e.to_string(),
    })
}

fn nonce_bytes(what: &'static str, hexs: &str) -> Result<[u8; 32], LinkError> {
    let v = hex::decode(hexs).map_err(|e| LinkError::Malformed {
        what,
        detail: e.to_string(),
    })?;
    v.try_into().map_err(|_| LinkError::Malformed {
        what,
        detail: "not 32 bytes".into(),
    })
}

fn fresh_nonce() -> [u8; 32] {
    rand::random()
}

/// The two per-direction keys of a session.
struct SessionKeys {
    d2a: [u8; 32],
    a2d: [u8; 32],
}

fn session_keys(secret: &[u8], nd: &[u8; 32], na: &[u8; 32]) -> SessionKeys {
    SessionKeys {
        d2a: mac(secret, &[b"athena-ha/1 d2a", nd, na]),
        a2d: mac(secret, &[b"athena-ha/1 a2d", nd, na]),
    }
}

/// Runs the dialer's half of the handshake; returns the link halves.
pub async fn handshake_dialer<S>(
    mut io: S,
    secret: &[u8],
) -> Result<
    (
        Reader<tokio::io::ReadHalf<S>>,
        Writer<tokio::io::WriteHalf<S>>,
    ),
    LinkError,
>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let nd = fresh_nonce();
    let c = Challenge {
        v: VERSION,
        nonce: hex::encode(nd),
    };
    write_frame(&mut io, &serde_json::to_vec(&c).unwrap_or_default()).await?;
    let reply: ChallengeReply = parse(
        "challenge reply",
        &read_frame(&mut io, MAX_HANDSHAKE).await?,
    )?;
    if reply.v != VERSION {
        return Err(LinkError::Version(reply.v));
    }
    let na = nonce_bytes("acceptor nonce", &reply.nonce)?;
    let proof_a = hex::decode(&reply.proof).unwrap_or_default();
    let ok = verify(secret, &[b"athena-ha/1 acceptor", &nd, &na], &proof_a);
    // Answer even when the acceptor's proof failed: then it sees the mismatch too and both
    // ends log the wrong key, not just one.
    let proof_d = mac(secret, &[b"athena-ha/1 dialer", &na, &nd]);
    write_frame(
        &mut io,
        &serde_json::to_vec(&Proof {
            proof: hex::encode(proof_d),
        })
        .unwrap_or_default(),
    )
    .await?;
    if !ok {
        return Err(LinkError::WrongKey("acceptor"));
    }
    let keys = session_keys(secret, &nd, &na);
    let (r, w) = tokio::io::split(io);
    Ok((Reader::new(r, keys.a2d), Writer::new(w, keys.d2a)))
}

/// Runs the acceptor's half of the handshake.
pub async fn handshake_acceptor<S>(
    mut io: S,
    secret: &[u8],
) -> Result<
    (
        Reader<tokio::io::ReadHalf<S>>,
        Writer<tokio::io::WriteHalf<S>>,
    ),
    LinkError,
>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let c: Challenge = parse("challenge", &read_frame(&mut io, MAX_HANDSHAKE).await?)?;
    if c.v != VERSION {
        return Err(LinkError::Version(c.v));
    }
    let nd = nonce_bytes("dialer nonce", &c.nonce)?;
    let na = fresh_nonce();
    let proof_a = mac(secret, &[b"athena-ha/1 acceptor", &nd, &na]);
    let reply = ChallengeReply {
        v: VERSION,
        nonce: hex::encode(na),
        proof: hex::encode(proof_a),
    };
    write_frame(&mut io, &serde_json::to_vec(&reply).unwrap_or_default()).await?;
    let p: Proof = parse("proof", &read_frame(&mut io, MAX_HANDSHAKE).await?)?;
    let proof_d = hex::decode(&p.proof).unwrap_or_default();
    if !verify(secret, &[b"athena-ha/1 dialer", &na, &nd], &proof_d) {
        return Err(LinkError::WrongKey("dialer"));
    }
    let keys = session_keys(secret, &nd, &na);
    let (r, w) = tokio::io::split(io);
    Ok((Reader::new(r, keys.d2a), Writer::new(w, keys.a2d)))
}

/// The receiving half: checks length, MAC and sequence of every frame.
pub struct Reader<R> {
    /// Buffered: a frame is a length prefix and a body, and the active node's acks are tiny
    /// frames that arrive in bursts; unbuffered, each cost two read(2) calls.
    r: tokio::io::BufReader<R>,
    key: [u8; 32],
    next_seq: u64,
}

/// Read buffer of a link.
const READ_BUF: usize = 64 << 10;

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(r: R, key: [u8; 32]) -> Self {
        Reader {
            r: tokio::io::BufReader::with_capacity(READ_BUF, r),
            key,
            next_seq: 1,
        }
    }

    pub async fn recv(&mut self) -> Result<Msg, LinkError> {
        let body = read_frame(&mut self.r, MAX_FRAME + 8 + MAC_LEN).await?;
        open_frame(&self.key, self.next_seq, &body).inspect(|_| self.next_seq += 1)
    }
}

/// Checks and decodes one authenticated frame body.
fn open_frame(key: &[u8], want_seq: u64, body: &[u8]) -> Result<Msg, LinkError> {
    if body.len() < 8 + MAC_LEN {
        return Err(LinkError::Malformed {
            what: "frame",
            detail: format!("{} bytes, shorter than its header", body.len()),
        });
    }
    let (seq, rest) = body.split_at(8);
    let (tag, payload) = rest.split_at(MAC_LEN);
    if !verify(key, &[seq, payload], tag) {
        return Err(LinkError::BadMac);
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(seq);
    let got = u64::from_be_bytes(s);
    if got != want_seq {
        return Err(LinkError::Replay {
            got,
            want: want_seq,
        });
    }
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

/// The sending half: numbers and MACs every frame.
pub struct Writer<W> {
    w: W,
    key: [u8; 32],
    seq: u64,
    /// The peer reads binary lease frames (its hello said so).
    binary_leases: bool,
    /// The peer reads conflict records (its hello said so).
    conflicts: bool,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    fn new(w: W, key: [u8; 32]) -> Self {
        Writer {
            w,
            key,
            seq: 0,
            binary_leases: false,
            conflicts: false,
        }
    }

    pub async fn send(&mut self, msg: &Msg) -> Result<(), LinkError> {
        self.send_all(std::slice::from_ref(msg)).await
    }

    /// Sends lease frames in the binary form from now on (the peer's hello offered it).
    pub fn use_binary_leases(&mut self, on: bool) {
        self.binary_leases = on;
    }

    /// What the peer's hello said it reads ([`LEASE_CODEC`]; 0 from old nodes).
    pub fn peer_lease_codec(&mut self, level: u32) {
        self.binary_leases = level >= 1;
        self.conflicts = level >= CODEC_CONFLICTS;
    }

    /// Seals each message as its own frame (own sequence number and MAC) and writes them all
    /// with one write: the link's writer sends whatever queued meanwhile together.
    pub async fn send_all(&mut self, msgs: &[Msg]) -> Result<(), LinkError> {
        let mut buf = Vec::new();
        for msg in msgs {
            let filtered;
            let msg = match msg {
                Msg::Leases { .. } | Msg::SyncBatch { .. } if !self.conflicts => {
                    filtered = without_conflicts(msg);
                    &filtered
                }
                _ => msg,
            };
            let payload = match msg {
                Msg::Leases { id, leases } if self.binary_leases => encode_leases(*id, leases),
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
            };
            if payload.len() > MAX_FRAME {
                return Err(LinkError::Oversize {
                    len: payload.len(),
                    max: MAX_FRAME,
                });
            }
            self.seq += 1;
            let body = seal_frame(&self.key, self.seq, &payload);
            // The body is at most MAX_FRAME plus its header: it fits the u32 prefix.
            buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
            buf.extend_from_slice(&body);
        }
        self.w.write_all(&buf).await?;
        self.w.flush().await?;
        Ok(())
    }
}

fn seal_frame(key: &[u8], seq: u64, payload: &[u8]) -> Vec<u8> {
    let seq = seq.to_be_bytes();
    let tag = mac(key, &[&seq, payload]);
    let mut body = Vec::with_capacity(8 + MAC_LEN + payload.len());
    body.extend_from_slice(&seq);
    body.extend_from_slice(&tag);
    body.extend_from_slice(payload);
    body
}

/// The client side of the HTTP upgrade on a fresh TCP stream.
pub async fn upgrade_client(
    stream: &mut tokio::net::TcpStream,
    host: &str,
    limit: Duration,
) -> Result<(), LinkError> {
    let req = format!(
        "GET {PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {UPGRADE}\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    // Read the response head byte by byte: anything after it already belongs to the link.
    let mut head = Vec::with_capacity(256);
    let read = async {
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 4096 {
                return Err(LinkError::Upgrade("response head over 4 KiB".into()));
            }
            let n = stream.read(&mut b).await?;
            if n == 0 {
                return Err(LinkError::Closed);
            }
            head.push(b[0]);
        }
        Ok(())
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| LinkError::Timeout("HTTP upgrade"))??;
    let text = String::from_utf8_lossy(&head);
    let status = text.lines().next().unwrap_or("").to_string();
    if !status.contains(" 101 ") {
        return Err(LinkError::Upgrade(status));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::ha::HaState;

    const K: &[u8] = b"0123456789abcdef0123";

    fn status() -> PeerStatus {
        PeerStatus {
            node: "node-a".into(),
            role: Role::Primary,
            state: HaState::Active,
            epoch: 3,
            watermark: 9,
            wants_active: false,
            boot: 5,
            gen: 1,
            ask: 0,
            answer: 0,
            store_failed: false,
        }
    }

    async fn pair(
        kd: &'static [u8],
        ka: &'static [u8],
    ) -> (
        Result<
            (
                Reader<impl AsyncRead + Unpin>,
                Writer<impl AsyncWrite + Unpin>,
            ),
            LinkError,
        >,
        Result<
            (
                Reader<impl AsyncRead + Unpin>,
                Writer<impl AsyncWrite + Unpin>,
            ),
            LinkError,
        >,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        tokio::join!(handshake_dialer(a, kd), handshake_acceptor(b, ka))
    }

    #[tokio::test]
    async fn frames_flow_both_ways_after_the_handshake() {
        let (d, a) = pair(K, K).await;
        let (mut dr, mut dw) = d.expect("dialer");
        let (mut ar, mut aw) = a.expect("acceptor");
        let hello = Msg::Hello {
            version: VERSION,
            status: status(),
            dial: 1,
            lease_codec: LEASE_CODEC,
            config: Some(crate::config::ConfigDigest::default()),
            dns_warm: DNS_WARM,
        };
        dw.send(&hello).await.expect("send");
        assert_eq!(ar.recv().await.expect("recv"), hello);
        aw.send(&Msg::LeasesAck { id: 7 }).await.expect("send");
        assert_eq!(dr.recv().await.expect("recv"), Msg::LeasesAck { id: 7 });
        // A warm-standby DNS batch travels in its own binary form.
        let warm = Msg::DnsWarm(vec![0, 6, 0, 1, 0, 1, 0, 0]);
        aw.send(&warm).await.expect("send");
        assert_eq!(dr.recv().await.expect("recv"), warm);
    }

    fn some_lease(last: u8) -> Lease {
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

    #[tokio::test]
    async fn lease_frames_are_binary_only_to_a_peer_that_reads_them() {
        let (d, a) = pair(K, K).await;
        let (_dr, mut dw) = d.expect("dialer");
        let (mut ar, _aw) = a.expect("acceptor");
        let frame = Msg::Leases {
            id: 9,
            leases: (1..=3).map(some_lease).collect(),
        };
        // JSON until the peer's hello offered the binary form.
        dw.send(&frame).await.expect("send");
        assert_eq!(ar.recv().await.expect("recv"), frame);
        dw.use_binary_leases(true);
        dw.send_all(&[frame.clone(), Msg::LeasesAck { id: 4 }])
            .await
            .expect("send");
        assert_eq!(ar.recv().await.expect("recv"), frame);
        assert_eq!(ar.recv().await.expect("recv"), Msg::LeasesAck { id: 4 });
        let leases: Vec<Lease> = (1..=3).map(some_lease).collect();
        let bin = encode_leases(9, &leases);
        let json = serde_json::to_vec(&frame).expect("json");
        assert!(
            bin.len() < json.len() / 2,
            "{} vs {} bytes",
            bin.len(),
            json.len()
        );
    }

    #[tokio::test]
    async fn conflict_records_reach_only_a_peer_that_reads_them() {
        let (d, a) = pair(K, K).await;
        let (_dr, mut dw) = d.expect("dialer");
        let (mut ar, _aw) = a.expect("acceptor");
        let mut conflict = some_lease(2);
        conflict.state = crate::lease::LeaseState::Conflict { seen: 3 };
        let frame = Msg::Leases {
            id: 5,
            leases: vec![some_lease(1), conflict.clone()],
        };
        let batch = Msg::SyncBatch {
            changes: vec![(7, conflict.clone())],
            done: true,
        };
        // A node of the binary codec only: the conflict is left out, the frame (and its
        // ack) is not.
        dw.peer_lease_codec(1);
        dw.send_all(&[frame.clone(), batch.clone()])
            .await
            .expect("send");
        assert_eq!(
            ar.recv().await.expect("recv"),
            Msg::Leases {
                id: 5,
                leases: vec![some_lease(1)]
            }
        );
        assert_eq!(
            ar.recv().await.expect("recv"),
            Msg::SyncBatch {
                changes: vec![],
                done: true
            }
        );
        dw.peer_lease_codec(LEASE_CODEC);
        dw.send_all(&[frame.clone(), batch.clone()])
            .await
            .expect("send");
        assert_eq!(ar.recv().await.expect("recv"), frame);
        assert_eq!(ar.recv().await.expect("recv"), batch);
    }

    #[test]
    fn truncated_binary_lease_frames_are_malformed_not_panics() {
        let key = [7u8; 32];
        let p = encode_leases(3, &[some_lease(1), some_lease(2)]);
        assert!(open_frame(&key, 1, &seal_frame(&key, 1, &p)).is_ok());
        for n in 1..p.len() {
            let r = open_frame(&key, 1, &seal_frame(&key, 1, &p[..n]));
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

    #[tokio::test]
    async fn a_wrong_key_is_seen_by_both_ends() {
        let (d, a) = pair(K, b"another-secret-of-16").await;
        assert!(matches!(d.err(), Some(LinkError::WrongKey("acceptor"))));
        assert!(matches!(a.err(), Some(LinkError::WrongKey("dialer"))));
    }

    #[test]
    fn replayed_tampered_and_short_frames_are_refused() {
        let key = [7u8; 32];
        let p = serde_json::to_vec(&Msg::LeasesAck { id: 1 }).expect("json");
        let f1 = seal_frame(&key, 1, &p);
        assert!(open_frame(&key, 1, &f1).is_ok());
        // The same frame again: the receiver expects 2 now.
        assert!(matches!(
            open_frame(&key, 2, &f1),
            Err(LinkError::Replay { got: 1, want: 2 })
        ));
        let mut bad = f1.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(open_frame(&key, 1, &bad), Err(LinkError::BadMac)));
        assert!(matches!(
            open_frame(&[8u8; 32], 1, &f1),
            Err(LinkError::BadMac)
        ));
        assert!(matches!(
            open_frame(&key, 1, &f1[..20]),
            Err(LinkError::Malformed { .. })
        ));
        let junk = seal_frame(&key, 1, b"{not json");
        assert!(matches!(
            open_frame(&key, 1, &junk),
            Err(LinkError::Malformed { .. })
        ));
    }

    #[tokio::test]
    async fn a_huge_length_prefix_is_refused_before_allocating() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let _ = a.write_all(&0x8000_0000u32.to_be_bytes()).await;
        });
        let e = read_frame(&mut b, MAX_FRAME).await.expect_err("refused");
        assert!(
            matches!(
                e,
                LinkError::Oversize {
                    len: 0x8000_0000,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn garbage_instead_of_a_challenge_is_malformed() {
        let (mut a, b) = tokio::io::duplex(1 << 12);
        tokio::spawn(async move {
            let _ = write_frame(&mut a, b"\x00\x01garbage").await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let e = handshake_acceptor(b, K).await.err().expect("refused");
        assert_eq!(e.kind(), "malformed", "{e}");
    }
}
