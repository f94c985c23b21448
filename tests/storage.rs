//! Storage faults never take the service down: a node whose lease database cannot be written
//! hands the service to its peer and takes it back once the disk heals; a failing standby
//! does not slow the active. Each daemon whose disk the test breaks keeps its database on a
//! small tmpfs mounted in its own mount namespace (the one `ip netns exec` gives it, a slave
//! of the host's), and the test fills or remounts it there through `nsenter`.
//!
//! DHCP runs as a relay from client C (giaddr 10.0.0.10) that sends every request to both
//! nodes: only the ACTIVE one answers, and its server identifier says which.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dhcp_lab::{metric, msg_type, recv_reply, request, server_id};
use common::lab::{Lab, Node, NodeOpts};
use common::netns::require_root;
use common::timing_lock;
use dhcproto::v4::MessageType;

const SOON: Duration = Duration::from_secs(20);
/// The relay's address (client C).
const GIADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

fn opts() -> NodeOpts {
    NodeOpts {
        vip: false,
        dns: false,
        dhcp: true,
        ..Default::default()
    }
}

/// `opts` with the database on a fresh 16 MiB tmpfs at `dir` in the daemon's namespace.
fn on_tmpfs(dir: &Path) -> NodeOpts {
    NodeOpts {
        lease_db: Some(dir.join("leases.redb")),
        pre_exec: Some(format!(
            "mkdir -p {d} && mount -t tmpfs -o size=16m athena-test {d}",
            d = dir.display()
        )),
        // The tmpfs is smaller than the default 64MiB: health would say degraded throughout.
        server_extra: "lease_db_min_free = \"2MiB\"".into(),
        ..opts()
    }
}

/// Runs `sh -c script` in `node`'s daemon's mount namespace.
fn in_mounts(lab: &Lab, node: Node, script: &str) {
    let pid = lab.pid(node).expect("daemon running");
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--", "sh", "-c", script])
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fill(lab: &Lab, node: Node, dir: &Path) {
    in_mounts(
        lab,
        node,
        &format!(
            "dd if=/dev/zero of={}/filler bs=64k 2>/dev/null; true",
            dir.display()
        ),
    );
}

fn unfill(lab: &Lab, node: Node, dir: &Path) {
    in_mounts(lab, node, &format!("rm -f {}/filler", dir.display()));
}

/// One DHCP exchange's outcome as the relay saw it.
#[derive(Debug, Clone)]
struct Ack {
    mac: [u8; 6],
    ip: Ipv4Addr,
    server: Ipv4Addr,
    /// REQUEST sent → ACK received.
    latency: Duration,
}

fn mac(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [2, 0x5e, b[0], b[1], b[2], b[3]]
}

fn mac_string(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A relay in client C that sends each request to both nodes.
struct Relay {
    sock: UdpSocket,
}

impl Relay {
    fn new(lab: &Lab) -> Relay {
        let sock = lab.c.in_netns(|| {
            let s = UdpSocket::bind(SocketAddrV4::new(GIADDR, 67)).expect("bind relay");
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            s
        });
        Relay { sock }
    }

    fn send(&self, pkt: &[u8]) {
        for n in [Node::A, Node::B] {
            let _ = self.sock.send_to(pkt, SocketAddrV4::new(n.addr(), 67));
        }
    }

    fn wait(
        &self,
        xid: u32,
        want: &[MessageType],
        within: Duration,
    ) -> Option<dhcproto::v4::Message> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Some(m) = recv_reply(&self.sock) {
                if m.xid() == xid && msg_type(&m).is_some_and(|t| want.contains(&t)) {
                    return Some(m);
                }
            }
        }
        None
    }

    /// DISCOVER → OFFER → REQUEST → ACK for a new client; `None` when no ACK came.
    fn lease(&self, i: u32) -> Option<Ack> {
        let (m, xid) = (mac(i), i);
        self.send(&request(1, m, xid, GIADDR, &[]));
        let offer = self.wait(xid, &[MessageType::Offer], Duration::from_millis(300))?;
        let req = request(
            3,
            m,
            xid,
            GIADDR,
            &[
                (50, offer.yiaddr().octets().to_vec()),
                (54, server_id(&offer).octets().to_vec()),
            ],
        );
        let t = Instant::now();
        self.send(&req);
        let ack = self.wait(
            xid,
            &[MessageType::Ack, MessageType::Nak],
            Duration::from_millis(700),
        )?;
        (msg_type(&ack) == Some(MessageType::Ack)).then(|| Ack {
            mac: m,
            ip: ack.yiaddr(),
            server: server_id(&ack),
            latency: t.elapsed(),
        })
    }
}

