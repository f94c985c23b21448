//! `[[client_class]]`, the typed option values (`routes`, `domains`, `suboptions`) and the
//! option 82 reservation keys: schema and validation.
//!
//! Every value is checked here at load with the dotted key of its place in the file, so the
//! DHCP plan built from a loaded config can encode it without failing. The wire encodings
//! themselves live in [`crate::dhcp::options`].

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{Config, CustomOptionConfig};
use crate::dhcp::classes::{parse_mac_prefix, BytePattern, MAX_CLASSES};
use crate::dhcp::options::{encode_domains, encode_routes, encode_suboptions, Route};

/// A group of clients chosen by what their requests say about them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientClassConfig {
    pub name: String,
    #[serde(rename = "match")]
    pub matches: ClassMatchConfig,
    /// Options for members, over the subnet's and the pool's (under a reservation's).
    #[serde(default, rename = "option")]
    pub options: Vec<CustomOptionConfig>,
    /// siaddr: the TFTP/HTTP server a PXE client loads its boot file from.
    pub next_server: Option<Ipv4Addr>,
    /// The `file` field (and option 67 when the client asks for it).
    pub boot_file: Option<String>,
}

/// Tests on a request; every one given must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClassMatchConfig {
    /// Option 60, a glob or `hex:...`.
    pub vendor_class: Option<String>,
    /// Option 77 (any of its items), a glob or `hex:...`.
    pub user_class: Option<String>,
    /// Option 93: matches when the client names one of these architectures.
    pub arch: Option<Vec<u16>>,
    /// Option 82 sub-option 1, a glob or `hex:...`.
    pub circuit_id: Option<String>,
    /// Option 82 sub-option 2, a glob or `hex:...`.
    pub remote_id: Option<String>,
    /// One to six bytes the hardware address starts with.
    pub mac_prefix: Option<String>,
}

/// The option types added for structured values; the basic ones are in `OPTION_TYPES`.
pub const TYPED_OPTION_TYPES: &[&str] = &["routes", "domains", "suboptions"];

/// Encodes `routes`, `domains` and `suboptions` values; None for any other type.
pub fn encode_typed(o: &CustomOptionConfig) -> Option<Result<Vec<u8>, String>> {
    let strings = |what: &str| -> Result<Vec<&str>, String> {
        match &o.value {
            toml::Value::Array(a) if !a.is_empty() => a
                .iter()
                .map(|v| v.as_str().ok_or_else(|| what.to_string()))
                .collect(),
            _ => Err(what.to_string()),
        }
    };
    let want = |what: &str| format!("option {} of type {} needs {what}", o.code, o.otype);
    Some(match o.otype.as_str() {
        "routes" => strings(&want(
            "an array of routes like [\"10.1.0.0/16 via 10.0.0.254\"]",
        ))
        .and_then(|rs| {
            let routes = rs
                .iter()
                .map(|r| r.parse::<Route>())
                .collect::<Result<Vec<_>, _>>()?;
            Ok(encode_routes(&routes))
        }),
        "domains" => strings(&want("an array of domain names like [\"lab.example.com\"]"))
            .and_then(|ds| encode_domains(&ds)),
        "suboptions" => suboptions(o),
        _ => return None,
    })
}

/// `value = [{ code = 1, type = "ip", value = "10.0.0.5" }, ...]`: each sub-option typed
/// like an option (not nested further).
fn suboptions(o: &CustomOptionConfig) -> Result<Vec<u8>, String> {
    let want = format!(
        "option {} of type suboptions needs an array of {{ code, type, value }} tables",
        o.code
    );
    let toml::Value::Array(items) = &o.value else {
        return Err(want);
    };
    if items.is_empty() {
        return Err(want);
    }
    let mut subs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let sub: CustomOptionConfig = item
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| format!("sub-option [{i}]: {}", e.message().trim()))?;
        if sub.otype == "suboptions" {
            return Err(format!("sub-option [{i}]: sub-options do not nest"));
        }
        let v = sub.encode().map_err(|m| format!("sub-option [{i}]: {m}"))?;
        subs.push((sub.code, v));
    }
    encode_suboptions(&subs)
}

type Invalid = (String, String);

