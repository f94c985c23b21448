//! What both nodes of a pair must agree on, as key paths an admin reads, and a digest of it.
//!
//! Computed from the parsed config, not the file: order, comments and formatting don't
//! count, nor what is per node (`node_name`, `role`, `peer_address`, listen addresses,
//! `lease_db`, tokens, log level, a subnet's or VIP's interface name, DNS cache size). Lists
//! are compared as sets (pools, reservations, options, records, forwarders), so moving a
//! reservation up in the file is no difference. A key a later version adds to a shared
//! section is shared unless it is named here as per node.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Config;

/// Keys of `[dns]` that are per node.
const DNS_PER_NODE: &[&str] = &["listen_udp", "listen_tcp", "cache_size"];
/// Keys of a `[[subnet]]` that are per node (and its network, which is in every key path).
const SUBNET_PER_NODE: &[&str] = &["interface", "network"];
/// Keys of `[ha]` both nodes must share (the rest of `[ha]` is per node).
const HA_SHARED: &[&str] = &[
    "heartbeat_interval",
    "failover_timeout",
    "witness_timeout",
    "preempt",
    "max_ack_delay",
];

/// The shared part of a config: key path → value, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedConfig {
    pub entries: BTreeMap<String, String>,
}

/// One digest per section, so a mismatch is named by section before any key is exchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDigest {
    /// Section name (`subnets`, `defaults`, `conflict_detection`, `classes`, `dns`, `vips`, `ha`) → hex SHA-256,
    /// first 16 bytes.
    pub sections: BTreeMap<String, String>,
}

impl ConfigDigest {
    /// The sections whose digests differ (or exist on one side only).
    pub fn differing_sections(&self, other: &ConfigDigest) -> Vec<String> {
        let mut out: Vec<String> = self
            .sections
            .iter()
            .filter(|(k, v)| other.sections.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        out.extend(
            other
                .sections
                .keys()
                .filter(|k| !self.sections.contains_key(*k))
                .cloned(),
        );
        out
    }
}

/// One key whose values differ; `None` where one side does not have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub key: String,
    pub here: Option<String>,
    pub there: Option<String>,
}

impl Difference {
    /// `subnet 10.0.0.0/24 pool[0].range_end: 10.0.0.200 here, 10.0.0.199 on node-b`
    pub fn describe(&self, peer: &str) -> String {
        let v = |x: &Option<String>| x.clone().unwrap_or_else(|| "(not set)".to_string());
        format!(
            "{}: {} here, {} on {peer}",
            self.key,
            v(&self.here),
            v(&self.there)
        )
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe("the peer"))
    }
}

impl SharedConfig {
    pub fn of(cfg: &Config) -> SharedConfig {
        let mut entries = BTreeMap::new();
        let mut put = |section: &str, v: Value| flatten(section, &v, &mut entries);
        for s in &cfg.subnets {
            let mut v = to_value(s);
            strip(&mut v, SUBNET_PER_NODE);
            put(&format!("subnet {} ", s.network), v);
        }
        put("defaults.", to_value(&cfg.defaults));
        put("conflict_detection.", to_value(&cfg.conflict_detection));
        // Both nodes must answer a class member alike (a failover must not change its pool,
        // options or boot file).
        for c in &cfg.client_classes {
            let mut v = to_value(c);
            strip(&mut v, &["name"]);
            put(&format!("client_class {} ", c.name), v);
        }
        let mut dns = to_value(&cfg.dns);
        strip(&mut dns, DNS_PER_NODE);
        put("dns.", dns);
        let mut vips: Vec<String> = cfg.hooks.vips.iter().map(|v| v.address.clone()).collect();
        vips.sort();
        put("vips", Value::from(vips));
        let mut ha = to_value(&cfg.ha);
        if let Value::Object(m) = &mut ha {
            m.retain(|k, _| HA_SHARED.contains(&k.as_str()));
            // Unset, the witness timeout derives from failover_timeout; compare what is used.
            m.insert(
                "witness_timeout".into(),
                Value::from(super::Dur(cfg.ha.witness_timeout()).to_string()),
            );
        }
        put("ha.", ha);
        SharedConfig { entries }
    }

