//! The scenarios' expectations, each a function over what the client saw.
//! A check returns the problems it found, in words a user reads after
//! `[FAIL]`; none means the expectation held.

use sidecar::destination_rule::ClusterPolicy;
use wire::{Record, Summary};

/// What a check reads.
#[derive(Clone, Copy, Debug)]
pub struct Evidence<'a> {
    /// The clients' own summary of `calls`.
    pub summary: &'a Summary,
    /// The client's records, in order.
    pub calls: &'a [Record],
    /// Server pods that ran.
    pub pods: usize,
    /// The client sidecar's outbound policy, when a DestinationRule applies.
    pub policy: Option<&'a ClusterPolicy>,
}

/// A scenario's expectation: the problems found in `Evidence`.
pub type Check = fn(&Evidence) -> Vec<String>;

/// `http-l4`: kube-proxy picks a pod per connection at random, so calls
/// spread (unevenly: only "stuck on one pod" is wrong); no keep-alive, so
/// every answer is the first on its connection.
pub fn spread_over_fresh_connections(e: &Evidence) -> Vec<String> {
    let (s, pods) = (e.summary, e.pods);
    let mut problems = Problems::default();
    let reached = s.pods.len();
    let spread = pods.min(2);
    problems.expect(reached >= spread, || {
        format!("reached {reached} of {pods} pods, expected at least {spread}")
    });
    problems.no_errors(s);
    let connections = connections(s);
    problems.expect(connections == s.ok, || {
        format!("{connections} fresh connections for {} answers", s.ok)
    });
    problems.into()
}

/// `grpc-l4`: one connection, balanced once: every call on one pod, the
/// server's count on the connection growing by one each call.
pub fn pinned_to_one_pod(e: &Evidence) -> Vec<String> {
    let s = e.summary;
    let mut problems = Problems::default();
    let reached = s.pods.len();
    problems.expect(reached == 1, || {
        format!("reached {reached} pods, expected exactly 1")
    });
    problems.no_errors(s);
    let counts: Vec<u64> = e
        .calls
        .iter()
        .filter_map(|c| c.call.conn_requests)
        .collect();
    problems.expect(counts.windows(2).all(|w| w[1] == w[0] + 1), || {
        "the server's per-connection count did not grow by one each call".into()
    });
    problems.into()
}

/// `grpc-mesh`: the sidecar balances each request over every pod, on one
/// long-lived connection per pod whose count grows; the filter tags each
/// answer.
pub fn one_growing_connection_per_pod(e: &Evidence) -> Vec<String> {
    let s = e.summary;
    let mut problems = Problems::default();
    let reached = problems.every_pod(e);
    problems.no_errors(s);
    problems.all_tagged(s);
    let connections = connections(s);
    problems.expect(connections == reached as u64, || {
        format!("{connections} connections for {reached} pods, expected one each")
    });
    problems.expect(s.max_connection_requests().unwrap_or(0) > 1, || {
        "connection counts never grew".into()
    });
    problems.into()
}

/// `one-per-conn`: every answer is request 1 on a fresh connection id.
pub fn every_answer_is_request_one(e: &Evidence) -> Vec<String> {
    let s = e.summary;
    let mut problems = Problems::default();
    problems.all_tagged(s);
    let not_first: Vec<u64> = e
        .calls
        .iter()
        .filter(|c| c.call.outcome.is_ok())
        .filter(|c| c.call.upstream_connection_requests() != Some(1))
        .map(|c| c.n)
        .collect();
    problems.expect(not_first.is_empty(), || {
        format!("calls {not_first:?} were not request 1")
    });
    let connections = connections(s);
    problems.expect(connections == s.ok, || {
        format!("{connections} connection ids for {} answers", s.ok)
    });
    // Envoy may reset a stream racing the close (envoy#8817): tolerated, reported.
    problems.expect(s.errors * 10 <= s.calls, || {
        format!("{} of {} calls failed", s.errors, s.calls)
    });
    problems.into()
}

