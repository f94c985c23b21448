//! DHCPv4 wire format at the edges of the handler: checking and decoding requests, encoding
//! replies.
//!
//! Requests are checked before anything trusts them (BOOTREQUEST, sane hardware address
//! length, magic cookie, every option inside the datagram, a known message type, no empty
//! client-id) and only the options the handler uses are extracted, raw where the bytes
//! matter (relay agent information is echoed byte for byte). We do not run `dhcproto`'s
//! option decoder on requests: it panics on some malformed options (a classless route with a
//! prefix over 32 hits an `unwrap`, and debug builds assert option lengths), which the
//! proptest in `dhcp::tests` found; a remote panic is not acceptable in a server. `dhcproto`
//! supplies the message types and, in tests, decodes our replies independently.
//! A request that fails a check is a [`Malformed`] whose label is a metrics label.
//!
//! Replies are encoded here rather than through `dhcproto` because the order and the size of
//! the options matter: message type first, relay agent information last (RFC 3046), values
//! over 255 bytes split into consecutive instances (RFC 3396), and optional options dropped
//! from the end when the client's maximum message size (option 57) would be exceeded.

use std::net::Ipv4Addr;

use dhcproto::v4::MessageType;

pub const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// op..file: the fixed BOOTP header before the magic cookie.
pub const HEADER_LEN: usize = 236;
/// Smallest reply size every client must accept (RFC 2131 §2: 576-byte IP datagrams).
pub const MIN_MAX_SIZE: usize = 576;
/// Largest request accepted. DHCP over Ethernet fits one frame; a jumbo frame is 9000
/// bytes. Anything bigger is garbage or an attack, and is not worth decoding.
pub const MAX_DATAGRAM: usize = 9000;
/// Where the 128-byte `file` field starts in the header.
const FILE_AT: usize = 108;
pub const FILE_LEN: usize = 128;
/// IPv4 + UDP headers, counted in option 57 (RFC 2132 §9.10).
const IP_UDP: usize = 28;

pub const OPT_SUBNET_MASK: u8 = 1;
pub const OPT_ROUTER: u8 = 3;
pub const OPT_DNS: u8 = 6;
pub const OPT_HOSTNAME: u8 = 12;
pub const OPT_DOMAIN: u8 = 15;
pub const OPT_BROADCAST: u8 = 28;
pub const OPT_NTP: u8 = 42;
pub const OPT_REQUESTED_IP: u8 = 50;
pub const OPT_LEASE_TIME: u8 = 51;
pub const OPT_MSG_TYPE: u8 = 53;
pub const OPT_SERVER_ID: u8 = 54;
pub const OPT_PRL: u8 = 55;
pub const OPT_MESSAGE: u8 = 56;
pub const OPT_MAX_SIZE: u8 = 57;
pub const OPT_T1: u8 = 58;
pub const OPT_T2: u8 = 59;
pub const OPT_VENDOR_CLASS: u8 = 60;
pub const OPT_CLIENT_ID: u8 = 61;
pub const OPT_BOOT_FILE: u8 = 67;
pub const OPT_USER_CLASS: u8 = 77;
pub const OPT_CLIENT_ARCH: u8 = 93;
pub const OPT_RELAY_INFO: u8 = 82;
pub const OPT_SUBNET_SELECTION: u8 = 118;
/// RFC 3527 link selection sub-option of option 82.
const RELAY_SUB_LINK_SELECTION: u8 = 5;

/// Why a datagram was dropped before the handler saw it (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than a DHCP header")]
    Truncated,
    #[error("not a BOOTREQUEST")]
    NotRequest,
    #[error("hardware address length over 16")]
    BadHlen,
    #[error("wrong magic cookie")]
    BadCookie,
    #[error("an option runs past the end of the packet")]
    OptionOverrun,
    #[error("no DHCP message type")]
    NoMessageType,
    #[error("unknown DHCP message type")]
    BadMessageType,
    #[error("client identifier shorter than 2 bytes")]
    BadClientId,
    #[error("an option has a bad length")]
    BadOption,
    #[error("larger than any DHCP message")]
    Oversize,
}