/// New clients one after another on a thread, until stopped.
struct Load {
    acks: Arc<Mutex<Vec<(Instant, Ack)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(lab: &Lab, first: u32) -> Load {
        let relay = Relay::new(lab);
        let acks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acks.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut i = first;
            while !s.load(Ordering::Relaxed) {
                if let Some(ack) = relay.lease(i) {
                    a.lock().expect("acks").push((Instant::now(), ack));
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Load {
            acks,
            stop,
            thread: Some(thread),
        }
    }

    fn acks(&self) -> Vec<(Instant, Ack)> {
        self.acks.lock().expect("acks").clone()
    }

    fn acks_from(&self, n: Node) -> usize {
        self.acks()
            .iter()
            .filter(|(_, a)| a.server == n.addr())
            .count()
    }

    fn stop(mut self) -> Vec<(Instant, Ack)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.acks()
    }
}

/// The node's active leases as (address, MAC).
fn active_leases(lab: &Lab, n: Node) -> Vec<(String, String)> {
    let Some((200, body)) = lab.api_get(n, "/api/v1/leases?state=active&per_page=5000") else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["leases"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    (
                        l["ip"].as_str().unwrap_or_default().to_string(),
                        l["mac"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The ACKed leases `on` does not have.
fn missing_on(lab: &Lab, on: Node, acks: &[&Ack]) -> Vec<String> {
    let have = active_leases(lab, on);
    acks.iter()
        .filter(|a| {
            !have
                .iter()
                .any(|(ip, m)| *ip == a.ip.to_string() && *m == mac_string(a.mac))
        })
        .map(|a| format!("{} {}", a.ip, mac_string(a.mac)))
        .collect()
}

fn store_failed(lab: &Lab, n: Node) -> bool {
    lab.api_get(n, "/metrics")
        .is_some_and(|(_, body)| metric(&body, "athena_lease_store_failed ") == 1.0)
}

fn health(lab: &Lab, n: Node) -> String {
    lab.api_get(n, "/api/v1/health")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// A, ACTIVE with its database on a tmpfs, loses its disk (`break_disk`) under DHCP load:
/// B must serve within a second with every lease A acknowledged; once `fix_disk` runs, A
/// heals, syncs and takes the service back with B's leases.
fn active_disk_fault_hands_over_and_heals(
    tag: &str,
    mount: impl Fn(&Lab, &Path) -> NodeOpts,
    reasons: &[&str],
    break_disk: impl Fn(&Lab, &Path),
    fix_disk: impl Fn(&Lab, &Path),
) {
    let _t = timing_lock();
    let mut lab = Lab::new(tag);
    let dir: PathBuf = lab.dir.path().join("A-db");
    let a = mount(&lab, &dir);
    lab.start(Node::A, &a);
    lab.start(Node::B, &opts());
    lab.wait_state(Node::A, "ACTIVE", SOON);
    lab.wait_state(Node::B, "STANDBY", SOON);

    let load = Load::start(&lab, 1);
    lab.wait_for("40 clients served by A", SOON, |_| {
        load.acks_from(Node::A) >= 40
    });
    break_disk(&lab, &dir);
    lab.wait_for("A's store failed", SOON, |l| store_failed(l, Node::A));
    let failed_at = Instant::now();
    let took = lab.wait_state(Node::B, "ACTIVE", SOON);
    assert!(
        took <= Duration::from_secs(1),
        "B ACTIVE {took:?} after A's store failed, want ≤ 1 s{}",
        lab.dump()
    );
    lab.wait_state(Node::A, "FAULT", Duration::from_secs(2));
    let h = health(&lab, Node::A);
    assert!(
        h.contains("\"status\":\"degraded\"")
            && reasons
                .iter()
                .any(|r| h.contains(&format!("lease database: {r}"))),
        "A's health: {h}"
    );
    lab.wait_for("B serves 20 new clients", SOON, |_| {
        load.acks_from(Node::B) >= 20
    });
    // Every lease A acknowledged (before or during the failure) is on B.
    let acks = load.acks();
    let by_a: Vec<&Ack> = acks
        .iter()
        .map(|(_, a)| a)
        .filter(|a| a.server == Node::A.addr())
        .collect();
    let missing = missing_on(&lab, Node::B, &by_a);
    assert!(
        missing.is_empty(),
        "{} of {} leases ACKed by A missing on B: {missing:?}",
        missing.len(),
        by_a.len()
    );
    // While the disk stays broken, the failure is logged once, not per request.
    std::thread::sleep(Duration::from_secs(2));
    let log = lab.log(Node::A);
    assert_eq!(
        count(&log, "event=\"store.failed\""),
        1,
        "one line per change of state{}",
        lab.dump()
    );

    fix_disk(&lab, &dir);
    let healed = lab.wait_for("A healed and ACTIVE again (preempt)", SOON, |l| {
        l.ha_state(Node::A).as_deref() == Some("ACTIVE")
            && l.ha_state(Node::B).as_deref() == Some("STANDBY")
    });
    let acks = load.stop();
    let by_b: Vec<&Ack> = acks
        .iter()
        .map(|(_, a)| a)
        .filter(|a| a.server == Node::B.addr())
        .collect();
    let missing = missing_on(&lab, Node::A, &by_b);
    assert!(
        missing.is_empty(),
        "{} of {} leases ACKed by B missing on A after the heal: {missing:?}",
        missing.len(),
        by_b.len()
    );
    let log = lab.log(Node::A);
    assert_eq!(count(&log, "event=\"store.failed\""), 1, "{}", lab.dump());
    assert_eq!(count(&log, "event=\"store.healed\""), 1, "{}", lab.dump());
    // Free space is measured every 2 s: the shortage of the full disk clears by then.
    lab.wait_for("A's health ok", Duration::from_secs(5), |l| {
        health(l, Node::A).contains("\"status\":\"ok\"")
    });
    eprintln!(
        "{tag}: B ACTIVE {took:?} after A's store failed ({:?} since); A back {healed:?} after the fix; {} ACKs by A, {} by B",
        failed_at.elapsed(),
        by_a.len(),
        by_b.len()
    );
}

#[test]
fn a_full_disk_on_the_active_hands_over_within_a_second_and_heals_back() {
    if !require_root("a_full_disk_on_the_active_hands_over_within_a_second_and_heals_back") {
        return;
    }
    active_disk_fault_hands_over_and_heals(
        "stfull",
        |_, dir| on_tmpfs(dir),
        &["No space left on device"],
        |lab, dir| fill(lab, Node::A, dir),
        |lab, dir| unfill(lab, Node::A, dir),
    );
}

/// `opts` with the database on a small ext4 image (`img`, made here) mounted at `dir` in the
/// daemon's namespace with `errors=remount-ro`: an ext4 error turns it read-only, as a disk
/// error would (a tmpfs cannot be remounted read-only while the database is open).
fn on_ext4(dir: &Path, img: &Path) -> NodeOpts {
    std::fs::File::create(img)
        .and_then(|f| f.set_len(32 << 20))
        .expect("image file");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(img)
        .output()
        .expect("mkfs.ext4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    NodeOpts {
        lease_db: Some(dir.join("leases.redb")),
        pre_exec: Some(format!(
            "mkdir -p {d} && mount -o loop,errors=remount-ro {i} {d}",
            d = dir.display(),
            i = img.display()
        )),
        server_extra: "lease_db_min_free = \"2MiB\"".into(),
        ..opts()
    }
}

#[test]
fn a_disk_gone_read_only_on_the_active_hands_over_and_heals_back_after_a_remount() {
    if !require_root(
        "a_disk_gone_read_only_on_the_active_hands_over_and_heals_back_after_a_remount",
    ) {
        return;
    }
    let img = |lab: &Lab| lab.dir.path().join("A-db.img");
    active_disk_fault_hands_over_and_heals(
        "stro",
        |lab, dir| on_ext4(dir, &img(lab)),
        // The write in flight sees the abort (EIO), the next ones a read-only filesystem.
        &["Read-only file system", "Input/output error"],
        |lab, dir| {
            in_mounts(
                lab,
                Node::A,
                &format!(
                    "echo test > /sys/fs/ext4/$(basename $(findmnt -n -o SOURCE {}))/trigger_fs_error",
                    dir.display()
                ),
            )
        },
        // What an administrator does: unmount, check, mount again. The daemon reopens the
        // database by its path, on the new mount.
        |lab, dir| {
            in_mounts(
                lab,
                Node::A,
                &format!(
                    "umount -l {d}; e2fsck -fy {i} >/dev/null 2>&1; mount -o loop,errors=remount-ro {i} {d}",
                    d = dir.display(),
                    i = img(lab).display()
                ),
            )
        },
    );
}

/// The `q` quantile of some latencies.
fn quantile(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

#[test]
fn a_full_disk_on_the_standby_does_not_slow_the_active_and_catches_up_when_freed() {
    if !require_root(
        "a_full_disk_on_the_standby_does_not_slow_the_active_and_catches_up_when_freed",
    ) {
        return;
    }
    let _t = timing_lock();
    let mut lab = Lab::new("stsby");
    let dir: PathBuf = lab.dir.path().join("B-db");
    lab.start(Node::A, &opts());
    lab.start(Node::B, &on_tmpfs(&dir));
    lab.wait_state(Node::A, "ACTIVE", SOON);
    lab.wait_state(Node::B, "STANDBY", SOON);

    let load = Load::start(&lab, 1);
    // The lab's pool has 100 addresses: 30 before and 40 after the fault.
    lab.wait_for("30 clients served by A", SOON, |_| {
        load.acks_from(Node::A) >= 30
    });
    let before: Vec<Duration> = load.acks().iter().map(|(_, a)| a.latency).collect();
    fill(&lab, Node::B, &dir);
    lab.wait_for("B's store failed", SOON, |l| store_failed(l, Node::B));
    let failed_at = Instant::now();
    lab.wait_state(Node::B, "FAULT", Duration::from_secs(2));
    let n = load.acks().len();
    lab.wait_for("40 more clients served", SOON, |_| {
        load.acks().len() >= n + 40
    });
    let acks = load.acks();
    // From a little before the failure was seen: the frames in flight when it happened
    // are the ones a nack must release.
    let during: Vec<Duration> = acks
        .iter()
        .filter(|(t, _)| *t + Duration::from_millis(300) >= failed_at)
        .map(|(_, a)| a.latency)
        .collect();
    assert!(
        acks.iter().all(|(_, a)| a.server == Node::A.addr()),
        "B took over while its store failed{}",
        lab.dump()
    );
    let (p99_before, p99_during) = (
        quantile(before.clone(), 0.99),
        quantile(during.clone(), 0.99),
    );
    let worst = during.iter().max().copied().unwrap_or_default();
    eprintln!(
        "stsby: ACK latency p50/p99 before {:?}/{p99_before:?}, with the standby's store failed {:?}/{p99_during:?} (worst {worst:?}, {} ACKs)",
        quantile(before, 0.5),
        quantile(during.clone(), 0.5),
        during.len()
    );
    // max_ack_delay is 250 ms: an ACK that waited for the failed standby would show it.
    assert!(
        worst < Duration::from_millis(200)
            && p99_during <= p99_before * 2 + Duration::from_millis(30),
        "ACKs slowed by the failed standby: p99 {p99_before:?} → {p99_during:?}, worst {worst:?}{}",
        lab.dump()
    );
    let metrics = lab
        .api_get(Node::A, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(
        metric(
            &metrics,
            "athena_dhcp_replication_total{outcome=\"peer_store_failed\"}"
        ) > 0.0,
        "{metrics}"
    );
    let h = health(&lab, Node::B);
    assert!(
        h.contains("lease database: No space left on device"),
        "B's health: {h}"
    );

    unfill(&lab, Node::B, &dir);
    lab.wait_state(Node::B, "STANDBY", SOON);
    let acks = load.stop();
    let all: Vec<&Ack> = acks.iter().map(|(_, a)| a).collect();
    lab.wait_for("every lease on B after its heal", SOON, |l| {
        missing_on(l, Node::B, &all).is_empty()
    });
    assert_eq!(lab.ha_state(Node::A).as_deref(), Some("ACTIVE"));
}

/// How a database file is damaged before a start.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Cut to half its length, as by a disk that lost its tail.
    Truncated,
    /// Overwritten with random bytes.
    RandomBytes,
    /// A redb file whose commit slots name a format this version cannot read.
    UnknownFormat,
}

const DAMAGES: [Damage; 3] = [
    Damage::Truncated,
    Damage::RandomBytes,
    Damage::UnknownFormat,
];

fn damage(db: &Path, how: Damage) {
    let mut bytes = std::fs::read(db).expect("read the database");
    match how {
        Damage::Truncated => bytes.truncate(bytes.len() / 2),
        Damage::RandomBytes => {
            bytes = (0..bytes.len().max(64 << 10))
                .map(|_| rand::random::<u8>())
                .collect()
        }
        Damage::UnknownFormat => {
            // The version byte of both commit slots (header 64 bytes, slots 128 each).
            bytes[64] = 1;
            bytes[64 + 128] = 1;
        }
    }
    std::fs::write(db, bytes).expect("write the damaged database");
}

/// Files in `dir` whose name starts with `prefix`.
fn files_like(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

#[test]
fn a_damaged_database_on_a_standalone_node_exits_1_with_the_command_to_move_it_aside() {
    if !require_root(
        "a_damaged_database_on_a_standalone_node_exits_1_with_the_command_to_move_it_aside",
    ) {
        return;
    }
    for how in DAMAGES {
        let mut lab = Lab::new("stdmg");
        let o = NodeOpts {
            dns: false,
            vip: false,
            ..NodeOpts::standalone()
        };
        lab.start(Node::A, &o);
        let relay = Relay::new(&lab);
        for i in 1..=5 {
            relay.lease(i).expect("a lease before the damage");
        }
        lab.sigterm(Node::A);
        lab.wait_exit(Node::A, SOON);
        let dir = lab.dir.path().join("node-a");
        let db = dir.join("leases.redb");
        damage(&db, how);
        let before = std::fs::read(&db).expect("damaged file");
        lab.spawn(Node::A);
        let st = lab.wait_exit(Node::A, SOON);
        let log = lab.log(Node::A);
        assert_eq!(st.code(), Some(1), "{how:?}: {st:?}\n{log}");
        assert!(!log.contains("panicked"), "{how:?}: a panic\n{log}");
        let mv = format!("mv {} {}.damaged-", db.display(), db.display());
        assert!(
            log.contains(&format!("lease database {} cannot be read", db.display()))
                && log.contains(&mv),
            "{how:?}: no clear message naming the file and the command\n{log}"
        );
        // Refused means untouched: the file is the administrator's to look at.
        assert_eq!(std::fs::read(&db).expect("file"), before, "{how:?}");
        assert!(
            files_like(&dir, "leases.redb.damaged-").is_empty(),
            "{how:?}"
        );
    }
}

#[test]
fn a_damaged_database_on_an_ha_node_is_moved_aside_and_rebuilt_from_the_peer() {
    if !require_root("a_damaged_database_on_an_ha_node_is_moved_aside_and_rebuilt_from_the_peer") {
        return;
    }
    let _t = timing_lock();
    let mut lab = Lab::new("sthad");
    lab.start(Node::A, &opts());
    lab.start(Node::B, &opts());
    lab.wait_state(Node::A, "ACTIVE", SOON);
    lab.wait_state(Node::B, "STANDBY", SOON);
    let relay = Relay::new(&lab);
    let mut acks = Vec::new();
    for i in 1..=20 {
        acks.push(relay.lease(i).expect("a lease from A"));
    }
    let dir = lab.dir.path().join("node-a");
    let db = dir.join("leases.redb");
    for (round, how) in DAMAGES.into_iter().enumerate() {
        // A stops (handing the service to B), its file is damaged, it starts again.
        lab.sigterm(Node::A);
        lab.wait_exit(Node::A, SOON);
        lab.wait_state(Node::B, "ACTIVE", SOON);
        damage(&db, how);
        lab.restart(Node::A);
        // Rebuilt from B, A serves again (preempt) with every lease.
        lab.wait_for(&format!("{how:?}: A ACTIVE again, B STANDBY"), SOON, |l| {
            l.ha_state(Node::A).as_deref() == Some("ACTIVE")
                && l.ha_state(Node::B).as_deref() == Some("STANDBY")
        });
        let all: Vec<&Ack> = acks.iter().collect();
        let missing = missing_on(&lab, Node::A, &all);
        assert!(
            missing.is_empty(),
            "{how:?}: leases lost in the rebuild: {missing:?}{}",
            lab.dump()
        );
        let log = lab.log(Node::A);
        assert!(!log.contains("panicked"), "{how:?}: a panic\n{log}");
        assert_eq!(
            files_like(&dir, "leases.redb.damaged-").len(),
            round + 1,
            "{how:?}: the damaged file is kept aside"
        );
        assert!(
            !damaged_marker(&db).exists(),
            "{how:?}: the rebuild marker stays after the sync"
        );
        assert!(
            count(&log, "is damaged") > round,
            "{how:?}: the move is not logged\n{log}"
        );
    }
}

fn damaged_marker(db: &Path) -> PathBuf {
    let mut n = db.as_os_str().to_os_string();
    n.push(".resync");
    PathBuf::from(n)
}

#[test]
fn a_standalone_node_with_a_full_disk_degrades_keeps_dns_and_recovers() {
    if !require_root("a_standalone_node_with_a_full_disk_degrades_keeps_dns_and_recovers") {
        return;
    }
    let mut lab = Lab::new("stalone");
    let dir: PathBuf = lab.dir.path().join("A-db");
    let o = NodeOpts {
        ha: false,
        dns: true,
        ..on_tmpfs(&dir)
    };
    lab.start(Node::A, &o);
    let relay = Relay::new(&lab);
    for i in 1..=5 {
        relay.lease(i).expect("a lease before the disk fills");
    }
    fill(&lab, Node::A, &dir);
    // The next commit fails; the ones after it are refused without a try.
    let mut i = 100;
    lab.wait_for("A's store failed", SOON, |l| {
        i += 1;
        let _ = relay.lease(i);
        store_failed(l, Node::A)
    });
    let h = health(&lab, Node::A);
    assert!(
        h.contains("\"status\":\"degraded\"")
            && h.contains("lease database: No space left on device"),
        "{h}"
    );
    for j in 0..20 {
        assert!(
            relay.lease(200 + j).is_none(),
            "an ACK without a durable lease{}",
            lab.dump()
        );
    }
    // What needs no write goes on: an OFFER is only held in memory.
    relay.send(&request(1, mac(400), 400, GIADDR, &[]));
    assert!(
        relay
            .wait(400, &[MessageType::Offer], Duration::from_secs(2))
            .is_some(),
        "no OFFER with a full disk{}",
        lab.dump()
    );
    assert_eq!(
        lab.dig(Node::A.addr(), common::lab::WHO),
        vec![Node::A.who_answer()],
        "DNS stops answering with a full disk{}",
        lab.dump()
    );
    let log = lab.log(Node::A);
    assert_eq!(count(&log, "event=\"store.failed\""), 1, "{log}");
    assert_eq!(
        count(&log, "ERROR"),
        1,
        "one error line, not one per request\n{log}"
    );

    unfill(&lab, Node::A, &dir);
    lab.wait_for("A's store healed", SOON, |l| !store_failed(l, Node::A));
    relay.lease(300).expect("a lease after the space came back");
    lab.wait_for("health ok", SOON, |l| {
        health(l, Node::A).contains("\"status\":\"ok\"")
    });
    let log = lab.log(Node::A);
    assert_eq!(count(&log, "event=\"store.healed\""), 1, "{log}");
    assert_eq!(count(&log, "event=\"store.failed\""), 1, "{log}");
}
