//! `[[hooks.script]]`: runs `command` under `/bin/sh -c` with the event JSON on stdin and the
//! documented `ATHENA_*` environment ([`script_env`], pure and tested).
//!
//! Invariants:
//! - each run is its own process group, so a timeout (or daemon shutdown) kills the shell
//!   *and* everything it started: SIGTERM to the group, then SIGKILL after a grace period;
//! - the script gets no capabilities: the daemon cleared ambient, inheritable and bounding
//!   sets in `main` before any thread existed (see `privileges`);
//! - output cannot grow memory without bound: stdout/stderr are read in fixed-size chunks,
//!   logged line by line (lines cut at [`MAX_LINE`]) up to [`MAX_LOGGED`] bytes per stream
//!   and run, and the rest is read and counted but discarded, so the script never blocks on
//!   a full pipe either;
//! - `[hooks] script_concurrency` bounds parallel runs across all hooks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::HookMetrics;
use crate::events::{Event, EventData};

/// Longest output line logged; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 2048;
/// Output bytes logged per stream and run; the rest is discarded (and counted).
pub const MAX_LOGGED: usize = 64 * 1024;
/// Between SIGTERM and SIGKILL of a timed-out hook's process group.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// One script hook, ready to run.
#[derive(Clone)]
pub struct ScriptRunner {
    pub name: String,
    pub command: String,
    pub timeout: Duration,
    /// `ATHENA_VIP` for events that carry no address: the configured VIPs, space separated.
    pub vips: String,
    pub sem: Arc<Semaphore>,
    pub metrics: HookMetrics,
    pub shutdown: CancellationToken,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signalled(i32),
    TimedOut,
    /// Stopped because the daemon is shutting down.
    Cancelled,
    SpawnFailed(String),
}

impl Outcome {
    fn metric(&self) -> &'static str {
        match self {
            Outcome::Exited(0) => "ok",
            Outcome::Exited(_) | Outcome::Signalled(_) => "failed",
            Outcome::TimedOut | Outcome::Cancelled => "timeout",
            Outcome::SpawnFailed(_) => "error",
        }
    }
}

/// The hook's task: runs its events one at a time, in order.
pub async fn serve(run: ScriptRunner, mut rx: mpsc::Receiver<(Arc<Event>, Instant)>) {
    loop {
        let next = tokio::select! {
            biased;
            _ = run.shutdown.cancelled() => return,
            e = rx.recv() => e,
        };
        let Some((ev, _)) = next else { return };
        run.run(&ev).await;
    }
}

/// The environment of a script run, exactly as DESIGN.md "Hook scripts" lists it.
pub fn script_env(event: &Event, hook: &str, vips: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("ATHENA_EVENT".to_string(), event.kind.to_string()),
        ("ATHENA_EVENT_TYPE".to_string(), event.kind.to_string()),
        ("ATHENA_HOOK_NAME".to_string(), hook.to_string()),
    ];
    let mut put = |k: &str, v: String| env.push((k.to_string(), v));
    match &event.data {
        EventData::Ha(h) => {
            put("ATHENA_HA_OLD_STATE", h.old_state.to_string());
            put("ATHENA_HA_NEW_STATE", h.new_state.to_string());
            put("ATHENA_HA_REASON", h.reason.clone());
            put("ATHENA_VIP", vips.to_string());
        }
        EventData::Lease(l) => {
            put("ATHENA_IP", l.ip.to_string());
            put("ATHENA_MAC", l.mac.clone());
            put("ATHENA_HOSTNAME", l.hostname.clone().unwrap_or_default());
            put("ATHENA_CLIENT_ID", l.client_id.clone().unwrap_or_default());
            put("ATHENA_SUBNET", l.subnet.clone());
            put("ATHENA_LEASE_START", l.lease_start.to_string());
            put("ATHENA_LEASE_EXPIRY", l.lease_expiry.to_string());
            put("ATHENA_LEASE_DURATION", l.lease_duration.to_string());
            put("ATHENA_VIP", vips.to_string());
        }
        EventData::Vip(v) => put("ATHENA_VIP", v.address.clone()),
        EventData::Config(c) => {
            put("ATHENA_PEER", c.peer.clone());
            put("ATHENA_CONFIG_DIFFERENCES", c.differences.join("\n"));
        }
        EventData::Store(st) => {
            put("ATHENA_LEASE_DB", st.path.clone());
            put("ATHENA_REASON", st.reason.clone().unwrap_or_default());
        }
    }
    env
}

