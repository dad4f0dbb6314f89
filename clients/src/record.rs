//! One call's outcome and its two printed forms: the `#N: <pod> ...` line
//! (what `kubectl logs` shows) and a JSON object for scripts.

use std::time::Duration;

use hyper::HeaderMap;
use serde::Serialize;
use serde_json::Value;
use upstream_tagger::headers::{
    UPSTREAM_CONNECTION_ID, UPSTREAM_CONNECTION_REQUESTS, UPSTREAM_POD,
};

/// The upstream-tagger filter's response headers, as received (raw strings:
/// they are printed as they came, a malformed one is itself a finding).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    pub pod: Option<String>,
    pub connection_id: Option<String>,
    pub connection_requests: Option<String>,
}

impl Tags {
    /// Reads the tags from response headers (gRPC: initial metadata or the
    /// error status' metadata). A header that came more than once is joined
    /// with `,` as HTTP does, so a duplicated tag shows instead of hiding.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self {
            pod: header_value(headers, UPSTREAM_POD),
            connection_id: header_value(headers, UPSTREAM_CONNECTION_ID),
            connection_requests: header_value(headers, UPSTREAM_CONNECTION_REQUESTS),
        }
    }
}

/// All values of `name`, comma-joined, lossily decoded; `None` when absent.
pub fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// A failed call: a canonical code (`UNAVAILABLE`, `HTTP_503`, `CONNECT`, ...)
/// and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub code: String,
    pub message: String,
}

/// What a caller learned from one call, before it is numbered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The pod name the server answered with, or why there was no answer.
    pub outcome: Result<String, CallError>,
    /// The caller's address as the server saw it (gRPC `response.peer`, HTTP
    /// JSON `peer`), else the client's local socket address.
    pub peer: Option<String>,
    /// The server's count of requests on the connection this call came on.
    pub conn_requests: Option<u64>,
    pub tags: Tags,
}

impl Call {
    pub fn ok(pod: impl Into<String>) -> Self {
        Self {
            outcome: Ok(pod.into()),
            peer: None,
            conn_requests: None,
            tags: Tags::default(),
        }
    }

    pub fn error(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            outcome: Err(CallError {
                code: code.into(),
                message: message.into(),
            }),
            peer: None,
            conn_requests: None,
            tags: Tags::default(),
        }
    }

    pub fn with_tags(mut self, tags: Tags) -> Self {
        self.tags = tags;
        self
    }
}

/// A numbered call, as printed and summarised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub n: u64,
    pub latency: Duration,
    pub call: Call,
}

impl Record {
    /// `#N: <pod> conn-requests=.. x-upstream-pod=.. x-upstream-connection-id=..
    /// x-upstream-connection-requests=..`, or `#N: error: <CODE> <message> ...`;
    /// facts only when known, always in this order.
    pub fn text_line(&self) -> String {
        let call = &self.call;
        let mut line = match &call.outcome {
            Ok(pod) => format!("#{}: {}", self.n, one_line(pod)),
            Err(e) if e.message.trim().is_empty() => format!("#{}: error: {}", self.n, e.code),
            Err(e) => format!("#{}: error: {} {}", self.n, e.code, one_line(&e.message)),
        };
        if let Some(count) = call.conn_requests {
            line.push_str(&format!(" conn-requests={count}"));
        }
        for (name, value) in [
            (UPSTREAM_POD, &call.tags.pod),
            (UPSTREAM_CONNECTION_ID, &call.tags.connection_id),
            (UPSTREAM_CONNECTION_REQUESTS, &call.tags.connection_requests),
        ] {
            if let Some(value) = value {
                line.push_str(&format!(" {name}={}", one_line(value)));
            }
        }
        line
    }

    /// One JSON object (fields in the documented order); absent facts are
    /// omitted.
    pub fn json_line(&self) -> String {
        let call = &self.call;
        let (pod, code, message) = match &call.outcome {
            Ok(pod) => (Some(pod.as_str()), None, None),
            Err(e) => (None, Some(e.code.as_str()), Some(e.message.as_str())),
        };
        let line = JsonRecord {
            n: self.n,
            ok: call.outcome.is_ok(),
            pod,
            code,
            message,
            peer: call.peer.as_deref(),
            conn_requests: call.conn_requests,
            upstream_pod: call.tags.pod.as_deref(),
            upstream_connection_id: call.tags.connection_id.as_deref(),
            // A number when it is one; the raw text otherwise, so scripts see it.
            upstream_connection_requests: call.tags.connection_requests.as_deref().map(|raw| {
                raw.parse::<u64>()
                    .map_or_else(|_| Value::from(raw), Value::from)
            }),
            latency_us: u64::try_from(self.latency.as_micros()).unwrap_or(u64::MAX),
        };
        to_json_line(&line)
    }
}

#[derive(Serialize)]
struct JsonRecord<'a> {
    n: u64,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_connection_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_connection_requests: Option<Value>,
    latency_us: u64,
}

