//! The local zone: static `[[dns.record]]`s, `<hostname>.<domain>` A and PTR records of
//! active leases, and `id.server`/`hostname.bind` (CHAOS TXT, RFC 4892) naming this node.
//!
//! Invariants: a name the zone knows, or any name at or below `[dns] domain`, is answered
//! here with AA set and never forwarded (unknown ones get NXDOMAIN with the domain's SOA, so
//! clients cache the miss); everything else is "not local" and goes to the cache and the
//! forwarders. One lease IP maps to at most one name and one name to at most one lease IP:
//! the newest ACK wins.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{rdata, DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinDecodable;

use super::wire::{is_at_or_below, name_to_wire, reverse_v4, reverse_v6, CLASS_IN};
use crate::config::{DnsConfig, DnsRecordConfig};

const CLASS_CH: u16 = 3;
const CLASS_ANY: u16 = 255;
const TYPE_ANY: u16 = 255;
/// TTL of the synthesized SOA and therefore of cached local misses.
const SOA_TTL: u32 = 60;
/// Longest CNAME chain followed inside the zone.
const MAX_CNAME_CHAIN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("dns.record {name:?} ({rtype}): {message}")]
    Record {
        name: String,
        rtype: String,
        message: String,
    },
    #[error("dns.domain {0:?} is not a valid domain name")]
    Domain(String),
}

struct LeaseName {
    ip: Ipv4Addr,
    fqdn: Name,
}

pub struct Zone {
    /// `[dns] domain` as (lowercase wire name, hickory name).
    domain: Option<(Vec<u8>, Name)>,
    statics: HashMap<Vec<u8>, Vec<Record>>,
    static_count: usize,
    leases_by_name: HashMap<Vec<u8>, LeaseName>,
    leases_by_ip: HashMap<Ipv4Addr, Vec<u8>>,
    /// Reverse name → the lease's wire name.
    lease_ptr: HashMap<Vec<u8>, Vec<u8>>,
    lease_ttl: u32,
    node: String,
    serial: u32,
}

fn fqdn(text: &str) -> Result<Name, String> {
    let mut n = Name::from_ascii(text).map_err(|e| e.to_string())?;
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

/// A config record as a hickory record.
pub fn parse_record(r: &DnsRecordConfig) -> Result<Record, ZoneError> {
    let bad = |message: String| ZoneError::Record {
        name: r.name.clone(),
        rtype: r.rtype.clone(),
        message,
    };
    let name = fqdn(&r.name).map_err(&bad)?;
    let v = r.value.trim();
    let target = |s: &str| fqdn(s).map_err(&bad);
    let num = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| bad(format!("{s:?} is not a number from 0 to 65535")))
    };
    let parts: Vec<&str> = v.split_whitespace().collect();
    let rdata = match r.rtype.to_ascii_uppercase().as_str() {
        "A" => RData::A(rdata::A(
            v.parse()
                .map_err(|_| bad(format!("{v:?} is not an IPv4 address")))?,
        )),
        "AAAA" => RData::AAAA(rdata::AAAA(
            v.parse()
                .map_err(|_| bad(format!("{v:?} is not an IPv6 address")))?,
        )),
        "CNAME" => RData::CNAME(rdata::CNAME(target(v)?)),
        "PTR" => RData::PTR(rdata::PTR(target(v)?)),
        // A TXT string holds at most 255 bytes; longer text becomes several strings.
        "TXT" => RData::TXT(rdata::TXT::from_bytes(
            r.value.as_bytes().chunks(255).collect(),
        )),
        "MX" if parts.len() == 2 => RData::MX(rdata::MX::new(num(parts[0])?, target(parts[1])?)),
        "SRV" if parts.len() == 4 => RData::SRV(rdata::SRV::new(
            num(parts[0])?,
            num(parts[1])?,
            num(parts[2])?,
            target(parts[3])?,
        )),
        t => return Err(bad(format!("cannot make a {t} record from {v:?}"))),
    };
    Ok(Record::from_rdata(name, r.ttl, rdata))
}

/// A DHCP client's host name as a DNS label: its first label, lowercase, letters, digits
/// and hyphens only (anything else is dropped), not starting or ending with a hyphen.
pub fn hostname_label(hostname: &str) -> Option<String> {
    let first = hostname.split('.').next()?;
    let clean: String = first
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let clean = clean.trim_matches('-').to_string();
    (!clean.is_empty() && clean.len() <= 63).then_some(clean)
}

fn wire_of(name: &Name) -> Vec<u8> {
    name_to_wire(&name.to_ascii()).unwrap_or_default()
}

