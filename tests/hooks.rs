//! Script hooks with real `/bin/sh` processes: the documented environment and stdin, ordered
//! delivery, timeouts that kill the whole process group, bounded output, and isolation of a
//! failing hook. (Capabilities of hook scripts are checked on the real daemon in tests/vip.rs.)

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use athena_dhcpd::config::{Config, Dur, ScriptHookConfig};
use athena_dhcpd::events::{Event, EventBus, EventData, EventKind, HaEvent};
use athena_dhcpd::ha::HaState::{self, Active, Fault, Standby};
use athena_dhcpd::hooks::script::{Outcome, ScriptRunner};
use athena_dhcpd::hooks::{self, HookContext, HookMetrics};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

fn failover(old: HaState, new: HaState) -> Event {
    Event::new(
        EventKind::HaFailover,
        "node-a",
        EventData::Ha(HaEvent {
            old_state: old,
            new_state: new,
            reason: "test reason".into(),
            role: athena_dhcpd::config::Role::Primary,
            peer_state: None,
            epoch: 7,
        }),
    )
}

fn runner(command: String, timeout: Duration) -> ScriptRunner {
    ScriptRunner {
        name: "t".into(),
        command,
        timeout,
        vips: "10.0.0.3/24".into(),
        sem: Arc::new(Semaphore::new(4)),
        metrics: HookMetrics::default(),
        shutdown: CancellationToken::new(),
    }
}

fn script(name: &str, command: String) -> ScriptHookConfig {
    ScriptHookConfig {
        name: name.into(),
        events: vec!["ha.*".into()],
        command,
        timeout: Some(Dur(Duration::from_secs(10))),
        subnets: vec![],
    }
}

/// Starts the hooks of the config behind `config` (no VIP hooks): the bus to publish on, the
/// stop token, the metrics, and the handle for a shutdown.
fn start_hooks(
    config: watch::Receiver<Arc<Config>>,
) -> (EventBus, CancellationToken, HookMetrics, hooks::Hooks) {
    let bus = EventBus::new();
    let shutdown = CancellationToken::new();
    let metrics = HookMetrics::default();
    let handle = hooks::start(HookContext {
        bus: bus.clone(),
        shutdown: shutdown.clone(),
        metrics: metrics.clone(),
        config,
    });
    (bus, shutdown, metrics, handle)
}

/// Runs the dispatcher over `scripts` and returns the bus to publish on.
fn dispatcher(scripts: Vec<ScriptHookConfig>) -> (EventBus, CancellationToken, HookMetrics) {
    let mut cfg = Config::default();
    cfg.hooks.scripts = scripts;
    let (tx, rx) = watch::channel(Arc::new(cfg));
    // The sender stays alive for the test: the dispatcher follows reloads through it.
    std::mem::forget(tx);
    let (bus, shutdown, metrics, _) = start_hooks(rx);
    (bus, shutdown, metrics)
}

async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "timed out after {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn pid_alive(pid: i32) -> bool {
    // A zombie is dead for our purpose (it only waits to be reaped by its new parent).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_script_gets_the_documented_env_and_the_event_json_on_stdin() {
    let dir = tempfile::tempdir().expect("tmp");
    let (env, stdin) = (dir.path().join("env"), dir.path().join("stdin"));
    let r = runner(
        format!(
            "env | grep ^ATHENA_ | sort > {}; cat > {}",
            env.display(),
            stdin.display()
        ),
        Duration::from_secs(10),
    );
    let ev = failover(Standby, Active);
    assert_eq!(r.run(&ev).await, Outcome::Exited(0));
    assert_eq!(
        read(&env),
        "ATHENA_EVENT=ha.failover\n\
         ATHENA_EVENT_TYPE=ha.failover\n\
         ATHENA_HA_NEW_STATE=ACTIVE\n\
         ATHENA_HA_OLD_STATE=STANDBY\n\
         ATHENA_HA_REASON=test reason\n\
         ATHENA_HOOK_NAME=t\n\
         ATHENA_VIP=10.0.0.3/24\n"
    );
    let got: serde_json::Value = serde_json::from_str(&read(&stdin)).expect("stdin is JSON");
    let want: serde_json::Value = serde_json::from_str(&ev.to_json()).expect("json");
    assert_eq!(got, want);
    assert_eq!(got["ha"]["new_state"], "ACTIVE");
}

