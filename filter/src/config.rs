//! `pluginConfig` parsing and validation.
//!
//! Istio hands the WasmPlugin's `pluginConfig` to `on_configure` as compact
//! JSON (0 bytes when unset). It is deserialized by serde into [`Config`]:
//! unknown fields and duplicates are refused, and each field's deserializer
//! checks its type and value, so a bad value is refused by the field that
//! holds it. Every problem is reported as one [`ConfigError`] naming that
//! field, because the only place a user sees it is one line in the sidecar's
//! log.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Unexpected, Visitor};

use crate::headers;

/// Default for [`Config::max_tracked_connections`].
pub const DEFAULT_MAX_TRACKED_CONNECTIONS: u32 = 10_000;
/// Upper bound for [`Config::max_tracked_connections`]: 1M entries of 24
/// bytes per worker is already more than any sidecar should hold.
pub const MAX_TRACKED_CONNECTIONS_LIMIT: u32 = 1_000_000;
/// Default for [`Config::idle_timeout_seconds`]: Envoy's (and Istio's)
/// default HTTP idle timeout is 1h, so a connection still open after an idle
/// hour is rare, and its count is not reset under the user's feet.
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u32 = 3600;

/// The effective filter configuration. Field names are the JSON names; the
/// `deserialize_with` functions are where values are checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Explicit pod name; `None` = discover it (node metadata, then env).
    #[serde(deserialize_with = "pod_name")]
    pub pod_name: Option<String>,
    /// Response header carrying the pod name.
    #[serde(deserialize_with = "header_name")]
    pub pod_header: String,
    /// Response header carrying the downstream connection id.
    #[serde(deserialize_with = "header_name")]
    pub connection_id_header: String,
    /// Response header carrying the 1-based request index on the connection.
    #[serde(deserialize_with = "header_name")]
    pub connection_requests_header: String,
    /// Tag every HTTP response, not only gRPC ones.
    pub tag_all_http: bool,
    /// Cap on connections tracked per VM (per Envoy worker).
    #[serde(deserialize_with = "max_tracked_connections")]
    pub max_tracked_connections: u32,
    /// Forget a connection after this many seconds without requests;
    /// 0 disables idle eviction (the cap still bounds memory).
    #[serde(deserialize_with = "idle_timeout_seconds")]
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

    fn document(err: &serde_json::Error) -> Self {
        ConfigError {
            field: None,
            message: format!("invalid JSON: {err}"),
        }
    }

    /// Attributes a serde error to the top-level field it arose in.
    fn from_serde(err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let field = match err.path().iter().next() {
            Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
            _ => None,
        };
        let err = err.into_inner();
        match field {
            // Syntax and truncation are the document's fault, wherever the
            // parser stopped.
            _ if err.classify() != serde_json::error::Category::Data => ConfigError::document(&err),
            // `deny_unknown_fields` refuses a key before its value is read,
            // so a key we do not know is always that refusal. serde's own
            // message repeats the key unescaped and unbounded: ours lists
            // the known fields instead (the key is shown, cut, by Display).
            Some(field) if !FIELDS.contains(&field.as_str()) => {
                ConfigError::field(&field, format!("unknown field (known: {KNOWN_FIELDS})"))
            }
            Some(field) => {
                // The field locates the problem; serde_json's position only
                // says where parsing stopped.
                let mut message = err.to_string();
                let at = format!(" at line {} column {}", err.line(), err.column());
                if message.ends_with(&at) {
                    message.truncate(message.len() - at.len());
                }
                ConfigError::field(&field, message)
            }
            // A duplicate field: serde refuses it at the object, naming it in
            // the message.
            None => ConfigError {
                field: None,
                message: err.to_string(),
            },
        }
    }
}

/// Longest field name an error repeats.
const MAX_SHOWN_NAME: usize = 64;
/// Longest message shown whole; longer ones lose their middle, which is
/// where serde quotes the offending value (`invalid type: string "…",
/// expected a boolean`), so both what is wrong and what is expected stay.
const MAX_SHOWN_MESSAGE: usize = 200;

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(field) = &self.field {
            // An unknown name is the user's text: escaped and cut, so the
            // error stays one readable log line whatever it holds.
            // (ASCII-only escaping by hand: `escape_debug` pulls Unicode
            // tables into the module, 3 KB for an error path.)
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
            f.write_str("`: ")?;
        }
        // Messages quote values only escaped (serde uses `{:?}`); control
        // characters are escaped again here so that no future message can
        // split the log line.
        let len = self.message.chars().count();
        let half = MAX_SHOWN_MESSAGE / 2;
        for (i, c) in self.message.chars().enumerate() {
            if len > MAX_SHOWN_MESSAGE && i >= half && i < len - half {
                if i == half {
                    f.write_str("…")?;
                }
            } else if c.is_control() {
                write!(f, "\\u{{{:x}}}", c as u32)?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
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
        // serde's derived structs also accept a JSON array (fields by
        // position): `["x-pod"]` must not be a config.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(ConfigError {
                field: None,
                message: "invalid JSON: expected an object `{...}` of upstream-tagger settings"
                    .to_owned(),
            });
        }
        let mut json = serde_json::Deserializer::from_slice(bytes);
        let config: Config =
            serde_path_to_error::deserialize(&mut json).map_err(ConfigError::from_serde)?;
        json.end().map_err(|err| ConfigError::document(&err))?;
        config.check_distinct_headers()?;
        Ok(config)
    }

    /// The one check that spans fields: each tag needs its own header.
    fn check_distinct_headers(&self) -> Result<(), ConfigError> {
        let header_fields = [
            ("pod_header", &self.pod_header),
            ("connection_id_header", &self.connection_id_header),
            (
                "connection_requests_header",
                &self.connection_requests_header,
            ),
        ];
        for (i, (field, name)) in header_fields.iter().enumerate() {
            if let Some((other, _)) = header_fields[..i].iter().find(|(_, n)| n == name) {
                return Err(ConfigError::field(
                    field,
                    format!("{name} is already used by `{other}`"),
                ));
            }
        }
        Ok(())
    }
}