/// Checks a list of `[[...option]]` tables under `key` (e.g. `client_class[0]`).
pub fn validate_options(key: &str, options: &[CustomOptionConfig]) -> Result<(), Invalid> {
    for (oi, o) in options.iter().enumerate() {
        let okey = format!("{key}.option[{oi}]");
        if o.code == 0 || o.code == 255 {
            return Err((
                format!("{okey}.code"),
                "codes 0 (pad) and 255 (end) cannot be set".to_string(),
            ));
        }
        if !super::OPTION_TYPES.contains(&o.otype.as_str())
            && !TYPED_OPTION_TYPES.contains(&o.otype.as_str())
        {
            return Err((
                format!("{okey}.type"),
                format!(
                    "unknown option type {:?}: expected one of {}, {}",
                    o.otype,
                    super::OPTION_TYPES.join(", "),
                    TYPED_OPTION_TYPES.join(", ")
                ),
            ));
        }
        o.encode().map_err(|m| (format!("{okey}.value"), m))?;
    }
    Ok(())
}

fn check_pattern(key: String, v: &Option<String>) -> Result<(), Invalid> {
    match v {
        Some(s) => BytePattern::parse(s).map(|_| ()).map_err(|m| (key, m)),
        None => Ok(()),
    }
}

/// Checks `[[client_class]]` and the class names pools refer to.
pub fn validate_classes(c: &Config) -> Result<(), Invalid> {
    if c.client_classes.len() > MAX_CLASSES {
        return Err((
            format!("client_class[{MAX_CLASSES}]"),
            format!("at most {MAX_CLASSES} client classes can be defined"),
        ));
    }
    let mut names = BTreeSet::new();
    for (i, cc) in c.client_classes.iter().enumerate() {
        let key = format!("client_class[{i}]");
        let ok_name = !cc.name.is_empty()
            && cc.name.len() <= 64
            && cc
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok_name {
            return Err((
                format!("{key}.name"),
                format!(
                    "{:?} is not a class name: use 1 to 64 letters, digits, '-', '_' or '.'",
                    cc.name
                ),
            ));
        }
        if !names.insert(cc.name.as_str()) {
            return Err((
                format!("{key}.name"),
                format!("class {:?} is defined twice", cc.name),
            ));
        }
        let m = &cc.matches;
        let mkey = format!("{key}.match");
        if m.vendor_class.is_none()
            && m.user_class.is_none()
            && m.arch.is_none()
            && m.circuit_id.is_none()
            && m.remote_id.is_none()
            && m.mac_prefix.is_none()
        {
            return Err((
                mkey,
                "needs at least one of vendor_class, user_class, arch, circuit_id, remote_id, mac_prefix".to_string(),
            ));
        }
        check_pattern(format!("{mkey}.vendor_class"), &m.vendor_class)?;
        check_pattern(format!("{mkey}.user_class"), &m.user_class)?;
        check_pattern(format!("{mkey}.circuit_id"), &m.circuit_id)?;
        check_pattern(format!("{mkey}.remote_id"), &m.remote_id)?;
        if m.arch.as_ref().is_some_and(Vec::is_empty) {
            return Err((
                format!("{mkey}.arch"),
                "must list at least one architecture number (RFC 4578: 0 BIOS, 7 and 9 UEFI x64, 11 UEFI arm64)".to_string(),
            ));
        }
        if let Some(p) = &m.mac_prefix {
            parse_mac_prefix(p).map_err(|e| (format!("{mkey}.mac_prefix"), e))?;
        }
        if let Some(f) = &cc.boot_file {
            if f.is_empty() || f.len() > 255 {
                return Err((
                    format!("{key}.boot_file"),
                    "must be 1 to 255 bytes".to_string(),
                ));
            }
        }
        validate_options(&key, &cc.options)?;
    }
    for (si, s) in c.subnets.iter().enumerate() {
        for (pi, p) in s.pools.iter().enumerate() {
            let pkey = format!("subnet[{si}].pool[{pi}]");
            for (ci, name) in p.classes.iter().enumerate() {
                if !names.contains(name.as_str()) {
                    return Err((
                        format!("{pkey}.classes[{ci}]"),
                        format!("no [[client_class]] is named {name:?}"),
                    ));
                }
            }
            validate_options(&pkey, &p.options)?;
        }
        for (ri, r) in s.reservations.iter().enumerate() {
            let rkey = format!("subnet[{si}].reservation[{ri}]");
            for (field, v) in [("circuit_id", &r.circuit_id), ("remote_id", &r.remote_id)] {
                if let Some(v) = v {
                    relay_id_bytes(v).map_err(|m| (format!("{rkey}.{field}"), m))?;
                }
            }
            validate_options(&rkey, &r.options)?;
        }
    }
    Ok(())
}