/// `reuse`: every pod reached; each connection's count climbs to the
/// DestinationRule's `maxRequestsPerConnection`, then a new one starts.
pub fn connections_roll_over_at_the_limit(e: &Evidence) -> Vec<String> {
    let s = e.summary;
    let mut problems = Problems::default();
    let limit = e
        .policy
        .and_then(|p| p.max_requests_per_connection)
        .unwrap_or(0) as u64;
    let reached = problems.every_pod(e);
    problems.no_errors(s);
    let max_requests_per_connection = s.max_connection_requests().unwrap_or(0);
    problems.expect(max_requests_per_connection == limit, || {
        format!("max requests per connection {max_requests_per_connection} != limit {limit}")
    });
    let connections = connections(s);
    problems.expect(connections > reached as u64, || {
        format!("no connection rolled over ({connections} connections)")
    });
    problems.into()
}

/// `tight`: Envoy's circuit breaker, not some other failure: the calls that
/// fail are UNAVAILABLE with `reset reason: overflow`, and some succeed.
pub fn failures_are_overflow(e: &Evidence) -> Vec<String> {
    let s = e.summary;
    let mut problems = Problems::default();
    let overflow = e
        .calls
        .iter()
        .filter_map(|c| c.call.outcome.as_ref().err())
        .filter(|e| e.code == "UNAVAILABLE" && e.message.contains("overflow"))
        .count() as u64;
    problems.expect(overflow > 0, || {
        "no call overflowed (UNAVAILABLE ... overflow)".into()
    });
    problems.expect(s.ok > 0, || "no call succeeded".into());
    problems.expect(s.errors == overflow, || {
        format!(
            "errors other than overflow: {} of {} ({:?})",
            s.errors - overflow,
            s.errors,
            s.errors_by_code
        )
    });
    problems.into()
}

/// `client-rr`: every pod reached over exactly one connection each (as the
/// servers counted them: conn-requests=1 opens one), each reused.
pub fn one_reused_connection_per_pod(e: &Evidence) -> Vec<String> {
    let (s, pods) = (e.summary, e.pods);
    let mut problems = Problems::default();
    problems.every_pod(e);
    problems.no_errors(s);
    let connections = connections(s);
    problems.expect(connections == pods as u64, || {
        format!("{connections} connections for {pods} pods, expected one each")
    });
    problems.expect(
        s.max_connection_requests().unwrap_or(0) > 1 || s.ok <= pods as u64,
        || "connections were not reused".into(),
    );
    problems.into()
}

fn connections(s: &Summary) -> u64 {
    s.connections().unwrap_or(0)
}

/// The problems a check finds, in the order it looks.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    /// Every pod served a call; returns how many did.
    fn every_pod(&mut self, e: &Evidence) -> usize {
        let (reached, pods) = (e.summary.pods.len(), e.pods);
        self.expect(reached == pods, || {
            format!("reached {reached} of {pods} pods")
        });
        reached
    }

    fn no_errors(&mut self, s: &Summary) {
        self.expect(s.errors == 0, || format!("{} errors", s.errors));
    }

    fn all_tagged(&mut self, s: &Summary) {
        self.expect(s.all_tagged(), || {
            "some responses lack the filter's tags".into()
        });
    }
}

