//! The datagram path and self-fencing, input by input: news on any path keeps a peer alive,
//! two ACTIVE nodes resolve on it, a stale copy changes nothing, and a node back from a stall
//! serves only once the peer answered its question or the witness decided.

use super::tests_support::*;

/// A datagram from `from` on path 0.
fn dgram(status: PeerStatus) -> Input {
    Input::Datagram { path: 0, status }
}

fn names(out: &[Action]) -> Vec<String> {
    out.iter().map(action_name).collect()
}

/// Node A ACTIVE at epoch 1 (alone), then its loop stalls for longer than the failover
/// timeout: the first input after the stall fences it and asks the peer.
fn stalled_active() -> (Machine, u64, Vec<Action>) {
    let mut a = alone_and_active(primary());
    a.step(Input::Tick, FO, 0);
    let resume = FO + FO + 300;
    let out = a.step(Input::Tick, resume, 0);
    (a, resume, out)
}

#[test]
fn a_stall_longer_than_failover_timeout_fences_an_active_node_and_asks_the_peer() {
    let (a, _, out) = stalled_active();
    let n = names(&out);
    assert!(n.contains(&"fence".to_string()), "{n:?}");
    assert!(n.contains(&"send_status".to_string()), "{n:?}");
    assert_eq!(a.state(), HaState::Active);
    assert!(a.fenced());
    assert_ne!(a.status(0).ask, 0, "the question goes out with the status");
    // No transition: the fence is not a state change.
    assert!(failovers(&out).is_empty(), "{out:?}");
}

#[test]
fn a_short_pause_does_not_fence() {
    let mut a = alone_and_active(primary());
    a.step(Input::Tick, FO, 0);
    let out = a.step(Input::Tick, FO + FO - HB - 10, 0);
    assert!(!a.fenced(), "{out:?}");
}

/// The last heartbeat may have left up to a heartbeat before the last step (a status read
/// in between), so the peer can take over while the gap is still under the failover
/// timeout: a gap past the serve lease fences, or the first step after it would renew the
/// lease for the DISCOVERs queued meanwhile.
#[test]
fn a_stall_past_the_serve_lease_but_under_failover_timeout_fences() {
    let mut a = alone_and_active(primary());
    a.step(Input::Tick, FO, 0);
    let gap = a.config().serve_lease_ms() + 10;
    assert!(gap < FO);
    let out = a.step(Input::Tick, FO + gap, 0);
    assert!(a.fenced(), "{out:?}");
}

#[test]
fn a_status_queued_during_the_stall_does_not_unfence() {
    let (mut a, t, _) = stalled_active();
    // Written before the question: its answer is not the current ask.
    let out = a.step(
        dgram(ps("node-b", Role::Secondary, HaState::Standby, 0)),
        t + 1,
        0,
    );
    assert!(a.fenced(), "{out:?}");
}

#[test]
fn the_answer_of_a_standby_peer_unfences() {
    let (mut a, t, _) = stalled_active();
    let ask = a.status(0).ask;
    let b = PeerStatus {
        answer: ask,
        ..ps("node-b", Role::Secondary, HaState::Standby, 0)
    };
    let out = a.step(dgram(b), t + 5, 0);
    assert!(names(&out).contains(&"unfence".to_string()), "{out:?}");
    assert!(!a.fenced());
    assert_eq!(a.state(), HaState::Active);
}

#[test]
fn the_answer_of_a_peer_that_took_over_with_a_higher_epoch_steps_down_without_serving() {
    let (mut a, t, _) = stalled_active();
    let ask = a.status(0).ask;
    let b = PeerStatus {
        answer: ask,
        ..ps("node-b", Role::Secondary, HaState::Active, 2)
    };
    let out = a.step(dgram(b), t + 5, 0);
    assert_eq!(a.state(), HaState::Standby, "{out:?}");
    // Never unfenced on the way: nothing announced the VIP again.
    assert!(!names(&out).contains(&"unfence".to_string()), "{out:?}");
}

