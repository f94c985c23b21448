//! The datagram path's socket: one UDP socket on `[ha] heartbeat_port`, a status sent to the
//! peer's address on each VIP network, and a receive task that checks every datagram
//! ([`heartbeat`](crate::ha::heartbeat)) before anything reaches the node. Bad datagrams are
//! counted by kind and logged at debug; a flood of them costs one HMAC each and changes
//! nothing.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigDigest};
use crate::ha::heartbeat::{self, HeartbeatError, PathGuard, Receiver, Sealer, MAX_DATAGRAM};
use crate::ha::machine::PeerStatus;
use crate::ha::metrics::HaMetrics;
use crate::ha::node::NodeMsg;

/// One datagram path: a name for the status and the logs, and the peer's address on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatagramPath {
    pub name: String,
    pub peer: SocketAddr,
}

/// The paths `cfg` asks for: one per distinct peer address over the VIPs (a VIP's `peer`,
/// else the host of `peer_address`), or one to `peer_address`'s host without a VIP. Empty
/// when `heartbeat_port` is 0.
pub fn paths(cfg: &Config) -> Vec<DatagramPath> {
    let ha = &cfg.ha;
    if ha.heartbeat_port == 0 {
        return Vec::new();
    }
    let Some(default) = ha.peer_socket_addr().map(|a| a.ip()) else {
        return Vec::new();
    };
    let mut out: Vec<DatagramPath> = Vec::new();
    for v in &cfg.hooks.vips {
        let ip: IpAddr = v
            .peer
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or(default);
        if out.iter().all(|p| p.peer.ip() != ip) {
            out.push(DatagramPath {
                name: format!("udp/{}", v.interface),
                peer: SocketAddr::new(ip, ha.heartbeat_port),
            });
        }
    }
    if out.is_empty() {
        out.push(DatagramPath {
            name: "udp".into(),
            peer: SocketAddr::new(default, ha.heartbeat_port),
        });
    }
    out
}

/// The node's sending side.
pub struct DatagramSender {
    socket: Arc<UdpSocket>,
    paths: Vec<DatagramPath>,
    sealer: Sealer,
    /// The peer's incarnation as the receive task learned it (echoed as `to`).
    peer_boot: Arc<AtomicU64>,
    metrics: Arc<HaMetrics>,
}

impl DatagramSender {
    /// Sends `status` and the config digest on every path; a full socket buffer drops it
    /// (the next beat follows).
    pub fn send(&mut self, status: &PeerStatus, config: &ConfigDigest) {
        let to = self.peer_boot.load(Ordering::Relaxed);
        for p in &self.paths {
            let Some(frame) = self.sealer.seal(to, status, Some(config)) else {
                tracing::debug!("status too large for a heartbeat datagram");
                return;
            };
            match self.socket.try_send_to(&frame, p.peer) {
                Ok(_) => self.metrics.path_sent(&p.name),
                Err(e) => tracing::debug!(path = %p.name, "heartbeat to {} not sent: {e}", p.peer),
            }
        }
    }
}

/// Binds the heartbeat port and starts the receive task. `None` (logged) when there are no
/// paths or the port cannot be bound: the link alone then carries the heartbeats.
pub(super) fn start(
    cfg: &Config,
    boot: u64,
    paths: Vec<DatagramPath>,
    node: mpsc::Sender<NodeMsg>,
    metrics: Arc<HaMetrics>,
    shutdown: CancellationToken,
) -> Option<DatagramSender> {
    if paths.is_empty() {
        return None;
    }
    let bind = SocketAddr::new(cfg.ha.listen_address.ip(), cfg.ha.heartbeat_port);
    let std_sock = match std::net::UdpSocket::bind(bind)
        .and_then(|s| s.set_nonblocking(true).map(|_| s))
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%bind, "HA heartbeat port {bind} cannot be bound ({e}): only the peer link carries heartbeats");
            return None;
        }
    };
    let socket = match UdpSocket::from_std(std_sock) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!("HA heartbeat socket: {e}");
            return None;
        }
    };
    let key = heartbeat::derive_key(cfg.ha.shared_secret.as_deref().unwrap_or("").as_bytes());
    let peer_boot = Arc::new(AtomicU64::new(0));
    tokio::spawn(receive(
        socket.clone(),
        Receiver::new(key, boot),
        paths.clone(),
        peer_boot.clone(),
        node,
        metrics.clone(),
        shutdown,
    ));
    tracing::info!(
        port = cfg.ha.heartbeat_port,
        "HA heartbeat datagrams on UDP {}: {}",
        cfg.ha.heartbeat_port,
        paths
            .iter()
            .map(|p| format!("{} to {}", p.name, p.peer))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Some(DatagramSender {
        socket,
        paths,
        sealer: Sealer::new(key, boot),
        peer_boot,
        metrics,
    })
}

async fn receive(
    socket: Arc<UdpSocket>,
    mut rx: Receiver,
    paths: Vec<DatagramPath>,
    peer_boot: Arc<AtomicU64>,
    node: mpsc::Sender<NodeMsg>,
    metrics: Arc<HaMetrics>,
    shutdown: CancellationToken,
) {
    let mut guards = vec![PathGuard::default(); paths.len()];
    // One byte more than the largest heartbeat, so an oversize datagram is seen as such.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let (n, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("heartbeat socket: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Some(path) = paths.iter().position(|p| p.peer.ip() == from.ip()) else {
            drop_frame(&metrics, from, &HeartbeatError::UnknownSource(from.ip()));
            continue;
        };
        let result = rx.open(&mut guards[path], &buf[..n]);
        peer_boot.store(rx.peer_boot, Ordering::Relaxed);
        match result {
            Ok(beat) => {
                metrics.path_received(&paths[path].name);
                // A full node queue drops it: it is news the next beat repeats.
                let _ = node.try_send(NodeMsg::Datagram { path, beat });
            }
            Err(e) => drop_frame(&metrics, from, &e),
        }
    }
}

fn drop_frame(metrics: &HaMetrics, from: SocketAddr, e: &HeartbeatError) {
    metrics.heartbeat_dropped(e.kind());
    tracing::debug!(peer = %from, kind = e.kind(), "heartbeat datagram from {from} dropped: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, VipConfig};

    fn vip(iface: &str, peer: Option<&str>) -> VipConfig {
        VipConfig {
            name: format!("vip-{iface}"),
            events: vec![],
            address: "10.0.0.3/24".into(),
            interface: iface.into(),
            garp_count: 3,
            garp_interval: Dur::secs(1),
            garp_refresh: None,
            peer: peer.map(Into::into),
        }
    }

    #[test]
    fn one_path_per_distinct_peer_address_over_the_vips() {
        let mut c = Config::default();
        c.ha.peer_address = Some("192.168.77.2:8067".into());
        assert_eq!(
            paths(&c),
            vec![DatagramPath {
                name: "udp".into(),
                peer: "192.168.77.2:8068".parse().unwrap()
            }]
        );
        c.hooks.vips = vec![
            vip("eth0", Some("10.0.0.2")),
            vip("eth1", None),
            vip("eth2", Some("10.0.0.2")),
        ];
        let p = paths(&c);
        assert_eq!(
            p.iter()
                .map(|p| (p.name.as_str(), p.peer.to_string()))
                .collect::<Vec<_>>(),
            vec![
                ("udp/eth0", "10.0.0.2:8068".to_string()),
                ("udp/eth1", "192.168.77.2:8068".to_string())
            ]
        );
        c.ha.heartbeat_port = 0;
        assert!(paths(&c).is_empty());
    }
}
