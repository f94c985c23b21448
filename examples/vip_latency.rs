//! Benchmark: HA's decision → first gratuitous ARP seen on the wire, for the built-in
//! `[[hooks.vip]]` (service-role watch → VIP worker → netlink + AF_PACKET) and for the old
//! hook-script route (`sh -c "ip addr add ...; arping -U ..."`, as hooks/floating-ip.sh does).
//!
//! Run as root: `cargo run --release --example vip_latency [rounds]`. The process moves
//! itself into a new network namespace first (veth0 10.0.0.1/24 ↔ veth1), so the host's
//! interfaces are never touched. The "wire" is the far end of the veth: a packet socket there
//! timestamps each ARP when it arrives.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use athena_dhcpd::config::{Dur, VipConfig};
use athena_dhcpd::events::EventBus;
use athena_dhcpd::ha::role::{self, ServiceRole};
use athena_dhcpd::ha::HaState;
use athena_dhcpd::health::Health;
use athena_dhcpd::vip::{self, arp, packet, PacketSockets, VipBoard, VipContext};
use tokio_util::sync::CancellationToken;

const VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 0, 3);

fn sh(cmd: &str) -> anyhow::Result<()> {
    let st = Command::new("sh").arg("-c").arg(cmd).status()?;
    anyhow::ensure!(st.success(), "`{cmd}` failed: {st}");
    Ok(())
}

/// Waits up to `within` for the next GARP for the VIP on `sock`; returns its arrival time.
fn next_garp(sock: &OwnedFd, within: Duration) -> Option<Instant> {
    let end = Instant::now() + within;
    let mut buf = [0u8; 1600];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
        while let Ok(r) = packet::recv_frame(sock, &mut buf) {
            let at = Instant::now();
            if r.pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            if let Ok(seen) = arp::parse_arp(&buf[..r.len]) {
                if seen.sender_ip == VIP && seen.target_ip == VIP {
                    return Some(at);
                }
            }
        }
    }
}

fn drain(sock: &OwnedFd) {
    let mut buf = [0u8; 1600];
    while packet::recv_frame(sock, &mut buf).is_ok() {}
}

/// HA's role, as the HA node sends it on a transition.
fn role(state: HaState) -> ServiceRole {
    ServiceRole {
        state,
        since: Instant::now(),
        ..ServiceRole::undecided()
    }
}

fn summary(name: &str, mut v: Vec<Duration>) {
    if v.is_empty() {
        println!("{name}: no samples");
        return;
    }
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<34} n={:<4} min {:>7.3} ms  median {:>7.3} ms  p90 {:>7.3} ms  max {:>7.3} ms",
        v.len(),
        ms(v[0]),
        ms(p(0.5)),
        ms(p(0.9)),
        ms(v[v.len() - 1])
    );
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    // SAFETY: unshare(2) while the process has one thread; every later thread inherits it.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        anyhow::bail!(
            "unshare(CLONE_NEWNET): {} (run as root)",
            std::io::Error::last_os_error()
        );
    }
    sh(
        "ip link set lo up && ip link add veth0 type veth peer name veth1 && \
        ip addr add 10.0.0.1/24 dev veth0 && ip link set veth0 up && ip link set veth1 up",
    )?;
    let wire = PacketSockets::open()?.arp_rx;
    std::thread::sleep(Duration::from_millis(200));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let builtin = rt.block_on(async {
        let cfg_vip = VipConfig {
            name: "dns-vip".into(),
            events: vec!["ha.failover".into()],
            address: "10.0.0.3/24".into(),
            interface: "veth0".into(),
            garp_count: 1,
            garp_interval: Dur(Duration::from_secs(1)),
            garp_refresh: None,
            peer: None,
        };
        let bus = EventBus::new();
        let (role_tx, role_rx) = role::channel();
        let board: VipBoard = Default::default();
        let shutdown = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let claims = vip::manager::start(
            &[cfg_vip],
            PacketSockets::open()?,
            VipContext {
                node: "bench".into(),
                bus: bus.clone(),
                health: Health::new(),
                board: board.clone(),
                shutdown: shutdown.clone(),
                metrics: Default::default(),
                role: role_rx,
            },
            &mut tasks,
        )?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut samples = Vec::new();
        for _ in 0..rounds {
            drain(&wire);
            let t0 = Instant::now();
            role_tx.send_replace(role(HaState::Active));
            let seen = tokio::task::block_in_place(|| next_garp(&wire, Duration::from_secs(2)));
            if let Some(at) = seen {
                samples.push(at - t0);
            }
            role_tx.send_replace(role(HaState::Standby));
            claims.wait_released(Duration::from_secs(2)).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
        anyhow::Ok(samples)
    })?;

    let mut script = Vec::new();
    for _ in 0..rounds.min(20) {
        drain(&wire);
        let t0 = Instant::now();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("ip addr add 10.0.0.3/24 dev veth0 2>/dev/null; arping -q -c 1 -U -I veth0 10.0.0.3")
            .spawn()?;
        if let Some(at) = next_garp(&wire, Duration::from_secs(5)) {
            script.push(at - t0);
        }
        let _ = child.wait();
        let _ = sh("ip addr del 10.0.0.3/24 dev veth0 2>/dev/null");
    }

    println!("event → first gratuitous ARP on the wire ({rounds} rounds)");
    summary("built-in [[hooks.vip]]", builtin);
    summary("hook script (sh + ip + arping)", script);
    Ok(())
}
