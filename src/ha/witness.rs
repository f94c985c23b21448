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
        // Any DNS reply counts (even REFUSED): a server owns the address.
        WitnessTarget::Dns(addr) => crate::dns::probe(addr, timeout).await,
        WitnessTarget::Tcp(addr) => matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        ),
    }
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
