//! The chaos suite (issue #18): the HA pair of `common::lab` with DHCP, DNS and the VIP,
//! real `udhcpc` clients (each in its own namespace, 20 s leases, so they renew about every
//! 10 s through the run), a DNS prober on the VIP and a DISCOVER prober, while a seeded random
//! schedule of faults hits the pair one after the other: kill -9 and restart, SIGSTOP/SIGCONT,
//! the peer link (TCP between the nodes) blocked with nft, a node's switch port down, SIGTERM
//! handoff and restart, `POST /api/v1/ha/failover`. Each fault picks the ACTIVE node (70 %)
//! or the standby, is held for a seeded time from well under to a few failover timeouts, is
//! undone, and the pair is given up to 30 s to settle before a seeded gap and the next fault.
//!
//! Invariants, from the clients' own script logs, both kernels' addresses, the OFFERs on the
//! wire and both nodes' APIs:
//! 1. no client loses or changes its address (no `nak`, no `deconfig`, no other address);
//! 2. no address is held by two clients;
//! 3. never two nodes hold the VIP (while both run, unfrozen, with their port up) or answer
//!    one DISCOVER for longer than failover_timeout + one heartbeat;
//! 4. after every fault, and when the faults stop, one ACTIVE node and one STANDBY, linked;
//!    at the end both hold the same active leases, and each client's address is among them;
//! 5. no panic in either daemon's output, no daemon exit that the schedule did not cause.
//!
//! Environment:
//! - `ATHENA_CHAOS_SEED=S` replays schedule S (the same faults, targets, holds and gaps; the
//!   timings still vary with the machine). Default: a fixed seed, so CI is repeatable.
//!   `ATHENA_CHAOS_SEED=random` draws one; the seed is printed first either way.
//! - `ATHENA_CHAOS_SECS` (default 75): how long faults are injected. CI's run is ~2 minutes.
//! - `ATHENA_CHAOS_SPLIT` picks issue #18's split-brain faults: `1` adds `block+hang` (the
//!   peer link's TCP blocked, the ACTIVE node hangs past failover_timeout and resumes with
//!   the link still blocked) and flaps of the ACTIVE node's port shorter than
//!   failover_timeout (before the fix it retook on its pre-flap view while the peer timed out
//!   and took over too); `2` (the default, [`SPLIT_DEFAULT`]) also `cut+hang`, the same with
//!   all IP between the nodes dropped (the datagram path too: only self-fencing and the VIP
//!   conflict can end it); `0` none of them, the schedule of the suite before issue #18.
//! - `ATHENA_CHAOS_REPORT=path` writes the per-kind table (`benches/chaos.sh` sums these).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use common::chaos::{
    attribute, client_breaks, double_holds, double_runs, mac_of, stats_table, Client, DhcpWatch,
    Fault, Kind, KindStats, Schedule, Target, VipWatch, DHCP_PROBE_INTERVAL,
};
use common::ha_pair::active_leases;
use common::lab::{Lab, Node, NodeOpts, ProbeLog};
use common::netns::require_root;

const HEARTBEAT: Duration = Duration::from_millis(100);
const FT: Duration = Duration::from_secs(1);
/// Invariant 3's bound: failover_timeout + one heartbeat.
const DOUBLE_MAX: Duration = FT.saturating_add(HEARTBEAT);
const SETTLE: Duration = Duration::from_secs(30);
/// `ATHENA_CHAOS_SPLIT` when unset: every split-brain fault, so CI runs them. Before issue
/// #18's fixes each broke invariant 3 (seed 3: both nodes held the VIP and answered
/// DISCOVERs from the resume until the link returned; seed 4, at +40 s: a 454 ms port flap
/// of the ACTIVE node, the VIP on both for 1.4 s). With them, split 1 passed with seeds 3,
/// 4, 5, 6, 7, 8 and 18, and split 2 with seeds 3, 4, 5, 6 and 18 (0 violations each).
const SPLIT_DEFAULT: u8 = 2;
/// The seed CI runs when none is given.
const CI_SEED: u64 = 18;
const TOKEN: &str = "chaos-token-0123456789abcdef";
const LEASE_TIME: &str = "20s";

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed_from_env() -> u64 {
    match std::env::var("ATHENA_CHAOS_SEED").as_deref() {
        Ok("random") => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000),
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("ATHENA_CHAOS_SEED={s}: not a number or `random`")),
        Err(_) => CI_SEED,
    }
}

