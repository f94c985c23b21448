//! Event hooks: per-hook ordered delivery to scripts and webhooks.
//!
//! One dispatcher task reads the event bus and routes each event to the hooks whose
//! `events` patterns match (and, for script hooks with `subnets`, whose subnets hold the
//! lease). Invariants:
//! - a hook sees its events in publish order: each script/webhook hook has one bounded queue
//!   and one task that handles one event at a time;
//! - a slow hook delays nobody: routing never waits (`try_send`); a full queue drops the
//!   event for that hook only, counted in `athena_hook_events_dropped_total` and logged on the
//!   first drop and every 1000th;
//! - `[[hooks.vip]]` is configured here but is not a listener: the VIP follows HA's typed
//!   [`crate::ha::role::ServiceRole`] watch, never this bus (which may drop). Its `events`
//!   key is still accepted, for compatibility, and ignored;
//! - on SIGHUP the script and webhook hooks (and `script_concurrency`) follow the new config
//!   (old queues drain first); VIP hooks need a restart;
//! - at shutdown the hooks outlive the rest of the daemon ([`Hooks::finish`]): the events of
//!   the shutdown itself (the handoff's `ha.failover`, the VIP's `vip.released`) are still
//!   delivered and running scripts may finish, for a bounded grace period; what still runs
//!   then is killed (script process groups) or abandoned (webhook retries).

pub mod script;
pub mod webhook;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::{Event, EventBus, EventData, EventKind, KindMask, Subscription};

type Labels = Vec<(String, String)>;
type HistFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Hook metrics (registered under the daemon's `athena_` prefix).
#[derive(Clone)]
pub struct HookMetrics {
    pub dropped: Family<Labels, Counter>,
    pub runs: Family<Labels, Counter>,
    pub duration: HistFamily,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~4.4 min
    Histogram::new(exponential_buckets(0.001, 4.0, 10))
}

impl Default for HookMetrics {
    fn default() -> Self {
        HookMetrics {
            dropped: Family::default(),
            runs: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
        }
    }
}

impl HookMetrics {
    pub fn register(registry: &mut Registry) -> HookMetrics {
        let m = HookMetrics::default();
        registry.register(
            "hook_events_dropped",
            "Events a hook's full queue refused",
            m.dropped.clone(),
        );
        registry.register(
            "hook_runs",
            "Hook runs by result (ok, failed, timeout, error)",
            m.runs.clone(),
        );
        registry.register(
            "hook_run_duration_seconds",
            "How long hook runs took",
            m.duration.clone(),
        );
        m
    }

    pub fn record_run(&self, hook: &str, result: &str, secs: f64) {
        self.runs
            .get_or_create(&vec![
                ("hook".to_string(), hook.to_string()),
                ("result".to_string(), result.to_string()),
            ])
            .inc();
        self.duration
            .get_or_create(&vec![("hook".to_string(), hook.to_string())])
            .observe(secs);
    }
}

/// Does a hook with these patterns and subnet filter want this event?
pub fn hook_wants(patterns: &[String], subnets: &[Ipv4Net], event: &Event) -> bool {
    if !patterns.iter().any(|p| event.kind.matches(p)) {
        return false;
    }
    match (&event.data, subnets.is_empty()) {
        (EventData::Lease(l), false) => subnets.iter().any(|n| n.contains(&l.ip)),
        _ => true,
    }
}

/// What the dispatcher needs from the daemon.
#[derive(Clone)]
pub struct HookContext {
    pub bus: EventBus,
    /// Stops the hooks at once: running scripts are killed. The daemon's own shutdown goes
    /// through [`Hooks::finish`] instead, which cancels this only after the grace period.
    pub shutdown: CancellationToken,
    pub metrics: HookMetrics,
    pub config: watch::Receiver<Arc<Config>>,
}

/// A script or webhook hook's end of the routing table.
struct Queue {
    name: String,
    patterns: Vec<String>,
    subnets: Vec<Ipv4Net>,
    tx: mpsc::Sender<(Arc<Event>, Instant)>,
    dropped: Arc<AtomicU64>,
}

/// The running hooks, for the daemon's shutdown.
pub struct Hooks {
    flush: CancellationToken,
    stop: CancellationToken,
    /// Closed when the dispatcher and every hook task have ended (each holds a sender).
    done: mpsc::Receiver<()>,
}

impl Hooks {
    /// Delivers every event already published, lets each hook work through its queue for up
    /// to `grace`, then kills what still runs. Call it after the rest of the daemon stopped,
    /// so the events of the shutdown itself (`vip.released`) reach the scripts and webhooks.
    pub async fn finish(mut self, grace: Duration) {
        self.flush.cancel();
        if tokio::time::timeout(grace, self.done.recv()).await.is_err() {
            tracing::warn!(
                "hooks still running {:.1}s after shutdown began; killing them",
                grace.as_secs_f64()
            );
            self.stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), self.done.recv()).await;
        }
    }
}

