//! Receive a UDP datagram together with the address it was sent to and the interface it
//! came in on (`IP_PKTINFO` / `IPV6_PKTINFO`), and send a reply from a chosen source address
//! (and, when it matters, out of a chosen interface). Shared by DHCP (one datagram at a time)
//! and DNS (batched `recvmmsg`/`sendmmsg`).
//!
//! Why: both servers bind the wildcard address, and the VIP is a secondary address that
//! comes and goes with failover. Without pktinfo the kernel picks the interface's primary
//! address as the source, and clients (which only accept replies from the address they
//! asked, or, for DHCP, expect the server identifier) drop the answer. The destination is
//! read per datagram, so an address added after start works at once, with no rebind.
//!
//! Why libc and not nix: nix's `sendmmsg` shares one set of control messages across every
//! message of a batch, while each DNS reply needs its own source address, and nix's
//! `sendmsg`/`cmsg_space!` allocate a buffer per call; the DNS hot path allocates nothing.
//!
//! Invariants: every pointer handed to the kernel points into buffers owned by the caller's
//! frame or the batch and is rebuilt right before each call (the batch may have moved);
//! sends never block (MSG_DONTWAIT: on a non-blocking socket the caller sees WouldBlock, on a
//! blocking one a reply the kernel cannot take is dropped and counted, as UDP allows).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

/// Largest datagram a [`RecvBatch`] reads (the DNS server's queries); anything longer is
/// malformed for our purposes.
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

impl Peer {
    /// Where a reply to this peer leaves from: the address it asked. The interface only
    /// where the address alone does not say (an IPv6 link-local source); elsewhere routing
    /// decides.
    pub fn reply_source(&self) -> Source {
        let link_local =
            matches!(self.local, Some(IpAddr::V6(a)) if a.segments()[0] & 0xffc0 == 0xfe80);
        Source {
            addr: self.local,
            ifindex: if link_local { self.ifindex } else { 0 },
        }
    }
}

/// The source of a datagram we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// The local address it leaves from (None: the kernel picks; on an IPv4 socket
    /// `0.0.0.0` also lets the kernel pick while still naming the interface).
    pub addr: Option<IpAddr>,
    /// The interface it must leave through (0: routing decides), e.g. a broadcast reply
    /// out of the interface its request came in on.
    pub ifindex: u32,
}

/// What the kernel said about one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The datagram's length, also when it was longer than the buffer (see `truncated`).
    pub len: usize,
    pub truncated: bool,
    pub from: Option<SocketAddr>,
    /// The destination in the IP header (e.g. 255.255.255.255 or our address).
    pub dst: Option<IpAddr>,
    /// The local address the kernel would answer from (equal to `dst` for unicast).
    pub local: Option<IpAddr>,
    /// The interface it came in on (0: unknown).
    pub ifindex: u32,
}

/// Asks the kernel to report each datagram's destination address.
pub fn enable(sock: &impl AsFd, v6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, opt) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: setsockopt with a valid fd and a pointer to a c_int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
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

/// The pktinfo control message of a received datagram.
#[derive(Default)]
struct Info {
    dst: Option<IpAddr>,
    local: Option<IpAddr>,
    ifindex: u32,
}

/// Reads the pktinfo control message of a received datagram.
///
/// # Safety
/// `hdr` must describe a control buffer the kernel just filled.
unsafe fn read_pktinfo(hdr: &libc::msghdr) -> Info {
    let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
    while !cmsg.is_null() {
        let c = &*cmsg;
        if c.cmsg_level == libc::IPPROTO_IP && c.cmsg_type == libc::IP_PKTINFO {
            let info = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::in_pktinfo);
            let v4 = |a: libc::in_addr| Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.s_addr))));
            // ipi_spec_dst is the destination for unicast and a sensible local address for a
            // broadcast query.
            return Info {
                dst: v4(info.ipi_addr),
                local: v4(info.ipi_spec_dst),
                ifindex: info.ipi_ifindex as u32,
            };
        }
        if c.cmsg_level == libc::IPPROTO_IPV6 && c.cmsg_type == libc::IPV6_PKTINFO {
            let info = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const In6Pktinfo);
            let ip = Some(IpAddr::V6(Ipv6Addr::from(info.addr.s6_addr)));
            return Info {
                dst: ip,
                local: ip,
                ifindex: info.ifindex,
            };
        }
        cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
    }
    Info::default()
}

