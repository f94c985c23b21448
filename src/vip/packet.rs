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

/// Sends one Ethernet frame out of interface `ifindex` to `dest` (the frame's own
/// destination; the kernel takes the link-layer header from the frame itself).
pub fn send_frame(
    sock: &OwnedFd,
    ifindex: u32,
    ethertype: u16,
    dest: [u8; 6],
    frame: &[u8],
) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid starting value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ethertype.to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&dest);
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
    // SAFETY: as in send_frame.
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
