//! The UDP socket of the DNS server: batched `recvmmsg`/`sendmmsg` with pktinfo (see
//! [`crate::pktinfo`]), so every reply leaves from the address its query was sent to.
//!
//! The serving loop runs on its own thread and blocks in `recvmmsg(MSG_WAITFORONE)`: one
//! syscall wakes it with every datagram waiting, one `sendmmsg` answers them all. That is two
//! syscalls per wake-up, against four or more for an epoll-driven loop (epoll_wait, recv,
//! send, recv until EAGAIN), and wake-ups are what a DNS server spends its CPU on. The socket
//! has a receive timeout so the loop still ticks its health handle and sees shutdown when idle.
//! Under steady load the loop also coalesces wake-ups (see `server::serve_udp`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::pktinfo::Peer;

/// The server's UDP socket, shared by the serving loop and the forward tasks.
pub struct UdpEndpoint {
    sock: std::net::UdpSocket,
    v6: bool,
}

impl UdpEndpoint {
    /// Wraps a bound socket with pktinfo enabled (see [`crate::pktinfo::enable`]); makes it
    /// blocking with a receive timeout of `idle_wake`, so a blocked receive returns that often.
    pub fn new(sock: std::net::UdpSocket, idle_wake: Duration) -> io::Result<UdpEndpoint> {
        let v6 = sock.local_addr()?.is_ipv6();
        sock.set_nonblocking(false)?;
        sock.set_read_timeout(Some(idle_wake))?;
        Ok(UdpEndpoint { sock, v6 })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    pub fn raw_fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// Sends one reply (the forward path) without blocking.
    pub fn send_to(&self, buf: &[u8], peer: &Peer) -> io::Result<()> {
        crate::pktinfo::send_one(
            self.sock.as_raw_fd(),
            self.v6,
            buf,
            peer.addr,
            peer.reply_source(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pktinfo::{enable as enable_pktinfo, RecvBatch, SendBatch};

    fn bound(addr: &str) -> std::net::UdpSocket {
        let addr: SocketAddr = addr.parse().unwrap();
        let s = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            None,
        )
        .unwrap();
        enable_pktinfo(&s, addr.is_ipv6()).unwrap();
        s.bind(&addr.into()).unwrap();
        s.into()
    }

    #[test]
    fn a_batch_reports_the_destination_and_replies_from_it() {
        let server = UdpEndpoint::new(bound("0.0.0.0:0"), Duration::from_secs(5)).unwrap();
        let port = server.local_addr().unwrap().port();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // 127.0.0.2 is a loopback address too: the reply must come from it, not 127.0.0.1.
        client.connect(("127.0.0.2", port)).unwrap();
        client.send(b"ping").unwrap();
        client.send(b"ping2").unwrap();
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        while got.len() < 2 {
            let n = batch.recv(server.raw_fd()).unwrap();
            for i in 0..n {
                let (data, peer, truncated) = batch.get(i);
                assert!(!truncated);
                got.push((data.to_vec(), peer.unwrap()));
            }
        }
        assert_eq!(got[0].0, b"ping");
        assert_eq!(got[1].0, b"ping2");
        let peer = got[0].1;
        assert_eq!(peer.local, Some("127.0.0.2".parse().unwrap()));
        assert_eq!(peer.addr, client.local_addr().unwrap());
        let mut out = SendBatch::new();
        out.next_buf().extend_from_slice(b"pong");
        out.push(peer);
        assert_eq!(out.flush(server.raw_fd(), false), 0);
        let mut buf = [0u8; 16];
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // A connected socket only accepts replies from 127.0.0.2.
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
        server.send_to(b"again", &peer).unwrap();
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"again");
        // Idle: the receive returns after the socket's timeout instead of hanging.
        let idle = UdpEndpoint::new(bound("127.0.0.1:0"), Duration::from_millis(50)).unwrap();
        let e = batch.recv(idle.raw_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
