//! The DNS proxy over real sockets: a loopback server in this process, tiny upstream DNS
//! servers written here (so each test controls what upstream does and counts what it sees),
//! hostile input, and, in namespaces, the daemon answering on a VIP added after it started.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use athena_dhcpd::config::{DnsConfig, DnsRecordConfig, Dur};
use athena_dhcpd::dns::{self, DnsOptions, DnsServer, TcpOptions};
use athena_dhcpd::events::{Event, EventBus, EventData, EventKind, LeaseEvent};
use athena_dhcpd::health::Health;
use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{rdata, DNSClass, Name, RData, Record, RecordType};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// A tiny upstream

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Answers every A query with `answers` records 192.0.2.x, TTL 300.
    Answer,
    /// Reads queries and never answers.
    Silent,
    ServFail,
    /// UDP replies are empty with TC set; TCP replies are complete.
    TruncateUdp,
}

struct Upstream {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    /// The DNS ID and the UDP source port of every query received, in arrival order.
    udp_seen: Arc<std::sync::Mutex<Vec<(u16, u16)>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn upstream_reply(query: &[u8], mode: Mode, answers: usize, over_tcp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut m = Message::new();
    m.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .add_queries(q.queries().to_vec());
    match mode {
        Mode::Silent => return None,
        Mode::ServFail => {
            m.set_response_code(ResponseCode::ServFail);
        }
        Mode::TruncateUdp if !over_tcp => {
            m.set_truncated(true);
        }
        _ => {
            let name = q.queries()[0].name().clone();
            for i in 0..answers {
                m.add_answer(Record::from_rdata(
                    name.clone(),
                    300,
                    RData::A(rdata::A(Ipv4Addr::new(192, 0, 2, (i % 250) as u8 + 1))),
                ));
            }
        }
    }
    m.to_vec().ok()
}

async fn upstream(mode: Mode, answers: usize, delay: Duration) -> Upstream {
    // The same port for UDP and TCP, as a real server has: the kernel picks a free UDP port,
    // which another test (or the daemon's own upstream sockets) may hold over TCP; try again.
    let (udp, tcp) = {
        let mut tries = 0;
        loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            match TcpListener::bind(udp.local_addr().unwrap()).await {
                Ok(tcp) => break (udp, tcp),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => tries += 1,
                Err(e) => panic!("upstream TCP listener: {e}"),
            }
        }
    };
    let addr = udp.local_addr().unwrap();
    let udp_queries = Arc::new(AtomicUsize::new(0));
    let tcp_queries = Arc::new(AtomicUsize::new(0));
    let udp_seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let (uq, tq, seen) = (udp_queries.clone(), tcp_queries.clone(), udp_seen.clone());
    tokio::spawn(async move {
        let udp = Arc::new(udp);
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                r = udp.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { return };
                    uq.fetch_add(1, Ordering::SeqCst);
                    if n >= 2 {
                        let id = u16::from_be_bytes([buf[0], buf[1]]);
                        seen.lock().unwrap().push((id, from.port()));
                    }
                    if let Some(reply) = upstream_reply(&buf[..n], mode, answers, false) {
                        let udp = udp.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = udp.send_to(&reply, from).await;
                        });
                    }
                }
                c = tcp.accept() => {
                    let Ok((mut s, _)) = c else { return };
                    let tq = tq.clone();
                    tokio::spawn(async move {
                        while let Ok(len) = s.read_u16().await {
                            let mut q = vec![0u8; len as usize];
                            if s.read_exact(&mut q).await.is_err() { return }
                            tq.fetch_add(1, Ordering::SeqCst);
                            if let Some(r) = upstream_reply(&q, mode, answers, true) {
                                let mut f = (r.len() as u16).to_be_bytes().to_vec();
                                f.extend_from_slice(&r);
                                if s.write_all(&f).await.is_err() { return }
                            }
                        }
                    });
                }
            }
        }
    });
    Upstream {
        addr,
        udp_queries,
        tcp_queries,
        udp_seen,
        _stop: stop,
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test and a client

struct Proxy {
    server: DnsServer,
    health: Health,
    bus: EventBus,
    _shutdown: tokio_util::sync::DropGuard,
}

fn config(forwarders: &[SocketAddr]) -> DnsConfig {
    DnsConfig {
        enabled: true,
        forwarders: forwarders.iter().map(|a| a.to_string()).collect(),
        domain: Some("home.lan".into()),
        register_leases: true,
        upstream_timeout: Dur::millis(300),
        records: vec![DnsRecordConfig {
            name: "router.home.lan".into(),
            rtype: "A".into(),
            value: "10.0.0.1".into(),
            ttl: 120,
        }],
        ..Default::default()
    }
}

fn start(cfg: DnsConfig, tcp_idle: Duration) -> Proxy {
    start_on("127.0.0.1:0", cfg, tcp_idle)
}

fn start_on(listen: &str, cfg: DnsConfig, tcp_idle: Duration) -> Proxy {
    let sockets =
        dns::bind_addrs(listen.parse().unwrap(), listen.parse().unwrap()).expect("bind loopback");
    let shutdown = CancellationToken::new();
    let health = Health::new();
    let bus = EventBus::new();
    let server = DnsServer::start(
        sockets,
        &cfg,
        "test-node",
        &mut Registry::default(),
        &health,
        shutdown.clone(),
        DnsOptions {
            tcp: TcpOptions {
                idle_timeout: tcp_idle,
                max_connections: 16,
            },
            udp_workers: 1,
            ..Default::default()
        },
    )
    .expect("start");
    server.follow_leases(bus.subscribe("dns-zone", 64), shutdown.clone());
    Proxy {
        server,
        health,
        bus,
        _shutdown: shutdown.drop_guard(),
    }
}

fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(rand::random())
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

async fn ask_raw(server: SocketAddr, q: &[u8]) -> Option<Message> {
    let s = UdpSocket::bind(if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    })
    .await
    .unwrap();
    s.connect(server).await.unwrap();
    s.send(q).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    let m = Message::from_vec(&buf[..n]).expect("a well-formed reply");
    assert_eq!(&buf[..2], &q[..2], "reply ID matches");
    Some(m)
}

