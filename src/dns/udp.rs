//! The UDP socket of the DNS server: batched `recvmmsg`/`sendmmsg` with `IP_PKTINFO` /
//! `IPV6_PKTINFO`, so every reply leaves from the address its query was sent to.
//!
//! Why: the socket is bound to the wildcard address, and the VIP is a secondary address that
//! comes and goes with failover. Without pktinfo the kernel picks the interface's primary
//! address as the source, and clients (which only accept replies from the address they
//! asked) drop the answer. The destination address is read per datagram, so an address added
//! after start works at once, with no rebind.
//!
//! The serving loop runs on its own thread and blocks in `recvmmsg(MSG_WAITFORONE)`: one
//! syscall wakes it with every datagram waiting, one `sendmmsg` answers them all. That is two
//! syscalls per wake-up, against four or more for an epoll-driven loop (epoll_wait, recv,
//! send, recv until EAGAIN), and wake-ups are what a DNS server spends its CPU on. The socket
//! has a receive timeout so the loop still ticks its health handle and sees shutdown when idle.
//! Under steady load the loop also coalesces wake-ups (see `server::serve_udp`).
//!
//! Invariants: every pointer handed to the kernel points into buffers owned by the batch and
//! is rebuilt right before each call (the batch may have moved); sends never block
//! (MSG_DONTWAIT: a reply the kernel cannot take is dropped and counted, as UDP allows).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Largest query we read; anything longer is malformed for our purposes.
pub const RECV_BUF: usize = 4096;
/// Datagrams per `recvmmsg`/`sendmmsg`: more than arrive in one coalescing sleep at the
/// rates one core can answer (150k QPS × 250 µs ≈ 38), so the sleep never caps throughput.
pub const BATCH: usize = 64;
/// Room for one pktinfo control message (either family), 8-byte aligned.
const CTRL_WORDS: usize = 8;

/// `struct in6_pktinfo` (not exported by libc for every target).
#[repr(C)]
#[derive(Clone, Copy)]
struct In6Pktinfo {
    addr: libc::in6_addr,
    ifindex: libc::c_uint,
}

/// Where a datagram came from and which of our addresses it was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The local address the query was sent to (None if the kernel did not say).
    pub local: Option<IpAddr>,
    pub ifindex: u32,
}

/// Asks the kernel to report each datagram's destination address.
pub fn enable_pktinfo(sock: &socket2::Socket, v6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, opt) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: setsockopt with a valid fd and a pointer to a c_int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            &on as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn from_socket_addr(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let s = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in) };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let s = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in6) };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = a.port().to_be();
            s.sin6_addr.s6_addr = a.ip().octets();
            s.sin6_flowinfo = a.flowinfo();
            s.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads the pktinfo control message of a received datagram.
///
/// # Safety
/// `hdr` must describe a control buffer the kernel just filled.
unsafe fn read_pktinfo(hdr: &libc::msghdr) -> (Option<IpAddr>, u32) {
    let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
    while !cmsg.is_null() {
        let c = &*cmsg;
        if c.cmsg_level == libc::IPPROTO_IP && c.cmsg_type == libc::IP_PKTINFO {
            let info = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::in_pktinfo);
            // ipi_spec_dst is the destination for unicast and a sensible local address for a
            // broadcast query.
            let ip = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
            return (Some(IpAddr::V4(ip)), info.ipi_ifindex as u32);
        }
        if c.cmsg_level == libc::IPPROTO_IPV6 && c.cmsg_type == libc::IPV6_PKTINFO {
            let info = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const In6Pktinfo);
            let ip = Ipv6Addr::from(info.addr.s6_addr);
            return (Some(IpAddr::V6(ip)), info.ifindex);
        }
        cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
    }
    (None, 0)
}