/// Subscribes to the bus now (so no event published after this returns is missed) and
/// spawns the dispatcher and one task per script/webhook hook.
pub fn start(mut ctx: HookContext) -> Hooks {
    // Marked seen here, not when the dispatcher first runs: a reload in between is a change.
    let cfg = ctx.config.borrow_and_update().clone();
    let slots = ScriptSlots::new(cfg.hooks.script_concurrency);
    let (alive, done) = mpsc::channel(1);
    let queues = spawn_queues(&cfg, &ctx, &slots.sem, &alive);
    let sub = ctx.bus.subscribe_to(
        "hooks",
        cfg.hooks.queue_size.max(16),
        KindMask::of(kinds_wanted(&queues)),
    );
    let flush = CancellationToken::new();
    let stop = ctx.shutdown.clone();
    let applied = hook_fingerprint(&cfg);
    tokio::spawn(dispatch(
        ctx,
        sub,
        queues,
        applied,
        slots,
        flush.clone(),
        alive,
    ));
    Hooks { flush, stop, done }
}

/// The bound on script runs at once (`hooks.script_concurrency`): the semaphore every script
/// task of one configuration shares, and the size it was made with. The size is kept because
/// the semaphore's free permits at any instant are the size less the runs in flight.
struct ScriptSlots {
    sem: Arc<Semaphore>,
    limit: usize,
}

