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

use std::net::{Ipv4Addr, Ipv6Addr};

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

/// Why a datagram was not a query we could answer; counted under this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than a DNS header")]
    Short,
    #[error("a response where a query was expected")]
    NotQuery,
    #[error("question count {0}, expected 1")]
    QuestionCount(u16),
    #[error("bad name in the question")]
    BadName,
    #[error("message ends inside a section")]
    Truncated,
    #[error("bad OPT record")]
    BadOpt,
    #[error("zero-length TCP frame")]
    ZeroLength,
}

impl Malformed {
    /// Metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Malformed::Short => "short",
            Malformed::NotQuery => "not_query",
            Malformed::QuestionCount(_) => "question_count",
            Malformed::BadName => "bad_name",
            Malformed::Truncated => "truncated",
            Malformed::BadOpt => "bad_opt",
            Malformed::ZeroLength => "zero_length_frame",
        }
    }
}

/// The client's EDNS(0) parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub dnssec_ok: bool,
    pub version: u8,
}

/// What a reply to one query must echo: everything a waiter keeps while a forward runs.
#[derive(Clone)]
pub struct QueryMeta {
    pub id: u16,
    /// Byte 2 of the query header: QR, opcode, AA, TC, RD.
    pub flags_hi: u8,
    /// Byte 3: RA, Z, AD, CD, rcode.
    pub flags_lo: u8,
    pub edns: Option<Edns>,
    question: [u8; QUESTION_MAX],
    question_len: u16,
}

impl QueryMeta {
    /// Name + qtype + qclass as the client spelled them.
    pub fn question(&self) -> &[u8] {
        &self.question[..self.question_len as usize]
    }
    pub fn opcode(&self) -> u8 {
        (self.flags_hi >> 3) & 0x0f
    }
    pub fn qtype(&self) -> u16 {
        let q = self.question();
        u16::from_be_bytes([q[q.len() - 4], q[q.len() - 3]])
    }
    pub fn qclass(&self) -> u16 {
        let q = self.question();
        u16::from_be_bytes([q[q.len() - 2], q[q.len() - 1]])
    }
    /// Largest reply for this client over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => e.udp_size.clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD) as usize,
            None => CLASSIC_UDP_PAYLOAD as usize,
        }
    }
}

/// A parsed query: what to echo and the cache key.
#[derive(Clone)]
pub struct ParsedQuery {
    pub meta: QueryMeta,
    key: [u8; KEY_MAX],
    key_len: u16,
}

impl ParsedQuery {
    /// (qtype, qclass, DO flag, lowercase wire name): two queries with the same key get the
    /// same answer apart from ID, case and TTLs.
    pub fn key(&self) -> &[u8] {
        &self.key[..self.key_len as usize]
    }
    /// The lowercase wire name.
    pub fn name(&self) -> &[u8] {
        &self.key[5..self.key_len as usize]
    }
    pub fn qtype(&self) -> u16 {
        u16::from_be_bytes([self.key[0], self.key[1]])
    }
    pub fn qclass(&self) -> u16 {
        u16::from_be_bytes([self.key[2], self.key[3]])
    }
}

/// Splits a cache key into (qtype, qclass, name).
pub fn split_key(key: &[u8]) -> (u16, u16, &[u8]) {
    (
        u16::from_be_bytes([key[0], key[1]]),
        u16::from_be_bytes([key[2], key[3]]),
        &key[5..],
    )
}

