//! Micro-benchmark: the CPU cost of one replicated lease frame on the peer link, sealed and
//! opened, with the Noise transport (`ha::peer::noise`, ChaCha20-Poly1305) against the
//! HMAC-SHA256 framing of peer-link version 1 (rebuilt here as it was: `seq ‖ HMAC(k, seq ‖
//! payload) ‖ payload`, one HMAC key set-up per frame). Encoding and decoding of the message
//! are included on both sides, as the link does them per frame (rounds 0-2), then left out
//! (rounds 3-4: the crypto and framing alone).
//!
//! `cargo run --release --example peer_link_cost [frames]`: prints µs per frame for a
//! one-lease frame (what a DHCPACK replicates), an ack, and a 200-lease sync batch. On a busy
//! machine take the best of the rounds it prints.

use std::time::Instant;

use athena_dhcpd::ha::peer::frames::{self, Msg, PeerReads};
use athena_dhcpd::ha::peer::noise;
use athena_dhcpd::lease::{Lease, LeaseState};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn lease(i: u32) -> Lease {
    Lease {
        ip: std::net::Ipv4Addr::from(0x0a00_0000 + i),
        mac: [2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8],
        client_id: Some(vec![1, 2, 0, 0, 0, (i >> 8) as u8, i as u8]),
        hostname: Some(format!("client-host-{i}")),
        subnet: "10.0.0.0/16".into(),
        state: LeaseState::Active,
        start: 1_795_559_824,
        expiry: 1_795_563_424,
        updated_ms: 1_795_559_824_000 + u64::from(i),
        relay_info: None,
        classes: Vec::new(),
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Version 1: seal and open one frame (as `peer.rs` did before Noise); the opened payload.
fn hmac_round<'a>(key: &[u8; 32], seq: u64, payload: &[u8], wire: &'a mut Vec<u8>) -> &'a [u8] {
    let s = seq.to_be_bytes();
    let tag = mac(key, &[&s, payload]);
    wire.clear();
    wire.extend_from_slice(&((8 + 32 + payload.len()) as u32).to_be_bytes());
    wire.extend_from_slice(&s);
    wire.extend_from_slice(&tag);
    wire.extend_from_slice(payload);
    // Receiver.
    let body = &wire[4..];
    let (seqb, rest) = body.split_at(8);
    let (t, p) = rest.split_at(32);
    let mut m = HmacSha256::new_from_slice(key).expect("any key length");
    m.update(seqb);
    m.update(p);
    m.verify_slice(t).expect("verifies");
    assert_eq!(u64::from_be_bytes(seqb.try_into().expect("8")), seq);
    p
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let reads = PeerReads::from_lease_codec(frames::LEASE_CODEC);
    let cases = [
        (
            "1-lease frame",
            Msg::Leases {
                id: 1,
                leases: vec![lease(7)],
            },
            n,
        ),
        ("ack", Msg::LeasesAck { id: 1 }, n),
        (
            "200-lease sync batch",
            Msg::SyncBatch {
                changes: (0..200).map(|i| (u64::from(i), lease(i))).collect(),
                done: false,
            },
            (n / 200).max(50),
        ),
    ];
    let secret = b"lab-shared-secret-0123456789abcdef";
    for (name, msg, iters) in &cases {
        let size = frames::encode(msg, reads).expect("encode").len();
        println!("{name}: payload {size} bytes, {iters} frames per round");
        for (round, codec) in [(0, true), (1, true), (2, true), (3, false), (4, false)] {
            // Version 1.
            let key = [7u8; 32];
            let mut wire = Vec::new();
            let t = Instant::now();
            let fixed = frames::encode(msg, reads).expect("encode");
            for i in 0..*iters {
                let p = if codec {
                    frames::encode(msg, reads).expect("encode")
                } else {
                    fixed.clone()
                };
                let opened = hmac_round(&key, u64::from(i) + 1, &p, &mut wire);
                if codec {
                    std::hint::black_box(frames::decode(opened).expect("decode"));
                } else {
                    std::hint::black_box(opened);
                }
            }
            let v1 = t.elapsed().as_secs_f64() * 1e6 / f64::from(*iters);
            // Version 2: a real handshake, then the link's sealer and opener.
            let (init, m1) = noise::Initiator::start(secret).expect("start");
            let noise::Answer::Linked(acc, m2) = noise::respond(secret, &m1).expect("respond")
            else {
                panic!("same secret refused");
            };
            let (_, mut sealer) = init.finish(&m2).expect("finish").split();
            let (mut opener, _) = acc.split();
            let mut wire = Vec::new();
            let t = Instant::now();
            for _ in 0..*iters {
                let p = if codec {
                    frames::encode(msg, reads).expect("encode")
                } else {
                    fixed.clone()
                };
                wire.clear();
                sealer.seal(&p, &mut wire).expect("seal");
                let mut rest = &wire[..];
                let mut got = None;
                while !rest.is_empty() {
                    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    if let Some(m) = opener.open(&rest[2..2 + len]).expect("open") {
                        got = Some(if codec {
                            Some(frames::decode(m).expect("decode"))
                        } else {
                            std::hint::black_box(m);
                            None
                        });
                    }
                    rest = &rest[2 + len..];
                }
                std::hint::black_box(got.expect("complete"));
            }
            let v2 = t.elapsed().as_secs_f64() * 1e6 / f64::from(*iters);
            let what = if codec {
                "with encode/decode"
            } else {
                "crypto + framing only"
            };
            println!(
                "  round {round}, {what}: HMAC (v1) {v1:.2} µs/frame, Noise (v2) {v2:.2} µs/frame ({:+.0}%)",
                (v2 / v1 - 1.0) * 100.0
            );
        }
    }
}
