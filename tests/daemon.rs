//! The daemon as an admin meets it: a broken config is refused before anything binds, the
//! capability drop really happens on every thread, the API answers, SIGHUP reloads what it
//! can and refuses a broken file, SIGTERM stops it cleanly.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{require_root, Netns};

const BIN: &str = env!("CARGO_BIN_EXE_athena-dhcpd");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The daemon on `cfg` inside `ns`, its log (text format) in `log`.
fn spawn_daemon(ns: &Netns, cfg: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    ns.cmd(BIN)
        .args(["--log-format", "text", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("spawn daemon")
}

#[test]
fn broken_config_is_refused_with_file_line_and_key_and_nothing_binds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!("[api]\nlisten = \"127.0.0.1:{port}\"\n\n[ha]\nenabled = true\npeer_address = \"10.0.0.2:8067\"\nfailover_timout = \"5s\"\n"),
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "exit code");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:7:1: ha.failover_timout: unknown field `failover_timout`",
            path.display()
        )),
        "{err}"
    );
    assert!(err.contains("check-config"), "tells how to check: {err}");
    // Nothing was bound: the API port is still free.
    TcpListener::bind(("127.0.0.1", port)).expect("API port must not have been bound");
}

#[test]
fn ha_without_secret_is_refused_before_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nosecret.toml");
    std::fs::write(
        &path,
        "[ha]\nenabled = true\npeer_address = \"10.0.0.2:8067\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":1:2: ha: shared_secret is required"), "{err}");
    assert!(
        err.contains("openssl rand -hex 32"),
        "says how to fix it: {err}"
    );
}

#[test]
fn check_config_summarises_the_shipped_node_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/node-a.toml");
    let out = Command::new(BIN)
        .args(["check-config", path])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("node        node-a"), "{s}");
    assert!(s.contains("HA          primary"), "{s}");
    assert!(s.contains("VIP         10.0.0.3/24 on eth0"), "{s}");
    assert!(s.contains("server id 10.0.0.3 (VIP)"), "{s}");
    assert!(s.ends_with(": OK\n"), "{s}");
}

#[test]
fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("athena-dhcpd "));
    let out = Command::new(BIN).arg("--help").output().expect("run");
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("check-config") && s.contains("--config"), "{s}");
}

/// Reads one status field of every thread of `pid`.
fn thread_field(pid: u32, field: &str) -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        if let Some(v) = status.lines().find_map(|l| l.strip_prefix(field)) {
            out.push(v.trim().to_string());
        }
    }
    out
}

#[test]
fn root_daemon_drops_to_cap_net_admin_on_every_thread_and_stops_on_sigterm() {
    if !require_root("root_daemon_drops_to_cap_net_admin_on_every_thread_and_stops_on_sigterm") {
        return;
    }
    let ns = Netns::new("caps");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("a.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nnode_name = \"capstest\"\nlease_db = \"{}/leases.redb\"\n[api]\nlisten = \"127.0.0.1:8067\"\n",
            dir.path().display()
        ),
    )
    .expect("write");
    let log = dir.path().join("daemon.log");
    let mut child = spawn_daemon(&ns, &cfg, &log);
    let pid = child.id();

    // Ready when the API answers inside the namespace.
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        let out = ns.try_run(&[
            "curl",
            "-s",
            "--max-time",
            "1",
            "http://127.0.0.1:8067/api/v1/health",
        ]);
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if body.contains("\"status\"") {
            break body;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "daemon exited early ({st}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "API never answered: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    let ha = ns.run(&[
        "curl",
        "-s",
        "--max-time",
        "2",
        "http://127.0.0.1:8067/api/v1/ha/status",
    ]);
    assert!(
        ha.contains("\"enabled\":false") && ha.contains("\"state\":\"ACTIVE\""),
        "{ha}"
    );
    let metrics = ns.run(&[
        "curl",
        "-s",
        "--max-time",
        "2",
        "http://127.0.0.1:8067/metrics",
    ]);
    assert!(metrics.ends_with("# EOF\n"), "OpenMetrics text: {metrics}");

    // Every thread, not just the main one (capabilities are per thread).
    let eff = thread_field(pid, "CapEff:");
    assert!(eff.len() > 1, "expected worker threads, got {eff:?}");
    assert!(
        eff.iter().all(|c| c == "0000000000001000"),
        "CapEff per thread: {eff:?}"
    );
    assert!(thread_field(pid, "CapPrm:")
        .iter()
        .all(|c| c == "0000000000001000"));
    assert!(thread_field(pid, "CapInh:")
        .iter()
        .all(|c| c == "0000000000000000"));
    assert!(thread_field(pid, "CapAmb:")
        .iter()
        .all(|c| c == "0000000000000000"));
    assert!(thread_field(pid, "CapBnd:")
        .iter()
        .all(|c| c == "0000000000000000"));
    assert!(thread_field(pid, "NoNewPrivs:").iter().all(|c| c == "1"));

    nix_kill(pid, 15);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = String::new();
    std::fs::File::open(&log)
        .expect("log")
        .read_to_string(&mut text)
        .expect("read");
    assert!(status.success(), "exit status {status}: {text}");
    assert!(
        text.contains("athena-dhcpd 0.1.0 started on capstest (standalone)"),
        "{text}"
    );
    assert!(
        text.contains("SIGTERM received") && text.contains("stopped"),
        "{text}"
    );
}

