//! ARP frames for the floating IP, as plain functions over bytes (no sockets): the gratuitous
//! ARP that announces a claim, and the parser that spots another host claiming the VIP.
//!
//! The announcement is an ARP *request* with sender IP = target IP = the VIP, from the
//! interface's MAC, to the broadcast address (as keepalived and `arping -U` send it): every
//! host and switch on the segment updates its cache/MAC table, and no host answers it.

use std::net::Ipv4Addr;

use pnet_base::MacAddr;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::Packet;

/// Ethernet header (14) + ARP for IPv4 over Ethernet (28).
pub const GARP_LEN: usize = 42;
/// EtherType of ARP, for `sockaddr_ll.sll_protocol`.
pub const ETH_P_ARP: u16 = 0x0806;
const ETH_HEADER_LEN: usize = 14;

/// The gratuitous ARP announcing that `ip` is now at `mac`.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; GARP_LEN] {
    let mut buf = [0u8; GARP_LEN];
    let src = MacAddr::from(mac);
    {
        // The buffer has exactly the minimum size of both packets, so `new` cannot fail; the
        // fallbacks keep this panic-free anyway.
        let Some(mut eth) = MutableEthernetPacket::new(&mut buf[..]) else {
            return buf;
        };
        eth.set_destination(MacAddr::broadcast());
        eth.set_source(src);
        eth.set_ethertype(EtherTypes::Arp);
    }
    let Some(mut arp) = MutableArpPacket::new(&mut buf[ETH_HEADER_LEN..]) else {
        return buf;
    };
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    // pnet leaves both lengths at 0 unless set, which receivers reject as malformed.
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(ArpOperations::Request);
    arp.set_sender_hw_addr(src);
    arp.set_sender_proto_addr(ip);
    // Target MAC zero as in a normal request; target IP = sender IP makes it gratuitous.
    arp.set_target_hw_addr(MacAddr::zero());
    arp.set_target_proto_addr(ip);
    buf
}

/// An RFC 5227 ARP probe asking whether anyone holds `ip`: a broadcast request from `mac`
/// with sender IP 0.0.0.0, so no host's cache learns a binding from it. A host using `ip`
/// answers it (and one that follows RFC 5227 treats it as a conflict only if it is probing
/// the same address itself).
pub fn probe_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; GARP_LEN] {
    let mut buf = garp_frame(mac, ip);
    // Sender protocol address: bytes 28..32 of the frame (14 Ethernet + 14 into the ARP).
    buf[28..32].copy_from_slice(&[0, 0, 0, 0]);
    buf
}

/// The fields of a received ARP frame that matter for defending the VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpSeen {
    /// 1 request, 2 reply.
    pub operation: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// Why a frame was not an IPv4-over-Ethernet ARP (counted, logged at debug, dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArpParseError {
    #[error("frame of {0} bytes is too short for ARP")]
    TooShort(usize),
    #[error("ethertype {0:#06x} is not ARP")]
    NotArp(u16),
    #[error("ARP for hardware type {hw}/protocol {proto:#06x} with lengths {hlen}/{plen}")]
    NotIpv4Ethernet {
        hw: u16,
        proto: u16,
        hlen: u8,
        plen: u8,
    },
}

/// Parses an Ethernet frame carrying ARP for IPv4 over Ethernet.
pub fn parse_arp(frame: &[u8]) -> Result<ArpSeen, ArpParseError> {
    if frame.len() < GARP_LEN {
        return Err(ArpParseError::TooShort(frame.len()));
    }
    let eth = EthernetPacket::new(frame).ok_or(ArpParseError::TooShort(frame.len()))?;
    if eth.get_ethertype() != EtherTypes::Arp {
        return Err(ArpParseError::NotArp(eth.get_ethertype().0));
    }
    let arp = ArpPacket::new(eth.payload()).ok_or(ArpParseError::TooShort(frame.len()))?;
    if arp.get_hardware_type() != ArpHardwareTypes::Ethernet
        || arp.get_protocol_type() != EtherTypes::Ipv4
        || arp.get_hw_addr_len() != 6
        || arp.get_proto_addr_len() != 4
    {
        return Err(ArpParseError::NotIpv4Ethernet {
            hw: arp.get_hardware_type().0,
            proto: arp.get_protocol_type().0,
            hlen: arp.get_hw_addr_len(),
            plen: arp.get_proto_addr_len(),
        });
    }
    Ok(ArpSeen {
        operation: arp.get_operation().0,
        sender_mac: arp.get_sender_hw_addr().octets(),
        sender_ip: arp.get_sender_proto_addr(),
        target_ip: arp.get_target_proto_addr(),
    })
}

