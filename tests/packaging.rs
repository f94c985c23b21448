//! What an admin installs besides the binary: the systemd unit is valid as systemd reads it,
//! warns about nothing, and keeps its sandbox tight (`systemd-analyze security` rates it 2.5
//! or better; Debian's keepalived, unbound, dnsmasq and Kea units rate 9.3-9.6). Needs
//! `systemd-analyze` (Debian's `systemd`); no running systemd.

use std::path::Path;
use std::process::Command;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/athena-dhcpd.service");
const BIN: &str = env!("CARGO_BIN_EXE_athena-dhcpd");

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    // verify checks that every Exec= binary exists: point them at the one cargo built.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = std::fs::read_to_string(UNIT).expect("read the unit");
    let copy = dir.path().join("athena-dhcpd.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/athena-dhcpd", BIN)).expect("write");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

#[test]
fn the_systemd_unit_is_rated_2_5_or_better_by_systemd_analyze_security() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=25"])
        .arg(Path::new(UNIT))
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for athena-dhcpd.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(
        out.status.success() && level <= 2.5,
        "exposure {level} (target <= 2.5), {}:\n{text}",
        out.status
    );
}
