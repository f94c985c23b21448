//! Free-address selection: one bitmap per pool (a set bit = taken: leased, offered, declined
//! or reserved) and a rotating cursor, so finding a free address skips 64 taken ones per word
//! and costs O(1) amortised while the pool is not nearly full.
//!
//! The bitmap is a hint, not the truth: the lease index is (HA merges and expiry change it
//! behind the allocator's back). Every candidate is confirmed with the caller's `is_free`;
//! a stale "free" bit is corrected on the spot, and stale "taken" bits are cleared by
//! [`Allocator::rebuild`], which the handler runs when a pass over the pool finds nothing.

use std::net::Ipv4Addr;

#[derive(Debug, Clone)]
struct PoolBits {
    start: u32,
    size: u32,
    bits: Vec<u64>,
    /// Bit after the last address handed out: where the next search starts.
    cursor: usize,
}

impl PoolBits {
    fn new(start: u32, end: u32) -> Self {
        let size = end.saturating_sub(start).saturating_add(1);
        PoolBits {
            start,
            size,
            bits: vec![0; (size as usize).div_ceil(64)],
            cursor: 0,
        }
    }
    fn contains(&self, x: u32) -> bool {
        x >= self.start && x - self.start < self.size
    }
    fn set(&mut self, x: u32, taken: bool) {
        let i = (x - self.start) as usize;
        let (w, b) = (i / 64, i % 64);
        if taken {
            self.bits[w] |= 1 << b;
        } else {
            self.bits[w] &= !(1 << b);
        }
    }
}

/// The bitmaps of one subnet's pools.
#[derive(Debug, Clone, Default)]
pub struct Allocator {
    pools: Vec<PoolBits>,
}

impl Allocator {
    /// `pools`: inclusive ranges as u32.
    pub fn new(pools: &[(u32, u32)]) -> Self {
        Allocator {
            pools: pools.iter().map(|(a, b)| PoolBits::new(*a, *b)).collect(),
        }
    }

    pub fn size(&self) -> u64 {
        self.pools.iter().map(|p| u64::from(p.size)).sum()
    }

    /// Records that `ip` is taken or free (ignored outside the pools).
    pub fn mark(&mut self, ip: Ipv4Addr, taken: bool) {
        let x = u32::from(ip);
        if let Some(p) = self.pools.iter_mut().find(|p| p.contains(x)) {
            p.set(x, taken);
        }
    }

    /// Re-derives every bit from `is_taken`.
    pub fn rebuild(&mut self, mut is_taken: impl FnMut(Ipv4Addr) -> bool) {
        for p in &mut self.pools {
            p.bits.iter_mut().for_each(|w| *w = 0);
            for i in 0..p.size {
                let x = p.start + i;
                if is_taken(Ipv4Addr::from(x)) {
                    p.set(x, true);
                }
            }
        }
    }

    /// A free address confirmed by `is_free`, marked taken; None when every pool is full.
    /// The search starts after the last address handed out, so a released address is
    /// reused last and a returning client is likely to find its old one still free.
    pub fn take(&mut self, is_free: impl FnMut(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
        self.take_in(|_| true, is_free)
    }

    /// Like [`Allocator::take`], searching only the pools (by index) that `pool_ok` allows:
    /// pools kept for client classes.
    pub fn take_in(
        &mut self,
        pool_ok: impl Fn(usize) -> bool,
        mut is_free: impl FnMut(Ipv4Addr) -> bool,
    ) -> Option<Ipv4Addr> {
        for (pi, p) in self.pools.iter_mut().enumerate() {
            if !pool_ok(pi) {
                continue;
            }
            let words = p.bits.len();
            let start_bit = p.cursor % (words * 64).max(1);
            let (w0, b0) = (start_bit / 64, start_bit % 64);
            // words+1 steps: the start word is visited twice, above then below the cursor.
            for step in 0..=words {
                let w = (w0 + step) % words;
                // Bits past the end of the pool count as taken.
                let mut valid = if w == words - 1 && p.size % 64 != 0 {
                    (1u64 << (p.size % 64)) - 1
                } else {
                    u64::MAX
                };
                if step == 0 {
                    valid &= u64::MAX << b0;
                } else if step == words {
                    valid &= !(u64::MAX << b0);
                }
                loop {
                    let free = !p.bits[w] & valid;
                    if free == 0 {
                        break;
                    }
                    let b = free.trailing_zeros();
                    let x = p.start + (w as u32) * 64 + b;
                    p.bits[w] |= 1 << b;
                    if is_free(Ipv4Addr::from(x)) {
                        p.cursor = w * 64 + b as usize + 1;
                        return Some(Ipv4Addr::from(x));
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(x: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + x)
    }

    #[test]
    fn hands_out_every_address_once_then_none() {
        let mut a = Allocator::new(&[(u32::from(ip(10)), u32::from(ip(79)))]);
        let mut got = Vec::new();
        while let Some(x) = a.take(|_| true) {
            got.push(x);
        }
        assert_eq!(got.len(), 70);
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 70);
        assert!(got.iter().all(|x| *x >= ip(10) && *x <= ip(79)));
    }

    #[test]
    fn skips_addresses_the_index_says_are_taken_and_reuses_freed_ones() {
        let mut a = Allocator::new(&[(u32::from(ip(1)), u32::from(ip(4)))]);
        assert_eq!(a.take(|x| x != ip(1)), Some(ip(2)));
        assert_eq!(a.take(|_| true), Some(ip(3)));
        assert_eq!(a.take(|_| true), Some(ip(4)));
        assert_eq!(a.take(|_| true), None);
        a.mark(ip(3), false);
        assert_eq!(a.take(|_| true), Some(ip(3)));
        a.rebuild(|x| x == ip(2));
        assert_eq!(a.size(), 4);
        let mut rest = vec![];
        while let Some(x) = a.take(|_| true) {
            rest.push(x);
        }
        assert_eq!(
            rest,
            vec![ip(4), ip(1), ip(3)],
            "search resumes after the last one"
        );
    }
}
