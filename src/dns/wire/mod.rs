//! DNS wire format on the hot path: parse a query without allocating, and serve pre-encoded
//! answers by patching a copy (ID, the client's spelling of the question, decremented TTLs,
//! an OPT record, truncation).
//!
//! Why not a full message parse per query: a cache or local hit must cost far less than a
//! syscall, and a decoded `hickory_proto` message allocates for every name and record. Answers
//! are built once (from an upstream reply or with `hickory_proto` for local data), checked by
//! [`Answer::from_wire`], and then only copied and patched.
//!
//! Invariants: [`Answer::wire`] holds exactly one question, at offset 12, without compression
//! (it is the first name of the message), and no OPT record; every TTL in it is listed in
//! `ttl_offsets`. Query parsing never follows compression pointers (a question has nothing to
//! point to), so pointer loops cannot make it spin; it only reads inside the datagram.
//!
//! The pieces: `query` reads what a client sent, `answer` serves what we hold,
//! `upstream` writes and checks what goes to and comes from a forwarder, `name` converts
//! and compares names. Everything is re-exported here, so callers name `wire::X`.

mod answer;
mod name;
mod query;
mod upstream;

pub use answer::{render_error, Answer, MAX_CACHE_TTL};
pub use name::{is_at_or_below, name_to_wire, reverse_v4, reverse_v6, wire_to_text};
pub use query::{parse_query, split_key, Edns, Malformed, ParsedQuery, QueryMeta};
pub use upstream::{build_query, is_truncated, rcode, reply_matches, reply_mismatch};

pub const HEADER_LEN: usize = 12;
/// Largest UDP reply we send (DNS flag day 2020): bigger answers are truncated so the client
/// retries over TCP instead of relying on IP fragments.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// Plain DNS over UDP without EDNS(0).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_SOA: u16 = 6;
pub const CLASS_IN: u16 = 1;
/// Longest name on the wire (RFC 1035 §3.1).
pub const MAX_NAME: usize = 255;
/// Cache key: qtype (2), qclass (2), flags (1), lowercase name.
pub const KEY_MAX: usize = 5 + MAX_NAME;
/// Question as sent: name + qtype + qclass.
pub const QUESTION_MAX: usize = MAX_NAME + 4;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// A query as a client sends it, for the tests of every part.
#[cfg(test)]
fn query_bytes(name: &str, rtype: hickory_proto::rr::RecordType, edns: bool) -> Vec<u8> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::Name;
    let mut m = Message::new();
    m.set_id(0x1234)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if edns {
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(4096);
        e.set_dnssec_ok(true);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}
