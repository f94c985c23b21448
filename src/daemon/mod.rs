//! Start-up order, signals and shutdown.
//!
//! Order, and why: config is valid → privileged sockets open ([`prepare`], still root or with
//! file capabilities) → capabilities dropped to CAP_NET_ADMIN (in `main`, single-threaded) →
//! runtime and tasks start ([`run`]) → READY to systemd → wait for a signal → hand off →
//! release the VIP → exit. Every task selects on one [`CancellationToken`], so shutdown is a
//! broadcast and nothing is left half-running.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::health::Health;
use crate::privileges::explain_bind_error;

mod services;
mod store;

/// Sockets opened while the process still has its privileges.
pub struct Prepared {
    pub config: Arc<Config>,
    pub config_path: PathBuf,
    pub api: Option<std::net::TcpListener>,
    pub dns: Option<crate::dns::DnsSockets>,
    /// The VIP manager's AF_PACKET sockets (GARP out, ARP in), when `[[hooks.vip]]` exist.
    pub vip_sockets: Option<crate::vip::PacketSockets>,
    /// DHCP UDP sockets (port 67 needs CAP_NET_BIND_SERVICE, binding to a device may need
    /// CAP_NET_RAW); empty when no subnet is configured.
    pub dhcp_sockets: Vec<std::net::UdpSocket>,
    /// The conflict prober's ARP and raw ICMP sockets (CAP_NET_RAW), when DHCP serves and
    /// `[conflict_detection]` is enabled.
    pub conflict_sockets: Option<crate::conflict::ConflictSockets>,
}

/// Opens every socket that needs a capability the process will drop.
pub fn prepare(config: Config, config_path: PathBuf) -> anyhow::Result<Prepared> {
    let api = match config.api_listen() {
        Some(addr) => Some(bind_tcp(addr).map_err(|e| {
            anyhow::anyhow!(explain_bind_error(
                &e,
                &format!("API listener on {addr}"),
                "CAP_NET_BIND_SERVICE"
            ))
        })?),
        None => None,
    };
    let dns = if config.dns.enabled {
        Some(crate::dns::bind(&config.dns)?)
    } else {
        None
    };
    let vip_sockets = if config.hooks.vips.is_empty() {
        None
    } else {
        Some(crate::vip::PacketSockets::open().map_err(|e| {
            anyhow::anyhow!(explain_bind_error(
                &e,
                "packet socket for gratuitous ARP ([[hooks.vip]])",
                "CAP_NET_RAW"
            ))
        })?)
    };
    let dhcp_sockets = crate::dhcp::sockets::open_sockets(&config).map_err(|e| {
        anyhow::anyhow!(explain_bind_error(
            &e,
            &format!("DHCP socket on UDP port {}", config.server.dhcp_port),
            "CAP_NET_BIND_SERVICE"
        ))
    })?;
    let conflict_sockets = if config.conflict_detection.enabled && !dhcp_sockets.is_empty() {
        Some(crate::conflict::open_sockets().map_err(|e| {
            anyhow::anyhow!(explain_bind_error(
                &e,
                "packet and ICMP sockets for conflict detection ([conflict_detection])",
                "CAP_NET_RAW"
            ))
        })?)
    } else {
        None
    };
    Ok(Prepared {
        config: Arc::new(config),
        config_path,
        api,
        dns,
        vip_sockets,
        dhcp_sockets,
        conflict_sockets,
    })
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    // A restarted daemon must be able to bind while old connections sit in TIME_WAIT.
    sock.set_reuse_address(true)?;
    // Accepted connections inherit TCP_NODELAY (Linux). The HA peer link rides on this
    // listener: without it the accepting side's small frames (lease acks a DHCPACK waits
    // for) sit behind Nagle until the other side's delayed ACK.
    sock.set_nodelay(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// Builds the runtime and runs the daemon until SIGTERM/SIGINT.
pub fn run(prepared: Prepared) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("athena-worker")
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(services::serve(prepared))
}

fn notify_ready() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!("sd_notify READY failed: {e}");
        }
    }
}

