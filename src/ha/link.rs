//! The peer link's transport: dialling (with a short backoff; a refused dial after a link
//! existed is the fast takeover trigger), the accept side (behind the HTTP upgrade route in
//! `api::ha`), the hello exchange, and the tie-break that leaves both ends on one link when
//! both dial at once. Each link runs one reader and one writer task and reports to the node
//! task through [`NodeMsg`]; the node decides which link is current.
//!
//! Invariant: both ends keep the link dialled by the preferred node (the primary), or the
//! newer of two dialled by the same node, whatever order they saw the links in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigDigest, Role};
use crate::ha::machine::{Input, PeerStatus};
use crate::ha::metrics::HaMetrics;
use crate::ha::node::{HaHandle, NodeMsg};
use crate::ha::peer::{self, LinkError, Msg};

/// Longest a handshake (upgrade, Noise handshake, hello) may take: a slow-loris peer is cut
/// here.
pub(super) const HANDSHAKE_LIMIT: Duration = Duration::from_secs(2);
/// Inbound handshakes in progress at once; more are refused at the HTTP layer.
pub(super) const MAX_PENDING_HANDSHAKES: usize = 8;
/// Frames queued towards the peer before heartbeats are dropped (a paused peer reads nothing).
pub(super) const LINK_QUEUE: usize = 1024;

/// Most queued frames the link's writer sends in one write.
pub(super) const LINK_WRITE_BATCH: usize = 32;

pub(super) struct LinkReady {
    pub(super) id: u64,
    pub(super) dialer: String,
    /// The dialler's number for the link (see [`Shared::dial_number`]).
    pub(super) dial: u64,
    pub(super) addr: SocketAddr,
    pub(super) peer: PeerStatus,
    /// The peer's shared-config digest from its hello; `None`: it predates config agreement.
    pub(super) peer_config: Option<ConfigDigest>,
    /// The peer's hello said it reads `LeasesNack` ([`peer::frames::CODEC_NACKS`]).
    pub(super) peer_nacks: bool,
    pub(super) tx: mpsc::Sender<Msg>,
    pub(super) cancel: CancellationToken,
}

pub(super) struct Shared {
    pub(super) node: String,
    pub(super) role: Role,
    pub(super) secret: Vec<u8>,
    pub(super) my_status: watch::Receiver<PeerStatus>,
    /// Our shared-config digest as of the last reload, sent in every hello.
    pub(super) config_digest: watch::Receiver<ConfigDigest>,
    pub(super) next_link: AtomicU64,
    pub(super) last_dial: AtomicU64,
    pub(super) metrics: Arc<HaMetrics>,
    pub(super) handshakes: Semaphore,
    pub(super) api_token: Option<String>,
    /// Last time a link error of a kind was logged at warn per address (no log storms).
    pub(super) warned: Mutex<HashMap<(IpAddr, &'static str), Instant>>,
    /// The DNS server's warm-standby ends: the writer sends its batches, the reader hands
    /// the peer's to it.
    pub(super) dns_warm: Option<crate::dns::WarmLink>,
}

impl Shared {
    /// A number for a link this node dials, higher than any it dialled before, across
    /// restarts too (microseconds of the wall clock, kept strictly increasing): the peer
    /// may still hold a link from this node's previous life when the new one arrives.
    pub(super) fn dial_number(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let prev = self
            .last_dial
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(0);
        now.max(prev + 1)
    }

