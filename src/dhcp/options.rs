//! Wire encodings of the typed option values an admin writes in the config, and decoding of
//! the request options that select a client class.
//!
//! Everything here runs at load time (encoders) or works on borrowed slices of the request
//! (decoders), so the hot path pays no allocation for it. The encoders follow the RFCs'
//! own examples, which the tests below reproduce byte for byte.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Option 82 sub-option 1 (RFC 3046): the port the request came in on.
pub const RELAY_SUB_CIRCUIT_ID: u8 = 1;
/// Option 82 sub-option 2 (RFC 3046): the relay agent itself.
pub const RELAY_SUB_REMOTE_ID: u8 = 2;

/// One classless static route: destination and the router to reach it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dest: Ipv4Net,
    pub via: Ipv4Addr,
}

impl std::str::FromStr for Route {
    type Err = String;
    /// `"10.1.0.0/16 via 10.0.0.254"`, or `"default via 10.0.0.1"`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid route {s:?}: expected \"NETWORK/PREFIX via ROUTER\", e.g. \"10.1.0.0/16 via 10.0.0.254\""
            )
        };
        let parts: Vec<&str> = s.split_whitespace().collect();
        let [dest, "via", via] = parts[..] else {
            return Err(bad());
        };
        let dest: Ipv4Net = if dest == "default" {
            Ipv4Net::default()
        } else {
            dest.parse().map_err(|_| bad())?
        };
        if dest.network() != dest.addr() {
            return Err(format!(
                "route {s:?}: {dest} has host bits set; did you mean {}?",
                dest.trunc()
            ));
        }
        let via: Ipv4Addr = via.parse().map_err(|_| bad())?;
        Ok(Route { dest, via })
    }
}

/// RFC 3442 (option 121, and Microsoft's 249): each route is the prefix length, the
/// significant octets of the destination (ceil(prefix/8) of them), then the router.
pub fn encode_routes(routes: &[Route]) -> Vec<u8> {
    let mut out = Vec::with_capacity(routes.len() * 9);
    for r in routes {
        let len = r.dest.prefix_len();
        out.push(len);
        out.extend_from_slice(&r.dest.network().octets()[..usize::from(len).div_ceil(8)]);
        out.extend_from_slice(&r.via.octets());
    }
    out
}

/// RFC 3397 (option 119): the names in RFC 1035 §3.1 form, with §4.1.4 compression: a
/// suffix already written is replaced by a pointer to its offset in the option's value.
/// Fails on a name that is not a valid DNS name.
pub fn encode_domains(names: &[&str]) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::new();
    // Suffixes already written (lower case, dot-joined) and where they start.
    let mut seen: Vec<(String, usize)> = Vec::new();
    for name in names {
        let trimmed = name.trim_end_matches('.');
        let labels: Vec<&str> = trimmed.split('.').collect();
        let valid = !trimmed.is_empty()
            && trimmed.len() <= 253
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(format!("{name:?} is not a valid domain name"));
        }
        for i in 0..labels.len() {
            let suffix = labels[i..].join(".").to_ascii_lowercase();
            if let Some((_, at)) = seen.iter().find(|(s, _)| *s == suffix) {
                // A pointer is 14 bits: 0xC000 | offset.
                out.extend_from_slice(&(0xC000u16 | *at as u16).to_be_bytes());
                break;
            }
            if out.len() < 0x4000 {
                seen.push((suffix, out.len()));
            }
            out.push(labels[i].len() as u8);
            out.extend_from_slice(labels[i].as_bytes());
            if i + 1 == labels.len() {
                out.push(0);
            }
        }
    }
    Ok(out)
}

/// Sub-options in the code/length/value form of option 43 (RFC 2132 §8.4) and of option 82.
pub fn encode_suboptions(subs: &[(u8, Vec<u8>)]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for (code, v) in subs {
        if v.len() > 255 {
            return Err(format!(
                "sub-option {code} is {} bytes; at most 255 fit",
                v.len()
            ));
        }
        out.push(*code);
        out.push(v.len() as u8);
        out.extend_from_slice(v);
    }
    Ok(out)
}

/// One sub-option's value inside a code/length/value list; None when absent or when the
/// list is malformed (a relay's bytes are not trusted).
pub fn suboption(list: &[u8], code: u8) -> Option<&[u8]> {
    let mut b = list;
    loop {
        match b {
            [c, len, rest @ ..] => {
                let len = usize::from(*len);
                if rest.len() < len {
                    return None;
                }
                if *c == code {
                    return Some(&rest[..len]);
                }
                b = &rest[len..];
            }
            _ => return None,
        }
    }
}

/// The instances of a user class (option 77). RFC 3004 makes it a list of length-prefixed
/// items, but iPXE, dhclient's `user-class` string and most firmware send one bare string;
/// the value counts as a list only when the lengths tile it exactly, otherwise it is one
/// item. Calls `f` on each item until it returns true.
pub fn any_user_class(v: &[u8], mut f: impl FnMut(&[u8]) -> bool) -> bool {
    if f(v) {
        return true;
    }
    let mut b = v;
    // Check the tiling first so a bare string is never split at random "lengths".
    while let [len, rest @ ..] = b {
        let len = usize::from(*len);
        if len == 0 || rest.len() < len {
            return false;
        }
        b = &rest[len..];
    }
    let mut b = v;
    while let [len, rest @ ..] = b {
        let len = usize::from(*len);
        if f(&rest[..len]) {
            return true;
        }
        b = &rest[len..];
    }
    false
}

