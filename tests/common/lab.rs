//! The failover lab: two nodes, a client and a switch, each in its own network namespace,
//! with the built daemon running inside the nodes. It is the set-up of `shared/lab/lab.sh`
//! made per test:
//!
//! ```text
//!   <tag>-sw : bridge br0 (stp off, forward_delay 0), ports p-a, p-b, p-c (and p-<client>)
//!   <tag>-a  : eth0 10.0.0.1/24  node A (primary)
//!   <tag>-b  : eth0 10.0.0.2/24  node B (secondary)
//!   <tag>-c  : eth0 10.0.0.10/24 client (DNS prober, dig); extra unaddressed DHCP clients
//! ```
//!
//! Invariants: every veth is created inside the switch namespace with its other end moved
//! straight into a node, so nothing appears in the host's namespace; names are unique per
//! test process and test (tests run in parallel); dropping the [`Lab`] (also while panicking)
//! kills the daemons and deletes every namespace, and a panicking test prints the daemons'
//! logs so a failure explains itself.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::{self, Netns};

/// The floating address clients use for DNS (and as DHCP server identifier).
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
pub const DOMAIN: &str = "lab.test";
/// A static record whose answer differs per node, so each DNS reply says who answered.
pub const WHO: &str = "who.lab.test";
pub const API_PORT: u16 = 8067;
pub const SECRET: &str = "lab-shared-secret-0123456789abcdef";
/// Every lab node's `[api] read_token`; [`Lab::api_get`] sends it (the API is reached on the
/// node's LAN address, not loopback, so client data needs it).
pub const READ_TOKEN: &str = "lab-read-token-0123456789";
pub const POOL: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 199));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    A,
    B,
}

impl Node {
    pub fn name(self) -> &'static str {
        match self {
            Node::A => "node-a",
            Node::B => "node-b",
        }
    }
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Node::A => Ipv4Addr::new(10, 0, 0, 1),
            Node::B => Ipv4Addr::new(10, 0, 0, 2),
        }
    }
    /// The answer this node gives for [`WHO`].
    pub fn who_answer(self) -> Ipv4Addr {
        match self {
            Node::A => Ipv4Addr::new(192, 0, 2, 1),
            Node::B => Ipv4Addr::new(192, 0, 2, 2),
        }
    }
    pub fn from_who_answer(ip: Ipv4Addr) -> Option<Node> {
        [Node::A, Node::B]
            .into_iter()
            .find(|n| n.who_answer() == ip)
    }
    pub fn other(self) -> Node {
        match self {
            Node::A => Node::B,
            Node::B => Node::A,
        }
    }
    /// The node's port on the switch.
    pub fn port(self) -> &'static str {
        match self {
            Node::A => "p-a",
            Node::B => "p-b",
        }
    }
    pub fn api(self) -> SocketAddr {
        SocketAddr::new(self.addr().into(), API_PORT)
    }
    /// The node's address on the dedicated A–B cable ([`Lab::add_ha_link`]).
    pub fn ha_link_addr(self) -> Ipv4Addr {
        match self {
            Node::A => Ipv4Addr::new(192, 168, 77, 1),
            Node::B => Ipv4Addr::new(192, 168, 77, 2),
        }
    }
    pub fn ha_link_api(self) -> SocketAddr {
        SocketAddr::new(self.ha_link_addr().into(), API_PORT)
    }
    fn idx(self) -> usize {
        match self {
            Node::A => 0,
            Node::B => 1,
        }
    }
}

/// What goes into a node's generated config. The default is the full product: an HA pair
/// with fast timers (so the suite stays short), the VIP, DNS and DHCP.
#[derive(Debug, Clone)]
pub struct NodeOpts {
    pub ha: bool,
    pub heartbeat_interval: String,
    pub failover_timeout: String,
    /// `[ha] witness_timeout`; must stay below `failover_timeout`.
    pub witness_timeout: Option<String>,
    pub preempt: bool,
    /// A `[[hooks.vip]]` for 10.0.0.3/24 on eth0.
    pub vip: bool,
    pub dns: bool,
    /// Extra lines inside `[dns]` (e.g. `forwarders = [...]`).
    pub dns_extra: String,
    pub dhcp: bool,
    pub lease_time: String,
    /// Extra lines inside `[server]` (e.g. `drop_privileges = false`).
    pub server_extra: String,
    /// Extra lines inside `[api]` (e.g. `auth_token = "..."`).
    pub api_extra: String,
    /// Extra TOML appended at the end (e.g. a `[[hooks.script]]`).
    pub extra: String,
    /// The peer link runs over the dedicated A–B cable of [`Lab::add_ha_link`] instead of
    /// the switch; the API still answers on every address.
    pub ha_link: bool,
    /// The lease database; default `<node dir>/leases.redb`.
    pub lease_db: Option<PathBuf>,
    /// A shell command run in the daemon's own mount namespace (the one `ip netns exec`
    /// makes, a slave of the host's: nothing mounted there reaches the host) just before the
    /// daemon is exec'd, e.g. mounting a small tmpfs for its database.
    pub pre_exec: Option<String>,
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            ha: true,
            heartbeat_interval: "100ms".into(),
            failover_timeout: "1s".into(),
            witness_timeout: None,
            preempt: true,
            vip: true,
            dns: true,
            dns_extra: String::new(),
            dhcp: true,
            lease_time: "1h".into(),
            server_extra: String::new(),
            api_extra: String::new(),
            extra: String::new(),
            ha_link: false,
            lease_db: None,
            pre_exec: None,
        }
    }
}

