//! The chaos suite's parts (`tests/chaos.rs` drives them): a seeded schedule of faults, the
//! records the invariants are checked against, and the checks themselves.
//!
//! - [`Schedule`] turns a seed into an endless, reproducible sequence of [`Fault`]s. It draws
//!   everything up front from the seed (kind, target role, hold times, gaps), never from what
//!   happened at run time, so one seed always yields the same schedule; the run's timings
//!   still vary with the machine's load.
//! - [`VipWatch`] follows each node's addresses with `ip monitor` (event driven: no polling,
//!   so a short double hold is not missed between two samples).
//! - [`DhcpWatch`] broadcasts a DISCOVER every [`DHCP_PROBE_INTERVAL`] and records which
//!   node(s) offered, told apart by the Ethernet source MAC (both nodes send from the VIP
//!   when both hold it, so the IP source cannot tell them apart).
//! - [`Client`] is `udhcpc` whose script stamps every event with the wall clock, so a NAK
//!   or a deconfig can be placed on the fault timeline.
//! - [`double_holds`] and [`double_runs`] are the pure checks of "never two nodes serving".

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::dhcp_lab;
use super::lab::{Node, VIP};
use super::netns::Netns;

// ---------------------------------------------------------------------------------------------
// The schedule

/// What a fault does to the pair. The wire name (`name`) is what reports and the bench use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// kill -9, down for `hold`, restarted.
    Kill9,
    /// SIGSTOP for `hold`, then SIGCONT.
    Hang,
    /// TCP between the nodes dropped (the peer link) for `hold`; clients reach both.
    LinkBlock,
    /// The node's switch port down for `hold`.
    PortDown,
    /// SIGTERM (a planned handoff), restarted after `hold`.
    SigTerm,
    /// `POST /api/v1/ha/failover` on the ACTIVE node.
    ApiHandoff,
    /// Issue #18's split brain: link blocked, the ACTIVE node hangs for `hold` (past
    /// failover_timeout), resumes, and the link stays blocked for `tail`.
    BlockAndHang,
    /// The same with every IPv4 packet between the nodes' own addresses dropped (any second
    /// heartbeat path too), so only self-fencing and the VIP conflict can end it.
    CutAndHang,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Kill9,
        Kind::Hang,
        Kind::LinkBlock,
        Kind::PortDown,
        Kind::SigTerm,
        Kind::ApiHandoff,
        Kind::BlockAndHang,
        Kind::CutAndHang,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill9 => "kill9",
            Kind::Hang => "hang",
            Kind::LinkBlock => "link-block",
            Kind::PortDown => "port-down",
            Kind::SigTerm => "sigterm",
            Kind::ApiHandoff => "api-handoff",
            Kind::BlockAndHang => "block+hang",
            Kind::CutAndHang => "cut+hang",
        }
    }
}

/// Which node a fault hits, resolved when it is injected (who is ACTIVE depends on the run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Active,
    Standby,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub kind: Kind,
    pub target: Target,
    pub hold: Duration,
    /// [`Kind::BlockAndHang`] only: how long the link stays blocked after the resume.
    pub tail: Duration,
    /// Quiet time after the pair settled, before the next fault.
    pub gap: Duration,
}

/// The seeded fault generator. `split` 1 adds [`Kind::BlockAndHang`] and flaps of the ACTIVE
/// node's port shorter than failover_timeout, 2 also [`Kind::CutAndHang`]: their invariants
/// break on a build without issue #18's fixes (the datagram path, self-fencing, a node back
/// from FAULT doubting its view of the peer).
pub struct Schedule {
    rng: StdRng,
    split: u8,
    failover_timeout: Duration,
}

impl Schedule {
    pub fn new(seed: u64, split: u8, failover_timeout: Duration) -> Schedule {
        Schedule {
            rng: StdRng::seed_from_u64(seed),
            split,
            failover_timeout,
        }
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(lo..=hi))
    }
}

impl Iterator for Schedule {
    type Item = Fault;

