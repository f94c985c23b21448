//! The two-node simulation: both machines, a simulated link and datagram path, clock,
//! witness and faults, driven by proptest and by a few named scenarios. Each node's inputs
//! queue in an inbox like a socket buffer; a paused node reads them when it resumes.

use super::tests_support::*;
use proptest::prelude::*;
use std::collections::VecDeque;

#[derive(Debug, Clone)]
enum Fault {
    LinkReset,
    Partition(bool),
    Crash {
        node: usize,
        host_down: bool,
    },
    Restart(usize),
    Pause(usize),
    Resume(usize),
    Sigterm(usize),
    Stuck(usize, bool),
    ApiFailover(usize),
    Delay(u64),
    /// The datagram path fails (`true`) or works again, independently of the link.
    DatagramBlock(bool),
    /// The node's LAN port: down (`false`) cuts it off from the peer on every path and makes
    /// it FAULT (no carrier); link frames written meanwhile arrive late when it comes back.
    Carrier(usize, bool),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::LinkReset),
        any::<bool>().prop_map(Fault::Partition),
        (0..2usize, any::<bool>()).prop_map(|(node, host_down)| Fault::Crash { node, host_down }),
        (0..2usize).prop_map(Fault::Restart),
        (0..2usize).prop_map(Fault::Pause),
        (0..2usize).prop_map(Fault::Resume),
        (0..2usize).prop_map(Fault::Sigterm),
        (0..2usize, any::<bool>()).prop_map(|(n, s)| Fault::Stuck(n, s)),
        (0..2usize).prop_map(Fault::ApiFailover),
        prop_oneof![Just(0u64), Just(20), Just(80), Just(700)].prop_map(Fault::Delay),
        any::<bool>().prop_map(Fault::DatagramBlock),
        (0..2usize, any::<bool>()).prop_map(|(n, up)| Fault::Carrier(n, up)),
    ]
}

struct SimNode {
    m: Machine,
    cfg: MachineConfig,
    alive: bool,
    host_down: bool,
    paused: bool,
    stuck: bool,
    /// The LAN port is down: FAULT, and nothing reaches or leaves the node.
    no_carrier: bool,
    next_tick: u64,
    next_dial: u64,
    /// Inputs waiting for this node (delivered in order once `at` ≤ now and not paused).
    inbox: VecDeque<(u64, Input)>,
}

struct Sim {
    n: [SimNode; 2],
    now: u64,
    link: bool,
    link_gen: u64,
    partitioned: bool,
    /// The datagram path (UDP on the LAN) fails on its own.
    dgram_blocked: bool,
    /// Link frames written while a port was down, for node i: TCP sends them again once
    /// both ports are up (late, and older than anything sent since on the datagram path).
    held: [Vec<Control>; 2],
    delay: u64,
    witness: bool,
    /// Last delivery time scheduled per direction (TCP keeps order).
    last_at: [u64; 2],
    /// Pending "sync complete" (node, link generation, at).
    syncs: Vec<(usize, u64, u64)>,
    witness_answers: Vec<(usize, u64)>,
    rng: u64,
    /// After the heal a supervisor restarts any node that exits (e.g. a late SIGTERM).
    healed: bool,
    log: Vec<String>,
}

impl Sim {
    fn new(witness: bool, preempt: bool) -> Sim {
        let mk = |name: &str, role| {
            let mut c = cfg(name, role);
            c.witness = witness;
            c.preempt = preempt;
            SimNode {
                m: Machine::new(c.clone(), 0),
                cfg: c,
                alive: true,
                host_down: false,
                paused: false,
                stuck: false,
                no_carrier: false,
                next_tick: 0,
                next_dial: 0,
                inbox: VecDeque::new(),
            }
        };
        Sim {
            n: [mk("node-a", Role::Primary), mk("node-b", Role::Secondary)],
            now: 0,
            link: false,
            link_gen: 0,
            partitioned: false,
            dgram_blocked: false,
            held: [Vec::new(), Vec::new()],
            delay: 0,
            witness,
            last_at: [0, 0],
            syncs: Vec::new(),
            witness_answers: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
            healed: false,
            log: Vec::new(),
        }
    }

    fn rand_delay(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        if self.delay == 0 {
            0
        } else {
            self.rng % (self.delay + 1)
        }
    }