impl NodeOpts {
    /// One node on its own: no HA, no peer; it serves at once.
    pub fn standalone() -> Self {
        NodeOpts {
            ha: false,
            ..Default::default()
        }
    }
}

/// The TOML config of `node` in a lab whose node directory is `dir`.
pub fn node_config(node: Node, opts: &NodeOpts, dir: &Path) -> String {
    let mut t = String::new();
    let w = &mut t;
    let line = |w: &mut String, s: &str| {
        w.push_str(s);
        w.push('\n');
    };
    line(w, "[server]");
    line(w, &format!("node_name = \"{}\"", node.name()));
    line(w, "log_level = \"info\"");
    let db = opts
        .lease_db
        .clone()
        .unwrap_or_else(|| dir.join("leases.redb"));
    line(w, &format!("lease_db = \"{}\"", db.display()));
    if !opts.server_extra.is_empty() {
        line(w, &opts.server_extra);
    }
    line(w, "");
    line(w, "[api]");
    line(w, &format!("listen = \"{}\"", node.api()));
    line(w, &format!("read_token = \"{READ_TOKEN}\""));
    if !opts.api_extra.is_empty() {
        line(w, &opts.api_extra);
    }
    line(w, "");
    if opts.ha {
        line(w, "[ha]");
        line(w, "enabled = true");
        let role = if node == Node::A {
            "primary"
        } else {
            "secondary"
        };
        line(w, &format!("role = \"{role}\""));
        if opts.ha_link {
            line(
                w,
                &format!("peer_address = \"{}\"", node.other().ha_link_api()),
            );
            line(w, "listen_address = \"0.0.0.0:8067\"");
        } else {
            line(w, &format!("peer_address = \"{}\"", node.other().api()));
            line(w, &format!("listen_address = \"{}\"", node.api()));
        }
        line(
            w,
            &format!("heartbeat_interval = \"{}\"", opts.heartbeat_interval),
        );
        line(
            w,
            &format!("failover_timeout = \"{}\"", opts.failover_timeout),
        );
        if let Some(wt) = &opts.witness_timeout {
            line(w, &format!("witness_timeout = \"{wt}\""));
        }
        line(w, &format!("shared_secret = \"{SECRET}\""));
        line(w, &format!("preempt = {}", opts.preempt));
        line(w, "");
    }
    if opts.dns {
        line(w, "[dns]");
        line(w, "enabled = true");
        line(w, "listen_udp = \"0.0.0.0:53\"");
        line(w, &format!("domain = \"{DOMAIN}\""));
        line(w, "register_leases = true");
        if !opts.dns_extra.is_empty() {
            line(w, &opts.dns_extra);
        }
        line(w, "");
        line(w, "[[dns.record]]");
        line(w, &format!("name = \"{WHO}\""));
        line(w, "type = \"A\"");
        line(w, &format!("value = \"{}\"", node.who_answer()));
        line(w, "ttl = 1");
        line(w, "");
    }
    if opts.dhcp {
        line(w, "[[subnet]]");
        line(w, "network = \"10.0.0.0/24\"");
        line(w, "interface = \"eth0\"");
        line(w, &format!("dns_servers = [\"{VIP}\"]"));
        line(w, &format!("domain_name = \"{DOMAIN}\""));
        line(w, &format!("lease_time = \"{}\"", opts.lease_time));
        line(w, "[[subnet.pool]]");
        line(w, &format!("range_start = \"{}\"", POOL.0));
        line(w, &format!("range_end = \"{}\"", POOL.1));
        line(w, "");
    }
    if opts.vip {
        line(w, "[[hooks.vip]]");
        line(w, "name = \"dns-vip\"");
        line(w, &format!("address = \"{VIP}/24\""));
        line(w, "interface = \"eth0\"");
        line(w, "");
    }
    if !opts.extra.is_empty() {
        line(w, &opts.extra);
    }
    t
}

struct NodeSlot {
    opts: NodeOpts,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The lab. Fields drop in order: daemons first (in [`Drop`]), then the namespaces.
pub struct Lab {
    pub tag: String,
    pub sw: Netns,
    pub a: Netns,
    pub b: Netns,
    pub c: Netns,
    clients: Vec<Netns>,
    nodes: [Option<NodeSlot>; 2],
    pub dir: tempfile::TempDir,
}

/// The daemon under test.
pub fn daemon_bin() -> &'static str {
    env!("CARGO_BIN_EXE_athena-dhcpd")
}

