//! The peer link, version 2: an HTTP upgrade, then the Noise protocol
//! (`Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`, keyed by `[ha] shared_secret`), so lease data
//! (MACs, host names, client ids) travels encrypted and authenticated by a protocol with
//! public analysis.
//!
//! The link rides on the API port through an HTTP upgrade (`GET /api/v1/ha/peer` with
//! `Upgrade: athena-ha/2`; the number is the protocol version), so
//! `peer_address = "10.0.0.2:8067"` reaches it. After the upgrade every message on the wire
//! is `len u16 ‖ bytes`:
//!
//! 1. dialler → acceptor: Noise message 1 (`psk, e`), 48 bytes;
//! 2. acceptor → dialler: Noise message 2 (`e, ee`), 48 bytes — random bytes of that size
//!    when message 1 did not decrypt, so both ends see (and log) a wrong key;
//! 3. from then on, records: each message ([`Msg`], encoded by `frames`) is `len u32 ‖
//!    payload` sealed into one or more records of at most 65535 bytes (`noise`).
//!
//! Versions: a node of version 1 (challenge-response and HMAC-SHA256 per frame, lease data
//! in clear) asks for `athena-ha/1`. It is refused with 426 and a reason phrase naming both
//! versions, which that node logs; this node logs "peer … speaks peer-link v1 (HMAC), this
//! node v2 (Noise): upgrade it" once, and so does a dialler of version 2 that meets a version-1
//! acceptor (it answers 426 with `Upgrade: athena-ha/1`). Version 1 is not kept as a fallback:
//! an attacker on the path could force it and read the leases, which is what version 2 is
//! for; a pair mid-upgrade runs without the link for the minutes between its two restarts
//! (the heartbeat datagrams still work) and syncs when both speak version 2.
//!
//! Invariants: nothing from the peer is trusted before its first record (the hello) opened,
//! since a replayed message 1 completes a handshake nobody can continue; a handshake message
//! longer than [`MAX_HANDSHAKE`] or a message announcing more than [`MAX_FRAME`] is refused
//! before any allocation; every refusal closes the link and is one [`LinkError`] the caller
//! logs and counts. The secret never travels.

pub mod frames;
pub mod noise;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use frames::{Msg, DNS_WARM, LEASE_CODEC};

/// The HTTP route and upgrade token of the peer link.
pub const PATH: &str = "/api/v1/ha/peer";
pub const UPGRADE: &str = "athena-ha/2";
/// Protocol version: the upgrade token's number, and carried in the hello.
pub const VERSION: u32 = 2;
/// Largest message (a bulk-sync batch of a few hundred leases fits easily).
pub const MAX_FRAME: usize = 4 << 20;
/// Largest handshake message read (each is [`noise::HANDSHAKE_LEN`] bytes).
pub const MAX_HANDSHAKE: usize = 256;

/// The version in an upgrade token (`athena-ha/N`), whatever its case.
pub fn upgrade_version(token: &str) -> Option<u32> {
    let t = token.trim();
    let (name, n) = t.split_once('/')?;
    if !name.eq_ignore_ascii_case("athena-ha") {
        return None;
    }
    n.parse().ok()
}

/// The protocol a version number names, for the log.
fn protocol(version: &u32) -> &'static str {
    match *version {
        1 => " (HMAC)",
        VERSION => " (Noise)",
        _ => "",
    }
}

/// Which node a version mismatch asks to upgrade.
fn upgrade_whom(peer: &u32) -> &'static str {
    if *peer < VERSION {
        "it"
    } else {
        "this node"
    }
}

/// The reason phrase of the 426 answer to a peer asking for version `peer`: the line its log
/// shows (a version-1 node logs the status line of a refused upgrade).
pub fn refusal_reason(peer: u32) -> String {
    let whom = if peer < VERSION { "this node" } else { "it" };
    format!(
        "the peer speaks peer-link v{VERSION}{}, this node v{peer}{}: upgrade {whom}",
        protocol(&VERSION),
        protocol(&peer)
    )
}

/// Why a link was refused or closed. Each is logged once with the peer's address and counted
/// under [`LinkError::kind`].
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out during {0}")]
    Timeout(&'static str),
    #[error("message of {len} bytes exceeds the limit of {max}")]
    Oversize { len: usize, max: usize },
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("wrong shared_secret: the {0}'s handshake message does not decrypt")]
    WrongKey(&'static str),
    #[error("record does not decrypt (tampered, reflected or from another session)")]
    BadMac,
    #[error("record {got} where {want} is due (replayed or reordered)")]
    Replay { got: u64, want: u64 },
    #[error(
        "speaks peer-link v{peer}{}, this node v{VERSION}{}: upgrade {}",
        protocol(.peer),
        protocol(&VERSION),
        upgrade_whom(.peer)
    )]
    Version { peer: u32 },
    #[error("Noise: {0}")]
    Noise(String),
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
            LinkError::Version { .. } => "version",
            LinkError::Noise(_) => "noise",
            LinkError::Closed => "closed",
            LinkError::Upgrade(_) => "upgrade",
        }
    }
}

