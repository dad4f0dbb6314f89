//! The scenarios' expectations, each a function over what the client saw.
//! A check returns the problems it found, in words a user reads after
//! `[FAIL]`; none means the expectation held.

use std::{collections::BTreeSet, time::Duration};

use sidecar::destination_rule::ClusterPolicy;
use wire::{CallError, Record, Summary};

use super::{engine::DnsAnswer, events::Happened};

/// What a check reads.
#[derive(Clone, Copy, Debug)]
pub struct Evidence<'a> {
    /// The clients' own summary of `calls`.
    pub summary: &'a Summary,
    /// The client's records, in order.
    pub calls: &'a [Record],
    /// When each call started, after the client started (the client's own
    /// stamp: the checks compare it with the events' times, no slack).
    pub starts: &'a [Duration],
    /// Server pods the scenario started with.
    pub pods: usize,
    /// Every pod that ran, in start order (pods added later last).
    pub pod_names: &'a [String],
    /// What was done to the pods during the run.
    pub events: &'a [Happened],
    /// When the cluster DNS answered (scenarios that resolve by DNS).
    pub dns_answers: &'a [DnsAnswer],
    /// Connections the client app opened to its sidecar, as the sidecar
    /// counted them (sidecar scenarios).
    pub client_connections: Option<u64>,
    /// The client sidecar's outbound policy, when a DestinationRule applies.
    pub policy: Option<&'a ClusterPolicy>,
}

/// A scenario's expectation: the problems found in `Evidence`.
pub type Check = fn(&Evidence) -> Vec<String>;

