//! The on-disk form of a [`Lease`]: a small versioned binary record.
//!
//! Binary rather than JSON because every DHCPACK writes one, inside the group-commit
//! transaction. The record carries the sequence number of the change that wrote it (the key
//! of its log entry; also what the store's older layout keyed its change log by). Decoding
//! never panics: a record that does not parse is reported with its length, never trusted.
//!
//! A conflict record (state 4) carries its count after the classes field (always present
//! in such a record). Readers ignore bytes after the last field they know, so the count
//! needed no new version; a node that
//! does not know state 4 is never sent one (see `ha::peer::LEASE_CODEC`).

use std::net::Ipv4Addr;

use super::{Lease, LeaseState};

const VERSION: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("lease record of {len} bytes is corrupt: {what}")]
pub struct CodecError {
    pub len: usize,
    pub what: &'static str,
}

fn state_byte(s: LeaseState) -> u8 {
    match s {
        LeaseState::Active => 0,
        LeaseState::Released => 1,
        LeaseState::Expired => 2,
        LeaseState::Declined => 3,
        LeaseState::Conflict { .. } => 4,
    }
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.extend_from_slice(&u16::MAX.to_be_bytes()),
        Some(b) => {
            let n = b.len().min(u16::MAX as usize - 1);
            out.extend_from_slice(&(n as u16).to_be_bytes());
            out.extend_from_slice(&b[..n]);
        }
    }
}

/// Encodes a lease and the sequence number of the change that wrote it.
pub fn encode(lease: &Lease, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + lease.subnet.len());
    out.push(VERSION);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&lease.ip.octets());
    out.extend_from_slice(&lease.mac);
    out.push(state_byte(lease.state));
    out.extend_from_slice(&lease.start.to_be_bytes());
    out.extend_from_slice(&lease.expiry.to_be_bytes());
    out.extend_from_slice(&lease.updated_ms.to_be_bytes());
    put_bytes(&mut out, lease.client_id.as_deref());
    put_bytes(&mut out, lease.hostname.as_deref().map(str::as_bytes));
    put_bytes(&mut out, Some(lease.subnet.as_bytes()));
    put_bytes(&mut out, lease.relay_info.as_deref());
    // Optional trailing field: a record without it (older writers) decodes with no classes,
    // and older readers ignore it. Class names never contain a comma (checked at load). A
    // conflict record always has it (absent = the None marker), so its count comes after.
    if !lease.classes.is_empty() || lease.state.is_conflict() {
        let joined = lease.classes.join(",");
        put_bytes(
            &mut out,
            (!lease.classes.is_empty()).then_some(joined.as_bytes()),
        );
    }
    if let LeaseState::Conflict { seen } = lease.state {
        out.extend_from_slice(&seen.to_be_bytes());
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
    len: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.b.len() < n {
            return Err(CodecError {
                len: self.len,
                what: "truncated",
            });
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Result<Option<&'a [u8]>, CodecError> {
        let n = self.take(2)?;
        let n = u16::from_be_bytes([n[0], n[1]]);
        if n == u16::MAX {
            return Ok(None);
        }
        self.take(n as usize).map(Some)
    }
}

fn header<'a>(b: &'a [u8]) -> Result<Reader<'a>, CodecError> {
    let mut r = Reader { b, len: b.len() };
    if r.take(1)?[0] != VERSION {
        return Err(CodecError {
            len: b.len(),
            what: "unknown version",
        });
    }
    Ok(r)
}

/// The sequence number alone (migrating the older layout needs only this).
pub fn decode_seq(b: &[u8]) -> Result<u64, CodecError> {
    header(b)?.u64()
}

/// The address alone: the log's compaction reads it for every record it passes.
pub fn decode_ip(b: &[u8]) -> Result<Ipv4Addr, CodecError> {
    let mut r = header(b)?;
    r.u64()?;
    let ip = r.take(4)?;
    Ok(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))
}

/// Appends one record to a list of records: its length (u32, big-endian), then the record.
/// The store keeps a commit's records as one such list; the peer link sends lease frames as
/// one.
pub fn push_record(list: &mut Vec<u8>, record: &[u8]) {
    list.extend_from_slice(&(record.len() as u32).to_be_bytes());
    list.extend_from_slice(record);
}

/// The records of a list written by [`push_record`], in order; a truncated tail is one
/// error at the end (the records before it are still good).
pub fn records(mut list: &[u8]) -> impl Iterator<Item = Result<&[u8], CodecError>> {
    let total = list.len();
    std::iter::from_fn(move || {
        if list.is_empty() {
            return None;
        }
        let rec = list
            .get(..4)
            .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
            .and_then(|n| list.get(4..4 + n));
        match rec {
            Some(rec) => {
                list = &list[4 + rec.len()..];
                Some(Ok(rec))
            }
            None => {
                list = &[];
                Some(Err(CodecError {
                    len: total,
                    what: "record list truncated",
                }))
            }
        }
    })
}