impl From<Problems> for Vec<String> {
    fn from(problems: Problems) -> Self {
        problems.0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use wire::{Call, Record, Summary};

    use super::*;

    /// An answer as the client records it: the pod, the server's count on
    /// the connection, and the caller's address the server saw (one per
    /// connection).
    fn answer(n: u64, pod: &str, conn_requests: u64, peer: &str) -> Record {
        let mut call = Call::ok(pod);
        call.conn_requests = Some(conn_requests);
        call.peer = Some(peer.into());
        Record {
            n,
            latency: Duration::ZERO,
            call,
        }
    }

    fn failure(n: u64, code: &str, message: &str) -> Record {
        Record {
            n,
            latency: Duration::ZERO,
            call: Call::error(code, message),
        }
    }

    fn problems(check: Check, records: &[Record], pods: usize) -> Vec<String> {
        let mut summary = Summary::default();
        records.iter().for_each(|r| summary.add(r));
        check(&Evidence {
            summary: &summary,
            calls: records,
            pods,
            policy: None,
        })
    }

    #[test]
    fn client_round_robin_needs_exactly_one_reused_connection_per_pod() {
        let one_each = [
            answer(1, "a", 1, "c:1"),
            answer(2, "b", 1, "c:2"),
            answer(3, "a", 2, "c:1"),
            answer(4, "b", 2, "c:2"),
        ];
        assert_eq!(
            problems(one_reused_connection_per_pod, &one_each, 2),
            Vec::<String>::new()
        );
        // Both pods reached, but `a` on two connections.
        let two_for_a = [
            answer(1, "a", 1, "c:1"),
            answer(2, "b", 1, "c:2"),
            answer(3, "a", 1, "c:3"),
            answer(4, "b", 2, "c:2"),
        ];
        let found = problems(one_reused_connection_per_pod, &two_for_a, 2);
        assert!(
            found.iter().any(|p| p.contains("3 connections for 2 pods")),
            "{found:?}"
        );
    }

    #[test]
    fn http_without_keepalive_needs_a_fresh_connection_per_call() {
        let fresh = [answer(1, "a", 1, "c:1"), answer(2, "b", 1, "c:2")];
        assert_eq!(
            problems(spread_over_fresh_connections, &fresh, 2),
            Vec::<String>::new()
        );
        let reused = [
            answer(1, "a", 1, "c:1"),
            answer(2, "b", 1, "c:2"),
            answer(3, "a", 2, "c:1"),
        ];
        let found = problems(spread_over_fresh_connections, &reused, 2);
        assert!(
            found
                .iter()
                .any(|p| p.contains("2 fresh connections for 3 answers")),
            "{found:?}"
        );
    }

    #[test]
    fn http_via_random_l4_needs_spread_not_every_pod() {
        let two_of_three = [
            answer(1, "a", 1, "c:1"),
            answer(2, "a", 1, "c:2"),
            answer(3, "b", 1, "c:3"),
        ];
        assert_eq!(
            problems(spread_over_fresh_connections, &two_of_three, 3),
            Vec::<String>::new()
        );
        let stuck = [answer(1, "a", 1, "c:1"), answer(2, "a", 1, "c:2")];
        let found = problems(spread_over_fresh_connections, &stuck, 3);
        assert!(
            found.iter().any(|p| p.contains("reached 1 of 3 pods")),
            "{found:?}"
        );
        assert_eq!(
            problems(spread_over_fresh_connections, &stuck, 1),
            Vec::<String>::new()
        );
    }

    #[test]
    fn tight_pool_errors_must_be_overflow() {
        let overflow = [
            answer(1, "a", 1, "c:1"),
            failure(
                2,
                "UNAVAILABLE",
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            ),
        ];
        assert_eq!(
            problems(failures_are_overflow, &overflow, 3),
            Vec::<String>::new()
        );
        let refused = [
            answer(1, "a", 1, "c:1"),
            failure(2, "UNAVAILABLE", "connection refused"),
        ];
        let found = problems(failures_are_overflow, &refused, 3);
        assert!(
            found.iter().any(|p| p.contains("no call overflowed")),
            "{found:?}"
        );
    }

    #[test]
    fn grpc_through_l4_must_stay_on_one_pod() {
        let pinned = [answer(1, "a", 1, "c:1"), answer(2, "a", 2, "c:1")];
        assert_eq!(
            problems(pinned_to_one_pod, &pinned, 3),
            Vec::<String>::new()
        );
        let spread = [answer(1, "a", 1, "c:1"), answer(2, "b", 1, "c:2")];
        assert!(!problems(pinned_to_one_pod, &spread, 3).is_empty());
    }
}