    fn reset_link(&mut self) {
        if !self.link {
            return;
        }
        self.link = false;
        self.link_gen += 1;
        self.held = [Vec::new(), Vec::new()];
        for i in 0..2 {
            // Frames in flight die with the connection; the EOF arrives after them.
            self.n[i]
                .inbox
                .retain(|(_, inp)| !matches!(inp, Input::Peer(_)));
            let at = self.now;
            self.n[i].inbox.push_back((at, Input::LinkDown));
        }
    }

    fn apply(&mut self, f: &Fault) {
        match *f {
            Fault::LinkReset => self.reset_link(),
            Fault::Partition(on) => {
                self.partitioned = on;
                if on {
                    self.reset_link();
                }
            }
            Fault::Crash { node, host_down } => {
                if self.n[node].alive {
                    self.n[node].alive = false;
                    self.n[node].host_down = host_down;
                    self.reset_link();
                }
            }
            Fault::Restart(node) => self.restart(node),
            Fault::Pause(node) => self.n[node].paused = true,
            Fault::Resume(node) => self.n[node].paused = false,
            Fault::Sigterm(node) => {
                if self.n[node].alive {
                    self.n[node].inbox.push_back((self.now, Input::Shutdown));
                }
            }
            Fault::Stuck(node, s) => self.n[node].stuck = s,
            Fault::ApiFailover(node) => {
                self.n[node].inbox.push_back((self.now, Input::ApiFailover))
            }
            Fault::Delay(d) => self.delay = d,
            Fault::DatagramBlock(on) => self.dgram_blocked = on,
            Fault::Carrier(node, up) => {
                self.n[node].no_carrier = !up;
                if up {
                    self.release_held();
                }
            }
        }
    }

    /// Neither port is down: frames can pass between the nodes.
    fn ports_up(&self) -> bool {
        !self.n[0].no_carrier && !self.n[1].no_carrier
    }

    /// Both ports are up again: TCP retransmits what was written meanwhile (RTO 200 ms).
    fn release_held(&mut self) {
        if !self.ports_up() {
            return;
        }
        for to in 0..2 {
            let from = 1 - to;
            for c in std::mem::take(&mut self.held[to]) {
                let at = (self.now + 200).max(self.last_at[from]);
                self.last_at[from] = at;
                self.n[to].inbox.push_back((at, Input::Peer(c)));
            }
        }
    }

    /// A status on the datagram path: lost while it is blocked, a port is down or the peer's
    /// host is, otherwise delivered after its own delay (unordered with the link's frames).
    fn send_datagram(&mut self, from: usize, status: PeerStatus) {
        let to = 1 - from;
        let o = &self.n[to];
        if self.dgram_blocked || !self.ports_up() || !o.alive || o.host_down {
            return;
        }
        let at = self.now + self.rand_delay();
        let input = Input::Datagram { path: 0, status };
        let inbox = &mut self.n[to].inbox;
        let pos = inbox
            .iter()
            .position(|(t, _)| *t > at)
            .unwrap_or(inbox.len());
        inbox.insert(pos, (at, input));
    }

    fn restart(&mut self, node: usize) {
        let n = &mut self.n[node];
        if n.alive {
            return;
        }
        n.alive = true;
        n.host_down = false;
        n.paused = false;
        // A new incarnation: its boot number is the wall clock at start, always higher.
        n.cfg.boot += 1_000_000 + self.now;
        n.m = Machine::new(n.cfg.clone(), self.now);
        n.inbox.clear();
        n.next_tick = self.now;
        n.next_dial = self.now;
    }

    fn heal(&mut self) {
        self.healed = true;
        self.partitioned = false;
        self.dgram_blocked = false;
        self.delay = 0;
        for i in 0..2 {
            self.n[i].paused = false;
            self.n[i].stuck = false;
            self.n[i].no_carrier = false;
            self.restart(i);
        }
        self.release_held();
    }

