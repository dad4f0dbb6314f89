//! WasmPlugin → the pieces istiod puts into the sidecar's wasm filter
//! ([`crate::wasm_filter`] renders it), and which listeners get it
//! (`match`). The spec is read into typed structs ([`crate::resource`]):
//! what istiod refuses is refused here, naming the field; keys of the spec
//! that do not change the rendered filter are warnings naming them.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use serde::{
    Deserialize, Deserializer,
    de::{self, IgnoredAny, Unexpected, Visitor},
};
use serde_json::Value;

use crate::{
    pods::{CLIENT_POD_LABELS, SERVER_POD_LABELS},
    resource::{self, FieldError, Problem, TranslateError},
    wasm_filter::{FailurePolicy, WasmFilter},
};

/// What the sidecar's wasm filter is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct WasmPluginSpec {
    pub namespace: String,
    pub name: String,
    /// `root_id` ("" when unset).
    pub plugin_name: String,
    /// `pluginConfig` as compact JSON; "" when unset (the filter gets 0 bytes).
    pub plugin_config: String,
    /// `failStrategy`, as Envoy's `failure_policy`.
    pub failure_policy: FailurePolicy,
    /// `vmConfig.env` with `valueFrom: HOST`.
    pub host_env_keys: Vec<String>,
    /// `vmConfig.env` with inline values.
    pub env_values: Vec<(String, String)>,
    /// `selector.matchLabels`: the pods whose sidecars get the filter
    /// (empty = every pod in the namespace).
    pub match_labels: Vec<(String, String)>,
    /// `match[]`: the filter goes on a listener any of them selects.
    pub selectors: Vec<Selector>,
    pub warnings: Vec<String>,
}

/// Which side of a sidecar a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Outbound (the client's sidecar); ports are Service ports.
    Client,
    /// Inbound (the server's sidecar); ports are container (target) ports.
    Server,
}

/// `match[].mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    Client,
    Server,
    /// Also what `UNDEFINED` or no mode means in Istio.
    #[serde(alias = "UNDEFINED")]
    ClientAndServer,
}

/// One `match[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub mode: Mode,
    /// `ports[].number`; empty = every port.
    pub ports: Vec<u16>,
}

impl Selector {
    fn selects(&self, side: Side, port: u16) -> bool {
        let side_ok = matches!(
            (self.mode, side),
            (Mode::ClientAndServer, _)
                | (Mode::Client, Side::Client)
                | (Mode::Server, Side::Server)
        );
        side_ok && (self.ports.is_empty() || self.ports.contains(&port))
    }
}

impl WasmPluginSpec {
    /// Whether istiod puts the filter on `side`'s listener for `port`: the
    /// pod on that side is selected, and so is the listener.
    pub fn applies(&self, side: Side, port: u16) -> bool {
        let pod_labels = match side {
            Side::Client => CLIENT_POD_LABELS,
            Side::Server => SERVER_POD_LABELS,
        };
        let pod_selected = self
            .match_labels
            .iter()
            .all(|(k, v)| pod_labels.iter().any(|(pk, pv)| pk == k && pv == v));
        pod_selected && self.selectors.iter().any(|s| s.selects(side, port))
    }

    /// The plugin as the sidecar holds it, with the module at `wasm_file`
    /// (where istio-agent would have downloaded it).
    pub fn envoy_plugin(&self, wasm_file: &std::path::Path) -> WasmFilter {
        WasmFilter {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            plugin_name: self.plugin_name.clone(),
            // An unset pluginConfig reaches the filter as 0 bytes.
            config: (!self.plugin_config.is_empty()).then(|| self.plugin_config.clone()),
            wasm_path: wasm_file.to_owned(),
            failure_policy: self.failure_policy,
            host_env_keys: self.host_env_keys.clone(),
            env_values: self.env_values.clone(),
        }
    }
}

/// A refused WasmPlugin: `WasmPlugin <name>: <field>: <why>`, the field a
/// path from the resource root.
pub type WasmPluginError = TranslateError;

const KIND: &str = "WasmPlugin";

