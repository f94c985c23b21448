//! What an admin installs: the systemd unit is valid as systemd reads it, warns about
//! nothing, and keeps its sandbox tight (`systemd-analyze security` rates it 2.5 or better;
//! Debian's keepalived, unbound, dnsmasq and Kea units rate 9.3-9.6); the Debian package
//! (`cargo deb`) passes lintian, installs with `dpkg -i` (files, user, state directory, the
//! config's mode, the unit left disabled, `check-config` on the installed config) and purges
//! without a trace. Needs `systemd-analyze` (Debian's `systemd`), `cargo deb` and `lintian`
//! (tests/run.sh installs them); no running systemd. The package test changes this machine
//! (it is meant for CI's fresh one): it refuses to run where athena-dhcpd is already
//! installed, and puts back what it changed, also when it fails.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/athena-dhcpd.service");
const BIN: &str = env!("CARGO_BIN_EXE_athena-dhcpd");

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    // verify checks that every Exec= binary exists: point them at the one cargo built.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = std::fs::read_to_string(UNIT).expect("read the unit");
    let copy = dir.path().join("athena-dhcpd.service");
    std::fs::write(&copy, unit.replace("/usr/bin/athena-dhcpd", BIN)).expect("write");
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

const PKG: &str = "athena-dhcpd";
const CONF: &str = "/etc/athena-dhcpd/athena-dhcpd.toml";
const STATE: &str = "/var/lib/athena-dhcpd";

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{shown}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PKG])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn user_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["passwd", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Puts the machine back: purges the package and removes the `athena` user if this test
/// made them (the package itself keeps the user on purge, as Debian recommends).
struct Cleanup {
    user_was_there: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", PKG]).output();
        if !self.user_was_there && user_exists("athena") {
            let _ = Command::new("userdel").arg("athena").output();
            let _ = Command::new("groupdel").arg("athena").output();
        }
    }
}

/// `cargo deb` on the binary this test run built, not a second (release) build: the package's
/// contents and scripts are what is tested, and CI's time is better spent elsewhere. The
/// binary goes where cargo-deb expects a release build, in a target dir of its own.
fn build_deb(dir: &Path) -> PathBuf {
    let target = dir.join("target");
    std::fs::create_dir_all(target.join("release")).expect("mkdir");
    std::fs::copy(BIN, target.join("release/athena-dhcpd")).expect("copy the binary");
    let out = dir.join("out");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let made = Command::new(&cargo)
        .args(["deb", "--no-build", "--fast", "--output"])
        .arg(&out)
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo");
    assert!(
        made.status.success(),
        "`cargo deb` failed ({}); install it with `cargo install cargo-deb --locked` \
         (tests/run.sh does):\n{}",
        made.status,
        String::from_utf8_lossy(&made.stderr)
    );
    let name = format!("{PKG}_{}-1_amd64.deb", env!("CARGO_PKG_VERSION"));
    let deb = out.join(&name);
    assert!(deb.is_file(), "no {name} in {}", out.display());
    deb
}

#[test]
fn the_debian_changelog_names_the_crate_version() {
    let log = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/debian/changelog"))
        .expect("read debian/changelog");
    let want = format!("{PKG} ({}-1) ", env!("CARGO_PKG_VERSION"));
    assert!(
        log.starts_with(&want),
        "debian/changelog must start with a {want:?} entry (bump it with Cargo.toml's version)"
    );
}