impl Zone {
    pub fn new(cfg: &DnsConfig, node: &str) -> Result<Zone, ZoneError> {
        let domain = match &cfg.domain {
            Some(d) => {
                let name = fqdn(d).map_err(|_| ZoneError::Domain(d.clone()))?;
                let wire = name_to_wire(d).ok_or_else(|| ZoneError::Domain(d.clone()))?;
                Some((wire, name))
            }
            None => None,
        };
        let mut z = Zone {
            domain,
            statics: HashMap::new(),
            static_count: 0,
            leases_by_name: HashMap::new(),
            leases_by_ip: HashMap::new(),
            lease_ptr: HashMap::new(),
            lease_ttl: cfg.lease_ttl.get().as_secs().min(u64::from(u32::MAX)) as u32,
            node: node.to_string(),
            serial: 1,
        };
        z.set_records(&cfg.records)?;
        Ok(z)
    }

    /// Replaces the static records (SIGHUP); leases stay.
    pub fn set_records(&mut self, records: &[DnsRecordConfig]) -> Result<(), ZoneError> {
        let mut statics: HashMap<Vec<u8>, Vec<Record>> = HashMap::new();
        for r in records {
            let rec = parse_record(r)?;
            statics.entry(wire_of(rec.name())).or_default().push(rec);
        }
        self.static_count = records.len();
        self.statics = statics;
        self.serial = self.serial.wrapping_add(1);
        Ok(())
    }

    pub fn static_count(&self) -> usize {
        self.static_count
    }

    pub fn lease_count(&self) -> usize {
        self.leases_by_name.len()
    }

    /// Registers `<hostname>.<domain>` → `ip` (A) and its PTR. Returns the FQDN, or None when
    /// there is no domain or the host name has no usable label.
    pub fn add_lease(&mut self, ip: Ipv4Addr, hostname: &str) -> Option<String> {
        let (_, domain) = self.domain.as_ref()?;
        let label = hostname_label(hostname)?;
        let name = Name::from_ascii(&label).ok()?.append_domain(domain).ok()?;
        let wire = wire_of(&name);
        if self.leases_by_ip.get(&ip) == Some(&wire) {
            return Some(name.to_ascii());
        }
        self.remove_lease(ip);
        if let Some(old) = self.leases_by_name.get(&wire).map(|l| l.ip) {
            self.remove_lease(old);
        }
        self.leases_by_ip.insert(ip, wire.clone());
        self.lease_ptr.insert(reverse_v4(ip), wire.clone());
        let text = name.to_ascii();
        self.leases_by_name
            .insert(wire, LeaseName { ip, fqdn: name });
        self.serial = self.serial.wrapping_add(1);
        Some(text)
    }

    /// Forgets every lease name (before loading them again from the lease store).
    pub fn clear_leases(&mut self) {
        self.leases_by_name.clear();
        self.leases_by_ip.clear();
        self.lease_ptr.clear();
        self.serial = self.serial.wrapping_add(1);
    }

    /// Forgets the lease name of `ip`; true if there was one.
    pub fn remove_lease(&mut self, ip: Ipv4Addr) -> bool {
        let Some(wire) = self.leases_by_ip.remove(&ip) else {
            return false;
        };
        self.leases_by_name.remove(&wire);
        self.lease_ptr.remove(&reverse_v4(ip));
        self.serial = self.serial.wrapping_add(1);
        true
    }

    /// Every record owned by `name`.
    fn records_at(&self, name: &[u8]) -> Vec<Record> {
        let mut out: Vec<Record> = self.statics.get(name).cloned().unwrap_or_default();
        if let Some(l) = self.leases_by_name.get(name) {
            out.push(Record::from_rdata(
                l.fqdn.clone(),
                self.lease_ttl,
                RData::A(rdata::A(l.ip)),
            ));
        }
        if let Some(target) = self.lease_ptr.get(name) {
            if let Some(l) = self.leases_by_name.get(target) {
                if let Ok(owner) = Name::from_bytes(name) {
                    out.push(Record::from_rdata(
                        owner,
                        self.lease_ttl,
                        RData::PTR(rdata::PTR(l.fqdn.clone())),
                    ));
                }
            }
        }
        out
    }

    /// Does any known name lie strictly below `name` (an empty non-terminal exists)?
    fn has_descendant(&self, name: &[u8]) -> bool {
        let below = |k: &Vec<u8>| k.len() > name.len() && is_at_or_below(k, name);
        self.statics.keys().any(below) || self.leases_by_name.keys().any(below)
    }

    fn soa(&self) -> Option<Record> {
        let (_, d) = self.domain.as_ref()?;
        let rname = Name::from_ascii("hostmaster").ok()?.append_domain(d).ok()?;
        Some(Record::from_rdata(
            d.clone(),
            SOA_TTL,
            RData::SOA(rdata::SOA::new(
                d.clone(),
                rname,
                self.serial,
                3600,
                600,
                86400,
                SOA_TTL,
            )),
        ))
    }

