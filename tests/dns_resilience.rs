//! DNS that outlives its upstreams: serve-stale (RFC 8767) with its client response timer,
//! prefetch, conditional forwarding (`[[dns.zone_override]]`), hostile upstream replies and
//! reloads of these settings, over real sockets against a fake upstream written here whose
//! behaviour each test switches while the proxy runs.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use athena_dhcpd::config::{Config, DnsConfig, DnsZoneOverride, Dur};
use athena_dhcpd::dns::{self, DnsOptions, DnsServer};
use athena_dhcpd::health::Health;
use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{rdata, Name, RData, Record, RecordType};
use prometheus_client::registry::Registry;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// A fake upstream whose behaviour changes at run time

const ANSWER: u8 = 0;
const SILENT: u8 = 1;
const SERVFAIL: u8 = 2;
/// Before the real reply: one with a wrong ID, one for another question, one of garbage.
const HOSTILE_FIRST: u8 = 3;
/// Answers, but only [`SLOW_BY`] after the query came in.
const SLOW: u8 = 4;
const SLOW_BY: Duration = Duration::from_secs(3);

struct Upstream {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// TTL of the A records it gives.
    ttl: Arc<AtomicU32>,
    /// The A record it gives: 198.51.100.<octet>.
    octet: Arc<AtomicU8>,
    /// Every query: the name asked (lowercase, with the final dot) and when.
    seen: Arc<Mutex<Vec<(String, Instant)>>>,
    /// The DNS ID and source port of the last query.
    last_query: Arc<Mutex<Option<(u16, u16)>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Upstream {
    async fn start(octet: u8, ttl: u32) -> Upstream {
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = udp.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(ANSWER));
        let ttl = Arc::new(AtomicU32::new(ttl));
        let octet = Arc::new(AtomicU8::new(octet));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let last_query = Arc::new(Mutex::new(None));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (m, t, o, s) = (mode.clone(), ttl.clone(), octet.clone(), seen.clone());
        let lq = last_query.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, from) = tokio::select! {
                    _ = &mut stopped => return,
                    r = udp.recv_from(&mut buf) => match r { Ok(r) => r, Err(_) => return },
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let name = q.queries()[0].name().to_ascii().to_ascii_lowercase();
                *lq.lock().unwrap() = Some((q.id(), from.port()));
                s.lock().unwrap().push((name, Instant::now()));
                let mode = m.load(Ordering::SeqCst);
                let qtype = q.queries()[0].query_type();
                let reply = |id: u16, qname: Name, rcode: ResponseCode| {
                    let mut r = Message::new();
                    r.set_id(id)
                        .set_message_type(MessageType::Response)
                        .set_recursion_desired(true)
                        .set_recursion_available(true)
                        .set_response_code(rcode)
                        .add_query(Query::query(qname.clone(), qtype));
                    let octet = o.load(Ordering::SeqCst);
                    // A: 198.51.100.<octet>; PTR: up<octet>.example.
                    let data = match qtype {
                        RecordType::PTR => RData::PTR(rdata::PTR(
                            Name::from_ascii(format!("up{octet}.example.")).unwrap(),
                        )),
                        _ => RData::A(rdata::A(Ipv4Addr::new(198, 51, 100, octet))),
                    };
                    if rcode == ResponseCode::NoError {
                        r.add_answer(Record::from_rdata(qname, t.load(Ordering::SeqCst), data));
                    }
                    r.to_vec().unwrap()
                };
                let qname = q.queries()[0].name().clone();
                match mode {
                    SILENT => continue,
                    SLOW => {
                        let late = reply(q.id(), qname, ResponseCode::NoError);
                        let udp = udp.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(SLOW_BY).await;
                            let _ = udp.send_to(&late, from).await;
                        });
                    }
                    SERVFAIL => {
                        let _ = udp
                            .send_to(&reply(q.id(), qname, ResponseCode::ServFail), from)
                            .await;
                    }
                    _ => {
                        if mode == HOSTILE_FIRST {
                            let other = Name::from_ascii("evil.example.").unwrap();
                            for bad in [
                                reply(q.id().wrapping_add(1), qname.clone(), ResponseCode::NoError),
                                reply(q.id(), other, ResponseCode::NoError),
                                vec![0xde, 0xad],
                            ] {
                                let _ = udp.send_to(&bad, from).await;
                            }
                        }
                        let _ = udp
                            .send_to(&reply(q.id(), qname, ResponseCode::NoError), from)
                            .await;
                    }
                }
            }
        });
        Upstream {
            addr,
            mode,
            ttl,
            octet,
            seen,
            last_query,
            _stop: stop,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// How often `name` (e.g. "www.example.com.") was asked.
    fn asked(&self, name: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .count()
    }

    fn asked_at(&self, name: &str) -> Vec<Instant> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, t)| *t)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy under test and a client