/// Parses a query. Only the header, the one question and OPT in the additional section are
/// read; answer/authority records (which a query should not carry) are skipped.
pub fn parse_query(msg: &[u8]) -> Result<ParsedQuery, Malformed> {
    if msg.len() < HEADER_LEN {
        return Err(Malformed::Short);
    }
    let flags_hi = msg[2];
    if flags_hi & 0x80 != 0 {
        return Err(Malformed::NotQuery);
    }
    let qd = be16(msg, 4);
    if qd != 1 {
        return Err(Malformed::QuestionCount(qd));
    }
    let (an, ns, ar) = (be16(msg, 6), be16(msg, 8), be16(msg, 10));
    let mut key = [0u8; KEY_MAX];
    let mut question = [0u8; QUESTION_MAX];
    let mut pos = HEADER_LEN;
    let mut n = 0usize;
    loop {
        let l = *msg.get(pos).ok_or(Malformed::Truncated)? as usize;
        if l & 0xc0 != 0 {
            // A pointer (or a reserved label type): the question is the first name, so there
            // is nothing legitimate to point to.
            return Err(Malformed::BadName);
        }
        if n + 1 + l > MAX_NAME {
            return Err(Malformed::BadName);
        }
        let label = msg.get(pos..pos + 1 + l).ok_or(Malformed::Truncated)?;
        question[n..n + 1 + l].copy_from_slice(label);
        key[5 + n] = l as u8;
        for (d, s) in key[5 + n + 1..5 + n + 1 + l].iter_mut().zip(&label[1..]) {
            *d = s.to_ascii_lowercase();
        }
        n += 1 + l;
        pos += 1 + l;
        if l == 0 {
            break;
        }
    }
    let tc = msg.get(pos..pos + 4).ok_or(Malformed::Truncated)?;
    question[n..n + 4].copy_from_slice(tc);
    key[0..4].copy_from_slice(tc);
    pos += 4;
    let question_len = n + 4;
    for _ in 0..(an as usize + ns as usize) {
        pos = skip_rr(msg, pos)?.0;
    }
    let mut edns = None;
    for _ in 0..ar {
        let (next, rtype, start) = skip_rr(msg, pos)?;
        if rtype == TYPE_OPT {
            // OPT: root owner, class = UDP size, TTL = ext-rcode, version, DO + Z.
            if edns.is_some() || msg[start] != 0 {
                return Err(Malformed::BadOpt);
            }
            let udp_size = be16(msg, start + 3);
            edns = Some(Edns {
                udp_size,
                version: msg[start + 6],
                dnssec_ok: msg[start + 7] & 0x80 != 0,
            });
        }
        pos = next;
    }
    key[4] = u8::from(edns.is_some_and(|e| e.dnssec_ok));
    Ok(ParsedQuery {
        meta: QueryMeta {
            id: be16(msg, 0),
            flags_hi,
            flags_lo: msg[3],
            edns,
            question,
            question_len: question_len as u16,
        },
        key,
        key_len: (5 + n) as u16,
    })
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Skips a name without following pointers; returns the offset after it.
fn skip_name(msg: &[u8], mut pos: usize) -> Result<usize, Malformed> {
    // 128 labels is the most a 255-byte name can hold.
    for _ in 0..128 {
        let l = *msg.get(pos).ok_or(Malformed::Truncated)? as usize;
        match l & 0xc0 {
            0x00 if l == 0 => return Ok(pos + 1),
            0x00 => pos += 1 + l,
            0xc0 => {
                if pos + 2 > msg.len() {
                    return Err(Malformed::Truncated);
                }
                return Ok(pos + 2);
            }
            _ => return Err(Malformed::BadName),
        }
    }
    Err(Malformed::BadName)
}

/// Skips one resource record; returns (offset after it, its type, its start).
fn skip_rr(msg: &[u8], pos: usize) -> Result<(usize, u16, usize), Malformed> {
    let after_name = skip_name(msg, pos)?;
    if after_name + 10 > msg.len() {
        return Err(Malformed::Truncated);
    }
    let rtype = be16(msg, after_name);
    let rdlen = be16(msg, after_name + 8) as usize;
    let end = after_name + 10 + rdlen;
    if end > msg.len() {
        return Err(Malformed::Truncated);
    }
    Ok((end, rtype, pos))
}

/// Longest we keep anything, whatever the TTL says (a bound on stale data after upstream
/// changes we cannot see).
pub const MAX_CACHE_TTL: u32 = 86_400;

/// A complete answer, encoded once, served many times.
#[derive(Debug)]
pub struct Answer {
    wire: Box<[u8]>,
    question_len: usize,
    /// (offset of a TTL field, its value when built).
    ttl_offsets: Box<[(u16, u32)]>,
    /// How long this may be cached; None: not cacheable.
    cache_ttl: Option<u32>,
}

impl Answer {
    /// Checks a complete response and prepares it for serving: removes the OPT record (each
    /// client gets its own), records where the TTLs are, and works out how long it may be
    /// cached (RFC 2308 for negative answers: the SOA's TTL capped by its MINIMUM).
    pub fn from_wire(mut msg: Vec<u8>) -> Result<Answer, Malformed> {
        if msg.len() < HEADER_LEN {
            return Err(Malformed::Short);
        }
        if msg[2] & 0x80 == 0 {
            return Err(Malformed::NotQuery);
        }
        let qd = be16(&msg, 4);
        if qd != 1 {
            return Err(Malformed::QuestionCount(qd));
        }
        let counts = [be16(&msg, 6), be16(&msg, 8), be16(&msg, 10)];
        // The question must be pointer-free so a client's spelling can be copied over it.
        let mut pos = HEADER_LEN;
        loop {
            let l = *msg.get(pos).ok_or(Malformed::Truncated)? as usize;
            if l & 0xc0 != 0 {
                return Err(Malformed::BadName);
            }
            pos += 1 + l;
            if l == 0 {
                break;
            }
        }
        pos += 4;
        if pos > msg.len() {
            return Err(Malformed::Truncated);
        }
        let question_len = pos - HEADER_LEN;
        let rcode = msg[3] & 0x0f;
        let mut ttls = Vec::new();
        let mut min_ttl = u32::MAX;
        let mut soa_neg_ttl: Option<u32> = None;
        let mut opt: Option<(usize, usize)> = None;
        for (section, &count) in counts.iter().enumerate() {
            for _ in 0..count {
                let (end, rtype, start) = skip_rr(&msg, pos)?;
                if rtype == TYPE_OPT {
                    if section != 2 || opt.is_some() {
                        return Err(Malformed::BadOpt);
                    }
                    opt = Some((start, end));
                } else {
                    let ttl_at = skip_name(&msg, start)? + 4;
                    let ttl = u32::from_be_bytes([
                        msg[ttl_at],
                        msg[ttl_at + 1],
                        msg[ttl_at + 2],
                        msg[ttl_at + 3],
                    ]) & 0x7fff_ffff;
                    if section == 1 && rtype == TYPE_SOA && end >= 4 {
                        let minimum = u32::from_be_bytes([
                            msg[end - 4],
                            msg[end - 3],
                            msg[end - 2],
                            msg[end - 1],
                        ]);
                        let neg = ttl.min(minimum);
                        soa_neg_ttl = Some(neg);
                        if counts[0] == 0 {
                            // RFC 2308 §5: the SOA in a negative answer carries the negative TTL.
                            msg[ttl_at..ttl_at + 4].copy_from_slice(&neg.to_be_bytes());
                            ttls.push((ttl_at, neg));
                            min_ttl = min_ttl.min(neg);
                            pos = end;
                            continue;
                        }
                    }
                    ttls.push((ttl_at, ttl));
                    min_ttl = min_ttl.min(ttl);
                }
                pos = end;
            }
        }
        if pos != msg.len() {
            // Trailing bytes: tolerated from upstreams (ignored), never served.
            msg.truncate(pos);
        }
        if let Some((start, end)) = opt {
            if end != msg.len() {
                // OPT not last: removing it would move names later records may point at.
                return Err(Malformed::BadOpt);
            }
            msg.truncate(start);
            let ar = counts[2] - 1;
            put16(&mut msg, 10, ar);
        }
        if msg.len() > u16::MAX as usize {
            return Err(Malformed::Truncated);
        }
        let truncated = msg[2] & 0x02 != 0;
        let cache_ttl = if truncated {
            None
        } else {
            match rcode {
                RCODE_NOERROR if counts[0] > 0 => Some(min_ttl),
                // A CNAME chain ending in a negative answer lives no longer than its links.
                RCODE_NOERROR | RCODE_NXDOMAIN => soa_neg_ttl.map(|n| n.min(min_ttl)),
                _ => None,
            }
        }
        .map(|t| t.min(MAX_CACHE_TTL))
        .filter(|&t| t > 0);
        Ok(Answer {
            wire: msg.into_boxed_slice(),
            question_len,
            ttl_offsets: ttls.into_iter().map(|(o, t)| (o as u16, t)).collect(),
            cache_ttl,
        })
    }

    pub fn rcode(&self) -> u8 {
        self.wire[3] & 0x0f
    }
    pub fn cache_ttl(&self) -> Option<u32> {
        self.cache_ttl
    }
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }
    pub fn answer_count(&self) -> u16 {
        be16(&self.wire, 6)
    }

    /// Writes the reply for `q` into `out`: this answer with the client's ID, RD and spelling,
    /// TTLs lowered by `elapsed` seconds, OPT if the client sent one, truncated with TC when
    /// longer than `limit`.
    pub fn render(&self, q: &QueryMeta, elapsed: u32, limit: usize, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.wire);
        out[0..2].copy_from_slice(&q.id.to_be_bytes());
        // Keep QR, opcode and AA from the answer; TC is decided below; RD echoes the query.
        out[2] = (self.wire[2] & 0xfc) | (q.flags_hi & 0x01);
        // RA, AD and rcode from the answer; CD echoes the query.
        out[3] = (self.wire[3] & 0xef) | (q.flags_lo & 0x10);
        let question = q.question();
        if question.len() == self.question_len {
            out[HEADER_LEN..HEADER_LEN + self.question_len].copy_from_slice(question);
        }
        if elapsed > 0 {
            for &(off, ttl) in self.ttl_offsets.iter() {
                let off = off as usize;
                out[off..off + 4].copy_from_slice(&ttl.saturating_sub(elapsed).to_be_bytes());
            }
        }
        if out.len() + if q.edns.is_some() { 11 } else { 0 } > limit {
            out.truncate(HEADER_LEN + self.question_len);
            out[2] |= 0x02;
            out[6..12].fill(0);
        }
        push_opt(q, out);
    }

    /// Like [`Answer::render`] for an expired answer served stale: every TTL says `ttl`
    /// (RFC 8767 §4: 30 s, so clients come back soon for a fresh one).
    pub fn render_stale(&self, q: &QueryMeta, ttl: u32, limit: usize, out: &mut Vec<u8>) {
        self.render(q, 0, limit, out);
        if out[2] & 0x02 != 0 {
            return; // truncated: no records left (cached answers never carry TC themselves)
        }
        for &(off, _) in self.ttl_offsets.iter() {
            let off = off as usize;
            out[off..off + 4].copy_from_slice(&ttl.to_be_bytes());
        }
    }
}