    fn run_actions(&mut self, i: usize, actions: Vec<Action>) {
        let other = 1 - i;
        for a in actions {
            match a {
                Action::Send(c) => {
                    // A status goes on every path; handoffs only on the link.
                    if let Control::Status(s) = &c {
                        self.send_datagram(i, s.clone());
                    }
                    if self.link && !self.ports_up() {
                        self.held[other].push(c);
                    } else if self.link {
                        let at = (self.now + self.rand_delay()).max(self.last_at[i]);
                        self.last_at[i] = at;
                        self.n[other].inbox.push_back((at, Input::Peer(c)));
                    }
                }
                Action::CloseLink => {
                    if self.link {
                        self.link = false;
                        self.link_gen += 1;
                        self.held = [Vec::new(), Vec::new()];
                        self.n[other]
                            .inbox
                            .retain(|(_, inp)| !matches!(inp, Input::Peer(_)));
                        self.n[i]
                            .inbox
                            .retain(|(_, inp)| !matches!(inp, Input::Peer(_)));
                        let at = self.now;
                        self.n[other].inbox.push_back((at, Input::LinkDown));
                    }
                }
                Action::ProbeWitness => self.witness_answers.push((i, self.now + 20)),
                Action::StartSync => self.syncs.push((i, self.link_gen, self.now + 30)),
                Action::ShutdownReady => {
                    self.n[i].alive = false;
                    self.n[i].host_down = false;
                    self.reset_link();
                }
                Action::Transition { .. }
                | Action::Fence { .. }
                | Action::Reannounce { .. }
                | Action::Notify { .. }
                | Action::HandoffEnded(_)
                | Action::Refused(_)
                | Action::Log(_) => {}
            }
        }
    }

    fn step(&mut self) {
        if self.healed {
            for i in 0..2 {
                self.restart(i);
            }
        }
        // Link establishment and refused dials.
        for i in 0..2 {
            let other = 1 - i;
            let me = &self.n[i];
            if self.link || !me.alive || me.paused || self.now < me.next_dial {
                continue;
            }
            self.n[i].next_dial = self.now + HB;
            let o = &self.n[other];
            if self.partitioned || o.host_down || !self.ports_up() {
                continue; // SYN unanswered
            }
            if !o.alive {
                self.n[i]
                    .inbox
                    .push_back((self.now, Input::ReconnectRefused));
                continue;
            }
            if o.paused {
                continue; // accepted by the kernel, hello never answered
            }
            self.link = true;
            self.link_gen += 1;
            self.last_at = [self.now, self.now];
            let s0 = self.n[0].m.status(0);
            let s1 = self.n[1].m.status(0);
            self.n[0].inbox.push_back((self.now, Input::LinkUp(s1)));
            self.n[1].inbox.push_back((self.now, Input::LinkUp(s0)));
        }
        // Completions of asynchronous work.
        let now = self.now;
        let gen = self.link_gen;
        let link = self.link;
        let done: Vec<_> = self.syncs.iter().filter(|s| s.2 <= now).cloned().collect();
        self.syncs.retain(|s| s.2 > now);
        for (i, g, _) in done {
            if link && g == gen && self.n[i].alive {
                self.n[i].inbox.push_back((
                    now,
                    Input::SyncComplete {
                        detail: "synced".into(),
                    },
                ));
            }
        }
        let answers: Vec<_> = self
            .witness_answers
            .iter()
            .filter(|w| w.1 <= now)
            .cloned()
            .collect();
        self.witness_answers.retain(|w| w.1 > now);
        let ports_up = self.ports_up();
        for (i, _) in answers {
            let o = &self.n[1 - i];
            // A fenced node holds no VIP; a port down carries no answer.
            let answered = self.witness
                && o.alive
                && !o.paused
                && !o.host_down
                && ports_up
                && o.m.state() == HaState::Active
                && !o.m.fenced();
            self.n[i]
                .inbox
                .push_back((now, Input::Witness { answered }));
        }
        // Each running node handles what is due, then ticks.
        for i in 0..2 {
            if !self.n[i].alive || self.n[i].paused {
                continue;
            }
            while let Some((at, _)) = self.n[i].inbox.front() {
                if *at > self.now {
                    break;
                }
                let Some((_, input)) = self.n[i].inbox.pop_front() else {
                    break;
                };
                if std::env::var_os("SIM_LOG").is_some() {
                    self.log.push(format!("t={} {i} <- {input:?}", self.now));
                }
                let a = self.n[i].m.step(input, self.now, 0);
                self.run_actions(i, a);
                if !self.n[i].alive {
                    break;
                }
            }
            if self.n[i].alive && self.now >= self.n[i].next_tick {
                self.n[i].next_tick = self.now + HB;
                let mut stuck = Vec::new();
                if self.n[i].stuck {
                    stuck.push("dhcp".to_string());
                }
                if self.n[i].no_carrier {
                    stuck.push("eth0 has no carrier".to_string());
                }
                let a = self.n[i].m.step(Input::Health { stuck }, self.now, 0);
                self.run_actions(i, a);
                let a = self.n[i].m.step(Input::Tick, self.now, 0);
                self.run_actions(i, a);
            }
        }
    }

