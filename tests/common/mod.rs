//! Shared helpers for integration tests. `netns` gives private network namespaces that are
//! removed on drop (also on panic), so root tests never touch the host's own interfaces;
//! `lab` builds the two-node failover lab on top of it.
#![allow(dead_code)]

pub mod lab;
pub mod netns;