/// Writes the "send from here" control message; returns its length (0: none).
fn write_pktinfo(v6_socket: bool, src: Source, ctrl: &mut [u64; CTRL_WORDS]) -> usize {
    if src.addr.is_none() && src.ifindex == 0 {
        return 0;
    }
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
            let addr = match src.addr {
                Some(IpAddr::V6(a)) => a,
                Some(IpAddr::V4(a)) => a.to_ipv6_mapped(),
                None => Ipv6Addr::UNSPECIFIED,
            };
            let info = In6Pktinfo {
                addr: libc::in6_addr {
                    s6_addr: addr.octets(),
                },
                ifindex: src.ifindex,
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut In6Pktinfo, info);
            space
        } else {
            let a = match src.addr {
                Some(IpAddr::V4(a)) => a,
                Some(IpAddr::V6(_)) => return 0,
                None => Ipv4Addr::UNSPECIFIED,
            };
            let space = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
            hdr.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&hdr);
            (*cmsg).cmsg_level = libc::IPPROTO_IP;
            (*cmsg).cmsg_type = libc::IP_PKTINFO;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
            let info = libc::in_pktinfo {
                ipi_ifindex: src.ifindex as libc::c_int,
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

/// Receives one datagram into `buf` with its pktinfo. With `MSG_TRUNC` in `flags`, `len` is
/// the datagram's real length even when it did not fit.
pub fn recv_one(fd: i32, buf: &mut [u8], flags: libc::c_int) -> io::Result<Received> {
    // SAFETY: zeroed C structs filled with pointers to locals and `buf`, which outlive the
    // call; the kernel writes at most the lengths given.
    unsafe {
        let mut name: libc::sockaddr_storage = zeroed();
        let mut ctrl = [0u64; CTRL_WORDS];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut hdr: libc::msghdr = zeroed();
        hdr.msg_name = &mut name as *mut _ as *mut libc::c_void;
        hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
        hdr.msg_controllen = (CTRL_WORDS * 8) as _;
        let n = libc::recvmsg(fd, &mut hdr, flags);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let info = read_pktinfo(&hdr);
        Ok(Received {
            len: n as usize,
            truncated: hdr.msg_flags & libc::MSG_TRUNC != 0,
            from: to_socket_addr(&name),
            dst: info.dst,
            local: info.local,
            ifindex: info.ifindex,
        })
    }
}

/// Sends one datagram to `to` from `src`, without blocking.
pub fn send_one(
    fd: i32,
    v6_socket: bool,
    buf: &[u8],
    to: SocketAddr,
    src: Source,
) -> io::Result<()> {
    // SAFETY: zeroed C structs filled with pointers to locals that outlive the call.
    unsafe {
        let mut name: libc::sockaddr_storage = zeroed();
        let namelen = from_socket_addr(to, &mut name);
        let mut ctrl = [0u64; CTRL_WORDS];
        let ctrl_len = write_pktinfo(v6_socket, src, &mut ctrl);
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
        let info = unsafe { read_pktinfo(&h.msg_hdr) };
        let peer = to_socket_addr(&self.names[i]).map(|addr| Peer {
            addr,
            local: info.local,
            ifindex: info.ifindex,
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
            let ctrl_len = write_pktinfo(v6, peer.reply_source(), &mut self.ctrls[i]);
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
        let addr: SocketAddr = addr.parse().expect("address");
        let s = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            None,
        )
        .expect("socket");
        enable(&s, addr.is_ipv6()).expect("pktinfo");
        s.bind(&addr.into()).expect("bind");
        let s: std::net::UdpSocket = s.into();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        s
    }

    #[test]
    fn one_datagram_reports_its_destination_interface_and_real_length() {
        let server = bound("0.0.0.0:0");
        let port = server.local_addr().expect("addr").port();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
        client
            .send_to(b"0123456789", ("127.0.0.2", port))
            .expect("send");
        let mut buf = [0u8; 4];
        let rx = recv_one(server.as_raw_fd(), &mut buf, libc::MSG_TRUNC).expect("recv");
        let lo = nix::net::if_::if_nametoindex("lo").expect("lo");
        let want: IpAddr = "127.0.0.2".parse().expect("ip");
        assert_eq!(
            rx,
            Received {
                len: 10,
                truncated: true,
                from: Some(client.local_addr().expect("addr")),
                dst: Some(want),
                local: Some(want),
                ifindex: lo,
            }
        );
        assert_eq!(&buf, b"0123");
    }

    #[test]
    fn one_reply_leaves_from_the_chosen_source() {
        let server = bound("0.0.0.0:0");
        let port = server.local_addr().expect("addr").port();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let to = client.local_addr().expect("addr");
        for src in ["127.0.0.2", "127.0.0.3"] {
            let ip: IpAddr = src.parse().expect("ip");
            let from = Source {
                addr: Some(ip),
                ifindex: 0,
            };
            send_one(server.as_raw_fd(), false, b"pong", to, from).expect("send");
            let mut buf = [0u8; 8];
            let (n, seen) = client.recv_from(&mut buf).expect("reply");
            assert_eq!((&buf[..n], seen), (&b"pong"[..], SocketAddr::new(ip, port)));
        }
    }
}