    fn next(&mut self) -> Option<Fault> {
        // Weights: hangs and kills are the common real faults; the rarer planned handoffs
        // still come up a few times in a two-minute run.
        let weighted = [
            (Kind::Kill9, 3),
            (Kind::Hang, 3),
            (Kind::LinkBlock, 2),
            (Kind::PortDown, 2),
            (Kind::SigTerm, 2),
            (Kind::ApiHandoff, 2),
            (Kind::BlockAndHang, if self.split >= 1 { 3 } else { 0 }),
            // Last, so that a schedule without it is the same as before it existed.
            (Kind::CutAndHang, if self.split >= 2 { 2 } else { 0 }),
        ];
        let total: u32 = weighted.iter().map(|(_, w)| w).sum();
        let mut pick = self.rng.random_range(0..total);
        let kind = weighted
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    return true;
                }
                pick -= w;
                false
            })
            .map(|(k, _)| *k)
            .expect("pick < total");
        let target = if self.rng.random_bool(0.7) {
            Target::Active
        } else {
            Target::Standby
        };
        let ft = self.failover_timeout.as_millis() as u64;
        let (target, hold, tail) = match kind {
            // From well under failover_timeout (no takeover) to three times it.
            Kind::Kill9 | Kind::Hang => (target, self.ms(200, 3 * ft), 0),
            // A flap of the ACTIVE node's port shorter than failover_timeout ended in two
            // ACTIVE nodes before issue #18's fix (it came back and retook on its pre-flap
            // view of the peer; the peer, hearing nothing from it, took over too): a
            // split-brain fault, so without `split` the ACTIVE node's port stays down longer.
            Kind::PortDown => {
                let short_ok = self.split >= 1 || target == Target::Standby;
                let lo = if short_ok { 200 } else { ft + 500 };
                (target, self.ms(lo, 3 * ft), 0)
            }
            Kind::LinkBlock => (target, self.ms(ft, 5 * ft), 0),
            Kind::SigTerm => (target, self.ms(200, 2 * ft), 0),
            Kind::ApiHandoff => (Target::Active, Duration::ZERO, 0),
            Kind::BlockAndHang | Kind::CutAndHang => (
                Target::Active,
                self.ms(ft + 300, 3 * ft + 500),
                self.rng.random_range(ft..=4 * ft),
            ),
        };
        Some(Fault {
            kind,
            target,
            hold,
            tail: Duration::from_millis(tail),
            gap: self.ms(200, 3000),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The VIP as each node's kernel holds it

/// `ip -o monitor address` in each node's namespace; every change of the VIP with the time
/// it was read. Started before the daemons, so the record begins with "not held".
pub struct VipWatch {
    children: Vec<Child>,
    readers: Vec<JoinHandle<()>>,
    changes: Arc<Mutex<Vec<(Instant, Node, bool)>>>,
}

impl VipWatch {
    pub fn start(nodes: [(&Netns, Node); 2]) -> VipWatch {
        let changes: Arc<Mutex<Vec<(Instant, Node, bool)>>> = Arc::default();
        let mut children = Vec::new();
        let mut readers = Vec::new();
        let vip = format!(" {VIP}/");
        for (ns, node) in nodes {
            let mut child = ns
                .cmd("ip")
                .args(["-o", "monitor", "address"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn ip monitor");
            let out = child.stdout.take().expect("piped stdout");
            let (changes, vip) = (changes.clone(), vip.clone());
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if line.contains(&vip) {
                        let held = !line.starts_with("Deleted");
                        let mut c = changes.lock().expect("vip changes");
                        c.push((Instant::now(), node, held));
                    }
                }
            }));
            children.push(child);
        }
        VipWatch {
            children,
            readers,
            changes,
        }
    }

    pub fn changes(&self) -> Vec<(Instant, Node, bool)> {
        self.changes.lock().expect("vip changes").clone()
    }
}

impl Drop for VipWatch {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Who answers a DISCOVER

pub const DHCP_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// The prober's own client id: a MAC no real client uses.
const PROBE_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 1];

/// One DISCOVER and the nodes whose OFFER came back before the next one was sent.
#[derive(Debug, Clone, Copy)]
pub struct DhcpSample {
    pub sent: Instant,
    pub by_a: bool,
    pub by_b: bool,
}

/// A DISCOVER (broadcast flag set, so OFFERs come broadcast) every
/// [`DHCP_PROBE_INTERVAL`] from `ns`, which needs an address and a route for the limited
/// broadcast; OFFERs are read on an `AF_PACKET` socket to see their source MAC.
pub struct DhcpWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<DhcpSample>>>,
}