/// One run: the lab, what was done to it and what went wrong, all on one clock.
struct Run {
    lab: Lab,
    seed: u64,
    t0: Instant,
    t0_sys: SystemTime,
    timeline: Vec<String>,
    injected: Vec<(Instant, Kind)>,
    /// (time, node, may serve): false while a node is dead, frozen or unplugged.
    eligible: Vec<(Instant, Node, bool)>,
    violations: Vec<(Instant, String)>,
    dns: Vec<ProbeLog>,
}

impl Run {
    fn rel(&self, t: Instant) -> String {
        format!(
            "+{:.2}s",
            t.saturating_duration_since(self.t0).as_secs_f64()
        )
    }

    /// A timeline line: time since the start and the UTC time of day (as in the daemons' logs).
    fn note(&mut self, what: String) {
        let now = Instant::now();
        let wall = self.t0_sys + now.duration_since(self.t0);
        let ms = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() % 86_400_000);
        let line = format!(
            "{} ({:02}:{:02}:{:02}.{:03}) {what}",
            self.rel(now),
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        );
        eprintln!("chaos: {line}");
        self.timeline.push(line);
    }

    fn violation(&mut self, at: Instant, what: String) {
        self.note(format!("VIOLATION at {}: {what}", self.rel(at)));
        self.violations.push((at, what));
    }

    fn to_instant(&self, t: SystemTime) -> Instant {
        match t.duration_since(self.t0_sys) {
            Ok(d) => self.t0 + d,
            Err(_) => self.t0,
        }
    }

    fn set_eligible(&mut self, node: Node, v: bool) {
        self.eligible.push((Instant::now(), node, v));
    }

    fn active(&self) -> Node {
        [Node::A, Node::B]
            .into_iter()
            .find(|&n| self.lab.ha_state(n).as_deref() == Some("ACTIVE"))
            .unwrap_or(Node::A)
    }

    /// One ACTIVE, one STANDBY, both linked.
    fn settled(&self) -> bool {
        let s = [Node::A, Node::B].map(|n| self.lab.ha_status(n));
        let [Some(a), Some(b)] = s else {
            return false;
        };
        let mut states = [a["state"].as_str(), b["state"].as_str()];
        states.sort();
        states == [Some("ACTIVE"), Some("STANDBY")]
            && a["peer_connected"] == true
            && b["peer_connected"] == true
    }

    fn wait_settled(&mut self, kind: &str) -> bool {
        let t = Instant::now();
        while t.elapsed() < SETTLE {
            if self.settled() {
                let active = self.active();
                self.note(format!(
                    "settled in {:.1}s, {} ACTIVE",
                    t.elapsed().as_secs_f64(),
                    active.name()
                ));
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let states = [Node::A, Node::B].map(|n| self.lab.ha_state(n));
        self.violation(
            t,
            format!("not one ACTIVE + one linked STANDBY {SETTLE:?} after {kind}: {states:?}"),
        );
        false
    }

    /// Drops TCP between the nodes' own addresses in the switch: the peer link breaks, the
    /// clients still reach both nodes and the standby still reaches the VIP (the witness).
    fn block_link(&self) {
        let rules = "table bridge chaoslink {\n chain peerlink {\n\
             type filter hook forward priority 0; policy accept;\n\
             ip saddr 10.0.0.1 ip daddr 10.0.0.2 meta l4proto tcp drop\n\
             ip saddr 10.0.0.2 ip daddr 10.0.0.1 meta l4proto tcp drop\n }\n}\n";
        let path = self.lab.dir.path().join("chaoslink.nft");
        std::fs::write(&path, rules).expect("write nft rules");
        self.lab.sw.run(&["nft", "-f", &path.to_string_lossy()]);
    }

    fn unblock_link(&self) {
        self.lab
            .sw
            .run(&["nft", "delete", "table", "bridge", "chaoslink"]);
    }

    fn restart(&mut self, node: Node) {
        self.set_eligible(node, true);
        self.lab.restart(node);
    }

    fn inject(&mut self, f: &Fault) {
        let active = self.active();
        let node = match f.target {
            Target::Active => active,
            Target::Standby => active.other(),
        };
        self.injected.push((Instant::now(), f.kind));
        self.note(format!(
            "{} on {} ({:?}) hold {:?} tail {:?}",
            f.kind.name(),
            node.name(),
            f.target,
            f.hold,
            f.tail
        ));
        let sleep = std::thread::sleep;
        match f.kind {
            Kind::Kill9 => {
                self.set_eligible(node, false);
                self.lab.kill9(node);
                sleep(f.hold);
                self.restart(node);
            }
            Kind::Hang => {
                self.set_eligible(node, false);
                self.lab.sigstop(node);
                sleep(f.hold);
                self.lab.sigcont(node);
                self.set_eligible(node, true);
            }
            Kind::LinkBlock => {
                self.block_link();
                sleep(f.hold);
                self.unblock_link();
            }
            Kind::PortDown => {
                self.set_eligible(node, false);
                self.lab.port_down(node);
                sleep(f.hold);
                self.lab.port_up(node);
                self.set_eligible(node, true);
            }
            Kind::SigTerm => {
                self.lab.sigterm(node);
                let st = self.lab.wait_exit(node, Duration::from_secs(15));
                self.set_eligible(node, false);
                if !st.success() {
                    self.violation(
                        Instant::now(),
                        format!("{} exited {st} on SIGTERM", node.name()),
                    );
                }
                sleep(f.hold);
                self.restart(node);
            }
            Kind::ApiHandoff => {
                let bearer = format!("Authorization: Bearer {TOKEN}");
                let got = self.lab.api_post(node, "/api/v1/ha/failover", &[&bearer]);
                let got =
                    got.map(|(c, b)| format!("{c} {}", b.chars().take(120).collect::<String>()));
                self.note(format!("api handoff: {got:?}"));
            }
            Kind::BlockAndHang | Kind::CutAndHang => {
                let cut = f.kind == Kind::CutAndHang;
                if cut {
                    self.lab.cut_ab();
                } else {
                    self.block_link();
                }
                sleep(Duration::from_millis(200));
                self.set_eligible(node, false);
                self.lab.sigstop(node);
                sleep(f.hold);
                self.lab.sigcont(node);
                self.set_eligible(node, true);
                self.note(format!("{} resumed, link still blocked", node.name()));
                sleep(f.tail);
                if cut {
                    self.lab.heal_ab();
                } else {
                    self.unblock_link();
                }
            }
        }
        self.note("undone".into());
    }

    /// A daemon that died without the schedule killing it is a crash: recorded and restarted.
    fn check_alive(&mut self) {
        for n in [Node::A, Node::B] {
            if !self.lab.is_running(n) {
                self.violation(Instant::now(), format!("{} exited on its own", n.name()));
                self.restart(n);
            }
        }
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

#[test]
fn chaos_schedule_keeps_every_client_address_and_one_server() {
    if !require_root("chaos_schedule_keeps_every_client_address_and_one_server") {
        return;
    }
    let _timing = common::timing_lock();
    let seed = seed_from_env();
    let split: u8 = match std::env::var("ATHENA_CHAOS_SPLIT") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("ATHENA_CHAOS_SPLIT={v}: want 0, 1 or 2")),
        Err(_) => SPLIT_DEFAULT,
    };
    let secs: u64 = env_or("ATHENA_CHAOS_SECS", 75);
    let n_clients: usize = env_or("ATHENA_CHAOS_CLIENTS", 4);
    let preempt = seed % 2 == 0;
    eprintln!(
        "chaos: seed {seed} (replay with ATHENA_CHAOS_SEED={seed}), split-brain faults {}, \
         {secs}s of faults, {n_clients} clients, preempt {preempt}",
        match split {
            0 => "off (ATHENA_CHAOS_SPLIT=1 or 2)",
            1 => "block+hang and short port flaps",
            _ => "block+hang, short port flaps and cut+hang",
        }
    );

    let mut lab = Lab::new("chaos");
    for i in 0..n_clients {
        lab.add_client(&format!("c{i}"));
    }
    let probe_ns = lab.add_client("dp");
    probe_ns.run(&["ip", "addr", "add", "10.0.0.11/24", "dev", "eth0"]);
    probe_ns.run(&["ip", "route", "add", "default", "dev", "eth0"]);
    let vips = VipWatch::start([(&lab.a, Node::A), (&lab.b, Node::B)]);
    let macs = [(Node::A, mac_of(&lab.a)), (Node::B, mac_of(&lab.b))];
    let opts = NodeOpts {
        heartbeat_interval: format!("{}ms", HEARTBEAT.as_millis()),
        failover_timeout: format!("{}ms", FT.as_millis()),
        preempt,
        lease_time: LEASE_TIME.into(),
        api_extra: format!("auth_token = \"{TOKEN}\""),
        ..Default::default()
    };
    for n in [Node::A, Node::B] {
        lab.write_config(n, &opts);
    }
    let mut run = Run {
        lab,
        seed,
        t0: Instant::now(),
        t0_sys: SystemTime::now(),
        timeline: Vec::new(),
        injected: Vec::new(),
        eligible: Vec::new(),
        violations: Vec::new(),
        dns: Vec::new(),
    };
    run.restart(Node::A);
    run.restart(Node::B);
    assert!(run.wait_settled("start"), "the pair never settled at start");

    let dhcp = DhcpWatch::start(&run.lab.clients()[n_clients], macs);
    let mut prober = run.lab.prober();
    let mut prober_since = Instant::now();
    let clients: Vec<Client> = run.lab.clients()[..n_clients]
        .iter()
        .map(|ns| Client::start(ns, run.lab.dir.path()))
        .collect();
    let t = Instant::now();
    while clients.iter().any(|c| c.bound().is_none()) {
        assert!(t.elapsed() < SETTLE, "clients not bound within {SETTLE:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    run.note(format!(
        "{} clients bound: {:?}",
        clients.len(),
        clients.iter().map(|c| c.bound()).collect::<Vec<_>>()
    ));

    let faults_from = Instant::now();
    for fault in Schedule::new(seed, split, FT) {
        if faults_from.elapsed() >= Duration::from_secs(secs) {
            break;
        }
        run.check_alive();
        run.inject(&fault);
        run.wait_settled(fault.kind.name());
        std::thread::sleep(fault.gap);
        // The prober's query ids wrap at 65,536 (about 22 minutes); start a fresh one well
        // before, so a long bench run cannot match a reply to an old query.
        if prober_since.elapsed() > Duration::from_secs(600) {
            run.dns.push(prober.stop());
            prober = run.lab.prober();
            prober_since = Instant::now();
        }
    }
    run.note("faults stop".into());
    run.check_alive();
    run.wait_settled("the last fault");
    // One more renewal of every client after the last fault (T1 = 10 s), so a lease the
    // last fault lost shows up as a NAK.
    std::thread::sleep(Duration::from_secs(12));
    let end = Instant::now();
    run.dns.push(prober.stop());
    let samples = dhcp.stop();
    finish(&mut run, &clients, &vips, &samples, end);
}

/// Checks every invariant on the records, prints the figures, and fails with the seed and
/// the timeline when anything broke.
fn finish(
    run: &mut Run,
    clients: &[Client],
    vips: &VipWatch,
    samples: &[common::chaos::DhcpSample],
    end: Instant,
) {
    // 1 and 2: the clients' own records.
    let mut holders: HashMap<Ipv4Addr, Vec<String>> = HashMap::new();
    for c in clients {
        let events = c.events();
        for (at, what) in client_breaks(&events) {
            let at = run.to_instant(at);
            run.violation(at, format!("client {}: {what}", c.ns_name));
        }
        let renewals = events.iter().filter(|e| e.reason == "renew").count();
        if renewals == 0 {
            run.violation(end, format!("client {} never renewed", c.ns_name));
        }
        let mut ips: Vec<Ipv4Addr> = events.iter().filter_map(|e| e.ip).collect();
        ips.sort();
        ips.dedup();
        for ip in ips {
            holders.entry(ip).or_default().push(c.ns_name.clone());
        }
    }
    for (ip, who) in holders.iter().filter(|(_, w)| w.len() > 1) {
        run.violation(end, format!("{ip} held by several clients: {who:?}"));
    }
    // 3: never two serving. Blind watchers would pass it vacuously: they must have seen
    // the VIP move and most DISCOVERs answered.
    let changes = vips.changes();
    let answered = samples.iter().filter(|s| s.by_a || s.by_b).count();
    let both = samples.iter().filter(|s| s.by_a && s.by_b).count();
    run.note(format!(
        "watchers: {} VIP changes; {} DISCOVERs, {answered} answered, {both} by both nodes",
        changes.len(),
        samples.len()
    ));
    if changes.len() < 2 || answered * 2 < samples.len() {
        run.violation(end, "the VIP or DHCP watcher saw (almost) nothing".into());
    }
    for (at, len) in double_holds(&changes, &run.eligible, end) {
        if len > DOUBLE_MAX {
            run.violation(at, format!("VIP on both nodes for {len:?}"));
        }
    }
    for (at, len) in double_runs(samples, DHCP_PROBE_INTERVAL * 3) {
        if len > DOUBLE_MAX {
            run.violation(at, format!("both nodes answered DISCOVERs for {len:?}"));
        }
    }
    // 4: one ACTIVE, the same leases on both, every client's address among them.
    let mut same = None;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let (a, b) = (
            active_leases(&run.lab, Node::A),
            active_leases(&run.lab, Node::B),
        );
        if a.is_some() && a == b {
            same = a;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    match same {
        None => run.violation(end, "the nodes' active leases differ at the end".into()),
        Some(leases) => {
            let macs: Vec<String> = run.lab.clients()[..clients.len()]
                .iter()
                .map(|ns| mac_text(mac_of(ns)))
                .collect();
            for (c, mac) in clients.iter().zip(macs) {
                let ip = c.events().iter().rev().find_map(|e| e.ip);
                let held = ip.is_some_and(|ip| leases.contains(&(ip.to_string(), mac.clone())));
                if !held {
                    run.violation(
                        end,
                        format!("client {} ({mac}, {ip:?}) not in {leases:?}", c.ns_name),
                    );
                }
            }
        }
    }
    if !run.settled() {
        run.violation(end, "not one ACTIVE + one STANDBY at the end".into());
    }
    // 5: no panic.
    for n in [Node::A, Node::B] {
        if let Some(l) = run.lab.log(n).lines().find(|l| l.contains("panicked")) {
            run.violation(end, format!("{} panicked: {l}", n.name()));
        }
    }

    let mut stats: BTreeMap<Kind, KindStats> = BTreeMap::new();
    for (_, k) in &run.injected {
        stats.entry(*k).or_default().injected += 1;
    }
    let mut baseline_failed = 0;
    for p in run.dns.iter().flat_map(|l| l.probes.iter()) {
        if p.answer.is_none() {
            match attribute(&run.injected, p.sent) {
                Some(k) => stats.entry(k).or_default().dns_failed += 1,
                None => baseline_failed += 1,
            }
        }
    }
    let mut unattributed = 0;
    for (at, _) in &run.violations {
        let k = attribute(&run.injected, *at).or(run.injected.last().map(|(_, k)| *k));
        match k {
            Some(k) => stats.entry(k).or_default().violations += 1,
            None => unattributed += 1,
        }
    }
    let queries: usize = run.dns.iter().map(|l| l.probes.len()).sum();
    let table = stats_table(&stats);
    let summary = format!(
        "seed {} faults {} dns_queries {queries} dns_failed_before_faults {baseline_failed} \
         violations {} (before the first fault: {unattributed})\n{table}",
        run.seed,
        run.injected.len(),
        run.violations.len()
    );
    eprintln!("chaos: figures\n{summary}");
    if let Ok(path) = std::env::var("ATHENA_CHAOS_REPORT") {
        std::fs::write(&path, &summary).unwrap_or_else(|e| panic!("write {path}: {e}"));
    }
    if !run.violations.is_empty() {
        let list: Vec<String> = run
            .violations
            .iter()
            .map(|(at, w)| format!("{} {w}", run.rel(*at)))
            .collect();
        let kept = keep_records(run, clients, &list);
        panic!(
            "chaos seed {} broke {} invariant(s) (replay: ATHENA_CHAOS_SEED={}):\n{}\n\
             --- timeline ---\n{}\n--- figures ---\n{summary}\n\
             both daemons' full logs and the clients' records: {kept}",
            run.seed,
            list.len(),
            run.seed,
            list.join("\n"),
            run.timeline.join("\n")
        );
    }
}

/// Copies what a failed run leaves behind out of the lab's directory (removed with the lab):
/// both daemons' logs, each client's script log, the violations and the timeline.
fn keep_records(run: &Run, clients: &[Client], violations: &[String]) -> String {
    let dir = std::env::temp_dir().join(format!(
        "athena-chaos-seed{}-{}",
        run.seed,
        std::process::id()
    ));
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text);
    let kept = std::fs::create_dir_all(&dir)
        .and_then(|_| write("node-a.log", &run.lab.log(Node::A)))
        .and_then(|_| write("node-b.log", &run.lab.log(Node::B)))
        .and_then(|_| write("violations.txt", &violations.join("\n")))
        .and_then(|_| write("timeline.txt", &run.timeline.join("\n")))
        .and_then(|_| {
            clients
                .iter()
                .try_for_each(|c| write(&format!("{}.events", c.ns_name), &c.record()))
        });
    match kept {
        Ok(()) => dir.display().to_string(),
        Err(e) => format!("not kept ({}: {e})", dir.display()),
    }
}

/// The schedule is a function of the seed alone, and split-brain faults appear only when
/// asked for.
#[test]
fn one_seed_gives_one_schedule_and_split_faults_only_on_request() {
    let a: Vec<Fault> = Schedule::new(7, 0, FT).take(200).collect();
    let b: Vec<Fault> = Schedule::new(7, 0, FT).take(200).collect();
    let c: Vec<Fault> = Schedule::new(8, 0, FT).take(200).collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let split = |f: &Fault| matches!(f.kind, Kind::BlockAndHang | Kind::CutAndHang);
    assert!(!a.iter().any(split));
    let flap = |f: &Fault| f.kind == Kind::PortDown && f.target == Target::Active && f.hold < FT;
    assert!(!a.iter().any(flap));
    let one: Vec<Fault> = Schedule::new(7, 1, FT).take(200).collect();
    assert!(one.iter().any(|f| f.kind == Kind::BlockAndHang));
    assert!(one.iter().all(|f| f.kind != Kind::CutAndHang));
    assert!(one.iter().any(flap));
    let s: Vec<Fault> = Schedule::new(7, 2, FT).take(200).collect();
    for k in Kind::ALL {
        assert!(s.iter().any(|f| f.kind == k), "{k:?} never drawn");
    }
    // Split-brain holds outlast failover_timeout: the standby must take over meanwhile.
    assert!(s.iter().filter(|f| split(f)).all(|f| f.hold > FT));
}

/// The double-hold check counts only time when both nodes could have dropped the VIP.
#[test]
fn double_hold_counts_only_while_both_nodes_are_eligible() {
    let t = Instant::now();
    let s = |ms: u64| t + Duration::from_millis(ms);
    let up = [(s(0), Node::A, true), (s(0), Node::B, true)];
    // A holds from 0; B too from 1000 to 3000; A is frozen from 500 to 2500.
    let vip = [
        (s(0), Node::A, true),
        (s(1000), Node::B, true),
        (s(3000), Node::B, false),
    ];
    let mut el = up.to_vec();
    el.extend([(s(500), Node::A, false), (s(2500), Node::A, true)]);
    assert_eq!(
        double_holds(&vip, &el, s(4000)),
        vec![(s(2500), Duration::from_millis(500))]
    );
    // Never released: runs to the end.
    assert_eq!(
        double_holds(&vip[..2], &up, s(4000)),
        vec![(s(1000), Duration::from_millis(3000))]
    );
}

#[test]
fn double_runs_join_samples_across_one_lost_offer() {
    use common::chaos::DhcpSample;
    let t = Instant::now();
    let smp = |ms: u64, a: bool, b: bool| DhcpSample {
        sent: t + Duration::from_millis(ms),
        by_a: a,
        by_b: b,
    };
    let samples = [
        smp(0, true, false),
        smp(250, true, true),
        smp(500, true, false), // B's OFFER lost on a busy machine
        smp(750, true, true),
        smp(1000, true, true),
        smp(5000, true, true),
    ];
    let runs = double_runs(&samples, Duration::from_millis(750));
    assert_eq!(
        runs,
        vec![
            (t + Duration::from_millis(250), Duration::from_millis(750)),
            (t + Duration::from_millis(5000), Duration::ZERO)
        ]
    );
}