    pub(super) fn log_link_error(&self, addr: SocketAddr, dir: &str, e: &LinkError) {
        self.metrics.link_error(e.kind());
        let quiet = matches!(e, LinkError::Closed | LinkError::Io(_));
        // A peer of another version stays one until someone upgrades it, however often
        // either side dials: one line per hour says it.
        let window = match e {
            LinkError::Version { .. } => Duration::from_secs(3600),
            _ => Duration::from_secs(60),
        };
        let mut w = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let key = (addr.ip(), e.kind());
        let recent = w.get(&key).is_some_and(|t| t.elapsed() < window);
        if quiet || recent {
            tracing::debug!(peer = %addr, kind = e.kind(), "peer link {dir} {addr}: {e}");
        } else if let LinkError::Version { .. } = e {
            w.insert(key, Instant::now());
            tracing::warn!(peer = %addr, kind = e.kind(), "peer {addr} {e}");
        } else {
            w.insert(key, Instant::now());
            tracing::warn!(peer = %addr, kind = e.kind(), "peer link {dir} {addr} refused: {e}");
        }
    }
}

/// Closes a link that lost the tie-break after a grace period: the peer may still use it as
/// its current link until it has seen the winner too, and an immediate close would look to
/// it like the peer going away (link down, handoff abandoned). Frames arriving on it
/// meanwhile are ignored here; what mattered is sent again on the new link.
pub(super) fn retire(cancel: CancellationToken) {
    tokio::spawn(async move {
        tokio::time::sleep(HANDSHAKE_LIMIT).await;
        cancel.cancel();
    });
}

/// Whether link `new` (dialler, dial number) replaces the current one. Both ends must end
/// on the same link whatever order they saw the links in: the preferred dialler's, and of
/// two from one dialler the later dialled.
pub(super) fn replaces(new: (&str, u64), cur: (&str, u64), preferred: &str) -> bool {
    if new.0 == cur.0 {
        new.1 > cur.1
    } else {
        new.0 == preferred
    }
}

/// The node whose dialled link survives when both dial at once: the primary (or, in a pair
/// misconfigured with equal roles, the smaller name). Both ends compute the same answer.
pub(super) fn preferred_dialer(me: &str, my_role: Role, peer: &str, peer_role: Role) -> String {
    match (my_role, peer_role) {
        (Role::Primary, Role::Secondary) => me.to_string(),
        (Role::Secondary, Role::Primary) => peer.to_string(),
        _ => me.min(peer).to_string(),
    }
}

/// Dials right after a link is lost, before the normal backoff.
const QUICK_RETRIES: u32 = 3;
/// A quick dial's connect limit: the peers share a link (the VIP moves between them), where
/// a connection is answered in well under a millisecond, so a SYN unanswered this long was
/// dropped by a dying listener and the next dial will be refused.
const QUICK_CONNECT: Duration = Duration::from_millis(25);

/// Keeps one link to the peer: dials while there is none. A refusal goes to the machine
/// (which decides whether it means "process gone"); anything else just retries.
pub(super) async fn dialer(
    h: HaHandle,
    peer: SocketAddr,
    mut link_up: watch::Receiver<bool>,
    heartbeat: Duration,
    shutdown: CancellationToken,
) {
    let backoff = heartbeat.clamp(Duration::from_millis(20), Duration::from_millis(500));
    let connect_limit = (heartbeat * 2).clamp(Duration::from_millis(100), Duration::from_secs(2));
    // Right after a link is lost the peer may be half-way through dying: its kernel can still
    // accept a connection and then reset it, or drop the SYN while its listener closes. Retry
    // such failures at once a few times, each connect given only QUICK_CONNECT, so the
    // refusal that proves the process gone is seen within milliseconds, not a backoff (or a
    // lost SYN's connect_limit) later. Whichever side dialed the lost link.
    let mut quick_retries = 0u32;
    loop {
        let was_up = *link_up.borrow();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = link_up.wait_for(|up| !up) => if r.is_err() { return },
        }
        if was_up {
            quick_retries = QUICK_RETRIES;
        }
        let quick = quick_retries > 0;
        let limit = if quick { QUICK_CONNECT } else { connect_limit };
        let attempt = async {
            let stream = tokio::time::timeout(limit, tokio::net::TcpStream::connect(peer))
                .await
                .map_err(|_| LinkError::Timeout("connect"))??;
            let _ = stream.set_nodelay(true);
            h.establish(stream, peer).await
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = attempt => r,
        };
        match result {
            Ok(cancel) => {
                // Wait for this link to end (or lose the tie-break), then dial again at once.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = cancel.cancelled() => {}
                }
                quick_retries = QUICK_RETRIES;
                continue;
            }
            Err(LinkError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::debug!(peer = %peer, "peer {peer} refused the connection");
                quick_retries = 0;
                let _ = h.tx.send(NodeMsg::Input(Input::ReconnectRefused)).await;
            }
            // Expected while the peer dies: counted, not worth a warning.
            Err(e) if quick => {
                h.inner.metrics.link_error(e.kind());
                tracing::debug!(peer = %peer, "peer link to {peer}: {e}");
            }
            Err(e) => h.inner.log_link_error(peer, "to", &e),
        }
        let wait = if quick_retries > 0 {
            quick_retries -= 1;
            Duration::from_millis(5)
        } else {
            backoff
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

impl HaHandle {
    /// Dialer side: HTTP upgrade, handshake, hello, then the link runs in its own tasks.
    pub(super) async fn establish(
        &self,
        mut stream: tokio::net::TcpStream,
        addr: SocketAddr,
    ) -> Result<CancellationToken, LinkError> {
        let setup = async {
            peer::upgrade_client(&mut stream, &addr.to_string(), HANDSHAKE_LIMIT).await?;
            let (r, w) = peer::handshake_dialer(stream, &self.inner.secret).await?;
            self.hello(r, w, addr, true).await
        };
        tokio::time::timeout(HANDSHAKE_LIMIT, setup)
            .await
            .map_err(|_| LinkError::Timeout("handshake"))?
    }

    /// The upgrade route met a peer asking for another protocol version (`athena-ha/N`):
    /// logged like a refused link, so both directions of a mixed pair say it once.
    pub(crate) fn refuse_version(&self, addr: SocketAddr, peer: u32) {
        self.inner
            .log_link_error(addr, "from", &LinkError::Version { peer });
    }

    /// Acceptor side, on an upgraded connection.
    pub(crate) async fn accept<S>(&self, io: S, addr: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(_permit) = self.inner.handshakes.try_acquire() else {
            self.inner.log_link_error(
                addr,
                "from",
                &LinkError::Upgrade("too many handshakes in progress".into()),
            );
            return;
        };
        let setup = async {
            let (r, w) = peer::handshake_acceptor(io, &self.inner.secret).await?;
            self.hello(r, w, addr, false).await
        };
        match tokio::time::timeout(HANDSHAKE_LIMIT, setup).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.inner.log_link_error(addr, "from", &e),
            Err(_) => self
                .inner
                .log_link_error(addr, "from", &LinkError::Timeout("handshake")),
        }
    }

    /// Exchanges hellos, then hands the link to the node and starts its reader and writer.
    async fn hello<R, W>(
        &self,
        mut r: peer::Reader<R>,
        mut w: peer::Writer<W>,
        addr: SocketAddr,
        dialer: bool,
    ) -> Result<CancellationToken, LinkError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mine = self.inner.my_status.borrow().clone();
        let my_dial = if dialer { self.inner.dial_number() } else { 0 };
        let my_config = self.inner.config_digest.borrow().clone();
        w.send(&Msg::Hello {
            version: peer::VERSION,
            status: mine,
            dial: my_dial,
            lease_codec: peer::LEASE_CODEC,
            config: Some(my_config),
            dns_warm: if self.inner.dns_warm.is_some() {
                peer::DNS_WARM
            } else {
                0
            },
        })
        .await?;
        let (peer, dial, peer_config, warm_out, peer_nacks) = match r.recv().await? {
            Msg::Hello {
                version,
                status,
                dial,
                lease_codec,
                config,
                dns_warm,
            } if version == peer::VERSION => {
                w.peer_lease_codec(lease_codec);
                // Warm-standby questions go only to a peer that reads them.
                let warm = (self.inner.dns_warm.clone()).filter(|_| dns_warm >= peer::DNS_WARM);
                let nacks = lease_codec >= peer::frames::CODEC_NACKS;
                (
                    status,
                    if dialer { my_dial } else { dial },
                    config,
                    warm,
                    nacks,
                )
            }
            Msg::Hello { version, .. } => return Err(LinkError::Version { peer: version }),
            other => {
                return Err(LinkError::Malformed {
                    what: "hello",
                    detail: format!("first frame is {other:?}"),
                })
            }
        };
        if peer.node == self.inner.node {
            return Err(LinkError::Malformed {
                what: "hello",
                detail: format!("peer claims this node's own name {:?}", peer.node),
            });
        }
        let id = self.inner.next_link.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let (tx, mut out_rx) = mpsc::channel::<Msg>(LINK_QUEUE);
        let dialer_name = if dialer {
            self.inner.node.clone()
        } else {
            peer.node.clone()
        };
        self.tx
            .send(NodeMsg::Link(LinkReady {
                id,
                dialer: dialer_name,
                dial,
                addr,
                peer,
                peer_config,
                peer_nacks,
                tx,
                cancel: cancel.clone(),
            }))
            .await
            .map_err(|_| LinkError::Closed)?;
        // Writer. Lease and control frames first; a warm-standby DNS batch only when none
        // is queued (its own pace is bounded in `dns::warm`).
        let c = cancel.clone();
        tokio::spawn(async move {
            let warm_batch = async || match &warm_out {
                Some(w) => w.next_batch().await,
                None => std::future::pending().await,
            };
            loop {
                tokio::select! {
                    biased;
                    _ = c.cancelled() => return,
                    m = out_rx.recv() => match m {
                        Some(m) => {
                            // Whatever else queued meanwhile goes in the same write.
                            let mut batch = vec![m];
                            while batch.len() < LINK_WRITE_BATCH {
                                match out_rx.try_recv() {
                                    Ok(m) => batch.push(m),
                                    Err(_) => break,
                                }
                            }
                            if w.send_all(&batch).await.is_err() { c.cancel(); return }
                        }
                        None => return,
                    },
                    b = warm_batch() => {
                        if w.send(&Msg::DnsWarm(b)).await.is_err() { c.cancel(); return }
                    }
                }
            }
        });
        // Reader.
        let c = cancel.clone();
        let node = self.tx.clone();
        let shared = self.inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = c.cancelled() => {
                        let _ = node.send(NodeMsg::LinkClosed { id, err: None }).await;
                        return;
                    }
                    m = r.recv() => match m {
                        Ok(Msg::DnsWarm(batch)) => {
                            if let Some(w) = &shared.dns_warm {
                                w.receive(&batch);
                            }
                        }
                        Ok(msg) => {
                            if node.send(NodeMsg::LinkMsg { id, msg }).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            c.cancel();
                            // Logged and counted here, whether or not this is still the node's
                            // current link: a replay or a bad MAC on a link that lost the
                            // tie-break is as hostile as on the current one.
                            shared.log_link_error(addr, "to", &e);
                            let _ = node.send(NodeMsg::LinkClosed { id, err: Some(e) }).await;
                            return;
                        }
                    },
                }
            }
        });
        Ok(cancel)
    }
}