impl ScriptRunner {
    /// Runs the hook for one event and logs how it ended.
    pub async fn run(&self, event: &Event) -> Outcome {
        let Ok(_permit) = self.sem.acquire().await else {
            return Outcome::Cancelled;
        };
        let started = Instant::now();
        let outcome = self.run_inner(event).await;
        let secs = started.elapsed().as_secs_f64();
        let ms = secs * 1000.0;
        self.metrics.record_run(&self.name, outcome.metric(), secs);
        let name = &self.name;
        match &outcome {
            Outcome::Exited(0) => {
                tracing::info!(hook = %name, event = %event.kind, exit = 0, duration_ms = ms, "hook {name} ({}) finished: exit 0 in {ms:.1} ms", event.kind)
            }
            Outcome::Exited(c) => {
                tracing::warn!(hook = %name, event = %event.kind, exit = c, duration_ms = ms, "hook {name} ({}) failed: exit {c} in {ms:.1} ms", event.kind)
            }
            Outcome::Signalled(s) => {
                tracing::warn!(hook = %name, event = %event.kind, signal = s, duration_ms = ms, "hook {name} ({}) killed by signal {s} after {ms:.1} ms", event.kind)
            }
            Outcome::TimedOut => {
                tracing::warn!(hook = %name, event = %event.kind, duration_ms = ms, "hook {name} ({}) timed out after {:?}; its process group was killed", event.kind, self.timeout)
            }
            Outcome::Cancelled => {
                tracing::warn!(hook = %name, event = %event.kind, duration_ms = ms, "hook {name} ({}) stopped: the daemon is shutting down", event.kind)
            }
            Outcome::SpawnFailed(e) => {
                tracing::error!(hook = %name, event = %event.kind, "hook {name} ({}) could not start /bin/sh: {e}", event.kind)
            }
        }
        outcome
    }

    async fn run_inner(&self, event: &Event) -> Outcome {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&self.command)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Its own group, so a timeout reaches the children the shell started.
            .process_group(0);
        // Variables a parent may have exported must not leak into the documented set.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ATHENA_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(script_env(event, &self.name, &self.vips));
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Outcome::SpawnFailed(e.to_string()),
        };
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        let json = event.to_json();
        let stdin = child.stdin.take();
        let writer = tokio::spawn(async move {
            if let Some(mut s) = stdin {
                // A script that ignores stdin closes the pipe: EPIPE is fine.
                let _ = s.write_all(json.as_bytes()).await;
                let _ = s.write_all(b"\n").await;
            }
        });
        let out = child
            .stdout
            .take()
            .map(|s| tokio::spawn(log_output(s, self.name.clone(), "stdout")));
        let err = child
            .stderr
            .take()
            .map(|s| tokio::spawn(log_output(s, self.name.clone(), "stderr")));
        let deadline = tokio::time::Instant::now() + self.timeout;
        let waited = tokio::select! {
            s = child.wait() => Ok(s),
            _ = tokio::time::sleep_until(deadline) => Err(Outcome::TimedOut),
            _ = self.shutdown.cancelled() => Err(Outcome::Cancelled),
        };
        let outcome = match waited {
            Ok(Ok(status)) => {
                use std::os::unix::process::ExitStatusExt;
                match (status.code(), status.signal()) {
                    (Some(c), _) => Outcome::Exited(c),
                    (None, Some(s)) => Outcome::Signalled(s),
                    _ => Outcome::Exited(-1),
                }
            }
            Ok(Err(e)) => Outcome::SpawnFailed(format!("waiting for the hook: {e}")),
            Err(why) => {
                if let Some(g) = pgid {
                    let _ = killpg(g, Signal::SIGTERM);
                }
                let grace_end = tokio::time::Instant::now() + KILL_GRACE;
                let _ = tokio::time::timeout_at(grace_end, child.wait()).await;
                if let Some(g) = pgid {
                    // Give the rest of the group the same grace, then KILL whatever is left
                    // (children may ignore TERM or outlive the shell).
                    while killpg(g, None).is_ok() && tokio::time::Instant::now() < grace_end {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let _ = killpg(g, Signal::SIGKILL);
                }
                let _ = child.wait().await;
                why
            }
        };
        // The shell is gone, but a child it left in the background may still hold the
        // pipes open: give output until the deadline, then kill what is left of the group.
        for h in [out, err].into_iter().flatten() {
            let abort = h.abort_handle();
            match tokio::time::timeout_at(deadline.max(tokio::time::Instant::now()), h).await {
                Ok(_) => {}
                Err(_) => {
                    if let Some(g) = pgid {
                        let _ = killpg(g, Signal::SIGKILL);
                    }
                    abort.abort();
                }
            }
        }
        writer.abort();
        outcome
    }
}