/// Serialises plain data (strings, numbers, maps with string keys), which
/// cannot fail; should it ever, the line says so instead of vanishing.
pub(crate) fn to_json_line(value: &impl Serialize) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|e| format!(r#"{{"error":"cannot encode as JSON: {e}"}}"#))
}

/// `head: cause: cause ...` from an error chain, without the noise wrapper
/// layers add: generic "transport error" links and causes already said.
pub fn error_text(head: &str, source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !head.trim().is_empty() {
        parts.push(head.trim().to_owned());
    }
    let mut next = source;
    while let Some(cause) = next {
        let text = cause.to_string();
        let said = parts.iter().any(|p| p.contains(text.as_str()));
        if !(text.is_empty() || text == "transport error" || said) {
            parts.push(text);
        }
        next = cause.source();
    }
    one_line(&parts.join(": "))
}

/// Keeps a printed value on its line: control characters (a newline in an
/// error message, say) become spaces, runs of whitespace collapse.
pub fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64, call: Call) -> Record {
        Record {
            n,
            latency: Duration::from_micros(850),
            call,
        }
    }

    fn tagged() -> Tags {
        Tags {
            pod: Some("server-0".into()),
            connection_id: Some("12".into()),
            connection_requests: Some("3".into()),
        }
    }

    #[test]
    fn bare_pod_line_is_the_go_demos() {
        assert_eq!(record(1, Call::ok("server-0")).text_line(), "#1: server-0");
    }

    #[test]
    fn facts_follow_in_fixed_order() {
        let mut call = Call::ok("server-0").with_tags(tagged());
        call.conn_requests = Some(1);
        call.peer = Some("127.0.0.1:5555".into());
        assert_eq!(
            record(7, call).text_line(),
            "#7: server-0 conn-requests=1 x-upstream-pod=server-0 \
             x-upstream-connection-id=12 x-upstream-connection-requests=3"
        );
    }

    #[test]
    fn only_present_tags_are_printed() {
        let tags = Tags {
            connection_id: Some("9".into()),
            ..Tags::default()
        };
        assert_eq!(
            record(2, Call::ok("p").with_tags(tags)).text_line(),
            "#2: p x-upstream-connection-id=9"
        );
    }

    #[test]
    fn error_line_has_code_message_then_tags() {
        let call =
            Call::error("UNAVAILABLE", "upstream connect error\nor disconnect").with_tags(tagged());
        assert_eq!(
            record(3, call).text_line(),
            "#3: error: UNAVAILABLE upstream connect error or disconnect x-upstream-pod=server-0 \
             x-upstream-connection-id=12 x-upstream-connection-requests=3"
        );
        assert_eq!(
            record(4, Call::error("HTTP_503", " ")).text_line(),
            "#4: error: HTTP_503"
        );
    }

    #[test]
    fn json_ok_matches_the_documented_shape() {
        let mut call = Call::ok("server-0").with_tags(tagged());
        call.conn_requests = Some(1);
        call.peer = Some("127.0.0.1:5555".into());
        assert_eq!(
            record(1, call).json_line(),
            r#"{"n":1,"ok":true,"pod":"server-0","peer":"127.0.0.1:5555","conn_requests":1,"upstream_pod":"server-0","upstream_connection_id":"12","upstream_connection_requests":3,"latency_us":850}"#
        );
    }

    #[test]
    fn json_error_omits_absent_facts() {
        let call = Call::error("UNAVAILABLE", "refused");
        assert_eq!(
            record(2, call).json_line(),
            r#"{"n":2,"ok":false,"code":"UNAVAILABLE","message":"refused","latency_us":850}"#
        );
    }

    #[test]
    fn json_keeps_a_non_numeric_count_as_text() {
        let tags = Tags {
            connection_requests: Some("3,1".into()),
            ..Tags::default()
        };
        let v: Value =
            serde_json::from_str(&record(1, Call::ok("p").with_tags(tags)).json_line()).unwrap();
        assert_eq!(v["upstream_connection_requests"], Value::from("3,1"));
    }

    #[test]
    fn error_text_drops_wrapper_noise() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let chain = E(
            "transport error",
            Some(Box::new(E(
                "tcp connect error",
                Some(Box::new(E(
                    "tcp connect error",
                    Some(Box::new(E("Connection refused", None))),
                ))),
            ))),
        );
        assert_eq!(
            error_text("connect", Some(&chain)),
            "connect: tcp connect error: Connection refused"
        );
        assert_eq!(error_text("", None), "");
    }

    #[test]
    fn repeated_headers_are_joined() {
        let mut h = HeaderMap::new();
        h.append(UPSTREAM_POD, "a".parse().unwrap());
        h.append(UPSTREAM_POD, "b".parse().unwrap());
        h.insert(UPSTREAM_CONNECTION_ID, "5".parse().unwrap());
        let tags = Tags::from_headers(&h);
        assert_eq!(tags.pod.as_deref(), Some("a,b"));
        assert_eq!(tags.connection_id.as_deref(), Some("5"));
        assert_eq!(tags.connection_requests, None);
    }
}
