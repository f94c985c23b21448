//! FAULT and every way out of it: a failing store or VIP health takes a node out of service
//! and its peer takes over. A node that was FAULT may miss what the peer gave out meanwhile
//! (one whose store failed is sent no leases, a stuck one merged none), so with a link it
//! leaves through SYNCING (a bulk sync) whatever made it FAULT; without one it stands by and
//! syncs at the next link-up, or serves again when nobody else does.

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

#[test]
fn a_lone_node_back_from_fault_serves_again_within_failover_timeout() {
    // The peer is gone (host down); our VIP link flaps: FAULT, then healthy again. Nobody
    // else can serve, so we must not sit in STANDBY for long.
    let mut m = primary();
    let mut t = 0;
    let mut active_at = None;
    while t < 10 * FO {
        t += HB;
        for a in m.step(Input::Tick, t, 0) {
            if matches!(a, Action::ProbeWitness) {
                m.step(Input::Witness { answered: false }, t, 0);
            }
        }
        if m.state() == HaState::Active {
            active_at = Some(t);
            break;
        }
    }
    assert!(active_at.is_some(), "never ACTIVE alone");
    m.step(
        Input::Health {
            stuck: vec!["link eth0 down".into()],
        },
        t,
        0,
    );
    assert_eq!(m.state(), HaState::Fault);
    t += 3 * FO;
    m.step(Input::Health { stuck: vec![] }, t, 0);
    assert_eq!(m.state(), HaState::Standby);
    let back = t;
    while m.state() != HaState::Active && t < back + 10 * FO {
        t += HB;
        for a in m.step(Input::Tick, t, 0) {
            if matches!(a, Action::ProbeWitness) {
                m.step(Input::Witness { answered: false }, t, 0);
            }
        }
    }
    assert_eq!(m.state(), HaState::Active, "still not serving");
    assert!(
        t - back <= FO + HB,
        "ACTIVE {} ms after recovering, want ≤ failover_timeout",
        t - back
    );
}

#[test]
fn back_from_fault_a_node_does_not_trust_what_it_heard_before_the_fault() {
    // A was ACTIVE with B standby; A's VIP link lost carrier (FAULT), which also cut the
    // peer link; B took over meanwhile. When A can serve again it must not act on B's old
    // "STANDBY": it waits for fresh news, and the witness sees the VIP served.
    let b = ps("node-b", Role::Secondary, HaState::Standby, 0);
    let mut m = connected(primary(), b, HaState::Active, 1);
    m.step(
        Input::Health {
            stuck: vec!["link eth0 down".into()],
        },
        30,
        0,
    );
    assert_eq!(m.state(), HaState::Fault);
    let out = m.step(Input::Tick, 30 + FO + HB, 0);
    assert!(
        out.iter().any(|a| matches!(a, Action::CloseLink)),
        "a silent peer link is closed even in FAULT: {out:?}"
    );
    m.step(Input::LinkDown, 30 + FO + HB, 0);
    let mut t = 30 + FO + HB;
    while t < 30 + 2 * FO {
        t += HB;
        m.step(Input::Tick, t, 0);
    }
    m.step(Input::Health { stuck: vec![] }, t, 0);
    assert_eq!(
        m.state(),
        HaState::Standby,
        "went ACTIVE on stale peer news"
    );
    // The silence that leads to a takeover counts from its return: it asks the witness a
    // failover timeout (less the witness's time) after it, as the peer would have.
    let mut asked = false;
    for _ in 0..FO / HB + 1 {
        t += HB;
        for a in m.step(Input::Tick, t, 0) {
            asked |= matches!(a, Action::ProbeWitness);
        }
        if asked {
            break;
        }
    }
    assert!(asked, "a lone standby asks the witness");
    m.step(Input::Witness { answered: true }, t, 0);
    assert_eq!(m.state(), HaState::Standby, "took the VIP the peer serves");
}

fn store(m: &mut Machine, input: StoreInput, t: u64) -> Vec<Action> {
    m.step(Input::Store(input), t, 0)
}

