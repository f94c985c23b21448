//! `[conflict_detection]`: check that an address is free on the wire before it is offered
//! (ARP probe on attached subnets, ICMP echo on relayed ones), and how long an address found
//! in use is held back. Key names follow the Go athena-dhcpd this replaces.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::Dur;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConflictConfig {
    pub enabled: bool,
    /// How long an OFFER waits for an answer to its probe; an unanswered probe means free.
    pub probe_timeout: Dur,
    /// Candidates probed for one DISCOVER before it is left unanswered (the client retries).
    pub max_probes_per_discover: u32,
    /// How long an address that answered is not offered.
    pub conflict_hold_time: Dur,
    /// An address found free is not probed again within this time (a client's DISCOVER
    /// retransmissions, a lapsed offer handed out again).
    pub probe_cache_ttl: Dur,
}

impl Default for ConflictConfig {
    fn default() -> Self {
        ConflictConfig {
            enabled: true,
            probe_timeout: Dur::millis(200),
            max_probes_per_discover: 3,
            conflict_hold_time: Dur::secs(3600),
            probe_cache_ttl: Dur::secs(10),
        }
    }
}

/// The checks of the section: (dotted key, problem).
pub(super) fn validate_conflict(c: &ConflictConfig) -> Result<(), (String, String)> {
    let err = |k: &str, m: String| Err((format!("conflict_detection.{k}"), m));
    if c.probe_timeout.0 < Duration::from_millis(10) || c.probe_timeout.0 > Duration::from_secs(5) {
        // Shorter cannot hear a busy host's ARP reply; longer makes clients retransmit
        // DISCOVER before the OFFER arrives (most wait 4 s).
        return err(
            "probe_timeout",
            format!("is {}; use 10ms to 5s", c.probe_timeout),
        );
    }
    if !(1..=32).contains(&c.max_probes_per_discover) {
        return err(
            "max_probes_per_discover",
            format!("is {}; use 1 to 32", c.max_probes_per_discover),
        );
    }
    if c.conflict_hold_time.0 < Duration::from_secs(1) {
        return err(
            "conflict_hold_time",
            format!("is {}; use at least 1s", c.conflict_hold_time),
        );
    }
    if c.probe_cache_ttl.0 > Duration::from_secs(3600) {
        return err(
            "probe_cache_ttl",
            format!("is {}; use at most 1h", c.probe_cache_ttl),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        crate::config::parse(text, std::path::Path::new("/etc/athena-dhcpd/test.toml"))
    }

    #[test]
    fn defaults_are_upstreams() {
        let c = parse("").expect("empty config").conflict_detection;
        assert!(c.enabled);
        assert_eq!(c.probe_timeout, Dur::millis(200));
        assert_eq!(c.max_probes_per_discover, 3);
        assert_eq!(c.conflict_hold_time, Dur::secs(3600));
        assert_eq!(c.probe_cache_ttl, Dur::secs(10));
        let off = parse("[conflict_detection]\nenabled = false\nprobe_timeout = \"50ms\"\n")
            .expect("valid");
        assert!(!off.conflict_detection.enabled);
        assert_eq!(off.conflict_detection.probe_timeout, Dur::millis(50));
    }

    #[test]
    fn bad_values_are_refused_with_line_and_key() {
        for (text, line, key, words) in [
            (
                "[conflict_detection]\nenabled = true\nprobe_timeout = \"1ms\"\n",
                3,
                "conflict_detection.probe_timeout",
                "10ms to 5s",
            ),
            (
                "[conflict_detection]\nmax_probes_per_discover = 0\n",
                2,
                "conflict_detection.max_probes_per_discover",
                "1 to 32",
            ),
            (
                "[conflict_detection]\nconflict_hold_time = \"0s\"\n",
                2,
                "conflict_detection.conflict_hold_time",
                "at least 1s",
            ),
            (
                "[conflict_detection]\nprobe_cache_ttl = \"2h\"\n",
                2,
                "conflict_detection.probe_cache_ttl",
                "at most 1h",
            ),
            (
                "[conflict_detection]\nprobe_timout = \"1s\"\n",
                2,
                "conflict_detection.probe_timout",
                "unknown field",
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert_eq!((e.line, e.key.as_str()), (line, key), "{e}");
            assert!(e.message.contains(words), "{e}");
        }
    }
}
