//! Running totals over the calls printed so far: which pods answered, how
//! many distinct connections carried the calls, and what failed.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::record::{Record, to_json_line};

/// Identifies one connection from what the responses say about it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ConnKey {
    /// The filter's view: the connection into that pod's sidecar. Preferred,
    /// because behind a sidecar the server's own peer is the sidecar.
    Upstream { pod: String, id: String },
    /// The server's view: the pod and the caller's address it saw.
    Peer { pod: String, peer: String },
}

#[derive(Debug, Clone, Copy, Default)]
struct ConnStats {
    /// Calls of ours seen with this key.
    seen: u64,
    /// Highest per-connection request count reported for it (it can exceed
    /// `seen` when other clients share the connection, e.g. a sidecar's).
    reported: Option<u64>,
    /// Calls reported as the first on their connection. Each connection has
    /// exactly one, so two mean the key was reused by a later connection (an
    /// ephemeral port the OS handed out again), whatever the arrival order.
    firsts: u64,
}

impl ConnStats {
    fn connections(&self) -> u64 {
        self.firsts.max(1)
    }

    fn max_requests(&self) -> u64 {
        // A reported count is the truth; counting calls is the fallback, and
        // would merge connections that reused a key.
        self.reported.unwrap_or(self.seen)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub calls: u64,
    pub ok: u64,
    pub errors: u64,
    /// Successful calls per pod.
    pub pods: BTreeMap<String, u64>,
    pub errors_by_code: BTreeMap<String, u64>,
    /// Successful calls that carried the filter's pod and connection id.
    tagged: u64,
    connections: HashMap<ConnKey, ConnStats>,
}

impl Summary {
    pub fn add(&mut self, record: &Record) {
        let call = &record.call;
        self.calls += 1;
        match &call.outcome {
            Ok(pod) => {
                self.ok += 1;
                *self.pods.entry(pod.clone()).or_default() += 1;
                if call.tags.pod.is_some() && call.tags.connection_id.is_some() {
                    self.tagged += 1;
                }
            }
            Err(e) => {
                self.errors += 1;
                *self.errors_by_code.entry(e.code.clone()).or_default() += 1;
            }
        }
        let tags = &call.tags;
        let (key, reported) = match (&tags.pod, &tags.connection_id, &call.outcome, &call.peer) {
            (Some(pod), Some(id), _, _) => (
                ConnKey::Upstream {
                    pod: pod.clone(),
                    id: id.clone(),
                },
                tags.connection_requests
                    .as_deref()
                    .and_then(|c| c.parse().ok()),
            ),
            (_, _, Ok(pod), Some(peer)) => (
                ConnKey::Peer {
                    pod: pod.clone(),
                    peer: peer.clone(),
                },
                call.conn_requests,
            ),
            // Nothing identifies the connection (e.g. a connect error).
            _ => return,
        };
        let stats = self.connections.entry(key).or_default();
        stats.seen += 1;
        if let Some(count) = reported {
            stats.reported = Some(stats.reported.map_or(count, |r| r.max(count)));
            stats.firsts += u64::from(count == 1);
        }
    }

    /// Distinct connections seen; `None` when no answer said which
    /// connection carried it (a server that does not report it, as the Go
    /// demo's, or no answers at all): unknown, not zero.
    pub fn connections(&self) -> Option<u64> {
        (!self.connections.is_empty())
            .then(|| self.connections.values().map(ConnStats::connections).sum())
    }

    /// Distinct connections per pod: the pod the filter named for tagged
    /// calls, else the pod that answered.
    pub fn connections_per_pod(&self) -> BTreeMap<String, u64> {
        let mut per_pod = BTreeMap::new();
        for (key, stats) in &self.connections {
            let (ConnKey::Upstream { pod, .. } | ConnKey::Peer { pod, .. }) = key;
            *per_pod.entry(pod.clone()).or_default() += stats.connections();
        }
        per_pod
    }

    /// Every call answered, and every answer carried the filter's tags (so
    /// it went through a sidecar running it).
    pub fn all_tagged(&self) -> bool {
        self.ok > 0 && self.tagged == self.ok
    }

    /// The most requests seen on any one connection; `None` as above.
    pub fn max_connection_requests(&self) -> Option<u64> {
        self.connections.values().map(ConnStats::max_requests).max()
    }

