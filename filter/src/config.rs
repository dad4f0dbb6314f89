//! `pluginConfig` parsing and validation.
//!
//! Istio hands the WasmPlugin's `pluginConfig` to `on_configure` as compact
//! JSON (0 bytes when unset). Every problem is reported as one
//! [`ConfigError`] naming the offending field, because the only place a user
//! sees it is one line in the sidecar's log.
//!
//! Unknown fields, duplicates and wrong types are refused (the equivalent of
//! serde's `deny_unknown_fields`), with the field name in the message.

use std::fmt;

use crate::headers;
use crate::json::{self, Value};

/// Default for [`Config::max_tracked_connections`].
pub const DEFAULT_MAX_TRACKED_CONNECTIONS: u32 = 10_000;
/// Upper bound for [`Config::max_tracked_connections`]: 1M entries of 24
/// bytes per worker is already more than any sidecar should hold.
pub const MAX_TRACKED_CONNECTIONS_LIMIT: u32 = 1_000_000;
/// Default for [`Config::idle_timeout_seconds`]: Envoy's (and Istio's)
/// default HTTP idle timeout is 1h, so a connection still open after an idle
/// hour is rare, and its count is not reset under the user's feet.
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u32 = 3600;

/// The effective filter configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Explicit pod name; `None` = discover it (node metadata, then env).
    pub pod_name: Option<String>,
    /// Response header carrying the pod name.
    pub pod_header: String,
    /// Response header carrying the downstream connection id.
    pub connection_id_header: String,
    /// Response header carrying the 1-based request index on the connection.
    pub connection_requests_header: String,
    /// Tag every HTTP response, not only gRPC ones.
    pub tag_all_http: bool,
    /// Cap on connections tracked per VM (per Envoy worker).
    pub max_tracked_connections: u32,
    /// Forget a connection after this many seconds without requests;
    /// 0 disables idle eviction (the cap still bounds memory).
    pub idle_timeout_seconds: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pod_name: None,
            pod_header: headers::UPSTREAM_POD.to_owned(),
            connection_id_header: headers::UPSTREAM_CONNECTION_ID.to_owned(),
            connection_requests_header: headers::UPSTREAM_CONNECTION_REQUESTS.to_owned(),
            tag_all_http: false,
            max_tracked_connections: DEFAULT_MAX_TRACKED_CONNECTIONS,
            idle_timeout_seconds: DEFAULT_IDLE_TIMEOUT_SECONDS,
        }
    }
}

/// Every accepted JSON field, in documentation order.
pub const FIELDS: &[&str] = &[
    "pod_name",
    "pod_header",
    "connection_id_header",
    "connection_requests_header",
    "tag_all_http",
    "max_tracked_connections",
    "idle_timeout_seconds",
];

/// [`FIELDS`] for error messages (a const: `join` costs code in the module).
const KNOWN_FIELDS: &str = "pod_name, pod_header, connection_id_header, \
     connection_requests_header, tag_all_http, max_tracked_connections, idle_timeout_seconds";

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The JSON field at fault; `None` when the document itself is bad.
    pub field: Option<String>,
    /// What is wrong, for a human.
    pub message: String,
}