#[test]
fn the_debian_package_passes_lintian_installs_disabled_and_purges_cleanly() {
    if !common::netns::require_root(
        "the_debian_package_passes_lintian_installs_disabled_and_purges_cleanly",
    ) {
        return;
    }
    assert!(
        !installed() && !Path::new(CONF).exists() && !Path::new(STATE).exists(),
        "{PKG} is (or was) installed on this machine ({CONF} or {STATE} exists): this test \
         installs and purges the package, so it runs only where it is absent (CI's fresh machine)"
    );
    let _cleanup = Cleanup {
        user_was_there: user_exists("athena"),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let deb = build_deb(dir.path());

    // lintian exits non-zero on an error tag; warnings are printed, not fatal.
    let lint = Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(&deb)
        .output()
        .expect("lintian (Debian package lintian)");
    let tags = String::from_utf8_lossy(&lint.stdout);
    assert!(
        lint.status.success() && !tags.lines().any(|l| l.starts_with("E:")),
        "lintian: {}\n{tags}{}",
        lint.status,
        String::from_utf8_lossy(&lint.stderr)
    );

    run(Command::new("dpkg").arg("-i").arg(&deb));
    for f in [
        "/usr/bin/athena-dhcpd",
        "/usr/lib/systemd/system/athena-dhcpd.service",
        "/usr/share/man/man8/athena-dhcpd.8.gz",
        "/usr/share/man/man5/athena-dhcpd.toml.5.gz",
        "/usr/share/doc/athena-dhcpd/copyright",
        "/usr/share/doc/athena-dhcpd/examples/athena-dhcpd.toml",
        "/usr/share/doc/athena-dhcpd/examples/node-a.toml",
        "/usr/share/doc/athena-dhcpd/examples/node-b.toml",
        CONF,
    ] {
        assert!(Path::new(f).is_file(), "{f} not installed");
    }
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PKG]));
    assert!(
        String::from_utf8_lossy(&conffiles.stdout).contains(CONF),
        "{CONF} is not a conffile"
    );
    // The man pages are found by man and render.
    let man = run(Command::new("man").args(["-w", "8", "athena-dhcpd"]));
    assert_eq!(
        String::from_utf8_lossy(&man.stdout).trim(),
        "/usr/share/man/man8/athena-dhcpd.8.gz"
    );

    // A system user with no login; the state directory and config readable by it alone.
    let pw = run(Command::new("getent").args(["passwd", "athena"]));
    let pw = String::from_utf8_lossy(&pw.stdout).trim().to_string();
    let fields: Vec<&str> = pw.split(':').collect();
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid < 1000, "athena is a system user: {pw}");
    assert!(fields[6].ends_with("nologin"), "athena cannot log in: {pw}");
    let gid = |name: &str| -> u32 {
        let g = run(Command::new("getent").args(["group", name]));
        String::from_utf8_lossy(&g.stdout)
            .split(':')
            .nth(2)
            .and_then(|g| g.trim().parse().ok())
            .expect("gid")
    };
    let st = std::fs::metadata(STATE).expect("state directory");
    assert!(st.is_dir());
    assert_eq!((st.uid(), st.gid()), (uid, gid("athena")), "{STATE} owner");
    assert_eq!(st.permissions().mode() & 0o777, 0o750, "{STATE} mode");
    let conf = std::fs::metadata(CONF).expect("config");
    assert_eq!((conf.uid(), conf.gid()), (0, gid("athena")), "{CONF} owner");
    assert_eq!(conf.permissions().mode() & 0o777, 0o640, "{CONF} mode");

    // Disabled and not started until an admin has filled in the config.
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/athena-dhcpd.service").exists(),
        "the unit must not be enabled on install"
    );
    // The installed unit verifies against the installed binary and user.
    let verify = Command::new("systemd-analyze")
        .args([
            "verify",
            "--man=no",
            "/usr/lib/systemd/system/athena-dhcpd.service",
        ])
        .output()
        .expect("systemd-analyze");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify of the installed unit: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // The installed config and examples pass check-config, read as the service user reads it.
    run(Command::new("runuser").args([
        "-u",
        "athena",
        "--",
        "/usr/bin/athena-dhcpd",
        "check-config",
        CONF,
    ]));
    for ex in ["node-a.toml", "node-b.toml"] {
        run(Command::new("/usr/bin/athena-dhcpd")
            .arg("check-config")
            .arg(format!("/usr/share/doc/athena-dhcpd/examples/{ex}")));
    }

    // An admin's edit survives a reinstall (the upgrade path: postinst runs again with the
    // old version), and so do the config's mode and group.
    let mut edited = std::fs::read_to_string(CONF).expect("read config");
    edited.push_str("# edited by the admin\n");
    std::fs::write(CONF, &edited).expect("edit config");
    run(Command::new("dpkg")
        .args(["-i", "--force-confold"])
        .arg(&deb));
    assert_eq!(std::fs::read_to_string(CONF).expect("read config"), edited);
    let conf = std::fs::metadata(CONF).expect("config");
    assert_eq!(
        (conf.gid(), conf.permissions().mode() & 0o777),
        (gid("athena"), 0o640),
        "{CONF} after a reinstall"
    );

    // A lease database, as a daemon that ran would leave it: purge removes it with the rest.
    std::fs::write(format!("{STATE}/leases.redb"), b"x").expect("write into the state dir");
    run(Command::new("dpkg").args(["--purge", PKG]));
    assert!(!installed(), "{PKG} still installed after purge");
    for gone in ["/usr/bin/athena-dhcpd", CONF, "/etc/athena-dhcpd", STATE] {
        assert!(!Path::new(gone).exists(), "{gone} left behind by purge");
    }
    let so = Command::new("dpkg-statoverride")
        .args(["--list", CONF])
        .output()
        .expect("dpkg-statoverride");
    assert!(
        !so.status.success(),
        "the config's statoverride left behind by purge"
    );
    assert!(
        user_exists("athena"),
        "purge keeps the system user (Debian: files elsewhere may carry its uid)"
    );
}
