//! The peer link's crypto: `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s` (the `snow` crate) keyed
//! by `[ha] shared_secret`, and the records that carry messages of up to
//! [`MAX_FRAME`](super::MAX_FRAME) over a transport whose messages are at most 65535 bytes.
//! Pure: bytes in, bytes out; the socket side is `peer`.
//!
//! - The PSK is BLAKE2s-256 of [`PSK_CONTEXT`] ‖ the secret (text of any length, at least 16
//!   bytes; a PSK must be 32). The prologue, [`PROLOGUE`], binds the protocol version into
//!   the handshake hash.
//! - Handshake: `→ psk, e` then `← e, ee`, both with an empty payload, so each is exactly
//!   [`HANDSHAKE_LEN`] bytes (an ephemeral key and a tag). The PSK is mixed in before the
//!   first message is sealed: the acceptor sees a wrong key when message 1 does not decrypt,
//!   and answers with random bytes of message 2's size, so the dialler sees it too (message 2
//!   does not decrypt) and both ends log it.
//! - Transport: each direction numbers its records from 0 (Noise's nonce); a record is
//!   ChaCha20-Poly1305 over at most [`MAX_CHUNK`] bytes. A message is `len u32 ‖ payload`
//!   cut into consecutive records; `len` travels inside the first (authenticated) record and
//!   is checked against `MAX_FRAME` before the message's buffer is allocated.
//!
//! Invariants: a record is opened only under the nonce due next, so a replayed, reordered,
//! reflected (the two directions have different keys) or foreign (another session's keys)
//! record does not decrypt, and the link closes. Only after such a failure does
//! [`Opener`] try nearby nonces, to tell a replay from a forgery in the log; a record that
//! opens under another nonce is never used.

use std::sync::Arc;

use blake2::{Blake2s256, Digest};
use snow::{HandshakeState, StatelessTransportState};

use super::{LinkError, MAX_FRAME};

/// The Noise protocol name.
pub const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Hashed into the handshake: both ends must agree on the peer-link version.
pub const PROLOGUE: &[u8] = b"athena-ha/2";
/// Prefix of the secret when deriving the PSK, so the PSK is never a hash used elsewhere.
pub const PSK_CONTEXT: &[u8] = b"athena-dhcpd peer link v2 psk";
/// Size of each handshake message: an X25519 key and a Poly1305 tag.
pub const HANDSHAKE_LEN: usize = 32 + TAG;
/// Largest Noise message, and so the largest record.
pub const MAX_RECORD: usize = 65535;
/// Poly1305 tag.
const TAG: usize = 16;
/// Plaintext of a full record.
pub const MAX_CHUNK: usize = MAX_RECORD - TAG;
/// The message length at the start of a message's first record.
const LEN_HEADER: usize = 4;
/// After a record fails to open: how many earlier nonces are tried to name it a replay.
const REPLAY_WINDOW: u64 = 64;
/// ... and how many later ones, to name it a reordered record.
const REORDER_WINDOW: u64 = 4;

/// The 32-byte Noise PSK of a shared secret.
pub fn psk(secret: &[u8]) -> [u8; 32] {
    Blake2s256::new()
        .chain_update(PSK_CONTEXT)
        .chain_update(secret)
        .finalize()
        .into()
}

fn builder_error(e: snow::Error) -> LinkError {
    LinkError::Noise(e.to_string())
}

fn handshake(secret: &[u8], initiator: bool) -> Result<HandshakeState, LinkError> {
    let key = psk(secret);
    let b = snow::Builder::new(PATTERN.parse().map_err(builder_error)?)
        .psk(0, &key)
        .prologue(PROLOGUE);
    let hs = if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    };
    hs.map_err(builder_error)
}

fn check_len(what: &'static str, msg: &[u8]) -> Result<(), LinkError> {
    if msg.len() == HANDSHAKE_LEN {
        Ok(())
    } else {
        Err(LinkError::Malformed {
            what,
            detail: format!("{} bytes, not {HANDSHAKE_LEN}", msg.len()),
        })
    }
}

/// The dialler's half of the handshake, between its two messages.
pub struct Initiator(HandshakeState);

impl Initiator {
    /// Starts a handshake: message 1 to send.
    pub fn start(secret: &[u8]) -> Result<(Self, [u8; HANDSHAKE_LEN]), LinkError> {
        let mut hs = handshake(secret, true)?;
        let mut msg = [0u8; HANDSHAKE_LEN];
        let n = hs.write_message(&[], &mut msg).map_err(builder_error)?;
        debug_assert_eq!(n, HANDSHAKE_LEN);
        Ok((Initiator(hs), msg))
    }