    /// The response for (name, qtype, qclass) if the name is local; None: ask elsewhere.
    pub fn lookup(&self, name: &[u8], qtype: u16, qclass: u16) -> Option<Message> {
        let qname = Name::from_bytes(name).ok()?;
        let mut msg = Message::new();
        msg.set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_authoritative(true)
            .set_recursion_available(true);
        let mut query = Query::query(qname.clone(), RecordType::from(qtype));
        query.set_query_class(DNSClass::from(qclass));
        msg.add_query(query);
        if qclass == CLASS_CH {
            let node_name = name == name_to_wire("id.server").as_deref().unwrap_or_default()
                || name == name_to_wire("hostname.bind").as_deref().unwrap_or_default();
            if !node_name {
                return None;
            }
            if qtype == u16::from(RecordType::TXT) || qtype == TYPE_ANY {
                let mut r = Record::from_rdata(
                    qname,
                    0,
                    RData::TXT(rdata::TXT::new(vec![self.node.clone()])),
                );
                r.set_dns_class(DNSClass::CH);
                msg.add_answer(r);
            }
            return Some(msg);
        }
        if qclass != CLASS_IN && qclass != CLASS_ANY {
            return None;
        }
        let under_domain = self
            .domain
            .as_ref()
            .is_some_and(|(d, _)| is_at_or_below(name, d));
        let records = self.records_at(name);
        if records.is_empty() && !under_domain {
            return None;
        }
        let mut answers: Vec<Record> = Vec::new();
        if qtype == TYPE_ANY {
            answers = records.clone();
        } else {
            answers.extend(
                records
                    .iter()
                    .filter(|r| u16::from(r.record_type()) == qtype)
                    .cloned(),
            );
            if answers.is_empty() && qtype != u16::from(RecordType::CNAME) {
                let mut here = records.clone();
                for _ in 0..MAX_CNAME_CHAIN {
                    let Some(cname) = here.iter().find(|r| r.record_type() == RecordType::CNAME)
                    else {
                        break;
                    };
                    answers.push(cname.clone());
                    let RData::CNAME(target) = cname.data() else {
                        break;
                    };
                    here = self.records_at(&wire_of(&target.0));
                    let found: Vec<Record> = here
                        .iter()
                        .filter(|r| u16::from(r.record_type()) == qtype)
                        .cloned()
                        .collect();
                    if !found.is_empty() {
                        answers.extend(found);
                        break;
                    }
                }
            }
        }
        if answers.is_empty() {
            let is_apex = self.domain.as_ref().is_some_and(|(d, _)| d == name);
            if is_apex && qtype == TYPE_SOA_U16 {
                if let Some(soa) = self.soa() {
                    msg.add_answer(soa);
                    return Some(msg);
                }
            }
            let exists = !records.is_empty() || is_apex || self.has_descendant(name);
            if !exists {
                msg.set_response_code(ResponseCode::NXDomain);
            }
            if under_domain {
                if let Some(soa) = self.soa() {
                    msg.add_name_server(soa);
                }
            }
        } else {
            msg.add_answers(answers);
        }
        Some(msg)
    }
}

const TYPE_SOA_U16: u16 = 6;

