//! The VIP's decisions against a model of the kernel's address state: no root, no netlink.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const VIP: &str = "10.0.0.3/24";
const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn settings(garp_refresh: Option<Duration>) -> VipSettings {
    VipSettings {
        net: VIP.parse().expect("vip"),
        interface: "eth0".into(),
        garp_count: 3,
        garp_interval: Duration::from_millis(300),
        garp_refresh,
    }
}

fn vip_addr() -> IpAddr {
    VIP.parse::<IpNet>().expect("vip").addr()
}

/// The kernel as far as one VIP is concerned, and a shell that carries out the core's
/// outputs against it the way the worker does.
struct Kernel {
    /// The interface, if it exists.
    link: Option<LinkInfo>,
    /// The VIP is on it.
    present: bool,
    /// The next netlink call fails (EPERM).
    fail_next: bool,
    /// A want HA sends while the next netlink call is in flight.
    want_during_call: Option<Want>,
    announcements: u32,
    reports: Vec<Report>,
    /// The last want delivered to the core: HA's last word.
    last: Want,
}

impl Kernel {
    fn new() -> Kernel {
        Kernel {
            link: Some(link(2, true)),
            present: false,
            fail_next: false,
            want_during_call: None,
            announcements: 0,
            reports: Vec::new(),
            last: Want::Release,
        }
    }

    fn failing(&mut self) -> bool {
        std::mem::take(&mut self.fail_next)
    }

    fn on_index(&self, index: u32) -> bool {
        self.link.as_ref().is_some_and(|l| l.index == index)
    }

    /// Feeds `input` and carries out every output, feeding results back.
    fn feed(&mut self, core: &mut VipClaim, input: Input, now: Instant) {
        if let Input::Want { want, .. } = input {
            self.last = want;
        }
        let mut queue: std::collections::VecDeque<Output> = core.handle(input, now).into();
        while let Some(out) = queue.pop_front() {
            let result = match out {
                Output::LookUpLink => Some(Input::LinkFound(if self.failing() {
                    Err("EPERM".into())
                } else {
                    Ok(self.link.clone())
                })),
                Output::AddAddress { index } => {
                    Some(Input::Added(if self.failing() || !self.on_index(index) {
                        Err("EPERM or ENODEV".into())
                    } else {
                        self.present = true;
                        Ok(())
                    }))
                }
                Output::DeleteAddress { index } => {
                    Some(Input::Deleted(if self.failing() || !self.on_index(index) {
                        Err("EPERM or ENODEV".into())
                    } else {
                        Ok(std::mem::take(&mut self.present))
                    }))
                }
                Output::CheckPresent { index } => Some(Input::Checked(if self.failing() {
                    Err("EPERM".into())
                } else {
                    Ok(self.present && self.on_index(index))
                })),
                Output::Announce(_) => {
                    assert_eq!(
                        core.want,
                        Want::Hold,
                        "an announcement while the newest want is {:?}",
                        core.want
                    );
                    self.announcements += 1;
                    None
                }
                Output::Report(r) => {
                    self.reports.push(r);
                    None
                }
            };
            if let Some(result) = result {
                assert!(queue.is_empty(), "a netlink call was not the last output");
                if let Some(want) = self.want_during_call.take() {
                    self.last = want;
                    queue.extend(core.handle(Input::Want { want, at: now }, now));
                    assert!(queue.is_empty(), "acted on a want during a netlink call");
                }
                queue.extend(core.handle(result, now));
            }
        }
    }
}

fn link(index: u32, up: bool) -> LinkInfo {
    LinkInfo {
        index,
        name: "eth0".into(),
        mac: MAC,
        up,
    }
}

/// Runs timers for `d` from `*now`.
fn advance(k: &mut Kernel, core: &mut VipClaim, now: &mut Instant, d: Duration) {
    let end = *now + d;
    while let Some(t) = core.poll_timeout().filter(|t| *t <= end) {
        *now = t.max(*now);
        k.feed(core, Input::Timer, *now);
    }
    *now = end;
}

#[test]
fn a_hold_adds_and_announces_garp_count_times_and_a_release_removes_with_no_announcement_after() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut core = VipClaim::new(settings(None), t0);
    let mut k = Kernel::new();
    k.feed(
        &mut core,
        Input::Want {
            want: Want::Hold,
            at: t0,
        },
        now,
    );
    assert!(k.present && core.held());
    assert!(k.reports.contains(&Report::Claimed {
        at: t0,
        newly: true
    }));
    advance(&mut k, &mut core, &mut now, Duration::from_secs(5));
    assert_eq!(k.announcements, 3);
    k.feed(
        &mut core,
        Input::Want {
            want: Want::Release,
            at: now,
        },
        now,
    );
    assert!(!k.present && !core.held());
    advance(&mut k, &mut core, &mut now, Duration::from_secs(5));
    assert_eq!(k.announcements, 3);
}