impl Lab {
    /// A switch, nodes A and B (addressed, no daemon yet) and client C at 10.0.0.10.
    pub fn new(tag: &str) -> Lab {
        let sw = Netns::new(&format!("{tag}-sw"));
        let a = Netns::new(&format!("{tag}-a"));
        let b = Netns::new(&format!("{tag}-b"));
        let c = Netns::new(&format!("{tag}-c"));
        sw.run(&[
            "ip",
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        sw.run(&["ip", "link", "set", "br0", "up"]);
        let dir = tempfile::Builder::new()
            .prefix(&format!("athena-lab-{tag}-"))
            .tempdir()
            .expect("temp dir");
        let lab = Lab {
            tag: tag.to_string(),
            sw,
            a,
            b,
            c,
            clients: Vec::new(),
            nodes: [None, None],
            dir,
        };
        lab.plug(&lab.a, "p-a", Some("10.0.0.1/24"));
        lab.plug(&lab.b, "p-b", Some("10.0.0.2/24"));
        lab.plug(&lab.c, "p-c", Some("10.0.0.10/24"));
        lab
    }

    /// A dedicated cable between A and B (`ha0`, 192.168.77.1/30 and .2/30), outside the
    /// switch, for a peer link that does not share the clients' network
    /// ([`NodeOpts::ha_link`]).
    pub fn add_ha_link(&self) {
        netns::veth(&self.a, "ha0", &self.b, "ha0");
        for node in [Node::A, Node::B] {
            let cidr = format!("{}/30", node.ha_link_addr());
            self.ns(node)
                .run(&["ip", "addr", "add", &cidr, "dev", "ha0"]);
        }
    }

    /// Connects `ns` to the switch: the veth is made inside the switch namespace and its
    /// other end (`eth0`) moved straight into `ns`, as lab.sh does.
    fn plug(&self, ns: &Netns, port: &str, addr: Option<&str>) {
        netns::sh(&[
            "ip",
            "-n",
            &self.sw.name,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        self.sw
            .run(&["ip", "link", "set", port, "master", "br0", "up"]);
        if let Some(a) = addr {
            ns.run(&["ip", "addr", "add", a, "dev", "eth0"]);
        }
        ns.run(&["ip", "link", "set", "eth0", "up"]);
    }

    /// Another client namespace on the switch, with no address (for DHCP clients).
    pub fn add_client(&mut self, name: &str) -> &Netns {
        let ns = Netns::new(&format!("{}-{name}", self.tag));
        self.plug(&ns, &format!("p-{name}"), None);
        self.clients.push(ns);
        self.clients.last().expect("just pushed")
    }

    /// The namespaces of [`Lab::add_client`], in the order they were added.
    pub fn clients(&self) -> &[Netns] {
        &self.clients
    }

    pub fn ns(&self, node: Node) -> &Netns {
        match node {
            Node::A => &self.a,
            Node::B => &self.b,
        }
    }

    fn node_dir(&self, node: Node) -> PathBuf {
        let d = self.dir.path().join(node.name());
        fs::create_dir_all(&d).expect("node dir");
        d
    }

    /// Writes `node`'s config (replacing an earlier one) and returns its path.
    pub fn write_config(&mut self, node: Node, opts: &NodeOpts) -> PathBuf {
        let dir = self.node_dir(node);
        let config = dir.join("athena-dhcpd.toml");
        fs::write(&config, node_config(node, opts, &dir)).expect("write config");
        let log = dir.join("daemon.log");
        let slot = &mut self.nodes[node.idx()];
        match slot {
            Some(s) => {
                s.opts = opts.clone();
                s.config = config.clone();
            }
            None => {
                *slot = Some(NodeSlot {
                    opts: opts.clone(),
                    config: config.clone(),
                    log,
                    child: None,
                })
            }
        }
        config
    }

    /// Starts `node` with `opts` and waits until its API answers.
    pub fn start(&mut self, node: Node, opts: &NodeOpts) {
        self.write_config(node, opts);
        self.restart(node);
    }

    /// Starts `node` again with its last config (a supervisor restarting it).
    pub fn restart(&mut self, node: Node) {
        self.spawn(node);
        self.wait_api(node, Duration::from_secs(20));
    }

    /// Starts the daemon without waiting for anything; stdout and stderr go to the node's
    /// log (appended, so restarts keep the history).
    pub fn spawn(&mut self, node: Node) {
        let ns_name = self.ns(node).name.clone();
        let slot = self.nodes[node.idx()].as_mut().expect("write_config first");
        if let Some(c) = slot.child.as_mut() {
            if c.try_wait().ok().flatten().is_none() {
                panic!("{} is already running (pid {})", node.name(), c.id());
            }
        }
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&slot.log)
            .expect("open log");
        let _ = writeln!(
            log,
            "=== lab: starting {} at {:?}",
            node.name(),
            std::time::SystemTime::now()
        );
        let err = log.try_clone().expect("dup log");
        // `ip netns exec` execs the program in place, so the child's pid is the daemon's
        // (a `pre_exec` shell execs it in turn).
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns_name]);
        if let Some(pre) = &slot.opts.pre_exec {
            cmd.args(["sh", "-c", &format!("{pre} && exec \"$0\" \"$@\"")]);
        }
        let child = cmd
            .args([daemon_bin(), "--log-format", "text", "--config"])
            .arg(&slot.config)
            .env("RUST_BACKTRACE", "1")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn daemon");
        slot.child = Some(child);
    }

    pub fn pid(&self, node: Node) -> Option<i32> {
        self.nodes[node.idx()]
            .as_ref()?
            .child
            .as_ref()
            .map(|c| c.id() as i32)
    }

    pub fn opts(&self, node: Node) -> &NodeOpts {
        &self.nodes[node.idx()]
            .as_ref()
            .expect("node configured")
            .opts
    }

    /// The node's config file (what its daemon was started with).
    pub fn config_path(&self, node: Node) -> &Path {
        &self.nodes[node.idx()]
            .as_ref()
            .expect("node configured")
            .config
    }

    /// Sends a signal to the node's daemon.
    pub fn signal(&self, node: Node, sig: i32) {
        let pid = self
            .pid(node)
            .unwrap_or_else(|| panic!("{} not started", node.name()));
        // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// kill -9, and reap it.
    pub fn kill9(&mut self, node: Node) {
        self.signal(node, libc::SIGKILL);
        self.wait_exit(node, Duration::from_secs(10));
    }

    /// SIGSTOP, and waits until every thread of the daemon is stopped: kill(2) returns before
    /// the group stop is done, and on a busy machine a thread not yet stopped still answered
    /// a request sent right after (the lab test failed 1 run in 8 on "a stopped daemon
    /// answered").
    pub fn sigstop(&self, node: Node) {
        self.signal(node, libc::SIGSTOP);
        let pid = self.pid(node).expect("started");
        let stopped = || -> Option<bool> {
            let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            let mut all = true;
            for t in tasks.flatten() {
                let stat = fs::read_to_string(t.path().join("stat")).ok()?;
                // "pid (comm) S ...": the state follows the last ')'.
                let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
                all &= state == 'T' || state == 't';
            }
            Some(all)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while stopped() != Some(true) {
            assert!(
                Instant::now() < deadline,
                "{} not stopped 5 s after SIGSTOP",
                node.name()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn sigcont(&self, node: Node) {
        self.signal(node, libc::SIGCONT);
    }

    /// SIGTERM without waiting (the caller watches the handoff).
    pub fn sigterm(&self, node: Node) {
        self.signal(node, libc::SIGTERM);
    }

    /// Waits for the daemon to exit and returns its status; panics after `within`.
    pub fn wait_exit(&mut self, node: Node, within: Duration) -> ExitStatus {
        let name = node.name();
        let slot = self.nodes[node.idx()].as_mut().expect("node configured");
        let child = slot
            .child
            .as_mut()
            .unwrap_or_else(|| panic!("{name} not started"));
        let end = Instant::now() + within;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > end {
                panic!("{name} did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self, node: Node) -> bool {
        let Some(slot) = self.nodes[node.idx()].as_mut() else {
            return false;
        };
        match slot.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Host lost: the node's switch port goes down (its processes keep running).
    pub fn port_down(&self, node: Node) {
        self.sw.run(&["ip", "link", "set", node.port(), "down"]);
    }

    pub fn port_up(&self, node: Node) {
        self.sw.run(&["ip", "link", "set", node.port(), "up"]);
    }

    /// Cuts only the A↔B path: the switch drops IPv4 between the nodes' own addresses (an
    /// nftables bridge filter in the switch namespace), so the peer link breaks while both
    /// nodes still reach the clients and B still reaches the VIP on A (the witness works).
    pub fn cut_ab(&self) {
        let rules = "table bridge labcut {\n\
             chain cut {\n\
             type filter hook forward priority 0; policy accept;\n\
             ip saddr 10.0.0.1 ip daddr 10.0.0.2 drop\n\
             ip saddr 10.0.0.2 ip daddr 10.0.0.1 drop\n\
             }\n}\n";
        let path = self.dir.path().join("labcut.nft");
        fs::write(&path, rules).expect("write nft rules");
        self.sw.run(&["nft", "-f", &path.to_string_lossy()]);
    }

    /// Blocks only the peer link: TCP to and from the API/peer port between the nodes' own
    /// addresses, in the switch. The heartbeat datagrams, the clients and the VIP witness
    /// still pass (a firewall rule an admin forgot for the HA port).
    pub fn block_peer_link(&self) {
        let mut rules = String::from(
            "table bridge labhaport {\n chain cut {\n type filter hook forward priority 0; policy accept;\n",
        );
        for (s, d) in [("10.0.0.1", "10.0.0.2"), ("10.0.0.2", "10.0.0.1")] {
            for dir in ["dport", "sport"] {
                rules.push_str(&format!(
                    "ip saddr {s} ip daddr {d} tcp {dir} {API_PORT} drop\n"
                ));
            }
        }
        rules.push_str("}\n}\n");
        let path = self.dir.path().join("labhaport.nft");
        fs::write(&path, rules).expect("write nft rules");
        self.sw.run(&["nft", "-f", &path.to_string_lossy()]);
    }

    pub fn unblock_peer_link(&self) {
        self.sw
            .run(&["nft", "delete", "table", "bridge", "labhaport"]);
    }

    pub fn heal_ab(&self) {
        self.sw.run(&["nft", "delete", "table", "bridge", "labcut"]);
    }

    /// A full L2 partition between the nodes: both node ports become isolated bridge ports,
    /// which cannot talk to each other (not even to the VIP on the other node) but still
    /// reach every non-isolated port (the clients).
    pub fn isolate_ab(&self) {
        for p in ["p-a", "p-b"] {
            netns::sh(&[
                "bridge",
                "-n",
                &self.sw.name,
                "link",
                "set",
                "dev",
                p,
                "isolated",
                "on",
            ]);
        }
    }

    pub fn unisolate_ab(&self) {
        for p in ["p-a", "p-b"] {
            netns::sh(&[
                "bridge",
                "-n",
                &self.sw.name,
                "link",
                "set",
                "dev",
                p,
                "isolated",
                "off",
            ]);
        }
    }

    /// Drops everything `node` sends into the switch (an nftables bridge filter in the switch
    /// namespace) while its link stays up: clients hear only the other node, and `node` sees
    /// no carrier loss (no FAULT). To choose which of two ACTIVE nodes serves a client.
    pub fn mute(&self, node: Node) {
        let port = if node == Node::A { "p-a" } else { "p-b" };
        let rules = format!(
            "table bridge labmute_{n} {{\n\
             chain mute {{\n\
             type filter hook forward priority 0; policy accept;\n\
             iifname \"{port}\" drop\n\
             }}\n}}\n",
            n = &port[2..]
        );
        let path = self.dir.path().join(format!("labmute_{port}.nft"));
        fs::write(&path, rules).expect("write nft rules");
        self.sw.run(&["nft", "-f", &path.to_string_lossy()]);
    }

    pub fn unmute(&self, node: Node) {
        let port = if node == Node::A { "p-a" } else { "p-b" };
        self.sw.run(&[
            "nft",
            "delete",
            "table",
            "bridge",
            &format!("labmute_{}", &port[2..]),
        ]);
    }

    /// The daemon's log so far.
    pub fn log(&self, node: Node) -> String {
        self.nodes[node.idx()]
            .as_ref()
            .and_then(|s| fs::read_to_string(&s.log).ok())
            .unwrap_or_default()
    }

    /// Does the node's kernel hold the VIP on eth0?
    pub fn vip_on(&self, node: Node) -> bool {
        let out = self
            .ns(node)
            .run(&["ip", "-4", "-br", "addr", "show", "dev", "eth0"]);
        out.split_whitespace().any(|w| w == format!("{VIP}/24"))
    }

    /// Adds the VIP by hand (a leftover from a crash, or the hook-script route).
    pub fn add_vip_by_hand(&self, node: Node) {
        self.ns(node)
            .run(&["ip", "addr", "add", &format!("{VIP}/24"), "dev", "eth0"]);
    }

    /// GET on the node's API, from inside the node's own namespace (works while its switch
    /// port is down). `None` when nothing answers within 2 s.
    pub fn api_get(&self, node: Node, path: &str) -> Option<(u16, String)> {
        let auth = format!("Authorization: Bearer {READ_TOKEN}");
        http_request(self.ns(node), node.api(), "GET", path, &[&auth]).ok()
    }

    /// `POST path` on the node's API with extra header lines (e.g. `Authorization: ...`).
    pub fn api_post(&self, node: Node, path: &str, headers: &[&str]) -> Option<(u16, String)> {
        http_request(self.ns(node), node.api(), "POST", path, headers).ok()
    }

    /// `/api/v1/ha/status` as JSON.
    pub fn ha_status(&self, node: Node) -> Option<serde_json::Value> {
        let (code, body) = self.api_get(node, "/api/v1/ha/status")?;
        if code != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// The node's HA state (`ACTIVE`, `STANDBY`, ...) or `None` when its API is silent.
    pub fn ha_state(&self, node: Node) -> Option<String> {
        Some(self.ha_status(node)?.get("state")?.as_str()?.to_string())
    }

    /// Waits until the node's API answers at all.
    pub fn wait_api(&mut self, node: Node, within: Duration) {
        let end = Instant::now() + within;
        while self.api_get(node, "/api/v1/health").is_none() {
            if !self.is_running(node) {
                panic!(
                    "{} exited at start-up; log:\n{}",
                    node.name(),
                    self.log(node)
                );
            }
            if Instant::now() > end {
                panic!(
                    "{}'s API did not answer within {within:?}; log:\n{}",
                    node.name(),
                    self.log(node)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `cond` every 10 ms until it holds; panics with `what` and both logs after `within`.
    pub fn wait_for(
        &self,
        what: &str,
        within: Duration,
        mut cond: impl FnMut(&Lab) -> bool,
    ) -> Duration {
        let t0 = Instant::now();
        loop {
            if cond(self) {
                return t0.elapsed();
            }
            if t0.elapsed() > within {
                panic!(
                    "timed out after {within:?} waiting for: {what}\n{}",
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the node reports `state`.
    pub fn wait_state(&self, node: Node, state: &str, within: Duration) -> Duration {
        self.wait_for(&format!("{} {state}", node.name()), within, |l| {
            l.ha_state(node).as_deref() == Some(state)
        })
    }

    /// `dig @server name` from the client; the A answers (empty when none).
    pub fn dig(&self, server: Ipv4Addr, name: &str) -> Vec<Ipv4Addr> {
        let out = self.c.try_run(&[
            "dig",
            "+short",
            "+time=1",
            "+tries=1",
            &format!("@{server}"),
            name,
            "A",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Which node answers `WHO` through the VIP right now (one `dig`).
    pub fn who_answers(&self) -> Option<Node> {
        self.dig(VIP, WHO)
            .first()
            .copied()
            .and_then(Node::from_who_answer)
    }

    /// Starts the DNS prober in the client namespace (see [`Prober`]): a query every
    /// [`PROBE_INTERVAL`], answered only if the reply comes within [`PROBE_TIMEOUT`].
    pub fn prober(&self) -> Prober {
        Prober::start(
            &self.c,
            SocketAddr::new(VIP.into(), 53),
            WHO,
            PROBE_INTERVAL,
            PROBE_TIMEOUT,
        )
    }

    /// Both logs and the lab's state, for failure messages.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for n in [Node::A, Node::B] {
            if self.nodes[n.idx()].is_none() {
                continue;
            }
            let log = self.log(n);
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            s.push_str(&format!(
                "\n----- {} log (last {} lines) -----\n",
                n.name(),
                tail.len()
            ));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
            for path in ["/api/v1/ha/status", "/api/v1/health"] {
                let got = self
                    .api_get(n, path)
                    .map_or("no answer".to_string(), |(c, b)| format!("{c} {b}"));
                s.push_str(&format!("----- {} {path}: {got}\n", n.name()));
            }
            let addrs = self.ns(n).try_run(&["ip", "-4", "-br", "addr"]);
            s.push_str(&format!(
                "----- {} addresses: {}",
                n.name(),
                String::from_utf8_lossy(&addrs.stdout)
            ));
        }
        s
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("lab {} failed; state:{}", self.tag, self.dump());
        }
        for slot in self.nodes.iter_mut().flatten() {
            if let Some(c) = slot.child.as_mut() {
                // SIGCONT first: a stopped process cannot be reaped promptly otherwise.
                // SAFETY: signals to a child we spawned.
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGCONT);
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Namespaces drop next (field order), killing anything else still inside.
    }
}

/// Plain HTTP/1.1 GET over a TCP socket opened inside `ns`.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(ns, addr, "GET", path, &[])
}

/// One HTTP/1.1 request without a body from inside `ns`; the status code and the body.
pub fn http_request(
    ns: &Netns,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
) -> std::io::Result<(u16, String)> {
    let sock = ns.in_netns(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?;
    let mut s = sock;
    // A POST that waits for a handoff takes up to the handoff bound.
    s.set_read_timeout(Some(Duration::from_secs(6)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let length = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}{length}Connection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    Ok((code, body.to_string()))
}

fn bad(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string())
}

// ---------------------------------------------------------------------------------------------
// DNS prober

/// How often the lab's prober asks the VIP (the benchmark's client does the same).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// A reply later than this counts as a failed query. Short on purpose: a stub resolver
/// retries after about a second, but a failover that stalls answers for 900 ms is an outage
/// the tests must see, so "0 failed queries" means no answer came later than 100 ms.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(100);

/// One query: when it was sent, and the A answer if one came back within the timeout.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub sent: Instant,
    pub answer: Option<Ipv4Addr>,
}

impl Probe {
    pub fn node(&self) -> Option<Node> {
        self.answer.and_then(Node::from_who_answer)
    }
}

/// A query to the VIP every `interval` from a *connected* UDP socket in the client
/// namespace: a reply from any other source address is dropped by the kernel, as real stub
/// resolvers do. Sending and receiving are separate threads, so a slow answer does not slow
/// the probing; a query counts as answered when its reply arrives within `timeout`.
pub struct Prober {
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<Vec<Instant>>>,
    receiver: Option<JoinHandle<()>>,
    recv_stop: Arc<AtomicBool>,
    replies: Replies,
    timeout: Duration,
}

/// Per query id: when its first reply came and the A answer in it.
type Replies = Arc<Mutex<Vec<Option<(Instant, Ipv4Addr)>>>>;

/// A DNS query for `name`/A with `id`, recursion desired.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The id and first A answer of a NOERROR response, parsed with hickory-proto.
pub fn dns_answer(buf: &[u8]) -> Option<(u16, Ipv4Addr)> {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RData;
    let m = Message::from_vec(buf).ok()?;
    if m.response_code() != ResponseCode::NoError {
        return None;
    }
    let ip = m.answers().iter().find_map(|r| match r.data() {
        RData::A(a) => Some(a.0),
        _ => None,
    })?;
    Some((m.id(), ip))
}

impl Prober {
    pub fn start(
        ns: &Netns,
        server: SocketAddr,
        name: &str,
        interval: Duration,
        timeout: Duration,
    ) -> Prober {
        let sock = ns
            .in_netns(move || -> std::io::Result<UdpSocket> {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(server)?;
                Ok(s)
            })
            .expect("prober socket");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let rsock = sock.try_clone().expect("clone socket");
        let stop = Arc::new(AtomicBool::new(false));
        let replies: Replies = Arc::default();
        let recv_stop = Arc::new(AtomicBool::new(false));
        let (st, rs) = (stop.clone(), recv_stop.clone());
        let name = name.to_string();
        let sender = std::thread::spawn(move || {
            let mut sent = Vec::new();
            let mut next = Instant::now();
            while !st.load(Ordering::Relaxed) {
                let id = sent.len() as u16;
                sent.push(Instant::now());
                // ECONNREFUSED from an earlier ICMP error surfaces on send too: the query
                // still counts as sent (and failed).
                let _ = sock.send(&dns_query(id, &name));
                next += interval;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            sent
        });
        let reps = replies.clone();
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !rs.load(Ordering::Relaxed) {
                match rsock.recv(&mut buf) {
                    Ok(n) => {
                        let at = Instant::now();
                        if let Some((id, ip)) = dns_answer(&buf[..n]) {
                            let mut r = reps.lock().expect("replies");
                            let i = id as usize;
                            if r.len() <= i {
                                r.resize(i + 1, None);
                            }
                            r[i].get_or_insert((at, ip));
                        }
                    }
                    Err(_) => continue, // timeout or ICMP error: nothing to record
                }
            }
        });
        Prober {
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
            recv_stop,
            replies,
            timeout,
        }
    }

    /// Stops sending, waits `timeout` for the last replies, and returns the log.
    pub fn stop(mut self) -> ProbeLog {
        self.finish()
    }

    fn finish(&mut self) -> ProbeLog {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self
            .sender
            .take()
            .map(|h| h.join().expect("sender"))
            .unwrap_or_default();
        std::thread::sleep(self.timeout.min(Duration::from_secs(2)));
        self.recv_stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.receiver.take() {
            let _ = h.join();
        }
        let replies = self.replies.lock().expect("replies");
        let probes = sent
            .iter()
            .enumerate()
            .map(|(i, &t)| Probe {
                sent: t,
                answer: replies
                    .get(i % 65536)
                    .copied()
                    .flatten()
                    .filter(|(at, _)| at.duration_since(t) <= self.timeout)
                    .map(|(_, ip)| ip),
            })
            .collect();
        ProbeLog { probes }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        if self.sender.is_some() {
            let _ = self.finish();
        }
    }
}

/// What the prober saw.
#[derive(Debug, Clone)]
pub struct ProbeLog {
    pub probes: Vec<Probe>,
}

impl ProbeLog {
    pub fn after(&self, t: Instant) -> impl Iterator<Item = &Probe> {
        self.probes.iter().filter(move |p| p.sent >= t)
    }

    pub fn failed_after(&self, t: Instant) -> usize {
        self.after(t).filter(|p| p.answer.is_none()).count()
    }

    pub fn failed(&self) -> usize {
        self.probes.iter().filter(|p| p.answer.is_none()).count()
    }

    /// First failed query at or after `t` → first answered query after the last failure.
    /// `None` when nothing failed; the end of the log when it never recovered.
    pub fn outage_after(&self, t: Instant) -> Option<Duration> {
        let ps: Vec<&Probe> = self.after(t).collect();
        let first = ps.iter().position(|p| p.answer.is_none())?;
        let last = ps.iter().rposition(|p| p.answer.is_none())?;
        let end = ps
            .get(last + 1)
            .map(|p| p.sent)
            .unwrap_or_else(|| ps[last].sent);
        Some(end.duration_since(ps[first].sent))
    }

    /// When `node` first answered at or after `t`.
    pub fn first_answer_from(&self, node: Node, t: Instant) -> Option<Instant> {
        self.after(t)
            .find(|p| p.node() == Some(node))
            .map(|p| p.sent)
    }

    /// Who answered the last query.
    pub fn last_node(&self) -> Option<Node> {
        self.probes.last().and_then(|p| p.node())
    }

    /// Runs of the same outcome, e.g. `node-a×120 FAIL×3 node-b×40`, for messages.
    pub fn summary(&self) -> String {
        let label = |p: &Probe| match (p.answer, p.node()) {
            (None, _) => "FAIL".to_string(),
            (Some(_), Some(n)) => n.name().to_string(),
            (Some(ip), None) => ip.to_string(),
        };
        let mut out: Vec<(String, usize)> = Vec::new();
        for p in &self.probes {
            let l = label(p);
            match out.last_mut() {
                Some((last, n)) if *last == l => *n += 1,
                _ => out.push((l, 1)),
            }
        }
        out.iter()
            .map(|(l, n)| format!("{l}×{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

// ---------------------------------------------------------------------------------------------
// DHCP clients

/// What a DHCP client was given, from its script's environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DhcpLease {
    pub ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// The client script's reason (`bound`, `renew`, `BOUND`, `RENEW`, ...).
    pub reason: String,
}

/// A busybox `udhcpc` running in `ns`. Its script configures eth0 and appends one line per
/// event to a file, so the test sees every bound/renew with the server id and DNS servers.
pub struct Udhcpc {
    child: Child,
    events: PathBuf,
}

impl Udhcpc {
    /// Starts `udhcpc` (stays running, so SIGUSR1 makes it renew by unicast to the server id).
    pub fn start(ns: &Netns, dir: &Path) -> Udhcpc {
        let script = dir.join(format!("udhcpc-{}.sh", ns.name));
        let events = dir.join(format!("udhcpc-{}.events", ns.name));
        let child = spawn_udhcpc(ns, &script, &events);
        Udhcpc { child, events }
    }

    /// Every lease event so far.
    pub fn events(&self) -> Vec<DhcpLease> {
        let text = fs::read_to_string(&self.events).unwrap_or_default();
        text.lines().map(parse_lease_line).collect()
    }

    /// Asks for a renewal (unicast REQUEST to the server id).
    pub fn renew(&self) {
        // SAFETY: signal to our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGUSR1);
        }
    }

    /// Waits until an event with `reason` beyond the first `skip` events appears.
    pub fn wait_event(&self, reason: &str, skip: usize, within: Duration) -> Option<DhcpLease> {
        let end = Instant::now() + within;
        loop {
            if let Some(e) = self
                .events()
                .into_iter()
                .skip(skip)
                .find(|e| e.reason == reason)
            {
                return Some(e);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Udhcpc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs ISC `dhclient -1` in `ns` once, sending `hostname`, and returns what it was given
/// (`None` if no lease).
pub fn dhclient_once(ns: &Netns, dir: &Path, hostname: &str) -> Option<DhcpLease> {
    let base = dir.join(format!("dhclient-{}", ns.name));
    let script = base.with_extension("sh");
    let events = base.with_extension("events");
    let conf = base.with_extension("conf");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             case \"$reason\" in\n\
             BOUND|RENEW|REBIND|REBOOT) ip addr replace \"$new_ip_address/$new_subnet_mask\" dev \"$interface\" ;;\n\
             esac\n\
             echo \"reason=$reason ip=$new_ip_address serverid=$new_dhcp_server_identifier dns=$new_domain_name_servers\" >> {}\n",
            events.display()
        ),
    )
    .expect("write dhclient script");
    set_exec(&script);
    fs::write(
        &conf,
        format!(
            "timeout 20;\nretry 1;\nsend host-name \"{hostname}\";\n\
             request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, host-name;\n"
        ),
    )
    .expect("write dhclient conf");
    let st = ns
        .cmd("dhclient")
        .arg("-1")
        .arg("-cf")
        .arg(&conf)
        .arg("-sf")
        .arg(&script)
        .arg("-lf")
        .arg(base.with_extension("leases"))
        .arg("-pf")
        .arg(base.with_extension("pid"))
        .arg("eth0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn dhclient");
    // dhclient -1 daemonizes after binding; the lab's namespace teardown kills it.
    if !st.success() {
        return None;
    }
    let text = fs::read_to_string(&events).unwrap_or_default();
    text.lines()
        .map(parse_lease_line)
        .rfind(|l| l.reason == "BOUND")
}

fn parse_lease_line(line: &str) -> DhcpLease {
    let mut l = DhcpLease::default();
    for kv in line.split(' ') {
        let Some((k, v)) = kv.split_once('=') else {
            // A space-separated dns list continues the previous key.
            if let Ok(ip) = kv.parse() {
                l.dns.push(ip);
            }
            continue;
        };
        match k {
            "reason" => l.reason = v.to_string(),
            "ip" => l.ip = v.parse().ok(),
            "serverid" => l.server_id = v.parse().ok(),
            "dns" => l.dns.extend(v.parse::<Ipv4Addr>().ok()),
            _ => {}
        }
    }
    l
}

/// Starts a long-running `udhcpc` on `ns`'s eth0 (`script` is written first). The script
/// configures each lease as a real client's would and appends one line per event to `events`:
/// `t=<unix time> reason=<reason> ip=... serverid=... dns=...`; each reader takes the keys it
/// needs (the chaos suite places events on its fault timeline by `t`).
pub fn spawn_udhcpc(ns: &Netns, script: &Path, events: &Path) -> Child {
    fs::write(
        script,
        format!(
            "#!/bin/sh\n\
             case \"$1\" in\n\
             bound|renew) ip addr replace \"$ip/${{mask:-24}}\" dev \"$interface\" ;;\n\
             deconfig) ip addr flush dev \"$interface\" ;;\n\
             esac\n\
             echo \"t=$(date +%s.%N) reason=$1 ip=$ip serverid=$serverid dns=$dns\" >> {}\n",
            events.display()
        ),
    )
    .expect("write udhcpc script");
    set_exec(script);
    ns.cmd("udhcpc")
        .args(["-f", "-i", "eth0", "-t", "20", "-T", "1", "-A", "1", "-s"])
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn udhcpc")
}

fn set_exec(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).expect("chmod");
}
