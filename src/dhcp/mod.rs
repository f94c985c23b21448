//! DHCPv4 server (RFC 2131/2132): socket loop, pure handler, allocator, options.
//!
//! `packet` checks and encodes the wire format, `plan` turns the config into per-subnet
//! data, `alloc` finds free addresses, `handler` is the protocol as a pure function, and
//! `server` is the thin shell around it: the group commit before each DHCPACK and
//! replication to the standby, with `sockets` (opened before the capability drop),
//! `ratelimit` and `metrics` beside it; `announce` publishes lease events
//! once they are durable. `pools` counts how full each pool is. `api` lists leases and
//! pools. `probe` checks an address is free on the wire before it is offered (conflict
//! detection, with `crate::conflict`).

pub mod alloc;
pub mod announce;
pub mod api;
pub mod classes;
pub mod handler;
pub mod metrics;
pub mod options;
pub mod packet;
pub mod plan;
pub mod pools;
pub mod probe;
pub mod ratelimit;
mod reply;
pub mod server;
pub mod sockets;

#[cfg(test)]
mod class_tests;
#[cfg(test)]
mod tests;