impl Malformed {
    pub fn label(self) -> &'static str {
        match self {
            Malformed::Truncated => "truncated",
            Malformed::NotRequest => "not_request",
            Malformed::BadHlen => "bad_hlen",
            Malformed::BadCookie => "bad_cookie",
            Malformed::OptionOverrun => "option_overrun",
            Malformed::NoMessageType => "no_message_type",
            Malformed::BadMessageType => "bad_message_type",
            Malformed::BadClientId => "bad_client_id",
            Malformed::BadOption => "bad_option",
            Malformed::Oversize => "oversize",
        }
    }
}

/// A checked request with the fields the handler uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub msg_type: MessageType,
    pub xid: u32,
    pub secs: u16,
    pub broadcast_flag: bool,
    pub hops: u8,
    pub htype: u8,
    pub hlen: u8,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub client_id: Option<Vec<u8>>,
    pub hostname: Option<String>,
    /// Option 55 in the client's order.
    pub prl: Option<Vec<u8>>,
    pub max_size: Option<u16>,
    /// Option 82 as received (sub-options, without code and length).
    pub relay_info: Option<Vec<u8>>,
    /// Option 118, or option 82 sub-option 5: the link the client is on.
    pub link_selection: Option<Ipv4Addr>,
    /// Option 60 as sent (e.g. `PXEClient:Arch:00007:UNDI:003016`).
    pub vendor_class: Option<Vec<u8>>,
    /// Option 77 as sent (a bare string or an RFC 3004 list).
    pub user_class: Option<Vec<u8>>,
    /// Option 93 as sent: architecture numbers, two bytes each.
    pub arch: Option<Vec<u8>>,
}

impl Request {
    /// The first six bytes of chaddr: the MAC for Ethernet clients.
    pub fn mac(&self) -> [u8; 6] {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.chaddr[..6]);
        m
    }
}

/// Walks the options area: every option must fit, repeated codes are concatenated (RFC
/// 3396). Calls `f(code, value)` for each complete option.
fn scan_options(mut b: &[u8], mut f: impl FnMut(u8, &[u8])) -> Result<(), Malformed> {
    // Collect concatenations only for the few codes we keep raw; others are only checked.
    loop {
        match b {
            [] => return Ok(()),
            [255, ..] => return Ok(()),
            [0, rest @ ..] => b = rest,
            [code, len, rest @ ..] => {
                let len = *len as usize;
                if rest.len() < len {
                    return Err(Malformed::OptionOverrun);
                }
                f(*code, &rest[..len]);
                b = &rest[len..];
            }
            [_] => return Err(Malformed::OptionOverrun),
        }
    }
}