// The fields' deserializers: a wrong type is refused by serde ("invalid
// type: ..., expected ..."), a wrong value by the check named below.

fn header_name<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    let name = String::deserialize(de)?;
    check_header_name(&name).map_err(de::Error::custom)?;
    Ok(name)
}

fn pod_name<'de, D: Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    let pod = Option::<String>::deserialize(de)?;
    if let Some(pod) = &pod {
        check_pod_name(pod).map_err(de::Error::custom)?;
    }
    Ok(pod)
}

fn max_tracked_connections<'de, D: Deserializer<'de>>(de: D) -> Result<u32, D::Error> {
    de.deserialize_any(WholeNumber {
        min: 1,
        max: MAX_TRACKED_CONNECTIONS_LIMIT,
    })
}

fn idle_timeout_seconds<'de, D: Deserializer<'de>>(de: D) -> Result<u32, D::Error> {
    de.deserialize_any(WholeNumber {
        min: 0,
        max: u32::MAX,
    })
}

/// A whole number in `min..=max`. Anything else (too big for any integer
/// type, negative, fractional, not a number) gets the same message, which
/// states the real range.
struct WholeNumber {
    min: u32,
    max: u32,
}

impl Visitor<'_> for WholeNumber {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a whole number between {} and {}", self.min, self.max)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
        match u32::try_from(v) {
            Ok(n) if (self.min..=self.max).contains(&n) => Ok(n),
            _ => Err(E::invalid_value(Unexpected::Unsigned(v), &self)),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }

    /// Istio carries `pluginConfig` as a protobuf Struct, whose numbers are
    /// doubles: `16.0` is 16.
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u32, E> {
        if v.fract() == 0.0 && v >= f64::from(self.min) && v <= f64::from(self.max) {
            Ok(v as u32)
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }
}

/// Longest header name accepted. HTTP sets no limit, but HTTP/2 peers cap
/// the header block (a 20,000-character name was accepted, and then every
/// call failed with an HTTP/2 protocol error); tags need a few dozen
/// characters.
pub const MAX_HEADER_NAME_LEN: usize = 256;