/// The config of `sighup_applies_dns_records_and_a_broken_file_changes_nothing`: one static
/// record, `nas.home.lan` → `nas`, plus `extra` (appended inside the record).
fn hup_config(dir: &std::path::Path, log_level: &str, nas: &str, extra: &str) -> String {
    format!(
        "[server]\nnode_name = \"huptest\"\nlog_level = \"{log_level}\"\nlease_db = \"{}/leases.redb\"\n\
         [api]\nlisten = \"127.0.0.1:8067\"\n\
         [dns]\nenabled = true\nlisten_udp = \"127.0.0.1:53\"\ndomain = \"home.lan\"\n\
         [[dns.record]]\nname = \"nas.home.lan\"\ntype = \"A\"\nvalue = \"{nas}\"\nttl = 60\n{extra}",
        dir.display()
    )
}

/// `dig +short` for an A record against the daemon's DNS port inside `ns`.
fn dig_a(ns: &Netns, name: &str) -> String {
    let out = ns.try_run(&[
        "dig",
        "@127.0.0.1",
        "+short",
        "+time=1",
        "+tries=1",
        name,
        "A",
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The real signal to a daemon the test started. Reload applies DNS static records (and
/// hooks) at once: a broken file changes nothing, the daemon keeps answering from the
/// running config and logs why (file, line, key); a good file's records are served, and a
/// change reload cannot apply is named.
#[test]
fn sighup_applies_dns_records_and_a_broken_file_changes_nothing() {
    if !require_root("sighup_applies_dns_records_and_a_broken_file_changes_nothing") {
        return;
    }
    let ns = Netns::new("hup");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("a.toml");
    std::fs::write(&cfg, hup_config(dir.path(), "info", "10.0.0.8", "")).expect("write");
    let log = dir.path().join("daemon.log");
    let mut child = spawn_daemon(&ns, &cfg, &log);
    let pid = child.id();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while dig_a(&ns, "nas.home.lan") != "10.0.0.8" {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("daemon exited early ({st}): {}", text());
        }
        assert!(Instant::now() < deadline, "DNS never answered: {}", text());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Broken: the record moves to .9 but a key is misspelt. Refused as a whole.
    std::fs::write(
        &cfg,
        hup_config(dir.path(), "info", "10.0.0.9", "tll = 30\n"),
    )
    .expect("write");
    nix_kill(pid, 1);
    wait_for_log(&log, "reload refused, keeping the running config");
    let why = text()
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains(&format!("{}:", cfg.display())) && why.contains("tll"),
        "the refusal names the file and the key: {why}"
    );
    // A second after the refusal the old record is still what is served.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        assert_eq!(dig_a(&ns, "nas.home.lan"), "10.0.0.8", "{}", text());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Good: the record moves to .9, a new one appears, and [server] changes too.
    std::fs::write(
        &cfg,
        hup_config(
            dir.path(),
            "debug",
            "10.0.0.9",
            "[[dns.record]]\nname = \"cam.home.lan\"\ntype = \"A\"\nvalue = \"10.0.0.44\"\n",
        ),
    )
    .expect("write");
    nix_kill(pid, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (dig_a(&ns, "nas.home.lan"), dig_a(&ns, "cam.home.lan"))
        != ("10.0.0.9".into(), "10.0.0.44".into())
    {
        assert!(
            Instant::now() < deadline,
            "the reloaded records are not served: {}",
            text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_log(&log, "changes to [server] take effect after a restart");
    assert!(
        child.try_wait().expect("wait").is_none(),
        "SIGHUP must not stop the daemon"
    );
    nix_kill(pid, 15);
    let _ = child.wait();
}

fn nix_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

#[test]
fn man_pages_render_without_warnings() {
    for page in ["man/athena-dhcpd.8", "man/athena-dhcpd.toml.5"] {
        let path = format!("{}/{page}", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("man")
            .args(["--warnings=w", "-l", &path])
            .env("MANWIDTH", "80")
            .output()
            .expect("man (man-db) installed");
        assert!(
            out.status.success(),
            "{page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{page} warnings: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("SEE ALSO"),
            "{page} rendered nothing"
        );
    }
}

fn wait_for_log(log: &std::path::Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "log never said {needle:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn missing_cap_net_admin_is_named_with_the_setcap_line() {
    if !require_root("missing_cap_net_admin_is_named_with_the_setcap_line") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let port = free_port();
    let cfg = dir.path().join("a.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlease_db = \"{}/l.redb\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().display()
        ),
    )
    .expect("write");
    // An unprivileged user with no capabilities at all, as after a forgotten setcap.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
            BIN,
            "--log-format",
            "text",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .expect("setpriv");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing capability CAP_NET_ADMIN"), "{err}");
    assert!(
        err.contains("setcap cap_net_admin,cap_net_raw,cap_net_bind_service+ep"),
        "{err}"
    );
}

/// A valid config that fails at run time (the lease database's directory is not writable by
/// the daemon once it dropped to CAP_NET_ADMIN) exits with status 1, naming the file and why.
#[test]
fn a_runtime_failure_after_a_valid_config_exits_1_and_says_what_failed() {
    if !require_root("a_runtime_failure_after_a_valid_config_exits_1") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let ns = Netns::new("exit1");
    let dir = tempfile::tempdir().expect("tempdir");
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let db = locked.join("leases.redb");
    let cfg = dir.path().join("a.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nnode_name = \"exit1\"\nlease_db = \"{}\"\n[api]\nlisten = \"127.0.0.1:8067\"\n\
             [[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.pool]]\nrange_start = \"10.0.0.100\"\nrange_end = \"10.0.0.199\"\n",
            db.display()
        ),
    )
    .expect("write");
    let check = Command::new(BIN)
        .arg("check-config")
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(
        check.status.success(),
        "the config itself is valid: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut child = ns
        .cmd(BIN)
        .args(["--log-format", "text", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn daemon");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "the daemon kept running");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    assert_eq!(status.code(), Some(1), "exit status {status}: {err}");
    assert!(
        err.contains("opening the lease database")
            && err.contains(&db.display().to_string())
            && err.contains("Permission denied"),
        "{err}"
    );
}