impl ConfigError {
    fn field(field: &str, message: impl Into<String>) -> Self {
        ConfigError {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }
}

/// Longest field name an error repeats.
const MAX_SHOWN_NAME: usize = 64;

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            // An unknown name is the user's text: escaped and cut, so the
            // error stays one readable log line whatever it holds.
            // (ASCII-only escaping by hand: `escape_debug` pulls Unicode
            // tables into the module, 3 KB for an error path.)
            Some(field) => {
                f.write_str("field `")?;
                for (i, c) in field.chars().enumerate() {
                    if i == MAX_SHOWN_NAME {
                        f.write_str("…")?;
                        break;
                    }
                    if c.is_ascii_graphic() && c != '`' && c != '\\' {
                        write!(f, "{c}")?;
                    } else {
                        write!(f, "\\u{{{:x}}}", c as u32)?;
                    }
                }
                write!(f, "`: {}", self.message)
            }
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses and validates `pluginConfig` bytes. Empty (or blank) input
    /// means "all defaults", as Istio sends 0 bytes for an unset config.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Config::default());
        }
        let members = json::parse_object(bytes).map_err(|err| ConfigError {
            field: None,
            message: err.to_string(),
        })?;
        let mut config = Config::default();
        let mut seen = [false; FIELDS.len()];
        for (key, value) in members {
            let Some(index) = FIELDS.iter().position(|f| *f == key) else {
                return Err(ConfigError::field(
                    &key,
                    format!("unknown field (known: {KNOWN_FIELDS})"),
                ));
            };
            let field = FIELDS[index];
            if std::mem::replace(&mut seen[index], true) {
                return Err(ConfigError::field(field, "appears twice"));
            }
            let wrong = |expected: &str| {
                ConfigError::field(field, format!("expected {expected}, got {}", value.kind()))
            };
            match (field, &value) {
                ("pod_name", Value::Null) => config.pod_name = None,
                ("pod_name", Value::String(s)) => config.pod_name = Some(s.clone()),
                ("pod_name", _) => return Err(wrong("a string")),
                ("tag_all_http", Value::Bool(b)) => config.tag_all_http = *b,
                ("tag_all_http", _) => return Err(wrong("true or false")),
                ("max_tracked_connections" | "idle_timeout_seconds", Value::Number(n)) => {
                    let n = json::whole_u64(n)
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| {
                            ConfigError::field(
                                field,
                                format!(
                                    "expected a whole number between 0 and {}, got {n}",
                                    u32::MAX
                                ),
                            )
                        })?;
                    if field == "max_tracked_connections" {
                        config.max_tracked_connections = n;
                    } else {
                        config.idle_timeout_seconds = n;
                    }
                }
                ("max_tracked_connections" | "idle_timeout_seconds", _) => {
                    return Err(wrong("a whole number"));
                }
                (_, Value::String(s)) => {
                    let slot = match field {
                        "pod_header" => &mut config.pod_header,
                        "connection_id_header" => &mut config.connection_id_header,
                        _ => &mut config.connection_requests_header,
                    };
                    slot.clone_from(s);
                }
                _ => return Err(wrong("a string")),
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the values the JSON types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(pod) = &self.pod_name {
            check_pod_name(pod).map_err(|why| ConfigError::field("pod_name", why))?;
        }
        let header_fields = [
            ("pod_header", &self.pod_header),
            ("connection_id_header", &self.connection_id_header),
            (
                "connection_requests_header",
                &self.connection_requests_header,
            ),
        ];
        for (i, (field, name)) in header_fields.iter().enumerate() {
            check_header_name(name).map_err(|why| ConfigError::field(field, why))?;
            if let Some((other, _)) = header_fields[..i].iter().find(|(_, n)| n == name) {
                return Err(ConfigError::field(
                    field,
                    format!("{name} is already used by `{other}`"),
                ));
            }
        }
        if self.max_tracked_connections == 0
            || self.max_tracked_connections > MAX_TRACKED_CONNECTIONS_LIMIT
        {
            return Err(ConfigError::field(
                "max_tracked_connections",
                format!(
                    "must be between 1 and {MAX_TRACKED_CONNECTIONS_LIMIT}, got {}",
                    self.max_tracked_connections
                ),
            ));
        }
        Ok(())
    }
}

/// A header name the filter may set: an HTTP token, lowercase (HTTP/2 forbids
/// uppercase), not reserved, and not a gRPC binary header (`-bin` values must
/// be base64, ours are plain text).
pub fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if let Some(bad) = name.chars().find(|c| !is_lower_token_char(*c)) {
        // Never echo control characters into the log; name them by code.
        let shown = if bad.is_ascii_graphic() || bad == ' ' {
            format!("'{bad}'")
        } else {
            format!("U+{:04X}", u32::from(bad))
        };
        return Err(format!(
            "not a valid header name (character {shown}; use lowercase letters, digits and -)"
        ));
    }
    if crate::headers::is_transport_owned(name) {
        return Err(format!("{name} is reserved for HTTP/gRPC framing"));
    }
    if name.ends_with("-bin") {
        return Err(format!(
            "{name} ends with -bin, which gRPC reserves for base64 binary metadata"
        ));
    }
    Ok(())
}

fn is_lower_token_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Longest pod name accepted (a Kubernetes object name is at most 253).
pub const MAX_POD_NAME_LEN: usize = 253;

