//! Room to write: the lease database's size and the free space on its filesystem, and the
//! `ByteSize` type `[server] lease_db_min_free` is written in.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes, written `"64MiB"`, `"512KiB"`, `"2GiB"`, `"100MB"` or a plain number of
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (e.g. \"64MiB\")"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            u => {
                return Err(format!(
                    "unknown unit {u:?} in {s:?} (use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if b >= 1 << shift {
                let v = b as f64 / (1u64 << shift) as f64;
                return if b % (1 << shift) == 0 {
                    write!(f, "{}{unit}", b >> shift)
                } else {
                    write!(f, "{v:.1}{unit}")
                };
            }
        }
        write!(f, "{b}B")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// The database file's size and the space the daemon may still use on its filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub db_bytes: u64,
    pub free_bytes: u64,
}

/// Measures `db` (a missing file counts as 0 bytes) and its filesystem.
pub fn measure(db: &Path) -> std::io::Result<Space> {
    let db_bytes = match std::fs::metadata(db) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    // f_bavail: what an unprivileged writer gets; the daemon drops root, and a full
    // filesystem's reserved blocks are for the administrator, not for leases.
    let free_bytes = st.blocks_available().saturating_mul(st.fragment_size());
    Ok(Space {
        db_bytes,
        free_bytes,
    })
}

/// Why free space is too low, for health (`None`: enough).
pub fn shortage(space: Space, min_free: ByteSize) -> Option<String> {
    (space.free_bytes < min_free.0).then(|| {
        format!(
            "{} free on its filesystem, under lease_db_min_free ({min_free})",
            ByteSize(space.free_bytes)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units_and_print_back() {
        assert_eq!("64MiB".parse::<ByteSize>(), Ok(ByteSize(64 << 20)));
        assert_eq!("512 KiB".parse::<ByteSize>(), Ok(ByteSize(512 << 10)));
        assert_eq!("100MB".parse::<ByteSize>(), Ok(ByteSize(100_000_000)));
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert_eq!(ByteSize::mib(64).to_string(), "64MiB");
        assert_eq!(ByteSize(1536 << 10).to_string(), "1.5MiB");
        let e = "64 megs".parse::<ByteSize>().unwrap_err();
        assert!(e.contains("unknown unit"), "{e}");
        assert!("MiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn a_shortage_names_the_free_space_and_the_limit() {
        let s = Space {
            db_bytes: 1,
            free_bytes: 12 << 20,
        };
        assert_eq!(
            shortage(s, ByteSize::mib(64)).as_deref(),
            Some("12MiB free on its filesystem, under lease_db_min_free (64MiB)")
        );
        assert_eq!(shortage(s, ByteSize::mib(8)), None);
    }

    #[test]
    fn the_database_and_its_filesystem_are_measured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("l.redb");
        std::fs::write(&db, vec![0u8; 5000]).expect("write");
        let s = measure(&db).expect("measure");
        assert_eq!(s.db_bytes, 5000);
        assert!(s.free_bytes > 0);
    }
}