#[test]
fn a_release_during_the_add_announces_nothing_and_removes_the_address_again() {
    let t0 = Instant::now();
    let mut core = VipClaim::new(settings(None), t0);
    let mut k = Kernel::new();
    k.want_during_call = Some(Want::Release);
    k.feed(
        &mut core,
        Input::Want {
            want: Want::Hold,
            at: t0,
        },
        t0,
    );
    assert_eq!(k.announcements, 0, "a superseded claim announced");
    assert!(!k.present && !core.held());
}

#[test]
fn yielding_goes_silent_at_once_and_removes_after_the_linger_unless_taken_back() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut core = VipClaim::new(settings(None), t0);
    let mut k = Kernel::new();
    k.feed(
        &mut core,
        Input::Want {
            want: Want::Hold,
            at: t0,
        },
        now,
    );
    k.feed(
        &mut core,
        Input::Want {
            want: Want::Yield,
            at: now,
        },
        now,
    );
    assert!(k.present, "kept for queries in flight");
    assert_eq!(core.poll_timeout(), Some(now + YIELD_LINGER));
    advance(
        &mut k,
        &mut core,
        &mut now,
        YIELD_LINGER - Duration::from_millis(1),
    );
    assert!(k.present);
    assert_eq!(k.announcements, 1, "announced while yielding");
    advance(&mut k, &mut core, &mut now, Duration::from_millis(1));
    assert!(!k.present && !core.held());

    k.feed(
        &mut core,
        Input::Want {
            want: Want::Hold,
            at: now,
        },
        now,
    );
    k.feed(
        &mut core,
        Input::Want {
            want: Want::Yield,
            at: now,
        },
        now,
    );
    k.feed(
        &mut core,
        Input::Want {
            want: Want::Hold,
            at: now,
        },
        now,
    );
    advance(&mut k, &mut core, &mut now, YIELD_LINGER * 4);
    assert!(k.present && core.held(), "a hold cancels the yield");
}

#[test]
fn a_conflict_is_reported_and_defended_only_if_still_held_after_the_hold_off() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut core = VipClaim::new(settings(None), t0);
    let mut k = Kernel::new();
    k.feed(
        &mut core,
        Input::Want {
            want: Want::Hold,
            at: t0,
        },
        now,
    );
    advance(&mut k, &mut core, &mut now, Duration::from_secs(2));
    let seen = ArpSeen {
        operation: 1,
        sender_mac: [2, 0, 0, 0, 0, 9],
        sender_ip: "10.0.0.3".parse().expect("ip"),
        target_ip: "10.0.0.3".parse().expect("ip"),
    };
    k.feed(&mut core, Input::Arp { seen, ifindex: 2 }, now);
    // HA hears of the rival at once (it asks its peer), the defence waits for the hold-off.
    assert_eq!(
        k.reports.last(),
        Some(&Report::Rival {
            rival: seen.sender_mac
        })
    );
    assert!(!k.reports.contains(&Report::Defending));
    advance(&mut k, &mut core, &mut now, DEFEND_HOLDOFF);
    assert!(k.reports.contains(&Report::Conflict {
        rival: seen.sender_mac,
        own_mac: MAC
    }));
    assert!(k.reports.contains(&Report::Defending));

    // A planned handoff: the peer announces, then we yield within the hold-off: silent.
    let before = k.reports.len();
    k.feed(&mut core, Input::Arp { seen, ifindex: 2 }, now);
    k.feed(
        &mut core,
        Input::Want {
            want: Want::Yield,
            at: now,
        },
        now,
    );
    advance(&mut k, &mut core, &mut now, DEFEND_HOLDOFF * 2);
    assert!(!k.reports[before..]
        .iter()
        .any(|r| matches!(r, Report::Conflict { .. } | Report::Defending)));
}

#[test]
fn a_missing_interface_fails_with_backoff_and_the_claim_follows_when_it_appears() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut core = VipClaim::new(settings(None), t0);
    let mut k = Kernel::new();
    k.link = None;
    k.feed(
        &mut core,
        Input::Want {
            want: Want::Hold,
            at: t0,
        },
        now,
    );
    assert!(matches!(
        k.reports.last(),
        Some(Report::Failed { what: "claim", msg, first: true, .. }) if msg.contains("interface \"eth0\" not found for VIP 10.0.0.3/24")
    ));
    assert_eq!(core.poll_timeout(), Some(now + Backoff::FIRST));
    k.link = Some(link(7, true));
    k.feed(&mut core, Input::Link(link(7, true)), now);
    assert!(k.present && core.held());
    assert!(k.reports.contains(&Report::Succeeded { recovered: true }));
    advance(&mut k, &mut core, &mut now, Duration::from_secs(60));
}

/// One step of the property test's world.
#[derive(Debug, Clone)]
enum Step {
    Want(Want),
    /// HA changes its mind while the next netlink call is in flight.
    WantDuringCall(Want),
    /// `ip addr del` by someone else; `news`: netlink tells us. Without, the monitor has
    /// overrun: it reports a resync later, and the refresh check (when on) may notice first.
    DeletedByHand {
        news: bool,
    },
    Carrier(bool),
    /// The interface is deleted (its addresses with it) or re-created with a new index.
    LinkDeleted,
    LinkCreated,
    Resync,
    Conflict,
    FailNext,
    Wait(u64),
}