#[tokio::test]
async fn a_timed_out_hook_is_killed_with_its_children_even_those_ignoring_term() {
    let dir = tempfile::tempdir().expect("tmp");
    let (c1, c2) = (dir.path().join("c1"), dir.path().join("c2"));
    let r = runner(
        format!(
            "sleep 1000 & echo $! > {}; (trap '' TERM; exec sleep 1000) & echo $! > {}; sleep 1000",
            c1.display(),
            c2.display()
        ),
        Duration::from_millis(500),
    );
    let t0 = Instant::now();
    let out = r.run(&failover(Standby, Active)).await;
    assert_eq!(out, Outcome::TimedOut);
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "timeout + grace, not 1000 s: {:?}",
        t0.elapsed()
    );
    for f in [&c1, &c2] {
        let pid: i32 = read(f).trim().parse().expect("child pid written");
        wait_for("child gone", Duration::from_secs(5), || !pid_alive(pid)).await;
    }
}

#[tokio::test]
async fn two_quick_failover_events_reach_a_hook_in_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("order");
    let (bus, shutdown, _) = dispatcher(vec![script(
        "order",
        // The first run is slower than the gap between the events.
        format!(
            "[ \"$ATHENA_HA_NEW_STATE\" = ACTIVE ] && sleep 0.3; echo $ATHENA_HA_NEW_STATE >> {}",
            log.display()
        ),
    )]);
    bus.publish(failover(Standby, Active));
    bus.publish(failover(Active, Standby));
    bus.publish(failover(Standby, Fault));
    wait_for("three runs", Duration::from_secs(10), || {
        read(&log).lines().count() == 3
    })
    .await;
    assert_eq!(read(&log), "ACTIVE\nSTANDBY\nFAULT\n");
    shutdown.cancel();
}

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_hook_printing_10_mb_does_not_grow_memory_and_still_finishes() {
    let before = vm_hwm_kb();
    // One 10 MB line on stdout and 10 MB of short lines on stderr.
    let r = runner(
        "head -c 10000000 /dev/zero | tr '\\0' x; yes athena | head -c 10000000 >&2".into(),
        Duration::from_secs(30),
    );
    let t0 = Instant::now();
    assert_eq!(r.run(&failover(Standby, Active)).await, Outcome::Exited(0));
    let grown_kb = vm_hwm_kb().saturating_sub(before);
    assert!(
        grown_kb < 8 * 1024,
        "peak memory grew by {grown_kb} kB while 20 MB went through the hook's pipes"
    );
    // Well inside the 30 s hook timeout (it takes well under a second here): the pipes are
    // drained as fast as the hook writes, not in small bites that make it time out.
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn a_failing_hook_does_not_affect_the_others() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("good");
    let (bus, shutdown, metrics) = dispatcher(vec![
        script("bad", "echo broken >&2; exit 3".into()),
        script(
            "good",
            format!("echo $ATHENA_HA_NEW_STATE >> {}", log.display()),
        ),
    ]);
    bus.publish(failover(Standby, Active));
    bus.publish(failover(Active, Standby));
    wait_for("good hook ran twice", Duration::from_secs(10), || {
        read(&log).lines().count() == 2
    })
    .await;
    let failed = |m: &HookMetrics| {
        m.runs
            .get_or_create(&vec![
                ("hook".to_string(), "bad".to_string()),
                ("result".to_string(), "failed".to_string()),
            ])
            .get()
    };
    wait_for("bad hook failed twice", Duration::from_secs(10), || {
        failed(&metrics) == 2
    })
    .await;
    assert_eq!(read(&log), "ACTIVE\nSTANDBY\n");
    shutdown.cancel();
}

