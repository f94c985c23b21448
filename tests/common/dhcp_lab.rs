//! The DHCP lab shared by `tests/dhcp.rs` and `tests/durability.rs`: namespace `srv` runs the
//! daemon (s0 10.0.0.1/24, VIP 10.0.0.3/24 claimed by its own `[[hooks.vip]]`; r0 10.1.0.1/24
//! towards the relay), `cli` holds the client end c0, `rly` is the relay (r1 10.1.0.2/24,
//! giaddr 10.9.0.1 on lo; srv routes 10.9.0.0/24 to it). Plus the raw BOOTP helpers the
//! tests use to play a relay, and the client script real clients (`dhclient`, `udhcpc`) run,
//! whose environment the tests read back.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::netns::{veth, Netns};
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder};

pub const BIN: &str = env!("CARGO_BIN_EXE_athena-dhcpd");
pub const RESERVED_MAC: &str = "02:aa:00:00:00:01";
pub const GIADDR: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);

pub struct Lab {
    pub srv: Netns,
    pub cli: Netns,
    pub rly: Netns,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub daemon: Option<Child>,
    /// A command the daemon runs under (e.g. `strace ...`), empty for none.
    pub wrapper: Vec<String>,
}

pub fn config(dir: &Path, lease_time: &str) -> String {
    format!(
        r#"
[server]
node_name = "dhcp-test"
lease_db = "{db}"
rate_limit_per_mac = 50

[api]
listen = "127.0.0.1:8067"

[defaults]
lease_time = "{lease_time}"
dns_servers = ["10.0.0.3"]
domain_name = "lab.test"

[[hooks.vip]]
name = "vip"
address = "10.0.0.3/24"
interface = "s0"
garp_count = 1

[[subnet]]
network = "10.0.0.0/24"
interface = "s0"
routers = ["10.0.0.1"]
[[subnet.pool]]
range_start = "10.0.0.100"
range_end = "10.0.0.199"
[[subnet.reservation]]
mac = "{RESERVED_MAC}"
ip = "10.0.0.50"
hostname = "reserved-host"

[[subnet]]
network = "10.9.0.0/24"
routers = ["10.9.0.1"]
[[subnet.pool]]
range_start = "10.9.0.10"
range_end = "10.9.0.250"
"#,
        db = dir.join("leases.redb").display()
    )
}

impl Lab {
    pub fn new(tag: &str, lease_time: &str) -> Lab {
        Lab::with_wrapper(tag, lease_time, &[])
    }

    /// [`Lab::new`] with the daemon started under `wrapper` (a command and its arguments).
    pub fn with_wrapper(tag: &str, lease_time: &str, wrapper: &[&str]) -> Lab {
        Lab::build(tag, lease_time, wrapper, |_, text| text)
    }

    /// [`Lab::new`] with `edit` applied to the config text (given the lab's directory) before
    /// the daemon first starts.
    pub fn with_config(
        tag: &str,
        lease_time: &str,
        edit: impl FnOnce(&Path, String) -> String,
    ) -> Lab {
        Lab::build(tag, lease_time, &[], edit)
    }