    /// Reads message 2: the session, or [`LinkError::WrongKey`] when it does not decrypt.
    pub fn finish(mut self, msg2: &[u8]) -> Result<Session, LinkError> {
        check_len("handshake message 2", msg2)?;
        let mut payload = [0u8; HANDSHAKE_LEN];
        self.0
            .read_message(msg2, &mut payload)
            .map_err(|_| LinkError::WrongKey("acceptor"))?;
        Session::new(self.0)
    }
}

/// The acceptor's answer to message 1.
pub enum Answer {
    /// Message 2 to send, and the session.
    Linked(Session, [u8; HANDSHAKE_LEN]),
    /// Message 1 did not decrypt: send these random bytes in place of message 2 (so the
    /// dialler sees the wrong key too), then close.
    WrongKey([u8; HANDSHAKE_LEN]),
}

/// The acceptor's half of the handshake.
pub fn respond(secret: &[u8], msg1: &[u8]) -> Result<Answer, LinkError> {
    check_len("handshake message 1", msg1)?;
    let mut hs = handshake(secret, false)?;
    let mut payload = [0u8; HANDSHAKE_LEN];
    if hs.read_message(msg1, &mut payload).is_err() {
        let mut decoy = [0u8; HANDSHAKE_LEN];
        rand::fill(&mut decoy[..]);
        return Ok(Answer::WrongKey(decoy));
    }
    let mut msg2 = [0u8; HANDSHAKE_LEN];
    hs.write_message(&[], &mut msg2).map_err(builder_error)?;
    Ok(Answer::Linked(Session::new(hs)?, msg2))
}

/// A finished handshake: the keys of both directions.
pub struct Session(Arc<StatelessTransportState>);

impl Session {
    fn new(hs: HandshakeState) -> Result<Self, LinkError> {
        Ok(Session(Arc::new(
            hs.into_stateless_transport_mode().map_err(builder_error)?,
        )))
    }

    /// The receiving and the sending end, each with its own nonce, for the link's reader
    /// and writer tasks.
    pub fn split(self) -> (Opener, Sealer) {
        (
            Opener {
                state: self.0.clone(),
                nonce: 0,
                plain: vec![0u8; MAX_RECORD],
                msg: Vec::new(),
                pending: None,
            },
            Sealer {
                state: self.0,
                nonce: 0,
                first: Vec::with_capacity(MAX_CHUNK),
            },
        )
    }
}

/// Seals messages into records.
pub struct Sealer {
    state: Arc<StatelessTransportState>,
    nonce: u64,
    /// The first record's plaintext: the length, then the payload's start.
    first: Vec<u8>,
}

impl Sealer {
    /// Appends the records of one message, each as `len u16 ‖ ciphertext`, to `out`.
    pub fn seal(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), LinkError> {
        if payload.len() > MAX_FRAME {
            return Err(LinkError::Oversize {
                len: payload.len(),
                max: MAX_FRAME,
            });
        }
        let split = payload.len().min(MAX_CHUNK - LEN_HEADER);
        let (head, rest) = payload.split_at(split);
        self.first.clear();
        // At most MAX_FRAME (checked above): it fits the u32.
        self.first
            .extend_from_slice(&(payload.len() as u32).to_be_bytes());
        self.first.extend_from_slice(head);
        push_record(&self.state, &mut self.nonce, &self.first, out)?;
        for chunk in rest.chunks(MAX_CHUNK) {
            push_record(&self.state, &mut self.nonce, chunk, out)?;
        }
        Ok(())
    }
}

fn push_record(
    state: &StatelessTransportState,
    nonce: &mut u64,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), LinkError> {
    // plain is at most MAX_CHUNK: the record fits the u16 prefix.
    let len = plain.len() + TAG;
    out.extend_from_slice(&(len as u16).to_be_bytes());
    let start = out.len();
    out.resize(start + len, 0);
    state
        .write_message(*nonce, plain, &mut out[start..])
        .map_err(builder_error)?;
    *nonce += 1;
    Ok(())
}

/// Opens records and puts messages back together.
pub struct Opener {
    state: Arc<StatelessTransportState>,
    /// The nonce of the next record: the only one it is opened under.
    nonce: u64,
    /// One record's plaintext.
    plain: Vec<u8>,
    /// A message spread over several records, while it is put together.
    msg: Vec<u8>,
    /// Its announced length, while more records are due.
    pending: Option<usize>,
}