async fn ask(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    ask_raw(server, &query(name, rtype, Some(1232)))
        .await
        .unwrap_or_else(|| panic!("no answer for {name} {rtype}"))
}

async fn ask_tcp(stream: &mut TcpStream, q: &[u8]) -> std::io::Result<Message> {
    let mut f = (q.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(q);
    stream.write_all(&f).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf).await?;
    Ok(Message::from_vec(&buf).expect("well-formed TCP reply"))
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

// ---------------------------------------------------------------------------------------------
// Pipeline

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_answers_are_cached_so_upstream_sees_one_query_for_two() {
    let up = upstream(Mode::Answer, 1, Duration::ZERO).await;
    let p = start(config(&[up.addr]), Duration::from_secs(10));
    let asked = Instant::now();
    let first = ask(p.server.udp_addr(), "www.example.com", RecordType::A).await;
    let answered = Instant::now();
    assert_eq!(first.response_code(), ResponseCode::NoError);
    assert_eq!(a_records(&first), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert!(!first.authoritative());
    assert_eq!(
        first.answers()[0].ttl(),
        300,
        "the upstream's TTL, untouched"
    );
    // Over a second later the cached copy's TTL has counted down by its age in whole
    // seconds: at least the time between the two queries, at most the whole exchange.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let min_age = answered.elapsed().as_secs() as u32;
    let second = ask(p.server.udp_addr(), "WWW.Example.com", RecordType::A).await;
    let max_age = asked.elapsed().as_secs() as u32;
    assert_eq!(a_records(&second), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(second.queries()[0].name().to_ascii(), "WWW.Example.com.");
    let ttl = second.answers()[0].ttl();
    assert!(
        (300 - max_age..=300 - min_age).contains(&ttl),
        "TTL {ttl} after {min_age}..{max_age} s in the cache"
    );
    assert_eq!(
        up.udp_queries.load(Ordering::SeqCst),
        1,
        "the second came from the cache"
    );
    assert_eq!(p.server.metrics().cache_hits(), 1);
    // Another type is another question.
    ask(p.server.udp_addr(), "www.example.com", RecordType::AAAA).await;
    assert_eq!(up.udp_queries.load(Ordering::SeqCst), 2);
    // Flushing empties the cache: the next query goes upstream again.
    assert_eq!(p.server.flush_cache(), 2);
    ask(p.server.udp_addr(), "www.example.com", RecordType::A).await;
    assert_eq!(up.udp_queries.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_queries_in_flight_share_one_upstream_query() {
    let up = upstream(Mode::Answer, 1, Duration::from_millis(300)).await;
    let mut cfg = config(&[up.addr]);
    cfg.upstream_timeout = Dur::secs(3);
    let p = start(cfg, Duration::from_secs(10));
    let addr = p.server.udp_addr();
    let (a, b) = tokio::join!(
        ask(addr, "slow.example.org", RecordType::A),
        ask(addr, "slow.example.org", RecordType::A)
    );
    assert_eq!(a_records(&a), a_records(&b));
    assert_eq!(up.udp_queries.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_forwarder_is_skipped_and_all_failing_gives_servfail() {
    let silent = upstream(Mode::Silent, 0, Duration::ZERO).await;
    let good = upstream(Mode::Answer, 1, Duration::ZERO).await;
    let p = start(config(&[silent.addr, good.addr]), Duration::from_secs(10));
    let m = ask(p.server.udp_addr(), "a.example.net", RecordType::A).await;
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(silent.udp_queries.load(Ordering::SeqCst), 1);
    assert_eq!(good.udp_queries.load(Ordering::SeqCst), 1);
    // The failed forwarder now goes last: the next question goes straight to the good one.
    ask(p.server.udp_addr(), "b.example.net", RecordType::A).await;
    assert_eq!(silent.udp_queries.load(Ordering::SeqCst), 1);

    let failing = upstream(Mode::ServFail, 0, Duration::ZERO).await;
    let p2 = start(
        config(&[silent.addr, failing.addr]),
        Duration::from_secs(10),
    );
    let started = Instant::now();
    let m = ask(p2.server.udp_addr(), "c.example.net", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "waited for the timeout"
    );
    assert_eq!(failing.udp_queries.load(Ordering::SeqCst), 1);
    let stats = p2.server.stats();
    assert_eq!(stats["queries"]["servfail"], 1, "{stats}");
    // SERVFAIL is not cached: asking again asks upstream again.
    ask(p2.server.udp_addr(), "c.example.net", RecordType::A).await;
    assert_eq!(failing.udp_queries.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_upstream_reply_is_retried_over_tcp() {
    let up = upstream(Mode::TruncateUdp, 40, Duration::ZERO).await;
    let p = start(config(&[up.addr]), Duration::from_secs(10));
    let m = ask(p.server.udp_addr(), "many.example.com", RecordType::A).await;
    assert!(!m.truncated());
    assert_eq!(a_records(&m).len(), 40);
    assert_eq!(up.udp_queries.load(Ordering::SeqCst), 1);
    assert_eq!(up.tcp_queries.load(Ordering::SeqCst), 1);
    // A client without EDNS gets at most 512 bytes: TC, and the full answer over TCP.
    let plain = ask_raw(
        p.server.udp_addr(),
        &query("many.example.com", RecordType::A, None),
    )
    .await
    .unwrap();
    assert!(plain.truncated());
    assert!(plain.answers().is_empty());
    let mut s = TcpStream::connect(p.server.tcp_addr()).await.unwrap();
    let full = ask_tcp(&mut s, &query("many.example.com", RecordType::A, None))
        .await
        .unwrap();
    assert_eq!(a_records(&full).len(), 40);
    assert!(!full.truncated());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_names_are_answered_and_unknown_ones_under_the_domain_are_not_forwarded() {
    let up = upstream(Mode::Answer, 1, Duration::ZERO).await;
    let p = start(config(&[up.addr]), Duration::from_secs(10));
    let m = ask(p.server.udp_addr(), "Router.home.lan", RecordType::A).await;
    assert!(m.authoritative());
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 0, 0, 1)]);
    let m = ask(p.server.udp_addr(), "ghost.home.lan", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert!(m.authoritative());
    assert_eq!(m.name_servers()[0].record_type(), RecordType::SOA);
    assert_eq!(
        up.udp_queries.load(Ordering::SeqCst),
        0,
        "nothing forwarded"
    );
    // The node names itself for CHAOS id.server, the HA witness question.
    let mut q = Message::new();
    let mut question = Query::query(Name::from_ascii("id.server.").unwrap(), RecordType::TXT);
    question.set_query_class(DNSClass::CH);
    q.set_id(9).add_query(question);
    let m = ask_raw(p.server.udp_addr(), &q.to_vec().unwrap())
        .await
        .unwrap();
    assert_eq!(m.answers()[0].data().to_string(), "test-node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_events_add_and_remove_host_names() {
    let p = start(config(&[]), Duration::from_secs(10));
    let addr = p.server.udp_addr();
    let lease = |kind: EventKind| {
        Event::new(
            kind,
            "test-node",
            EventData::Lease(LeaseEvent {
                ip: Ipv4Addr::new(10, 0, 0, 77),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                hostname: Some("Laptop".into()),
                client_id: None,
                subnet: "10.0.0.0/24".into(),
                lease_start: 0,
                lease_expiry: 3600,
                lease_duration: 3600,
            }),
        )
    };
    p.bus.publish(lease(EventKind::LeaseAck));
    eventually("laptop.home.lan to resolve", async || {
        a_records(&ask(addr, "laptop.home.lan", RecordType::A).await)
            == vec![Ipv4Addr::new(10, 0, 0, 77)]
    })
    .await;
    let m = ask(addr, "77.0.0.10.in-addr.arpa", RecordType::PTR).await;
    assert_eq!(m.answers()[0].data().to_string(), "laptop.home.lan.");
    p.bus.publish(lease(EventKind::LeaseRelease));
    eventually("laptop.home.lan to go", async || {
        ask(addr, "laptop.home.lan", RecordType::A)
            .await
            .response_code()
            == ResponseCode::NXDomain
    })
    .await;
    // With no forwarders, anything not local is SERVFAIL, not silence.
    let m = ask(addr, "example.com", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::ServFail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_names_are_loaded_from_the_store_at_start_and_on_becoming_active() {
    let p = start(config(&[]), Duration::from_secs(10));
    let addr = p.server.udp_addr();
    let store = Arc::new(std::sync::Mutex::new(vec![(
        Ipv4Addr::new(10, 0, 0, 90),
        "printer".to_string(),
    )]));
    let s2 = store.clone();
    p.server
        .set_lease_source(Arc::new(move || s2.lock().unwrap().clone()));
    let m = ask(addr, "printer.home.lan", RecordType::A).await;
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 0, 0, 90)]);
    // Leases replicated while standby; the node then takes over.
    *store.lock().unwrap() = vec![(Ipv4Addr::new(10, 0, 0, 91), "scanner".to_string())];
    p.bus.publish(Event::new(
        athena_dhcpd::events::EventKind::HaFailover,
        "test-node",
        EventData::Ha(athena_dhcpd::events::HaEvent {
            old_state: athena_dhcpd::ha::HaState::Standby,
            new_state: athena_dhcpd::ha::HaState::Active,
            ..Default::default()
        }),
    ));
    eventually("scanner.home.lan after the takeover", async || {
        a_records(&ask(addr, "scanner.home.lan", RecordType::A).await)
            == vec![Ipv4Addr::new(10, 0, 0, 91)]
    })
    .await;
    let m = ask(addr, "printer.home.lan", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
}

/// The DNS side of a reload: a new config on the channel the daemon's SIGHUP handler sends
/// to. The signal itself: `sighup_applies_dns_records_and_a_broken_file_changes_nothing`
/// in tests/daemon.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_replaces_the_static_records() {
    let cfg = config(&[]);
    let p = start(cfg.clone(), Duration::from_secs(10));
    let mut full = athena_dhcpd::config::Config {
        dns: cfg,
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(full.clone()));
    let stop = CancellationToken::new();
    p.server.follow_config(rx, stop.clone());
    let addr = p.server.udp_addr();
    assert_eq!(
        a_records(&ask(addr, "router.home.lan", RecordType::A).await),
        vec![Ipv4Addr::new(10, 0, 0, 1)]
    );
    full.dns.records = vec![DnsRecordConfig {
        name: "nas.home.lan".into(),
        rtype: "A".into(),
        value: "10.0.0.8".into(),
        ttl: 60,
    }];
    tx.send(Arc::new(full)).unwrap();
    eventually("the new record", async || {
        a_records(&ask(addr, "nas.home.lan", RecordType::A).await)
            == vec![Ipv4Addr::new(10, 0, 0, 8)]
    })
    .await;
    let gone = ask(addr, "router.home.lan", RecordType::A).await;
    assert_eq!(gone.response_code(), ResponseCode::NXDomain);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_listeners_answer_over_udp_and_tcp() {
    let p = start_on("[::]:0", config(&[]), Duration::from_secs(10));
    let port = p.server.udp_addr().port();
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let m = ask(v6, "router.home.lan", RecordType::A).await;
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 0, 0, 1)]);
    // The wildcard v6 socket is dual-stack: v4 clients are answered from the v4 address.
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let m = ask(v4, "router.home.lan", RecordType::A).await;
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 0, 0, 1)]);
    let tcp_port = p.server.tcp_addr().port();
    let mut s = TcpStream::connect(format!("[::1]:{tcp_port}"))
        .await
        .unwrap();
    let m = ask_tcp(&mut s, &query("router.home.lan", RecordType::A, None))
        .await
        .unwrap();
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 0, 0, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_keeps_its_health_worker_fresh() {
    let p = start(config(&[]), Duration::from_secs(10));
    // Longer than the worker's staleness limit, with no query at all.
    tokio::time::sleep(dns::STALE_AFTER + Duration::from_secs(1)).await;
    assert!(
        p.health.workers_stuck().is_empty(),
        "{:?}",
        p.health.problems()
    );
    ask(p.server.udp_addr(), "router.home.lan", RecordType::A).await;
}

/// Every forwarded query gets an ID and a UDP source port an off-path attacker cannot guess
/// (RFC 5452): a fixed port, a counter (of any stride) or the client's own ID passed through
/// (the client here counts up) would fail. Random 16-bit values among 64 collide about 3% of
/// the time and ephemeral ports (28,000 of them) less, so "at most 3 repeats" never flakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_queries_carry_random_ids_from_random_source_ports() {
    const N: usize = 64;
    let up = upstream(Mode::Answer, 1, Duration::ZERO).await;
    let p = start(config(&[up.addr]), Duration::from_secs(10));
    for i in 0..N {
        let mut q = query(&format!("host{i}.example.com"), RecordType::A, None);
        q[..2].copy_from_slice(&(i as u16 + 1).to_be_bytes());
        let m = ask_raw(p.server.udp_addr(), &q)
            .await
            .unwrap_or_else(|| panic!("no answer for host{i}"));
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    }
    let seen = up.udp_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), N, "one upstream query per name");
    let ids: Vec<u16> = seen.iter().map(|(id, _)| *id).collect();
    let ports: Vec<u16> = seen.iter().map(|(_, port)| *port).collect();
    for (what, values) in [("ID", &ids), ("source port", &ports)] {
        let distinct: std::collections::HashSet<u16> = values.iter().copied().collect();
        assert!(
            distinct.len() >= N - 3,
            "only {} distinct upstream {what}s among {N} queries: {values:?}",
            distinct.len()
        );
        // A counter, whatever its step, repeats its step.
        let steps: std::collections::HashSet<u16> =
            values.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        assert!(
            steps.len() >= N - 4,
            "upstream {what}s follow a pattern ({} distinct steps): {values:?}",
            steps.len()
        );
    }
    let passed_through = ids
        .iter()
        .enumerate()
        .filter(|(i, id)| **id == *i as u16 + 1)
        .count();
    assert!(passed_through <= 2, "client IDs reused upstream: {ids:?}");
}

/// One HTTP/1.1 POST without a body; the status code and the body.
async fn http_post(addr: SocketAddr, path: &str, headers: &[&str]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect to the API");
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("the API answers")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_string())
}

