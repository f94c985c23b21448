//! Shared helpers for integration tests. `netns` gives private network namespaces that are
//! removed on drop (also on panic), so root tests never touch the host's own interfaces.
#![allow(dead_code)]

pub mod netns;