fn push_opt(q: &QueryMeta, out: &mut Vec<u8>) {
    if let Some(e) = q.edns {
        let ar = be16(out, 10).saturating_add(1);
        put16(out, 10, ar);
        let size = MAX_UDP_PAYLOAD.to_be_bytes();
        let flags = if e.dnssec_ok { 0x80 } else { 0 };
        out.extend_from_slice(&[0, 0, 41, size[0], size[1], 0, 0, flags, 0, 0, 0]);
    }
}

/// A reply with no records: header, the question, OPT. For NOTIMP, REFUSED and SERVFAIL.
pub fn render_error(q: &QueryMeta, rcode: u8, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, the query's opcode and RD.
    out.push(0x80 | (q.flags_hi & 0x79));
    // RA, CD echoed, rcode.
    out.push(0x80 | (q.flags_lo & 0x10) | (rcode & 0x0f));
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(q.question());
    push_opt(q, out);
}

/// An upstream query for `question` (name, type, class) with ID `id`, recursion desired and
/// our EDNS(0) buffer size; `dnssec_ok` passes the client's DO bit on.
pub fn build_query(id: u16, question: &[u8], dnssec_ok: bool) -> Vec<u8> {
    let mut q = Vec::with_capacity(HEADER_LEN + question.len() + 11);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    q.extend_from_slice(question);
    let size = MAX_UDP_PAYLOAD.to_be_bytes();
    let flags = if dnssec_ok { 0x80 } else { 0 };
    q.extend_from_slice(&[0, 0, 41, size[0], size[1], 0, 0, flags, 0, 0, 0]);
    q
}

