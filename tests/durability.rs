//! Every DHCPACK leaves only once its lease is on disk, proven two ways, both under load (a
//! relay socket sends a burst of clients at once, so ACKs share group commits):
//!
//! - the syscall order, traced with `strace`: for each ACK the daemon sends, the database
//!   write that holds its lease, then an `fdatasync` of the database that began after that
//!   write and ended before the `sendmsg` of the ACK. A `kill -9` alone cannot prove this: the
//!   page cache outlives the process, so an ACK sent after `write()` and before `fdatasync`
//!   would survive it.
//! - `kill -9` while requests are still in flight: every ACK a client got before the kill is
//!   a lease after the restart, and the restarted server renews it.
//!
//! And the other side of the promise: a commit that fails (the database's disk dies) sends no
//! ACK and publishes no `lease.ack`, so a hook never announces a lease that is not there.
//!
//! The lab is `common::dhcp_lab` (the relay's subnet, 10.9.0.0/24).

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::dhcp_lab::*;
use common::netns::require_root;
use dhcproto::v4::MessageType;

fn mac(i: u32) -> [u8; 6] {
    [2, 0xd0, 0, 0, (i >> 8) as u8, i as u8]
}

const XID_BASE: u32 = 10_000;

/// DISCOVERs for clients `0..n` back to back (resent for the missing ones): their offers.
fn offers(lab: &Lab, s: &UdpSocket, n: u32) -> HashMap<u32, Ipv4Addr> {
    let mut offers = HashMap::new();
    for round in 0..5 {
        for i in (0..n).filter(|i| !offers.contains_key(i)) {
            let d = request(1, mac(i), XID_BASE + i, GIADDR, &[]);
            s.send_to(&d, SERVER).expect("send");
        }
        let until = Instant::now() + Duration::from_secs(2);
        while offers.len() < n as usize && Instant::now() < until {
            if let Some(m) = recv_reply(s) {
                if msg_type(&m) == Some(MessageType::Offer) {
                    offers.insert(m.xid() - XID_BASE, m.yiaddr());
                }
            }
        }
        if offers.len() == n as usize {
            return offers;
        }
        assert!(
            round < 4,
            "only {} of {n} offers\n{}",
            offers.len(),
            lab.log()
        );
    }
    offers
}

/// REQUESTs for every offer back to back (resent for the missing ones); collects ACKs until
/// `enough` of them are in, and returns them (client → address) the moment that happens.
fn acks(
    lab: &Lab,
    s: &UdpSocket,
    offers: &HashMap<u32, Ipv4Addr>,
    enough: usize,
) -> HashMap<u32, Ipv4Addr> {
    let mut acked = HashMap::new();
    for round in 0..5 {
        for (&i, ip) in offers.iter().filter(|(i, _)| !acked.contains_key(*i)) {
            let r = request(
                3,
                mac(i),
                XID_BASE + i,
                GIADDR,
                &[(50, ip.octets().to_vec()), (54, vec![10, 1, 0, 1])],
            );
            s.send_to(&r, SERVER).expect("send");
        }
        let until = Instant::now() + Duration::from_secs(2);
        while acked.len() < enough && Instant::now() < until {
            if let Some(m) = recv_reply(s) {
                if msg_type(&m) == Some(MessageType::Ack) {
                    acked.insert(m.xid() - XID_BASE, m.yiaddr());
                }
            }
        }
        if acked.len() >= enough {
            return acked;
        }
        assert!(
            round < 4,
            "only {} of {enough} ACKs\n{}",
            acked.len(),
            lab.log()
        );
    }
    acked
}

#[test]
fn every_acked_lease_survives_kill_9_during_load() {
    if !require_root("every_acked_lease_survives_kill_9_during_load") {
        return;
    }
    const N: u32 = 200;
    let mut lab = Lab::new("dur", "1h");
    let s = lab.relay_socket();
    let offers = offers(&lab, &s, N);
    // The kill comes the moment half the ACKs are in, with the other half of the burst still
    // queued in the socket, the writer or the group commit: nothing gets to finish cleanly.
    let acked = acks(&lab, &s, &offers, N as usize / 2);
    lab.kill9();
    assert!(acked.len() >= N as usize / 2);
    lab.start();
    let page = lab.api("/api/v1/leases?subnet=10.9.0.0/24&state=active&per_page=1000");
    let v: serde_json::Value = serde_json::from_str(&page).expect("json");
    let listed: HashMap<String, String> = v["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_string();
            (s("ip"), s("mac"))
        })
        .collect();
    for (i, ip) in &acked {
        let m = mac(*i);
        let want = format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        );
        assert_eq!(
            listed.get(&ip.to_string()),
            Some(&want),
            "ACKed {ip} to {want} is not that client's lease after kill -9 ({} ACKed, {} listed)",
            acked.len(),
            listed.len()
        );
    }
    // And the restarted server still knows whose they are: a renewal is ACKed.
    let (i, ip) = acked.iter().next().map(|(i, ip)| (*i, *ip)).expect("one");
    let mut renew = request(3, mac(i), 77, GIADDR, &[]);
    renew[12..16].copy_from_slice(&ip.octets());
    let ack = exchange(&s, &renew, 77, MessageType::Ack).expect("renewal ACK after restart");
    assert_eq!(ack.yiaddr(), ip);
}

