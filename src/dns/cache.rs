//! The answer cache: (qtype, qclass, DO, lowercase name) → [`Answer`], bounded, LRU.
//!
//! Invariants: never more than `capacity` entries (the least recently used goes first); an
//! entry is never served as fresh after its TTL ran out; a hit reports the whole seconds since
//! the answer was stored so the TTLs the client sees count down. The lock is held only for a
//! hash lookup and a list splice; a fresh hit allocates nothing.
//!
//! Serve-stale (RFC 8767): with a `stale_max`, an expired entry is kept that long after its
//! expiry. The lookup says [`Lookup::Expired`] (ask upstream, fall back to this) until a
//! refresh failed ([`Cache::failed`]); from then on it says [`Lookup::Stale`] (answer at once)
//! and hands one query every `stale_retry` the next background refresh. The limits can change
//! at run time ([`Cache::set_stale`], a SIGHUP reload).
//!
//! Prefetch: the first hit in the last tenth of an entry's TTL is told to refresh it
//! (`prefetch: true`), once per stored answer.
//!
//! Warm standby: an answer stored for the peer (`warm`) is not served to clients while this
//! node does not serve (the lookup is a miss), so nothing a standby resolved on its own
//! reaches a client before it is ACTIVE.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::wire::Answer;

const NIL: usize = usize::MAX;

struct Slot {
    key: Box<[u8]>,
    answer: Arc<Answer>,
    stored: Instant,
    expires: Instant,
    /// From here on a hit asks for a prefetch; moved past `expires` once one was asked for.
    prefetch_at: Instant,
    /// Set when a refresh of this expired answer failed: stale answers are given at once
    /// until then, and the query that finds it passed starts the next background refresh.
    retry_at: Option<Instant>,
    /// Resolved for the peer's warm standby and not yet served (see the module doc).
    warm: bool,
    prev: usize,
    next: usize,
}

/// A plain LRU over a slab with an intrusive doubly linked list (head = most recent).
struct Lru {
    map: HashMap<Box<[u8]>, usize>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
    capacity: usize,
    /// Under the same lock as the entries: a reload changes it without a second lock on the
    /// hit path.
    stale: StalePolicy,
}

