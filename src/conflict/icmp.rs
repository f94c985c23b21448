//! ICMP echo for probing addresses on relayed subnets (the server shares no link with them,
//! so ARP cannot reach them), as plain functions over bytes.
//!
//! Requests are sent on a raw ICMP socket, which receives every ICMP message the host gets
//! with its IPv4 header in front: a reply is ours when it is an echo reply carrying our
//! identifier, from the address probed.

use std::net::Ipv4Addr;

use pnet_packet::util::checksum;

/// Type (1) + code (1) + checksum (2) + identifier (2) + sequence (2).
const HEADER: usize = 8;
/// A short payload that names us, so a capture shows who probes.
const PAYLOAD: &[u8] = b"athena-dhcpd probe";

const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;

/// An ICMP echo request (no IP header: the raw socket adds it).
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER + PAYLOAD.len());
    b.push(ECHO_REQUEST);
    b.push(0);
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(PAYLOAD);
    let sum = checksum(&b, 1);
    b[2..4].copy_from_slice(&sum.to_be_bytes());
    b
}

/// An echo reply as received on the raw socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoReply {
    pub from: Ipv4Addr,
    pub id: u16,
    pub seq: u16,
}

/// What a received datagram was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Icmp {
    EchoReply(EchoReply),
    /// Any other well-formed ICMP message (requests, unreachables): not for the prober.
    Other,
}

/// Why a datagram is not well-formed ICMP (counted, logged at debug, dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IcmpParseError {
    #[error("datagram of {0} bytes is too short for IPv4 + ICMP")]
    TooShort(usize),
    #[error("not an IPv4 header (version {0})")]
    NotIpv4(u8),
    #[error("IPv4 header length {0} is invalid")]
    BadHeaderLength(usize),
    #[error("ICMP checksum does not verify")]
    BadChecksum,
}

/// Parses what a raw ICMP socket delivers: the IPv4 header, then the ICMP message.
pub fn parse(d: &[u8]) -> Result<Icmp, IcmpParseError> {
    if d.len() < 20 {
        return Err(IcmpParseError::TooShort(d.len()));
    }
    if d[0] >> 4 != 4 {
        return Err(IcmpParseError::NotIpv4(d[0] >> 4));
    }
    let ihl = usize::from(d[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(IcmpParseError::BadHeaderLength(ihl));
    }
    let icmp = d.get(ihl..).ok_or(IcmpParseError::TooShort(d.len()))?;
    if icmp.len() < HEADER {
        return Err(IcmpParseError::TooShort(d.len()));
    }
    if checksum(icmp, 1) != u16::from_be_bytes([icmp[2], icmp[3]]) {
        return Err(IcmpParseError::BadChecksum);
    }
    if icmp[0] != ECHO_REPLY || icmp[1] != 0 {
        return Ok(Icmp::Other);
    }
    Ok(Icmp::EchoReply(EchoReply {
        from: Ipv4Addr::new(d[12], d[13], d[14], d[15]),
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 header from `src` in front of `icmp`.
    fn ip(src: [u8; 4], icmp: &[u8]) -> Vec<u8> {
        let mut d = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        d.extend_from_slice(&src);
        d.extend_from_slice(&[10, 0, 0, 1]);
        d.extend_from_slice(icmp);
        d
    }

    /// The reply a host sends to `echo_request(id, seq)`.
    fn reply(id: u16, seq: u16) -> Vec<u8> {
        let mut r = echo_request(id, seq);
        r[0] = ECHO_REPLY;
        r[2..4].copy_from_slice(&[0, 0]);
        let sum = checksum(&r, 1);
        r[2..4].copy_from_slice(&sum.to_be_bytes());
        r
    }

    #[test]
    fn an_echo_request_verifies_and_carries_id_and_sequence() {
        let r = echo_request(0x1234, 7);
        assert_eq!(r[0], ECHO_REQUEST);
        assert_eq!(checksum(&r, 1), u16::from_be_bytes([r[2], r[3]]));
        assert_eq!(&r[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn an_echo_reply_parses_to_its_source_id_and_sequence() {
        assert_eq!(
            parse(&ip([10, 0, 1, 50], &reply(9, 3))),
            Ok(Icmp::EchoReply(EchoReply {
                from: Ipv4Addr::new(10, 0, 1, 50),
                id: 9,
                seq: 3
            }))
        );
        // Our own request, looped back, is not a reply.
        assert_eq!(
            parse(&ip([10, 0, 1, 50], &echo_request(9, 3))),
            Ok(Icmp::Other)
        );
    }

    #[test]
    fn malformed_datagrams_are_errors_not_panics() {
        let good = ip([10, 0, 1, 50], &reply(9, 3));
        for n in 0..good.len() {
            // Every prefix shorter than the ICMP header fails; longer ones fail the checksum.
            assert!(parse(&good[..n]).is_err(), "prefix of {n} bytes parsed");
        }
        let mut v6 = good.clone();
        v6[0] = 0x65;
        assert_eq!(parse(&v6), Err(IcmpParseError::NotIpv4(6)));
        let mut ihl = good.clone();
        ihl[0] = 0x42;
        assert_eq!(parse(&ihl), Err(IcmpParseError::BadHeaderLength(8)));
        let mut sum = good;
        sum[30] ^= 0xff;
        assert_eq!(parse(&sum), Err(IcmpParseError::BadChecksum));
    }
}