/// The hooks' side of a reload: a new config on the channel the daemon's SIGHUP handler
/// sends to (the signal itself is exercised in tests/daemon.rs).
#[tokio::test]
async fn after_a_reload_events_go_to_the_new_hooks() {
    let dir = tempfile::tempdir().expect("tmp");
    let (old_log, new_log) = (dir.path().join("old"), dir.path().join("new"));
    let mut cfg = Config::default();
    cfg.hooks.scripts = vec![script("old", format!("echo x >> {}", old_log.display()))];
    let (tx, rx) = watch::channel(Arc::new(cfg.clone()));
    let (bus, shutdown, _, _) = start_hooks(rx);
    bus.publish(failover(Standby, Active));
    wait_for("old hook ran", Duration::from_secs(10), || {
        read(&old_log).lines().count() == 1
    })
    .await;
    cfg.hooks.scripts = vec![script("new", format!("echo y >> {}", new_log.display()))];
    tx.send(Arc::new(cfg)).expect("reload");
    bus.publish(failover(Active, Standby));
    wait_for("new hook ran", Duration::from_secs(10), || {
        read(&new_log).lines().count() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        read(&old_log).lines().count(),
        1,
        "the removed hook ran again"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn script_concurrency_bounds_parallel_runs_across_hooks() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("runs");
    let mut cfg = Config::default();
    cfg.hooks.script_concurrency = 1;
    // Each run appends "start" and "end" around a pause; with one slot they never interleave.
    let cmd = format!(
        "echo start >> {0}; sleep 0.2; echo end >> {0}",
        log.display()
    );
    cfg.hooks.scripts = vec![script("one", cmd.clone()), script("two", cmd)];
    let (tx, rx) = watch::channel(Arc::new(cfg));
    let (bus, shutdown, _, _) = start_hooks(rx);
    bus.publish(failover(Standby, Active));
    bus.publish(failover(Active, Standby));
    wait_for("four runs", Duration::from_secs(15), || {
        read(&log).lines().count() == 8
    })
    .await;
    assert_eq!(read(&log), "start\nend\n".repeat(4), "runs overlapped");

    // A reload to two slots applies at once: the two hooks now run side by side.
    let log2 = dir.path().join("runs2");
    let cmd = format!(
        "echo start >> {0}; sleep 1; echo end >> {0}",
        log2.display()
    );
    let mut cfg = Config::default();
    cfg.hooks.script_concurrency = 2;
    cfg.hooks.scripts = vec![script("one", cmd.clone()), script("two", cmd)];
    tx.send(Arc::new(cfg)).expect("reload");
    tokio::time::sleep(Duration::from_millis(100)).await;
    bus.publish(failover(Standby, Active));
    wait_for("two runs", Duration::from_secs(15), || {
        read(&log2).lines().count() == 4
    })
    .await;
    assert_eq!(
        read(&log2),
        "start\nstart\nend\nend\n",
        "the new bound was not applied"
    );
    drop(tx);
    shutdown.cancel();
}

#[tokio::test]
async fn at_shutdown_published_events_are_delivered_and_a_hung_script_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().expect("tmp");
    let (log, pidfile) = (dir.path().join("log"), dir.path().join("pid"));
    let mut cfg = Config::default();
    // "quick" records every event; "hang" never ends on its own.
    cfg.hooks.scripts = vec![
        script(
            "quick",
            format!(
                "sleep 0.2; echo \"$ATHENA_HA_NEW_STATE\" >> {}",
                log.display()
            ),
        ),
        script(
            "hang",
            format!("echo $$ > {}; exec sleep 60", pidfile.display()),
        ),
    ];
    let (_tx, rx) = watch::channel(Arc::new(cfg));
    let (bus, _, _, hooks) = start_hooks(rx);
    bus.publish(failover(Standby, Active));
    // Published right before shutdown, as the VIP's release is: it must still run.
    bus.publish(failover(Active, Standby));
    let started = Instant::now();
    hooks.finish(Duration::from_millis(1500)).await;
    let took = started.elapsed();
    assert_eq!(read(&log), "ACTIVE\nSTANDBY\n", "quick hook missed events");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "finish waited {took:?}, expected the 1.5 s grace and a kill"
    );
    let pid: i32 = read(&pidfile).trim().parse().expect("pid");
    wait_for("hung script killed", Duration::from_secs(5), || {
        !pid_alive(pid)
    })
    .await;
}