/// Writes the "send from this address" control message; returns its length (0: none).
fn write_pktinfo(v6_socket: bool, peer: &Peer, ctrl: &mut [u64; CTRL_WORDS]) -> usize {
    let Some(local) = peer.local else {
        return 0;
    };
    // SAFETY: a zeroed msghdr pointing at our 8-byte aligned control buffer, which is large
    // enough for CMSG_SPACE of either pktinfo struct; CMSG_* only compute offsets into it.
    unsafe {
        let mut hdr: libc::msghdr = zeroed();
        hdr.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
        if v6_socket {
            let space = libc::CMSG_SPACE(size_of::<In6Pktinfo>() as u32) as usize;
            hdr.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&hdr);
            (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
            (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<In6Pktinfo>() as u32) as _;
            let addr = match local {
                IpAddr::V6(a) => a,
                IpAddr::V4(a) => a.to_ipv6_mapped(),
            };
            // The interface matters only for link-local sources; elsewhere routing decides.
            let ifindex = if addr.segments()[0] & 0xffc0 == 0xfe80 {
                peer.ifindex
            } else {
                0
            };
            let info = In6Pktinfo {
                addr: libc::in6_addr {
                    s6_addr: addr.octets(),
                },
                ifindex,
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut In6Pktinfo, info);
            space
        } else {
            let IpAddr::V4(a) = local else {
                return 0;
            };
            let space = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
            hdr.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&hdr);
            (*cmsg).cmsg_level = libc::IPPROTO_IP;
            (*cmsg).cmsg_type = libc::IP_PKTINFO;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(a).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::in_pktinfo, info);
            space
        }
    }
}

/// The server's UDP socket, shared by the serving loop and the forward tasks.
pub struct UdpEndpoint {
    sock: std::net::UdpSocket,
    v6: bool,
}

impl UdpEndpoint {
    /// Wraps a bound socket with pktinfo enabled (see [`enable_pktinfo`]); makes it blocking
    /// with a receive timeout of `idle_wake`, so a blocked receive returns that often.
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
        send_one(self.sock.as_raw_fd(), self.v6, buf, peer)
    }
}

