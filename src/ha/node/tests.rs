//! Two real nodes in one process over loopback TCP: link, handshake, roles, replication,
//! bulk sync, handoff, wrong key.

use super::*;
use crate::config::{Dur, Role};
use crate::events::EventData;
use crate::ha::link::replaces;
use crate::ha::metrics::KindLabel;
use crate::lease::testing::TempStore;
use crate::lease::{replication_channel, Lease, LeaseState, Replication};
use std::net::Ipv4Addr;
use std::time::Instant;

const SECRET: &str = "0123456789abcdef-secret";

struct TestNode {
    h: HaHandle,
    addr: SocketAddr,
    /// A real store: the node replicates with the merge rules the daemon has.
    log: Arc<TempStore>,
    rep: Replication,
    stop: CancellationToken,
    events: crate::events::Subscription,
    /// What a SIGHUP would send: a reloaded config.
    updates: watch::Sender<Arc<Config>>,
}

fn config(role: Role, me: SocketAddr, peer: SocketAddr, secret: &str) -> Config {
    let mut c = Config::default();
    c.ha.enabled = true;
    c.ha.role = role;
    c.ha.listen_address = me;
    c.ha.peer_address = Some(peer.to_string());
    c.ha.heartbeat_interval = Dur::millis(50);
    c.ha.failover_timeout = Dur::millis(400);
    c.ha.shared_secret = Some(secret.into());
    // Pairs run in parallel on one loopback: the datagram path has tests of its own.
    c.ha.heartbeat_port = 0;
    c.api.auth_token = Some("test-token-0123456789".into());
    c
}

async fn start(
    name: &str,
    role: Role,
    listener: tokio::net::TcpListener,
    peer: SocketAddr,
    secret: &str,
    log: Arc<TempStore>,
) -> TestNode {
    let me = listener.local_addr().expect("addr");
    let cfg = Arc::new(config(role, me, peer, secret));
    let stop = CancellationToken::new();
    let bus = EventBus::new();
    let events = bus.subscribe("test", 1024);
    let (rep, rep_rx) = replication_channel(64);
    let (updates, updates_rx) = watch::channel(cfg.clone());
    let mut reg = Registry::default();
    let h = spawn(
        HaParams {
            node: name.into(),
            config: cfg,
            bus,
            health: Health::new(),
            role: crate::ha::role::channel().0,
            vip_claims: Default::default(),
            lease_log: Some(log.log()),
            replication: Some(rep_rx),
            updates: updates_rx,
            dns_warm: None,
            resync_marker: None,
            shutdown: stop.clone(),
        },
        &mut reg,
    );
    let app = crate::api::ha::routes(h.clone());
    let sd = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { sd.cancelled().await })
        .await;
    });
    TestNode {
        h,
        addr: me,
        log,
        rep,
        stop,
        events,
        updates,
    }
}

async fn pair(secret_b: &str) -> (TestNode, TestNode) {
    let la = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (aa, ab) = (la.local_addr().expect("a"), lb.local_addr().expect("b"));
    let a = start(
        "node-a",
        Role::Primary,
        la,
        ab,
        SECRET,
        Arc::new(TempStore::new()),
    )
    .await;
    let b = start(
        "node-b",
        Role::Secondary,
        lb,
        aa,
        secret_b,
        Arc::new(TempStore::new()),
    )
    .await;
    (a, b)
}