/// `http-l4`: kube-proxy picks a pod per connection at random, so calls
/// spread (unevenly: only "stuck on one pod" is wrong); no keep-alive, so
/// every answer is the first on its connection.
pub fn spread_over_fresh_connections(e: &Evidence) -> Vec<String> {
    let s = e.summary;
    let mut problems = Problems::default();
    problems.spread(e);
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

/// `scale-out-l4`: the connection stays where kube-proxy put it: one pod,
/// the added one never called.
pub fn pinned_through_the_scale_out(e: &Evidence) -> Vec<String> {
    let mut problems = Problems::default();
    if let Some(added) = problems.event(e, "added") {
        let calls = answered_by(e, added).len();
        problems.expect(calls == 0, || {
            format!("the added pod answered {calls} calls: the connection moved")
        });
    }
    problems.0.extend(pinned_to_one_pod(e));
    problems.into()
}

/// `scale-out-mesh`: the sidecar sees the new endpoint and balances onto it
/// at once (within the first [`NEW_ENDPOINT_CALLS`] calls started after the
/// publish: about 1.5 s at the demo's pace); no call fails.
pub fn added_pod_gets_calls_at_once(e: &Evidence) -> Vec<String> {
    let mut problems = Problems::default();
    problems.no_errors(e.summary);
    problems.all_tagged(e.summary);
    problems.every_pod(e);
    if let Some(added) = problems.event(e, "added") {
        problems.first_call_within(e, added, NEW_ENDPOINT_CALLS);
    }
    problems.into()
}

/// `scale-out-http`: a connection per call, so kube-proxy's next pick can
/// be the new pod at once.
pub fn added_pod_gets_new_connections(e: &Evidence) -> Vec<String> {
    let mut problems = Problems::default();
    problems.0.extend(spread_over_fresh_connections(e));
    if let Some(added) = problems.event(e, "added") {
        let calls = answered_by(e, added).len();
        problems.expect(calls > 0, || {
            "the added pod answered no call, though every call opened a new connection".into()
        });
    }
    problems.into()
}

/// `pod-loss-l4`: the pinned pod dies: the call in flight fails, the client
/// reconnects through kube-proxy and is pinned again, to another pod.
pub fn reconnects_to_another_pod(e: &Evidence) -> Vec<String> {
    let mut problems = Problems::default();
    let Some(killed) = problems.event(e, "killed") else {
        return problems.into();
    };
    let pod = killed.pod.as_deref().unwrap_or_default();
    problems.only_pod_before(e, killed);
    problems.not_after(e, killed);
    let failed_early = failures(e)
        .filter(|(c, start, _)| *start + c.latency < killed.at())
        .count();
    problems.expect(failed_early == 0, || {
        format!("{failed_early} calls failed before the kill")
    });
    problems.expect(e.summary.errors > 0, || {
        "no call failed, though a call was in flight on the killed pod".into()
    });
    // Recovered: the last call answered, and once answered again, pinned.
    problems.recovered(e);
    let after = pods_answering(e, |start| start > killed.done());
    problems.expect(after.len() == 1 && !after.contains(pod), || {
        format!("after the kill, calls went to {after:?}, expected one other pod")
    });
    problems.into()
}

/// `pod-loss-mesh`: at most the call in flight on the killed pod fails;
/// connect failures to it are retried on other pods (Istio's default
/// retries) until the endpoints drop it.
pub fn retries_hide_the_pod_loss(e: &Evidence) -> Vec<String> {
    let mut problems = Problems::default();
    let Some(killed) = problems.event(e, "killed") else {
        return problems.into();
    };
    let errors = e.summary.errors;
    problems.expect(errors <= 1, || {
        format!(
            "{errors} calls failed ({:?}); at most the one in flight may",
            e.summary.errors_by_code
        )
    });
    problems.not_after(e, killed);
    problems.every_other_pod_after(e, killed, killed.done(), "the kill");
    problems.all_tagged(e.summary);
    problems.into()
}

/// `drain-mesh`: no call fails; the call in flight on the pod at its SIGTERM
/// finishes there; once the endpoints drop it, no new call goes to it.
pub fn drains_without_failures(e: &Evidence) -> Vec<String> {
    let mut problems = Problems::default();
    problems.no_errors(e.summary);
    let Some(drained) = problems.event(e, "drained") else {
        return problems.into();
    };
    let pod = drained.pod.as_deref().unwrap_or_default();
    // The drain struck mid-call: that call finishes on the draining pod.
    let finished_there =
        struck_call(e, drained).is_some_and(|c| c.call.outcome.as_deref() == Ok(pod));
    problems.expect(finished_there, || {
        format!("no call in flight on {pod} at the SIGTERM finished there")
    });
    let started_after: Vec<u64> = e
        .calls
        .iter()
        .zip(e.starts)
        .filter(|(c, start)| c.call.outcome.as_deref() == Ok(pod) && **start > drained.done())
        .map(|(c, _)| c.n)
        .collect();
    problems.expect(started_after.is_empty(), || {
        format!("calls {started_after:?} started on {pod} after the endpoints dropped it")
    });
    // Calls started after the update: one in flight at the drain ends
    // after it, on the draining pod, as it should.
    problems.every_other_pod_after(e, drained, drained.done(), "the drain");
    problems.into()
}

/// `scale-out-rr`'s `--resolve-every`: the client re-resolves the headless
/// Service this often (the catalog passes the same value).
pub const RR_RESOLVE_EVERY: Duration = Duration::from_secs(2);

/// `scale-out-rr`: the cluster DNS lists the new pod once it is published,
/// but the client learns of it only at its next re-resolution (the first
/// DNS answer listing it): no call reaches it before that answer, and the
/// strict rotation reaches it within a few calls after; no call fails.
pub fn added_pod_after_the_next_resolution(e: &Evidence) -> Vec<String> {
    let mut problems = Problems::default();
    problems.no_errors(e.summary);
    problems.every_pod(e);
    let Some(added) = problems.event(e, "added") else {
        return problems.into();
    };
    let pods = e.pod_names.len();
    let learned = e
        .dns_answers
        .iter()
        .find(|a| a.t_ms >= added.t_ms && a.addresses == pods)
        .map(|a| Duration::from_millis(a.t_ms));
    let Some(learned) = learned else {
        problems.0.push(format!(
            "no DNS answer listed {pods} pods after the pod was added (answers: {:?})",
            e.dns_answers
        ));
        return problems.into();
    };
    let waited = learned.saturating_sub(added.done());
    problems.expect(waited <= RR_RESOLVE_EVERY + RESOLVE_SLACK, || {
        format!("the client asked DNS again {waited:?} after the pod was published, expected within --resolve-every ({RR_RESOLVE_EVERY:?})")
    });
    match answered_by(e, added).first() {
        None => problems.0.push("the added pod answered no call".into()),
        Some(&first) => {
            problems.expect(first >= learned, || {
                format!(
                    "the added pod's first call started at t={:.2}s, before the DNS answer listing it (t={:.2}s)",
                    first.as_secs_f64(),
                    learned.as_secs_f64()
                )
            });
            problems.expect(first <= learned + ONE_ROTATION, || {
                format!(
                    "the added pod's first call started {:?} after the client learned of it",
                    first.saturating_sub(learned)
                )
            });
        }
    }
    problems.into()
}

/// How late a re-resolution may come on a busy machine.
const RESOLVE_SLACK: Duration = Duration::from_secs(1);
/// A strict rotation over 4 pods at 50 ms per call reaches the new one in
/// 200 ms; a second of room for a loaded machine.
const ONE_ROTATION: Duration = Duration::from_millis(1200);

/// `max-age-l4`: the server's GOAWAY at the maximum age makes the client
/// reconnect, and each new connection gets kube-proxy's pick: calls spread,
/// none fails.
pub fn reconnects_every_age(e: &Evidence) -> Vec<String> {
    let s = e.summary;
    let mut problems = Problems::default();
    problems.no_errors(s);
    let connections = connections(s);
    // 3 s of calls at a 300 ms age: about 10; fewer than 4 means the age
    // did not act.
    problems.expect(connections >= 4, || {
        format!("{connections} connections: the client did not reconnect at each age")
    });
    problems.spread(e);
    problems.into()
}

/// `http-mesh`: the client opens a connection per call, but its sidecar
/// balances each request over every pod and keeps a few connections to them,
/// which the server sidecars reuse to their apps: the app's count grows.
pub fn sidecars_reuse_app_connections(e: &Evidence) -> Vec<String> {
    let s = e.summary;
    let mut problems = Problems::default();
    let reached = problems.every_pod(e);
    problems.no_errors(s);
    problems.expect(e.client_connections == Some(s.calls), || match e.client_connections {
        Some(n) => format!(
            "the client opened {n} connections to its sidecar for {} calls, expected one per call",
            s.calls
        ),
        None => "the client sidecar's connection count could not be read".into(),
    });
    let connections = connections(s);
    problems.expect(connections < s.ok, || {
        format!(
            "{connections} app-side connections for {} answers: nothing reused them",
            s.ok
        )
    });
    problems.expect(s.max_connection_requests().unwrap_or(0) > 1, || {
        "the app's per-connection count never grew".into()
    });
    problems.expect(connections >= reached as u64, || {
        format!("{connections} connections for {reached} pods")
    });
    problems.into()
}

/// `node-loss-mesh`: the lost pod neither answers nor resets a connection:
/// the call in flight on it, and any the sidecar sends it before the
/// endpoints drop it, wait out their deadline, the client's or its
/// sidecar's (nothing was reset or refused, so no retry policy fires); no
/// call started after the endpoints drop it fails.
pub fn calls_to_a_lost_pod_hang_until_the_deadline(e: &Evidence) -> Vec<String> {
    let mut problems = Problems::default();
    let (Some(frozen), Some(published)) =
        (problems.event(e, "frozen"), problems.event(e, "endpoints"))
    else {
        return problems.into();
    };
    problems.struck_call_failed(e, frozen);
    for (c, start, error) in failures(e) {
        let (code, message) = (error.code.as_str(), error.message.as_str());
        // Whichever timer fires first: the client's own, or its sidecar's,
        // which Istio's routes set from the call's `grpc-timeout` header
        // (`max_grpc_timeout: 0s`) and which answers UNAVAILABLE.
        let timed_out = code == "DEADLINE_EXCEEDED"
            || (code == "UNAVAILABLE" && message.contains("upstream request timeout"));
        problems.expect(timed_out && c.latency >= LOST_POD_DEADLINE_NEAR, || {
            format!(
                "call {} failed with {code} {message:?} after {:?}; a call to a lost pod waits out its {LOST_POD_DEADLINE:?} deadline",
                c.n, c.latency
            )
        });
        problems.expect(
            start + c.latency >= frozen.at() && start <= published.done(),
            || {
                format!(
                    "call {} failed, but it ended before the node was lost or started after the endpoints dropped the pod",
                    c.n
                )
            },
        );
    }
    problems.not_after(e, frozen);
    problems.every_other_pod_after(e, frozen, published.done(), "the endpoints update");
    problems.all_tagged(e.summary);
    problems.into()
}

/// `node-loss-l4`: the client's keepalive notices the silent connection and
/// closes it, failing its call before the deadline; it reconnects through
/// kube-proxy until it is pinned to a pod that answers.
pub fn keepalive_leaves_the_lost_pod(e: &Evidence) -> Vec<String> {
    let mut problems = Problems::default();
    let (Some(frozen), Some(published)) =
        (problems.event(e, "frozen"), problems.event(e, "endpoints"))
    else {
        return problems.into();
    };
    let pod = frozen.pod.as_deref().unwrap_or_default();
    problems.only_pod_before(e, frozen);
    problems.struck_call_failed(e, frozen);
    for (c, _, error) in failures(e) {
        let code = error.code.as_str();
        problems.expect(code != "DEADLINE_EXCEEDED" && c.latency < LOST_POD_DEADLINE, || {
            format!(
                "call {} failed with {code} after {:?}: keepalive should have closed the connection before the {LOST_POD_DEADLINE:?} deadline",
                c.n, c.latency
            )
        });
    }
    problems.not_after(e, frozen);
    // Pinned to one of them, normally; a PING starved on a busy machine
    // may move it once more, and that is keepalive doing its job.
    let after = pods_answering(e, |start| start > published.done());
    problems.expect(!after.is_empty() && !after.contains(pod), || {
        format!("after the endpoints update, calls went to {after:?}, expected other pods only")
    });
    problems.recovered(e);
    problems.into()
}

/// `node-loss-*`'s client deadline (`--timeout`), and how early the
/// sidecar's timer may fire by the client's clock (the header carries the
/// time left when the call was sent).
const LOST_POD_DEADLINE: Duration = Duration::from_secs(1);
const LOST_POD_DEADLINE_NEAR: Duration = Duration::from_millis(950);

/// Envoy's LEAST_REQUEST picks among 4 idle pods at random: the new pod is
/// missed 30 calls in a row with odds (3/4)^30, about 2 in 10,000.
const NEW_ENDPOINT_CALLS: usize = 30;

/// The failed calls, with when each started and why it failed.
fn failures<'e>(e: &'e Evidence) -> impl Iterator<Item = (&'e Record, Duration, &'e CallError)> {
    e.calls
        .iter()
        .zip(e.starts)
        .filter_map(|(c, start)| c.call.outcome.as_ref().err().map(|err| (c, *start, err)))
}