/// A WasmPlugin's `spec`: what the local mesh models. No
/// `deny_unknown_fields` here, unlike the structs below: Istio's other keys
/// (`phase`, `priority`, …) do not change the rendered filter and are
/// warnings; `targetRef(s)` would change which pods get it and is refused.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", expecting = "an object")]
struct SpecFields {
    /// Not an `Option`: `selector: null` is refused, not read as "every pod".
    #[serde(default)]
    selector: WorkloadSelector,
    r#match: Option<Vec<TrafficSelector>>,
    plugin_name: Option<String>,
    /// Any JSON: it reaches the filter as written.
    plugin_config: Option<Value>,
    fail_strategy: Option<FailStrategy>,
    vm_config: Option<VmConfig>,
    r#type: Option<PluginType>,
    /// Where istio-agent fetches the module from, and how: the local mesh is
    /// handed the file, so they change nothing here.
    #[serde(rename = "url")]
    _url: Option<IgnoredAny>,
    #[serde(rename = "sha256")]
    _sha256: Option<IgnoredAny>,
    #[serde(rename = "imagePullPolicy")]
    _image_pull_policy: Option<IgnoredAny>,
    /// Every other key, `null` included: a `targetRef: null` is still a
    /// targetRef.
    #[serde(flatten)]
    unmodelled: BTreeMap<String, IgnoredAny>,
}

/// `selector`: `matchLabels` only (`matchExpressions`, … refused).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
struct WorkloadSelector {
    match_labels: Option<BTreeMap<String, String>>,
}

/// One `match[]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct TrafficSelector {
    mode: Option<Mode>,
    /// Not an `Option`: `ports: null` is refused, not read as "every port".
    #[serde(default)]
    ports: Vec<PortSelector>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct PortSelector {
    number: Port,
}

/// `ports[].number`.
#[derive(Clone, Copy, Debug)]
struct Port(u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Number;
        impl Visitor<'_> for Number {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port 1-65535")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Port, E> {
                u16::try_from(n)
                    .ok()
                    .filter(|&n| n > 0)
                    .map(Port)
                    .ok_or_else(|| E::invalid_value(Unexpected::Unsigned(n), &self))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Port, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(n), &self)),
                }
            }
        }
        deserializer.deserialize_u16(Number)
    }
}

/// `failStrategy`.
#[derive(Clone, Copy, Debug, Deserialize)]
enum FailStrategy {
    #[serde(rename = "FAIL_CLOSE")]
    Close,
    #[serde(rename = "FAIL_OPEN")]
    Open,
    #[serde(rename = "FAIL_RELOAD")]
    Reload,
}

/// `type`: the local mesh loads HTTP filters only.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum PluginType {
    #[serde(rename = "UNSPECIFIED_PLUGIN_TYPE")]
    Unspecified,
    Http,
    Network,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct VmConfig {
    env: Option<Vec<EnvVar>>,
}

/// One `vmConfig.env[]` entry.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
struct EnvVar {
    name: Option<String>,
    value_from: Option<EnvValueSource>,
    /// `Some` whenever the key is there, even as `null` (which a plain
    /// `Option` reads as unset): the CRD's rule beside `valueFrom: HOST` is
    /// `!has(self.value)`.
    #[serde(default, deserialize_with = "present")]
    value: Option<Option<String>>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum EnvValueSource {
    Inline,
    Host,
}

/// For [`EnvVar::value`].
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::deserialize(d).map(Some)
}

pub fn parse(resource: &Value) -> Result<WasmPluginSpec, WasmPluginError> {
    let (name, spec): (String, SpecFields) = resource::read(resource, KIND)?;
    let namespace = resource
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    spec.into_plugin(namespace, name.clone())
        .map_err(|error| TranslateError {
            kind: KIND,
            name,
            error,
        })
}