/// The PTR owner names of an address (for callers that want to check a reverse name).
pub fn reverse_name(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => reverse_v4(v4),
        IpAddr::V6(v6) => reverse_v6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn rec(name: &str, t: &str, v: &str) -> DnsRecordConfig {
        DnsRecordConfig {
            name: name.into(),
            rtype: t.into(),
            value: v.into(),
            ttl: 120,
        }
    }

    fn zone() -> Zone {
        let cfg = DnsConfig {
            domain: Some("home.lan".into()),
            register_leases: true,
            lease_ttl: Dur::secs(300),
            records: vec![
                rec("router.home.lan", "A", "10.0.0.1"),
                rec("router.home.lan", "AAAA", "fd00::1"),
                rec("www.home.lan", "CNAME", "router.home.lan"),
                rec("out.home.lan", "CNAME", "example.com"),
                rec("home.lan", "MX", "10 router.home.lan"),
                rec("_sip._udp.home.lan", "SRV", "10 5 5060 router.home.lan"),
                rec("home.lan", "TXT", "v=spf1 -all"),
                rec("printer.example.net", "A", "192.0.2.9"),
                rec("1.0.0.10.in-addr.arpa", "PTR", "router.home.lan"),
            ],
            ..Default::default()
        };
        Zone::new(&cfg, "node-a").unwrap()
    }

    fn w(s: &str) -> Vec<u8> {
        name_to_wire(s).unwrap()
    }

    fn ask(z: &Zone, name: &str, t: RecordType) -> Option<Message> {
        z.lookup(&w(name), t.into(), CLASS_IN)
    }

    #[test]
    fn static_records_of_every_type_answer_authoritatively() {
        let z = zone();
        let m = ask(&z, "router.home.lan", RecordType::A).unwrap();
        assert!(m.authoritative());
        assert_eq!(m.answers().len(), 1);
        assert_eq!(m.answers()[0].ttl(), 120);
        for (n, t) in [
            ("router.home.lan", RecordType::AAAA),
            ("home.lan", RecordType::MX),
            ("_sip._udp.home.lan", RecordType::SRV),
            ("home.lan", RecordType::TXT),
            ("1.0.0.10.in-addr.arpa", RecordType::PTR),
            ("printer.example.net", RecordType::A),
        ] {
            let m = ask(&z, n, t).unwrap();
            assert_eq!(m.answers().len(), 1, "{n} {t}");
            assert_eq!(m.answers()[0].record_type(), t);
            // Each encodes and decodes.
            Message::from_vec(&m.to_vec().unwrap()).unwrap();
        }
    }

    #[test]
    fn cnames_are_followed_inside_the_zone() {
        let z = zone();
        let m = ask(&z, "WWW.home.lan", RecordType::A).unwrap();
        let types: Vec<RecordType> = m.answers().iter().map(|r| r.record_type()).collect();
        assert_eq!(types, vec![RecordType::CNAME, RecordType::A]);
        let m = ask(&z, "out.home.lan", RecordType::A).unwrap();
        assert_eq!(
            m.answers().len(),
            1,
            "a target outside the zone is left to the client"
        );
    }

    #[test]
    fn unknown_names_under_the_domain_are_nxdomain_with_the_soa() {
        let z = zone();
        let m = ask(&z, "nothing.home.lan", RecordType::A).unwrap();
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert!(m.authoritative());
        assert_eq!(m.name_servers()[0].record_type(), RecordType::SOA);
        // A known name without the type is NODATA, not NXDOMAIN.
        let m = ask(&z, "router.home.lan", RecordType::MX).unwrap();
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
        // An empty non-terminal exists.
        let m = ask(&z, "_udp.home.lan", RecordType::A).unwrap();
        assert_eq!(m.response_code(), ResponseCode::NoError);
        // Outside the domain, unknown names are not ours.
        assert!(ask(&z, "example.com", RecordType::A).is_none());
        assert!(ask(&z, "xhome.lan", RecordType::A).is_none());
        // A static name outside the domain without the type: NODATA, still local.
        let m = ask(&z, "printer.example.net", RecordType::AAAA).unwrap();
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
    }

    #[test]
    fn lease_names_come_and_go() {
        let mut z = zone();
        let ip = Ipv4Addr::new(10, 0, 0, 50);
        assert_eq!(
            z.add_lease(ip, "Laptop_1.whatever"),
            Some("laptop1.home.lan.".into())
        );
        let m = ask(&z, "laptop1.home.lan", RecordType::A).unwrap();
        assert_eq!(m.answers()[0].data(), &RData::A(rdata::A(ip)));
        assert_eq!(m.answers()[0].ttl(), 300);
        let m = ask(&z, "50.0.0.10.in-addr.arpa", RecordType::PTR).unwrap();
        assert_eq!(m.answers()[0].data().to_string(), "laptop1.home.lan.");
        // The same name moving to another address replaces the old one.
        let ip2 = Ipv4Addr::new(10, 0, 0, 51);
        z.add_lease(ip2, "laptop1");
        assert!(ask(&z, "50.0.0.10.in-addr.arpa", RecordType::PTR).is_none());
        assert_eq!(z.lease_count(), 1);
        assert!(z.remove_lease(ip2));
        let m = ask(&z, "laptop1.home.lan", RecordType::A).unwrap();
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert!(z.add_lease(ip, "---").is_none());
    }

    #[test]
    fn chaos_id_server_names_the_node() {
        let z = zone();
        let m = z
            .lookup(&w("id.server"), RecordType::TXT.into(), CLASS_CH)
            .unwrap();
        assert_eq!(m.answers()[0].data().to_string(), "node-a");
        assert!(z
            .lookup(&w("version.bind"), RecordType::TXT.into(), CLASS_CH)
            .is_none());
    }

    #[test]
    fn reload_replaces_static_records() {
        let mut z = zone();
        z.set_records(&[rec("new.home.lan", "A", "10.0.0.9")])
            .unwrap();
        assert_eq!(
            ask(&z, "router.home.lan", RecordType::A)
                .unwrap()
                .response_code(),
            ResponseCode::NXDomain
        );
        assert_eq!(
            ask(&z, "new.home.lan", RecordType::A)
                .unwrap()
                .answers()
                .len(),
            1
        );
        assert!(z.set_records(&[rec("x.home.lan", "A", "nope")]).is_err());
    }
}