impl Lru {
    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.slots[i].prev, self.slots[i].next);
        if p == NIL {
            self.head = n;
        } else {
            self.slots[p].next = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.slots[n].prev = p;
        }
    }

    fn push_front(&mut self, i: usize) {
        self.slots[i].prev = NIL;
        self.slots[i].next = self.head;
        if self.head != NIL {
            self.slots[self.head].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    fn remove(&mut self, i: usize) {
        self.unlink(i);
        let key = std::mem::take(&mut self.slots[i].key);
        self.map.remove(&key);
        self.free.push(i);
    }
}

/// What a lookup found.
pub enum Lookup {
    /// A fresh answer and its age in whole seconds; `prefetch`: this hit is the one that
    /// should refresh the entry in the background (last tenth of its TTL).
    Fresh {
        answer: Arc<Answer>,
        age: u32,
        prefetch: bool,
    },
    /// Expired but still servable stale: ask upstream, and if that fails answer with it.
    Expired,
    /// Expired, and the last refresh failed: answer stale now; `refresh`: this query starts
    /// the next background attempt.
    Stale {
        answer: Arc<Answer>,
        refresh: bool,
    },
    Miss,
}

/// Serve-stale limits (zero `max`: off, expired entries are dropped when found).
#[derive(Debug, Clone, Copy, Default)]
pub struct StalePolicy {
    /// How long after its expiry an answer may still be served.
    pub max: Duration,
    /// After a failed refresh: how long stale answers are given without asking upstream.
    pub retry: Duration,
}

/// Thread-safe, cheap to share behind an `Arc`.
pub struct Cache {
    lru: Mutex<Lru>,
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache::with_stale(capacity, StalePolicy::default())
    }

    pub fn with_stale(capacity: usize, stale: StalePolicy) -> Cache {
        let capacity = capacity.max(1);
        Cache {
            lru: Mutex::new(Lru {
                map: HashMap::with_capacity(capacity.min(1 << 16)),
                slots: Vec::new(),
                free: Vec::new(),
                head: NIL,
                tail: NIL,
                capacity,
                stale,
            }),
        }
    }

    /// Replaces the serve-stale limits (a config reload); applies to the entries already
    /// stored from their next lookup on (a shorter `stale_max` drops those now past it).
    pub fn set_stale(&self, stale: StalePolicy) {
        self.lock().stale = stale;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer and the whole seconds it has been stored, if present and fresh (no
    /// prefetch, no stale; for tests and tools).
    pub fn get(&self, key: &[u8], now: Instant) -> Option<(Arc<Answer>, u32)> {
        match self.lookup(key, now, true) {
            Lookup::Fresh { answer, age, .. } => Some((answer, age)),
            _ => None,
        }
    }

    /// Looks `key` up for a client; `serving`: this node serves (warm answers count).
    #[inline]
    pub fn lookup(&self, key: &[u8], now: Instant, serving: bool) -> Lookup {
        let mut lru = self.lock();
        let Some(&i) = lru.map.get(key) else {
            return Lookup::Miss;
        };
        if lru.slots[i].warm && !serving {
            return Lookup::Miss;
        }
        if now >= lru.slots[i].expires {
            return Self::expired(&mut lru, i, now);
        }
        lru.unlink(i);
        lru.push_front(i);
        let s = &mut lru.slots[i];
        let age = now.saturating_duration_since(s.stored).as_secs() as u32;
        let prefetch = now >= s.prefetch_at;
        if prefetch {
            s.prefetch_at = s.expires;
        }
        Lookup::Fresh {
            answer: s.answer.clone(),
            age,
            prefetch,
        }
    }

    #[cold]
    fn expired(lru: &mut Lru, i: usize, now: Instant) -> Lookup {
        let stale = lru.stale;
        let s = &mut lru.slots[i];
        if now >= s.expires + stale.max {
            lru.remove(i);
            return Lookup::Miss;
        }
        match s.retry_at {
            None => Lookup::Expired,
            Some(t) => {
                let refresh = now >= t;
                if refresh {
                    s.retry_at = Some(now + stale.retry);
                }
                let answer = s.answer.clone();
                lru.unlink(i);
                lru.push_front(i);
                Lookup::Stale { answer, refresh }
            }
        }
    }

    /// A refresh of `key` failed upstream: the answer to give instead, if the entry is
    /// expired but within `stale_max` (and not a warm answer of a node that does not serve).
    /// Stale answers are then given at once for `stale_retry`.
    /// Also called when the upstream is only slow (RFC 8767's client response timer ran
    /// out): the forward goes on, and its answer, if any, replaces the entry as usual.
    pub fn failed(&self, key: &[u8], now: Instant, serving: bool) -> Option<Arc<Answer>> {
        let mut lru = self.lock();
        let stale = lru.stale;
        let i = *lru.map.get(key)?;
        let s = &mut lru.slots[i];
        if now < s.expires || now >= s.expires + stale.max || (s.warm && !serving) {
            return None;
        }
        s.retry_at = Some(now + stale.retry);
        Some(s.answer.clone())
    }

    /// Was `key`'s answer stored less than half its TTL ago? (No LRU update: the warm-standby
    /// intake skips those. Not "fresh at all": the active node offers a name again when it
    /// prefetches it, in the last tenth of its TTL, and the standby's copy, stored moments
    /// after the active's, must then be refreshed too or it expires first.)
    pub fn recently_stored(&self, key: &[u8], now: Instant) -> bool {
        let lru = self.lock();
        lru.map.get(key).is_some_and(|&i| {
            let s = &lru.slots[i];
            now < s.stored + (s.expires - s.stored) / 2
        })
    }

    /// Stores `answer` for `ttl` seconds, evicting the least recently used entry when full.
    /// `warm`: resolved for the peer, hidden from clients until this node serves.
    pub fn insert(&self, key: &[u8], answer: Arc<Answer>, ttl: u32, now: Instant, warm: bool) {
        let life = Duration::from_secs(u64::from(ttl));
        let expires = now + life;
        let prefetch_at = now + life - life / 10;
        let mut lru = self.lock();
        if let Some(&i) = lru.map.get(key) {
            let s = &mut lru.slots[i];
            s.answer = answer;
            s.stored = now;
            s.expires = expires;
            s.prefetch_at = prefetch_at;
            s.retry_at = None;
            s.warm = warm;
            lru.unlink(i);
            lru.push_front(i);
            return;
        }
        if lru.map.len() >= lru.capacity {
            let t = lru.tail;
            if t != NIL {
                lru.remove(t);
            }
        }
        let key: Box<[u8]> = key.into();
        let slot = Slot {
            key: key.clone(),
            answer,
            stored: now,
            expires,
            prefetch_at,
            retry_at: None,
            warm,
            prev: NIL,
            next: NIL,
        };
        let i = match lru.free.pop() {
            Some(i) => {
                lru.slots[i] = slot;
                i
            }
            None => {
                lru.slots.push(slot);
                lru.slots.len() - 1
            }
        };
        lru.map.insert(key, i);
        lru.push_front(i);
    }

    /// Drops everything; returns how many entries there were.
    pub fn flush(&self) -> usize {
        let mut lru = self.lock();
        let n = lru.map.len();
        lru.map.clear();
        lru.slots.clear();
        lru.free.clear();
        lru.head = NIL;
        lru.tail = NIL;
        n
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, Query};
    use hickory_proto::rr::{rdata, Name, RData, Record, RecordType};

    fn answer(name: &str) -> Arc<Answer> {
        let n = Name::from_ascii(name).unwrap();
        let mut m = Message::new();
        m.set_message_type(MessageType::Response)
            .add_query(Query::query(n.clone(), RecordType::A))
            .add_answer(Record::from_rdata(
                n,
                100,
                RData::A(rdata::A("10.0.0.1".parse().unwrap())),
            ));
        Arc::new(Answer::from_wire(m.to_vec().unwrap()).unwrap())
    }

    #[test]
    fn a_hit_reports_its_age_and_expires_with_its_ttl() {
        let c = Cache::new(10);
        let t0 = Instant::now();
        c.insert(b"k1", answer("a.example."), 100, t0, false);
        let (_, age) = c.get(b"k1", t0 + Duration::from_millis(30_500)).unwrap();
        assert_eq!(age, 30);
        assert!(c.get(b"k1", t0 + Duration::from_secs(100)).is_none());
        assert_eq!(c.len(), 0, "an expired entry is removed when found");
    }

    #[test]
    fn the_least_recently_used_entry_is_evicted() {
        let c = Cache::new(2);
        let t0 = Instant::now();
        c.insert(b"a", answer("a.example."), 100, t0, false);
        c.insert(b"b", answer("b.example."), 100, t0, false);
        assert!(c.get(b"a", t0).is_some()); // a is now the most recent
        c.insert(b"c", answer("c.example."), 100, t0, false);
        assert_eq!(c.len(), 2);
        assert!(c.get(b"b", t0).is_none(), "b was least recently used");
        assert!(c.get(b"a", t0).is_some());
        assert!(c.get(b"c", t0).is_some());
        // Replacing keeps the size and refreshes the TTL.
        c.insert(
            b"a",
            answer("a.example."),
            5,
            t0 + Duration::from_secs(50),
            false,
        );
        assert!(c.get(b"a", t0 + Duration::from_secs(54)).is_some());
        assert!(c.get(b"a", t0 + Duration::from_secs(56)).is_none());
        assert_eq!(c.flush(), 1);
        assert!(c.is_empty());
    }

    #[test]
    fn eviction_keeps_the_list_consistent_under_churn() {
        let c = Cache::new(64);
        let t0 = Instant::now();
        let a = answer("x.example.");
        for i in 0..10_000u32 {
            c.insert(&i.to_be_bytes(), a.clone(), 100, t0, false);
            if i % 3 == 0 {
                let _ = c.get(&(i / 2).to_be_bytes(), t0);
            }
            assert!(c.len() <= 64);
        }
        for i in 10_000 - 32..10_000u32 {
            assert!(c.get(&i.to_be_bytes(), t0).is_some(), "recent {i} kept");
        }
    }

    #[test]
    fn an_expired_entry_is_offered_stale_only_after_a_failed_refresh_and_within_stale_max() {
        let stale = StalePolicy {
            max: Duration::from_secs(60),
            retry: Duration::from_secs(5),
        };
        let c = Cache::with_stale(10, stale);
        let t0 = Instant::now();
        c.insert(b"k", answer("a.example."), 10, t0, false);
        let t1 = t0 + Duration::from_secs(11);
        assert!(matches!(c.lookup(b"k", t1, true), Lookup::Expired));
        assert!(c.failed(b"k", t1, true).is_some());
        // Within the retry period: stale at once, nobody refreshes.
        assert!(matches!(
            c.lookup(b"k", t1 + Duration::from_secs(1), true),
            Lookup::Stale { refresh: false, .. }
        ));
        // After it: exactly one query starts the next refresh.
        let t2 = t1 + Duration::from_secs(6);
        assert!(matches!(
            c.lookup(b"k", t2, true),
            Lookup::Stale { refresh: true, .. }
        ));
        assert!(matches!(
            c.lookup(b"k", t2, true),
            Lookup::Stale { refresh: false, .. }
        ));
        // Past stale_max the entry is gone.
        assert!(matches!(
            c.lookup(b"k", t0 + Duration::from_secs(71), true),
            Lookup::Miss
        ));
        assert!(c.is_empty());
        // A fresh answer replaces the stale one and clears the failure.
        c.insert(b"k", answer("a.example."), 10, t2, false);
        assert!(matches!(c.lookup(b"k", t2, true), Lookup::Fresh { .. }));
    }

    #[test]
    fn without_stale_max_an_expired_entry_is_a_miss_and_a_failure_gives_nothing() {
        let c = Cache::new(10);
        let t0 = Instant::now();
        c.insert(b"k", answer("a.example."), 10, t0, false);
        let t1 = t0 + Duration::from_secs(10);
        assert!(c.failed(b"k", t1, true).is_none());
        assert!(matches!(c.lookup(b"k", t1, true), Lookup::Miss));
    }

    #[test]
    fn a_new_stale_policy_applies_to_entries_already_stored() {
        let c = Cache::new(10);
        let t0 = Instant::now();
        c.insert(b"k", answer("a.example."), 10, t0, false);
        c.set_stale(StalePolicy {
            max: Duration::from_secs(60),
            retry: Duration::from_secs(5),
        });
        let t1 = t0 + Duration::from_secs(11);
        assert!(matches!(c.lookup(b"k", t1, true), Lookup::Expired));
        assert!(c.failed(b"k", t1, true).is_some(), "servable stale now");
        c.set_stale(StalePolicy::default());
        assert!(
            matches!(c.lookup(b"k", t1, true), Lookup::Miss),
            "serve_stale turned off: the expired entry goes"
        );
    }

    #[test]
    fn one_hit_in_the_last_tenth_of_the_ttl_asks_for_a_prefetch() {
        let c = Cache::new(10);
        let t0 = Instant::now();
        c.insert(b"k", answer("a.example."), 100, t0, false);
        let fresh = |t: u64| match c.lookup(b"k", t0 + Duration::from_secs(t), true) {
            Lookup::Fresh { prefetch, .. } => prefetch,
            _ => panic!("not fresh at {t}s"),
        };
        assert!(!fresh(89));
        assert!(fresh(90), "the first hit at 90% of the TTL");
        assert!(!fresh(91), "asked once only");
        c.insert(
            b"k",
            answer("a.example."),
            100,
            t0 + Duration::from_secs(91),
            false,
        );
        assert!(fresh(181), "a new answer can be prefetched again");
    }

    #[test]
    fn a_warm_answer_is_hidden_until_the_node_serves() {
        let c = Cache::with_stale(
            10,
            StalePolicy {
                max: Duration::from_secs(60),
                retry: Duration::from_secs(5),
            },
        );
        let t0 = Instant::now();
        c.insert(b"k", answer("a.example."), 10, t0, true);
        assert!(c.recently_stored(b"k", t0 + Duration::from_secs(4)));
        assert!(
            !c.recently_stored(b"k", t0 + Duration::from_secs(6)),
            "half its TTL gone: the peer's offer refreshes it"
        );
        assert!(matches!(c.lookup(b"k", t0, false), Lookup::Miss));
        assert!(matches!(c.lookup(b"k", t0, true), Lookup::Fresh { .. }));
        let t1 = t0 + Duration::from_secs(11);
        assert!(
            c.failed(b"k", t1, false).is_none(),
            "no stale warm answer either"
        );
    }
}