/// RFC 5227 conflict: another host sends ARP *as* the VIP (sender IP = VIP, another MAC).
/// A plain request *for* the VIP (target = VIP) is a client asking and is not a conflict;
/// our own announcements, looped back by the packet socket, are not either.
pub fn is_conflict(seen: &ArpSeen, vip: Ipv4Addr, own_mac: [u8; 6]) -> bool {
    seen.sender_ip == vip && seen.sender_mac != own_mac
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: [u8; 6]) -> String {
    let m = mac;
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

    #[test]
    fn garp_is_a_42_byte_broadcast_arp_request_for_the_vip_from_our_mac() {
        let f = garp_frame(MAC, VIP);
        #[rustfmt::skip]
        let want: [u8; 42] = [
            // Ethernet: destination broadcast, source our MAC, type ARP
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
            0x08, 0x06,
            // ARP: Ethernet (1), IPv4 (0x0800), hlen 6, plen 4, request (1)
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
            // sender MAC, sender IP = VIP
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 10, 0, 0, 3,
            // target MAC zero, target IP = VIP
            0, 0, 0, 0, 0, 0, 10, 0, 0, 3,
        ];
        assert_eq!(f, want);
    }

    #[test]
    fn a_garp_parses_back_to_its_fields() {
        let seen = parse_arp(&garp_frame(MAC, VIP)).expect("valid ARP");
        assert_eq!(
            seen,
            ArpSeen {
                operation: 1,
                sender_mac: MAC,
                sender_ip: VIP,
                target_ip: VIP
            }
        );
    }

    #[test]
    fn another_mac_announcing_the_vip_is_a_conflict_but_our_own_or_a_query_is_not() {
        let other = [0x02, 0, 0, 0, 0, 9];
        let theirs = parse_arp(&garp_frame(other, VIP)).expect("arp");
        assert!(is_conflict(&theirs, VIP, MAC));
        let ours = parse_arp(&garp_frame(MAC, VIP)).expect("arp");
        assert!(!is_conflict(&ours, VIP, MAC));
        let query = ArpSeen {
            operation: 1,
            sender_mac: other,
            sender_ip: Ipv4Addr::new(10, 0, 0, 50),
            target_ip: VIP,
        };
        assert!(!is_conflict(&query, VIP, MAC));
    }

    #[test]
    fn a_probe_is_a_broadcast_request_from_0_0_0_0_for_the_address() {
        let ip = Ipv4Addr::new(10, 0, 0, 120);
        let f = probe_frame(MAC, ip);
        assert_eq!(&f[..6], &[0xff; 6]);
        let seen = parse_arp(&f).expect("arp");
        assert_eq!(
            seen,
            ArpSeen {
                operation: 1,
                sender_mac: MAC,
                sender_ip: Ipv4Addr::UNSPECIFIED,
                target_ip: ip
            }
        );
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        assert_eq!(parse_arp(&[0u8; 10]), Err(ArpParseError::TooShort(10)));
        let mut ip = garp_frame(MAC, VIP);
        ip[12] = 0x08;
        ip[13] = 0x00;
        assert_eq!(parse_arp(&ip), Err(ArpParseError::NotArp(0x0800)));
        let mut zero_len = garp_frame(MAC, VIP);
        zero_len[18] = 0;
        assert!(matches!(
            parse_arp(&zero_len),
            Err(ArpParseError::NotIpv4Ethernet { hlen: 0, .. })
        ));
    }

    #[test]
    fn mac_string_is_lower_case_colon_separated() {
        assert_eq!(mac_string(MAC), "02:11:22:33:44:55");
    }
}
