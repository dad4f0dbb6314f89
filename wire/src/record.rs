//! One call's outcome and its two printed forms: the `#N: <pod> ...` line
//! (what `kubectl logs` shows) and a JSON object for scripts, which reads
//! back into the same [`Record`] (the mesh runs the clients with `--json`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::headers::{UPSTREAM_CONNECTION_ID, UPSTREAM_CONNECTION_REQUESTS, UPSTREAM_POD};

/// The upstream-tagger filter's response headers, as received (raw strings:
/// they are printed as they came, a malformed one is itself a finding).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    pub pod: Option<String>,
    pub connection_id: Option<String>,
    pub connection_requests: Option<String>,
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

    /// The filter's per-connection request count, when it is a number.
    pub fn upstream_connection_requests(&self) -> Option<u64> {
        self.tags.connection_requests.as_deref()?.parse().ok()
    }
}

/// A numbered call, as printed and summarised. Its JSON form (`Serialize`,
/// `Deserialize`) is the documented `--json` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "JsonRecord", try_from = "JsonRecord")]
pub struct Record {
    pub n: u64,
    /// When the call was sent, by the wall clock: other processes on the
    /// machine (the mesh and its events) can line it up with theirs.
    pub started: SystemTime,
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
        to_json_line(self)
    }

    /// Reads a line [`Record::json_line`] wrote; anything else (another JSON
    /// object, a record missing its pod or code, an unknown field) is an
    /// error that says what is wrong.
    pub fn from_json_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// The JSON form of a [`Record`], field by field.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord {
    n: u64,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_connection_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_connection_requests: Option<Count>,
    started_unix_us: u64,
    latency_us: u64,
}

/// A number when it is one; the raw text otherwise, so scripts see it.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Count {
    Number(u64),
    Text(String),
}

impl From<Record> for JsonRecord {
    fn from(record: Record) -> Self {
        let Record {
            n,
            started,
            latency,
            call,
        } = record;
        let ok = call.outcome.is_ok();
        let (pod, code, message) = match call.outcome {
            Ok(pod) => (Some(pod), None, None),
            Err(e) => (None, Some(e.code), Some(e.message)),
        };
        JsonRecord {
            n,
            ok,
            pod,
            code,
            message,
            peer: call.peer,
            conn_requests: call.conn_requests,
            upstream_pod: call.tags.pod,
            upstream_connection_id: call.tags.connection_id,
            upstream_connection_requests: call
                .tags
                .connection_requests
                .map(|raw| raw.parse().map_or(Count::Text(raw), Count::Number)),
            started_unix_us: micros(started.duration_since(UNIX_EPOCH).unwrap_or_default()),
            latency_us: micros(latency),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl TryFrom<JsonRecord> for Record {
    type Error = String;

    fn try_from(json: JsonRecord) -> Result<Self, String> {
        let outcome = match (json.ok, json.pod, json.code) {
            (true, Some(pod), None) if json.message.is_none() => Ok(pod),
            (true, None, _) => return Err("an ok record without a pod".into()),
            (true, ..) => return Err("an ok record with an error code or message".into()),
            (false, None, Some(code)) => Err(CallError {
                code,
                message: json.message.unwrap_or_default(),
            }),
            (false, _, None) => return Err("an error record without a code".into()),
            (false, Some(_), _) => return Err("an error record with a pod".into()),
        };
        Ok(Record {
            n: json.n,
            started: UNIX_EPOCH + Duration::from_micros(json.started_unix_us),
            latency: Duration::from_micros(json.latency_us),
            call: Call {
                outcome,
                peer: json.peer,
                conn_requests: json.conn_requests,
                tags: Tags {
                    pod: json.upstream_pod,
                    connection_id: json.upstream_connection_id,
                    connection_requests: json.upstream_connection_requests.map(|c| match c {
                        Count::Number(n) => n.to_string(),
                        Count::Text(text) => text,
                    }),
                },
            },
        })
    }
}

/// Serialises plain data (strings, numbers, maps with string keys), which
/// cannot fail; should it ever, the line says so instead of vanishing.
pub(crate) fn to_json_line(value: &impl Serialize) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|e| format!(r#"{{"error":"cannot encode as JSON: {e}"}}"#))
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
    use serde_json::Value;

    use super::*;

    fn record(n: u64, call: Call) -> Record {
        Record {
            n,
            // 2026-11-30T22:00:00.000001Z, whole microseconds as in the JSON.
            started: UNIX_EPOCH + Duration::from_micros(1_796_076_000_000_001),
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
            r#"{"n":1,"ok":true,"pod":"server-0","peer":"127.0.0.1:5555","conn_requests":1,"upstream_pod":"server-0","upstream_connection_id":"12","upstream_connection_requests":3,"started_unix_us":1796076000000001,"latency_us":850}"#
        );
    }

    #[test]
    fn json_error_omits_absent_facts() {
        let call = Call::error("UNAVAILABLE", "refused");
        assert_eq!(
            record(2, call).json_line(),
            r#"{"n":2,"ok":false,"code":"UNAVAILABLE","message":"refused","started_unix_us":1796076000000001,"latency_us":850}"#
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
    fn json_lines_read_back_into_the_same_record() {
        let mut ok = Call::ok("server-0").with_tags(tagged());
        ok.conn_requests = Some(7);
        ok.peer = Some("127.0.0.1:5555".into());
        let odd_count = Call::ok("p").with_tags(Tags {
            connection_requests: Some("3,1".into()),
            ..Tags::default()
        });
        for call in [
            ok,
            odd_count,
            Call::error("UNAVAILABLE", "upstream connect error x=y").with_tags(tagged()),
            Call::error("HTTP_503", ""),
        ] {
            let record = record(3, call);
            assert_eq!(Record::from_json_line(&record.json_line()).unwrap(), record);
        }
    }

    #[test]
    fn lines_that_are_not_records_are_refused_with_the_reason() {
        for (line, reason) in [
            (r#"{"summary":{"calls":1}}"#, "unknown field `summary`"),
            (
                r#"{"n":1,"ok":true,"started_unix_us":0,"latency_us":1}"#,
                "without a pod",
            ),
            (
                r#"{"n":1,"ok":false,"message":"m","started_unix_us":0,"latency_us":1}"#,
                "without a code",
            ),
            (
                r#"{"n":1,"ok":true,"pod":"p","code":"X","started_unix_us":0,"latency_us":1}"#,
                "with an error code",
            ),
            (
                r#"{"n":1,"ok":true,"pod":"p","latency_us":1}"#,
                "missing field `started_unix_us`",
            ),
            (
                r#"{"n":1,"ok":true,"pod":"p","started_unix_us":0}"#,
                "missing field `latency_us`",
            ),
            ("#1: server-0", "expected value"),
        ] {
            let error = Record::from_json_line(line).unwrap_err().to_string();
            assert!(error.contains(reason), "{line}: {error}");
        }
    }
}