impl Opener {
    /// Opens the next record (ciphertext, without its length prefix): the whole message
    /// when this record completes one.
    pub fn open(&mut self, record: &[u8]) -> Result<Option<&[u8]>, LinkError> {
        if record.len() < TAG || record.len() > MAX_RECORD {
            return Err(LinkError::Malformed {
                what: "record",
                detail: format!("{} bytes, not between {TAG} and {MAX_RECORD}", record.len()),
            });
        }
        let n = match self.state.read_message(self.nonce, record, &mut self.plain) {
            Ok(n) => n,
            Err(_) => return Err(self.diagnose(record)),
        };
        self.nonce += 1;
        let Some(total) = self.pending else {
            // A message's first record. The last long message is done with: free it.
            self.msg = Vec::new();
            if n < LEN_HEADER {
                return Err(LinkError::Malformed {
                    what: "record",
                    detail: format!("{n} bytes, shorter than a message length"),
                });
            }
            let len = &self.plain[..LEN_HEADER];
            let total = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if total > MAX_FRAME {
                return Err(LinkError::Oversize {
                    len: total,
                    max: MAX_FRAME,
                });
            }
            let body = n - LEN_HEADER;
            if body > total {
                return Err(LinkError::Malformed {
                    what: "record",
                    detail: format!("{body} bytes of a message of {total}"),
                });
            }
            if body == total {
                return Ok(Some(&self.plain[LEN_HEADER..n]));
            }
            self.msg = Vec::with_capacity(total);
            self.msg.extend_from_slice(&self.plain[LEN_HEADER..n]);
            self.pending = Some(total);
            return Ok(None);
        };
        if self.msg.len() + n > total {
            return Err(LinkError::Malformed {
                what: "record",
                detail: format!(
                    "{n} more bytes after {} of a message of {total}",
                    self.msg.len()
                ),
            });
        }
        self.msg.extend_from_slice(&self.plain[..n]);
        if self.msg.len() < total {
            return Ok(None);
        }
        self.pending = None;
        Ok(Some(self.msg.as_slice()))
    }

    /// Why a record did not open: a genuine record of this session under another nonce
    /// (replayed or reordered), or not one of this session's at all.
    fn diagnose(&mut self, record: &[u8]) -> LinkError {
        let want = self.nonce;
        let tries = want.saturating_sub(REPLAY_WINDOW)..want.saturating_add(REORDER_WINDOW + 1);
        for got in tries.filter(|&k| k != want) {
            if self
                .state
                .read_message(got, record, &mut self.plain)
                .is_ok()
            {
                return LinkError::Replay { got, want };
            }
        }
        LinkError::BadMac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &[u8] = b"0123456789abcdef0123";

    /// The dialler's and the acceptor's ends.
    type Ends = ((Opener, Sealer), (Opener, Sealer));

    fn session(kd: &[u8], ka: &[u8]) -> Result<Ends, LinkError> {
        let (init, m1) = Initiator::start(kd)?;
        let Answer::Linked(acc, m2) = respond(ka, &m1)? else {
            return Err(LinkError::WrongKey("dialer"));
        };
        Ok((init.finish(&m2)?.split(), acc.split()))
    }

    /// The records of `payload`, each without its length prefix.
    fn records(s: &mut Sealer, payload: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        s.seal(payload, &mut out).expect("seal");
        let mut recs = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            recs.push(rest[2..2 + len].to_vec());
            rest = &rest[2 + len..];
        }
        recs
    }

    fn open_all(o: &mut Opener, recs: &[Vec<u8>]) -> Result<Option<Vec<u8>>, LinkError> {
        let mut last = None;
        for r in recs {
            last = o.open(r)?.map(<[u8]>::to_vec);
        }
        Ok(last)
    }

    #[test]
    fn the_psk_is_blake2s_of_the_context_and_the_secret() {
        let mut input = PSK_CONTEXT.to_vec();
        input.extend_from_slice(K);
        let want: [u8; 32] = Blake2s256::digest(&input).into();
        assert_eq!(psk(K), want);
        assert_ne!(psk(K), psk(b"0123456789abcdef0124"));
    }

    #[test]
    fn a_wrong_key_fails_message_1_at_the_acceptor_and_its_decoy_at_the_dialler() {
        let (init, m1) = Initiator::start(K).expect("start");
        let Ok(Answer::WrongKey(decoy)) = respond(b"another-secret-of-16", &m1) else {
            panic!("the acceptor took a wrong key");
        };
        assert!(matches!(
            init.finish(&decoy),
            Err(LinkError::WrongKey("acceptor"))
        ));
    }

    #[test]
    fn handshake_messages_of_the_wrong_size_are_malformed() {
        assert!(matches!(
            respond(K, &[0u8; 20]),
            Err(LinkError::Malformed { .. })
        ));
        let (init, _) = Initiator::start(K).expect("start");
        assert!(matches!(
            init.finish(&[0u8; 49]),
            Err(LinkError::Malformed { .. })
        ));
    }

