//! An Istio resource's `spec` read into typed serde structs, and the one
//! error type the translators fail with: the resource, the field (a path from
//! the resource root, e.g. `spec.trafficPolicy.connectionPool.http.fooBar`)
//! and why.
//!
//! Each spec struct lists only the fields the local mesh translates, with
//! `deny_unknown_fields`: a key it does not list — one of Istio's that the
//! mesh does not model, or a typo — is refused by name, never dropped. (The
//! top level of a WasmPlugin's spec is the exception: Istio's keys there that
//! do not change the filter are warnings; see [`crate::wasm_plugin`].)

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::destination_rule::SERVER_HOSTS;
use crate::pods::SERVER_POD_LABELS;

/// A refused resource.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name}: {error}")]
pub struct TranslateError {
    /// `DestinationRule`, `Sidecar`, `WasmPlugin`.
    pub kind: &'static str,
    /// `metadata.name` (`<unnamed>` without one).
    pub name: String,
    /// Not a `#[source]`: the message already says it, and an error chain
    /// (`{:#}`) would say it twice.
    pub error: FieldError,
}

/// A refused field, by its path.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: Problem,
}

/// Why a field is refused.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("missing")]
    Missing,
    #[error("expected {0}")]
    WrongKind(&'static str),
    /// A key the spec structs do not list (the key is the path's last part).
    #[error("{}", not_translated(.0))]
    NotTranslated(String),
    /// serde's own words: a wrong type, an unknown enum value, a duration
    /// Istio refuses (see [`crate::duration`]).
    #[error("{0}")]
    Invalid(String),
    #[error(
        "PASSTHROUGH (an ORIGINAL_DST cluster) is not translated by the local mesh: \
         there is no iptables to keep the original destination; refused rather than dropped"
    )]
    Passthrough,
    #[error("{0:?} is not the server Service; the local mesh has one: {hosts}", hosts = SERVER_HOSTS.join(", "))]
    NotTheServer(String),
    #[error("required (Envoy's connection_keepalive needs a PING timeout)")]
    KeepaliveTimeoutRequired,
    #[error("selects no server pod (they are labelled {})", server_pod_labels())]
    SelectsNoServerPod,
    /// A WasmPlugin's `type: NETWORK`.
    #[error(
        "\"NETWORK\" is not translated by the local mesh (it loads HTTP filters only): \
         refused rather than dropped"
    )]
    NetworkPlugin,
    /// A WasmPlugin's `vmConfig.env[].name` given twice.
    #[error("duplicate env name {0:?}")]
    DuplicateEnvName(String),
    /// A WasmPlugin's `vmConfig.env[].value` beside `valueFrom: HOST`.
    #[error("value may only be set when valueFrom is INLINE ({0} has valueFrom: HOST)")]
    EnvValueBesideHost(String),
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, problem: Problem) -> Self {
        Self {
            field: field.into(),
            problem,
        }
    }

    /// The same error, its path taken from `parent` (a field relative to a
    /// struct read on its own, made relative to the resource root).
    pub(crate) fn under(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}.{}", self.field),
            problem: self.problem,
        }
    }

    /// serde's error, at the path it arose at under `root`.
    fn from_serde(root: &str, err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = err.path();
        let field = match path.iter().next() {
            None => root.to_owned(),
            Some(_) => format!("{root}.{path}"),
        };
        let last_key = match path.iter().next_back() {
            Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
            _ => None,
        };
        let message = err.into_inner().to_string();
        // `deny_unknown_fields` refuses a key before its value is read, so
        // the path ends at the key; serde says which refusal it is
        // (`Error::unknown_field`, pinned by a test below).
        let problem = match last_key {
            Some(key) if message.starts_with(UNKNOWN_FIELD) => Problem::NotTranslated(key),
            _ => Problem::Invalid(message),
        };
        Self { field, problem }
    }
}

/// How serde's `Error::unknown_field` starts.
const UNKNOWN_FIELD: &str = "unknown field `";

