//! `vipprobe`: the DNS client of the failover lab's scripts (`tests/lab/demo.sh`,
//! `benches/failover.sh`). Sends one A query every `--interval` from a *connected* UDP socket
//! (a reply from any other source address is dropped by the kernel, as real stub resolvers
//! do) and counts a query as answered when its reply arrives within `--timeout`. Sending and
//! receiving run on separate threads, so a slow or missing answer never slows the probing.
//!
//! Output, one line per change (answered-by changes, or answers stop/start), with wall-clock
//! times so scripts can line them up with their own events:
//!   `1732470000.123456 ok 192.0.2.1` / `1732470000.143456 fail`
//! and at the end
//!   `summary sent=N failed=M outage_ms=X first_fail=T recovered=T late=L by=IP:N,IP:N before_mark=B`
//! where the outage runs from the first failed query to the first answered query after the
//! last failure (0 when nothing failed), `late` counts failed queries whose answer did come,
//! only after `--timeout` (a slow server or a busy machine, not a missing one), and `by`
//! counts the answered queries per answering address (who served, in a long run). Stops at
//! `--max-time`, or when `--stop-file` exists.
//!
//! With `--mark-file PATH` only the queries sent after PATH appears count as failed (the
//! script touches it just before its event): a slow answer *before* the event on a busy
//! machine is no part of the outage. Those are reported apart, as `before_mark=N`.
//!
//! Usage: `ip netns exec CLIENT vipprobe --server 10.0.0.3:53 --name who.lab.test
//!         [--interval 20ms] [--timeout 20ms] [--max-time 60s] [--stop-file PATH]
//!         [--mark-file PATH]`

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use athena_dhcpd::config::parse_duration;