    #[test]
    fn messages_flow_both_ways_and_are_not_in_clear() {
        let ((mut dr, mut dw), (mut ar, mut aw)) = session(K, K).expect("session");
        let secret_mac = b"MAC 02:00:00:00:00:2a host-secret";
        let recs = records(&mut dw, secret_mac);
        assert_eq!(recs.len(), 1);
        assert!(!recs[0].windows(11).any(|w| w == b"host-secret"));
        assert_eq!(
            open_all(&mut ar, &recs).expect("open").as_deref(),
            Some(&secret_mac[..])
        );
        let recs = records(&mut aw, b"");
        assert_eq!(open_all(&mut dr, &recs).expect("open"), Some(vec![]));
    }

    #[test]
    fn a_message_of_max_frame_travels_in_records_of_at_most_65535_bytes() {
        let ((_, mut dw), (mut ar, _)) = session(K, K).expect("session");
        let big: Vec<u8> = (0..MAX_FRAME).map(|i| (i * 7 % 251) as u8).collect();
        let recs = records(&mut dw, &big);
        assert!(recs.len() > MAX_FRAME / MAX_RECORD);
        assert!(recs.iter().all(|r| r.len() <= MAX_RECORD));
        for r in &recs[..recs.len() - 1] {
            assert!(ar.open(r).expect("open").is_none());
        }
        let last = ar.open(&recs[recs.len() - 1]).expect("open");
        assert_eq!(last.map(<[u8]>::to_vec), Some(big));
        // A message one byte longer is refused by the sender.
        let mut out = Vec::new();
        assert!(matches!(
            dw.seal(&vec![0u8; MAX_FRAME + 1], &mut out),
            Err(LinkError::Oversize { .. })
        ));
    }

    #[test]
    fn an_announced_length_over_max_frame_is_refused_before_allocating() {
        let ((_, mut dw), (mut ar, _)) = session(K, K).expect("session");
        // A record whose plaintext announces 2 GiB, sealed with the right key (a peer gone
        // wrong): refused from the length alone.
        let mut out = Vec::new();
        push_record(
            &dw.state,
            &mut dw.nonce,
            &0x8000_0000u32.to_be_bytes(),
            &mut out,
        )
        .expect("seal");
        let e = ar.open(&out[2..]).expect_err("refused");
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

    #[test]
    fn replayed_reordered_reflected_and_foreign_records_do_not_open() {
        let ((_, mut dw), (mut ar, mut aw)) = session(K, K).expect("session");
        let r0 = records(&mut dw, b"zero");
        let r1 = records(&mut dw, b"one");
        let r2 = records(&mut dw, b"two");
        assert!(open_all(&mut ar, &r0).expect("open").is_some());
        // Reordered: record 2 while 1 is due.
        assert!(matches!(
            ar.open(&r2[0]),
            Err(LinkError::Replay { got: 2, want: 1 })
        ));
        assert!(open_all(&mut ar, &r1).expect("open").is_some());
        // Replayed: record 0 again.
        assert!(matches!(
            ar.open(&r0[0]),
            Err(LinkError::Replay { got: 0, want: 2 })
        ));
        // Reflected: the acceptor's own record sent back to it.
        let mine = records(&mut aw, b"two");
        assert!(matches!(ar.open(&mine[0]), Err(LinkError::BadMac)));
        // Another session with the same secret: other ephemeral keys, other keys.
        let ((_, mut other), _) = session(K, K).expect("session");
        let foreign = records(&mut other, b"two");
        assert!(matches!(ar.open(&foreign[0]), Err(LinkError::BadMac)));
        // Tampered: one bit of the genuine record 2.
        let mut bad = r2[0].clone();
        bad[0] ^= 1;
        assert!(matches!(ar.open(&bad), Err(LinkError::BadMac)));
        // None of it moved the nonce: the genuine record 2 still opens.
        assert_eq!(
            open_all(&mut ar, &r2).expect("open").as_deref(),
            Some(&b"two"[..])
        );
    }

    #[test]
    fn short_and_overrunning_records_are_malformed() {
        let ((_, mut dw), (mut ar, _)) = session(K, K).expect("session");
        assert!(matches!(
            ar.open(&[0u8; 10]),
            Err(LinkError::Malformed { .. })
        ));
        // A first record with no room for the length.
        let mut out = Vec::new();
        push_record(&dw.state, &mut dw.nonce, b"ab", &mut out).expect("seal");
        assert!(matches!(
            ar.open(&out[2..]),
            Err(LinkError::Malformed { .. })
        ));
        // A message announced as 3 bytes with 5 in its record.
        let mut out = Vec::new();
        let mut p = 3u32.to_be_bytes().to_vec();
        p.extend_from_slice(b"hello");
        push_record(&dw.state, &mut dw.nonce, &p, &mut out).expect("seal");
        assert!(matches!(
            ar.open(&out[2..]),
            Err(LinkError::Malformed { .. })
        ));
    }
}
