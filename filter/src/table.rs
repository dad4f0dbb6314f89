//! Per-VM table of downstream connections and how many requests each carried.
//!
//! An HTTP filter never learns that a connection closed, so the table is
//! bounded two ways: a hard cap that evicts the lowest id (Envoy's connection
//! ids are monotonic, so the lowest is the oldest connection), and an idle
//! timeout applied on the root context's tick.
//!
//! Entries live in a `VecDeque` sorted by id: new connections almost always
//! carry the highest id so far, which makes insertion an append, the cap
//! eviction a `pop_front`, and lookup a binary search over 24-byte entries —
//! smaller and faster than a map for a few thousand entries, and no hashing.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    id: u64,
    requests: u64,
    /// Coarse clock value (see [`ConnectionTable::set_now`]) of the last request.
    last_seen: u32,
}

/// What [`ConnectionTable::record`] learned about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// 1-based index of this request on its connection.
    pub requests: u64,
    /// Whether this request opened a new entry.
    pub new_connection: bool,
    /// Entries dropped to stay within the cap (0 or 1).
    pub evicted: u32,
}

/// Bounded map `connection id → request count`.
#[derive(Debug)]
pub struct ConnectionTable {
    entries: VecDeque<Entry>,
    cap: usize,
    now: u32,
}

impl ConnectionTable {
    /// An empty table holding at most `cap` connections (`cap` >= 1).
    pub fn new(cap: u32) -> Self {
        ConnectionTable {
            entries: VecDeque::new(),
            cap: (cap as usize).max(1),
            now: 0,
        }
    }

    /// Connections currently tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cap given to [`ConnectionTable::new`].
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Advances the coarse clock (seconds since start, from the tick). Kept
    /// in the table so the request path never asks the host for the time.
    pub fn set_now(&mut self, now: u32) {
        self.now = now;
    }

    /// Counts one request on connection `id`.
    pub fn record(&mut self, id: u64) -> Recorded {
        let now = self.now;
        // Fast path: the newest connection is the busiest in most workloads.
        if let Some(last) = self.entries.back_mut()
            && last.id == id
        {
            last.requests += 1;
            last.last_seen = now;
            return Recorded {
                requests: last.requests,
                new_connection: false,
                evicted: 0,
            };
        }
        match self.entries.binary_search_by_key(&id, |e| e.id) {
            Ok(i) => {
                let entry = &mut self.entries[i];
                entry.requests += 1;
                entry.last_seen = now;
                Recorded {
                    requests: entry.requests,
                    new_connection: false,
                    evicted: 0,
                }
            }
            Err(i) => {
                self.entries.insert(
                    i,
                    Entry {
                        id,
                        requests: 1,
                        last_seen: now,
                    },
                );
                let mut evicted = 0;
                // If the newcomer is itself the lowest id it is the one that
                // goes: it then counts 1 every time, which is the documented
                // cost of a cap that is too small.
                while self.entries.len() > self.cap {
                    self.entries.pop_front();
                    evicted += 1;
                }
                Recorded {
                    requests: 1,
                    new_connection: true,
                    evicted,
                }
            }
        }
    }

    /// Drops connections idle for `timeout` clock units or more; returns how
    /// many. `timeout == 0` disables idle eviction.
    pub fn expire_idle(&mut self, timeout: u32) -> usize {
        if timeout == 0 {
            return 0;
        }
        let before = self.entries.len();
        let now = self.now;
        self.entries
            .retain(|e| now.wrapping_sub(e.last_seen) < timeout);
        before - self.entries.len()
    }

    /// Request count of a tracked connection (for tests and diagnostics).
    pub fn requests(&self, id: u64) -> Option<u64> {
        self.entries
            .binary_search_by_key(&id, |e| e.id)
            .ok()
            .map(|i| self.entries[i].requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_count_is_per_connection() {
        let mut table = ConnectionTable::new(100);
        // (connection id, expected 1-based index, expected new)
        let steps = [
            (7, 1, true),
            (7, 2, false),
            (8, 1, true),
            (7, 3, false),
            (0, 1, true), // 0 is a real Envoy connection id
            (8, 2, false),
            (0, 2, false),
        ];
        for (id, requests, new_connection) in steps {
            assert_eq!(
                table.record(id),
                Recorded {
                    requests,
                    new_connection,
                    evicted: 0
                },
                "id {id}"
            );
        }
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn out_of_order_first_requests_keep_the_table_sorted() {
        let mut table = ConnectionTable::new(100);
        for id in [10, 12, 11, 9, 13, 11] {
            table.record(id);
        }
        let ids: Vec<u64> = table.entries.iter().map(|e| e.id).collect();
        assert_eq!(ids, [9, 10, 11, 12, 13]);
        assert_eq!(table.requests(11), Some(2));
    }

    #[test]
    fn cap_evicts_the_lowest_id() {
        let mut table = ConnectionTable::new(3);
        for id in 1..=3 {
            assert_eq!(table.record(id).evicted, 0);
        }
        table.record(1); // busy, but still the oldest
        let r = table.record(4);
        assert_eq!(r.evicted, 1);
        assert_eq!(table.len(), 3);
        assert_eq!(table.requests(1), None);
        assert_eq!(table.requests(4), Some(1));
        // The evicted connection comes back: it starts over at 1 and pushes
        // out the next oldest.
        let r = table.record(1);
        assert_eq!((r.requests, r.new_connection, r.evicted), (1, true, 1));
        assert_eq!(table.requests(1), None, "lowest id is evicted at once");
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn memory_stays_bounded_under_churn() {
        let cap = 16;
        let mut table = ConnectionTable::new(cap);
        let mut evicted = 0u64;
        for id in 0..100_000u64 {
            let r = table.record(id);
            evicted += u64::from(r.evicted);
            assert!(table.len() <= cap as usize);
        }
        assert_eq!(table.len(), cap as usize);
        assert_eq!(evicted, 100_000 - u64::from(cap));
        assert!(
            table.entries.capacity() < 64,
            "{}",
            table.entries.capacity()
        );
    }

    #[test]
    fn idle_connections_expire_on_tick() {
        let mut table = ConnectionTable::new(100);
        table.set_now(0);
        table.record(1);
        table.record(2);
        table.set_now(5);
        table.record(2);
        table.record(3);
        // (now, timeout, expired, survivors)
        let steps: [(u32, u32, usize, &[u64]); 4] = [
            (9, 10, 0, &[1, 2, 3]),
            (10, 10, 1, &[2, 3]),
            (14, 10, 0, &[2, 3]),
            (15, 10, 2, &[]),
        ];
        for (now, timeout, expired, survivors) in steps {
            table.set_now(now);
            assert_eq!(table.expire_idle(timeout), expired, "at {now}");
            let ids: Vec<u64> = table.entries.iter().map(|e| e.id).collect();
            assert_eq!(ids, survivors, "at {now}");
        }
    }

    #[test]
    fn zero_idle_timeout_never_expires() {
        let mut table = ConnectionTable::new(100);
        table.record(1);
        table.set_now(u32::MAX);
        assert_eq!(table.expire_idle(0), 0);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn expired_connection_starts_over() {
        let mut table = ConnectionTable::new(100);
        table.record(1);
        table.record(1);
        table.set_now(100);
        table.expire_idle(60);
        assert_eq!(table.record(1).requests, 1);
    }
}