/// Checks and decodes one datagram.
pub fn parse(buf: &[u8]) -> Result<Request, Malformed> {
    if buf.len() > MAX_DATAGRAM {
        return Err(Malformed::Oversize);
    }
    if buf.len() < HEADER_LEN + 4 {
        return Err(Malformed::Truncated);
    }
    if buf[0] != 1 {
        return Err(Malformed::NotRequest);
    }
    if buf[2] > 16 {
        return Err(Malformed::BadHlen);
    }
    if buf[HEADER_LEN..HEADER_LEN + 4] != MAGIC {
        return Err(Malformed::BadCookie);
    }
    let mut relay: Option<Vec<u8>> = None;
    let mut client_id: Option<Vec<u8>> = None;
    let mut prl: Option<Vec<u8>> = None;
    let mut hostname: Option<Vec<u8>> = None;
    let mut msg_type: Option<Vec<u8>> = None;
    let mut requested: Option<Vec<u8>> = None;
    let mut server_id: Option<Vec<u8>> = None;
    let mut subnet_sel: Option<Vec<u8>> = None;
    let mut max_size: Option<Vec<u8>> = None;
    let mut vendor_class: Option<Vec<u8>> = None;
    let mut user_class: Option<Vec<u8>> = None;
    let mut arch: Option<Vec<u8>> = None;
    scan_options(&buf[HEADER_LEN + 4..], |code, v| {
        // RFC 3396: repeated instances of one option are one value.
        let slot = match code {
            OPT_RELAY_INFO => &mut relay,
            OPT_CLIENT_ID => &mut client_id,
            OPT_PRL => &mut prl,
            OPT_HOSTNAME => &mut hostname,
            OPT_MSG_TYPE => &mut msg_type,
            OPT_REQUESTED_IP => &mut requested,
            OPT_SERVER_ID => &mut server_id,
            OPT_SUBNET_SELECTION => &mut subnet_sel,
            OPT_MAX_SIZE => &mut max_size,
            OPT_VENDOR_CLASS => &mut vendor_class,
            OPT_USER_CLASS => &mut user_class,
            OPT_CLIENT_ARCH => &mut arch,
            _ => return,
        };
        slot.get_or_insert_with(Vec::new).extend_from_slice(v);
    })?;
    let msg_type = match msg_type.as_deref() {
        None => return Err(Malformed::NoMessageType),
        Some([t @ 1..=8]) => MessageType::from(*t),
        Some(_) => return Err(Malformed::BadMessageType),
    };
    let ip4 = |v: Option<Vec<u8>>| -> Result<Option<Ipv4Addr>, Malformed> {
        match v.as_deref() {
            None => Ok(None),
            Some([a, b, c, d]) => Ok(Some(Ipv4Addr::new(*a, *b, *c, *d))),
            Some(_) => Err(Malformed::BadOption),
        }
    };
    let requested_ip = ip4(requested)?;
    let server_id = ip4(server_id)?;
    let subnet_sel = ip4(subnet_sel)?;
    let max_size = match max_size.as_deref() {
        None => None,
        Some([a, b]) => Some(u16::from_be_bytes([*a, *b])),
        Some(_) => return Err(Malformed::BadOption),
    };
    // RFC 2132 §9.14: a client identifier has a type byte and at least one byte of value.
    if client_id.as_ref().is_some_and(|c| c.len() < 2) {
        return Err(Malformed::BadClientId);
    }
    // RFC 4578 §2.1: a list of two-byte architecture types.
    if arch
        .as_ref()
        .is_some_and(|a| a.is_empty() || a.len() % 2 != 0)
    {
        return Err(Malformed::BadOption);
    }
    let hostname = hostname
        .as_deref()
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(sanitize_hostname);
    let link_selection = relay
        .as_deref()
        .and_then(relay_link_selection)
        .or(subnet_sel);
    let be32 = |i: usize| Ipv4Addr::new(buf[i], buf[i + 1], buf[i + 2], buf[i + 3]);
    let mut chaddr = [0u8; 16];
    chaddr.copy_from_slice(&buf[28..44]);
    Ok(Request {
        msg_type,
        xid: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        secs: u16::from_be_bytes([buf[8], buf[9]]),
        broadcast_flag: buf[10] & 0x80 != 0,
        hops: buf[3],
        htype: buf[1],
        hlen: buf[2],
        ciaddr: be32(12),
        giaddr: be32(24),
        chaddr,
        requested_ip,
        server_id,
        client_id,
        hostname,
        prl,
        max_size,
        relay_info: relay,
        link_selection,
        vendor_class,
        user_class,
        arch,
    })
}

/// RFC 3527: sub-option 5 of option 82 names the client's link.
fn relay_link_selection(relay: &[u8]) -> Option<Ipv4Addr> {
    let mut found = None;
    let _ = scan_options(relay, |code, v| {
        if code == RELAY_SUB_LINK_SELECTION && v.len() == 4 {
            found = Some(Ipv4Addr::new(v[0], v[1], v[2], v[3]));
        }
    });
    found
}

/// A host name fit for DNS registration: letters, digits and '-', at most 63 bytes, first
/// label only; anything else is not a name we can publish.
pub fn sanitize_hostname(h: &str) -> Option<String> {
    let first = h.trim_end_matches('\0').split('.').next().unwrap_or("");
    let clean: String = first
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(63)
        .collect::<String>()
        .trim_matches('-')
        .to_ascii_lowercase();
    (!clean.is_empty()).then_some(clean)
}

