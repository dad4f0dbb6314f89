//! What a scenario saw: the client's own lines parsed back, summarised the
//! way a user reads `kubectl logs` (pods, connections, counts, errors).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// One `#N: ...` line of a client, parsed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Call {
    pub n: u64,
    /// The pod that answered; `None` for an error line.
    pub pod: Option<String>,
    /// `error: <CODE>` lines.
    pub error_code: Option<String>,
    /// What follows the code on an error line.
    pub error_message: Option<String>,
    /// The server's own per-connection count (`conn-requests=`).
    pub conn_requests: Option<u64>,
    pub upstream_pod: Option<String>,
    pub upstream_connection_id: Option<String>,
    pub upstream_connection_requests: Option<u64>,
}

/// Parse a client output line; `None` for anything that is not a call line
/// (the client's summary table, blank lines).
pub fn parse_line(line: &str) -> Option<Call> {
    let rest = line.strip_prefix('#')?;
    let (n, rest) = rest.split_once(": ")?;
    let n = n.parse().ok()?;
    let mut call = Call {
        n,
        pod: None,
        error_code: None,
        error_message: None,
        conn_requests: None,
        upstream_pod: None,
        upstream_connection_id: None,
        upstream_connection_requests: None,
    };
    let mut words = rest.split(' ');
    match words.next()? {
        "error:" => {
            let text = rest.strip_prefix("error: ").unwrap_or_default();
            let (code, message) = text.split_once(' ').unwrap_or((text, ""));
            call.error_code = Some(code.to_owned());
            call.error_message = Some(message.to_owned());
            words.next();
        }
        pod => call.pod = Some(pod.to_owned()),
    }
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "conn-requests" => call.conn_requests = value.parse().ok(),
            k if k == upstream_tagger::headers::UPSTREAM_POD => {
                call.upstream_pod = Some(value.to_owned())
            }
            k if k == upstream_tagger::headers::UPSTREAM_CONNECTION_ID => {
                call.upstream_connection_id = Some(value.to_owned())
            }
            k if k == upstream_tagger::headers::UPSTREAM_CONNECTION_REQUESTS => {
                call.upstream_connection_requests = value.parse().ok()
            }
            _ => {}
        }
    }
    Some(call)
}

/// The summary table of one scenario.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub calls: u64,
    pub ok: u64,
    pub errors: u64,
    pub calls_per_pod: BTreeMap<String, u64>,
    /// Distinct connections: by the filter's tags (pod, connection id) when
    /// present — the connection as the server sidecar saw it — else the calls
    /// the server saw as the first on their connection (`conn-requests=1`).
    pub connections: usize,
    /// Connections per pod, by the same key.
    pub connections_per_pod: BTreeMap<String, usize>,
    /// Highest request index seen on one connection (filter tag, else the
    /// server's own count).
    pub max_requests_per_connection: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    /// Every ok call carried the filter's tags.
    pub all_tagged: bool,
}

impl Summary {
    pub fn of(calls: &[Call]) -> Self {
        let mut s = Summary {
            all_tagged: true,
            ..Summary::default()
        };
        let mut connections: BTreeSet<(String, String)> = BTreeSet::new();
        for call in calls {
            s.calls += 1;
            match (&call.pod, &call.error_code) {
                (Some(pod), _) => {
                    s.ok += 1;
                    *s.calls_per_pod.entry(pod.clone()).or_default() += 1;
                    match (&call.upstream_pod, &call.upstream_connection_id) {
                        (Some(up), Some(id)) => {
                            connections.insert((up.clone(), id.clone()));
                        }
                        _ => {
                            s.all_tagged = false;
                            if call.conn_requests == Some(1) {
                                // Untagged: a fresh connection is one the server counts from 1.
                                connections.insert((pod.clone(), format!("#{}", call.n)));
                            }
                        }
                    }
                    let index = call.upstream_connection_requests.or(call.conn_requests);
                    s.max_requests_per_connection =
                        s.max_requests_per_connection.max(index.unwrap_or(0));
                }
                (None, code) => {
                    s.errors += 1;
                    let code = code.clone().unwrap_or_else(|| "UNKNOWN".into());
                    *s.errors_by_code.entry(code).or_default() += 1;
                }
            }
        }
        if s.ok == 0 {
            s.all_tagged = false;
        }
        s.connections = connections.len();
        for (pod, _) in &connections {
            *s.connections_per_pod.entry(pod.clone()).or_default() += 1;
        }
        s
    }

    /// The table printed under each scenario.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "  {:<28} {:>6} {:>7} {:>12}\n",
            "pod", "calls", "share", "connections"
        ));
        for (pod, calls) in &self.calls_per_pod {
            let share = 100.0 * *calls as f64 / self.calls.max(1) as f64;
            let conns = self
                .connections_per_pod
                .get(pod)
                .map_or("-".to_owned(), |c| c.to_string());
            out.push_str(&format!(
                "  {pod:<28} {calls:>6} {share:>6.1}% {conns:>12}\n"
            ));
        }
        let errors = if self.errors_by_code.is_empty() {
            "0".to_owned()
        } else {
            self.errors_by_code
                .iter()
                .map(|(code, n)| format!("{code}={n}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        out.push_str(&format!(
            "  pods reached: {}   calls: {}   distinct connections: {}   max requests/connection: {}   errors: {errors}\n",
            self.calls_per_pod.len(),
            self.calls,
            self.connections,
            self.max_requests_per_connection,
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_lines_parse_back() {
        let ok = parse_line("#3: server-0 conn-requests=7 x-upstream-pod=server-0 x-upstream-connection-id=12 x-upstream-connection-requests=2").unwrap();
        assert_eq!(ok.n, 3);
        assert_eq!(ok.pod.as_deref(), Some("server-0"));
        assert_eq!(ok.conn_requests, Some(7));
        assert_eq!(ok.upstream_connection_id.as_deref(), Some("12"));
        assert_eq!(ok.upstream_connection_requests, Some(2));

        let err = parse_line("#4: error: UNAVAILABLE upstream connect error x=y").unwrap();
        assert_eq!(err.error_code.as_deref(), Some("UNAVAILABLE"));
        assert_eq!(
            err.error_message.as_deref(),
            Some("upstream connect error x=y")
        );
        assert_eq!(err.pod, None);

        assert_eq!(parse_line("  pod   calls"), None);
        assert_eq!(parse_line("#x: nope"), None);
    }

    #[test]
    fn summary_counts_pods_connections_and_errors() {
        let lines = [
            "#1: a x-upstream-pod=a x-upstream-connection-id=1 x-upstream-connection-requests=1",
            "#2: b x-upstream-pod=b x-upstream-connection-id=2 x-upstream-connection-requests=1",
            "#3: a x-upstream-pod=a x-upstream-connection-id=1 x-upstream-connection-requests=2",
            "#4: error: UNAVAILABLE overflow",
        ];
        let calls: Vec<_> = lines.iter().filter_map(|l| parse_line(l)).collect();
        let s = Summary::of(&calls);
        assert_eq!((s.calls, s.ok, s.errors), (4, 3, 1));
        assert_eq!(s.calls_per_pod["a"], 2);
        assert_eq!(s.connections, 2);
        assert_eq!(s.max_requests_per_connection, 2);
        assert_eq!(s.errors_by_code["UNAVAILABLE"], 1);
        assert!(s.all_tagged);
        assert!(s.table().contains("pods reached: 2"));
    }
}