fn eof_is_closed(e: std::io::Error) -> LinkError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        LinkError::Closed
    } else {
        LinkError::Io(e)
    }
}

/// Reads one `len u16 ‖ bytes` message of at most `max` bytes into `buf`; returns its size.
async fn read_record<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    buf: &mut [u8],
) -> Result<usize, LinkError> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await.map_err(eof_is_closed)?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > max.min(buf.len()) {
        return Err(LinkError::Oversize { len, max });
    }
    r.read_exact(&mut buf[..len]).await.map_err(eof_is_closed)?;
    Ok(len)
}

async fn write_handshake<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> Result<(), LinkError> {
    let mut buf = Vec::with_capacity(2 + msg.len());
    // Handshake messages are HANDSHAKE_LEN bytes.
    buf.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    buf.extend_from_slice(msg);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

async fn read_handshake<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, LinkError> {
    let mut buf = [0u8; MAX_HANDSHAKE];
    let n = read_record(r, MAX_HANDSHAKE, &mut buf).await?;
    Ok(buf[..n].to_vec())
}

/// The two halves of an established link.
pub type Halves<S> = (
    Reader<tokio::io::ReadHalf<S>>,
    Writer<tokio::io::WriteHalf<S>>,
);

/// Runs the dialler's half of the handshake (the Noise initiator); returns the link halves.
pub async fn handshake_dialer<S>(mut io: S, secret: &[u8]) -> Result<Halves<S>, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (init, msg1) = noise::Initiator::start(secret)?;
    write_handshake(&mut io, &msg1).await?;
    let msg2 = read_handshake(&mut io).await?;
    let (opener, sealer) = init.finish(&msg2)?.split();
    let (r, w) = tokio::io::split(io);
    Ok((Reader::new(r, opener), Writer::new(w, sealer)))
}

/// Runs the acceptor's half of the handshake (the Noise responder).
pub async fn handshake_acceptor<S>(mut io: S, secret: &[u8]) -> Result<Halves<S>, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let msg1 = read_handshake(&mut io).await?;
    match noise::respond(secret, &msg1)? {
        noise::Answer::Linked(session, msg2) => {
            write_handshake(&mut io, &msg2).await?;
            let (opener, sealer) = session.split();
            let (r, w) = tokio::io::split(io);
            Ok((Reader::new(r, opener), Writer::new(w, sealer)))
        }
        noise::Answer::WrongKey(decoy) => {
            // Best effort: the dialler then sees the wrong key too.
            let _ = write_handshake(&mut io, &decoy).await;
            Err(LinkError::WrongKey("dialer"))
        }
    }
}

/// The receiving half: reads records, opens them, decodes each completed message.
pub struct Reader<R> {
    /// Buffered: a record is a length prefix and a body, and the active node's acks are tiny
    /// records that arrive in bursts; unbuffered, each cost two read(2) calls.
    r: tokio::io::BufReader<R>,
    opener: noise::Opener,
    /// One record's ciphertext.
    record: Vec<u8>,
}

/// Read buffer of a link.
const READ_BUF: usize = 64 << 10;

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(r: R, opener: noise::Opener) -> Self {
        Reader {
            r: tokio::io::BufReader::with_capacity(READ_BUF, r),
            opener,
            record: vec![0u8; noise::MAX_RECORD],
        }
    }

    pub async fn recv(&mut self) -> Result<Msg, LinkError> {
        loop {
            let n = read_record(&mut self.r, noise::MAX_RECORD, &mut self.record).await?;
            if let Some(payload) = self.opener.open(&self.record[..n])? {
                return frames::decode(payload);
            }
        }
    }
}

/// The sending half: encodes and seals every message.
pub struct Writer<W> {
    w: W,
    sealer: noise::Sealer,
    /// What the peer's hello said it reads.
    reads: frames::PeerReads,
    /// The records of one write.
    out: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    fn new(w: W, sealer: noise::Sealer) -> Self {
        Writer {
            w,
            sealer,
            reads: frames::PeerReads::default(),
            out: Vec::new(),
        }
    }

    pub async fn send(&mut self, msg: &Msg) -> Result<(), LinkError> {
        self.send_all(std::slice::from_ref(msg)).await
    }

    /// What the peer's hello said it reads ([`LEASE_CODEC`]; 0 from old nodes).
    pub fn peer_lease_codec(&mut self, level: u32) {
        self.reads = frames::PeerReads::from_lease_codec(level);
    }

    /// Seals each message into its own records and writes them all with one write: the
    /// link's writer sends whatever queued meanwhile together.
    pub async fn send_all(&mut self, msgs: &[Msg]) -> Result<(), LinkError> {
        self.out.clear();
        for msg in msgs {
            let payload = frames::encode(msg, self.reads)?;
            self.sealer.seal(&payload, &mut self.out)?;
        }
        self.w.write_all(&self.out).await?;
        self.w.flush().await?;
        // After a bulk-sync batch, do not keep megabytes around for the acks that follow.
        if self.out.capacity() > 4 * READ_BUF {
            self.out = Vec::new();
        }
        Ok(())
    }
}

