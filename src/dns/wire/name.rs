//! Names: text to wire and back, zone membership, reverse-lookup names.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::MAX_NAME;

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