impl SpecFields {
    /// What serde cannot check, then the plugin. Errors name the field from
    /// the resource root.
    fn into_plugin(self, namespace: String, name: String) -> Result<WasmPluginSpec, FieldError> {
        if let Some(key) = ["targetRef", "targetRefs"]
            .into_iter()
            .find(|key| self.unmodelled.contains_key(*key))
        {
            return Err(FieldError::new(
                format!("spec.{key}"),
                Problem::NotTranslated(key.into()),
            ));
        }
        if let Some(PluginType::Network) = self.r#type {
            return Err(FieldError::new("spec.type", Problem::NetworkPlugin));
        }
        let (host_env_keys, env_values) =
            split_env(self.vm_config.and_then(|vm| vm.env).unwrap_or_default())?;
        let mut selectors: Vec<Selector> = self
            .r#match
            .into_iter()
            .flatten()
            .map(|entry| Selector {
                // No mode means both sides, as UNDEFINED does.
                mode: entry.mode.unwrap_or(Mode::ClientAndServer),
                ports: entry.ports.iter().map(|p| p.number.0).collect(),
            })
            .collect();
        // No match (or an empty one) selects every listener, as in Istio.
        if selectors.is_empty() {
            selectors.push(Selector {
                mode: Mode::ClientAndServer,
                ports: Vec::new(),
            });
        }
        Ok(WasmPluginSpec {
            namespace,
            name,
            plugin_name: self.plugin_name.unwrap_or_default(),
            plugin_config: self
                .plugin_config
                .map(|config| config.to_string())
                .unwrap_or_default(),
            failure_policy: match self.fail_strategy {
                None | Some(FailStrategy::Close) => FailurePolicy::FailClosed,
                Some(FailStrategy::Open) => FailurePolicy::FailOpen,
                Some(FailStrategy::Reload) => FailurePolicy::FailReload,
            },
            host_env_keys,
            env_values,
            match_labels: self.selector.match_labels.into_iter().flatten().collect(),
            selectors,
            warnings: self
                .unmodelled
                .keys()
                .map(|key| format!("spec.{key} is not modelled by the local mesh and was ignored"))
                .collect(),
        })
    }
}

/// `vmConfig.env` as the filter takes it: the `HOST` names, and the inline
/// (name, value) pairs.
type SplitEnv = (Vec<String>, Vec<(String, String)>);