    fn active_count(&self) -> usize {
        self.n
            .iter()
            .filter(|n| n.alive && n.m.state() == HaState::Active)
            .count()
    }
}

const STEP: u64 = 10;

fn simulate(faults: Vec<(u64, Fault)>, witness: bool, preempt: bool) -> Result<(), String> {
    let mut sim = Sim::new(witness, preempt);
    let mut faults: Vec<_> = faults;
    faults.sort_by_key(|f| f.0);
    let fault_end = faults.last().map_or(0, |f| f.0) + STEP;
    let heal_at = fault_end;
    let settle = heal_at + FO + 2000;
    let end = settle + 3000;
    let mut fi = 0;
    // "Stable": both nodes running and healthy, small delays, and a path between them: the
    // link (its frames not held back), or the datagram path. Two ACTIVE nodes that hear each
    // other on either must resolve within a heartbeat.
    let mut stable_since: Option<u64> = None;
    let mut both_active_since: Option<u64> = None;
    let mut trace = Vec::new();
    while sim.now <= end {
        while fi < faults.len() && faults[fi].0 <= sim.now {
            sim.apply(&faults[fi].1);
            trace.push(format!("t={} {:?}", sim.now, faults[fi].1));
            fi += 1;
        }
        if sim.now == heal_at {
            sim.heal();
            trace.push(format!("t={} heal", sim.now));
        }
        let before = (sim.n[0].m.state(), sim.n[1].m.state(), sim.link);
        sim.step();
        let after = (sim.n[0].m.state(), sim.n[1].m.state(), sim.link);
        if before != after {
            trace.push(format!(
                "t={} a={:?}/{} b={:?}/{} link={}",
                sim.now,
                after.0,
                sim.n[0].m.epoch(),
                after.1,
                sim.n[1].m.epoch(),
                after.2
            ));
        }
        let link_ok = sim.link && sim.last_at.iter().all(|&t| t <= sim.now + 80);
        let stable = (link_ok || !sim.dgram_blocked)
            && sim
                .n
                .iter()
                .all(|n| n.alive && !n.paused && !n.stuck && !n.no_carrier)
            && sim.delay <= 80;
        stable_since = if stable {
            stable_since.or(Some(sim.now))
        } else {
            None
        };
        let both = sim.active_count() == 2;
        both_active_since = if both {
            both_active_since.or(Some(sim.now))
        } else {
            None
        };
        if let (Some(s), Some(b)) = (stable_since, both_active_since) {
            // A handoff overlaps the two owners by one frame delay; a meeting of two ACTIVE
            // nodes must resolve within a heartbeat plus the delays.
            let since = s.max(b);
            if sim.now.saturating_sub(since) > 2 * HB + 2 * 80 + 2 * STEP {
                trace.append(&mut sim.log);
                return Err(format!(
                    "two ACTIVE for {}ms with a working path at t={} (link {}, datagrams {}) last_at {:?} inbox {:?}\n{}",
                    sim.now - since,
                    sim.now,
                    sim.link,
                    !sim.dgram_blocked,
                    sim.last_at,
                    sim.n[1].inbox.iter().map(|x| x.0).collect::<Vec<_>>(),
                    trace.join("\n")
                ));
            }
        }
        if sim.now >= settle && sim.active_count() != 1 {
            trace.append(&mut sim.log);
            return Err(format!(
                "{} ACTIVE at t={} (healed at {heal_at}): states {:?}/{:?} alive {}/{} link {}\n{}",
                sim.active_count(),
                sim.now,
                sim.n[0].m.state(),
                sim.n[1].m.state(),
                sim.n[0].alive,
                sim.n[1].alive,
                sim.link,
                trace.join("\n")
            ));
        }
        for n in &sim.n {
            if n.alive && n.m.state() == HaState::Syncing && sim.now > settle {
                return Err(format!("stuck in SYNCING at t={}", sim.now));
            }
        }
        sim.now += STEP;
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::proptest_seed::config(300))]

    #[test]
    fn two_nodes_converge_to_one_active_under_random_faults(
        faults in proptest::collection::vec(((0u64..600).prop_map(|t| t * STEP), fault()), 0..14),
        witness in any::<bool>(),
        preempt in any::<bool>(),
    ) {
        if let Err(e) = simulate(faults, witness, preempt) {
            return Err(TestCaseError::fail(e));
        }
    }
}

