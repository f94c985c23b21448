//! The answer cache: (qtype, qclass, DO, lowercase name) → [`Answer`], bounded, LRU.
//!
//! Invariants: never more than `capacity` entries (the least recently used goes first); an
//! entry is never served after its TTL ran out (it is removed on the lookup that finds it
//! expired); a hit reports the whole seconds since the answer was stored so the TTLs the
//! client sees count down. The lock is held only for a hash lookup and a list splice.

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

/// Thread-safe, cheap to share behind an `Arc`.
pub struct Cache {
    lru: Mutex<Lru>,
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        let capacity = capacity.max(1);
        Cache {
            lru: Mutex::new(Lru {
                map: HashMap::with_capacity(capacity.min(1 << 16)),
                slots: Vec::new(),
                free: Vec::new(),
                head: NIL,
                tail: NIL,
                capacity,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer and the whole seconds it has been stored, if present and fresh.
    pub fn get(&self, key: &[u8], now: Instant) -> Option<(Arc<Answer>, u32)> {
        let mut lru = self.lock();
        let i = *lru.map.get(key)?;
        if now >= lru.slots[i].expires {
            lru.remove(i);
            return None;
        }
        lru.unlink(i);
        lru.push_front(i);
        let s = &lru.slots[i];
        let age = now.saturating_duration_since(s.stored).as_secs() as u32;
        Some((s.answer.clone(), age))
    }

    /// Stores `answer` for `ttl` seconds, evicting the least recently used entry when full.
    pub fn insert(&self, key: &[u8], answer: Arc<Answer>, ttl: u32, now: Instant) {
        let expires = now + Duration::from_secs(u64::from(ttl));
        let mut lru = self.lock();
        if let Some(&i) = lru.map.get(key) {
            let s = &mut lru.slots[i];
            s.answer = answer;
            s.stored = now;
            s.expires = expires;
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
        c.insert(b"k1", answer("a.example."), 100, t0);
        let (_, age) = c.get(b"k1", t0 + Duration::from_millis(30_500)).unwrap();
        assert_eq!(age, 30);
        assert!(c.get(b"k1", t0 + Duration::from_secs(100)).is_none());
        assert_eq!(c.len(), 0, "an expired entry is removed when found");
    }

    #[test]
    fn the_least_recently_used_entry_is_evicted() {
        let c = Cache::new(2);
        let t0 = Instant::now();
        c.insert(b"a", answer("a.example."), 100, t0);
        c.insert(b"b", answer("b.example."), 100, t0);
        assert!(c.get(b"a", t0).is_some()); // a is now the most recent
        c.insert(b"c", answer("c.example."), 100, t0);
        assert_eq!(c.len(), 2);
        assert!(c.get(b"b", t0).is_none(), "b was least recently used");
        assert!(c.get(b"a", t0).is_some());
        assert!(c.get(b"c", t0).is_some());
        // Replacing keeps the size and refreshes the TTL.
        c.insert(b"a", answer("a.example."), 5, t0 + Duration::from_secs(50));
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
            c.insert(&i.to_be_bytes(), a.clone(), 100, t0);
            if i % 3 == 0 {
                let _ = c.get(&(i / 2).to_be_bytes(), t0);
            }
            assert!(c.len() <= 64);
        }
        for i in 10_000 - 32..10_000u32 {
            assert!(c.get(&i.to_be_bytes(), t0).is_some(), "recent {i} kept");
        }
    }
}