/// Does `reply` answer the query with `id` for `question`? (ID and question, the latter
/// case-insensitively: some servers randomise case.) Nothing else is accepted from upstream.
pub fn reply_matches(reply: &[u8], id: u16, question: &[u8]) -> bool {
    reply_mismatch(reply, id, question).is_none()
}

/// Why `reply` does not answer the query with `id` for `question` (a metric reason), or
/// None when it does.
pub fn reply_mismatch(reply: &[u8], id: u16, question: &[u8]) -> Option<&'static str> {
    if reply.len() < HEADER_LEN {
        return Some("short");
    }
    if reply[2] & 0x80 == 0 {
        return Some("not_response");
    }
    if be16(reply, 0) != id {
        return Some("wrong_id");
    }
    let matches = be16(reply, 4) == 1
        && reply
            .get(HEADER_LEN..HEADER_LEN + question.len())
            .is_some_and(|q| q.eq_ignore_ascii_case(question));
    (!matches).then_some("wrong_question")
}

/// Is the TC bit set?
pub fn is_truncated(reply: &[u8]) -> bool {
    reply.len() >= HEADER_LEN && reply[2] & 0x02 != 0
}

/// The rcode of a reply.
pub fn rcode(reply: &[u8]) -> u8 {
    if reply.len() >= HEADER_LEN {
        reply[3] & 0x0f
    } else {
        RCODE_FORMERR
    }
}