#[test]
fn an_active_node_whose_store_fails_goes_fault_and_its_standby_peer_takes_over() {
    let b = ps("node-b", Role::Secondary, HaState::Standby, 0);
    let mut a = connected(primary(), b, HaState::Active, 1);
    let out = store(
        &mut a,
        StoreInput::Failed("No space left on device".into()),
        30,
    );
    assert_eq!(a.state(), HaState::Fault);
    let f = failovers(&out);
    assert_eq!(f.len(), 1, "{out:?}");
    assert_eq!(
        f[0].2,
        "lease database cannot be written: No space left on device"
    );
    assert!(
        out.iter()
            .any(|x| matches!(x, Action::Send(Control::Status(s)) if s.state == HaState::Fault)),
        "the peer is told at once: {out:?}"
    );
    // B, hearing FAULT, takes the service without waiting for a timeout.
    let a_status = ps("node-a", Role::Primary, HaState::Fault, 1);
    let mut b = connected(
        secondary(),
        ps("node-a", Role::Primary, HaState::Active, 1),
        HaState::Standby,
        0,
    );
    b.step(Input::Peer(Control::Status(a_status)), 31, 0);
    assert_eq!((b.state(), b.epoch()), (HaState::Active, 2));
}

#[test]
fn a_healed_store_resyncs_before_standing_by_and_health_alone_does_not_end_its_fault() {
    let b = ps("node-b", Role::Secondary, HaState::Standby, 0);
    let mut a = connected(primary(), b, HaState::Active, 1);
    store(
        &mut a,
        StoreInput::Failed("Read-only file system".into()),
        30,
    );
    let b_active = ps("node-b", Role::Secondary, HaState::Active, 2);
    a.step(Input::Peer(Control::Status(b_active)), 35, 0);
    // Healthy workers do not end a store fault.
    a.step(Input::Health { stuck: vec![] }, 40, 0);
    assert_eq!(a.state(), HaState::Fault);
    let out = store(&mut a, StoreInput::Healed, 50);
    assert_eq!(a.state(), HaState::Syncing, "{out:?}");
    assert!(
        out.iter().any(|x| matches!(x, Action::StartSync)),
        "{out:?}"
    );
    a.step(
        Input::SyncComplete {
            detail: "sync".into(),
        },
        60,
        0,
    );
    assert_eq!(a.state(), HaState::Standby);
    assert!(
        a.status(0).wants_active,
        "a synced primary asks for the service back"
    );
}

#[test]
fn a_store_that_heals_while_a_worker_is_stuck_stays_fault() {
    let mut a = primary();
    store(&mut a, StoreInput::Failed("Input/output error".into()), 5);
    a.step(
        Input::Health {
            stuck: vec!["dhcp worker stuck".into()],
        },
        6,
        0,
    );
    store(&mut a, StoreInput::Healed, 7);
    assert_eq!(a.state(), HaState::Fault);
    a.step(Input::Health { stuck: vec![] }, 8, 0);
    assert_eq!(a.state(), HaState::Standby);
}

#[test]
fn a_rebuilt_store_serves_only_after_a_complete_bulk_sync() {
    let mut a = primary();
    store(&mut a, StoreInput::NeedsResync, 1);
    assert_eq!(a.state(), HaState::Fault);
    // Alone, silence never makes it take over with an empty database.
    for t in (HB..10 * FO).step_by(HB as usize) {
        for x in a.step(Input::Tick, t, 0) {
            if matches!(x, Action::ProbeWitness) {
                a.step(Input::Witness { answered: false }, t, 0);
            }
        }
    }
    assert_eq!(a.state(), HaState::Fault);
    let t = 10 * FO;
    let out = a.step(
        Input::LinkUp(ps("node-b", Role::Secondary, HaState::Active, 3)),
        t,
        0,
    );
    assert!(
        out.iter().any(|x| matches!(x, Action::StartSync)),
        "{out:?}"
    );
    assert_eq!(a.state(), HaState::Fault, "not before the sync is complete");
    a.step(
        Input::SyncComplete {
            detail: "sync".into(),
        },
        t + 1,
        0,
    );
    assert_eq!(a.state(), HaState::Standby);
}