#[test]
fn simulated_kill_of_the_active_is_taken_over_within_a_heartbeat() {
    let mut sim = Sim::new(true, true);
    while sim.now < 2000 {
        sim.step();
        sim.now += STEP;
    }
    assert_eq!(sim.n[0].m.state(), HaState::Active);
    sim.apply(&Fault::Crash {
        node: 0,
        host_down: false,
    });
    let killed = sim.now;
    while sim.n[1].m.state() != HaState::Active {
        sim.step();
        sim.now += STEP;
        assert!(
            sim.now - killed <= HB + 50,
            "no takeover within one heartbeat"
        );
    }
}

/// The peer link dead for a long time (a firewall on its port) while the datagram path
/// works: the standby never takes over, nothing changes state.
#[test]
fn simulated_blocked_link_with_working_datagrams_moves_nothing() {
    let mut sim = Sim::new(true, true);
    while sim.now < 2000 {
        sim.step();
        sim.now += STEP;
    }
    assert_eq!(sim.n[0].m.state(), HaState::Active);
    sim.apply(&Fault::Partition(true));
    while sim.now < 2000 + 20 * FO {
        sim.step();
        sim.now += STEP;
        assert_eq!(
            (sim.n[0].m.state(), sim.n[1].m.state()),
            (HaState::Active, HaState::Standby),
            "t={}",
            sim.now
        );
    }
    assert!(!sim.link);
}

/// Every path cut, then the datagram path alone comes back: the two ACTIVE nodes the cut
/// made resolve on the datagrams within a heartbeat, without the link.
#[test]
fn simulated_cut_then_datagrams_back_resolves_two_active_nodes_within_a_heartbeat() {
    let mut sim = Sim::new(false, true);
    while sim.now < 2000 {
        sim.step();
        sim.now += STEP;
    }
    sim.apply(&Fault::Partition(true));
    sim.apply(&Fault::DatagramBlock(true));
    while sim.active_count() != 2 {
        sim.step();
        sim.now += STEP;
        assert!(sim.now < 2000 + 3 * FO, "no takeover without a witness");
    }
    sim.apply(&Fault::DatagramBlock(false));
    let back = sim.now;
    while sim.active_count() != 1 {
        sim.step();
        sim.now += STEP;
        assert!(sim.now - back <= 2 * HB, "still two ACTIVE");
    }
    assert!(!sim.link, "resolved without the link");
}

/// The ACTIVE node's port flaps for less than the failover timeout: TCP delivers what the
/// standby wrote meanwhile late, and the flapped node must not take that for news.
#[test]
fn simulated_port_flap_of_the_active_ends_with_one_active() {
    for flap in [150, 300, 450] {
        let mut sim = Sim::new(true, false);
        while sim.now < 2000 {
            sim.step();
            sim.now += STEP;
        }
        assert_eq!(sim.n[0].m.state(), HaState::Active);
        sim.apply(&Fault::Carrier(0, false));
        let down = sim.now;
        while sim.now < down + flap {
            sim.step();
            sim.now += STEP;
        }
        sim.apply(&Fault::Carrier(0, true));
        let up = sim.now;
        let mut both = 0;
        while sim.now < up + 5 * FO {
            sim.step();
            sim.now += STEP;
            if sim.active_count() == 2 {
                both += STEP;
            }
        }
        assert!(both <= HB, "flap {flap}: two ACTIVE for {both} ms");
        assert_eq!(sim.active_count(), 1, "flap {flap}");
    }
}

#[test]
fn simulated_pause_of_the_active_then_resume_steps_it_down() {
    let mut sim = Sim::new(true, false);
    while sim.now < 2000 {
        sim.step();
        sim.now += STEP;
    }
    assert_eq!(sim.n[0].m.state(), HaState::Active);
    sim.apply(&Fault::Pause(0));
    let paused = sim.now;
    while sim.n[1].m.state() != HaState::Active {
        sim.step();
        sim.now += STEP;
        assert!(
            sim.now - paused <= FO + HB + 50,
            "no takeover after failover_timeout"
        );
    }
    sim.apply(&Fault::Resume(0));
    let resumed = sim.now;
    while sim.active_count() != 1 || sim.n[0].m.state() == HaState::Active {
        sim.step();
        sim.now += STEP;
        assert!(
            sim.now - resumed <= 2 * HB + 50,
            "resumed node did not step down"
        );
    }
}
