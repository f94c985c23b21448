//! The IPv6 counterpart of the gratuitous ARP, as a pure frame builder: an unsolicited
//! neighbour advertisement (RFC 4861 section 7.2.6) for the VIP, with the Override flag so
//! neighbours replace a cached MAC at once, sent to all nodes (ff02::1).

use std::net::Ipv6Addr;

pub const ETH_P_IPV6: u16 = 0x86dd;
/// 33:33 + the low 32 bits of ff02::1.
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Ethernet 14 + IPv6 40 + NA 24 + target link-layer option 8.
pub const NA_LEN: usize = 86;
const ICMPV6: u8 = 58;
const NEIGHBOR_ADVERT: u8 = 136;
const FLAG_OVERRIDE: u8 = 0x20;
const OPT_TARGET_LL: u8 = 2;

/// The unsolicited NA announcing that `ip` is at `mac`.
pub fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> [u8; NA_LEN] {
    let mut f = [0u8; NA_LEN];
    f[0..6].copy_from_slice(&ALL_NODES_MAC);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let ip6 = &mut f[14..54];
    ip6[0] = 0x60;
    ip6[4..6].copy_from_slice(&32u16.to_be_bytes());
    ip6[6] = ICMPV6;
    // Hop limit 255: receivers drop ND messages that crossed a router.
    ip6[7] = 255;
    ip6[8..24].copy_from_slice(&ip.octets());
    ip6[24..40].copy_from_slice(&ALL_NODES.octets());
    let icmp = &mut f[54..86];
    icmp[0] = NEIGHBOR_ADVERT;
    icmp[4] = FLAG_OVERRIDE;
    icmp[8..24].copy_from_slice(&ip.octets());
    icmp[24] = OPT_TARGET_LL;
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&mac);
    let sum = checksum(&ip, &ALL_NODES, &f[54..86]);
    f[56..58].copy_from_slice(&sum.to_be_bytes());
    f
}

/// ICMPv6 checksum over the pseudo-header and the message (checksum field zero).
fn checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            sum += u32::from(w);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn na_has_override_target_and_mac_and_a_checksum_that_verifies() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let ip: Ipv6Addr = "fd00::3".parse().expect("literal");
        let f = unsolicited_na(mac, ip);
        assert_eq!(&f[0..6], &ALL_NODES_MAC);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[14] >> 4, 6);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 32);
        assert_eq!((f[20], f[21]), (58, 255));
        assert_eq!(&f[22..38], &ip.octets());
        assert_eq!(&f[38..54], &ALL_NODES.octets());
        assert_eq!((f[54], f[55]), (136, 0));
        assert_eq!(f[58], 0x20, "Override set, Solicited and Router clear");
        assert_eq!(&f[62..78], &ip.octets());
        assert_eq!(&f[78..80], &[2, 1]);
        assert_eq!(&f[80..86], &mac);
        // Summing the message including its checksum gives 0xffff (i.e. !0 == 0).
        assert_eq!(checksum(&ip, &ALL_NODES, &f[54..86]), 0);
    }
}