impl DhcpWatch {
    pub fn start(ns: &Netns, macs: [(Node, [u8; 6]); 2]) -> DhcpWatch {
        let (udp, raw) = ns.in_netns(|| {
            let udp = UdpSocket::bind("0.0.0.0:68").expect("bind :68");
            udp.set_broadcast(true).expect("SO_BROADCAST");
            udp.set_nonblocking(true).expect("nonblocking");
            // SAFETY: plain socket(2); the fd is owned at once.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW,
                    (libc::ETH_P_IP as u16).to_be() as i32,
                )
            };
            assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            // SAFETY: fd is a fresh socket nothing else owns.
            let raw = unsafe { OwnedFd::from_raw_fd(fd) };
            (udp, raw)
        });
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: setsockopt with a timeval of the right size on our own socket.
        unsafe {
            libc::setsockopt(
                raw.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut buf = [0u8; 2048];
            let mut xid: u32 = 0x5ca1_0000;
            while !st.load(Ordering::Relaxed) {
                xid += 1;
                let mut d = dhcp_lab::request(1, PROBE_MAC, xid, Ipv4Addr::UNSPECIFIED, &[]);
                d[10] = 0x80; // broadcast flag
                let sent = Instant::now();
                let _ = udp.send_to(&d, "255.255.255.255:67");
                let mut s = DhcpSample {
                    sent,
                    by_a: false,
                    by_b: false,
                };
                while sent.elapsed() < DHCP_PROBE_INTERVAL {
                    let _ = udp.recv(&mut buf); // drain: the OFFERs are read below
                                                // SAFETY: recv into a buffer we own, with its length.
                    let n = unsafe {
                        libc::recv(
                            raw.as_raw_fd(),
                            buf.as_mut_ptr() as *mut libc::c_void,
                            buf.len(),
                            0,
                        )
                    };
                    if n <= 0 {
                        continue;
                    }
                    if let Some(src) = offer_source(&buf[..n as usize], xid) {
                        match macs.iter().find(|(_, m)| *m == src).map(|(n, _)| *n) {
                            Some(Node::A) => s.by_a = true,
                            Some(Node::B) => s.by_b = true,
                            None => {}
                        }
                    }
                }
                samples.push(s);
            }
            samples
        });
        DhcpWatch {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> Vec<DhcpSample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("dhcp watch"))
            .unwrap_or_default()
    }
}

impl Drop for DhcpWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The Ethernet source of an OFFER (BOOTREPLY, option 53 = 2) with `xid`, from a raw frame.
fn offer_source(frame: &[u8], xid: u32) -> Option<[u8; 6]> {
    if frame.len() < 14 + 20 + 8 + 240 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 17 || ip.len() < ihl + 8 + 240 {
        return None;
    }
    let udp = &ip[ihl..];
    let bootp = &udp[8..];
    if u16::from_be_bytes([udp[2], udp[3]]) != 68 || bootp[0] != 2 {
        return None;
    }
    if u32::from_be_bytes([bootp[4], bootp[5], bootp[6], bootp[7]]) != xid {
        return None;
    }
    let mut opts = &bootp[240..];
    while opts.len() >= 2 && opts[0] != 255 {
        if opts[0] == 0 {
            opts = &opts[1..];
            continue;
        }
        let len = usize::from(opts[1]);
        if opts[0] == 53 && len == 1 && opts.len() > 2 && opts[2] == 2 {
            return frame[6..12].try_into().ok();
        }
        opts = opts.get(2 + len..)?;
    }
    None
}

/// The MAC of `eth0` in `ns`.
pub fn mac_of(ns: &Netns) -> [u8; 6] {
    let text = ns.run(&["cat", "/sys/class/net/eth0/address"]);
    let mut mac = [0u8; 6];
    for (i, part) in text.trim().split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).expect("hex MAC");
    }
    mac
}

// ---------------------------------------------------------------------------------------------
// DHCP clients

/// One line of a client's script log.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientEvent {
    pub at: SystemTime,
    pub reason: String,
    pub ip: Option<Ipv4Addr>,
}

/// busybox `udhcpc` in its own namespace; its script configures eth0 and appends
/// `t=<unix time> reason=<event> ip=<address>` per event.
pub struct Client {
    pub ns_name: String,
    child: Child,
    events: PathBuf,
}

impl Client {
    pub fn start(ns: &Netns, dir: &Path) -> Client {
        let script = dir.join(format!("chaos-{}.sh", ns.name));
        let events = dir.join(format!("chaos-{}.events", ns.name));
        let child = super::lab::spawn_udhcpc(ns, &script, &events);
        Client {
            ns_name: ns.name.clone(),
            child,
            events,
        }
    }

    pub fn events(&self) -> Vec<ClientEvent> {
        self.record()
            .lines()
            .filter_map(parse_client_line)
            .collect()
    }

    /// The script's log as written (`t=<unix time> reason=... ip=...` per line).
    pub fn record(&self) -> String {
        fs::read_to_string(&self.events).unwrap_or_default()
    }