/// The call in flight when `event` struck: started before it, ended after.
fn struck_call<'e>(e: &'e Evidence, event: &Happened) -> Option<&'e Record> {
    e.calls
        .iter()
        .zip(e.starts)
        .find(|(c, start)| **start < event.at() && **start + c.latency > event.at())
        .map(|(c, _)| c)
}

/// When the calls `event`'s pod answered started.
fn answered_by(e: &Evidence, event: &Happened) -> Vec<Duration> {
    let pod = event.pod.as_deref().unwrap_or_default();
    e.calls
        .iter()
        .zip(e.starts)
        .filter(|(c, _)| c.call.outcome.as_deref() == Ok(pod))
        .map(|(_, t)| *t)
        .collect()
}

/// The pods that answered calls started at times `when` accepts.
fn pods_answering<'e>(e: &'e Evidence, when: impl Fn(Duration) -> bool) -> BTreeSet<&'e str> {
    e.calls
        .iter()
        .zip(e.starts)
        .filter(|(_, t)| when(**t))
        .filter_map(|(c, _)| c.call.outcome.as_deref().ok())
        .collect()
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

    /// Calls reached more than one pod (when there is more than one): a
    /// random pick per connection spreads them, unevenly; only "stuck on
    /// one pod" is wrong.
    fn spread(&mut self, e: &Evidence) {
        let (reached, pods) = (e.summary.pods.len(), e.pod_names.len());
        let spread = pods.min(2);
        self.expect(reached >= spread, || {
            format!("reached {reached} of {pods} pods, expected at least {spread}")
        });
    }

    /// Every pod served a call; returns how many did.
    fn every_pod(&mut self, e: &Evidence) -> usize {
        let (reached, pods) = (e.summary.pods.len(), e.pod_names.len());
        self.expect(reached == pods, || {
            format!("reached {reached} of {pods} pods")
        });
        reached
    }

    /// The scenario's first event of kind `what`; a problem if it never
    /// happened.
    fn event<'e>(&mut self, e: &'e Evidence, what: &str) -> Option<&'e Happened> {
        let found = e.events.iter().find(|h| h.what == what);
        self.expect(found.is_some(), || match what {
            "endpoints" => "the endpoints were never updated".into(),
            _ => format!("no pod was {what}"),
        });
        found
    }

    /// The added pod's first call comes after it was added, and among the
    /// first `calls` calls that started after it was published (counted,
    /// not timed: a slow machine makes fewer calls per second, not fewer
    /// picks).
    fn first_call_within(&mut self, e: &Evidence, added: &Happened, calls: usize) {
        let pod = added.pod.as_deref().unwrap_or_default();
        let after: Vec<&Record> = e
            .calls
            .iter()
            .zip(e.starts)
            .filter(|(_, start)| **start >= added.done())
            .map(|(c, _)| c)
            .collect();
        let first = after
            .iter()
            .position(|c| c.call.outcome.as_deref() == Ok(pod));
        match first {
            None => self.0.push(format!(
                "the added pod {pod} answered none of the {} calls started after it was published",
                after.len()
            )),
            Some(i) => self.expect(i < calls, || {
                format!("the added pod's first call was the {}th started after it was published, expected within {calls}", i + 1)
            }),
        }
        let early = answered_by(e, added)
            .into_iter()
            .filter(|start| *start < added.at())
            .count();
        self.expect(early == 0, || {
            format!("the added pod answered {early} calls started before it was added")
        });
    }

    /// The call in flight when `event` struck (started before it, ended
    /// after it) failed.
    fn struck_call_failed(&mut self, e: &Evidence, event: &Happened) {
        let pod = event.pod.as_deref().unwrap_or_default();
        match struck_call(e, event) {
            None => self.0.push(format!(
                "no call was in flight when {pod} was {}",
                event.what
            )),
            Some(c) => self.expect(c.call.outcome.is_err(), || {
                format!(
                    "call {}, in flight when {pod} was {}, did not fail",
                    c.n, event.what
                )
            }),
        }
    }

    /// Before `event`, only its pod answered (the client was pinned to it).
    fn only_pod_before(&mut self, e: &Evidence, event: &Happened) {
        let pod = event.pod.as_deref().unwrap_or_default();
        let before = pods_answering(e, |start| start < event.at());
        self.expect(before.len() == 1 && before.contains(pod), || {
            format!(
                "before {pod} was {}, calls went to {before:?}, expected only {pod}",
                event.what
            )
        });
    }

    /// Calls started after `from` reached every pod but `event`'s.
    fn every_other_pod_after(
        &mut self,
        e: &Evidence,
        event: &Happened,
        from: Duration,
        when: &str,
    ) {
        let pod = event.pod.as_deref().unwrap_or_default();
        let others = e.pod_names.len() - 1;
        let after = pods_answering(e, |start| start > from);
        self.expect(after.len() == others && !after.contains(pod), || {
            format!(
                "calls started after {when} went to {after:?}, expected every other pod ({others})"
            )
        });
    }

    /// The client's last call answered.
    fn recovered(&mut self, e: &Evidence) {
        self.expect(
            e.calls.last().is_some_and(|c| c.call.outcome.is_ok()),
            || "the client did not recover: its last call failed".into(),
        );
    }

    /// The pod `event` removed answers no call after it.
    fn not_after(&mut self, e: &Evidence, event: &Happened) {
        let pod = event.pod.as_deref().unwrap_or_default();
        let late = answered_by(e, event)
            .into_iter()
            .filter(|start| *start > event.done())
            .count();
        self.expect(late == 0, || {
            format!(
                "{pod} answered {late} calls started after it was {}",
                event.what
            )
        });
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
            started: std::time::UNIX_EPOCH,
            latency: Duration::ZERO,
            call,
        }
    }

    fn failure(n: u64, code: &str, message: &str) -> Record {
        Record {
            n,
            started: std::time::UNIX_EPOCH,
            latency: Duration::ZERO,
            call: Call::error(code, message),
        }
    }

    /// `check` on `records` from `pods` pods, the client having opened a
    /// connection to its sidecar per call (no keep-alive).
    fn problems(check: Check, records: &[Record], pods: usize) -> Vec<String> {
        problems_with_client_connections(check, records, pods, records.len() as u64)
    }

    fn problems_with_client_connections(
        check: Check,
        records: &[Record],
        pods: usize,
        client_connections: u64,
    ) -> Vec<String> {
        let mut summary = Summary::default();
        records.iter().for_each(|r| summary.add(r));
        let starts: Vec<Duration> = (0..records.len() as u64)
            .map(Duration::from_millis)
            .collect();
        let pod_names: Vec<String> = (0..pods).map(|i| format!("pod-{i}")).collect();
        check(&Evidence {
            summary: &summary,
            calls: records,
            starts: &starts,
            pods,
            pod_names: &pod_names,
            events: &[],
            dns_answers: &[],
            client_connections: Some(client_connections),
            policy: None,
        })
    }

    /// A run where pods came and went: calls `(pod or None for a failure,
    /// start ms)`, 10 ms each, and what happened.
    struct Run {
        calls: Vec<Record>,
        starts: Vec<Duration>,
        pods: Vec<String>,
        events: Vec<Happened>,
        dns: Vec<DnsAnswer>,
    }

    impl Run {
        fn new(pods: &[&str], calls: &[(Option<&str>, u64)]) -> Self {
            let mut per_pod = std::collections::HashMap::new();
            let records = calls
                .iter()
                .zip(1..)
                .map(|((pod, _), n)| match pod {
                    Some(pod) => {
                        let count = per_pod.entry(*pod).or_insert(0);
                        *count += 1;
                        answer(n, pod, *count, &format!("{pod}:1"))
                    }
                    None => failure(n, "UNAVAILABLE", "reset"),
                })
                .map(|mut r: Record| {
                    r.latency = Duration::from_millis(10);
                    r
                })
                .collect();
            Run {
                calls: records,
                starts: calls
                    .iter()
                    .map(|(_, t)| Duration::from_millis(*t))
                    .collect(),
                pods: pods.iter().map(|p| p.to_string()).collect(),
                events: Vec::new(),
                dns: Vec::new(),
            }
        }

        fn event(mut self, what: &'static str, pod: &str, t_ms: u64, done_ms: u64) -> Self {
            self.events.push(Happened {
                t_ms,
                done_ms,
                what,
                pod: Some(pod.into()),
                detail: String::new(),
            });
            self
        }

        fn problems(&self, check: Check) -> Vec<String> {
            let mut summary = Summary::default();
            self.calls.iter().for_each(|r| summary.add(r));
            check(&Evidence {
                summary: &summary,
                calls: &self.calls,
                starts: &self.starts,
                pods: 3,
                pod_names: &self.pods,
                events: &self.events,
                dns_answers: &self.dns,
                client_connections: None,
                policy: None,
            })
        }
    }

    fn says(problems: &[String], what: &str) -> bool {
        problems.iter().any(|p| p.contains(what))
    }

    #[test]
    fn scale_out_via_l4_must_leave_the_added_pod_uncalled() {
        let pinned = Run::new(
            &["a", "b", "c", "d"],
            &[(Some("a"), 100), (Some("a"), 2000)],
        )
        .event("added", "d", 1000, 1100);
        assert_eq!(
            pinned.problems(pinned_through_the_scale_out),
            Vec::<String>::new()
        );
        let moved = Run::new(
            &["a", "b", "c", "d"],
            &[(Some("a"), 100), (Some("d"), 2000)],
        )
        .event("added", "d", 1000, 1100);
        let found = moved.problems(pinned_through_the_scale_out);
        assert!(says(&found, "the added pod answered 1 calls"), "{found:?}");
        let no_event = Run::new(&["a"], &[(Some("a"), 100)]);
        assert!(says(
            &no_event.problems(pinned_through_the_scale_out),
            "no pod was added"
        ));
    }

    #[test]
    fn pod_loss_via_l4_needs_a_failure_then_one_other_pod() {
        // The call in flight at the kill (started at 995) fails.
        let calls = [
            (Some("a"), 500),
            (None, 995),
            (Some("b"), 1500),
            (Some("b"), 2500),
        ];
        let good = Run::new(&["a", "b", "c"], &calls).event("killed", "a", 1000, 1005);
        assert_eq!(
            good.problems(reconnects_to_another_pod),
            Vec::<String>::new()
        );
        let no_failure = Run::new(&["a", "b", "c"], &[(Some("a"), 500), (Some("b"), 1500)])
            .event("killed", "a", 1000, 1005);
        assert!(says(
            &no_failure.problems(reconnects_to_another_pod),
            "no call failed"
        ));
        let spread = Run::new(
            &["a", "b", "c"],
            &[
                (Some("a"), 500),
                (None, 1010),
                (Some("b"), 1500),
                (Some("c"), 2500),
            ],
        )
        .event("killed", "a", 1000, 1005);
        let found = spread.problems(reconnects_to_another_pod);
        assert!(says(&found, "expected one other pod"), "{found:?}");
        let answered_late = Run::new(
            &["a", "b", "c"],
            &[(Some("a"), 500), (None, 1010), (Some("a"), 2000)],
        )
        .event("killed", "a", 1000, 1005);
        let found = answered_late.problems(reconnects_to_another_pod);
        assert!(
            says(&found, "a answered 1 calls started after it was killed"),
            "{found:?}"
        );
    }

    #[test]
    fn pod_loss_via_sidecar_allows_one_failure_only() {
        let calls = [
            (Some("a"), 500),
            (None, 1010),
            (None, 1020),
            (Some("b"), 1500),
            (Some("c"), 1600),
        ];
        let run = Run::new(&["a", "b", "c"], &calls).event("killed", "a", 1000, 1005);
        let found = run.problems(retries_hide_the_pod_loss);
        assert!(says(&found, "2 calls failed"), "{found:?}");
    }

    #[test]
    fn calls_to_a_lost_pod_must_wait_out_the_deadline_until_the_endpoints_drop_it() {
        // Frozen at 1000 ms, the endpoints updated at 3000-3005 ms; failures
        // (None) are DEADLINE_EXCEEDED after 1 s unless a test changes them.
        let run = |calls: &[(Option<&str>, u64)]| {
            let mut run = Run::new(&["a", "b", "c"], calls)
                .event("frozen", "a", 1000, 1001)
                .event("endpoints", "a", 3000, 3005);
            for r in &mut run.calls {
                match &r.call.outcome {
                    // Through the sidecars: every answer tagged.
                    Ok(pod) => {
                        r.call.tags.pod = Some(pod.clone());
                        r.call.tags.connection_id = Some("1".into());
                    }
                    Err(_) => {
                        r.call = Call::error("DEADLINE_EXCEEDED", "no answer within 1s");
                        r.latency = Duration::from_secs(1);
                    }
                }
            }
            run
        };
        let calls = [
            (Some("a"), 500),
            (None, 990),
            (Some("b"), 2000),
            (None, 2500),
            (Some("b"), 3500),
            (Some("c"), 3600),
        ];
        let good = run(&calls);
        assert_eq!(
            good.problems(calls_to_a_lost_pod_hang_until_the_deadline),
            Vec::<String>::new()
        );
        let reset = {
            let mut r = run(&calls);
            r.calls[1].call = Call::error("UNAVAILABLE", "reset");
            r
        };
        let found = reset.problems(calls_to_a_lost_pod_hang_until_the_deadline);
        assert!(
            says(&found, "call 2 failed with UNAVAILABLE \"reset\""),
            "{found:?}"
        );
        let sidecar_timed_out = {
            let mut r = run(&calls);
            r.calls[1].call = Call::error("UNAVAILABLE", "upstream request timeout");
            r.calls[1].latency = Duration::from_millis(999);
            r
        };
        assert_eq!(
            sidecar_timed_out.problems(calls_to_a_lost_pod_hang_until_the_deadline),
            Vec::<String>::new()
        );
        let short = {
            let mut r = run(&calls);
            r.calls[1].latency = Duration::from_millis(200);
            r
        };
        let found = short.problems(calls_to_a_lost_pod_hang_until_the_deadline);
        assert!(says(&found, "waits out its 1s deadline"), "{found:?}");
        let late = run(&[
            (Some("a"), 500),
            (None, 990),
            (None, 3100),
            (Some("b"), 3500),
            (Some("c"), 3600),
        ]);
        let found = late.problems(calls_to_a_lost_pod_hang_until_the_deadline);
        assert!(
            says(&found, "call 3 failed, but it ended before"),
            "{found:?}"
        );
        let nothing = run(&[
            (Some("a"), 500),
            (Some("b"), 2000),
            (Some("b"), 3500),
            (Some("c"), 3600),
        ]);
        let found = nothing.problems(calls_to_a_lost_pod_hang_until_the_deadline);
        assert!(
            says(&found, "no call was in flight when a was frozen"),
            "{found:?}"
        );
        // The call in flight at the freeze was answered: not on the lost pod.
        let answered = run(&[
            (Some("a"), 500),
            (Some("b"), 995),
            (None, 2500),
            (Some("b"), 3500),
            (Some("c"), 3600),
        ]);
        let found = answered.problems(calls_to_a_lost_pod_hang_until_the_deadline);
        assert!(
            says(&found, "call 2, in flight when a was frozen, did not fail"),
            "{found:?}"
        );
    }

    #[test]
    fn keepalive_must_fail_the_lost_connection_before_the_deadline() {
        let run = |calls: &[(Option<&str>, u64)], failure: (&str, u64)| {
            let mut run = Run::new(&["a", "b", "c"], calls)
                .event("frozen", "a", 1000, 1001)
                .event("endpoints", "a", 3000, 3005);
            for r in run.calls.iter_mut().filter(|r| r.call.outcome.is_err()) {
                r.call = Call::error(failure.0, "keep-alive timed out");
                r.latency = Duration::from_millis(failure.1);
            }
            run
        };
        let calls = [
            (Some("a"), 500),
            (None, 990),
            (Some("b"), 1500),
            (Some("b"), 3500),
        ];
        let good = run(&calls, ("UNAVAILABLE", 400));
        assert_eq!(
            good.problems(keepalive_leaves_the_lost_pod),
            Vec::<String>::new()
        );
        let deadline = run(&calls, ("DEADLINE_EXCEEDED", 1000));
        let found = deadline.problems(keepalive_leaves_the_lost_pod);
        assert!(
            says(&found, "keepalive should have closed the connection"),
            "{found:?}"
        );
        let stuck = run(
            &[(Some("a"), 500), (None, 990), (None, 1500), (None, 3500)],
            ("UNAVAILABLE", 400),
        );
        let found = stuck.problems(keepalive_leaves_the_lost_pod);
        assert!(says(&found, "the client did not recover"), "{found:?}");
        assert!(says(&found, "expected other pods only"), "{found:?}");
    }

    #[test]
    fn a_drained_pod_may_finish_its_call_but_take_no_new_one() {
        // The call started at 995 finishes on the draining pod.
        let calls = [
            (Some("a"), 500),
            (Some("a"), 995),
            (Some("b"), 1500),
            (Some("c"), 1600),
        ];
        let good = Run::new(&["a", "b", "c"], &calls).event("drained", "a", 1000, 1002);
        assert_eq!(good.problems(drains_without_failures), Vec::<String>::new());
        let late = [
            (Some("a"), 500),
            (Some("b"), 1500),
            (Some("c"), 1600),
            (Some("a"), 2000),
        ];
        let bad = Run::new(&["a", "b", "c"], &late).event("drained", "a", 1000, 1002);
        let found = bad.problems(drains_without_failures);
        assert!(
            says(&found, "started on a after the endpoints dropped it"),
            "{found:?}"
        );
        // a's last call ended before the SIGTERM: the drain struck no call.
        let idle = [
            (Some("a"), 500),
            (Some("b"), 995),
            (Some("b"), 1500),
            (Some("c"), 1600),
        ];
        let struck_nothing = Run::new(&["a", "b", "c"], &idle).event("drained", "a", 1000, 1002);
        assert_eq!(
            struck_nothing.problems(drains_without_failures),
            vec!["no call in flight on a at the SIGTERM finished there".to_string()]
        );
    }

    #[test]
    fn round_robin_must_not_reach_the_new_pod_before_dns_lists_it() {
        let calls = [
            (Some("a"), 100),
            (Some("b"), 1500),
            (Some("d"), 2100),
            (Some("c"), 2200),
        ];
        let mut good = Run::new(&["a", "b", "c", "d"], &calls).event("added", "d", 1000, 1050);
        good.dns = vec![
            DnsAnswer {
                t_ms: 5,
                addresses: 3,
            },
            DnsAnswer {
                t_ms: 2000,
                addresses: 4,
            },
        ];
        assert_eq!(
            good.problems(added_pod_after_the_next_resolution),
            Vec::<String>::new()
        );
        let early = [
            (Some("a"), 100),
            (Some("d"), 1500),
            (Some("b"), 2100),
            (Some("c"), 2200),
        ];
        let mut bad = Run::new(&["a", "b", "c", "d"], &early).event("added", "d", 1000, 1050);
        bad.dns = good.dns.clone();
        let found = bad.problems(added_pod_after_the_next_resolution);
        assert!(
            says(&found, "before the DNS answer listing it"),
            "{found:?}"
        );
        bad.dns.clear();
        let found = bad.problems(added_pod_after_the_next_resolution);
        assert!(says(&found, "no DNS answer listed 4 pods"), "{found:?}");
    }

    #[test]
    fn http_via_sidecars_needs_reused_app_connections() {
        // Each answer on its own app connection (`answer` gives pod:1 as the
        // peer, so make them distinct): nothing reused.
        let fresh: Vec<Record> = ["a", "b", "c"]
            .iter()
            .zip(1..)
            .map(|(pod, n)| answer(n, pod, 1, &format!("s:{n}")))
            .collect();
        let found = problems(sidecars_reuse_app_connections, &fresh, 3);
        assert!(says(&found, "nothing reused them"), "{found:?}");
        let reused = [
            answer(1, "pod-0", 1, "s:1"),
            answer(2, "pod-1", 1, "s:2"),
            answer(3, "pod-2", 1, "s:3"),
            answer(4, "pod-0", 2, "s:1"),
        ];
        assert_eq!(
            problems(sidecars_reuse_app_connections, &reused, 3),
            Vec::<String>::new()
        );
        // The client kept its connection to the sidecar: not what http-mesh shows.
        let kept = problems_with_client_connections(sidecars_reuse_app_connections, &reused, 3, 1);
        assert!(
            says(&kept, "opened 1 connections to its sidecar for 4 calls"),
            "{kept:?}"
        );
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
