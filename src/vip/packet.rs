//! The two `AF_PACKET` sockets of the VIP manager, opened once at start-up while the process
//! still has CAP_NET_RAW (the kernel checks it only at `socket()`), then used after the drop.
//!
//! - `send`: protocol 0, so it receives nothing (a socket bound to ETH_P_ARP would also queue
//!   every ARP of every interface and fill up unread); frames go out with `sendto` and a
//!   `sockaddr_ll` naming the interface index.
//! - `arp_rx`: protocol ETH_P_ARP, non-blocking, read continuously by the defender, so its
//!   queue never fills; frames carry the interface index and packet type.
//!
//! Both belong to the network namespace they were opened in.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::arp::ETH_P_ARP;

/// The pre-opened packet sockets.
#[derive(Debug)]
pub struct PacketSockets {
    pub send: OwnedFd,
    pub arp_rx: OwnedFd,
}

impl PacketSockets {
    /// Opens both sockets; needs CAP_NET_RAW now, never again.
    pub fn open() -> io::Result<PacketSockets> {
        let arp_rx = packet_socket(ETH_P_ARP, true)?;
        // Kernel receive timestamps tell a live conflict from one that queued up while
        // this process was stopped (SIGSTOP, a long pause): see `recv_frame`. The first
        // SIOCGSTAMP turns stamping on for the socket (and fails: nothing received yet).
        // SO_TIMESTAMP would not do: it sends stamps as cmsgs and leaves SIOCGSTAMP empty.
        let mut tv = zero_timeval();
        // SAFETY: SIOCGSTAMP writes at most one timeval to the pointer passed.
        let _ = unsafe { libc::ioctl(arp_rx.as_raw_fd(), SIOCGSTAMP as _, &mut tv) };
        Ok(PacketSockets {
            send: packet_socket(0, false)?,
            arp_rx,
        })
    }
}

pub(crate) fn packet_socket(protocol: u16, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut ty = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
    if nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain socket(2) call; the result is checked before it is wrapped.
    let fd = unsafe { libc::socket(libc::AF_PACKET, ty, i32::from(protocol.to_be())) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The link-layer address a frame is sent to: interface, EtherType and destination MAC.
fn link_addr(ifindex: u32, ethertype: u16, dest: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid starting value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ethertype.to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&dest);
    sll
}

/// Sends one Ethernet frame out of interface `ifindex` to `dest` (the frame's own
/// destination; the kernel takes the link-layer header from the frame itself).
pub fn send_frame(
    sock: &OwnedFd,
    ifindex: u32,
    ethertype: u16,
    dest: [u8; 6],
    frame: &[u8],
) -> io::Result<()> {
    let sll = link_addr(ifindex, ethertype, dest);
    // SAFETY: the buffer and address pointers are valid for the lengths passed.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != frame.len() {
        return Err(io::Error::other(format!(
            "short send: {n} of {} bytes",
            frame.len()
        )));
    }
    Ok(())
}

