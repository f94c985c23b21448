//! Client classes: which `[[client_class]]` tables a request belongs to, and what each adds
//! to the reply (options, next server, boot file).
//!
//! Matching is compiled once at load: globs become [`globset`] matchers, `hex:` values and
//! MAC prefixes become bytes, so classifying a request is a few comparisons on slices of the
//! request with no allocation. A request's classes are a [`ClassSet`] bitmask in file order
//! (at most [`MAX_CLASSES`] classes, checked at load).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;

use globset::{GlobBuilder, GlobMatcher};

use super::options::{
    any_user_class, arches, suboption, RELAY_SUB_CIRCUIT_ID, RELAY_SUB_REMOTE_ID,
};
use super::packet::{OptVal, ReplyOption, Request};
use crate::config::ClientClassConfig;

/// Classes a config may define: one bit each in a [`ClassSet`].
pub const MAX_CLASSES: usize = 64;

/// The classes a request matched, one bit per class in file order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassSet(pub u64);

impl ClassSet {
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn contains(self, i: usize) -> bool {
        i < MAX_CLASSES && self.0 & (1 << i) != 0
    }
    pub fn intersects(self, other: ClassSet) -> bool {
        self.0 & other.0 != 0
    }
    /// Indexes of the member classes, in file order (one step per member, none for an
    /// empty set: this runs on every reply).
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let i = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            Some(i)
        })
    }
}

/// A value to match bytes from the request against: a glob (`*`, `?`, `[...]`) on the
/// bytes as text, or exact bytes written `hex:01:02`.
#[derive(Debug, Clone)]
pub enum BytePattern {
    Glob(GlobMatcher),
    Exact(Vec<u8>),
}

impl BytePattern {
    pub fn parse(s: &str) -> Result<BytePattern, String> {
        if let Some(h) = s.strip_prefix("hex:") {
            return crate::config::parse_hex_bytes(h).map(BytePattern::Exact);
        }
        if s.is_empty() {
            return Err("must not be empty".to_string());
        }
        GlobBuilder::new(s)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map(|g| BytePattern::Glob(g.compile_matcher()))
            .map_err(|e| format!("invalid glob {s:?}: {}", e.kind()))
    }

    pub fn matches(&self, v: &[u8]) -> bool {
        match self {
            BytePattern::Exact(b) => b == v,
            // An OsStr views the bytes as a path without copying; `*` crosses `/` here.
            BytePattern::Glob(g) => g.is_match(std::ffi::OsStr::from_bytes(v)),
        }
    }
}

/// Parses a MAC prefix: one to six hex bytes, `aa:bb:cc`.
pub fn parse_mac_prefix(s: &str) -> Result<Vec<u8>, String> {
    match crate::config::parse_hex_bytes(s) {
        Ok(b) if b.len() <= 6 => Ok(b),
        _ => Err(format!(
            "invalid MAC prefix {s:?}: expected one to six hex bytes like \"00:1a:2b\""
        )),
    }
}

/// A class's `match` table compiled; every given test must hold.
#[derive(Debug, Clone, Default)]
pub struct ClassMatch {
    vendor_class: Option<BytePattern>,
    user_class: Option<BytePattern>,
    arch: Vec<u16>,
    circuit_id: Option<BytePattern>,
    remote_id: Option<BytePattern>,
    mac_prefix: Option<Vec<u8>>,
}

impl ClassMatch {
    pub fn matches(&self, req: &Request) -> bool {
        let relay = |code| req.relay_info.as_deref().and_then(|r| suboption(r, code));
        let test = |p: &Option<BytePattern>, v: Option<&[u8]>| match p {
            None => true,
            Some(p) => v.is_some_and(|v| p.matches(v)),
        };
        test(&self.vendor_class, req.vendor_class.as_deref())
            && match &self.user_class {
                None => true,
                Some(p) => req
                    .user_class
                    .as_deref()
                    .is_some_and(|v| any_user_class(v, |c| p.matches(c))),
            }
            && (self.arch.is_empty()
                || req
                    .arch
                    .as_deref()
                    .is_some_and(|v| arches(v).any(|a| self.arch.contains(&a))))
            && test(&self.circuit_id, relay(RELAY_SUB_CIRCUIT_ID))
            && test(&self.remote_id, relay(RELAY_SUB_REMOTE_ID))
            && self
                .mac_prefix
                .as_ref()
                .is_none_or(|p| req.chaddr.starts_with(p))
    }
}