    /// `part` as a percentage of all calls.
    pub fn share(&self, part: u64) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            part as f64 * 100.0 / self.calls as f64
        }
    }

    /// Every call made failed: the clients exit non-zero.
    pub fn all_failed(&self) -> bool {
        self.calls > 0 && self.ok == 0
    }

    /// The text form: a headline, then one row per pod and per error code
    /// (shares add up to 100%), then the connection facts.
    pub fn text(&self) -> String {
        let mut out = format!(
            "--- summary: {} calls, {} ok, {} errors\n",
            self.calls, self.ok, self.errors
        );
        if self.calls == 0 {
            return out;
        }
        let rows: Vec<(String, u64)> = self
            .pods
            .iter()
            .map(|(pod, n)| (pod.clone(), *n))
            .chain(
                self.errors_by_code
                    .iter()
                    .map(|(code, n)| (format!("error {code}"), *n)),
            )
            .collect();
        let width = rows
            .iter()
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0)
            .max(16);
        out.push_str(&format!(
            "  {:<width$}  {:>7}  {:>6}\n",
            "pod", "calls", "share"
        ));
        for (name, n) in &rows {
            out.push_str(&format!(
                "  {name:<width$}  {n:>7}  {:>5.1}%\n",
                self.share(*n)
            ));
        }
        match (self.connections(), self.max_connection_requests()) {
            (Some(connections), Some(max)) => out.push_str(&format!(
                "  connections: {connections} distinct, max requests on one: {max}\n"
            )),
            _ if self.ok == 0 => out.push_str("  connections: n/a (no answers)\n"),
            _ => out.push_str("  connections: n/a (the server does not report them)\n"),
        }
        out
    }

    /// The JSON form, one line: `{"summary":{...}}`.
    pub fn json_line(&self) -> String {
        #[derive(Serialize)]
        struct Body<'a> {
            calls: u64,
            ok: u64,
            errors: u64,
            pods: &'a BTreeMap<String, u64>,
            connections: Option<u64>,
            max_connection_requests: Option<u64>,
            errors_by_code: &'a BTreeMap<String, u64>,
        }
        #[derive(Serialize)]
        struct Line<'a> {
            summary: Body<'a>,
        }
        to_json_line(&Line {
            summary: Body {
                calls: self.calls,
                ok: self.ok,
                errors: self.errors,
                pods: &self.pods,
                connections: self.connections(),
                max_connection_requests: self.max_connection_requests(),
                errors_by_code: &self.errors_by_code,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::{Call, Tags};

    fn ok(n: u64, pod: &str, peer: &str, conn_requests: u64) -> Record {
        let mut call = Call::ok(pod);
        call.peer = Some(peer.into());
        call.conn_requests = Some(conn_requests);
        Record {
            n,
            started: std::time::UNIX_EPOCH,
            latency: Duration::ZERO,
            call,
        }
    }

    fn tagged(n: u64, pod: &str, id: &str, requests: &str, peer: &str) -> Record {
        let mut r = ok(n, pod, peer, n);
        r.call.tags = Tags {
            pod: Some(pod.into()),
            connection_id: Some(id.into()),
            connection_requests: Some(requests.into()),
        };
        r
    }

    fn err(n: u64, code: &str) -> Record {
        Record {
            n,
            started: std::time::UNIX_EPOCH,
            latency: Duration::ZERO,
            call: Call::error(code, "boom"),
        }
    }

    fn summary(records: &[Record]) -> Summary {
        let mut s = Summary::default();
        records.iter().for_each(|r| s.add(r));
        s
    }

    #[test]
    fn counts_calls_per_pod_and_errors_per_code() {
        let s = summary(&[
            ok(1, "a", "p:1", 1),
            ok(2, "b", "p:2", 1),
            ok(3, "a", "p:1", 2),
            err(4, "UNAVAILABLE"),
            err(5, "UNAVAILABLE"),
            err(6, "DEADLINE_EXCEEDED"),
        ]);
        assert_eq!((s.calls, s.ok, s.errors), (6, 3, 3));
        assert_eq!(s.pods, BTreeMap::from([("a".into(), 2), ("b".into(), 1)]));
        assert_eq!(
            s.errors_by_code,
            BTreeMap::from([("DEADLINE_EXCEEDED".into(), 1), ("UNAVAILABLE".into(), 2)])
        );
        assert!((s.share(2) - 33.333).abs() < 0.01);
        assert!(!s.all_failed());
    }

    #[test]
    fn connections_are_keyed_by_pod_and_peer_without_tags() {
        let s = summary(&[
            ok(1, "a", "p:1", 1),
            ok(2, "a", "p:1", 2),
            ok(3, "a", "p:2", 1),
        ]);
        assert_eq!(s.connections(), Some(2));
        assert_eq!(s.max_connection_requests(), Some(2));
    }

    #[test]
    fn tags_take_precedence_over_peer() {
        // Behind a sidecar the server sees one peer (the sidecar) for every
        // call; the filter's connection ids tell the client connections apart.
        let s = summary(&[
            tagged(1, "a", "7", "1", "sidecar:1"),
            tagged(2, "a", "8", "1", "sidecar:1"),
            tagged(3, "a", "8", "42", "sidecar:1"),
        ]);
        assert_eq!(s.connections(), Some(2));
        assert_eq!(s.max_connection_requests(), Some(42));
    }

    #[test]
    fn connections_per_pod_follow_the_filters_pod_else_the_answering_one() {
        let s = summary(&[
            tagged(1, "a", "7", "1", "sidecar:1"),
            tagged(2, "b", "8", "1", "sidecar:1"),
            tagged(3, "a", "9", "1", "sidecar:1"),
            ok(4, "c", "p:1", 1),
        ]);
        assert_eq!(
            s.connections_per_pod(),
            BTreeMap::from([("a".into(), 2), ("b".into(), 1), ("c".into(), 1)])
        );
    }

    #[test]
    fn all_tagged_needs_answers_and_the_filters_tags_on_each() {
        let both = summary(&[tagged(1, "a", "7", "1", "sidecar:1"), err(2, "UNAVAILABLE")]);
        assert!(both.all_tagged());
        let one_bare = summary(&[tagged(1, "a", "7", "1", "p:1"), ok(2, "a", "p:1", 2)]);
        assert!(!one_bare.all_tagged());
        assert!(!summary(&[err(1, "UNAVAILABLE")]).all_tagged());
    }

    #[test]
    fn max_requests_falls_back_to_calls_seen_when_nothing_is_reported() {
        let mut a = ok(1, "a", "p:1", 0);
        a.call.conn_requests = None;
        let b = a.clone();
        assert_eq!(summary(&[a, b]).max_connection_requests(), Some(2));
    }

    #[test]
    fn a_reused_port_is_a_new_connection_when_counts_restart() {
        // Envoy's upstream port came round again: same (pod, peer), but the
        // server says "first request" twice; out-of-order arrival is fine.
        let s = summary(&[
            ok(1, "a", "p:1", 1),
            ok(2, "a", "p:1", 1),
            ok(3, "a", "p:2", 2),
            ok(4, "a", "p:2", 1),
        ]);
        assert_eq!(s.connections(), Some(3));
        assert_eq!(s.max_connection_requests(), Some(2));
    }

    #[test]
    fn errors_without_connection_facts_leave_connections_unknown() {
        let s = summary(&[err(1, "UNAVAILABLE"), err(2, "UNAVAILABLE")]);
        assert_eq!(s.connections(), None);
        assert_eq!(s.max_connection_requests(), None);
        assert!(s.text().ends_with("  connections: n/a (no answers)\n"));
        assert!(s.all_failed());
        assert!(
            !Summary::default().all_failed(),
            "no calls is not a failure"
        );
    }

    /// Issue 13, section 5: the Go demo's server answers with the pod name
    /// only; "0 distinct" would be false.
    #[test]
    fn a_server_that_reports_no_connection_facts_gives_n_a_not_zero() {
        let bare = |n| Record {
            n,
            started: std::time::UNIX_EPOCH,
            latency: Duration::ZERO,
            call: Call::ok("server-0"),
        };
        let s = summary(&[bare(1), bare(2), err(3, "UNAVAILABLE")]);
        assert_eq!(s.connections(), None);
        assert!(
            s.text()
                .ends_with("  connections: n/a (the server does not report them)\n"),
            "{}",
            s.text()
        );
        let json: serde_json::Value = serde_json::from_str(&s.json_line()).unwrap();
        assert_eq!(json["summary"]["connections"], serde_json::Value::Null);
        assert_eq!(
            json["summary"]["max_connection_requests"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn text_table_is_aligned_and_shares_add_up() {
        let s = summary(&[
            ok(1, "server-0", "p:1", 1),
            ok(2, "server-1", "p:2", 1),
            ok(3, "server-0", "p:1", 2),
            err(4, "UNAVAILABLE"),
        ]);
        assert_eq!(
            s.text(),
            "--- summary: 4 calls, 3 ok, 1 errors\n\
             \x20 pod                  calls   share\n\
             \x20 server-0                 2   50.0%\n\
             \x20 server-1                 1   25.0%\n\
             \x20 error UNAVAILABLE        1   25.0%\n\
             \x20 connections: 2 distinct, max requests on one: 2\n"
        );
        assert_eq!(
            Summary::default().text(),
            "--- summary: 0 calls, 0 ok, 0 errors\n"
        );
    }

    #[test]
    fn json_summary_has_the_documented_shape() {
        let s = summary(&[
            ok(1, "server-0", "p:1", 1),
            ok(2, "server-0", "p:1", 2),
            err(3, "UNAVAILABLE"),
        ]);
        assert_eq!(
            s.json_line(),
            r#"{"summary":{"calls":3,"ok":2,"errors":1,"pods":{"server-0":2},"connections":1,"max_connection_requests":2,"errors_by_code":{"UNAVAILABLE":1}}}"#
        );
    }
}