/// Why a field istiod translates is not translated here, by key; the
/// default reason covers every other key.
fn not_translated(key: &str) -> &'static str {
    match key {
        "outlierDetection" => {
            "not translated by the local mesh (istiod renders it as outlier_detection): refused rather than dropped"
        }
        "consistentHash" => {
            "not translated by the local mesh (istiod renders RING_HASH/MAGLEV): refused rather than dropped"
        }
        "warmup" | "warmupDurationSecs" => {
            "not translated by the local mesh (istiod renders slow_start_config): refused rather than dropped"
        }
        "retryBudget" => {
            "not translated by the local mesh (istiod renders a retry budget): refused rather than dropped"
        }
        "useClientProtocol" => {
            "not translated by the local mesh (istiod renders use_downstream_protocol_config): refused rather than dropped"
        }
        "subsets" => {
            "not translated by the local mesh (istiod renders one cluster per subset): refused rather than dropped"
        }
        "tls" => {
            "not translated: sidecars in the local mesh talk plaintext h2c (see docs/local-mesh.md): refused rather than dropped"
        }
        "targetRef" | "targetRefs" => {
            "not translated by the local mesh (it selects by spec.selector): refused rather than dropped"
        }
        _ => "not translated by the local mesh: refused rather than dropped",
    }
}

fn server_pod_labels() -> String {
    SERVER_POD_LABELS
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A resource of `kind` (the whole resource, as parsed YAML): its
/// `metadata.name` and its `spec` as `S`. Only `kind`, `metadata.name` and
/// `spec` are read: the rest (labels, annotations, …) changes no sidecar.
pub(crate) fn read<S: DeserializeOwned>(
    resource: &Value,
    kind: &'static str,
) -> Result<(String, S), TranslateError> {
    let name = resource
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_owned();
    let fail = |error| TranslateError {
        kind,
        name: name.clone(),
        error,
    };
    if resource.get("kind").and_then(Value::as_str) != Some(kind) {
        return Err(fail(FieldError::new("kind", Problem::WrongKind(kind))));
    }
    let spec = resource
        .get("spec")
        .ok_or_else(|| fail(FieldError::new("spec", Problem::Missing)))?;
    let spec = serde_path_to_error::deserialize(spec)
        .map_err(|err| fail(FieldError::from_serde("spec", err)))?;
    Ok((name, spec))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: Option<u32>,
    }

    fn refusal(spec: Value) -> FieldError {
        read::<Outer>(&json!({"kind": "Test", "spec": spec}), "Test")
            .unwrap_err()
            .error
    }

    /// `from_serde` tells an unknown key from a bad value by serde's words:
    /// if serde ever words it otherwise, this fails rather than the
    /// refusals losing their reason.
    #[test]
    fn unknown_keys_are_named_with_their_path_and_bad_values_keep_serdes_words() {
        let e = refusal(json!({"inner": {"fooBar": 1}}));
        assert_eq!(e.field, "spec.inner.fooBar");
        assert!(
            matches!(&e.problem, Problem::NotTranslated(key) if key == "fooBar"),
            "{e:?}"
        );
        assert!(
            e.to_string().ends_with("refused rather than dropped"),
            "{e}"
        );
        let e = refusal(json!({"inner": {"count": "many"}}));
        assert_eq!(e.field, "spec.inner.count");
        assert!(matches!(e.problem, Problem::Invalid(_)), "{e:?}");
        let e = refusal(json!({"inner": 7}));
        assert_eq!(e.field, "spec.inner");
        let e = refusal(json!(7));
        assert_eq!(e.field, "spec");
        let missing = read::<Outer>(&json!({"kind": "Test"}), "Test").unwrap_err();
        assert_eq!(missing.to_string(), "Test <unnamed>: spec: missing");
        let kind = read::<Outer>(&json!({"kind": "Other", "metadata": {"name": "x"}}), "Test")
            .unwrap_err();
        assert_eq!(kind.to_string(), "Test x: kind: expected Test");
    }

    /// How `mesh` prints it (`{:#}`, after the file's name).
    #[test]
    fn an_error_chain_names_the_field_once() {
        let err =
            read::<Outer>(&json!({"kind": "Test", "metadata": {"name": "x"}}), "Test").unwrap_err();
        let chain = format!("{:#}", anyhow::Error::new(err).context("test.yaml"));
        assert_eq!(chain, "test.yaml: Test x: spec: missing");
    }
}