/// Decodes a record into the lease and its sequence number.
pub fn decode(b: &[u8]) -> Result<(Lease, u64), CodecError> {
    let len = b.len();
    let bad = |what| CodecError { len, what };
    let mut r = Reader { b, len };
    if r.take(1)?[0] != VERSION {
        return Err(bad("unknown version"));
    }
    let seq = r.u64()?;
    let ip = r.take(4)?;
    let ip = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(r.take(6)?);
    let state = match r.take(1)?[0] {
        0 => LeaseState::Active,
        1 => LeaseState::Released,
        2 => LeaseState::Expired,
        3 => LeaseState::Declined,
        4 => LeaseState::Conflict { seen: 0 },
        _ => return Err(bad("unknown state")),
    };
    let start = r.u64()?;
    let expiry = r.u64()?;
    let updated_ms = r.u64()?;
    let client_id = r.bytes()?.map(<[u8]>::to_vec);
    let hostname = match r.bytes()? {
        Some(h) => Some(
            std::str::from_utf8(h)
                .map_err(|_| bad("hostname is not UTF-8"))?
                .to_string(),
        ),
        None => None,
    };
    let subnet = std::str::from_utf8(r.bytes()?.ok_or_else(|| bad("no subnet"))?)
        .map_err(|_| bad("subnet is not UTF-8"))?
        .into();
    let relay_info = r.bytes()?.map(<[u8]>::to_vec);
    let classes = if r.b.is_empty() {
        Vec::new()
    } else {
        match r.bytes()? {
            Some(c) => std::str::from_utf8(c)
                .map_err(|_| bad("classes are not UTF-8"))?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
            None => Vec::new(),
        }
    };
    let state = match state {
        LeaseState::Conflict { .. } => {
            let n = r.take(4)?;
            LeaseState::Conflict {
                seen: u32::from_be_bytes([n[0], n[1], n[2], n[3]]),
            }
        }
        s => s,
    };
    Ok((
        Lease {
            ip,
            mac,
            client_id,
            hostname,
            subnet,
            state,
            start,
            expiry,
            updated_ms,
            relay_info,
            classes,
        },
        seq,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 0, 0, 50),
            mac: [0, 1, 2, 3, 4, 5],
            client_id: Some(vec![1, 0, 1, 2, 3, 4, 5]),
            hostname: Some("host-a".into()),
            subnet: "10.0.0.0/24".into(),
            state: LeaseState::Declined,
            start: 10,
            expiry: 3610,
            updated_ms: 123456,
            relay_info: Some(vec![1, 2, b'x', b'y']),
            classes: vec!["voip".to_string(), "uefi".to_string()],
        }
    }

    #[test]
    fn round_trips_every_field() {
        let l = lease();
        assert_eq!(decode(&encode(&l, 77)), Ok((l.clone(), 77)));
        assert_eq!(decode_seq(&encode(&l, 77)), Ok(77));
        assert_eq!(decode_ip(&encode(&l, 77)), Ok(l.ip));
        let mut bare = l;
        bare.client_id = None;
        bare.hostname = None;
        bare.relay_info = Some(Vec::new());
        assert_eq!(decode(&encode(&bare, 1)), Ok((bare, 1)));
        let mut conflict = lease();
        conflict.state = LeaseState::Conflict { seen: 7 };
        let b = encode(&conflict, 2);
        assert_eq!(decode(&b), Ok((conflict.clone(), 2)));
        // The count is the last field: a record cut before it is corrupt, not a count of 0.
        assert!(decode(&b[..b.len() - 1]).is_err());
        // With classes, the count still comes after them.
        let mut classed = conflict.clone();
        classed.classes = vec!["voip".into()];
        assert_eq!(decode(&encode(&classed, 3)), Ok((classed, 3)));
    }

    #[test]
    fn a_record_list_yields_its_records_then_one_error_for_a_cut_tail() {
        let (a, b) = (encode(&lease(), 1), encode(&lease(), 2));
        let mut list = Vec::new();
        push_record(&mut list, &a);
        push_record(&mut list, &b);
        let all: Vec<_> = records(&list).collect();
        assert_eq!(all, vec![Ok(a.as_slice()), Ok(b.as_slice())]);
        let cut: Vec<_> = records(&list[..list.len() - 1]).collect();
        assert_eq!(cut.len(), 2);
        assert_eq!(cut[0], Ok(a.as_slice()));
        assert!(cut[1].is_err());
        assert_eq!(records(&[]).count(), 0);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let b = encode(&lease(), 5);
        let mut without_classes = lease();
        without_classes.classes.clear();
        // A record that ends before the optional classes is a valid (older) record.
        let whole_older = encode(&without_classes, 5).len();
        for n in 0..b.len() {
            if n == whole_older {
                assert_eq!(decode(&b[..n]).map(|(l, _)| l), Ok(without_classes.clone()));
                continue;
            }
            assert!(decode(&b[..n]).is_err(), "prefix of {n} bytes decoded");
        }
        for n in 0..13 {
            assert!(
                decode_ip(&b[..n]).is_err(),
                "prefix of {n} bytes gave an address"
            );
        }
    }
}
