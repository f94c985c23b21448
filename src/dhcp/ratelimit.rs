//! Per-MAC packets and global DISCOVERs per one-second window (pure).

use std::collections::HashMap;

/// Per-MAC packets and global DISCOVERs per one-second window; 0 disables a limit.
pub struct RateLimiter {
    per_mac: u32,
    global: u32,
    window_s: u64,
    macs: HashMap<[u8; 6], u32>,
    discovers: u32,
}

impl RateLimiter {
    pub fn new(per_mac: u32, global: u32) -> Self {
        RateLimiter {
            per_mac,
            global,
            window_s: 0,
            macs: HashMap::new(),
            discovers: 0,
        }
    }

    /// Ok, or the scope that refused ("mac" or "global").
    pub fn allow(&mut self, mac: [u8; 6], discover: bool, now_ms: u64) -> Result<(), &'static str> {
        let w = now_ms / 1000;
        if w != self.window_s {
            self.window_s = w;
            self.macs.clear();
            self.discovers = 0;
        }
        if self.per_mac > 0 {
            let n = self.macs.entry(mac).or_insert(0);
            *n += 1;
            if *n > self.per_mac {
                return Err("mac");
            }
        }
        if discover && self.global > 0 {
            self.discovers += 1;
            if self.discovers > self.global {
                return Err("global");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_mac_limit_refuses_the_excess_and_resets_each_second() {
        let mut r = RateLimiter::new(2, 0);
        let m = [2, 0, 0, 0, 0, 1];
        assert_eq!(r.allow(m, true, 1000), Ok(()));
        assert_eq!(r.allow(m, false, 1100), Ok(()));
        assert_eq!(r.allow(m, true, 1200), Err("mac"));
        assert_eq!(r.allow([2, 0, 0, 0, 0, 2], true, 1300), Ok(()));
        assert_eq!(r.allow(m, true, 2000), Ok(()));
    }

    #[test]
    fn global_limit_counts_only_discovers() {
        let mut r = RateLimiter::new(0, 2);
        for i in 0..2u8 {
            assert_eq!(r.allow([0, 0, 0, 0, 0, i], true, 5000), Ok(()));
        }
        assert_eq!(r.allow([0, 0, 0, 0, 0, 9], true, 5001), Err("global"));
        assert_eq!(r.allow([0, 0, 0, 0, 0, 9], false, 5002), Ok(()));
        assert_eq!(r.allow([0, 0, 0, 0, 0, 9], true, 6000), Ok(()));
    }
}
