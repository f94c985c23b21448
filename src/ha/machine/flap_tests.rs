//! A node back from FAULT (a port flap, a stuck worker) doubts what it heard of the peer
//! before: the chaos suite's seed 4 flapped the ACTIVE node's port for 454 ms, and the node
//! retook the VIP on its pre-flap "peer is STANDBY" while the peer, which heard nothing from
//! it for a failover timeout, took over too (the VIP on both for 1.4 s).

use super::tests_support::*;

/// A heartbeat datagram on the node's one datagram path.
fn dgram(status: PeerStatus) -> Input {
    Input::Datagram { path: 0, status }
}

fn names(out: &[Action]) -> Vec<String> {
    out.iter().map(action_name).collect()
}

/// A's port went down at `DOWN` (FAULT on its next tick) and came back `FLAP` ms later,
/// shorter than the failover timeout. B was STANDBY and was last heard just before.
const DOWN: u64 = 30;
const FLAP: u64 = 270;
const _: () = assert!(FLAP < FO);

/// Node A ACTIVE at epoch 1 with B STANDBY on the link, through a flap of its VIP link: back
/// from FAULT at `DOWN + FLAP` (returned), STANDBY again. What it last heard of B says STANDBY.
fn back_from_a_flap() -> (Machine, u64, Vec<Action>) {
    let b = ps("node-b", Role::Secondary, HaState::Standby, 0);
    let mut a = connected(primary(), b, HaState::Active, 1);
    let stuck = || Input::Health {
        stuck: vec!["link eth0 of floating IP 10.0.0.3/24 is down (no carrier)".into()],
    };
    a.step(stuck(), DOWN, 0);
    assert_eq!(a.state(), HaState::Fault);
    let back = DOWN + FLAP;
    let mut t = DOWN;
    while t + HB < back {
        t += HB;
        a.step(stuck(), t, 0);
        a.step(Input::Tick, t, 0);
    }
    let mut out = a.step(Input::Health { stuck: vec![] }, back, 0);
    // Out of FAULT with the link up it resyncs first (B may have given out leases).
    assert_eq!(a.state(), HaState::Syncing, "{out:?}");
    out.extend(a.step(
        Input::SyncComplete {
            detail: "bulk sync from node-b complete".into(),
        },
        back,
        0,
    ));
    // The node task ticks right after.
    out.extend(a.step(Input::Tick, back, 0));
    (a, back, out)
}

#[test]
fn back_from_a_flap_shorter_than_failover_timeout_a_node_does_not_retake_on_its_old_view() {
    let (a, _, out) = back_from_a_flap();
    assert_eq!(a.state(), HaState::Standby, "{out:?}");
    let asked = a.status(0).ask;
    assert_ne!(asked, 0, "it asks the peer on every path");
    assert!(
        out.iter()
            .any(|x| matches!(x, Action::Send(Control::Status(s)) if s.ask == asked)),
        "the question goes out at once: {out:?}"
    );
}

#[test]
fn back_from_a_flap_a_status_written_before_the_question_does_not_make_it_take_over() {
    let (mut a, back, _) = back_from_a_flap();
    // TCP retransmits what B wrote during the flap; datagrams from B that crossed the question.
    let old = ps("node-b", Role::Secondary, HaState::Standby, 0);
    let out = a.step(Input::Peer(Control::Status(old.clone())), back + 5, 0);
    assert_eq!(a.state(), HaState::Standby, "{out:?}");
    let out = a.step(dgram(old), back + 10, 0);
    assert_eq!(a.state(), HaState::Standby, "{out:?}");
    let out = a.step(Input::Tick, back + HB, 0);
    assert_eq!(a.state(), HaState::Standby, "{out:?}");
}

#[test]
fn back_from_a_flap_the_answer_of_a_standby_peer_gives_the_primary_the_service_at_once() {
    let (mut a, back, _) = back_from_a_flap();
    let answer = PeerStatus {
        answer: a.status(0).ask,
        ..ps("node-b", Role::Secondary, HaState::Standby, 0)
    };
    let out = a.step(dgram(answer), back + 3, 0);
    assert_eq!((a.state(), a.epoch()), (HaState::Active, 2), "{out:?}");
}