/// A ACTIVE and B STANDBY, each as the other sees it too.
async fn settled(a: &TestNode, b: &TestNode) {
    wait_until(
        "A ACTIVE, B STANDBY, both views",
        Duration::from_secs(5),
        || {
            let (sa, sb) = (a.h.status.borrow().clone(), b.h.status.borrow().clone());
            sa.state == HaState::Active
                && sb.state == HaState::Standby
                && sa.peer_state == Some(HaState::Standby)
                && sb.peer_state == Some(HaState::Active)
        },
    )
    .await;
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn lease(last: u8, updated_ms: u64) -> Lease {
    Lease {
        ip: Ipv4Addr::new(10, 0, 0, last),
        mac: [2, 0, 0, 0, 0, last],
        client_id: None,
        hostname: Some(format!("host{last}")),
        subnet: "10.0.0.0/24".into(),
        state: LeaseState::Active,
        start: 1,
        expiry: 3601,
        updated_ms,
        relay_info: None,
        classes: Vec::new(),
    }
}

fn state(n: &TestNode) -> HaState {
    n.h.status.borrow().state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_serves_secondary_stands_by_and_leases_replicate_before_the_ack() {
    let (a, b) = pair(SECRET).await;
    settled(&a, &b).await;
    assert_eq!(*a.h.serving.borrow(), HaState::Active);
    assert_eq!(*b.h.serving.borrow(), HaState::Standby);
    let st = a.h.status.borrow().clone();
    assert!(
        st.peer_connected && st.peer_state == Some(HaState::Standby),
        "{st:?}"
    );
    assert!(st.epoch >= 1);

    // Live replication: acknowledged only once B holds the lease.
    let l = lease(50, 1000);
    a.log.put(vec![l.clone()]).await.expect("put");
    assert_eq!(
        a.rep
            .replicate(vec![l.clone()], Duration::from_secs(2))
            .await,
        crate::lease::Replicated::Acked
    );
    assert_eq!(b.log.get(l.ip), Some(l));
    a.stop.cancel();
    b.stop.cancel();
}

/// A lease the giver of a handoff committed while it was ACTIVE can reach its node task
/// only after the handoff (the commit's fsync was under way): the new active node takes it
/// at once and the DHCPACK waits for that. It went out only at the next bulk sync before, so
/// the active node expired the client's lease and replicated the expiry back over the newer
/// binding (chaos seed 22: a renewal ACKed during a preemption was lost on both nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_committed_just_before_a_handoff_reaches_the_new_active_node_at_once() {
    let (a, b) = pair(SECRET).await;
    settled(&a, &b).await;
    assert_eq!(state(&b), HaState::Standby);
    let l = lease(60, 2000);
    b.log.put(vec![l.clone()]).await.expect("put");
    assert_eq!(
        b.rep
            .replicate(vec![l.clone()], Duration::from_secs(2))
            .await,
        crate::lease::Replicated::Acked
    );
    assert_eq!(a.log.get(l.ip), Some(l));
    a.stop.cancel();
    b.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_sync_on_connect_merges_both_ways() {
    let la = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (aa, ab) = (la.local_addr().expect("a"), lb.local_addr().expect("b"));
    let la_log = Arc::new(TempStore::new());
    let lb_log = Arc::new(TempStore::new());
    la_log
        .put((1..=40).map(|i| lease(i, 10)).collect())
        .await
        .expect("put");
    // Newer for 30..=40.
    lb_log
        .put((30..=60).map(|i| lease(i, 20)).collect())
        .await
        .expect("put");
    let a = start("node-a", Role::Primary, la, ab, SECRET, la_log.clone()).await;
    let mut b = start("node-b", Role::Secondary, lb, aa, SECRET, lb_log.clone()).await;
    wait_until("both hold all 60 leases", Duration::from_secs(5), || {
        la_log.len() == 60 && lb_log.len() == 60
    })
    .await;
    for i in 30..=40 {
        assert_eq!(
            la_log.get(Ipv4Addr::new(10, 0, 0, i)).map(|l| l.updated_ms),
            Some(20)
        );
    }
    // ha.sync_complete reaches the bus.
    let t = Instant::now();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(5), b.events.rx.recv())
            .await
            .expect("event in time")
            .expect("event");
        if e.kind == EventKind::HaSyncComplete {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    a.stop.cancel();
    b.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_failover_hands_off_and_the_peer_reports_the_reason() {
    let (a, mut b) = pair(SECRET).await;
    settled(&a, &b).await;
    // B refuses: it is not active.
    assert!(b.h.failover().await.is_err());
    // Only the events of the handoff below count (on a slow start B may have been ACTIVE
    // alone for a moment).
    while b.events.rx.try_recv().is_ok() {}
    a.h.failover().await.expect("handoff");
    assert_eq!(state(&b), HaState::Active);
    assert_eq!(state(&a), HaState::Standby);
    let mut reason = None;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(2), b.events.rx.recv()).await {
        if let EventData::Ha(h) = &e.data {
            if e.kind == EventKind::HaFailover && h.new_state == HaState::Active {
                reason = Some(h.reason.clone());
                break;
            }
        }
    }
    assert_eq!(reason.as_deref(), Some("handoff from node-a (API request)"));
    // A handoff asked for by an admin sticks: the primary does not preempt it back...
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((state(&a), state(&b)), (HaState::Standby, HaState::Active));
    // ...until the admin moves it back.
    b.h.failover().await.expect("handoff back");
    assert_eq!((state(&a), state(&b)), (HaState::Active, HaState::Standby));
    a.stop.cancel();
    b.stop.cancel();
}

/// A dials B once more, as a dial slowed by load does after the pair settled: its link is
/// the preferred one, so both ends swap to it.
fn late_dial(a: &TestNode, b: &TestNode) -> tokio::task::JoinHandle<()> {
    let (h, addr) = (a.h.clone(), b.addr);
    tokio::spawn(async move {
        let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        h.establish(s, addr).await.expect("second link");
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_tie_break_swap_loses_neither_replication_nor_a_handoff() {
    let (a, b) = pair(SECRET).await;
    settled(&a, &b).await;
    for i in 0..5u8 {
        let dial = late_dial(&a, &b);
        let l = lease(60 + i, 2000 + u64::from(i));
        a.log.put(vec![l.clone()]).await.expect("put");
        assert_eq!(
            a.rep
                .replicate(vec![l.clone()], Duration::from_secs(2))
                .await,
            crate::lease::Replicated::Acked,
            "round {i}"
        );
        assert_eq!(b.log.get(l.ip), Some(l));
        dial.await.expect("dial");
    }
    // A handoff racing the swap still completes (sent again on the new link if the first
    // copy or its ack went down with the old one).
    let dial = late_dial(&a, &b);
    a.h.failover().await.expect("handoff across a link swap");
    dial.await.expect("dial");
    assert_eq!((state(&a), state(&b)), (HaState::Standby, HaState::Active));
    wait_until("still linked", Duration::from_secs(2), || {
        a.h.status.borrow().peer_connected && b.h.status.borrow().peer_connected
    })
    .await;
    a.stop.cancel();
    b.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_path_hands_off_before_returning() {
    let (a, b) = pair(SECRET).await;
    // Both views, not only both states: A hands off only to a peer it has seen STANDBY, and
    // right after the connect its view of B may still be the SYNCING of the bulk sync.
    settled(&a, &b).await;
    a.h.shutdown(Duration::from_secs(3)).await;
    // By the time shutdown returns, B already serves.
    assert_eq!(state(&b), HaState::Active);
    assert_eq!(state(&a), HaState::Standby);
    a.stop.cancel();
    b.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_never_links_and_is_counted() {
    let (a, b) = pair("a-different-secret-xyz").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!a.h.status.borrow().peer_connected);
    assert!(!b.h.status.borrow().peer_connected);
    let wrong = |n: &TestNode| {
        n.h.metrics()
            .link_errors
            .get_or_create(&KindLabel {
                kind: "wrong_key".into(),
            })
            .get()
    };
    assert!(
        wrong(&a) > 0 && wrong(&b) > 0,
        "a {} b {}",
        wrong(&a),
        wrong(&b)
    );
    a.stop.cancel();
    b.stop.cancel();
}

#[test]
fn both_ends_keep_the_same_link_whatever_order_they_see_them_in() {
    // Links as (dialler, dial number); node-a is the preferred dialler.
    let links = [
        ("node-a", 5),
        ("node-b", 9),
        ("node-a", 7),
        ("node-a", 6),
        ("node-b", 3),
    ];
    let keep = |order: &[usize]| {
        let mut cur = links[order[0]];
        for &i in &order[1..] {
            if replaces(links[i], cur, "node-a") {
                cur = links[i];
            }
        }
        cur
    };
    // Every order of the five: the end result is always the latest of the preferred's.
    let mut order = [0, 1, 2, 3, 4];
    let mut seen = 0;
    permute(&mut order, 0, &mut |o| {
        assert_eq!(keep(o), ("node-a", 7), "order {o:?}");
        seen += 1;
    });
    assert_eq!(seen, 120);
}

fn permute(v: &mut [usize; 5], k: usize, f: &mut dyn FnMut(&[usize])) {
    if k == v.len() {
        return f(v);
    }
    for i in k..v.len() {
        v.swap(k, i);
        permute(v, k + 1, f);
        v.swap(k, i);
    }
}

/// Config agreement over the real link: per-node keys (role, addresses) are no difference; a
/// reload that adds a subnet on A is named on both nodes with both values, with an event; the
/// reload back clears it on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_nodes_name_a_config_difference_and_clear_it_after_a_reload() {
    let (mut a, b) = pair(SECRET).await;
    settled(&a, &b).await;
    wait_until("both agree", Duration::from_secs(5), || {
        a.h.config.borrow().agreed == Some(true) && b.h.config.borrow().agreed == Some(true)
    })
    .await;

    let same = a.updates.borrow().clone();
    let mut wider = (*same).clone();
    wider.subnets = crate::config::parse(
        "[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.pool]]\nrange_start = \"10.0.0.100\"\nrange_end = \"10.0.0.200\"\n",
        std::path::Path::new("t.toml"),
    )
    .expect("parse")
    .subnets;
    a.updates.send(Arc::new(wider)).expect("reload");
    wait_until("both name the difference", Duration::from_secs(5), || {
        let (va, vb) = (a.h.config.borrow().clone(), b.h.config.borrow().clone());
        va.differences.iter().any(|d| {
            d.key == "subnet 10.0.0.0/24 pool[0].range_end"
                && d.here.as_deref() == Some("10.0.0.200")
                && d.there.is_none()
        }) && vb.differences.iter().any(|d| {
            d.key == "subnet 10.0.0.0/24 pool[0].range_end"
                && d.there.as_deref() == Some("10.0.0.200")
                && d.here.is_none()
        })
    })
    .await;
    assert_eq!(
        a.h.config.borrow().differing_sections,
        vec!["subnets".to_string()]
    );
    let ev = next_event(&mut a.events, EventKind::HaConfigMismatch).await;
    let EventData::Config(c) = &ev.data else {
        panic!("{ev:?}")
    };
    assert_eq!(c.peer, "node-b");
    assert!(
        c.differences.iter().any(|d| d.starts_with(
            "subnet 10.0.0.0/24 pool[0].range_end: 10.0.0.200 here, (not set) on node-b"
        )),
        "{c:?}"
    );

    a.updates.send(same).expect("reload back");
    wait_until("both agree again", Duration::from_secs(5), || {
        let (va, vb) = (a.h.config.borrow().clone(), b.h.config.borrow().clone());
        va.agreed == Some(true)
            && vb.agreed == Some(true)
            && va.differences.is_empty()
            && vb.differences.is_empty()
    })
    .await;
    next_event(&mut a.events, EventKind::HaConfigAgreed).await;
}

async fn next_event(
    sub: &mut crate::events::Subscription,
    kind: EventKind,
) -> crate::events::Event {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.rx.recv()).await {
            Ok(Some(e)) if e.kind == kind => return (*e).clone(),
            Ok(Some(_)) => continue,
            _ => panic!("no {kind} event"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_keeps_the_last_ten_transitions_with_their_reasons() {
    let (a, b) = pair(SECRET).await;
    settled(&a, &b).await;
    // Twelve handoffs, alternating: each is one transition on each node, so A has made
    // more than ten by the end.
    for i in 0..12 {
        let (from, to) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        // Each end sees the other's new state first (a handoff needs a standby peer).
        wait_until("the views agree", Duration::from_secs(5), || {
            let (sf, st) = (from.h.status.borrow().clone(), to.h.status.borrow().clone());
            sf.state == HaState::Active
                && st.state == HaState::Standby
                && sf.peer_state == Some(HaState::Standby)
                && st.peer_state == Some(HaState::Active)
        })
        .await;
        from.h.failover().await.expect("handoff");
    }
    assert_eq!((state(&a), state(&b)), (HaState::Active, HaState::Standby));
    let st = a.h.status.borrow().clone();
    assert_eq!(
        st.transitions.len(),
        crate::ha::TRANSITION_HISTORY,
        "{st:?}"
    );
    assert!(
        st.transitions.windows(2).all(|w| w[0].at <= w[1].at),
        "{st:?}"
    );
    let last = st.transitions.last().expect("a transition");
    assert_eq!(
        (last.from, last.to),
        (HaState::Standby, HaState::Active),
        "{st:?}"
    );
    assert_eq!(last.epoch, st.epoch);
    assert_eq!(last.reason, "handoff from node-b (API request)");
    let before = &st.transitions[st.transitions.len() - 2];
    assert_eq!(
        (before.from, before.to),
        (HaState::Active, HaState::Standby)
    );
    assert!(!before.reason.is_empty());
    assert_eq!(st.peer_node.as_deref(), Some("node-b"));
    assert_eq!(st.peer_epoch, Some(b.h.status.borrow().epoch));
    a.stop.cancel();
    b.stop.cancel();
}