fn want() -> impl Strategy<Value = Want> {
    prop_oneof![Just(Want::Hold), Just(Want::Release), Just(Want::Yield)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => want().prop_map(Step::Want),
        1 => want().prop_map(Step::WantDuringCall),
        1 => any::<bool>().prop_map(|news| Step::DeletedByHand { news }),
        1 => any::<bool>().prop_map(Step::Carrier),
        1 => Just(Step::LinkDeleted),
        1 => Just(Step::LinkCreated),
        1 => Just(Step::Resync),
        1 => Just(Step::Conflict),
        1 => Just(Step::FailNext),
        3 => (0u64..2_000).prop_map(Step::Wait),
    ]
}

proptest! {
    #![proptest_config(crate::proptest_seed::config(2000))]

    /// For any sequence of wants, netlink news, failures and timers: once the link is back
    /// with carrier and the timers have run, the address is on exactly when the last want
    /// says hold, and the core's `held` agrees with the kernel.
    #[test]
    fn the_address_ends_present_exactly_when_the_last_want_says_hold(
        steps in proptest::collection::vec(step(), 0..60),
        refresh in any::<bool>(),
    ) {
        let t0 = Instant::now();
        let mut now = t0;
        let refresh = refresh.then_some(Duration::from_secs(5));
        let mut core = VipClaim::new(settings(refresh), t0);
        let mut k = Kernel::new();
        let mut next_index = 3;
        let mut resync_owed = false;
        // The start-up want (a role that does not serve): the leftover clean-up.
        k.feed(&mut core, Input::Want { want: Want::Release, at: now }, now);
        for s in steps {
            match s {
                Step::Want(w) => {
                    k.feed(&mut core, Input::Want { want: w, at: now }, now);
                }
                Step::WantDuringCall(w) => {
                    // Applied at the next netlink call, or now if none comes before the end.
                    if let Some(old) = k.want_during_call.replace(w) {
                        k.feed(&mut core, Input::Want { want: old, at: now }, now);
                    }
                }
                Step::DeletedByHand { news } => {
                    if k.present {
                        k.present = false;
                        if let (true, Some(l)) = (news, &k.link) {
                            let index = l.index;
                            k.feed(&mut core, Input::AddressRemoved { index, addr: vip_addr() }, now);
                        }
                        resync_owed |= !news;
                    }
                }
                Step::Carrier(up) => {
                    if let Some(l) = &mut k.link {
                        l.up = up;
                        let info = l.clone();
                        k.feed(&mut core, Input::Link(info), now);
                    }
                }
                Step::LinkDeleted => {
                    if let Some(l) = k.link.take() {
                        if std::mem::take(&mut k.present) {
                            k.feed(&mut core, Input::AddressRemoved { index: l.index, addr: vip_addr() }, now);
                        }
                        k.feed(&mut core, Input::LinkRemoved { index: l.index }, now);
                    }
                }
                Step::LinkCreated => {
                    if k.link.is_none() {
                        next_index += 1;
                        k.link = Some(link(next_index, true));
                        k.feed(&mut core, Input::Link(link(next_index, true)), now);
                    }
                }
                Step::Resync => k.feed(&mut core, Input::Resync, now),
                Step::Conflict => {
                    let seen = ArpSeen {
                        operation: 1,
                        sender_mac: [2, 0, 0, 0, 0, 9],
                        sender_ip: "10.0.0.3".parse().expect("ip"),
                        target_ip: "10.0.0.3".parse().expect("ip"),
                    };
                    let ifindex = k.link.as_ref().map_or(0, |l| l.index);
                    k.feed(&mut core, Input::Arp { seen, ifindex }, now);
                }
                Step::FailNext => k.fail_next = true,
                Step::Wait(ms) => advance(&mut k, &mut core, &mut now, Duration::from_millis(ms)),
            }
            prop_assert!(core.is_idle(), "the shell left a netlink call unanswered");
        }
        // Settle: the link returns with carrier, nothing fails any more, HA's last word
        // is in, the timers run out (retries, the linger, bursts).
        k.fail_next = false;
        if resync_owed && refresh.is_none() {
            k.feed(&mut core, Input::Resync, now);
        }
        if let Some(w) = k.want_during_call.take() {
            k.feed(&mut core, Input::Want { want: w, at: now }, now);
        }
        match &mut k.link {
            Some(l) if !l.up => {
                l.up = true;
                let info = l.clone();
                k.feed(&mut core, Input::Link(info), now);
            }
            Some(_) => {}
            None => {
                next_index += 1;
                k.link = Some(link(next_index, true));
                k.feed(&mut core, Input::Link(link(next_index, true)), now);
            }
        }
        advance(&mut k, &mut core, &mut now, Duration::from_secs(120));
        prop_assert_eq!(k.present, k.last == Want::Hold, "last want {:?}, reports {:?}", k.last, k.reports);
        prop_assert_eq!(core.held(), k.present);
    }
}