/// A reservation's circuit or remote ID: the text as bytes, or `hex:...` for binary IDs.
pub fn relay_id_bytes(s: &str) -> Result<Vec<u8>, String> {
    match s.strip_prefix("hex:") {
        Some(h) => super::parse_hex_bytes(h),
        None if s.is_empty() => Err("must not be empty".to_string()),
        None => Ok(s.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{parse, ConfigError};

    fn refused(toml: &str) -> ConfigError {
        parse(toml, Path::new("t.toml")).expect_err("must be refused")
    }

    const SUBNET: &str = "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n";

    #[test]
    fn a_malformed_route_is_refused_naming_the_key_and_line() {
        let e = refused(&format!(
            "{SUBNET}[[subnet.option]]\ncode = 121\ntype = \"routes\"\nvalue = [\"10.1.0.0/16 via nowhere\"]\n"
        ));
        assert_eq!(e.key, "subnet[0].option[0].value");
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("10.1.0.0/16 via nowhere"), "{e}");
    }

    #[test]
    fn malformed_typed_values_are_refused() {
        for (body, key) in [
            ("code = 119\ntype = \"domains\"\nvalue = [\"bad..name\"]", "value"),
            ("code = 119\ntype = \"domains\"\nvalue = \"lab.example\"", "value"),
            ("code = 43\ntype = \"suboptions\"\nvalue = [{ code = 1, type = \"ip\", value = \"x\" }]", "value"),
            ("code = 43\ntype = \"suboptions\"\nvalue = [{ code = 1, type = \"suboptions\", value = [] }]", "value"),
            ("code = 121\ntype = \"route\"\nvalue = []", "type"),
        ] {
            let e = refused(&format!("{SUBNET}[[subnet.option]]\n{body}\n"));
            assert_eq!(e.key, format!("subnet[0].option[0].{key}"), "{body}: {e}");
        }
    }

    #[test]
    fn class_mistakes_are_refused_with_their_key() {
        let class = |m: &str| format!("[[client_class]]\nname = \"c\"\nmatch = {{ {m} }}\n");
        for (toml, key) in [
            (class("vendor_class = \"[a-\""), "client_class[0].match.vendor_class"),
            (class("circuit_id = \"hex:zz\""), "client_class[0].match.circuit_id"),
            (class("mac_prefix = \"00:11:22:33:44:55:66\""), "client_class[0].match.mac_prefix"),
            (class("arch = []"), "client_class[0].match.arch"),
            (class(""), "client_class[0].match"),
            (format!("{}{}", class("arch = [7]"), class("arch = [9]")), "client_class[1].name"),
            (
                format!("{SUBNET}[[subnet.pool]]\nrange_start = \"10.0.0.10\"\nrange_end = \"10.0.0.20\"\nclasses = [\"nope\"]\n"),
                "subnet[0].pool[0].classes[0]",
            ),
            (
                format!("{SUBNET}[[subnet.reservation]]\nip = \"10.0.0.9\"\ncircuit_id = \"hex:0\"\n"),
                "subnet[0].reservation[0].circuit_id",
            ),
        ] {
            let e = refused(&toml);
            assert_eq!(e.key, key, "{toml}: {e}");
            assert!(e.line > 0, "{e}");
        }
    }

    #[test]
    fn the_pxe_example_loads() {
        let text = r#"
[[client_class]]
name = "ipxe"
match = { user_class = "iPXE" }
boot_file = "http://boot.lab/boot.ipxe"

[[client_class]]
name = "uefi"
match = { arch = [7, 9] }
next_server = "10.0.0.5"
boot_file = "ipxe.efi"

[[client_class]]
name = "bios"
match = { arch = [0] }
next_server = "10.0.0.5"
boot_file = "undionly.kpxe"
[[client_class.option]]
code = 43
type = "suboptions"
value = [{ code = 6, type = "u8", value = 8 }]
"#;
        let c = parse(text, Path::new("t.toml")).expect("valid");
        assert_eq!(c.client_classes.len(), 3);
        assert_eq!(c.client_classes[2].options[0].encode(), Ok(vec![6, 1, 8]));
    }
}