/// `POST /api/v1/dns/cache/flush` over real HTTP, served by the routes the daemon mounts:
/// 401 without the bearer token or with a wrong one, 403 once no token is configured (a
/// reload removed it), and in each refusal the cache stays; with the token it answers 200
/// and the next query goes upstream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_flush_api_needs_the_token_and_then_really_empties_the_cache() {
    const TOKEN: &str = "flush-token-0123456789abcdef";
    let up = upstream(Mode::Answer, 1, Duration::ZERO).await;
    let dns_cfg = config(&[up.addr]);
    let p = start(dns_cfg.clone(), Duration::from_secs(10));
    let mut full = athena_dhcpd::config::Config {
        dns: dns_cfg,
        ..Default::default()
    };
    full.api.auth_token = Some(TOKEN.into());
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(full.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(athena_dhcpd::api::serve(
        listener,
        p.server.routes(rx),
        None,
        stop.clone(),
    ));
    let dns = p.server.udp_addr();
    let asked_upstream = || up.udp_queries.load(Ordering::SeqCst);
    let flush = "/api/v1/dns/cache/flush";
    let bearer = format!("Authorization: Bearer {TOKEN}");

    ask(dns, "www.example.com", RecordType::A).await;
    ask(dns, "www.example.com", RecordType::A).await;
    assert_eq!(asked_upstream(), 1, "the second answer came from the cache");

    let basic = format!("Authorization: Basic {TOKEN}");
    for (headers, why) in [
        (vec![], "no token"),
        (
            vec!["Authorization: Bearer wrong-token-0123456789abcde"],
            "wrong token",
        ),
        (vec![basic.as_str()], "not a bearer token"),
    ] {
        let (code, body) = http_post(api, flush, &headers).await;
        assert_eq!(code, 401, "{why}: {body}");
    }
    ask(dns, "www.example.com", RecordType::A).await;
    assert_eq!(asked_upstream(), 1, "a refused flush emptied the cache");

    let (code, body) = http_post(api, flush, &[&bearer]).await;
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(answer["flushed"], 1, "{body}");
    ask(dns, "www.example.com", RecordType::A).await;
    assert_eq!(
        asked_upstream(),
        2,
        "after the flush the query went upstream"
    );

    // No token configured: mutations are off, even for a request carrying the old token.
    full.api.auth_token = None;
    tx.send(Arc::new(full)).unwrap();
    let (code, body) = http_post(api, flush, &[&bearer]).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("auth_token"), "says what to set: {body}");
    ask(dns, "www.example.com", RecordType::A).await;
    assert_eq!(asked_upstream(), 2, "a refused flush emptied the cache");
    stop.cancel();
}

