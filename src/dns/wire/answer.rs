//! Serving an answer we hold: checked and prepared once ([`Answer::from_wire`]), then copied
//! and patched per client; and the record-less error replies.

use super::query::{skip_name, skip_rr, Malformed, QueryMeta};
use super::{
    be16, put16, HEADER_LEN, MAX_UDP_PAYLOAD, RCODE_NOERROR, RCODE_NXDOMAIN, TYPE_OPT, TYPE_SOA,
};

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

#[cfg(test)]
mod tests {
    use super::super::{parse_query, query_bytes, RCODE_SERVFAIL};
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{rdata, DNSClass, Name, RData, Record, RecordType};
    use std::net::Ipv4Addr;

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

    /// A response with the question and no records at all.
    fn bare_response(rcode: ResponseCode) -> Answer {
        let mut m = Message::new();
        m.set_message_type(MessageType::Response)
            .set_response_code(rcode)
            .add_query(Query::query(
                Name::from_ascii("x.example.").unwrap(),
                RecordType::A,
            ));
        Answer::from_wire(m.to_vec().unwrap()).unwrap()
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
            .set_response_code(ResponseCode::NXDomain)
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
        assert_eq!(bare_response(ResponseCode::NXDomain).cache_ttl(), None);
        // SERVFAIL is never cached.
        assert_eq!(bare_response(ResponseCode::ServFail).cache_ttl(), None);
    }

    #[test]
    fn error_replies_echo_the_question() {
        let q = parse_query(&query_bytes("x.example.", RecordType::MX, true)).unwrap();
        let mut out = Vec::new();
        render_error(&q.meta, RCODE_SERVFAIL, &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.response_code(), ResponseCode::ServFail);
        assert_eq!(m.queries()[0].query_type(), RecordType::MX);
        assert_eq!(m.queries()[0].query_class(), DNSClass::IN);
        assert_eq!(m.id(), 0x1234);
        assert!(m.extensions().is_some());
    }
}