/// `"host.example."` (or without the trailing dot) → lowercase wire name. None when a label
/// is empty or too long or the name is longer than 255 bytes.
pub fn name_to_wire(name: &str) -> Option<Vec<u8>> {
    let t = name.trim_end_matches('.');
    let mut out = Vec::with_capacity(t.len() + 2);
    if !t.is_empty() {
        for label in t.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    (out.len() <= MAX_NAME).then_some(out)
}

/// Wire name → `"host.example."` (for logs and hickory names); non-printable bytes escaped.
pub fn wire_to_text(name: &[u8]) -> String {
    let mut s = String::new();
    let mut pos = 0;
    while let Some(&l) = name.get(pos) {
        if l == 0 || l & 0xc0 != 0 {
            break;
        }
        let l = l as usize;
        for &b in name.get(pos + 1..pos + 1 + l).unwrap_or(&[]) {
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                s.push(b as char);
            } else {
                s.push_str(&format!("\\{b:03}"));
            }
        }
        s.push('.');
        pos += 1 + l;
    }
    if s.is_empty() {
        s.push('.');
    }
    s
}

/// Is `name` equal to or below `zone` (both lowercase wire names)? Compares at label
/// boundaries only, so `xhome.lan` is not under `home.lan`.
pub fn is_at_or_below(name: &[u8], zone: &[u8]) -> bool {
    let mut pos = 0;
    loop {
        if name.len() - pos == zone.len() {
            return name[pos..] == *zone;
        }
        match name.get(pos) {
            Some(&l) if l != 0 && name.len() - pos > zone.len() => pos += 1 + l as usize,
            _ => return false,
        }
        if pos > name.len() {
            return false;
        }
    }
}

/// `10.0.0.5` → the wire name of `5.0.0.10.in-addr.arpa.`
pub fn reverse_v4(ip: Ipv4Addr) -> Vec<u8> {
    let o = ip.octets();
    let text = format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]);
    name_to_wire(&text).unwrap_or_default()
}