    pub fn digest(&self) -> ConfigDigest {
        let mut hashers: BTreeMap<String, Sha256> = BTreeMap::new();
        for (k, v) in &self.entries {
            let h = hashers.entry(section_of(k).to_string()).or_default();
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        let sections = hashers
            .into_iter()
            .map(|(s, h)| (s, hex::encode(&h.finalize()[..16])))
            .collect();
        ConfigDigest { sections }
    }

    /// Every key whose value differs, in key order.
    pub fn diff(&self, there: &SharedConfig) -> Vec<Difference> {
        let mut out = Vec::new();
        for (k, v) in &self.entries {
            if there.entries.get(k) != Some(v) {
                out.push(Difference {
                    key: k.clone(),
                    here: Some(v.clone()),
                    there: there.entries.get(k).cloned(),
                });
            }
        }
        for (k, v) in &there.entries {
            if !self.entries.contains_key(k) {
                out.push(Difference {
                    key: k.clone(),
                    here: None,
                    there: Some(v.clone()),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

/// The section a key path belongs to.
pub fn section_of(key: &str) -> &'static str {
    if key.starts_with("subnet ") {
        "subnets"
    } else if key.starts_with("defaults.") {
        "defaults"
    } else if key.starts_with("client_class ") {
        "classes"
    } else if key.starts_with("conflict_detection.") {
        "conflict_detection"
    } else if key.starts_with("dns.") {
        "dns"
    } else if key.starts_with("vips") {
        "vips"
    } else {
        "ha"
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn strip(v: &mut Value, keys: &[&str]) {
    if let Value::Object(m) = v {
        for k in keys {
            m.remove(*k);
        }
    }
}

/// Objects by key, lists as sets (sorted by their canonical text, then numbered), scalars as
/// their text. Unset values (`null`) are left out, so "absent" and "unset" are one thing.
fn flatten(path: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                // A subnet's keys follow its network after a space; nested keys join with a dot.
                let sep = if path.ends_with(' ') || path.ends_with('.') || path.is_empty() {
                    ""
                } else {
                    "."
                };
                flatten(&format!("{path}{sep}{k}"), v, out);
            }
        }
        Value::Array(items) => {
            let mut items: Vec<&Value> = items.iter().collect();
            items.sort_by_cached_key(|v| v.to_string());
            if items.iter().all(|v| !v.is_object() && !v.is_array()) {
                let list: Vec<String> = items.iter().map(|v| scalar(v)).collect();
                out.insert(path.to_string(), list.join(", "));
            } else {
                for (i, v) in items.into_iter().enumerate() {
                    flatten(&format!("{path}[{i}]"), v, out);
                }
            }
        }
        v => {
            out.insert(path.to_string(), scalar(v));
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"
[server]
node_name = "node-a"
lease_db = "/var/lib/a.redb"
[ha]
enabled = true
role = "primary"
peer_address = "10.0.0.2:8067"
shared_secret = "0123456789abcdef0123"
[dns]
enabled = true
forwarders = ["9.9.9.9", "1.1.1.1"]
cache_size = 1000
[[hooks.vip]]
name = "dns"
address = "10.0.0.3/24"
interface = "eth0"
[[subnet]]
network = "10.0.0.0/24"
interface = "eth0"
routers = ["10.0.0.1"]
[[subnet.pool]]
range_start = "10.0.0.100"
range_end = "10.0.0.200"
[[subnet.pool]]
range_start = "10.0.0.20"
range_end = "10.0.0.50"
[[subnet.reservation]]
mac = "aa:bb:cc:dd:ee:01"
ip = "10.0.0.10"
[[subnet.reservation]]
mac = "aa:bb:cc:dd:ee:02"
ip = "10.0.0.11"
"#;

    fn shared(text: &str) -> SharedConfig {
        SharedConfig::of(
            &crate::config::parse(text, std::path::Path::new("t.toml")).expect("parse"),
        )
    }

    /// Node B's file as an admin writes it: other per-node keys, other order, comments.
    fn node_b() -> String {
        A.replace("node_name = \"node-a\"", "node_name = \"node-b\" # the standby")
            .replace("/var/lib/a.redb", "/srv/b.redb")
            .replace("role = \"primary\"", "role = \"secondary\"")
            .replace("10.0.0.2:8067", "10.0.0.1:8067")
            .replace("cache_size = 1000", "cache_size = 50000")
            .replace("interface = \"eth0\"", "interface = \"ens3\"")
            .replace("[\"9.9.9.9\", \"1.1.1.1\"]", "[\"1.1.1.1\", \"9.9.9.9\"]")
            .replace(
                "[[subnet.reservation]]\nmac = \"aa:bb:cc:dd:ee:01\"\nip = \"10.0.0.10\"\n[[subnet.reservation]]\nmac = \"aa:bb:cc:dd:ee:02\"\nip = \"10.0.0.11\"",
                "[[subnet.reservation]]\nmac = \"aa:bb:cc:dd:ee:02\"\nip = \"10.0.0.11\"\n\n# first host\n[[subnet.reservation]]\nmac = \"aa:bb:cc:dd:ee:01\"\nip = \"10.0.0.10\"",
            )
    }

    #[test]
    fn per_node_keys_order_and_comments_are_no_difference() {
        let b = node_b();
        assert_ne!(A, b);
        assert_eq!(shared(A).diff(&shared(&b)), vec![]);
        assert_eq!(shared(A).digest(), shared(&b).digest());
    }

    #[test]
    fn a_narrowed_pool_is_named_with_both_values() {
        let b = node_b().replace("range_end = \"10.0.0.200\"", "range_end = \"10.0.0.199\"");
        let d = shared(A).diff(&shared(&b));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0].describe("node-b"),
            "subnet 10.0.0.0/24 pool[0].range_end: 10.0.0.200 here, 10.0.0.199 on node-b"
        );
        let (da, db) = (shared(A).digest(), shared(&b).digest());
        assert_eq!(da.differing_sections(&db), vec!["subnets".to_string()]);
    }

    #[test]
    fn shared_sections_each_count() {
        let cases = [
            (
                "preempt",
                A.replace("[dns]", "preempt = false\n[dns]"),
                "ha",
            ),
            (
                "failover_timeout",
                A.replace("[dns]", "failover_timeout = \"3s\"\n[dns]"),
                "ha",
            ),
            (
                "forwarder",
                A.replace("\"1.1.1.1\"]", "\"8.8.8.8\"]"),
                "dns",
            ),
            ("vip", A.replace("10.0.0.3/24", "10.0.0.4/24"), "vips"),
            (
                "lease time",
                A.replace(
                    "routers = [\"10.0.0.1\"]",
                    "routers = [\"10.0.0.1\"]\nlease_time = \"2h\"",
                ),
                "subnets",
            ),
            (
                "defaults",
                A.replace("[dns]", "[defaults]\nlease_time = \"2h\"\n[dns]"),
                "defaults",
            ),
            (
                "conflict detection",
                A.replace(
                    "[dns]",
                    "[conflict_detection]\nprobe_timeout = \"300ms\"\n[dns]",
                ),
                "conflict_detection",
            ),
            (
                "client class",
                format!("{A}\n[[client_class]]\nname = \"pxe\"\nmatch = {{ arch = [7] }}\n"),
                "classes",
            ),
        ];
        for (what, b, section) in cases {
            let d = shared(A).diff(&shared(&b));
            assert!(!d.is_empty(), "{what}: no difference found");
            assert!(
                d.iter().all(|x| section_of(&x.key) == section),
                "{what}: {d:?}"
            );
            assert_eq!(
                shared(A).digest().differing_sections(&shared(&b).digest()),
                vec![section.to_string()],
                "{what}"
            );
        }
    }

    #[test]
    fn a_subnet_on_one_side_only_is_named_as_not_set_there() {
        let b = format!(
            "{}\n[[subnet]]\nnetwork = \"10.9.0.0/24\"\nrouters = [\"10.9.0.1\"]\n",
            node_b()
        );
        let d = shared(A).diff(&shared(&b));
        assert!(
            d.iter()
                .all(|x| x.key.starts_with("subnet 10.9.0.0/24") && x.here.is_none()),
            "{d:?}"
        );
        assert!(d[0].describe("node-b").contains("(not set) here"));
    }
}