#[test]
fn without_an_answer_the_witness_decides() {
    for (answered, want, fenced) in [
        (true, HaState::Standby, false),
        (false, HaState::Active, false),
    ] {
        let (mut a, t, _) = stalled_active();
        let out = a.step(Input::Tick, t + 250, 0);
        assert!(names(&out).contains(&"probe".to_string()), "{out:?}");
        assert!(a.fenced(), "still fenced while the witness is asked");
        let out = a.step(Input::Witness { answered }, t + 260, 0);
        assert_eq!(
            (a.state(), a.fenced()),
            (want, fenced),
            "{answered}: {out:?}"
        );
    }
}

#[test]
fn a_standby_that_hears_the_active_by_datagram_only_never_takes_over() {
    let mut b = secondary();
    let a = ps("node-a", Role::Primary, HaState::Active, 1);
    for t in (0..20 * FO).step_by(HB as usize) {
        let mut out = b.step(dgram(a.clone()), t, 0);
        out.extend(b.step(Input::Tick, t + 1, 0));
        assert!(
            !names(&out).contains(&"probe".to_string()),
            "t={t}: {out:?}"
        );
        assert_eq!(b.state(), HaState::Standby, "t={t}");
    }
}

#[test]
fn two_active_nodes_that_hear_each_other_by_datagram_resolve_at_once() {
    let mut a = alone_and_active(primary());
    let out = a.step(
        dgram(ps("node-b", Role::Secondary, HaState::Active, 2)),
        FO,
        0,
    );
    assert_eq!(a.state(), HaState::Standby, "{out:?}");
    let mut b = took_over_from(secondary(), ps("node-a", Role::Primary, HaState::Active, 1));
    let out = b.step(
        dgram(ps("node-a", Role::Primary, HaState::Active, 1)),
        100,
        0,
    );
    assert_eq!(b.state(), HaState::Active, "{out:?}");
}

#[test]
fn a_late_copy_from_the_slower_path_changes_nothing() {
    let mut b = secondary();
    let newer = PeerStatus {
        gen: 3,
        ..ps("node-a", Role::Primary, HaState::Active, 4)
    };
    let older = PeerStatus {
        gen: 2,
        ..ps("node-a", Role::Primary, HaState::Standby, 3)
    };
    b.step(dgram(newer.clone()), 10, 0);
    b.step(dgram(older), 11, 0);
    assert_eq!(b.peer(), Some(&newer));
}

#[test]
fn a_question_is_answered_at_once_on_every_path() {
    let mut b = secondary();
    let asking = PeerStatus {
        ask: 77,
        ..ps("node-a", Role::Primary, HaState::Active, 1)
    };
    let out = b.step(dgram(asking.clone()), 10, 0);
    let sent: Vec<u64> = out
        .iter()
        .filter_map(|a| match a {
            Action::Send(Control::Status(s)) => Some(s.answer),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![77], "{out:?}");
    // The same question again is not answered twice.
    let out = b.step(dgram(asking), 20, 0);
    assert!(!names(&out).contains(&"send_status".to_string()), "{out:?}");
}

#[test]
fn a_quiet_link_while_datagrams_arrive_is_one_path_down_event_not_a_peer_down() {
    let a = ps("node-a", Role::Primary, HaState::Active, 1);
    let mut b = connected(secondary(), a.clone(), HaState::Standby, 0);
    let mut all = Vec::new();
    for t in (30..30 + 3 * FO).step_by(HB as usize) {
        all.extend(b.step(dgram(a.clone()), t, 0));
        all.extend(b.step(Input::Tick, t + 1, 0));
    }
    let n = names(&all);
    assert_eq!(
        n.iter().filter(|s| *s == "ha.path_down").count(),
        1,
        "{n:?}"
    );
    assert!(!n.contains(&"ha.peer_down".to_string()), "{n:?}");
    assert!(
        n.contains(&"close".to_string()),
        "the dead link is closed: {n:?}"
    );
    assert_eq!(b.state(), HaState::Standby);
    let paths = b.paths(30 + 3 * FO);
    assert!(paths[0].down && !paths[1].down, "{paths:?}");
}

#[test]
fn a_vip_conflict_without_fresh_news_asks_the_peer() {
    let mut a = alone_and_active(primary());
    a.step(Input::Tick, FO, 0);
    let out = a.step(Input::VipConflict, FO + 300, 0);
    assert!(names(&out).contains(&"send_status".to_string()), "{out:?}");
    assert_ne!(a.status(0).ask, 0);
    assert!(!a.fenced(), "a conflict asks but does not fence");
}