/// An option value shared between the plan and every reply that carries it (a reference
/// count instead of a copy per reply).
pub type OptVal = std::sync::Arc<[u8]>;
/// (code, value, always sent): optional options are dropped first when a reply is too big.
pub type ReplyOption = (u8, OptVal, bool);

/// Where a reply goes (RFC 2131 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// To a relay agent's giaddr, port 67.
    Relay(Ipv4Addr),
    /// To a configured client address (ciaddr), port 68.
    Unicast(Ipv4Addr),
    /// To 255.255.255.255:68 out of the interface the request came in on.
    Broadcast,
    /// To yiaddr:68 at the client's hardware address (RFC 2131 §4.1): the client has no
    /// address yet and left the broadcast bit clear, so it can take a unicast. The sender
    /// first gives the kernel the address's MAC (no ARP query could be answered yet) and
    /// broadcasts instead when it cannot.
    Hardware { ip: Ipv4Addr, mac: [u8; 6] },
}

/// A reply to encode: the header fields and options in the order to send them.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub msg_type: MessageType,
    pub xid: u32,
    pub broadcast_flag: bool,
    pub htype: u8,
    pub hlen: u8,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    /// The `file` field: a PXE client's boot file (at most 127 bytes and a NUL).
    pub file: Option<OptVal>,
    /// (code, value, required): optional ones are dropped first when the reply is too big.
    pub options: Vec<ReplyOption>,
    pub dest: Dest,
    /// The server identifier in this reply: the source address to send from.
    pub server_id: Ipv4Addr,
    /// The client's limit on the reply's DHCP payload.
    pub max_payload: usize,
}

fn msg_type_byte(t: MessageType) -> u8 {
    u8::from(t)
}

fn encoded_len(v: &[u8]) -> usize {
    // RFC 3396: one code+length pair per 255 bytes (an empty value still takes one pair).
    v.len() + 2 * v.len().div_ceil(255).max(1)
}

impl Reply {
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _, _)| *c == code)
            .map(|(_, v, _)| &v[..])
    }

    /// The datagram. Optional options that would push it past `max_payload` are left out
    /// (the last ones first); option 82 stays last, as RFC 3046 requires.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(300 + self.options.len() * 8);
        out.push(2); // BOOTREPLY
        out.push(self.htype);
        out.push(self.hlen);
        out.push(0); // hops
        out.extend_from_slice(&self.xid.to_be_bytes());
        out.extend_from_slice(&[0, 0]); // secs
        let flags: u16 = if self.broadcast_flag { 0x8000 } else { 0 };
        out.extend_from_slice(&flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            out.extend_from_slice(&a.octets());
        }
        out.extend_from_slice(&self.chaddr);
        out.resize(HEADER_LEN, 0); // sname, file
        if let Some(f) = self.file.as_deref().filter(|f| f.len() < FILE_LEN) {
            out[FILE_AT..FILE_AT + f.len()].copy_from_slice(f);
        }
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[OPT_MSG_TYPE, 1, msg_type_byte(self.msg_type)]);

        let budget = self.max_payload.saturating_sub(out.len() + 1); // +1: End
        let required: usize = self
            .options
            .iter()
            .filter(|(_, _, r)| *r)
            .map(|(_, v, _)| encoded_len(v))
            .sum();
        let mut room = budget.saturating_sub(required);
        let keep: Vec<bool> = self
            .options
            .iter()
            .map(|(_, v, r)| {
                if *r {
                    return true;
                }
                let n = encoded_len(v);
                if n <= room {
                    room -= n;
                    true
                } else {
                    false
                }
            })
            .collect();
        let mut relay = None;
        for ((code, v, _), k) in self.options.iter().zip(keep) {
            if !k {
                continue;
            }
            if *code == OPT_RELAY_INFO {
                relay = Some(v);
                continue;
            }
            put_option(&mut out, *code, v);
        }
        if let Some(v) = relay {
            put_option(&mut out, OPT_RELAY_INFO, v);
        }
        out.push(255);
        // Some old relays and clients want at least a BOOTP-sized (300-byte) message.
        if out.len() < 300 {
            out.resize(300, 0);
        }
        out
    }
}