fn send_one(fd: i32, v6: bool, buf: &[u8], peer: &Peer) -> io::Result<()> {
    // SAFETY: zeroed C structs filled with pointers to locals that outlive the call.
    unsafe {
        let mut name: libc::sockaddr_storage = zeroed();
        let namelen = from_socket_addr(peer.addr, &mut name);
        let mut ctrl = [0u64; CTRL_WORDS];
        let ctrl_len = write_pktinfo(v6, peer, &mut ctrl);
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut hdr: libc::msghdr = zeroed();
        hdr.msg_name = &mut name as *mut _ as *mut libc::c_void;
        hdr.msg_namelen = namelen;
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        if ctrl_len > 0 {
            hdr.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
            hdr.msg_controllen = ctrl_len as _;
        }
        if libc::sendmsg(fd, &hdr, libc::MSG_DONTWAIT) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receive buffers for one `recvmmsg`.
pub struct RecvBatch {
    bufs: Vec<[u8; RECV_BUF]>,
    names: Vec<libc::sockaddr_storage>,
    ctrls: Vec<[u64; CTRL_WORDS]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in the C headers only ever point into buffers owned by the same
// batch and are rebuilt before every syscall; nothing is shared between threads.
unsafe impl Send for RecvBatch {}
// SAFETY: as for RecvBatch.
unsafe impl Send for SendBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        // SAFETY: these C structs are valid when zeroed.
        let (name, hdr) = unsafe { (zeroed(), zeroed()) };
        RecvBatch {
            bufs: vec![[0u8; RECV_BUF]; BATCH],
            names: vec![name; BATCH],
            ctrls: vec![[0u64; CTRL_WORDS]; BATCH],
            iovs: (0..BATCH)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            hdrs: vec![hdr; BATCH],
        }
    }

    /// One `recvmmsg`: waits (up to the socket's receive timeout) for the first datagram,
    /// then takes every one already queued, up to [`BATCH`]. WouldBlock: the timeout passed.
    pub fn recv(&mut self, fd: i32) -> io::Result<usize> {
        self.recv_flags(fd, libc::MSG_WAITFORONE)
    }

    /// Like [`RecvBatch::recv`] but never waits (WouldBlock: nothing queued).
    pub fn try_recv(&mut self, fd: i32) -> io::Result<usize> {
        self.recv_flags(fd, libc::MSG_DONTWAIT)
    }

    fn recv_flags(&mut self, fd: i32, flags: libc::c_int) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr() as *mut libc::c_void;
            self.iovs[i].iov_len = RECV_BUF;
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.names[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrls[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = (CTRL_WORDS * 8) as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by self, sized as declared.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last `recv`: its bytes, its peer, and whether it was cut short.
    pub fn get(&self, i: usize) -> (&[u8], Option<Peer>, bool) {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(RECV_BUF);
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        // SAFETY: the kernel filled this header's control buffer in the last recvmmsg.
        let (local, ifindex) = unsafe { read_pktinfo(&h.msg_hdr) };
        let peer = to_socket_addr(&self.names[i]).map(|addr| Peer {
            addr,
            local,
            ifindex,
        });
        (&self.bufs[i][..len], peer, truncated)
    }
}

/// Replies collected during one batch, sent with one `sendmmsg`.
pub struct SendBatch {
    bufs: Vec<Vec<u8>>,
    peers: Vec<Option<Peer>>,
    len: usize,
    names: Vec<libc::sockaddr_storage>,
    ctrls: Vec<[u64; CTRL_WORDS]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    pub fn new() -> SendBatch {
        // SAFETY: these C structs are valid when zeroed.
        let (name, hdr) = unsafe { (zeroed(), zeroed()) };
        SendBatch {
            bufs: (0..BATCH).map(|_| Vec::with_capacity(1500)).collect(),
            peers: vec![None; BATCH],
            len: 0,
            names: vec![name; BATCH],
            ctrls: vec![[0u64; CTRL_WORDS]; BATCH],
            iovs: (0..BATCH)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            hdrs: vec![hdr; BATCH],
        }
    }

    /// The buffer for the next reply; it is only queued by [`SendBatch::push`].
    pub fn next_buf(&mut self) -> &mut Vec<u8> {
        &mut self.bufs[self.len.min(BATCH - 1)]
    }

    /// Queues the reply just written into [`SendBatch::next_buf`].
    pub fn push(&mut self, peer: Peer) {
        if self.len < BATCH {
            self.peers[self.len] = Some(peer);
            self.len += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sends everything queued; returns how many the kernel refused (dropped: UDP).
    pub fn flush(&mut self, fd: i32, v6: bool) -> usize {
        let n = self.len;
        self.len = 0;
        if n == 0 {
            return 0;
        }
        for i in 0..n {
            let Some(peer) = self.peers[i] else { continue };
            let namelen = from_socket_addr(peer.addr, &mut self.names[i]);
            let ctrl_len = write_pktinfo(v6, &peer, &mut self.ctrls[i]);
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr() as *mut libc::c_void;
            self.iovs[i].iov_len = self.bufs[i].len();
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.names[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = namelen;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            if ctrl_len > 0 {
                h.msg_control = self.ctrls[i].as_mut_ptr() as *mut libc::c_void;
                h.msg_controllen = ctrl_len as _;
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
            h.msg_flags = 0;
        }
        let mut sent = 0usize;
        let mut failed = 0usize;
        while sent + failed < n {
            let start = sent + failed;
            // SAFETY: headers start..n point into buffers owned by self, set up above.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[start..].as_mut_ptr(),
                    (n - start) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r <= 0 {
                // The first message of the rest failed (e.g. no route back to a spoofed
                // source, or a full buffer): drop it and carry on with the others.
                failed += 1;
            } else {
                sent += r as usize;
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
