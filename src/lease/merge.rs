//! The merge policy for the peer's leases, a pure function over the index: the greater in
//! [`Lease::merge_order`] wins (the newer change; on a tie the same winner on both nodes),
//! and a client never keeps two active addresses in one subnet. Both nodes apply it to the
//! same pairs and derive the same result, so two stores converge in any order of exchange
//! (see `merge_tests`).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::index::LeaseIndex;
use super::{Lease, LeaseState};

/// Merges `remote` into `ix` and returns what changed (each address once, its last change),
/// in the order to commit.
pub(super) fn merge_into(ix: &mut LeaseIndex, remote: &[Lease]) -> Vec<Lease> {
    let mut changed: Vec<Lease> = Vec::with_capacity(remote.len());
    // Where each address sits in `changed`: a later change of it replaces the earlier
    // one there (a retain per lease made a frame of 48 leases cost O(n²)).
    let mut at: HashMap<Ipv4Addr, usize> = HashMap::with_capacity(remote.len());
    fn put(changed: &mut Vec<Lease>, at: &mut HashMap<Ipv4Addr, usize>, l: Lease) {
        match at.get(&l.ip) {
            Some(&i) => changed[i] = l,
            None => {
                at.insert(l.ip, changed.len());
                changed.push(l);
            }
        }
    }
    for r in remote {
        let local = ix.get(r.ip);
        if !remote_wins(local, r) {
            continue;
        }
        // A renewal of what this side already has (the address bound to the same client)
        // cannot leave the client with a second active address: any other one would
        // already have been released when this binding was merged.
        let renewal = local.is_some_and(|l| l.state == LeaseState::Active && same_client(l, r));
        // The same client cannot hold two active addresses in one subnet: of its bindings
        // here and the incoming one, the greatest in merge order stays and the others are
        // released, whichever of them arrived first, so both nodes keep the same one.
        let mut incoming = r.clone();
        if r.state == LeaseState::Active && !renewal {
            let rivals: Vec<Lease> = ix
                .by_mac(&r.mac)
                .chain(r.client_id.as_deref().map_or_else(
                    || Box::new(std::iter::empty()) as Box<dyn Iterator<Item = &Lease>>,
                    |c| Box::new(ix.by_client_id(c)),
                ))
                .filter(|l| {
                    l.ip != r.ip
                        && l.state == LeaseState::Active
                        && l.subnet == r.subnet
                        && same_client(l, r)
                })
                .cloned()
                .collect();
            let stronger = rivals
                .iter()
                .filter(|l| l.merge_order(r) == std::cmp::Ordering::Greater)
                .max_by(|a, b| a.merge_order(b));
            match stronger {
                Some(w) => incoming = released_by(r, w),
                None => {
                    for s in &rivals {
                        let s = released_by(s, r);
                        ix.upsert(s.clone());
                        put(&mut changed, &mut at, s);
                    }
                }
            }
        }
        ix.upsert(incoming.clone());
        put(&mut changed, &mut at, incoming);
    }
    changed
}

/// Does `remote` replace `local`? The greater in [`Lease::merge_order`] wins: the newer
/// change, and on a tie of `updated_ms` the same winner on both nodes. An identical copy
/// changes nothing, so merging the same lease twice is a no-op.
fn remote_wins(local: Option<&Lease>, remote: &Lease) -> bool {
    local.is_none_or(|l| remote.merge_order(l) == std::cmp::Ordering::Greater)
}

/// `loser` released because the same client's `winner` binding stays. Later than `loser` by
/// at least 1 ms, so it wins over `loser` on the peer as well, whatever the tie-break; and
/// computed from the two leases alone, so both nodes that meet the pair derive the same
/// release.
fn released_by(loser: &Lease, winner: &Lease) -> Lease {
    Lease {
        state: LeaseState::Released,
        updated_ms: winner.updated_ms.max(loser.updated_ms + 1),
        ..loser.clone()
    }
}

fn same_client(a: &Lease, b: &Lease) -> bool {
    match (&a.client_id, &b.client_id) {
        (Some(x), Some(y)) => x == y,
        _ => a.mac == b.mac,
    }
}