/// A header name the filter may set: an HTTP token, lowercase (HTTP/2 forbids
/// uppercase), not reserved, and not a gRPC binary header (`-bin` values must
/// be base64, ours are plain text).
pub fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_HEADER_NAME_LEN {
        return Err(format!(
            "is {} bytes long, at most {MAX_HEADER_NAME_LEN} allowed",
            name.len()
        ));
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
                "invalid type: string \"yes\", expected a boolean",
            ),
            (
                r#"{"tag_all_http":1}"#,
                Some("tag_all_http"),
                "invalid type: integer `1`, expected a boolean",
            ),
            (
                r#"{"pod_header":5}"#,
                Some("pod_header"),
                "invalid type: integer `5`, expected a string",
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
                r#"{"idle_timeout_seconds":5000000000}"#,
                Some("idle_timeout_seconds"),
                "invalid value: integer `5000000000`, expected a whole number between 0 and 4294967295",
            ),
            (
                r#"{"idle_timeout_seconds":-5}"#,
                Some("idle_timeout_seconds"),
                "invalid value: integer `-5`",
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
                r#"{"pod_name":5}"#,
                Some("pod_name"),
                "invalid type: integer `5`, expected a string",
            ),
            // serde refuses duplicates at the object, naming the field in
            // the message.
            (
                r#"{"tag_all_http":true,"tag_all_http":false}"#,
                None,
                "duplicate field `tag_all_http`",
            ),
            // serde's structs would also take an array (fields by position).
            (r#"[]"#, None, "invalid JSON: expected an object"),
            (r#"["x-pod"]"#, None, "invalid JSON: expected an object"),
            (r#" "x""#, None, "invalid JSON: expected an object"),
            (
                r#"{"pod_header":{"a":1}}"#,
                Some("pod_header"),
                "invalid type: map, expected a string",
            ),
            (
                r#"{"pod_header":["x"]}"#,
                Some("pod_header"),
                "invalid type: sequence, expected a string",
            ),
            (
                r#"{"tag_all_http":true"#,
                None,
                "invalid JSON: EOF while parsing an object at line 1 column 20",
            ),
            (
                r#"{"pod_header":"x-"#,
                None,
                "invalid JSON: EOF while parsing a string",
            ),
            (
                r#"{} {}"#,
                None,
                "invalid JSON: trailing characters at line 1 column 4",
            ),
            (
                r#"{"max_tracked_connections":1e999}"#,
                None,
                "invalid JSON: number out of range",
            ),
            (
                "{\"pod_header\":\"x\u{1}\"}",
                None,
                "invalid JSON: control character",
            ),
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

    /// [`FIELDS`] decides which keys are unknown in errors: it must be
    /// exactly the struct's fields, which serde lists when it refuses one.
    #[test]
    fn fields_are_the_struct_fields() {
        let serde_error = serde_json::from_str::<Config>(r#"{"?":1}"#)
            .expect_err("unknown field accepted")
            .to_string();
        let listed = FIELDS
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", ");
        assert!(
            serde_error.contains(&format!("expected one of {listed}")),
            "{serde_error}"
        );
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

    /// Issue 14: `{"pod_header": "x-" + 20,000 × "a"}` started the filter,
    /// and every call through the sidecar then failed with an HTTP/2
    /// protocol error.
    #[test]
    fn over_long_header_names_are_refused_naming_the_field() {
        let long = format!("x-{}", "a".repeat(20_000));
        for field in [
            "pod_header",
            "connection_id_header",
            "connection_requests_header",
        ] {
            let e = err(&format!(r#"{{"{field}":"{long}"}}"#));
            assert_eq!(e.field.as_deref(), Some(field), "{e}");
            assert_eq!(
                e.to_string(),
                format!("field `{field}`: is 20002 bytes long, at most 256 allowed")
            );
        }
        let longest = "x".repeat(MAX_HEADER_NAME_LEN);
        let config = Config::parse(format!(r#"{{"pod_header":"{longest}"}}"#).as_bytes())
            .expect("256 characters are allowed");
        assert_eq!(config.pod_header, longest);
        let e = err(&format!(r#"{{"pod_header":"{longest}x"}}"#));
        assert_eq!(e.field.as_deref(), Some("pod_header"), "{e}");
    }

    /// Issue 14: 2^32, -1 and 16.5 were refused with "between 0 and
    /// 4294967295", the range of the type, not of the setting.
    #[test]
    fn out_of_range_max_tracked_connections_states_the_real_range() {
        for (value, shown) in [
            ("4294967296", "integer `4294967296`"),
            ("-1", "integer `-1`"),
            ("16.5", "floating point `16.5`"),
            ("0", "integer `0`"),
            ("1000001", "integer `1000001`"),
            ("1e6.0", ""),
            (
                "18446744073709551616",
                "floating point `1.8446744073709552e+19`",
            ),
            ("\"10\"", "string \"10\""),
        ] {
            let json = format!(r#"{{"max_tracked_connections":{value}}}"#);
            if shown.is_empty() {
                // Not a number at all: a syntax error, not a range one.
                assert_eq!(err(&json).field, None);
                continue;
            }
            let kind = if value.starts_with('"') {
                "type"
            } else {
                "value"
            };
            assert_eq!(
                err(&json).to_string(),
                format!(
                    "field `max_tracked_connections`: invalid {kind}: {shown}, \
                     expected a whole number between 1 and 1000000"
                ),
                "{json}"
            );
        }
        for (value, expected) in [("1", 1), ("1000000", 1_000_000), ("1e6", 1_000_000)] {
            let json = format!(r#"{{"max_tracked_connections":{value}}}"#);
            let config = Config::parse(json.as_bytes()).expect("in range");
            assert_eq!(config.max_tracked_connections, expected, "{json}");
        }
    }

    /// serde quotes a wrongly typed string whole; the line keeps what is
    /// wrong and what was expected, and drops the middle.
    #[test]
    fn long_values_are_cut_in_the_middle_of_the_message() {
        let json = format!(r#"{{"tag_all_http":"{}"}}"#, "a".repeat(20_000));
        let line = err(&json).to_string();
        assert!(
            line.starts_with("field `tag_all_http`: invalid type: string \"aaa"),
            "{line}"
        );
        assert!(line.ends_with("aaa\", expected a boolean"), "{line}");
        assert!(line.contains('…'), "{line}");
        assert!(line.len() < 300, "{} bytes", line.len());
    }

    #[test]
    fn invalid_utf8_is_refused_as_invalid_json() {
        let e = Config::parse(b"{\"pod_header\":\"a\xffb\"}").expect_err("accepted");
        assert_eq!(e.field, None);
        assert!(
            e.message.starts_with("invalid JSON: invalid unicode"),
            "{e}"
        );
    }
}
