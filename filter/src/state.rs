//! Per-VM mutable state shared by the root context and its HTTP contexts:
//! the connection table plus metric deltas waiting to be flushed.
//!
//! Metrics are flushed on the root context's tick instead of per request:
//! one host call per metric per second instead of one per request keeps the
//! request path short, at the price of `/stats` lagging by up to a tick.

use crate::config::Config;
use crate::table::ConnectionTable;

/// Metric names, as `/stats` shows them after `wasmcustom.` and
/// `/stats/prometheus` shows them verbatim.
pub mod metrics {
    /// Counter: responses that got the headers.
    pub const REQUESTS_TAGGED: &str = "upstream_tagger_requests_tagged";
    /// Counter: requests passed through untagged (not gRPC, `tag_all_http` off).
    pub const REQUESTS_SKIPPED: &str = "upstream_tagger_requests_skipped";
    /// Gauge: connections tracked, summed over the VMs (workers).
    pub const CONNECTIONS_TRACKED: &str = "upstream_tagger_connections_tracked";
    /// Counter: connections dropped because the table hit `max_tracked_connections`.
    pub const CONNECTIONS_EVICTED: &str = "upstream_tagger_connections_evicted";
    /// Counter: connections forgotten after `idle_timeout_seconds` without requests.
    pub const CONNECTIONS_EXPIRED: &str = "upstream_tagger_connections_expired";
}

/// Metric changes since the previous flush.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flush {
    pub requests_tagged: u64,
    pub requests_skipped: u64,
    pub connections_evicted: u64,
    pub connections_expired: u64,
    /// Change of the tracked gauge. A delta rather than a value: every
    /// worker's VM adds into the same gauge.
    pub connections_tracked_delta: i64,
}

impl Flush {
    /// Nothing to report.
    pub fn is_empty(&self) -> bool {
        *self == Flush::default()
    }
}

/// Counting state of one root context.
#[derive(Debug)]
pub struct State {
    table: ConnectionTable,
    idle_timeout: u32,
    pending: Flush,
    reported_tracked: i64,
}

impl State {
    pub fn new(config: &Config) -> Self {
        State {
            table: ConnectionTable::new(config.max_tracked_connections),
            idle_timeout: config.idle_timeout_seconds,
            pending: Flush::default(),
            reported_tracked: 0,
        }
    }

    /// Counts a request on `connection_id`; returns its 1-based index there.
    pub fn count_request(&mut self, connection_id: u64) -> u64 {
        let recorded = self.table.record(connection_id);
        self.pending.connections_evicted += u64::from(recorded.evicted);
        recorded.requests
    }

    /// A response was tagged.
    pub fn tagged(&mut self) {
        self.pending.requests_tagged += 1;
    }

    /// A request was let through untagged.
    pub fn skipped(&mut self) {
        self.pending.requests_skipped += 1;
    }

    /// Connections tracked right now.
    pub fn tracked(&self) -> usize {
        self.table.len()
    }

    /// Periodic work: advance the clock to `now_seconds` and expire idle
    /// connections.
    pub fn tick(&mut self, now_seconds: u32) {
        self.table.set_now(now_seconds);
        self.pending.connections_expired += self.table.expire_idle(self.idle_timeout) as u64;
    }

    /// Takes the changes accumulated since the previous call.
    pub fn take_flush(&mut self) -> Flush {
        let tracked = self.table.len() as i64;
        let mut flush = std::mem::take(&mut self.pending);
        flush.connections_tracked_delta = tracked - self.reported_tracked;
        self.reported_tracked = tracked;
        flush
    }

    /// Final flush when the VM goes away: also withdraws this VM's share of
    /// the tracked gauge, which would otherwise stay in Envoy forever.
    pub fn take_final_flush(&mut self) -> Flush {
        let mut flush = std::mem::take(&mut self.pending);
        flush.connections_tracked_delta = -self.reported_tracked;
        self.reported_tracked = 0;
        flush
    }

    /// Request count of a tracked connection.
    pub fn requests(&self, connection_id: u64) -> Option<u64> {
        self.table.requests(connection_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(cap: u32, idle: u32) -> State {
        State::new(&Config {
            max_tracked_connections: cap,
            idle_timeout_seconds: idle,
            ..Config::default()
        })
    }

    #[test]
    fn flush_reports_deltas_once() {
        let mut s = state(2, 10);
        assert!(s.take_flush().is_empty());
        for id in [1, 1, 2, 3] {
            s.count_request(id);
            s.tagged();
        }
        s.skipped();
        assert_eq!(
            s.take_flush(),
            Flush {
                requests_tagged: 4,
                requests_skipped: 1,
                connections_evicted: 1,
                connections_expired: 0,
                connections_tracked_delta: 2,
            }
        );
        assert!(s.take_flush().is_empty(), "deltas are reported once");
        s.tick(10);
        assert_eq!(
            s.take_flush(),
            Flush {
                connections_expired: 2,
                connections_tracked_delta: -2,
                ..Flush::default()
            }
        );
    }

    #[test]
    fn final_flush_withdraws_the_gauge() {
        let mut s = state(10, 10);
        s.count_request(1);
        s.count_request(2);
        assert_eq!(s.take_flush().connections_tracked_delta, 2);
        s.count_request(3);
        s.tagged();
        assert_eq!(
            s.take_final_flush(),
            Flush {
                requests_tagged: 1,
                connections_tracked_delta: -2,
                ..Flush::default()
            }
        );
    }

    #[test]
    fn counting_uses_the_configured_cap() {
        let mut s = state(16, 0);
        for id in 0..300 {
            assert_eq!(s.count_request(id), 1);
            assert!(s.tracked() <= 16);
        }
        assert_eq!(s.take_flush().connections_evicted, 300 - 16);
        assert_eq!(s.requests(299), Some(1));
        assert_eq!(s.requests(0), None);
    }
}
