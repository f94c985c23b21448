//! The admin commands that talk to a running daemon over its API: `status` (one screen on the
//! pair) and `leases` (a table). `client` is the HTTP side; each command splits into an async
//! gather and a pure render, so the screens are tested without a daemon.

pub mod agreement;
pub mod client;
pub mod leases;
pub mod status;

use time::OffsetDateTime;

fn utc(ms: u64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(i64::try_from(ms / 1000).ok()?).ok()
}

/// `2026-12-02 12:00:00 UTC`.
pub fn utc_datetime(ms: u64) -> String {
    match utc(ms) {
        Some(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        None => format!("@{ms} ms"),
    }
}

/// `12:00:00` (UTC).
pub fn clock(ms: u64) -> String {
    match utc(ms) {
        Some(t) => format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second()),
        None => "??:??:??".to_string(),
    }
}

/// How long before `now_ms` the moment `then_ms` was: `0.3 s ago`, `4m05s ago`, `3h02m ago`,
/// `2d04h ago`; `in ...` for a moment still to come (a lease's expiry).
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    if then_ms > now_ms {
        return format!("in {}", span(then_ms - now_ms));
    }
    format!("{} ago", span(now_ms - then_ms))
}

fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{:.1} s", ms as f64 / 1000.0),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_and_ages_short() {
        // 2026-12-02 12:34:56.789 UTC
        let t = 1_796_214_896_789;
        assert_eq!(utc_datetime(t), "2026-12-02 12:34:56 UTC");
        assert_eq!(clock(t), "12:34:56");
        assert_eq!(ago(t + 300, t), "0.3 s ago");
        assert_eq!(ago(t + 245_000, t), "4m05s ago");
        assert_eq!(ago(t + 3 * 3_600_000 + 120_000, t), "3h02m ago");
        assert_eq!(ago(t, t + 90_000), "in 1m30s");
    }
}