/// `vmConfig.env`, refused as istiod refuses it (validation, and the CRD's
/// CEL rules).
fn split_env(env: Vec<EnvVar>) -> Result<SplitEnv, FieldError> {
    let mut host_env_keys = Vec::new();
    let mut env_values = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, var) in env.into_iter().enumerate() {
        let field = |key: &str| format!("spec.vmConfig.env[{i}].{key}");
        let key = var
            .name
            .filter(|k| !k.is_empty())
            .ok_or_else(|| FieldError::new(field("name"), Problem::Missing))?;
        if !seen.insert(key.clone()) {
            return Err(FieldError::new(
                field("name"),
                Problem::DuplicateEnvName(key),
            ));
        }
        match var.value_from {
            Some(EnvValueSource::Host) if var.value.is_some() => {
                return Err(FieldError::new(
                    field("value"),
                    Problem::EnvValueBesideHost(key),
                ));
            }
            Some(EnvValueSource::Host) => host_env_keys.push(key),
            None | Some(EnvValueSource::Inline) => {
                env_values.push((key, var.value.flatten().unwrap_or_default()))
            }
        }
    }
    Ok((host_env_keys, env_values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wasm_plugin_fields_become_filter_settings() {
        let p = parse(&json!({
            "kind": "WasmPlugin",
            "metadata": {"name": "upstream-tagger"},
            "spec": {
                "pluginName": "upstream-tagger",
                "failStrategy": "FAIL_OPEN",
                "match": [{"mode": "SERVER"}],
                "pluginConfig": {"tag_all_http": false, "pod_header": "x-upstream-pod"},
                "vmConfig": {"env": [{"name": "POD_NAME", "valueFrom": "HOST"}, {"name": "A", "value": "b"}]},
                "phase": "STATS",
            }
        }))
        .unwrap();
        assert_eq!(p.namespace, "default");
        assert_eq!(p.plugin_name, "upstream-tagger");
        assert_eq!(p.failure_policy, FailurePolicy::FailOpen);
        assert_eq!(
            p.plugin_config,
            r#"{"pod_header":"x-upstream-pod","tag_all_http":false}"#
        );
        assert_eq!(p.host_env_keys, ["POD_NAME"]);
        assert_eq!(p.env_values, [("A".to_owned(), "b".to_owned())]);
        assert_eq!(
            p.selectors,
            [Selector {
                mode: Mode::Server,
                ports: vec![]
            }]
        );
        assert!(p.applies(Side::Server, 30051) && !p.applies(Side::Client, 30051));
        assert_eq!(p.warnings.len(), 1, "phase is named: {:?}", p.warnings);
        assert!(p.warnings[0].contains("spec.phase"));
    }

    #[test]
    fn defaults_and_errors() {
        let p =
            parse(&json!({"kind": "WasmPlugin", "metadata": {"name": "x"}, "spec": {}})).unwrap();
        assert_eq!(p.failure_policy, FailurePolicy::FailClosed);
        assert_eq!(
            p.plugin_config, "",
            "unset pluginConfig reaches the filter as 0 bytes"
        );
        let err = parse(&json!({"kind": "WasmPlugin", "metadata": {"name": "x"}, "spec": {"failStrategy": "MAYBE"}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("failStrategy"), "{err}");
    }

    fn plugin(spec: Value) -> Result<WasmPluginSpec, String> {
        parse(&json!({"kind": "WasmPlugin", "metadata": {"name": "x"}, "spec": spec}))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn no_match_or_no_mode_means_every_listener() {
        for spec in [
            json!({}),
            json!({"match": []}),
            json!({"match": [{"ports": []}]}),
            json!({"match": [{"mode": "UNDEFINED"}]}),
        ] {
            let p = plugin(spec.clone()).unwrap();
            assert!(
                p.applies(Side::Client, 30051) && p.applies(Side::Server, 30051),
                "{spec}"
            );
        }
    }

    #[test]
    fn selector_picks_the_pods_whose_sidecars_load_it() {
        let servers = plugin(json!({"selector": {"matchLabels": {"app": "server"}}})).unwrap();
        assert!(servers.applies(Side::Server, 30051) && !servers.applies(Side::Client, 30051));
        let nobody = plugin(json!({"selector": {"matchLabels": {"app": "reviews"}}})).unwrap();
        assert!(!nobody.applies(Side::Server, 30051) && !nobody.applies(Side::Client, 30051));
        let err = plugin(json!({"selector": {"matchExpressions": []}})).unwrap_err();
        assert!(err.contains("spec.selector.matchExpressions"), "{err}");
    }

    #[test]
    fn match_ports_select_listeners() {
        let p = plugin(
            json!({"match": [{"mode": "SERVER", "ports": [{"number": 8080}]},
                                        {"mode": "CLIENT", "ports": [{"number": 30051}]}]}),
        )
        .unwrap();
        assert!(p.applies(Side::Server, 8080));
        assert!(!p.applies(Side::Server, 30051));
        assert!(p.applies(Side::Client, 30051));
        assert!(!p.applies(Side::Client, 80));
        for (spec, field) in [
            (
                json!({"match": [{"ports": [{"number": 0}]}]}),
                "spec.match[0].ports[0].number",
            ),
            (
                json!({"match": [{"mode": "SERVER"}, {"mode": "SIDEWAYS"}]}),
                "spec.match[1].mode",
            ),
            (
                json!({"match": [{"mode": "SERVER", "workload": {}}]}),
                "spec.match[0].workload",
            ),
        ] {
            let err = plugin(spec).unwrap_err();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn env_refused_as_istiod_refuses_it() {
        let err = plugin(json!({"vmConfig": {"env": [
            {"name": "POD_NAME", "valueFrom": "HOST"},
            {"name": "POD_NAME", "value": "x"},
        ]}}))
        .unwrap_err();
        assert!(
            err.contains("spec.vmConfig.env[1].name") && err.contains("duplicate"),
            "{err}"
        );
        let err = plugin(json!({"vmConfig": {"env": [
            {"name": "POD_NAME", "valueFrom": "HOST", "value": "x"},
        ]}}))
        .unwrap_err();
        assert!(
            err.contains("spec.vmConfig.env[0].value")
                && err.contains("only be set when valueFrom is INLINE"),
            "{err}"
        );
        for spec in [json!({"type": "NETWORK"}), json!({"targetRefs": []})] {
            assert!(plugin(spec.clone()).is_err(), "{spec}");
        }
    }

    /// A wrong type or an unknown key anywhere in the spec is refused by its
    /// path, never read as unset or dropped.
    #[test]
    fn wrong_types_and_unknown_keys_are_refused_by_path() {
        for (spec, field) in [
            (json!(7), "spec"),
            (json!({"failStrategy": 5}), "spec.failStrategy"),
            (json!({"pluginName": 5}), "spec.pluginName"),
            (json!({"type": "TCP"}), "spec.type"),
            (json!({"match": {"mode": "SERVER"}}), "spec.match"),
            (
                json!({"match": [{"ports": [{"number": "80"}]}]}),
                "spec.match[0].ports[0].number",
            ),
            (
                json!({"match": [{"ports": [{"number": 70000}]}]}),
                "spec.match[0].ports[0].number",
            ),
            (
                json!({"match": [{"ports": [{}]}]}),
                "spec.match[0].ports[0]",
            ),
            (
                json!({"match": [{"ports": [{"number": 80, "name": "grpc"}]}]}),
                "spec.match[0].ports[0].name",
            ),
            (
                json!({"selector": {"matchLabels": {"app": 5}}}),
                "spec.selector.matchLabels.app",
            ),
            (
                json!({"selector": {"matchLabels": "app=server"}}),
                "spec.selector.matchLabels",
            ),
            (
                json!({"vmConfig": {"env": "POD_NAME"}}),
                "spec.vmConfig.env",
            ),
            (
                json!({"vmConfig": {"runtime": "v8"}}),
                "spec.vmConfig.runtime",
            ),
            (
                json!({"vmConfig": {"env": [{"name": "A", "value": 5}]}}),
                "spec.vmConfig.env[0].value",
            ),
            (
                json!({"vmConfig": {"env": [{"name": "A", "valuefrom": "HOST"}]}}),
                "spec.vmConfig.env[0].valuefrom",
            ),
            (
                json!({"vmConfig": {"env": [{"name": "A", "valueFrom": "ENV"}]}}),
                "spec.vmConfig.env[0].valueFrom",
            ),
            (
                json!({"vmConfig": {"env": [{"name": ""}]}}),
                "spec.vmConfig.env[0].name",
            ),
        ] {
            let err = plugin(spec.clone()).unwrap_err();
            assert!(
                err.starts_with(&format!("WasmPlugin x: {field}: ")),
                "{spec}: {err}"
            );
        }
        let err = plugin(json!({"type": "NETWORK"})).unwrap_err();
        assert!(
            err.contains("spec.type") && err.contains("HTTP filters only"),
            "{err}"
        );
        let err = plugin(json!({"targetRefs": []})).unwrap_err();
        assert!(
            err.contains("spec.targetRefs") && err.contains("spec.selector"),
            "{err}"
        );
    }

    /// `null` is unset where unset means the same; where it would select
    /// more pods or ports than the file says, or the key alone is refused,
    /// it is refused.
    #[test]
    fn null_is_unset_only_where_that_changes_nothing() {
        let p = plugin(
            json!({"match": null, "pluginConfig": null, "failStrategy": null,
                              "vmConfig": {"env": null}}),
        )
        .unwrap();
        assert!(p.applies(Side::Client, 30051) && p.applies(Side::Server, 30051));
        assert_eq!(p.plugin_config, "");
        assert_eq!(p.failure_policy, FailurePolicy::FailClosed);
        for (spec, field) in [
            (json!({"selector": null}), "spec.selector"),
            (json!({"match": [{"ports": null}]}), "spec.match[0].ports"),
            (
                json!({"vmConfig": {"env": [{"name": "A", "valueFrom": "HOST", "value": null}]}}),
                "spec.vmConfig.env[0].value",
            ),
            (json!({"targetRef": null}), "spec.targetRef"),
        ] {
            let err = plugin(spec.clone()).unwrap_err();
            assert!(
                err.starts_with(&format!("WasmPlugin x: {field}: ")),
                "{spec}: {err}"
            );
        }
    }

    /// Keys that only say where istio-agent fetches the module from are
    /// read silently; any other key the mesh does not model is a warning,
    /// a misspelt one too (and it is not read).
    #[test]
    fn unmodelled_keys_are_warnings() {
        let p = plugin(
            json!({"url": "oci://x/y:1", "sha256": "ab", "imagePullPolicy": "Always",
                              "priority": 10, "failStratgy": "FAIL_OPEN"}),
        )
        .unwrap();
        assert_eq!(
            p.warnings,
            [
                "spec.failStratgy is not modelled by the local mesh and was ignored",
                "spec.priority is not modelled by the local mesh and was ignored",
            ]
        );
        assert_eq!(p.failure_policy, FailurePolicy::FailClosed);
    }
}
