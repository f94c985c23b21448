//! Address and link work over rtnetlink: what `ip addr add/del` and `ip link show` do, with
//! only CAP_NET_ADMIN, in well under a millisecond on a warm connection.
//!
//! Idempotence is the contract: adding an address that is there already is success (the
//! request carries NLM_F_REPLACE, not NLM_F_EXCL), deleting one that is gone is success
//! (ENOENT / EADDRNOTAVAIL / ENODEV), so a retried claim or release never fails for having
//! half-succeeded before. The connection must be polled by a thread that still has
//! CAP_NET_ADMIN in its effective set (netlink checks the sending thread, not the socket).

use std::net::IpAddr;

use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{AddressMessageBuilder, Handle};

/// An interface as the VIP needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    /// Administratively up and with carrier (IFF_UP and IFF_LOWER_UP/RUNNING).
    pub up: bool,
}

/// A failed netlink request, with the errno when the kernel gave one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op}: {message}")]
pub struct NetlinkError {
    pub op: String,
    /// Positive errno (EPERM = 1, ...), when the kernel answered with an error.
    pub errno: Option<i32>,
    pub message: String,
}

impl NetlinkError {
    fn from_rt(op: String, e: rtnetlink::Error) -> NetlinkError {
        let errno = match &e {
            rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
            _ => None,
        };
        let message = match errno {
            Some(code) => {
                let io = std::io::Error::from_raw_os_error(code);
                if code == libc::EPERM || code == libc::EACCES {
                    format!("{io}: the process needs CAP_NET_ADMIN to change addresses (grant it with setcap or the systemd unit's AmbientCapabilities=)")
                } else {
                    io.to_string()
                }
            }
            None => e.to_string(),
        };
        NetlinkError { op, errno, message }
    }

    pub fn is_permission(&self) -> bool {
        matches!(self.errno, Some(libc::EPERM) | Some(libc::EACCES))
    }
}

/// A handle on one rtnetlink connection (cheap to clone).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection and spawns its I/O task on the current tokio runtime.
    pub fn connect() -> std::io::Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The interface named `name`, or None when it does not exist.
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_info(&msg))),
            Ok(None) => Ok(None),
            Err(e) => {
                let e = NetlinkError::from_rt(format!("looking up interface {name:?}"), e);
                if e.errno == Some(libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Adds `net` on interface `index`; already present is success. IPv6 skips DAD: the
    /// address moves between nodes and must answer at once.
    pub async fn add(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let mut req = self
            .handle
            .address()
            .add(index, net.addr(), net.prefix_len())
            .replace();
        if net.addr().is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(|e| NetlinkError::from_rt(format!("adding {net} to ifindex {index}"), e))
    }

    /// Removes `net` from interface `index`. Returns whether it was there.
    pub async fn del(&self, index: u32, net: IpNet) -> Result<bool, NetlinkError> {
        let msg = address_message(index, net);
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = NetlinkError::from_rt(format!("removing {net} from ifindex {index}"), e);
                match e.errno {
                    Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT) | Some(libc::ENODEV) => {
                        Ok(false)
                    }
                    _ => Err(e),
                }
            }
        }
    }

    /// Is `addr` configured on interface `index` (with any prefix)?
    pub async fn present(&self, index: u32, addr: IpAddr) -> Result<bool, NetlinkError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(addr)
            .execute();
        let mut found = false;
        // Drain the whole dump: leaving it half-read would leave replies queued.
        while let Some(r) = s.next().await {
            match r {
                Ok(_) => found = true,
                Err(e) => {
                    return Err(NetlinkError::from_rt(
                        format!("listing addresses of ifindex {index}"),
                        e,
                    ))
                }
            }
        }
        Ok(found)
    }
}

fn address_message(index: u32, net: IpNet) -> AddressMessage {
    match net {
        IpNet::V4(n) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(index)
            .address(n.addr(), n.prefix_len())
            .build(),
        IpNet::V6(n) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
            .index(index)
            .address(n.addr(), n.prefix_len())
            .build(),
    }
}

fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mac: [0; 6],
        up: msg.header.flags.contains(LinkFlags::Up)
            && (msg.header.flags.contains(LinkFlags::LowerUp)
                || msg.header.flags.contains(LinkFlags::Running)),
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Address(m) if m.len() == 6 => info.mac.copy_from_slice(m),
            _ => {}
        }
    }
    info
}

/// Address and link news the VIP workers react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// An address disappeared from an interface (someone ran `ip addr del`, or the link went).
    AddressRemoved { index: u32, addr: IpAddr },
    /// A link appeared or changed (up/down, MAC, new index after re-creation).
    Link(LinkInfo),
    /// A link was deleted.
    LinkRemoved { index: u32 },
    /// The monitor socket overran: events were lost, so every worker re-checks its address.
    Resync,
}

/// Subscribes to address and link notifications (like `ip monitor address link`) and
/// forwards them, parsed, to `tx` until every receiver is gone.
pub fn spawn_monitor(tx: tokio::sync::broadcast::Sender<NetEvent>) -> std::io::Result<()> {
    use rtnetlink::MulticastGroup;
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Link,
    ])?;
    tokio::spawn(conn);
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let Some(ev) = net_event(msg) else { continue };
            if tx.send(ev).is_err() {
                return;
            }
        }
        // The connection ended (socket error): tell the workers so they re-check by polling.
        let _ = tx.send(NetEvent::Resync);
    });
    Ok(())
}

fn net_event(msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<NetEvent> {
    match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(m)) => {
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = addr.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            })?;
            Some(NetEvent::AddressRemoved {
                index: m.header.index,
                addr,
            })
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
            Some(NetEvent::Link(link_info(&m)))
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
            Some(NetEvent::LinkRemoved {
                index: m.header.index,
            })
        }
        NetlinkPayload::Overrun(_) => Some(NetEvent::Resync),
        _ => None,
    }
}