    fn build(
        tag: &str,
        lease_time: &str,
        wrapper: &[&str],
        edit: impl FnOnce(&Path, String) -> String,
    ) -> Lab {
        let srv = Netns::new(&format!("{tag}s"));
        let cli = Netns::new(&format!("{tag}c"));
        let rly = Netns::new(&format!("{tag}r"));
        veth(&srv, "s0", &cli, "c0");
        srv.addr("s0", "10.0.0.1/24");
        veth(&srv, "r0", &rly, "r1");
        srv.addr("r0", "10.1.0.1/24");
        rly.addr("r1", "10.1.0.2/24");
        rly.run(&["ip", "addr", "add", "10.9.0.1/32", "dev", "lo"]);
        srv.run(&["ip", "route", "add", "10.9.0.0/24", "via", "10.1.0.2"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("athena.toml");
        let text = edit(dir.path(), config_text(dir.path(), lease_time));
        std::fs::write(&config, text).expect("write config");
        let mut lab = Lab {
            srv,
            cli,
            rly,
            dir,
            config,
            daemon: None,
            wrapper: wrapper.iter().map(|w| w.to_string()).collect(),
        };
        lab.start();
        lab
    }

    pub fn start(&mut self) {
        let log = self.dir.path().join("daemon.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = self.srv.cmd(program);
                c.args(args).arg(BIN);
                c
            }
            None => self.srv.cmd(BIN),
        };
        let child = cmd
            .args(["--log-format", "text", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let health = self.api("/api/v1/health");
            let vip = self.srv.run(&["ip", "-4", "addr", "show", "dev", "s0"]);
            if health.contains("\"status\"") && vip.contains("10.0.0.3/24") {
                return;
            }
            if let Some(Ok(Some(st))) = self.daemon.as_mut().map(|c| c.try_wait()) {
                panic!("daemon exited ({st}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready (health {health:?}, s0 {vip}):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn api(&self, path: &str) -> String {
        let out = self.srv.try_run(&[
            "curl",
            "-s",
            "--max-time",
            "2",
            &format!("http://127.0.0.1:8067{path}"),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn lease_json(&self, ip: &str) -> serde_json::Value {
        serde_json::from_str(&self.api(&format!("/api/v1/leases/{ip}"))).unwrap_or_default()
    }

    pub fn wait_for(&self, what: &str, within: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- daemon log ---\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A UDP socket on the relay's giaddr:67, connected to nothing.
    pub fn relay_socket(&self) -> UdpSocket {
        self.rly.in_netns(|| {
            let s = UdpSocket::bind(SocketAddrV4::new(GIADDR, 67)).expect("bind relay socket");
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            s
        })
    }
}

pub fn config_text(dir: &Path, lease_time: &str) -> String {
    config(dir, lease_time)
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill9();
        // Namespaces drop after this, killing any client left inside.
        let _ = &self.cli;
    }
}

/// A BOOTREQUEST with the given options (code, value), as a relay would forward it.
pub fn request(t: u8, mac: [u8; 6], xid: u32, giaddr: Ipv4Addr, opts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![0u8; 236];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[3] = 1;
    b[4..8].copy_from_slice(&xid.to_be_bytes());
    b[24..28].copy_from_slice(&giaddr.octets());
    b[28..34].copy_from_slice(&mac);
    b.extend_from_slice(&[99, 130, 83, 99, 53, 1, t]);
    for (c, v) in opts {
        b.push(*c);
        b.push(v.len() as u8);
        b.extend_from_slice(v);
    }
    b.push(255);
    b
}

pub const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1), 67);
pub const OPT82: [u8; 10] = [1, 4, b'p', b'o', b'r', b't', 2, 2, b'r', b'1'];

pub fn recv_reply(s: &UdpSocket) -> Option<Message> {
    let mut buf = [0u8; 2048];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Message::decode(&mut Decoder::new(&buf[..n])).ok()
}

/// No VIP and no `server_id` for 10.9.0.0/24: the address the relay sent to.
pub fn server_id(m: &Message) -> Ipv4Addr {
    match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(a)) => *a,
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

pub fn msg_type(m: &Message) -> Option<MessageType> {
    match m.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(t)) => Some(*t),
        _ => None,
    }
}

/// DISCOVER → OFFER → REQUEST → ACK through the relay socket; returns the ACKed address.
pub fn relay_exchange(s: &UdpSocket, mac: [u8; 6], xid: u32) -> Option<(Message, Message)> {
    let d = request(1, mac, xid, GIADDR, &[(82, OPT82.to_vec())]);
    let offer = exchange(s, &d, xid, MessageType::Offer)?;
    let r = request(
        3,
        mac,
        xid,
        GIADDR,
        &[
            (50, offer.yiaddr().octets().to_vec()),
            (54, server_id(&offer).octets().to_vec()),
            (82, OPT82.to_vec()),
        ],
    );
    let ack = exchange(s, &r, xid, MessageType::Ack)?;
    Some((offer, ack))
}

/// Sends and waits for the reply with this xid and type, retrying a few times.
pub fn exchange(s: &UdpSocket, pkt: &[u8], xid: u32, want: MessageType) -> Option<Message> {
    for _ in 0..10 {
        s.send_to(pkt, SERVER).expect("send");
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            if let Some(m) = recv_reply(s) {
                if m.xid() == xid && msg_type(&m) == Some(want) {
                    return Some(m);
                }
            }
        }
    }
    None
}

pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// What the client script runs after configuring a dhclient address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitHook {
    None,
    /// Debian's RFC 3442 exit hook, which installs the option 121 routes.
    ClasslessRoutes,
}

/// A client hook script for `dhclient -sf` and `udhcpc -s`: configures the address, as a
/// real client script would (renewals are unicast from it), runs `hook`, then records the
/// call's environment in `<dir>/<reason>.env`. The environment is written last, so a test
/// that sees the file finds the address (and routes) already in place.
pub fn client_script(dir: &Path, hook: ExitHook) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("client-script.sh");
    let hook = match hook {
        ExitHook::None => "",
        ExitHook::ClasslessRoutes => {
            "\n    [ -f /etc/dhcp/dhclient-exit-hooks.d/rfc3442-classless-routes ] && \
             . /etc/dhcp/dhclient-exit-hooks.d/rfc3442-classless-routes"
        }
    };
    let body = format!(
        r#"#!/bin/sh
reason="${{reason:-$1}}"
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT)
    ip addr replace "$new_ip_address/24" dev "$interface"{hook} ;;
  bound|renew) ip addr replace "$ip/24" dev "$interface" ;;
esac
env > "{dir}/$reason.env.tmp" && mv "{dir}/$reason.env.tmp" "{dir}/$reason.env"
exit 0
"#,
        dir = dir.display()
    );
    std::fs::write(&p, body).expect("script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

/// ISC `dhclient` on the client end c0, run with the client script; its lease and pid files,
/// and the script, live in one directory.
pub struct Dhclient {
    pub dir: PathBuf,
    conf: Option<PathBuf>,
    script: PathBuf,
}

impl Dhclient {
    /// `conf`: a dhclient.conf (classes to send, options to request), else the system's.
    pub fn new(dir: &Path, conf: Option<&Path>, hook: ExitHook) -> Dhclient {
        std::fs::create_dir_all(dir).expect("dir");
        Dhclient {
            dir: dir.to_path_buf(),
            conf: conf.map(Path::to_path_buf),
            script: client_script(dir, hook),
        }
    }

    /// `dhclient <args> [-cf conf] -lf .. -pf .. -sf <script> c0` in the client namespace.
    pub fn cmd(&self, lab: &Lab, args: &[&str]) -> std::process::Command {
        let mut c = lab.cli.cmd("dhclient");
        c.args(args);
        if let Some(conf) = &self.conf {
            c.arg("-cf").arg(conf);
        }
        c.arg("-lf")
            .arg(self.leases())
            .arg("-pf")
            .arg(self.dir.join("dhclient.pid"))
            .arg("-sf")
            .arg(&self.script)
            .arg("c0");
        c
    }

    /// Its lease file.
    pub fn leases(&self) -> PathBuf {
        self.dir.join("dhclient.leases")
    }

    /// Stops a `dhclient -1` left running in the background after its lease.
    pub fn stop_daemonized(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("dhclient.pid")) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }

    /// Waits for the script's BOUND call; returns the environment it recorded.
    pub fn wait_bound(&self, lab: &Lab) -> String {
        lab.wait_for("dhclient BOUND", Duration::from_secs(30), || {
            env_file(&self.dir, "BOUND").is_some()
        });
        env_file(&self.dir, "BOUND").expect("bound")
    }
}

/// The environment the client script recorded for `reason` (`BOUND`, `bound`, ...).
pub fn env_file(dir: &Path, reason: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(format!("{reason}.env"))).ok()
}

/// One variable of a recorded environment, its outer single quotes trimmed.
pub fn env_var(env: &str, key: &str) -> Option<String> {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim_matches('\'').to_string())
}

/// Runs `udhcpc` once in `ns` on `ifname` with extra arguments and the client script; returns
/// its `bound` environment (the test fails, with the daemon's log, if it gets no lease).
pub fn udhcpc(lab: &Lab, ns: &Netns, ifname: &str, dir: &Path, extra: &[&str]) -> String {
    std::fs::create_dir_all(dir).expect("dir");
    let script = client_script(dir, ExitHook::None);
    let out = ns
        .cmd("udhcpc")
        .args(["-f", "-q", "-n", "-t", "5", "-T", "2", "-i", ifname, "-s"])
        .arg(&script)
        .args(extra)
        .output()
        .expect("run udhcpc");
    assert!(
        out.status.success(),
        "udhcpc {extra:?} failed: {}\n{}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        lab.log()
    );
    env_file(dir, "bound").expect("udhcpc ran its script with bound")
}