impl ScriptSlots {
    fn new(configured: usize) -> ScriptSlots {
        let limit = configured.max(1);
        ScriptSlots {
            sem: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

fn spawn_queues(
    cfg: &Arc<Config>,
    ctx: &HookContext,
    sem: &Arc<Semaphore>,
    alive: &mpsc::Sender<()>,
) -> Vec<Queue> {
    let mut out = Vec::new();
    let cap = cfg.hooks.queue_size.max(1);
    let vips = cfg
        .hooks
        .vips
        .iter()
        .map(|v| v.address.clone())
        .collect::<Vec<_>>()
        .join(" ");
    for h in &cfg.hooks.scripts {
        let (tx, rx) = mpsc::channel(cap);
        let run = script::ScriptRunner {
            name: h.name.clone(),
            command: h.command.clone(),
            timeout: h.timeout.unwrap_or(cfg.hooks.script_timeout).get(),
            vips: vips.clone(),
            sem: sem.clone(),
            metrics: ctx.metrics.clone(),
            shutdown: ctx.shutdown.clone(),
        };
        let alive = alive.clone();
        tokio::spawn(async move {
            script::serve(run, rx).await;
            drop(alive);
        });
        out.push(Queue {
            name: h.name.clone(),
            patterns: h.events.clone(),
            subnets: h.subnets.clone(),
            tx,
            dropped: Arc::default(),
        });
    }
    for h in &cfg.hooks.webhooks {
        let (tx, rx) = mpsc::channel(cap);
        let hook = webhook::Webhook::new(h, ctx.metrics.clone(), ctx.shutdown.clone());
        let alive = alive.clone();
        tokio::spawn(async move {
            webhook::serve(hook, rx).await;
            drop(alive);
        });
        out.push(Queue {
            name: h.name.clone(),
            patterns: h.events.clone(),
            subnets: Vec::new(),
            tx,
            dropped: Arc::default(),
        });
    }
    out
}

/// The kinds at least one hook's patterns select: the bus passes the hooks nothing else.
fn kinds_wanted(queues: &[Queue]) -> impl Iterator<Item = EventKind> + '_ {
    EventKind::ALL.into_iter().filter(|k| {
        queues
            .iter()
            .any(|q| q.patterns.iter().any(|p| k.matches(p)))
    })
}

async fn dispatch(
    mut ctx: HookContext,
    sub: Subscription,
    mut queues: Vec<Queue>,
    mut fingerprint: String,
    mut slots: ScriptSlots,
    flush: CancellationToken,
    alive: mpsc::Sender<()>,
) {
    let Subscription { mut rx, kinds, .. } = sub;
    let mut config_live = true;
    loop {
        // A reload is applied before events that are already waiting: whoever changed the
        // config and then caused an event expects the new hooks to see it.
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => return,
            _ = flush.cancelled() => {
                // Route what is already published; dropping the queues then lets each hook
                // task finish its backlog and end.
                while let Ok(ev) = rx.try_recv() {
                    route(&ctx, &ev, &queues);
                }
                return;
            }
            changed = ctx.config.changed(), if config_live => {
                if changed.is_err() {
                    // The daemon dropped the config sender: keep the hooks we have.
                    config_live = false;
                    continue;
                }
                let cfg = ctx.config.borrow_and_update().clone();
                let now = hook_fingerprint(&cfg);
                if now == fingerprint {
                    // Untouched hooks keep their queues (and so their order across reloads).
                    continue;
                }
                fingerprint = now;
                if cfg.hooks.script_concurrency.max(1) != slots.limit {
                    // Runs in flight finish under the old bound; new ones take the new one.
                    slots = ScriptSlots::new(cfg.hooks.script_concurrency);
                }
                // Dropping the old senders lets each old hook task finish its queue and exit.
                queues = spawn_queues(&cfg, &ctx, &slots.sem, &alive);
                kinds.set(kinds_wanted(&queues));
                tracing::info!(hooks = queues.len(), "script and webhook hooks reloaded");
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                route(&ctx, &ev, &queues);
            }
        }
    }
}

/// What a reload must compare to know whether script/webhook hooks changed.
fn hook_fingerprint(cfg: &Config) -> String {
    let h = &cfg.hooks;
    serde_json::to_string(&(
        &h.scripts,
        &h.webhooks,
        h.script_timeout,
        h.queue_size,
        h.script_concurrency,
    ))
    .unwrap_or_default()
}

fn route(ctx: &HookContext, ev: &Arc<Event>, queues: &[Queue]) {
    let now = Instant::now();
    for q in queues
        .iter()
        .filter(|q| hook_wants(&q.patterns, &q.subnets, ev))
    {
        match q.tx.try_send((ev.clone(), now)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                ctx.metrics
                    .dropped
                    .get_or_create(&vec![("hook".to_string(), q.name.clone())])
                    .inc();
                let n = q.dropped.fetch_add(1, Ordering::Relaxed);
                if n % 1000 == 0 {
                    tracing::warn!(
                        hook = %q.name,
                        event = %ev.kind,
                        dropped_total = n + 1,
                        "hook {} is behind: its queue is full, dropped {} ({} dropped so far)",
                        q.name,
                        ev.kind,
                        n + 1
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventKind, HaEvent, LeaseEvent};

    fn lease(ip: &str) -> Event {
        Event::new(
            EventKind::LeaseAck,
            "n",
            EventData::Lease(LeaseEvent {
                ip: ip.parse().expect("ip"),
                mac: "02:00:00:00:00:01".into(),
                hostname: None,
                client_id: None,
                subnet: "10.0.0.0/24".into(),
                lease_start: 0,
                lease_expiry: 0,
                lease_duration: 0,
            }),
        )
    }

    #[test]
    fn patterns_and_subnets_select_the_events_a_hook_gets() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ha = Event::new(
            EventKind::HaFailover,
            "n",
            EventData::Ha(HaEvent::default()),
        );
        assert!(hook_wants(&p(&["ha.*"]), &[], &ha));
        assert!(hook_wants(&p(&["*"]), &[], &ha));
        assert!(!hook_wants(&p(&["lease.*"]), &[], &ha));
        let nets: Vec<Ipv4Net> = vec!["10.0.0.0/24".parse().expect("net")];
        assert!(hook_wants(&p(&["lease.ack"]), &nets, &lease("10.0.0.9")));
        assert!(!hook_wants(&p(&["lease.ack"]), &nets, &lease("10.1.0.9")));
        // The subnet filter applies to lease events only.
        assert!(hook_wants(&p(&["*"]), &nets, &ha));
    }

    #[tokio::test]
    async fn the_bus_passes_the_hooks_only_what_their_patterns_name_across_a_reload() {
        let script = |events: &[&str]| crate::config::ScriptHookConfig {
            name: "s".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            command: "/bin/true".into(),
            timeout: None,
            subnets: vec![],
        };
        let mut cfg = Config::default();
        cfg.hooks.scripts = vec![script(&["vip.*"])];
        let bus = EventBus::new();
        let (config_tx, config) = watch::channel(Arc::new(cfg.clone()));
        let _hooks = start(HookContext {
            bus: bus.clone(),
            shutdown: CancellationToken::new(),
            metrics: HookMetrics::default(),
            config,
        });
        assert!(bus.wants(EventKind::VipClaimed));
        assert!(
            !bus.wants(EventKind::LeaseAck),
            "no hook names lease.ack, yet the bus would build and route it"
        );
        cfg.hooks.scripts = vec![script(&["vip.*"]), script(&["lease.ack"])];
        config_tx.send(Arc::new(cfg)).expect("send");
        let deadline = Instant::now() + Duration::from_secs(2);
        while !bus.wants(EventKind::LeaseAck) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            bus.wants(EventKind::LeaseAck),
            "the reload's hook gets no lease.ack"
        );
        assert!(!bus.wants(EventKind::LeaseRelease));
    }

    #[tokio::test]
    async fn a_full_hook_queue_drops_and_counts_without_blocking_the_next_hook() {
        let bus = EventBus::new();
        let (_ctx_tx, config) = watch::channel(Arc::new(Config::default()));
        let ctx = HookContext {
            bus,
            shutdown: CancellationToken::new(),
            metrics: HookMetrics::default(),
            config,
        };
        let (slow_tx, _slow_rx) = mpsc::channel(1);
        let (fast_tx, mut fast_rx) = mpsc::channel(16);
        let queues = vec![
            Queue {
                name: "slow".into(),
                patterns: vec!["*".into()],
                subnets: vec![],
                tx: slow_tx,
                dropped: Arc::default(),
            },
            Queue {
                name: "fast".into(),
                patterns: vec!["*".into()],
                subnets: vec![],
                tx: fast_tx,
                dropped: Arc::default(),
            },
        ];
        for i in 0..5u64 {
            let ev = Arc::new(Event::new(
                EventKind::HaFailover,
                "n",
                EventData::Ha(HaEvent {
                    epoch: i,
                    ..Default::default()
                }),
            ));
            route(&ctx, &ev, &queues);
        }
        assert_eq!(queues[0].dropped.load(Ordering::Relaxed), 4);
        assert_eq!(
            ctx.metrics
                .dropped
                .get_or_create(&vec![("hook".to_string(), "slow".to_string())])
                .get(),
            4
        );
        for i in 0..5u64 {
            let (ev, _) = fast_rx.recv().await.expect("event");
            assert!(
                matches!(&ev.data, EventData::Ha(h) if h.epoch == i),
                "in order"
            );
        }
    }
}
