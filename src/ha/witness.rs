//! The VIP witness: before a silent peer is declared dead, ask the VIP itself whether a server
//! still answers there. The kernel of a dead process's host still answers ARP for the VIP, so
//! only a service answer counts: a DNS reply on VIP:53 when DNS is on, else an accepted TCP
//! connection on the peer port at the VIP.
//!
//! Invariant: the probe always returns within `timeout`; a refusal (ICMP port unreachable,
//! RST) is a definite "no" and returns at once, which keeps the kill -9 takeover fast.

use std::net::SocketAddr;
use std::time::Duration;

/// Where the witness asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WitnessTarget {
    /// A DNS query to this address (the VIP and the DNS port).
    Dns(SocketAddr),
    /// A TCP connect to this address (the VIP and the API/peer port).
    Tcp(SocketAddr),
}

impl std::fmt::Display for WitnessTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WitnessTarget::Dns(a) => write!(f, "DNS {a}"),
            WitnessTarget::Tcp(a) => write!(f, "TCP {a}"),
        }
    }
}

/// True when something answers at the target within `timeout`.
pub async fn probe(target: WitnessTarget, timeout: Duration) -> bool {
    match target {
        WitnessTarget::Dns(addr) => dns_probe(addr, timeout).await,
        WitnessTarget::Tcp(addr) => matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        ),
    }
}

/// Any DNS reply with our id counts (even SERVFAIL/REFUSED: a server is running there).
async fn dns_probe(addr: SocketAddr, timeout: Duration) -> bool {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
        return false;
    };
    // Connected, so an ICMP port unreachable surfaces as ECONNREFUSED instead of a timeout.
    if sock.connect(addr).await.is_err() {
        return false;
    }
    let id: u16 = rand::random();
    let query = root_ns_query(id);
    let ask = async {
        // Two tries inside the timeout: one lost datagram must not declare the peer dead.
        for _ in 0..2 {
            if sock.send(&query).await.is_err() {
                return false;
            }
            let mut buf = [0u8; 512];
            match tokio::time::timeout(timeout / 2, sock.recv(&mut buf)).await {
                Ok(Ok(n)) if n >= 12 && buf[..2] == id.to_be_bytes() && buf[2] & 0x80 != 0 => {
                    return true
                }
                Ok(Ok(_)) => continue,
                Ok(Err(_)) => return false, // refused: nothing listens there
                Err(_) => continue,
            }
        }
        false
    };
    tokio::time::timeout(timeout, ask).await.unwrap_or(false)
}

/// `. IN NS`, recursion desired.
fn root_ns_query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(17);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(&[0, 0, 2, 0, 1]);
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_witness_sees_a_listener_and_a_refusal() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        assert!(probe(WitnessTarget::Tcp(addr), Duration::from_millis(500)).await);
        drop(l);
        let t = std::time::Instant::now();
        assert!(!probe(WitnessTarget::Tcp(addr), Duration::from_millis(2000)).await);
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "a refusal must not wait"
        );
    }

    #[tokio::test]
    async fn dns_witness_sees_an_answer_and_a_refusal() {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = s.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            if let Ok((n, from)) = s.recv_from(&mut buf).await {
                buf[2] |= 0x80;
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        assert!(probe(WitnessTarget::Dns(addr), Duration::from_millis(1000)).await);
        // Nothing listens on the port any more: ICMP unreachable → a quick "no".
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = std::time::Instant::now();
        assert!(!probe(WitnessTarget::Dns(addr), Duration::from_millis(2000)).await);
        assert!(t.elapsed() < Duration::from_millis(1000));
    }
}