// ---------------------------------------------------------------------------------------------
// Hostile input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_are_dropped_counted_and_never_stop_the_server() {
    let p = start(config(&[]), Duration::from_secs(10));
    let addr = p.server.udp_addr();
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut many_questions = query("router.home.lan", RecordType::A, None);
    many_questions[4..6].copy_from_slice(&65535u16.to_be_bytes());
    // A question that is a compression pointer to itself, and one pointing forward.
    let mut self_loop = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    self_loop.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let mut ptr_chain = vec![0x12, 0x35, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    ptr_chain.extend_from_slice(&[0xc0, 14, 0xc0, 12, 0, 1, 0, 1]);
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 5],
        (0..=255u8).collect(),
        many_questions,
        self_loop,
        ptr_chain,
        vec![0u8; 4000],
    ];
    for g in &garbage {
        s.send_to(g, addr).await.unwrap();
    }
    eventually("every bad datagram to be counted", async || {
        p.server.metrics().malformed_total() >= garbage.len() as u64
    })
    .await;
    // Still serving.
    let m = ask(addr, "router.home.lan", RecordType::A).await;
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 0, 0, 1)]);
    let stats = p.server.stats();
    assert!(
        stats["malformed_by_reason"]["udp/question_count"] == 3
            && stats["malformed_by_reason"]["udp/bad_name"] == 2
            && stats["malformed_by_reason"]["udp/short"] == 2,
        "{stats}"
    );
    assert!(p.health.problems().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_zero_length_frames_and_idle_clients_are_closed_without_blocking_others() {
    let p = start(config(&[]), Duration::from_millis(600));
    let tcp = p.server.tcp_addr();
    // A zero-length frame closes that connection and is counted.
    let mut z = TcpStream::connect(tcp).await.unwrap();
    z.write_all(&[0, 0]).await.unwrap();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), z.read(&mut b))
        .await
        .expect("closed promptly")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // An idle client holds a connection; another is served at once meanwhile.
    let started = Instant::now();
    let mut idle = TcpStream::connect(tcp).await.unwrap();
    let mut other = TcpStream::connect(tcp).await.unwrap();
    let m = ask_tcp(&mut other, &query("router.home.lan", RecordType::A, None))
        .await
        .unwrap();
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 0, 0, 1)]);
    assert!(started.elapsed() < Duration::from_millis(600));
    // Several queries on one connection.
    ask_tcp(&mut other, &query("ghost.home.lan", RecordType::A, None))
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut b))
        .await
        .expect("idle client dropped")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Not before the idle limit (600 ms here): its timer starts after `started`.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    eventually("counters", async || {
        p.server.metrics().tcp_idle_closed_total() >= 1 && p.server.metrics().malformed_total() >= 1
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The HA witness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_says_whether_a_dns_server_answers_on_an_address() {
    let p = start(config(&[]), Duration::from_secs(10));
    assert!(dns::probe(p.server.udp_addr(), Duration::from_secs(2)).await);
    // A port nobody listens on: false, and fast (ICMP port unreachable).
    let gone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let started = Instant::now();
    assert!(!dns::probe(addr, Duration::from_secs(2)).await);
    assert!(started.elapsed() < Duration::from_secs(1));
    // A silent listener: false after the timeout.
    let silent = upstream(Mode::Silent, 0, Duration::ZERO).await;
    assert!(!dns::probe(silent.addr, Duration::from_millis(200)).await);
}

// ---------------------------------------------------------------------------------------------
// The daemon in a namespace, answering on a VIP it did not have at start

#[test]
fn the_daemon_answers_from_a_vip_added_after_it_started() {
    use common::netns::{require_root, veth, Netns};
    if !require_root("the_daemon_answers_from_a_vip_added_after_it_started") {
        return;
    }
    let srv = Netns::new("dnss");
    let cli = Netns::new("dnsc");
    veth(&srv, "eth0", &cli, "eth0");
    srv.addr("eth0", "10.77.0.1/24");
    cli.addr("eth0", "10.77.0.10/24");
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("athena.toml");
    std::fs::write(
        &cfg_path,
        format!(
            r#"[server]
node_name = "dns-ns"
lease_db = "{}"
[api]
enabled = false
[dns]
enabled = true
listen_udp = "0.0.0.0:53"
domain = "home.lan"
[[dns.record]]
name = "router.home.lan"
type = "A"
value = "10.77.0.1"
"#,
            dir.path().join("leases.redb").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut daemon = srv
        .cmd(env!("CARGO_BIN_EXE_athena-dhcpd"))
        .args(["--log-format", "text", "-c"])
        .arg(&cfg_path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the daemon");
    let dig = |server: &str, extra: &[&str]| -> String {
        let mut args = vec!["dig", "+time=1", "+tries=1", "router.home.lan", "A"];
        let at = format!("@{server}");
        args.push(&at);
        args.extend_from_slice(extra);
        String::from_utf8_lossy(&cli.try_run(&args).stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if dig("10.77.0.1", &[]).contains("10.77.0.1") {
            break;
        }
        if Instant::now() > deadline || daemon.try_wait().unwrap().is_some() {
            let _ = daemon.kill();
            panic!(
                "the daemon never answered on its own address; log:\n{}",
                std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The VIP arrives (as on failover) while the daemon runs: a secondary address in the
    // same subnet, so the kernel's own choice of source would be 10.77.0.1.
    srv.run(&["ip", "addr", "add", "10.77.0.3/24", "dev", "eth0"]);
    let out = dig("10.77.0.3", &[]);
    assert!(
        out.contains("status: NOERROR") && out.contains("SERVER: 10.77.0.3#53(10.77.0.3)"),
        "{out}"
    );
    let answer_line = out
        .lines()
        .find(|l| l.starts_with("router.home.lan."))
        .unwrap_or_default();
    assert!(answer_line.ends_with("10.77.0.1"), "{out}");
    let tcp = dig("10.77.0.3", &["+tcp"]);
    assert!(
        tcp.contains("SERVER: 10.77.0.3#53(10.77.0.3) (TCP)"),
        "{tcp}"
    );
    // And the node's own address still answers from itself.
    assert!(dig("10.77.0.1", &[]).contains("SERVER: 10.77.0.1#53(10.77.0.1)"));
    let _ = daemon.kill();
    let _ = daemon.wait();
}