    /// The address of the first `bound`, if any.
    pub fn bound(&self) -> Option<Ipv4Addr> {
        self.events()
            .iter()
            .find(|e| e.reason == "bound")
            .and_then(|e| e.ip)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_client_line(line: &str) -> Option<ClientEvent> {
    let mut at = None;
    let mut reason = None;
    let mut ip = None;
    for kv in line.split(' ') {
        match kv.split_once('=') {
            Some(("t", v)) => {
                let secs: f64 = v.parse().ok()?;
                at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs));
            }
            Some(("reason", v)) => reason = Some(v.to_string()),
            Some(("ip", v)) => ip = v.parse().ok(),
            _ => {}
        }
    }
    Some(ClientEvent {
        at: at?,
        reason: reason?,
        ip,
    })
}

/// What breaks "a client never loses or changes its address" in one client's record: after
/// its first `bound`, any `nak` or `deconfig`, or a `bound`/`renew` with another address.
/// Returns (when, what).
pub fn client_breaks(events: &[ClientEvent]) -> Vec<(SystemTime, String)> {
    let Some(first) = events.iter().position(|e| e.reason == "bound") else {
        return Vec::new();
    };
    let ip = events[first].ip;
    events[first + 1..]
        .iter()
        .filter_map(|e| match e.reason.as_str() {
            "nak" | "deconfig" => Some((e.at, format!("{} (had {ip:?})", e.reason))),
            "bound" | "renew" if e.ip != ip => Some((
                e.at,
                format!("{} changed the address {ip:?} -> {:?}", e.reason, e.ip),
            )),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// "Never two nodes serving" checks

/// Intervals (start, length) during which both nodes held the VIP while both were
/// `eligible` (running, not stopped, port up: a dead or frozen process cannot drop the
/// address its kernel still holds, and an unplugged one is heard by nobody).
/// `changes` and `eligible` are (time, node, value) in time order; both start false.
pub fn double_holds(
    changes: &[(Instant, Node, bool)],
    eligible: &[(Instant, Node, bool)],
    end: Instant,
) -> Vec<(Instant, Duration)> {
    let mut points: Vec<(Instant, Node, bool, bool)> = changes
        .iter()
        .map(|&(t, n, v)| (t, n, true, v))
        .chain(eligible.iter().map(|&(t, n, v)| (t, n, false, v)))
        .collect();
    points.sort_by_key(|p| p.0);
    let (mut held, mut up) = ([false; 2], [false; 2]);
    let idx = |n: Node| if n == Node::A { 0 } else { 1 };
    let mut since: Option<Instant> = None;
    let mut out = Vec::new();
    for (t, n, is_vip, v) in points {
        if is_vip {
            held[idx(n)] = v;
        } else {
            up[idx(n)] = v;
        }
        let both = held[0] && held[1] && up[0] && up[1];
        match (since, both) {
            (None, true) => since = Some(t),
            (Some(s), false) => {
                out.push((s, t - s));
                since = None;
            }
            _ => {}
        }
    }
    if let Some(s) = since {
        out.push((s, end.saturating_duration_since(s)));
    }
    out
}

/// Runs of DISCOVERs answered by both nodes: (first, last - first). Two such samples less
/// than `join` apart belong to one run (a single lost OFFER on a busy machine does not
/// split it). The length under-estimates the true double service, never over-estimates it.
pub fn double_runs(samples: &[DhcpSample], join: Duration) -> Vec<(Instant, Duration)> {
    let mut out: Vec<(Instant, Duration)> = Vec::new();
    let mut cur: Option<(Instant, Instant)> = None;
    for s in samples.iter().filter(|s| s.by_a && s.by_b) {
        cur = match cur {
            Some((first, last)) if s.sent - last <= join => Some((first, s.sent)),
            Some((first, last)) => {
                out.push((first, last - first));
                Some((s.sent, s.sent))
            }
            None => Some((s.sent, s.sent)),
        };
    }
    if let Some((first, last)) = cur {
        out.push((first, last - first));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Per-kind figures

#[derive(Debug, Default, Clone, Copy)]
pub struct KindStats {
    pub injected: usize,
    pub dns_failed: usize,
    pub violations: usize,
}

/// Which fault an instant belongs to: the last one injected at or before it (`None` before
/// the first). `injected` is in time order.
pub fn attribute(injected: &[(Instant, Kind)], t: Instant) -> Option<Kind> {
    injected
        .iter()
        .rev()
        .find(|(at, _)| *at <= t)
        .map(|(_, k)| *k)
}

/// The table the test prints and `benches/chaos.sh` sums: one line per kind,
/// `kind injected dns_failed violations`.
pub fn stats_table(stats: &BTreeMap<Kind, KindStats>) -> String {
    let mut s = String::from("kind injected dns_failed violations\n");
    for k in Kind::ALL {
        let v = stats.get(&k).copied().unwrap_or_default();
        s.push_str(&format!(
            "{} {} {} {}\n",
            k.name(),
            v.injected,
            v.dns_failed,
            v.violations
        ));
    }
    s
}