fn put_option(out: &mut Vec<u8>, code: u8, v: &[u8]) {
    if v.is_empty() {
        out.extend_from_slice(&[code, 0]);
        return;
    }
    for chunk in v.chunks(255) {
        out.push(code);
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
}

/// The DHCP payload limit for a client that sent `max_size` (option 57).
pub fn max_payload(max_size: Option<u16>) -> usize {
    let m = max_size.map(usize::from).unwrap_or(MIN_MAX_SIZE);
    m.max(MIN_MAX_SIZE) - IP_UDP
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use dhcproto::v4::{DhcpOption, Message, OptionCode};
    use dhcproto::{Decodable, Decoder};

    /// A request datagram built by hand: header + options (code, value).
    pub fn raw_request(msg_type: u8, mac: [u8; 6], opts: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        b[28..34].copy_from_slice(&mac);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&[OPT_MSG_TYPE, 1, msg_type]);
        for (c, v) in opts {
            b.push(*c);
            b.push(v.len() as u8);
            b.extend_from_slice(v);
        }
        b.push(255);
        b
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    #[test]
    fn a_discover_decodes_with_the_fields_the_handler_uses() {
        let b = raw_request(
            1,
            MAC,
            &[
                (OPT_REQUESTED_IP, vec![10, 0, 0, 7]),
                (OPT_CLIENT_ID, vec![1, 2, 0, 0, 0, 0, 1]),
                (OPT_HOSTNAME, b"Laptop.home".to_vec()),
                (OPT_PRL, vec![1, 3, 6]),
                (OPT_MAX_SIZE, 1500u16.to_be_bytes().to_vec()),
                (OPT_RELAY_INFO, vec![1, 2, b'c', b'1', 5, 4, 10, 9, 0, 0]),
            ],
        );
        let r = parse(&b).expect("valid");
        assert_eq!(r.msg_type, MessageType::Discover);
        assert_eq!(r.mac(), MAC);
        assert_eq!(r.requested_ip, Some(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(r.hostname.as_deref(), Some("laptop"));
        assert_eq!(r.prl.as_deref(), Some(&[1u8, 3, 6][..]));
        assert_eq!(r.max_size, Some(1500));
        assert_eq!(r.link_selection, Some(Ipv4Addr::new(10, 9, 0, 0)));
        assert_eq!(r.relay_info.as_ref().map(Vec::len), Some(10));
    }

    #[test]
    fn each_kind_of_bad_input_has_its_reason() {
        let good = raw_request(1, MAC, &[]);
        assert_eq!(parse(&good[..100]), Err(Malformed::Truncated));
        let mut op = good.clone();
        op[0] = 2;
        assert_eq!(parse(&op), Err(Malformed::NotRequest));
        let mut cookie = good.clone();
        cookie[HEADER_LEN] = 0;
        assert_eq!(parse(&cookie), Err(Malformed::BadCookie));
        let mut overrun = good[..good.len() - 1].to_vec();
        overrun.extend_from_slice(&[OPT_HOSTNAME, 200, b'a', b'b']);
        assert_eq!(parse(&overrun), Err(Malformed::OptionOverrun));
        let cid = raw_request(1, MAC, &[(OPT_CLIENT_ID, vec![])]);
        assert_eq!(parse(&cid), Err(Malformed::BadClientId));
        let mut no_type = good[..HEADER_LEN + 4].to_vec();
        no_type.push(255);
        assert_eq!(parse(&no_type), Err(Malformed::NoMessageType));
        let bad_type = raw_request(99, MAC, &[]);
        assert_eq!(parse(&bad_type), Err(Malformed::BadMessageType));
        let short_ip = raw_request(3, MAC, &[(OPT_REQUESTED_IP, vec![10, 0])]);
        assert_eq!(parse(&short_ip), Err(Malformed::BadOption));
        let mut padded = good.clone();
        padded.resize(1400, 0);
        assert!(parse(&padded).is_ok(), "padding after End is legal");
        let mut huge = good.clone();
        huge.resize(65_507, 0);
        assert_eq!(parse(&huge), Err(Malformed::Oversize));
    }

    #[test]
    fn options_that_crash_dhcproto_are_only_skipped() {
        // Classless static route (121) with prefix 40, client network interface (94) of 1 byte.
        let b = raw_request(
            1,
            MAC,
            &[(121, vec![40, 10, 0, 0, 0, 0, 0, 0]), (94, vec![1])],
        );
        assert_eq!(parse(&b).expect("valid").msg_type, MessageType::Discover);
    }

    #[test]
    fn split_options_are_concatenated_rfc3396() {
        let b = raw_request(
            1,
            MAC,
            &[(OPT_CLIENT_ID, vec![1, 2, 3]), (OPT_CLIENT_ID, vec![4, 5])],
        );
        assert_eq!(
            parse(&b).expect("valid").client_id,
            Some(vec![1, 2, 3, 4, 5])
        );
    }

    fn reply(options: Vec<(u8, Vec<u8>, bool)>, max: usize) -> Reply {
        let options = options
            .into_iter()
            .map(|(c, v, r)| (c, v.into(), r))
            .collect();
        Reply {
            msg_type: MessageType::Offer,
            xid: 7,
            broadcast_flag: true,
            htype: 1,
            hlen: 6,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::new(10, 0, 0, 9),
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: [2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            file: None,
            options,
            dest: Dest::Broadcast,
            server_id: Ipv4Addr::new(10, 0, 0, 1),
            max_payload: max,
        }
    }

    #[test]
    fn long_values_are_split_and_decode_back_whole() {
        let long = vec![b'x'; 600];
        let r = reply(
            vec![
                (OPT_RELAY_INFO, vec![1, 1, 9], true),
                (OPT_SERVER_ID, vec![10, 0, 0, 1], true),
                (224, long.clone(), true),
            ],
            4000,
        );
        let bytes = r.encode();
        let m = Message::decode(&mut Decoder::new(&bytes)).expect("decodes");
        assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 0, 0, 9));
        match m.opts().get(OptionCode::Unknown(224)) {
            Some(DhcpOption::Unknown(u)) => assert_eq!(u.data(), &long[..]),
            other => panic!("option 224: {other:?}"),
        }
        // Relay agent information is the last option before End.
        let end = bytes.iter().rposition(|b| *b == 255).expect("end");
        assert_eq!(&bytes[end - 5..end], &[OPT_RELAY_INFO, 3, 1, 1, 9]);
    }

    #[test]
    fn optional_options_give_way_to_the_size_limit() {
        let r = reply(
            vec![
                (OPT_SERVER_ID, vec![10, 0, 0, 1], true),
                (OPT_DOMAIN, vec![b'd'; 200], false),
                (OPT_NTP, vec![1; 200], false),
                (OPT_ROUTER, vec![10, 0, 0, 1], false),
            ],
            max_payload(None),
        );
        let bytes = r.encode();
        assert!(bytes.len() <= 548, "{} bytes", bytes.len());
        let m = Message::decode(&mut Decoder::new(&bytes)).expect("decodes");
        assert!(m.opts().get(OptionCode::DomainName).is_some());
        assert!(m.opts().get(OptionCode::NtpServers).is_none());
        assert!(m.opts().get(OptionCode::Router).is_some());
        let opts = r
            .options
            .iter()
            .map(|(c, v, k)| (*c, v.to_vec(), *k))
            .collect();
        let big = reply(opts, max_payload(Some(1500))).encode();
        let m = Message::decode(&mut Decoder::new(&big)).expect("decodes");
        assert!(m.opts().get(OptionCode::NtpServers).is_some());
    }
}