/// The client system architectures of option 93 (RFC 4578), two bytes each.
pub fn arches(v: &[u8]) -> impl Iterator<Item = u16> + '_ {
    v.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(s: &str) -> Route {
        s.parse().expect("valid route")
    }

    #[test]
    fn classless_routes_encode_as_in_rfc3442() {
        // RFC 3442 §3's table of destination descriptors, each followed by the router.
        let gw = [10, 0, 0, 1];
        let cases: &[(&str, &[u8])] = &[
            ("0.0.0.0/0", &[0]),
            ("10.0.0.0/8", &[8, 10]),
            ("10.0.0.0/24", &[24, 10, 0, 0]),
            ("10.17.0.0/16", &[16, 10, 17]),
            ("10.27.129.0/24", &[24, 10, 27, 129]),
            ("10.229.0.128/25", &[25, 10, 229, 0, 128]),
            ("10.198.122.47/32", &[32, 10, 198, 122, 47]),
        ];
        for (dest, want) in cases {
            let got = encode_routes(&[route(&format!("{dest} via 10.0.0.1"))]);
            let mut expected = want.to_vec();
            expected.extend_from_slice(&gw);
            assert_eq!(got, expected, "{dest}");
        }
        let two = encode_routes(&[
            route("default via 10.0.0.1"),
            route("10.1.0.0/16 via 10.0.0.254"),
        ]);
        assert_eq!(
            two,
            vec![0, 10, 0, 0, 1, 16, 10, 1, 10, 0, 0, 254],
            "routes follow each other"
        );
    }

    #[test]
    fn malformed_routes_are_refused() {
        assert!("10.1.0.0/16".parse::<Route>().is_err());
        assert!("10.1.0.0/16 via".parse::<Route>().is_err());
        assert!("10.1.0.0/33 via 10.0.0.1".parse::<Route>().is_err());
        assert!("10.1.0.0/16 through 10.0.0.1".parse::<Route>().is_err());
        let e = "10.1.2.0/16 via 10.0.0.1"
            .parse::<Route>()
            .expect_err("host bits");
        assert!(e.contains("10.1.0.0/16"), "{e}");
    }

    #[test]
    fn domain_search_compresses_as_in_rfc3397() {
        // RFC 3397 §3: "eng.apple.com." and "marketing.apple.com.".
        let got = encode_domains(&["eng.apple.com.", "marketing.apple.com"]).expect("valid");
        let mut want = vec![3];
        want.extend_from_slice(b"eng");
        want.push(5);
        want.extend_from_slice(b"apple");
        want.push(3);
        want.extend_from_slice(b"com");
        want.push(0);
        want.push(9);
        want.extend_from_slice(b"marketing");
        want.extend_from_slice(&[0xC0, 0x04]);
        assert_eq!(got, want);
    }

    #[test]
    fn a_repeated_or_nested_name_is_one_pointer() {
        let got = encode_domains(&["example.com", "EXAMPLE.com", "com"]).expect("valid");
        let mut want = vec![7];
        want.extend_from_slice(b"example");
        want.push(3);
        want.extend_from_slice(b"com");
        want.push(0);
        want.extend_from_slice(&[0xC0, 0x00, 0xC0, 0x08]);
        assert_eq!(got, want);
        assert!(encode_domains(&["bad..name"]).is_err());
        assert!(encode_domains(&["sp ace.com"]).is_err());
        assert!(encode_domains(&[&"a".repeat(64)]).is_err());
    }

    #[test]
    fn suboptions_round_trip() {
        let v = encode_suboptions(&[(1, vec![10, 0, 0, 5]), (2, b"x".to_vec())]).expect("fits");
        assert_eq!(v, vec![1, 4, 10, 0, 0, 5, 2, 1, b'x']);
        assert_eq!(suboption(&v, 2), Some(&b"x"[..]));
        assert_eq!(suboption(&v, 3), None);
        assert_eq!(suboption(&[1, 9, 0], 1), None, "overrun is not trusted");
        assert!(encode_suboptions(&[(1, vec![0; 256])]).is_err());
    }

    #[test]
    fn user_class_is_a_bare_string_or_an_rfc3004_list() {
        let mut seen = Vec::new();
        any_user_class(b"iPXE", |c| {
            seen.push(c.to_vec());
            false
        });
        assert_eq!(seen, vec![b"iPXE".to_vec()], "no tiling: one item");
        let list = [3, b'a', b'b', b'c', 2, b'd', b'e'];
        assert!(any_user_class(&list, |c| c == b"de"));
        assert!(!any_user_class(&list, |c| c == b"x"));
        assert_eq!(arches(&[0, 7, 0, 9, 1]).collect::<Vec<_>>(), vec![7, 9]);
    }
}