struct Proxy {
    server: DnsServer,
    _shutdown: tokio_util::sync::DropGuard,
}

fn config(forwarders: &[SocketAddr]) -> DnsConfig {
    DnsConfig {
        enabled: true,
        forwarders: forwarders.iter().map(|a| a.to_string()).collect(),
        upstream_timeout: Dur::millis(300),
        ..Default::default()
    }
}

/// A proxy on loopback; a name served stale is retried upstream every `stale_retry`.
fn start(cfg: DnsConfig, stale_retry: Duration) -> Proxy {
    let sockets = dns::bind_addrs(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .expect("bind loopback");
    let shutdown = CancellationToken::new();
    let server = DnsServer::start(
        sockets,
        &cfg,
        "test-node",
        &mut Registry::default(),
        &Health::new(),
        shutdown.clone(),
        DnsOptions {
            stale_retry,
            ..Default::default()
        },
    )
    .expect("start");
    Proxy {
        server,
        _shutdown: shutdown.drop_guard(),
    }
}

async fn ask(server: SocketAddr, name: &str) -> Message {
    ask_type(server, name, RecordType::A).await
}

async fn ask_type(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let mut m = Message::new();
    m.set_id(rand::random())
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m.set_edns(Edns::new());
    let q = m.to_vec().unwrap();
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(server).await.unwrap();
    s.send(&q).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no answer for {name}"))
        .unwrap();
    let r = Message::from_vec(&buf[..n]).expect("a well-formed reply");
    assert_eq!(r.id(), m.id());
    r
}

/// The A answer and its TTL, if any.
fn a_of(m: &Message) -> Option<(Ipv4Addr, u32)> {
    m.answers().iter().find_map(|r| match r.data() {
        RData::A(a) => Some((a.0, r.ttl())),
        _ => None,
    })
}

fn outcome(p: &Proxy, o: &str) -> u64 {
    p.server.stats()["queries"][o].as_u64().unwrap_or(0)
}

async fn eventually(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn ip(octet: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, octet)
}

// ---------------------------------------------------------------------------------------------
// Serve-stale

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_name_is_answered_stale_while_upstream_is_dead_and_fresh_once_it_returns() {
    let up = Upstream::start(1, 1).await;
    let p = start(config(&[up.addr]), Duration::from_secs(1));
    let dns = p.server.udp_addr();
    let fresh = ask(dns, "www.example.com").await;
    assert_eq!(a_of(&fresh), Some((ip(1), 1)));
    // The upstream dies; the cached answer expires.
    up.set(SILENT);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let asked = Instant::now();
    let stale = ask(dns, "www.example.com").await;
    assert_eq!(stale.response_code(), ResponseCode::NoError);
    assert_eq!(
        a_of(&stale),
        Some((ip(1), 30)),
        "the expired answer, TTL 30 s"
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(250),
        "only after the forwarder timed out ({:?})",
        asked.elapsed()
    );
    assert_eq!(up.asked("www.example.com."), 2);
    // A name never seen before has nothing to fall back to.
    let never = ask(dns, "never.example.com").await;
    assert_eq!(never.response_code(), ResponseCode::ServFail);
    // While the failure is recent, stale answers come at once, without asking upstream.
    let asked = Instant::now();
    let again = ask(dns, "www.example.com").await;
    assert_eq!(a_of(&again), Some((ip(1), 30)));
    assert!(asked.elapsed() < Duration::from_millis(200));
    assert_eq!(up.asked("www.example.com."), 2);
    assert_eq!(outcome(&p, "stale"), 2);
    assert_eq!(outcome(&p, "servfail"), 1);
    // Upstream returns with a new address: after the retry period a query (still answered
    // stale) refreshes the name in the background, and the next ones are fresh.
    up.octet.store(2, Ordering::SeqCst);
    up.ttl.store(300, Ordering::SeqCst);
    up.set(ANSWER);
    eventually(
        "a fresh answer after upstream returned",
        Duration::from_secs(5),
        async || {
            a_of(&ask(dns, "www.example.com").await).is_some_and(|(a, ttl)| a == ip(2) && ttl > 30)
        },
    )
    .await;
    assert_eq!(up.asked("www.example.com."), 3, "one background refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_serve_stale_or_past_stale_max_an_expired_name_gets_servfail() {
    let up = Upstream::start(1, 1).await;
    let mut off = config(&[up.addr]);
    off.serve_stale = false;
    let p_off = start(off, Duration::from_secs(1));
    let mut short = config(&[up.addr]);
    short.stale_max = Dur::secs(1);
    let p_short = start(short, Duration::from_secs(1));
    for p in [&p_off, &p_short] {
        assert_eq!(
            a_of(&ask(p.server.udp_addr(), "www.example.com").await),
            Some((ip(1), 1))
        );
    }
    up.set(SERVFAIL);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let m = ask(p_off.server.udp_addr(), "www.example.com").await;
    assert_eq!(
        m.response_code(),
        ResponseCode::ServFail,
        "serve_stale = false"
    );
    let m = ask(p_short.server.udp_addr(), "www.example.com").await;
    assert_eq!(a_of(&m), Some((ip(1), 30)), "within stale_max");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let m = ask(p_short.server.udp_addr(), "www.example.com").await;
    assert_eq!(
        m.response_code(),
        ResponseCode::ServFail,
        "stale_max = 1s after the 1 s TTL ran out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_every_forwarder_is_failing_other_expired_names_are_answered_stale_at_once() {
    let up = Upstream::start(1, 1).await;
    let p = start(config(&[up.addr]), Duration::from_secs(30));
    let dns = p.server.udp_addr();
    for n in ["a", "b"] {
        ask(dns, &format!("{n}.example.com")).await;
    }
    up.set(SILENT);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The first expired name finds the upstream dead the slow way...
    let asked = Instant::now();
    assert_eq!(a_of(&ask(dns, "a.example.com").await), Some((ip(1), 30)));
    assert!(asked.elapsed() >= Duration::from_millis(250));
    // ... the next one does not wait again; its refresh runs in the background.
    let asked = Instant::now();
    assert_eq!(a_of(&ask(dns, "b.example.com").await), Some((ip(1), 30)));
    assert!(
        asked.elapsed() < Duration::from_millis(200),
        "at once: {:?}",
        asked.elapsed()
    );
    eventually(
        "the background refresh",
        Duration::from_secs(2),
        async || up.asked("b.example.com.") == 2,
    )
    .await;
    // The upstream returns: the mark clears with its first answer, expired names are fresh.
    up.octet.store(2, Ordering::SeqCst);
    up.ttl.store(300, Ordering::SeqCst);
    up.set(ANSWER);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        a_of(&ask(dns, "c.example.com").await),
        Some((ip(2), 300)),
        "a new name clears the failure mark"
    );
    ask(dns, "d.example.com").await;
    assert_eq!(
        a_of(&ask(dns, "d.example.com").await).map(|(a, _)| a),
        Some(ip(2))
    );
}

// ---------------------------------------------------------------------------------------------
// The client response timer (RFC 8767 §5): a slow upstream, not a dead one

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gets_clients_the_stale_answer_after_the_client_timeout_and_refreshes_the_cache_later(
) {
    let up = Upstream::start(1, 1).await;
    let mut cfg = config(&[up.addr]);
    // Longer than the upstream's delay: it is slow, not failed.
    cfg.upstream_timeout = Dur::secs(5);
    assert_eq!(
        cfg.stale_answer_client_timeout,
        Dur::millis(1800),
        "the default"
    );
    let p = start(cfg, Duration::from_secs(30));
    let dns = p.server.udp_addr();
    assert_eq!(a_of(&ask(dns, "slow.example.com").await), Some((ip(1), 1)));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The upstream now takes 3 s, and has a new address for the name.
    up.octet.store(2, Ordering::SeqCst);
    up.ttl.store(300, Ordering::SeqCst);
    up.set(SLOW);
    let asked = Instant::now();
    let timed = async |name: &'static str| {
        let m = ask(dns, name).await;
        (a_of(&m), asked.elapsed())
    };
    // The expired name, and at the same time a name never seen (nothing stale to give).
    let ((stale, stale_took), (new, new_took)) =
        tokio::join!(timed("slow.example.com"), timed("new.example.com"));
    assert_eq!(stale, Some((ip(1), 30)), "the expired answer, TTL 30 s");
    assert!(
        stale_took >= Duration::from_millis(1700) && stale_took < Duration::from_millis(2700),
        "answered stale after the 1.8 s client timeout, not the upstream's 3 s: {stale_took:?}"
    );
    assert_eq!(
        new,
        Some((ip(2), 300)),
        "a name never seen waits for the upstream"
    );
    assert!(new_took >= Duration::from_millis(2900), "{new_took:?}");
    assert_eq!(up.asked("slow.example.com."), 2);
    // The upstream's late answer was stored by the query still running: fresh, and no
    // second upstream query for it. Both names' upstream answers leave together, so the new
    // name's reply can reach us a moment before the slow name's answer is stored: wait that
    // moment out rather than race it.
    tokio::time::sleep_until((asked + SLOW_BY + Duration::from_millis(300)).into()).await;
    let m = ask(dns, "slow.example.com").await;
    assert_eq!(a_of(&m).map(|(a, _)| a), Some(ip(2)), "{m:?}");
    assert!(a_of(&m).is_some_and(|(_, ttl)| ttl > 290));
    assert_eq!(up.asked("slow.example.com."), 2);
    assert_eq!(outcome(&p, "stale"), 1);
}

/// `slow.example.com` answered once (the address [`ip`]`(1)`, TTL 1 s) and then expired; the
/// upstream now takes [`SLOW_BY`] and has [`ip`]`(2)` for it. The upstream timeout (5 s) is
/// longer than its delay: it is slow, not failed. `client_timeout`:
/// `stale_answer_client_timeout`. Returns the upstream, the proxy and its address.
async fn expired_behind_a_slow_upstream(client_timeout: Dur) -> (Upstream, Proxy, SocketAddr) {
    let up = Upstream::start(1, 1).await;
    let mut cfg = config(&[up.addr]);
    cfg.upstream_timeout = Dur::secs(5);
    cfg.stale_answer_client_timeout = client_timeout;
    let p = start(cfg, Duration::from_secs(30));
    let dns = p.server.udp_addr();
    ask(dns, "slow.example.com").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    up.octet.store(2, Ordering::SeqCst);
    up.set(SLOW);
    (up, p, dns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_the_client_timeout_and_the_slow_answer_queries_get_the_stale_answer_at_once() {
    let (up, _p, dns) = expired_behind_a_slow_upstream(Dur::millis(500)).await;
    let asked = Instant::now();
    assert_eq!(a_of(&ask(dns, "slow.example.com").await), Some((ip(1), 30)));
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "the configured 500 ms: {took:?}"
    );
    let asked = Instant::now();
    assert_eq!(a_of(&ask(dns, "slow.example.com").await), Some((ip(1), 30)));
    assert!(
        asked.elapsed() < Duration::from_millis(300),
        "at once: {:?}",
        asked.elapsed()
    );
    assert_eq!(
        up.asked("slow.example.com."),
        2,
        "no second upstream query meanwhile"
    );
    eventually(
        "the slow answer stored",
        Duration::from_secs(4),
        async || a_of(&ask(dns, "slow.example.com").await).is_some_and(|(a, _)| a == ip(2)),
    )
    .await;
    assert_eq!(up.asked("slow.example.com."), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_client_timeout_off_clients_wait_for_the_slow_upstream() {
    let (_up, p, dns) = expired_behind_a_slow_upstream(Dur::secs(0)).await;
    let asked = Instant::now();
    let m = ask(dns, "slow.example.com").await;
    assert_eq!(a_of(&m).map(|(a, _)| a), Some(ip(2)));
    assert!(
        asked.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(outcome(&p, "stale"), 0);
}

// ---------------------------------------------------------------------------------------------
// Reload (the channel the daemon's SIGHUP handler sends to)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_zone_overrides_and_serve_stale() {
    let default_up = Upstream::start(1, 1).await;
    let corp = Upstream::start(7, 300).await;
    let mut cfg = config(&[default_up.addr]);
    cfg.serve_stale = false;
    let p = start(cfg.clone(), Duration::from_secs(1));
    let mut full = Config {
        dns: cfg,
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(full.clone()));
    let stop = CancellationToken::new();
    p.server.follow_config(rx, stop.clone());
    let dns = p.server.udp_addr();
    assert_eq!(a_of(&ask(dns, "a.corp.example").await), Some((ip(1), 1)));
    assert_eq!(a_of(&ask(dns, "www.example.com").await), Some((ip(1), 1)));

    full.dns.zone_overrides = vec![DnsZoneOverride {
        zone: "corp.example".into(),
        forwarders: vec![corp.addr.to_string()],
    }];
    full.dns.serve_stale = true;
    tx.send(Arc::new(full.clone())).unwrap();
    eventually(
        "the new zone override",
        Duration::from_secs(5),
        async || a_of(&ask(dns, "b.corp.example").await).is_some_and(|(a, _)| a == ip(7)),
    )
    .await;
    assert_eq!(corp.asked("b.corp.example."), 1);
    assert_eq!(
        p.server.stats()["zone_overrides"][0]["zone"],
        "corp.example"
    );

    // serve_stale is on now: the default upstream dies, the expired name is answered stale.
    default_up.set(SILENT);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(a_of(&ask(dns, "www.example.com").await), Some((ip(1), 30)));

    // And off again: the same name, still unanswerable upstream, gets SERVFAIL.
    full.dns.serve_stale = false;
    full.dns.zone_overrides.clear();
    tx.send(Arc::new(full)).unwrap();
    eventually("serve-stale off", Duration::from_secs(5), async || {
        ask(dns, "www.example.com").await.response_code() == ResponseCode::ServFail
    })
    .await;
    assert!(p.server.stats()["zone_overrides"]
        .as_array()
        .is_some_and(|z| z.is_empty()));
    stop.cancel();
}

// ---------------------------------------------------------------------------------------------
// Prefetch

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_asked_in_the_last_tenth_of_its_ttl_is_refreshed_before_it_expires() {
    let up = Upstream::start(1, 2).await;
    let p = start(config(&[up.addr]), Duration::from_secs(1));
    let dns = p.server.udp_addr();
    assert_eq!(
        a_of(&ask(dns, "pop.example.com").await).map(|a| a.0),
        Some(ip(1))
    );
    let stored = up.asked_at("pop.example.com.")[0];
    up.octet.store(2, Ordering::SeqCst);
    // Not yet in the last tenth: a plain hit.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        a_of(&ask(dns, "pop.example.com").await).map(|a| a.0),
        Some(ip(1))
    );
    assert_eq!(up.asked("pop.example.com."), 1);
    // In the last tenth (1.8-2 s): answered from the cache, and refreshed in the background.
    let until = stored + Duration::from_millis(1850);
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    assert_eq!(
        a_of(&ask(dns, "pop.example.com").await).map(|a| a.0),
        Some(ip(1))
    );
    // More hits meanwhile start no second refresh (they may already see the new answer).
    for _ in 0..2 {
        ask(dns, "pop.example.com").await;
    }
    eventually(
        "the prefetch upstream",
        Duration::from_secs(1),
        async || up.asked("pop.example.com.") == 2,
    )
    .await;
    let refreshed = up.asked_at("pop.example.com.")[1];
    assert!(
        refreshed < stored + Duration::from_secs(2),
        "upstream asked {:?} after the first answer, before the 2 s TTL ran out",
        refreshed - stored
    );
    // After the old TTL: the refreshed answer, from the cache.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        a_of(&ask(dns, "pop.example.com").await).map(|a| a.0),
        Some(ip(2))
    );
    assert_eq!(up.asked("pop.example.com."), 2, "once only");
    assert_eq!(p.server.stats()["cache"]["prefetches"], 1);
    assert_eq!(outcome(&p, "forwarded"), 1);
    assert_eq!(outcome(&p, "cached"), 5);
}

// ---------------------------------------------------------------------------------------------
// Conditional forwarding

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_overrides_route_by_the_longest_matching_zone_and_are_cached() {
    let default = Upstream::start(1, 300).await;
    let corp = Upstream::start(2, 300).await;
    let lab = Upstream::start(3, 300).await;
    let reverse = Upstream::start(4, 300).await;
    let mut cfg = config(&[default.addr]);
    let zone = |z: &str, up: &Upstream| DnsZoneOverride {
        zone: z.into(),
        forwarders: vec![up.addr.to_string()],
    };
    // Listed shortest first: the order in the file does not matter, the longest zone wins.
    cfg.zone_overrides = vec![
        zone("Corp.Example.", &corp),
        zone("lab.corp.example", &lab),
        zone("10.in-addr.arpa", &reverse),
    ];
    let p = start(cfg, Duration::from_secs(1));
    let dns = p.server.udp_addr();
    let from = async |name: &str| a_of(&ask(dns, name).await).map(|a| a.0);
    assert_eq!(from("www.example.com").await, Some(ip(1)));
    assert_eq!(from("corp.example").await, Some(ip(2)), "the zone apex");
    assert_eq!(from("HOST.corp.example").await, Some(ip(2)));
    assert_eq!(
        from("x.lab.corp.example").await,
        Some(ip(3)),
        "the longer zone"
    );
    assert_eq!(from("lab.corp.example").await, Some(ip(3)));
    assert_eq!(
        from("xcorp.example").await,
        Some(ip(1)),
        "zones match at label boundaries"
    );
    let ptr = ask_type(dns, "5.1.0.10.in-addr.arpa", RecordType::PTR).await;
    let target = ptr.answers().iter().find_map(|r| match r.data() {
        RData::PTR(n) => Some(n.0.to_ascii()),
        _ => None,
    });
    assert_eq!(
        target.as_deref(),
        Some("up4.example."),
        "the reverse zone's upstream"
    );
    let ptr = ask_type(dns, "5.1.0.192.in-addr.arpa", RecordType::PTR).await;
    assert_eq!(
        ptr.answers()[0]
            .data()
            .as_ptr()
            .map(|n| n.0.to_ascii())
            .as_deref(),
        Some("up1.example.")
    );
    // Cached like any other answer.
    assert_eq!(from("host.corp.example").await, Some(ip(2)));
    assert_eq!(corp.asked("host.corp.example."), 1);
    assert_eq!(default.asked("host.corp.example."), 0);
    let stats = p.server.stats();
    let zones = stats["zone_overrides"].as_array().unwrap();
    assert_eq!(zones.len(), 3, "{stats}");
    assert_eq!(
        zones[0]["zone"], "lab.corp.example",
        "longest first: {stats}"
    );
    assert_eq!(zones[0]["upstreams"][0]["queries"], 2, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_zone_override_gets_servfail_and_its_names_are_served_stale() {
    let default = Upstream::start(1, 300).await;
    let corp = Upstream::start(2, 1).await;
    let mut cfg = config(&[default.addr]);
    cfg.zone_overrides = vec![DnsZoneOverride {
        zone: "corp.example".into(),
        forwarders: vec![corp.addr.to_string()],
    }];
    let p = start(cfg, Duration::from_secs(1));
    let dns = p.server.udp_addr();
    assert_eq!(a_of(&ask(dns, "a.corp.example").await), Some((ip(2), 1)));
    corp.set(SILENT);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(a_of(&ask(dns, "a.corp.example").await), Some((ip(2), 30)));
    let m = ask(dns, "b.corp.example").await;
    assert_eq!(
        m.response_code(),
        ResponseCode::ServFail,
        "never falls back to the default forwarders"
    );
    assert_eq!(default.asked("b.corp.example."), 0);
}

// ---------------------------------------------------------------------------------------------
// Hostile upstream replies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_replies_with_a_wrong_id_question_or_source_or_garbage_are_dropped_and_counted() {
    let up = Upstream::start(1, 300).await;
    up.set(HOSTILE_FIRST);
    let p = start(config(&[up.addr]), Duration::from_secs(1));
    let dns = p.server.udp_addr();
    let m = ask(dns, "www.example.com").await;
    assert_eq!(
        a_of(&m),
        Some((ip(1), 300)),
        "the real reply, after three bad ones"
    );
    let stats = p.server.stats();
    let by = &stats["malformed_by_reason"];
    assert_eq!(by["upstream/wrong_id"], 1, "{stats}");
    assert_eq!(by["upstream/wrong_question"], 1, "{stats}");
    assert_eq!(by["upstream/short"], 1, "{stats}");
    // A reply from another address with the right ID and question, sent to the proxy's
    // query socket before the real one: the connected socket never delivers it.
    let spoofer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let slow = Upstream::start(7, 300).await;
    slow.set(SILENT);
    let p2 = start(config(&[slow.addr]), Duration::from_secs(1));
    let dns2 = p2.server.udp_addr();
    let asking = tokio::spawn(async move { ask(dns2, "spoof.example.com").await });
    eventually("the query upstream", Duration::from_secs(2), async || {
        slow.asked("spoof.example.com.") == 1
    })
    .await;
    // The fake upstream only saw the ID; rebuild a well-formed reply carrying 6.6.6.6.
    let (id, port) = {
        let seen = slow.last_query.lock().unwrap();
        seen.expect("query recorded")
    };
    let mut forged = Message::new();
    forged
        .set_id(id)
        .set_message_type(MessageType::Response)
        .add_query(Query::query(
            Name::from_ascii("spoof.example.com.").unwrap(),
            RecordType::A,
        ))
        .add_answer(Record::from_rdata(
            Name::from_ascii("spoof.example.com.").unwrap(),
            300,
            RData::A(rdata::A(Ipv4Addr::new(6, 6, 6, 6))),
        ));
    spoofer
        .send_to(
            &forged.to_vec().unwrap(),
            SocketAddr::from(([127, 0, 0, 1], port)),
        )
        .await
        .unwrap();
    let m = asking.await.unwrap();
    assert_eq!(
        m.response_code(),
        ResponseCode::ServFail,
        "the forged reply was never accepted: {m:?}"
    );
}