/// The nibble-reversed `ip6.arpa` wire name of an IPv6 address.
pub fn reverse_v6(ip: Ipv6Addr) -> Vec<u8> {
    let mut text = String::with_capacity(72);
    for b in ip.octets().iter().rev() {
        text.push_str(&format!("{:x}.{:x}.", b & 0x0f, b >> 4));
    }
    text.push_str("ip6.arpa");
    name_to_wire(&text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{rdata, DNSClass, Name, RData, Record, RecordType};

    fn query_bytes(name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
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

    fn answer_for(name: &str, ttl: u32, n: usize) -> Answer {
        let mut m = Message::new();
        m.set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_recursion_available(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        for i in 0..n {
            m.add_answer(Record::from_rdata(
                Name::from_ascii(name).unwrap(),
                ttl,
                RData::A(rdata::A(Ipv4Addr::new(
                    10,
                    0,
                    (i / 256) as u8,
                    (i % 256) as u8,
                ))),
            ));
        }
        Answer::from_wire(m.to_vec().unwrap()).unwrap()
    }

    #[test]
    fn query_parse_lowercases_the_key_and_keeps_the_spelling() {
        let b = query_bytes("WwW.Example.COM.", RecordType::AAAA, true);
        let q = parse_query(&b).unwrap();
        assert_eq!(q.meta.id, 0x1234);
        assert_eq!(q.qtype(), 28);
        assert_eq!(q.qclass(), 1);
        assert_eq!(q.name(), &name_to_wire("www.example.com").unwrap()[..]);
        assert_eq!(&q.meta.question()[1..4], b"WwW");
        assert_eq!(
            q.meta.edns,
            Some(Edns {
                udp_size: 4096,
                dnssec_ok: true,
                version: 0
            })
        );
        assert_eq!(q.key()[4], 1, "DO is part of the key");
        let plain = parse_query(&query_bytes("www.example.com.", RecordType::AAAA, false)).unwrap();
        assert_eq!(plain.meta.edns, None);
        assert_eq!(plain.meta.udp_limit(), 512);
        assert_eq!(q.meta.udp_limit(), MAX_UDP_PAYLOAD as usize);
    }

    #[test]
    fn malformed_queries_are_refused_with_a_reason() {
        assert_eq!(parse_query(&[1, 2, 3]).err(), Some(Malformed::Short));
        let mut b = query_bytes("a.example.", RecordType::A, false);
        b[4..6].copy_from_slice(&65535u16.to_be_bytes());
        assert_eq!(parse_query(&b).err(), Some(Malformed::QuestionCount(65535)));
        // A question that is a pointer to itself.
        let mut lp = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        lp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse_query(&lp).err(), Some(Malformed::BadName));
        let mut resp = query_bytes("a.example.", RecordType::A, false);
        resp[2] |= 0x80;
        assert_eq!(parse_query(&resp).err(), Some(Malformed::NotQuery));
        let cut = query_bytes("a.example.", RecordType::A, true);
        assert_eq!(
            parse_query(&cut[..cut.len() - 3]).err(),
            Some(Malformed::Truncated)
        );
        // A label running past the end.
        let mut long = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 60];
        long.extend_from_slice(b"abc");
        assert_eq!(parse_query(&long).err(), Some(Malformed::Truncated));
    }

    #[test]
    fn render_round_trips_through_hickory_with_the_clients_id_and_case() {
        let a = answer_for("host.example.", 300, 2);
        assert_eq!(a.cache_ttl(), Some(300));
        let q = parse_query(&query_bytes("HOST.example.", RecordType::A, true)).unwrap();
        let mut out = Vec::new();
        a.render(&q.meta, 100, q.meta.udp_limit(), &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.id(), 0x1234);
        assert!(m.recursion_desired());
        assert_eq!(m.queries()[0].name().to_ascii(), "HOST.example.");
        assert_eq!(m.answers().len(), 2);
        assert!(m.answers().iter().all(|r| r.ttl() == 200));
        let e = m.extensions().as_ref().expect("OPT echoed");
        assert_eq!(e.max_payload(), MAX_UDP_PAYLOAD);
        assert!(e.flags().dnssec_ok);
    }

    #[test]
    fn too_long_for_the_client_is_truncated_with_tc() {
        let a = answer_for("big.example.", 60, 40);
        let q = parse_query(&query_bytes("big.example.", RecordType::A, false)).unwrap();
        let mut out = Vec::new();
        a.render(&q.meta, 0, q.meta.udp_limit(), &mut out);
        assert!(out.len() <= 512);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.truncated());
        assert_eq!(m.answers().len(), 0);
        assert_eq!(m.queries().len(), 1);
        // Over TCP the whole answer goes out.
        a.render(&q.meta, 0, 65535, &mut out);
        assert_eq!(Message::from_vec(&out).unwrap().answers().len(), 40);
    }

    #[test]
    fn negative_answers_are_cached_for_the_soa_minimum() {
        let mut m = Message::new();
        let zone = Name::from_ascii("example.").unwrap();
        m.set_message_type(MessageType::Response)
            .set_response_code(hickory_proto::op::ResponseCode::NXDomain)
            .add_query(Query::query(
                Name::from_ascii("nope.example.").unwrap(),
                RecordType::A,
            ));
        m.add_name_server(Record::from_rdata(
            zone.clone(),
            3600,
            RData::SOA(rdata::SOA::new(zone.clone(), zone, 1, 1, 1, 1, 30)),
        ));
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
        let a = Answer::from_wire(m.to_vec().unwrap()).unwrap();
        assert_eq!(a.rcode(), RCODE_NXDOMAIN);
        assert_eq!(a.cache_ttl(), Some(30));
        let parsed = Message::from_vec(a.wire()).unwrap();
        assert!(parsed.extensions().is_none(), "upstream OPT removed");
        assert_eq!(parsed.name_servers()[0].ttl(), 30);
        // Without an SOA a negative answer is not cached (RFC 2308 §5).
        let mut m2 = Message::new();
        m2.set_message_type(MessageType::Response)
            .set_response_code(hickory_proto::op::ResponseCode::NXDomain)
            .add_query(Query::query(
                Name::from_ascii("x.example.").unwrap(),
                RecordType::A,
            ));
        assert_eq!(
            Answer::from_wire(m2.to_vec().unwrap()).unwrap().cache_ttl(),
            None
        );
        // SERVFAIL is never cached.
        let mut m3 = Message::new();
        m3.set_message_type(MessageType::Response)
            .set_response_code(hickory_proto::op::ResponseCode::ServFail)
            .add_query(Query::query(
                Name::from_ascii("x.example.").unwrap(),
                RecordType::A,
            ));
        assert_eq!(
            Answer::from_wire(m3.to_vec().unwrap()).unwrap().cache_ttl(),
            None
        );
    }

    #[test]
    fn error_replies_echo_the_question() {
        let q = parse_query(&query_bytes("x.example.", RecordType::MX, true)).unwrap();
        let mut out = Vec::new();
        render_error(&q.meta, RCODE_SERVFAIL, &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.response_code(), hickory_proto::op::ResponseCode::ServFail);
        assert_eq!(m.queries()[0].query_type(), RecordType::MX);
        assert_eq!(m.queries()[0].query_class(), DNSClass::IN);
        assert_eq!(m.id(), 0x1234);
        assert!(m.extensions().is_some());
    }

    #[test]
    fn upstream_replies_must_match_id_and_question() {
        let q = build_query(
            7,
            &query_bytes("a.example.", RecordType::A, false)[12..],
            false,
        );
        let mut reply = q.clone();
        reply[2] |= 0x80;
        let question = &q[12..q.len() - 11];
        assert!(reply_matches(&reply, 7, question));
        assert!(!reply_matches(&reply, 8, question));
        reply[13] = b'A';
        assert!(reply_matches(&reply, 7, question), "0x20 case is fine");
        reply[13] = b'b';
        assert!(!reply_matches(&reply, 7, question));
    }

    #[test]
    fn names_and_zones() {
        let n = name_to_wire("a.Home.lan.").unwrap();
        assert_eq!(wire_to_text(&n), "a.home.lan.");
        let z = name_to_wire("home.lan").unwrap();
        assert!(is_at_or_below(&n, &z));
        assert!(is_at_or_below(&z, &z));
        assert!(!is_at_or_below(&name_to_wire("xhome.lan").unwrap(), &z));
        assert!(!is_at_or_below(&name_to_wire("lan").unwrap(), &z));
        assert_eq!(
            wire_to_text(&reverse_v4(Ipv4Addr::new(10, 0, 0, 5))),
            "5.0.0.10.in-addr.arpa."
        );
        assert!(name_to_wire(&"a".repeat(64)).is_none());
    }
}