/// The client side of the HTTP upgrade on a fresh TCP stream. A 426 naming another
/// `athena-ha/N` is [`LinkError::Version`].
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
    upgrade_answer(&String::from_utf8_lossy(&head))
}

/// What a response head to the upgrade request means.
fn upgrade_answer(head: &str) -> Result<(), LinkError> {
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("").to_string();
    if status.contains(" 101 ") {
        return Ok(());
    }
    let offered = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("upgrade"))
        .and_then(|(_, v)| upgrade_version(v));
    match offered {
        Some(peer) if status.contains(" 426") && peer != VERSION => {
            Err(LinkError::Version { peer })
        }
        _ => Err(LinkError::Upgrade(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::frames::tests::some_lease;
    use super::*;
    use crate::config::Role;
    use crate::ha::machine::PeerStatus;
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
        Result<Halves<tokio::io::DuplexStream>, LinkError>,
        Result<Halves<tokio::io::DuplexStream>, LinkError>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        tokio::join!(handshake_dialer(a, kd), handshake_acceptor(b, ka))
    }

    #[tokio::test]
    async fn messages_flow_both_ways_after_the_handshake() {
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

    #[tokio::test]
    async fn a_bulk_sync_batch_over_64_kib_arrives_whole_between_small_messages() {
        let (d, a) = pair(K, K).await;
        let (_dr, mut dw) = d.expect("dialer");
        let (mut ar, _aw) = a.expect("acceptor");
        dw.peer_lease_codec(LEASE_CODEC);
        let batch = Msg::SyncBatch {
            changes: (0..2000u64)
                .map(|i| (i, some_lease((i % 250) as u8)))
                .collect(),
            done: true,
        };
        assert!(
            frames::encode(&batch, frames::PeerReads::default())
                .expect("json")
                .len()
                > 3 * noise::MAX_RECORD
        );
        let sent = [
            Msg::LeasesAck { id: 1 },
            batch.clone(),
            Msg::LeasesAck { id: 2 },
        ];
        let (tx, rx) = tokio::join!(dw.send_all(&sent), async {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(ar.recv().await.expect("recv"));
            }
            got
        });
        tx.expect("send");
        assert_eq!(rx, sent);
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
        // JSON until the peer's hello offered the binary form; both arrive alike.
        dw.send(&frame).await.expect("send");
        assert_eq!(ar.recv().await.expect("recv"), frame);
        dw.peer_lease_codec(LEASE_CODEC);
        dw.send_all(&[frame.clone(), Msg::LeasesAck { id: 4 }])
            .await
            .expect("send");
        assert_eq!(ar.recv().await.expect("recv"), frame);
        assert_eq!(ar.recv().await.expect("recv"), Msg::LeasesAck { id: 4 });
    }

    #[tokio::test]
    async fn a_wrong_key_is_seen_by_both_ends() {
        let (d, a) = pair(K, b"another-secret-of-16").await;
        assert!(matches!(d.err(), Some(LinkError::WrongKey("acceptor"))));
        assert!(matches!(a.err(), Some(LinkError::WrongKey("dialer"))));
    }

    #[tokio::test]
    async fn a_huge_length_prefix_is_refused_before_allocating() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let _ = a.write_all(&0xffffu16.to_be_bytes()).await;
        });
        let e = handshake_acceptor(&mut b, K).await.err().expect("refused");
        assert!(matches!(e, LinkError::Oversize { len: 0xffff, .. }), "{e}");
    }

    #[tokio::test]
    async fn garbage_instead_of_message_1_is_malformed() {
        let (mut a, b) = tokio::io::duplex(1 << 12);
        tokio::spawn(async move {
            let _ = write_handshake(&mut a, b"\x00\x01garbage").await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let e = handshake_acceptor(b, K).await.err().expect("refused");
        assert_eq!(e.kind(), "malformed", "{e}");
    }

    #[test]
    fn a_426_naming_another_version_is_a_version_mismatch() {
        let v1 =
            "HTTP/1.1 426 Upgrade Required\r\nupgrade: athena-ha/1\r\ncontent-length: 5\r\n\r\n";
        let e = upgrade_answer(v1).expect_err("refused");
        assert!(matches!(e, LinkError::Version { peer: 1 }), "{e}");
        assert_eq!(
            e.to_string(),
            "speaks peer-link v1 (HMAC), this node v2 (Noise): upgrade it"
        );
        assert!(
            upgrade_answer("HTTP/1.1 101 Switching Protocols\r\nupgrade: athena-ha/2\r\n\r\n")
                .is_ok()
        );
        assert!(matches!(
            upgrade_answer("HTTP/1.1 404 Not Found\r\n\r\n"),
            Err(LinkError::Upgrade(_))
        ));
        assert_eq!(upgrade_version("Athena-HA/3"), Some(3));
        assert_eq!(upgrade_version("websocket"), None);
        assert_eq!(
            refusal_reason(1),
            "the peer speaks peer-link v2 (Noise), this node v1 (HMAC): upgrade this node"
        );
    }
}