/// Sends frames out of their interfaces in one call (`sendmmsg`), each to its own
/// destination: `(ifindex, frame)`, the destination taken from the frame's first six bytes.
/// Returns how many left, in order, and why the next one did not.
pub fn send_frames(
    sock: &OwnedFd,
    ethertype: u16,
    frames: &[(u32, &[u8])],
) -> (usize, Option<io::Error>) {
    let addrs: Vec<libc::sockaddr_ll> = frames
        .iter()
        .map(|(ifindex, frame)| {
            let mut dest = [0u8; 6];
            let n = frame.len().min(6);
            dest[..n].copy_from_slice(&frame[..n]);
            link_addr(*ifindex, ethertype, dest)
        })
        .collect();
    let mut iovs: Vec<libc::iovec> = frames
        .iter()
        .map(|(_, frame)| libc::iovec {
            iov_base: frame.as_ptr().cast_mut().cast(),
            iov_len: frame.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .zip(&addrs)
        .map(|(iov, sll)| {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid starting value.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = std::ptr::from_ref(sll).cast_mut().cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut done = 0;
    while done < msgs.len() {
        let rest = &mut msgs[done..];
        // SAFETY: every header points at an address and a buffer that live until this
        // function returns; the kernel reads them and writes only `msg_len`.
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                rest.as_mut_ptr(),
                rest.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return (done, Some(io::Error::last_os_error()));
        }
        if n == 0 {
            return (done, Some(io::Error::other("sendmmsg sent nothing")));
        }
        done += n as usize;
    }
    (done, None)
}

/// One frame from the receive socket.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub ifindex: u32,
    /// `PACKET_HOST`, `PACKET_BROADCAST`, ..., `PACKET_OUTGOING` (our own frames).
    pub pkttype: u8,
    /// When the kernel received it (None when the socket has no timestamps).
    pub received: Option<std::time::SystemTime>,
}

/// `SIOCGSTAMP`: the receive time of the last frame read (not exported by `libc`).
const SIOCGSTAMP: libc::c_ulong = 0x8906;

fn zero_timeval() -> libc::timeval {
    libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    }
}

/// Reads one frame without blocking (`WouldBlock` when none is queued).
pub fn recv_frame(sock: &OwnedFd, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut alen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the buffer and address pointers are valid for the lengths passed.
    let n = unsafe {
        libc::recvfrom(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&mut sll as *mut libc::sockaddr_ll).cast(),
            &mut alen,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut tv = zero_timeval();
    // SAFETY: SIOCGSTAMP writes one timeval to the pointer passed.
    let stamped = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGSTAMP as _, &mut tv) } == 0;
    let received = (stamped && tv.tv_sec > 0).then(|| {
        std::time::UNIX_EPOCH
            + std::time::Duration::new(tv.tv_sec as u64, (tv.tv_usec as u32).saturating_mul(1000))
    });
    Ok(Received {
        len: n as usize,
        ifindex: sll.sll_ifindex as u32,
        pkttype: sll.sll_pkttype,
        received,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brings the loopback interface (index 1) of the calling thread's namespace up.
    fn loopback_up(sock: &OwnedFd) {
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, b) in req.ifr_name.iter_mut().zip(b"lo") {
            *d = *b as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads one ifreq through a valid pointer.
        let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) };
        assert_eq!(r, 0, "lo up: {}", io::Error::last_os_error());
    }

    #[test]
    fn frames_leave_in_order_until_one_cannot_and_say_why() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: a network namespace and a packet socket need root");
            return;
        }
        // A thread of its own in a network namespace of its own: frames stay on its loopback.
        std::thread::spawn(|| {
            // SAFETY: unshare(2) changes only this thread's network namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            let sock = packet_socket(0, false).expect("packet socket");
            let f = super::super::arp::probe_frame([2, 0, 0, 0, 0, 1], [10, 0, 0, 1].into());
            // Loopback is down in a new namespace: nothing leaves.
            let (n, e) = send_frames(&sock, ETH_P_ARP, &[(1, &f[..])]);
            assert_eq!(n, 0);
            assert_eq!(e.and_then(|e| e.raw_os_error()), Some(libc::ENETDOWN));
            loopback_up(&sock);
            // Interface 77 does not exist: the two before it leave, it and the one after do not.
            let frames = [(1, &f[..]), (1, &f[..]), (77, &f[..]), (1, &f[..])];
            let (n, e) = send_frames(&sock, ETH_P_ARP, &frames);
            assert_eq!(n, 2);
            assert_eq!(e.and_then(|e| e.raw_os_error()), Some(libc::ENXIO));
            assert_eq!(send_frames(&sock, ETH_P_ARP, &frames[..2]).0, 2);
            let (n, e) = send_frames(&sock, ETH_P_ARP, &[]);
            assert_eq!((n, e.is_none()), (0, true));
        })
        .join()
        .expect("the test thread");
    }
}
