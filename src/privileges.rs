//! Dropping privileges once the sockets are open: steady state is CAP_NET_ADMIN only.
//!
//! Why each step, in this order:
//! - Capabilities are per thread. This runs in `main()` before the tokio runtime exists, so
//!   every worker thread (and every hook process they spawn) inherits the reduced sets.
//! - Netlink checks CAP_NET_ADMIN on each request from the sending thread, so it must stay
//!   effective. CAP_NET_RAW and CAP_NET_BIND_SERVICE are only checked when a socket is made
//!   or bound; the sockets opened before this keep working without them.
//! - The bounding set is emptied (CAP_NET_ADMIN too: the process keeps it in its permitted
//!   set) and ambient/inheritable are cleared, so a hook script gets no capability at `execve`
//!   even when it runs as uid 0. `caps` only knows the capabilities it was built with, so the
//!   bounding set is cleared with `PR_CAPBSET_DROP` up to `/proc/sys/kernel/cap_last_cap`.
//! - no-new-privs last, so a hook cannot regain anything through a setuid binary.

use caps::{CapSet, Capability, CapsHashSet};

/// What went wrong, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("missing capability {cap}: {why}. Grant it with `setcap cap_net_admin,cap_net_raw,cap_net_bind_service+ep {exe}` (and run as a dedicated user), or use the systemd unit's AmbientCapabilities=")]
    Missing {
        cap: &'static str,
        why: &'static str,
        exe: String,
    },
    #[error("user {0:?} not found")]
    NoUser(String),
    #[error("group {0:?} not found")]
    NoGroup(String),
    #[error("switching to user {user:?}: {err}")]
    Switch { user: String, err: String },
    #[error("dropping capabilities: {0}")]
    Caps(String),
}

fn exe() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/usr/bin/athena-dhcpd".into())
}

/// Fails with a `setcap` hint when the process cannot do what the config asks.
pub fn require(
    cap: Capability,
    name: &'static str,
    why: &'static str,
) -> Result<(), PrivilegeError> {
    match caps::has_cap(None, CapSet::Effective, cap) {
        Ok(true) => Ok(()),
        _ => Err(PrivilegeError::Missing {
            cap: name,
            why,
            exe: exe(),
        }),
    }
}

/// Maps a socket error to the capability that would have prevented it.
pub fn explain_bind_error(err: &std::io::Error, what: &str, cap: &'static str) -> String {
    if err.kind() == std::io::ErrorKind::PermissionDenied {
        format!(
            "{what}: permission denied; the process needs {cap}. Grant it with `setcap cap_net_admin,cap_net_raw,cap_net_bind_service+ep {}` or run it from the systemd unit",
            exe()
        )
    } else {
        format!("{what}: {err}")
    }
}

/// Optionally switches user/group, then reduces every capability set to CAP_NET_ADMIN.
/// Must run on the only thread of the process (before the tokio runtime is built).
pub fn drop_to_net_admin(user: Option<&str>, group: Option<&str>) -> Result<(), PrivilegeError> {
    require(
        Capability::CAP_NET_ADMIN,
        "CAP_NET_ADMIN",
        "the floating IP is added and removed over netlink",
    )?;
    if let Some(user) = user {
        switch_user(user, group)?;
    }
    let keep: CapsHashSet = [Capability::CAP_NET_ADMIN].into_iter().collect();
    let can_setpcap =
        caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false);
    if can_setpcap {
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<libc::c_ulong>().ok())
            .unwrap_or(63);
        for cap in 0..=last {
            // SAFETY: prctl with integer arguments only; EINVAL for unknown caps is ignored.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        }
    } else {
        tracing::debug!(
            "no CAP_SETPCAP: bounding set left to the service manager (CapabilityBoundingSet=)"
        );
    }
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| PrivilegeError::Caps(format!("ambient: {e}")))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| PrivilegeError::Caps(format!("inheritable: {e}")))?;
    caps::set(None, CapSet::Effective, &keep)
        .map_err(|e| PrivilegeError::Caps(format!("effective: {e}")))?;
    caps::set(None, CapSet::Permitted, &keep)
        .map_err(|e| PrivilegeError::Caps(format!("permitted: {e}")))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::Caps(format!(
            "no-new-privs: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn switch_user(user: &str, group: Option<&str>) -> Result<(), PrivilegeError> {
    use nix::unistd::{setgid, setgroups, setuid, Group, User};
    let u = User::from_name(user)
        .map_err(|e| PrivilegeError::Switch {
            user: user.into(),
            err: e.to_string(),
        })?
        .ok_or_else(|| PrivilegeError::NoUser(user.into()))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| PrivilegeError::Switch {
                    user: user.into(),
                    err: e.to_string(),
                })?
                .ok_or_else(|| PrivilegeError::NoGroup(g.into()))?
                .gid
        }
        None => u.gid,
    };
    if u.uid == nix::unistd::getuid() {
        return Ok(());
    }
    // Keep the permitted set across setuid; effective is cleared by the kernel and restored
    // by the caller.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let sw = |e: nix::Error| PrivilegeError::Switch {
        user: user.into(),
        err: e.to_string(),
    };
    setgroups(&[gid]).map_err(sw)?;
    setgid(gid).map_err(sw)?;
    setuid(u.uid).map_err(sw)?;
    let keep: CapsHashSet = [Capability::CAP_NET_ADMIN, Capability::CAP_SETPCAP]
        .into_iter()
        .collect();
    let have = caps::read(None, CapSet::Permitted).unwrap_or_default();
    let raise: CapsHashSet = keep.intersection(&have).copied().collect();
    caps::set(None, CapSet::Effective, &raise)
        .map_err(|e| PrivilegeError::Caps(format!("effective after setuid: {e}")))?;
    Ok(())
}

/// The capability sets of every thread of this process, from `/proc/self/task/*/status`
/// (per-thread: the main thread alone can look fine while workers kept everything).
pub fn thread_cap_eff() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for t in rd.flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            if let Some(v) = status.lines().find_map(|l| l.strip_prefix("CapEff:")) {
                if let Ok(bits) = u64::from_str_radix(v.trim(), 16) {
                    out.push((t.file_name().to_string_lossy().into_owned(), bits));
                }
            }
        }
    }
    out
}