#[test]
fn every_ack_leaves_after_an_fdatasync_that_followed_the_write_of_its_lease() {
    if !require_root("every_ack_leaves_after_an_fdatasync_that_followed_the_write_of_its_lease") {
        return;
    }
    const N: u32 = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("strace.out");
    let trace_arg = trace.display().to_string();
    // Only the syscalls that matter stop the daemon (seccomp-bpf), so the burst still shares
    // commits; -T gives each call's duration, -xx the buffers in hex, in full (-s).
    let wrapper = [
        "strace",
        "-f",
        "--seccomp-bpf",
        "-ttt",
        "-T",
        "-xx",
        "-s",
        "1048576",
        "-e",
        "trace=pwrite64,fdatasync,fsync,sendmsg",
        "-o",
        &trace_arg,
    ];
    let mut lab = Lab::with_wrapper("fsy", "1h", &wrapper);
    let s = lab.relay_socket();
    let offers = offers(&lab, &s, N);
    let acked = acks(&lab, &s, &offers, N as usize);
    // The daemon is killed, not strace: strace then sees its last tracee exit, writes out the
    // rest of its trace and ends. A detach (SIGINT to strace) waits for every thread of the
    // daemon to stop and can outlast any deadline on a VM short of CPU.
    let mut strace = lab.daemon.take().expect("strace running");
    let daemon = traced_child(strace.id()).expect("the daemon, strace's child");
    // SAFETY: a signal to the process strace started for this test.
    unsafe {
        libc::kill(daemon as i32, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while strace.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = strace.kill();
            panic!("strace did not end within 20 s of its tracee's kill -9");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let calls = parse_strace(&std::fs::read_to_string(&trace).expect("strace output"));

    let syncs: Vec<&Call> = calls
        .iter()
        .filter(|c| c.name == "fdatasync" || c.name == "fsync")
        .collect();
    let sent_acks: Vec<(&Call, Vec<u8>)> = calls
        .iter()
        .filter(|c| c.name == "sendmsg")
        .filter_map(|c| {
            let b = c.data.as_ref()?;
            is_ack(b).then(|| (c, b.clone()))
        })
        .collect();
    assert!(
        sent_acks.len() >= acked.len(),
        "the trace holds {} ACKs, the client got {}",
        sent_acks.len(),
        acked.len()
    );
    let mut checked = 0;
    for (send, b) in &sent_acks {
        // The lease record: address, MAC, state byte 0 (active), as `lease::codec` writes it.
        let mut needle = b[16..20].to_vec();
        needle.extend_from_slice(&b[28..34]);
        needle.push(0);
        let yiaddr = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
        let write = calls
            .iter()
            .find(|c| {
                c.name == "pwrite64"
                    && c.data
                        .as_ref()
                        .is_some_and(|d| d.windows(needle.len()).any(|w| w == needle))
            })
            .unwrap_or_else(|| {
                panic!("ACK for {yiaddr} sent, but no database write holds its lease")
            });
        assert!(
            write.end <= send.start,
            "ACK for {yiaddr} sent at {:.6} before its lease was written ({:.6})",
            send.start,
            write.end
        );
        let synced = syncs
            .iter()
            .any(|f| f.fd == write.fd && f.start >= write.end && f.end <= send.start);
        assert!(
            synced,
            "ACK for {yiaddr} sent at {:.6}: no fdatasync of fd {:?} between the write of its \
             lease (ended {:.6}) and the send; fdatasyncs: {:?}",
            send.start,
            write.fd,
            write.end,
            syncs
                .iter()
                .filter(|f| f.start > write.end - 0.05 && f.start < send.start + 0.05)
                .map(|f| (f.start, f.end))
                .collect::<Vec<_>>()
        );
        checked += 1;
    }
    eprintln!(
        "{checked} ACKs checked against {} fdatasyncs ({:.1} ACKs per flush)",
        syncs.len(),
        checked as f64 / syncs.len().max(1) as f64
    );
    // Under a burst the ACKs really shared flushes (group commit was exercised).
    assert!(
        syncs.len() < checked,
        "{} flushes for {checked} ACKs",
        syncs.len()
    );
}

/// A DHCPACK (BOOTREPLY with option 53 = 5)?
/// A small ext4 filesystem on a loop device for the lease database, which the test can kill:
/// after [`DyingDisk::fail`] every write and fsync on it fails with EIO, as on a dead disk.
/// (Making the file read-only does nothing: the daemon runs as root and holds it open.)
/// Mounted before the daemon starts, so the daemon's mount namespace has it too.
struct DyingDisk {
    dir: tempfile::TempDir,
}

impl DyingDisk {
    fn new() -> DyingDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(32 << 20))
            .expect("image file");
        std::fs::create_dir(dir.path().join("mnt")).expect("mount point");
        let disk = DyingDisk { dir };
        for cmd in [
            vec!["mkfs.ext4", "-q", img.to_str().expect("utf-8 path")],
            vec![
                "mount",
                "-o",
                "loop",
                img.to_str().expect("utf-8 path"),
                disk.path().to_str().expect("utf-8 path"),
            ],
        ] {
            let out = Command::new(cmd[0]).args(&cmd[1..]).output().expect(cmd[0]);
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        disk
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// EXT4_IOC_SHUTDOWN without flushing the journal: the filesystem refuses all I/O.
    fn fail(&self) {
        const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587D;
        const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;
        let mnt = std::fs::File::open(self.path()).expect("open mount point");
        let flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
        // SAFETY: the ioctl reads one u32, which lives until it returns.
        let r = unsafe { libc::ioctl(mnt.as_raw_fd(), EXT4_IOC_SHUTDOWN as _, &flags) };
        assert_eq!(r, 0, "shutdown: {}", std::io::Error::last_os_error());
    }
}

impl Drop for DyingDisk {
    fn drop(&mut self) {
        // Lazy: a daemon still dying may hold it a moment longer; the loop device goes with
        // the last user (mount -o loop sets autoclear).
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

#[test]
fn a_commit_that_fails_sends_no_ack_and_publishes_no_lease_ack() {
    if !require_root("a_commit_that_fails_sends_no_ack_and_publishes_no_lease_ack") {
        return;
    }
    // Declared before the lab, so it is unmounted after the daemon is gone.
    let disk = DyingDisk::new();
    let db = disk.path().join("leases.redb");
    let lab = Lab::with_config("cfail", "1h", |dir, text| {
        let text = text.replace(
            &dir.join("leases.redb").display().to_string(),
            &db.display().to_string(),
        );
        format!(
            "{text}\n[[hooks.script]]\nname = \"log\"\nevents = [\"lease.*\"]\n\
             command = \"echo \\\"$ATHENA_EVENT $ATHENA_IP\\\" >> {}\"\n",
            dir.join("events").display()
        )
    });
    let events = || std::fs::read_to_string(lab.dir.path().join("events")).unwrap_or_default();
    let s = lab.relay_socket();

    // The control: before the fault an exchange is ACKed and its lease.ack published.
    let (_, ack) = relay_exchange(&s, mac(1), 1).expect("ACK before the fault");
    let control = format!("lease.ack {}", ack.yiaddr());
    lab.wait_for("the control's lease.ack", Duration::from_secs(10), || {
        events().lines().any(|l| l == control)
    });

    disk.fail();
    // An offer needs no commit: it still comes. The REQUEST's commit fails: no ACK.
    let discover = request(1, mac(2), 2, GIADDR, &[]);
    let offer = exchange(&s, &discover, 2, MessageType::Offer).expect("offer after the fault");
    let ip = offer.yiaddr();
    let req = request(
        3,
        mac(2),
        2,
        GIADDR,
        &[
            (50, ip.octets().to_vec()),
            (54, server_id(&offer).octets().to_vec()),
        ],
    );
    assert!(
        exchange(&s, &req, 2, MessageType::Ack).is_none(),
        "{ip} was ACKed although its commit failed\n{}",
        lab.log()
    );
    let failed = metric(&lab.api("/metrics"), "athena_dhcp_commit_failed_total");
    assert!(failed >= 1.0, "no failed commit counted\n{}", lab.log());

    // Events are published in handling order, so once a later offer is out, every event of
    // the withheld REQUESTs has been decided.
    let discover = request(1, mac(3), 3, GIADDR, &[]);
    let marker = exchange(&s, &discover, 3, MessageType::Offer).expect("a later offer");
    let marker = format!("lease.offer {}", marker.yiaddr());
    lab.wait_for("the later offer's event", Duration::from_secs(10), || {
        events().lines().any(|l| l == marker)
    });
    let seen = events();
    assert!(
        !seen.contains(&format!("lease.ack {ip}")) && !seen.contains(&format!("lease.renew {ip}")),
        "the withheld ACK of {ip} was published:\n{seen}"
    );
}

fn is_ack(b: &[u8]) -> bool {
    if b.len() < 240 || b[0] != 2 || b[236..240] != [99, 130, 83, 99] {
        return false;
    }
    let mut i = 240;
    while i + 1 < b.len() {
        match b[i] {
            0 => i += 1,
            255 => return false,
            53 => return b.get(i + 2) == Some(&5),
            _ => i += 2 + b[i + 1] as usize,
        }
    }
    false
}

/// One traced system call: when it began and ended (seconds since the epoch), its first fd
/// argument and its first buffer.
#[derive(Debug)]
struct Call {
    name: String,
    start: f64,
    end: f64,
    fd: Option<i32>,
    data: Option<Vec<u8>>,
}

/// The process strace started (its only child): from `/proc`, as the daemon runs under
/// `strace -f` with no pid file of its own.
fn traced_child(strace: u32) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let kids = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
            .unwrap_or_default();
        if let Some(pid) = kids.split_whitespace().next().and_then(|p| p.parse().ok()) {
            return Some(pid);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Parses `strace -f -ttt -T -xx` output, joining `<unfinished ...>` and `resumed` halves.
fn parse_strace(text: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut open: HashMap<String, (String, f64, String)> = HashMap::new();
    for line in text.lines() {
        // "PID  TIMESTAMP CALL...": strace pads the pid with spaces.
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some((ts, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(ts) = ts.parse::<f64>() else { continue };
        if let Some(r) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = r.split_once(" resumed>") else {
                continue;
            };
            if let Some((n, start, head)) = open.remove(pid) {
                if n == name {
                    calls.push(call(&n, start, &format!("{head}{tail}"), ts));
                }
            }
        } else if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            let Some((name, args)) = head.split_once('(') else {
                continue;
            };
            open.insert(pid.to_string(), (name.to_string(), ts, args.to_string()));
        } else if let Some((name, args)) = rest.split_once('(') {
            if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                calls.push(call(name, ts, args, ts));
            }
        }
    }
    // A call still in progress when strace detached (the last ACK's sendmsg, say) has a
    // start but no end: kept, with its end unknown (infinite), so an ACK is never missed and
    // an unfinished fdatasync never counts as done.
    for (name, start, args) in open.into_values() {
        let mut c = call(&name, start, &args, start);
        c.end = f64::INFINITY;
        calls.push(c);
    }
    calls
}

/// A call from its arguments and result text; its end is its start plus the `<duration>`
/// (`-T`), or the time of the line that finished it when that is later.
fn call(name: &str, start: f64, args: &str, last_ts: f64) -> Call {
    let dur = args
        .rsplit_once('<')
        .and_then(|(_, d)| d.trim_end_matches('>').parse::<f64>().ok())
        .unwrap_or(0.0);
    let fd = args
        .split([',', ')'])
        .next()
        .and_then(|f| f.trim().parse().ok());
    Call {
        name: name.to_string(),
        start,
        end: (start + dur).max(last_ts),
        fd,
        data: first_hex_string(args),
    }
}

/// The bytes of a call's buffer (strace -xx): the message of a `sendmsg` (`iov_base`, not the
/// address, which -xx prints in hex too), else the first string argument.
fn first_hex_string(args: &str) -> Option<Vec<u8>> {
    let from = args.find("iov_base=").unwrap_or(0);
    let start = from + args[from..].find("\"\\x")? + 1;
    let rest = &args[start..];
    let end = rest.find('"')?;
    rest[..end]
        .split("\\x")
        .skip(1)
        .map(|h| u8::from_str_radix(h, 16).ok())
        .collect()
}