/// A value usable as the pod header: non-empty, printable ASCII, no spaces.
pub fn check_pod_name(pod: &str) -> Result<(), String> {
    if pod.is_empty() {
        return Err("must not be empty (leave it out to use the sidecar's pod name)".to_owned());
    }
    if pod.len() > MAX_POD_NAME_LEN {
        return Err(format!(
            "is {} bytes long, at most {MAX_POD_NAME_LEN} allowed",
            pod.len()
        ));
    }
    if let Some(at) = pod.bytes().position(|b| !b.is_ascii_graphic()) {
        // The value itself is not echoed: it may hold control characters.
        return Err(format!(
            "not a valid header value: byte {at} is a space, control or non-ASCII character \
             (printable ASCII without spaces only)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> ConfigError {
        match Config::parse(json.as_bytes()) {
            Ok(config) => panic!("{json} was accepted as {config:?}"),
            Err(err) => err,
        }
    }

    /// Hostile or mangled pluginConfig never panics (a panic in
    /// `on_configure` kills the VM): 200,000 deterministic mutations of a
    /// full config (byte flips, truncations, splices of JSON punctuation)
    /// each give a config or one error line naming what is wrong.
    #[test]
    fn mangled_configs_give_an_error_never_a_panic() {
        let seed_config = br#"{"pod_name":"server-0","pod_header":"x-upstream-pod","connection_id_header":"x-a","connection_requests_header":"x-b","tag_all_http":true,"max_tracked_connections":16.0,"idle_timeout_seconds":0}"#;
        const SPLICES: [&[u8]; 12] = [
            b"{", b"}", b"[", b"]", b"\"", b"\\", b":", b",", b"1e999", b"-0", b"\\u00", b"\xff",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            // xorshift64*: deterministic, so a failure reproduces.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let (mut accepted, mut refused) = (0u32, 0u32);
        for _ in 0..200_000 {
            let mut bytes = seed_config.to_vec();
            for _ in 0..=next() % 4 {
                let at = (next() as usize) % (bytes.len() + 1);
                match next() % 4 {
                    0 if at < bytes.len() => bytes[at] = next() as u8,
                    1 => bytes.truncate(at),
                    2 => {
                        let splice = SPLICES[(next() as usize) % SPLICES.len()];
                        bytes.splice(at..at, splice.iter().copied());
                    }
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            match Config::parse(&bytes) {
                Ok(_) => accepted += 1,
                Err(e) => {
                    let line = e.to_string();
                    assert!(!line.is_empty() && !line.contains('\n'), "{line:?}");
                    refused += 1;
                }
            }
        }
        // Both paths were exercised, not just the first syntax check.
        assert!(
            accepted > 100 && refused > 100_000,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn empty_or_blank_config_means_defaults() {
        for json in ["", " \n\t", "{}", " { } "] {
            assert_eq!(
                Config::parse(json.as_bytes()),
                Ok(Config::default()),
                "{json:?}"
            );
        }
    }

    #[test]
    fn defaults_use_the_shared_header_constants() {
        let config = Config::default();
        assert_eq!(config.pod_header, headers::UPSTREAM_POD);
        assert_eq!(config.connection_id_header, headers::UPSTREAM_CONNECTION_ID);
        assert_eq!(
            config.connection_requests_header,
            headers::UPSTREAM_CONNECTION_REQUESTS
        );
        assert!(!config.tag_all_http);
        assert_eq!(config.max_tracked_connections, 10_000);
        assert_eq!(config.idle_timeout_seconds, 3600);
        assert_eq!(config.pod_name, None);
    }

    #[test]
    fn every_field_is_read() {
        let json = r#"{"pod_name":"server-7d9f-abcde","pod_header":"x-pod",
            "connection_id_header":"x-conn","connection_requests_header":"x-n",
            "tag_all_http":true,"max_tracked_connections":16,"idle_timeout_seconds":0}"#;
        let config = Config::parse(json.as_bytes()).expect("valid");
        assert_eq!(
            config,
            Config {
                pod_name: Some("server-7d9f-abcde".into()),
                pod_header: "x-pod".into(),
                connection_id_header: "x-conn".into(),
                connection_requests_header: "x-n".into(),
                tag_all_http: true,
                max_tracked_connections: 16,
                idle_timeout_seconds: 0,
            }
        );
    }

    #[test]
    fn numbers_may_arrive_as_whole_doubles() {
        // What a protobuf Struct round trip can produce.
        let config =
            Config::parse(br#"{"max_tracked_connections":16.0,"idle_timeout_seconds":6e1}"#)
                .expect("valid");
        assert_eq!(config.max_tracked_connections, 16);
        assert_eq!(config.idle_timeout_seconds, 60);
    }

    #[test]
    fn null_pod_name_means_discover() {
        let config = Config::parse(br#"{"pod_name":null}"#).expect("valid");
        assert_eq!(config.pod_name, None);
    }

    #[test]
    fn bad_configs_name_the_field() {
        // (json, field, fragment of the message)
        let cases: &[(&str, Option<&str>, &str)] = &[
            (r#"{"pod_nmae":"x"}"#, Some("pod_nmae"), "unknown field"),
            (
                r#"{"tag_all_http":"yes"}"#,
                Some("tag_all_http"),
                "expected true or false, got a string",
            ),
            (
                r#"{"tag_all_http":1}"#,
                Some("tag_all_http"),
                "got a number",
            ),
            (
                r#"{"pod_header":5}"#,
                Some("pod_header"),
                "expected a string, got a number",
            ),
            (
                r#"{"pod_header":""}"#,
                Some("pod_header"),
                "must not be empty",
            ),
            (
                r#"{"pod_header":"X-Pod"}"#,
                Some("pod_header"),
                "not a valid header name",
            ),
            (
                r#"{"pod_header":"x pod"}"#,
                Some("pod_header"),
                "not a valid header name",
            ),
            (
                r#"{"pod_header":":authority"}"#,
                Some("pod_header"),
                "not a valid header name",
            ),
            (
                r#"{"connection_id_header":"grpc-status"}"#,
                Some("connection_id_header"),
                "reserved",
            ),
            (
                r#"{"pod_header":"grpc-pod"}"#,
                Some("pod_header"),
                "reserved",
            ),
            (
                r#"{"connection_requests_header":"host"}"#,
                Some("connection_requests_header"),
                "reserved",
            ),
            (
                r#"{"connection_id_header":"x-id-bin"}"#,
                Some("connection_id_header"),
                "-bin",
            ),
            (
                r#"{"connection_requests_header":"x-upstream-pod"}"#,
                Some("connection_requests_header"),
                "already used by `pod_header`",
            ),
            (
                r#"{"max_tracked_connections":0}"#,
                Some("max_tracked_connections"),
                "between 1 and",
            ),
            (
                r#"{"max_tracked_connections":2000000}"#,
                Some("max_tracked_connections"),
                "between 1 and",
            ),
            (
                r#"{"max_tracked_connections":-1}"#,
                Some("max_tracked_connections"),
                "got -1",
            ),
            (
                r#"{"max_tracked_connections":1.5}"#,
                Some("max_tracked_connections"),
                "whole number",
            ),
            (
                r#"{"max_tracked_connections":"10"}"#,
                Some("max_tracked_connections"),
                "got a string",
            ),
            (
                r#"{"idle_timeout_seconds":5000000000}"#,
                Some("idle_timeout_seconds"),
                "between 0 and 4294967295",
            ),
            (r#"{"pod_name":""}"#, Some("pod_name"), "must not be empty"),
            (
                r#"{"pod_name":"a b"}"#,
                Some("pod_name"),
                "not a valid header value",
            ),
            (
                r#"{"pod_name":"a\nb"}"#,
                Some("pod_name"),
                "not a valid header value",
            ),
            (
                r#"{"tag_all_http":true,"tag_all_http":false}"#,
                Some("tag_all_http"),
                "appears twice",
            ),
            (r#"[]"#, None, "invalid JSON at byte 0: expected an object"),
            (
                r#"{"pod_header":{"a":1}}"#,
                Some("pod_header"),
                "got an object",
            ),
            (r#"{"tag_all_http":true"#, None, "invalid JSON at byte 20"),
            (r#"{} {}"#, None, "expected end of input"),
        ];
        for (json, field, fragment) in cases {
            let err = err(json);
            assert_eq!(err.field.as_deref(), *field, "{json}: {err}");
            assert!(
                err.to_string().contains(fragment),
                "{json}: {err:?} should mention {fragment:?}"
            );
            if let Some(field) = field {
                assert!(
                    err.to_string().starts_with(&format!("field `{field}`: ")),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn bad_characters_are_named_not_echoed() {
        let e = err(r#"{"pod_header":"x\u0007y"}"#);
        assert!(e.message.contains("U+0007"), "{e}");
        assert!(!e.message.contains('\u{7}'), "{e}");
        let e = err(r#"{"pod_header":"X"}"#);
        assert!(e.message.contains("'X'"), "{e}");
        let e = err(r#"{"pod_name":"ab\ncd"}"#);
        assert!(e.message.contains("byte 2"), "{e}");
        assert!(!e.message.contains('\n'), "{e}");
    }

    #[test]
    fn unknown_field_lists_the_known_ones() {
        assert_eq!(KNOWN_FIELDS, FIELDS.join(", "));
        let e = err(r#"{"podname":"x"}"#);
        assert_eq!(
            e.to_string(),
            format!("field `podname`: unknown field (known: {KNOWN_FIELDS})")
        );
    }

    #[test]
    fn unknown_names_are_escaped_and_cut_to_one_line() {
        let e = err("{\"a\\nb\\u0007\":1}");
        assert!(
            e.to_string()
                .starts_with("field `a\\u{a}b\\u{7}`: unknown field"),
            "{e}"
        );
        let long = format!("{{\"{}\":1}}", "x".repeat(5000));
        let line = err(&long).to_string();
        assert!(
            line.starts_with(&format!("field `{}…`", "x".repeat(64))),
            "{line}"
        );
        assert!(line.len() < 400, "{} bytes", line.len());
    }

    #[test]
    fn long_pod_name_is_refused() {
        let json = format!(r#"{{"pod_name":"{}"}}"#, "a".repeat(MAX_POD_NAME_LEN + 1));
        assert_eq!(err(&json).field.as_deref(), Some("pod_name"));
        let json = format!(r#"{{"pod_name":"{}"}}"#, "a".repeat(MAX_POD_NAME_LEN));
        assert!(Config::parse(json.as_bytes()).is_ok());
    }
}