struct Args {
    server: SocketAddr,
    name: String,
    interval: Duration,
    timeout: Duration,
    max_time: Duration,
    stop_file: Option<PathBuf>,
    mark_file: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        server: "10.0.0.3:53".parse().map_err(|_| "literal")?,
        name: "who.lab.test".into(),
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(20),
        max_time: Duration::from_secs(60),
        stop_file: None,
        mark_file: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--server" => {
                a.server = v
                    .parse()
                    .or_else(|_| {
                        v.parse::<Ipv4Addr>()
                            .map(|ip| SocketAddr::new(ip.into(), 53))
                    })
                    .map_err(|_| format!("--server {v:?}: expected IP or IP:port"))?
            }
            "--name" => a.name = v,
            "--interval" => a.interval = parse_duration(&v)?,
            "--timeout" => a.timeout = parse_duration(&v)?,
            "--max-time" => a.max_time = parse_duration(&v)?,
            "--stop-file" => a.stop_file = Some(v.into()),
            "--mark-file" => a.mark_file = Some(v.into()),
            _ => return Err(format!("unknown option {k}")),
        }
    }
    Ok(a)
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The id and first A answer of a NOERROR response.
fn answer(buf: &[u8]) -> Option<(u16, Ipv4Addr)> {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RData;
    let m = Message::from_vec(buf).ok()?;
    if m.response_code() != ResponseCode::NoError {
        return None;
    }
    let ip = m.answers().iter().find_map(|r| match r.data() {
        RData::A(a) => Some(a.0),
        _ => None,
    })?;
    Some((m.id(), ip))
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

type Replies = Arc<Mutex<Vec<Option<(Instant, Ipv4Addr)>>>>;

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vipprobe: {e}");
            std::process::exit(2);
        }
    };
    let sock = UdpSocket::bind("0.0.0.0:0").and_then(|s| s.connect(a.server).map(|_| s));
    let sock = match sock {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vipprobe: socket to {}: {e}", a.server);
            std::process::exit(1);
        }
    };
    let rsock = sock.try_clone().expect("dup socket");
    let _ = rsock.set_read_timeout(Some(Duration::from_millis(10)));
    let replies: Replies = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (reps, st) = (replies.clone(), stop.clone());
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !st.load(Ordering::Relaxed) {
            if let Ok(n) = rsock.recv(&mut buf) {
                let at = Instant::now();
                if let Some((id, ip)) = answer(&buf[..n]) {
                    let mut r = reps.lock().expect("replies");
                    let i = id as usize;
                    if r.len() <= i {
                        r.resize(i + 1, None);
                    }
                    r[i].get_or_insert((at, ip));
                }
            }
        }
    });

    // Monotonic send times, mapped to wall-clock once for output.
    let (t0, w0) = (Instant::now(), SystemTime::now());
    let wall = |t: Instant| unix(w0 + t.duration_since(t0));
    let mut sent: Vec<Instant> = Vec::new();
    let mut outcome: Vec<Option<Ipv4Addr>> = Vec::new();
    let mut last: Option<Option<Ipv4Addr>> = None;
    // Judges every query whose deadline has passed (all of them when `all`), in order, and
    // prints a line when the outcome changes, at once, so scripts can follow along.
    let mut judge = |sent: &[Instant], outcome: &mut Vec<Option<Ipv4Addr>>, all: bool| {
        let r = replies.lock().expect("replies");
        while outcome.len() < sent.len() {
            let i = outcome.len();
            let t = sent[i];
            if !all && t.elapsed() < a.timeout {
                break;
            }
            let o = r
                .get(i)
                .copied()
                .flatten()
                .filter(|(at, _)| at.duration_since(t) <= a.timeout)
                .map(|(_, ip)| ip);
            if last != Some(o) {
                match o {
                    Some(ip) => println!("{:.6} ok {ip}", wall(t)),
                    None => println!("{:.6} fail", wall(t)),
                }
                last = Some(o);
            }
            outcome.push(o);
        }
    };
    let mut next = Instant::now();
    let end = t0 + a.max_time;
    // The index of the first query that counts (see --mark-file).
    let mut mark = if a.mark_file.is_some() { None } else { Some(0) };
    // Queries are numbered with a 16-bit id; stop before it wraps (21 min at 20 ms).
    while Instant::now() < end && sent.len() < 65_000 {
        if a.stop_file.as_ref().is_some_and(|p| p.exists()) {
            break;
        }
        if mark.is_none() && a.mark_file.as_ref().is_some_and(|p| p.exists()) {
            mark = Some(sent.len());
        }
        sent.push(Instant::now());
        let _ = sock.send(&query((sent.len() - 1) as u16, &a.name));
        judge(&sent, &mut outcome, false);
        next += a.interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    std::thread::sleep(a.timeout);
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    judge(&sent, &mut outcome, true);

    let mark = mark.unwrap_or(outcome.len()).min(outcome.len());
    let before = outcome[..mark].iter().filter(|o| o.is_none()).count();
    let counted = &outcome[mark..];
    let failed = counted.iter().filter(|o| o.is_none()).count();
    let (late, by) = {
        let r = replies.lock().expect("replies");
        let late = counted
            .iter()
            .enumerate()
            .filter(|(i, o)| o.is_none() && r.get(mark + *i).copied().flatten().is_some())
            .count();
        let mut by: Vec<(Ipv4Addr, usize)> = Vec::new();
        for ip in outcome.iter().flatten() {
            match by.iter_mut().find(|(b, _)| b == ip) {
                Some((_, n)) => *n += 1,
                None => by.push((*ip, 1)),
            }
        }
        let by: Vec<String> = by.iter().map(|(ip, n)| format!("{ip}:{n}")).collect();
        (
            late,
            if by.is_empty() {
                "-".into()
            } else {
                by.join(",")
            },
        )
    };
    let first = counted.iter().position(|o| o.is_none()).map(|i| mark + i);
    let lastf = counted.iter().rposition(|o| o.is_none()).map(|i| mark + i);
    match (first, lastf) {
        (Some(f), Some(l)) => {
            let rec = sent.get(l + 1).copied();
            let end_t = rec.unwrap_or(sent[l]);
            println!(
                "summary sent={} failed={failed} outage_ms={:.1} first_fail={:.6} recovered={} late={late} by={by} before_mark={before}",
                sent.len(),
                end_t.duration_since(sent[f]).as_secs_f64() * 1000.0,
                wall(sent[f]),
                rec.map(|t| format!("{:.6}", wall(t)))
                    .unwrap_or_else(|| "never".into())
            );
        }
        _ => println!(
            "summary sent={} failed=0 outage_ms=0.0 first_fail=- recovered=- late=0 by={by} before_mark={before}",
            sent.len()
        ),
    }
}
