//! Reading a client's query: header, the one question, EDNS(0); and skipping records without
//! following compression pointers.

use super::{
    be16, CLASSIC_UDP_PAYLOAD, HEADER_LEN, KEY_MAX, MAX_NAME, MAX_UDP_PAYLOAD, QUESTION_MAX,
    TYPE_OPT,
};

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

/// Skips a name without following pointers; returns the offset after it.
pub(super) fn skip_name(msg: &[u8], mut pos: usize) -> Result<usize, Malformed> {
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
pub(super) fn skip_rr(msg: &[u8], pos: usize) -> Result<(usize, u16, usize), Malformed> {
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

#[cfg(test)]
mod tests {
    use super::super::{name_to_wire, query_bytes};
    use super::*;
    use hickory_proto::rr::RecordType;

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
}
