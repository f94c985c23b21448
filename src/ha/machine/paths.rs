//! The paths to the peer (the link, then one datagram path per VIP network) and when each
//! last carried news: a path that goes quiet while another still works is reported once as
//! `ha.path_down`, and one that works again is logged once.

use serde::{Deserialize, Serialize};

use super::*;

/// Index of the link in the table; datagram path `i` is `i + 1`.
pub(super) const LINK: usize = 0;

/// One path as `/api/v1/ha/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathView {
    pub name: String,
    /// Milliseconds since its last frame from the peer; `None`: never heard on it.
    pub last_frame_ms_ago: Option<u64>,
    /// Quiet for a failover timeout while another path works (reported as `ha.path_down`).
    pub down: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct PathClock {
    name: String,
    heard_ms: Option<u64>,
    down: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Paths(Vec<PathClock>);

impl Paths {
    pub(super) fn new(datagram: &[String]) -> Paths {
        let mut v = vec![PathClock {
            name: "link".into(),
            heard_ms: None,
            down: false,
        }];
        v.extend(datagram.iter().map(|n| PathClock {
            name: n.clone(),
            heard_ms: None,
            down: false,
        }));
        Paths(v)
    }

    pub(super) fn heard(&mut self, path: usize, now: u64) {
        if let Some(p) = self.0.get_mut(path) {
            p.heard_ms = Some(now);
        }
    }

    /// Reports a path quiet for `quiet_ms` while another was heard within it (once per
    /// quiet spell), and logs one that works again. A path never heard is not reported: a
    /// peer without datagram heartbeats (an older version) is not a failure.
    pub(super) fn check(&mut self, now: u64, quiet_ms: u64, out: &mut Vec<Action>) {
        let fresh = |p: &PathClock| p.heard_ms.is_some_and(|h| now.saturating_sub(h) < quiet_ms);
        let working: Vec<String> = self
            .0
            .iter()
            .filter(|p| fresh(p))
            .map(|p| p.name.clone())
            .collect();
        for p in &mut self.0 {
            let Some(h) = p.heard_ms else { continue };
            let quiet = now.saturating_sub(h) >= quiet_ms;
            if quiet && !p.down && !working.is_empty() {
                p.down = true;
                out.push(Action::Notify {
                    notice: HaNotice::PathDown,
                    reason: format!(
                        "no frame from the peer on path {} for {}; still heard on {}",
                        p.name,
                        secs(now.saturating_sub(h)),
                        working.join(", ")
                    ),
                });
            } else if !quiet && p.down {
                p.down = false;
                out.push(Action::Log(format!(
                    "path {} to the peer works again",
                    p.name
                )));
            }
        }
    }

    pub(super) fn view(&self, now: u64) -> Vec<PathView> {
        self.0
            .iter()
            .map(|p| PathView {
                name: p.name.clone(),
                last_frame_ms_ago: p.heard_ms.map(|h| now.saturating_sub(h)),
                down: p.down,
            })
            .collect()
    }
}
