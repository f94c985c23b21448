//! The upstream side: the query we send a forwarder and the checks on what comes back.

use super::{be16, HEADER_LEN, MAX_UDP_PAYLOAD, RCODE_FORMERR};

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

#[cfg(test)]
mod tests {
    use super::super::query_bytes;
    use super::*;
    use hickory_proto::rr::RecordType;

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
}
