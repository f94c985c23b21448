//! A lease database that cannot be read at start (truncated, random bytes, a format this
//! version does not know): refuse to start with the command that moves it aside, or, with
//! HA, move it aside, start empty and take the peer's whole lease set before serving
//! (`[server] damaged_lease_db`).
//!
//! The rebuild is marked by a file next to the database (`<name>.resync`) until a bulk sync
//! from the peer completes, so a restart in between does not serve from the empty file.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// `[server] damaged_lease_db`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DamagedLeaseDb {
    /// Move the file aside, start empty, take every lease from the HA peer before serving.
    Resync,
    /// Exit with status 1 and say how to move the file aside.
    Refuse,
}

impl DamagedLeaseDb {
    /// The default: resync where there is a peer to resync from.
    pub fn default_for(ha: bool) -> Self {
        if ha {
            DamagedLeaseDb::Resync
        } else {
            DamagedLeaseDb::Refuse
        }
    }
}

/// The name a damaged file is moved to: `<name>.damaged-<UTC time>`, e.g.
/// `leases.redb.damaged-20261202T120102Z`.
pub fn aside_path(db: &Path, now: SystemTime) -> PathBuf {
    let mut name = db.as_os_str().to_os_string();
    name.push(format!(".damaged-{}", utc_stamp(now)));
    PathBuf::from(name)
}

/// The marker of a database rebuilt from the peer and not yet synced.
pub fn marker_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_os_string();
    name.push(".resync");
    PathBuf::from(name)
}

/// Moves the damaged file aside and leaves the marker; returns where it went.
pub fn move_aside(db: &Path) -> std::io::Result<PathBuf> {
    let mut aside = aside_path(db, SystemTime::now());
    // Never over an earlier damaged file (two in the same second): `-2`, `-3`, ...
    let first = aside.clone();
    let mut n = 1;
    while aside.exists() {
        n += 1;
        let mut name = first.as_os_str().to_os_string();
        name.push(format!("-{n}"));
        aside = PathBuf::from(name);
    }
    std::fs::rename(db, &aside)?;
    std::fs::write(
        marker_path(db),
        format!(
            "{} was damaged and moved to {}; this node takes its leases from the HA peer\n",
            db.display(),
            aside.display()
        ),
    )?;
    Ok(aside)
}

/// What `refuse` tells the administrator.
pub fn refuse_message(db: &Path, detail: &str) -> String {
    let aside = aside_path(db, SystemTime::now());
    format!(
        "lease database {} cannot be read ({detail}). Move it aside to start with an empty \
         database (clients keep their addresses until their leases run out and then renew):\n    \
         mv {} {}\nor, with HA, set [server] damaged_lease_db = \"resync\" to rebuild it from the peer",
        db.display(),
        db.display(),
        aside.display()
    )
}

/// `20261202T120102Z`.
fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_damaged_file_goes_aside_under_its_name_and_the_utc_time() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_212_862); // 2026-12-02 12:01:02 UTC
        assert_eq!(
            aside_path(Path::new("/var/lib/x/leases.redb"), t),
            PathBuf::from("/var/lib/x/leases.redb.damaged-20261202T120102Z")
        );
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "20000229T000000Z"
        );
    }

    #[test]
    fn moving_aside_keeps_the_file_and_leaves_the_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("leases.redb");
        std::fs::write(&db, b"garbage").expect("write");
        let aside = move_aside(&db).expect("move");
        assert!(!db.exists());
        assert_eq!(std::fs::read(&aside).expect("aside"), b"garbage");
        assert!(marker_path(&db).exists());
        // A second damaged file in the same second keeps the first.
        std::fs::write(&db, b"more garbage").expect("write");
        let second = move_aside(&db).expect("move again");
        assert_ne!(second, aside);
        assert_eq!(std::fs::read(&aside).expect("first"), b"garbage");
    }

    #[test]
    fn the_refusal_names_the_file_and_the_command() {
        let m = refuse_message(Path::new("/d/leases.redb"), "bad header");
        assert!(
            m.contains("lease database /d/leases.redb cannot be read (bad header)"),
            "{m}"
        );
        assert!(
            m.contains("mv /d/leases.redb /d/leases.redb.damaged-"),
            "{m}"
        );
    }
}