/// Pings systemd's watchdog at half its interval, but only while the workers make progress:
/// a wedged daemon must be restarted, not kept alive by a healthy timer.
fn spawn_watchdog(health: Health, shutdown: CancellationToken) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let stuck = health.workers_stuck();
                    if stuck.is_empty() {
                        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                    } else {
                        tracing::error!(workers = ?stuck, "workers stuck, withholding the systemd watchdog ping");
                    }
                }
            }
        }
    });
}

async fn wait_for_signals(
    path: &std::path::Path,
    config_tx: &watch::Sender<Arc<Config>>,
    shutdown: &CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); return }
            _ = int.recv() => { tracing::info!("SIGINT received"); return }
            _ = shutdown.cancelled() => return,
            _ = hup.recv() => reload(path, config_tx),
        }
    }
}

/// SIGHUP: re-reads the file; DHCP (subnets, pools, reservations, options, timers), hooks,
/// DNS records, forwarders, zone overrides and serve-stale settings follow the new config at once, anything else that changed is named so
/// the admin knows a restart is needed. A file that fails validation changes nothing.
fn reload(path: &std::path::Path, config_tx: &watch::Sender<Arc<Config>>) {
    let new = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload refused, keeping the running config: {e}");
            return;
        }
    };
    let old = config_tx.borrow().clone();
    let needs_restart = restart_sections(&old, &new);
    if needs_restart.is_empty() {
        tracing::info!("config reloaded from {}", path.display());
    } else {
        tracing::warn!(
            sections = ?needs_restart,
            "config reloaded from {}; subnets, pools, reservations, options, client classes, hooks, DNS records, forwarders, zone overrides and serve-stale settings applied; changes to {} take effect after a restart",
            path.display(),
            needs_restart.join(", ")
        );
    }
    let _ = config_tx.send(Arc::new(new));
}

/// The sections whose changes a reload cannot apply.
pub fn restart_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if j(&old.server) != j(&new.server) {
        out.push("[server]");
    }
    if j(&old.api) != j(&new.api) {
        out.push("[api]");
    }
    if j(&old.ha) != j(&new.ha) {
        out.push("[ha]");
    }
    // What a reload applies to the DNS proxy (`DnsServer::follow_config`) is left out.
    let dns_needing_restart = |c: &Config| {
        let mut d = c.dns.clone();
        d.records.clear();
        d.zone_overrides.clear();
        d.forwarders.clear();
        d.upstream_timeout = Default::default();
        d.serve_stale = false;
        d.stale_max = Default::default();
        d.stale_answer_client_timeout = Default::default();
        j(&d)
    };
    if dns_needing_restart(old) != dns_needing_restart(new) {
        out.push("[dns]");
    }
    // Subnets and defaults: the DHCP server follows the config watch, but the sockets it
    // listens on were opened before the capability drop.
    let ifaces = |c: &Config| crate::dhcp::sockets::interfaces_to_bind(c);
    if ifaces(old) != ifaces(new) {
        out.push("[[subnet]] interface");
    }
    if j(&old.hooks.vips) != j(&new.hooks.vips) {
        out.push("[[hooks.vip]]");
    }
    if old.conflict_detection != new.conflict_detection {
        out.push("[conflict_detection]");
    }
    out
}

fn j<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DnsZoneOverride, Dur};

    #[test]
    fn dns_upstreams_and_serve_stale_reload_without_a_restart_and_the_cache_size_does_not() {
        let old = Config::default();
        let mut new = old.clone();
        new.dns.forwarders = vec!["192.0.2.53".into()];
        new.dns.upstream_timeout = Dur::secs(3);
        new.dns.zone_overrides = vec![DnsZoneOverride {
            zone: "corp.example".into(),
            forwarders: vec!["10.1.1.53".into()],
        }];
        new.dns.serve_stale = false;
        new.dns.stale_max = Dur::secs(600);
        new.dns.stale_answer_client_timeout = Dur::secs(1);
        assert!(restart_sections(&old, &new).is_empty());
        new.dns.cache_size = 5;
        assert_eq!(restart_sections(&old, &new), vec!["[dns]"]);
    }
}