/// One class as the handler uses it.
#[derive(Debug, Clone)]
pub struct ClassPlan {
    /// Also the `class` label of the reply metrics, hence `'static` (see [`intern`]).
    pub name: &'static str,
    pub matcher: ClassMatch,
    /// Encoded options, in the order written.
    pub options: Vec<ReplyOption>,
    /// siaddr: the server the client loads its boot file from.
    pub next_server: Option<Ipv4Addr>,
    pub boot_file: Option<OptVal>,
}

impl ClassPlan {
    /// From a validated class (invalid parts cannot occur; they are skipped).
    pub fn from_config(c: &ClientClassConfig) -> ClassPlan {
        let m = &c.matches;
        let pat = |s: &Option<String>| s.as_deref().and_then(|s| BytePattern::parse(s).ok());
        ClassPlan {
            name: intern(&c.name),
            matcher: ClassMatch {
                vendor_class: pat(&m.vendor_class),
                user_class: pat(&m.user_class),
                arch: m.arch.clone().unwrap_or_default(),
                circuit_id: pat(&m.circuit_id),
                remote_id: pat(&m.remote_id),
                mac_prefix: m
                    .mac_prefix
                    .as_deref()
                    .and_then(|p| parse_mac_prefix(p).ok()),
            },
            options: super::plan::encode_options(&c.options),
            next_server: c.next_server,
            boot_file: c.boot_file.as_deref().map(|f| f.as_bytes().into()),
        }
    }
}

/// A class name as a `'static` metrics label: each distinct name is leaked once for the life
/// of the process, and a reload that keeps a name reuses it (so SIGHUPs do not leak).
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.get(name) {
        return n;
    }
    let n: &'static str = Box::leak(name.into());
    names.insert(n);
    n
}

/// The classes `req` belongs to.
pub fn classify(classes: &[ClassPlan], req: &Request) -> ClassSet {
    let mut set = 0u64;
    for (i, c) in classes.iter().enumerate().take(MAX_CLASSES) {
        if c.matcher.matches(req) {
            set |= 1 << i;
        }
    }
    ClassSet(set)
}

/// Class names for the lease record and the API, in file order.
pub fn names(classes: &[ClassPlan], set: ClassSet) -> Vec<String> {
    set.iter()
        .filter_map(|i| classes.get(i))
        .map(|c| c.name.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_hex_match_bytes() {
        let g = BytePattern::parse("PXEClient:Arch:0000[79]*").expect("glob");
        assert!(g.matches(b"PXEClient:Arch:00007:UNDI:003016"));
        assert!(!g.matches(b"PXEClient:Arch:00000:UNDI:002001"));
        let any = BytePattern::parse("*").expect("glob");
        assert!(any.matches(b"a/b\xff"), "slashes and non-UTF-8 bytes match");
        let h = BytePattern::parse("hex:00:01:ff").expect("hex");
        assert!(h.matches(&[0, 1, 255]));
        assert!(!h.matches(&[0, 1]));
        assert!(BytePattern::parse("hex:zz").is_err());
        assert!(BytePattern::parse("[a-").is_err());
        assert!(BytePattern::parse("").is_err());
        assert_eq!(parse_mac_prefix("00:1a:2b"), Ok(vec![0, 0x1a, 0x2b]));
        assert!(parse_mac_prefix("00:1a:2b:00:00:00:00").is_err());
    }

    #[test]
    fn class_sets_list_members_in_order() {
        let s = ClassSet(0b1010);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![1, 3]);
        assert!(s.intersects(ClassSet(0b10)));
        assert!(!s.intersects(ClassSet(0b101)));
        assert!(ClassSet::default().is_empty());
    }
}