/// Logs a stream line by line with bounded memory; returns the bytes discarded.
async fn log_output(mut s: impl AsyncRead + Unpin, hook: String, stream: &'static str) -> u64 {
    let mut chunk = [0u8; 8192];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut line_cut = false;
    let mut logged = 0usize;
    let mut discarded = 0u64;
    let emit = |line: &mut Vec<u8>, cut: bool, logged: &mut usize, discarded: &mut u64| {
        if *logged >= MAX_LOGGED {
            *discarded += line.len() as u64;
        } else {
            *logged += line.len();
            let text = String::from_utf8_lossy(line);
            let text = text.trim_end_matches('\r');
            let more = if cut { " [line cut]" } else { "" };
            tracing::info!(hook = %hook, stream, "hook {hook} {stream}: {text}{more}");
        }
        line.clear();
    };
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &chunk[..n] {
            if b == b'\n' {
                emit(&mut line, line_cut, &mut logged, &mut discarded);
                line_cut = false;
            } else if line.len() < MAX_LINE {
                line.push(b);
            } else {
                line_cut = true;
                discarded += 1;
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line, line_cut, &mut logged, &mut discarded);
    }
    if discarded > 0 {
        tracing::warn!(hook = %hook, stream, discarded_bytes = discarded, "hook {hook} {stream}: {discarded} more bytes of output were not logged (limit {MAX_LOGGED} bytes per run)");
    }
    discarded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventKind, HaEvent, LeaseEvent, VipEvent};
    use crate::ha::HaState;

    fn env_map(e: &Event) -> std::collections::BTreeMap<String, String> {
        script_env(e, "fip", "10.0.0.3/24").into_iter().collect()
    }

    #[test]
    fn ha_failover_env_has_the_states_reason_and_vip() {
        let e = Event::new(
            EventKind::HaFailover,
            "n",
            EventData::Ha(HaEvent {
                old_state: HaState::Standby,
                new_state: HaState::Active,
                reason: "peer heartbeat timeout".into(),
                ..Default::default()
            }),
        );
        let m = env_map(&e);
        let want: std::collections::BTreeMap<String, String> = [
            ("ATHENA_EVENT", "ha.failover"),
            ("ATHENA_EVENT_TYPE", "ha.failover"),
            ("ATHENA_HOOK_NAME", "fip"),
            ("ATHENA_HA_OLD_STATE", "STANDBY"),
            ("ATHENA_HA_NEW_STATE", "ACTIVE"),
            ("ATHENA_HA_REASON", "peer heartbeat timeout"),
            ("ATHENA_VIP", "10.0.0.3/24"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(m, want);
    }

    #[test]
    fn lease_env_has_every_lease_variable() {
        let e = Event::new(
            EventKind::LeaseAck,
            "n",
            EventData::Lease(LeaseEvent {
                ip: "10.0.0.50".parse().expect("ip"),
                mac: "02:00:00:00:00:01".into(),
                hostname: Some("laptop".into()),
                client_id: Some("01:02".into()),
                subnet: "10.0.0.0/24".into(),
                lease_start: 100,
                lease_expiry: 3700,
                lease_duration: 3600,
            }),
        );
        let m = env_map(&e);
        for (k, v) in [
            ("ATHENA_IP", "10.0.0.50"),
            ("ATHENA_MAC", "02:00:00:00:00:01"),
            ("ATHENA_HOSTNAME", "laptop"),
            ("ATHENA_CLIENT_ID", "01:02"),
            ("ATHENA_SUBNET", "10.0.0.0/24"),
            ("ATHENA_LEASE_START", "100"),
            ("ATHENA_LEASE_EXPIRY", "3700"),
            ("ATHENA_LEASE_DURATION", "3600"),
        ] {
            assert_eq!(m.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert!(!m.contains_key("ATHENA_HA_NEW_STATE"));
    }

    #[test]
    fn vip_events_name_their_own_address() {
        let e = Event::new(
            EventKind::VipClaimed,
            "n",
            EventData::Vip(VipEvent {
                address: "10.0.0.9/24".into(),
                ..Default::default()
            }),
        );
        assert_eq!(env_map(&e)["ATHENA_VIP"], "10.0.0.9/24");
    }

    #[tokio::test]
    async fn long_output_is_logged_up_to_the_limit_and_the_rest_counted() {
        let total = MAX_LOGGED * 3;
        let mut data = Vec::with_capacity(total);
        while data.len() < total {
            data.extend_from_slice(&[b'x'; 99]);
            data.push(b'\n');
        }
        let discarded = log_output(&data[..], "h".into(), "stdout").await;
        // Lines of 99 bytes are logged until the running total reaches the limit.
        let lines = data.len() / 100;
        let logged_lines = MAX_LOGGED.div_ceil(99);
        assert_eq!(discarded as usize, (lines - logged_lines) * 99);
    }

    #[tokio::test]
    async fn an_endless_line_is_cut_not_buffered() {
        let data = vec![b'y'; MAX_LINE * 10];
        let discarded = log_output(&data[..], "h".into(), "stderr").await;
        assert_eq!(discarded as usize, MAX_LINE * 9);
    }
}
