//! Every way out of FAULT: a node that was FAULT was sent no leases (the active replicates
//! only to a STANDBY or SYNCING peer) or could merge none, so whatever the peer gave out
//! meanwhile is missing here. With a link it leaves through SYNCING (a bulk sync) whatever
//! made it FAULT; without one it stands by and syncs at the next link-up.

use super::tests_support::*;

/// Why a node went FAULT, and the input that ends it.
#[derive(Debug, Clone, Copy)]
enum Cause {
    Health,
    StoreFailed,
}

fn enter(m: &mut Machine, cause: Cause, t: u64) {
    let input = match cause {
        Cause::Health => Input::Health {
            stuck: vec!["link eth0 down".into()],
        },
        Cause::StoreFailed => Input::Store(StoreInput::Failed("No space left on device".into())),
    };
    m.step(input, t, 0);
    assert_eq!(m.state(), HaState::Fault, "{cause:?}");
}

fn leave(m: &mut Machine, cause: Cause, t: u64) -> Vec<Action> {
    let input = match cause {
        Cause::Health => Input::Health { stuck: vec![] },
        Cause::StoreFailed => Input::Store(StoreInput::Healed),
    };
    m.step(input, t, 0)
}

fn syncs(out: &[Action]) -> bool {
    out.iter().any(|a| matches!(a, Action::StartSync))
}

#[test]
fn with_a_link_every_way_out_of_fault_goes_through_a_bulk_sync() {
    for cause in [Cause::Health, Cause::StoreFailed] {
        for (name, start, peer_then) in [
            // The standby went FAULT: the active kept serving and replicated nothing to it.
            (
                "standby",
                connected(
                    secondary(),
                    ps("node-a", Role::Primary, HaState::Active, 1),
                    HaState::Standby,
                    0,
                ),
                ps("node-a", Role::Primary, HaState::Active, 1),
            ),
            // The active went FAULT: the standby took over and gave out leases.
            (
                "active",
                connected(
                    primary(),
                    ps("node-b", Role::Secondary, HaState::Standby, 0),
                    HaState::Active,
                    1,
                ),
                ps("node-b", Role::Secondary, HaState::Active, 2),
            ),
        ] {
            let mut m = start;
            enter(&mut m, cause, 30);
            m.step(Input::Peer(Control::Status(peer_then.clone())), 35, 0);
            let out = leave(&mut m, cause, 40);
            assert_eq!(
                m.state(),
                HaState::Syncing,
                "{cause:?}, was {name}: {:?}",
                failovers(&out)
            );
            assert!(syncs(&out), "{cause:?}, was {name}: {out:?}");
            m.step(
                Input::SyncComplete {
                    detail: "sync".into(),
                },
                50,
                0,
            );
            assert_eq!(m.state(), HaState::Standby, "{cause:?}, was {name}");
        }
    }
}

#[test]
fn without_a_link_a_node_back_from_fault_stands_by_and_syncs_at_the_next_link_up() {
    for cause in [Cause::Health, Cause::StoreFailed] {
        let mut m = primary();
        enter(&mut m, cause, 5);
        let out = leave(&mut m, cause, 30);
        assert_eq!(m.state(), HaState::Standby, "{cause:?}");
        assert!(!syncs(&out), "no link to sync over: {out:?}");
        let out = m.step(
            Input::LinkUp(ps("node-b", Role::Secondary, HaState::Active, 2)),
            40,
            0,
        );
        assert_eq!(m.state(), HaState::Syncing, "{cause:?}");
        assert!(syncs(&out), "{cause:?}: {out:?}");
    }
}

#[test]
fn a_health_fault_of_the_active_node_ends_in_a_sync_before_it_asks_for_the_service_back() {
    // A (primary, preempt) went FAULT on a dead VIP link while its dedicated peer link
    // stayed up; B took over and served. A's carrier returns: it must merge what B gave out
    // before it asks for the service back, or it would serve without those leases.
    let mut a = connected(
        primary(),
        ps("node-b", Role::Secondary, HaState::Standby, 0),
        HaState::Active,
        1,
    );
    enter(&mut a, Cause::Health, 30);
    a.step(
        Input::Peer(Control::Status(ps(
            "node-b",
            Role::Secondary,
            HaState::Active,
            2,
        ))),
        35,
        0,
    );
    let out = leave(&mut a, Cause::Health, 40);
    let f = failovers(&out);
    assert_eq!(
        f.iter().map(|t| (t.0, t.1)).collect::<Vec<_>>(),
        vec![(HaState::Fault, HaState::Syncing)],
        "{out:?}"
    );
    assert!(
        f[0].2.starts_with("can serve again: bulk sync with node-b"),
        "{f:?}"
    );
    assert!(!a.status(0).wants_active, "not before the sync");
    a.step(
        Input::SyncComplete {
            detail: "sync".into(),
        },
        50,
        0,
    );
    assert_eq!(a.state(), HaState::Standby);
    assert!(a.status(0).wants_active, "synced: now it asks");
}