#[test]
fn back_from_a_flap_a_peer_that_took_over_meanwhile_keeps_the_service() {
    let (mut a, back, _) = back_from_a_flap();
    let b_active = ps("node-b", Role::Secondary, HaState::Active, 2);
    let out = a.step(dgram(b_active), back + 3, 0);
    assert_eq!(a.state(), HaState::Standby, "{out:?}");
}

/// The peer heard nothing from this node while it was FAULT, so it takes over a failover
/// timeout after the fault began; this node, had it counted from before the fault too, would
/// ask the witness at the same moment, and both would find the VIP free.
#[test]
fn back_from_a_flap_the_silence_that_leads_to_a_takeover_counts_from_the_return() {
    let (mut a, back, _) = back_from_a_flap();
    let probe_at = back + FO - a.config().witness_ms;
    let mut t = back;
    while t + HB < probe_at {
        t += HB;
        let out = a.step(Input::Tick, t, 0);
        assert!(
            !names(&out).contains(&"probe".to_string()),
            "t={t}: {out:?}"
        );
    }
    let out = a.step(Input::Tick, probe_at, 0);
    assert!(names(&out).contains(&"probe".to_string()), "{out:?}");
    a.step(Input::Witness { answered: false }, probe_at + 20, 0);
    assert_eq!(
        a.state(),
        HaState::Active,
        "alone, it serves after the timeout"
    );
}

/// A peer that never answers (an older version without questions) still hears a node back
/// from FAULT: after a failover timeout the doubt ends and the usual rules decide.
#[test]
fn back_from_a_flap_the_doubt_ends_after_a_failover_timeout() {
    let (mut a, back, _) = back_from_a_flap();
    let old = ps("node-b", Role::Secondary, HaState::Standby, 0);
    let mut t = back;
    while a.state() == HaState::Standby && t < back + 3 * FO {
        t += HB;
        a.step(Input::Peer(Control::Status(old.clone())), t, 0);
        a.step(Input::Tick, t, 0);
    }
    assert_eq!(a.state(), HaState::Active);
    assert!(
        t >= back + FO && t <= back + FO + HB,
        "took over at +{}",
        t - back
    );
}

/// Both machines of a pair through the flap of the seed-4 run: A's frames to B are lost for
/// a while after its port came back (the kernel still resolving B's address), B's reach A.
/// B takes over on A's silence; A, back from FAULT, must not take over on its old view.
#[test]
fn a_flap_with_a_one_way_blackout_after_it_leaves_one_node_serving() {
    let (mut a, back, _) = back_from_a_flap();
    let b_first = ps("node-a", Role::Primary, HaState::Active, 1);
    let mut b = connected(secondary(), b_first, HaState::Standby, 0);
    // B last heard A at 20 (the sync); A's FAULT status was lost with the port.
    let mut t = back;
    let mut b_took = None;
    let blackout_end = DOWN + 3 * FO;
    while t < blackout_end {
        t += 10;
        if t % HB == 0 {
            for x in b.step(Input::Tick, t, 0) {
                if matches!(x, Action::ProbeWitness) {
                    // The VIP's answer from A would be lost like A's other frames.
                    b.step(Input::Witness { answered: false }, t, 0);
                }
                // B → A works: every status B sends reaches A as a datagram.
                if let Action::Send(Control::Status(s)) = x {
                    a.step(dgram(s), t, 0);
                }
            }
            for x in a.step(Input::Tick, t, 0) {
                if matches!(x, Action::ProbeWitness) {
                    // A's question to the VIP is lost the same way.
                    a.step(Input::Witness { answered: false }, t, 0);
                }
            }
        }
        if b.state() == HaState::Active {
            b_took.get_or_insert(t);
        }
        assert!(
            !(a.state() == HaState::Active && b.state() == HaState::Active),
            "both ACTIVE at t={t}"
        );
    }
    assert!(b_took.is_some(), "B never took over from the silent A");
    assert_eq!(a.state(), HaState::Standby);
}
