//! WasmPlugin → the pieces istiod puts into the sidecar's wasm filter
//! ([`crate::wasm_filter`] renders it), and which listeners get it
//! (`match`). What istiod refuses is refused here; fields that do not change
//! the rendered filter are warnings naming them.

use serde_json::Value;

use crate::wasm_filter::{FailurePolicy, WasmFilter};

use crate::pods::{CLIENT_POD_LABELS, SERVER_POD_LABELS};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Client,
    Server,
    /// Also what `UNDEFINED` or no mode means in Istio.
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

#[derive(Debug, thiserror::Error)]
#[error("WasmPlugin {name}: {problem}")]
pub struct WasmPluginError {
    name: String,
    problem: String,
}

pub fn parse(resource: &Value) -> Result<WasmPluginSpec, WasmPluginError> {
    let name = resource
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_owned();
    let fail = |problem: String| WasmPluginError {
        name: name.clone(),
        problem,
    };
    if resource.get("kind").and_then(Value::as_str) != Some("WasmPlugin") {
        return Err(fail("kind: expected WasmPlugin".into()));
    }
    let spec = resource
        .get("spec")
        .and_then(Value::as_object)
        .ok_or_else(|| fail("spec: missing".into()))?;
    let namespace = resource
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let mut warnings = Vec::new();
    let failure_policy = match spec.get("failStrategy").and_then(Value::as_str) {
        None | Some("FAIL_CLOSE") => FailurePolicy::FailClosed,
        Some("FAIL_OPEN") => FailurePolicy::FailOpen,
        Some("FAIL_RELOAD") => FailurePolicy::FailReload,
        Some(other) => return Err(fail(format!("spec.failStrategy: unknown value {other:?}"))),
    };
    let plugin_config = match spec.get("pluginConfig") {
        None | Some(Value::Null) => String::new(),
        Some(config) => config.to_string(),
    };
    let mut host_env_keys = Vec::new();
    let mut env_values = Vec::new();
    if let Some(env) = resource
        .pointer("/spec/vmConfig/env")
        .and_then(Value::as_array)
    {
        let mut seen = std::collections::BTreeSet::new();
        for (i, var) in env.iter().enumerate() {
            let key = var
                .get("name")
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty())
                .ok_or_else(|| fail(format!("spec.vmConfig.env[{i}].name: missing")))?;
            // istiod refuses both (validation, and the CRD's CEL rule).
            if !seen.insert(key) {
                return Err(fail(format!(
                    "spec.vmConfig.env[{i}].name: duplicate env name {key:?}"
                )));
            }
            match var.get("valueFrom").and_then(Value::as_str) {
                Some("HOST") => {
                    if var.get("value").is_some() {
                        return Err(fail(format!(
                            "spec.vmConfig.env[{i}].value ({key}): value may only be set when valueFrom is INLINE"
                        )));
                    }
                    host_env_keys.push(key.to_owned())
                }
                None | Some("INLINE") => env_values.push((
                    key.to_owned(),
                    var.get("value")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                )),
                Some(other) => {
                    return Err(fail(format!(
                        "spec.vmConfig.env[{i}].valueFrom ({key}): unknown value {other:?}"
                    )));
                }
            }
        }
    }
    let selectors = match spec.get("match") {
        None | Some(Value::Null) => vec![Selector {
            mode: Mode::ClientAndServer,
            ports: Vec::new(),
        }],
        Some(Value::Array(entries)) if entries.is_empty() => vec![Selector {
            mode: Mode::ClientAndServer,
            ports: Vec::new(),
        }],
        Some(Value::Array(entries)) => entries
            .iter()
            .enumerate()
            .map(|(i, entry)| selector(i, entry).map_err(&fail))
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(fail(format!("spec.match: expected a list, got {other}"))),
    };
    if let Some(kind) = spec.get("type").and_then(Value::as_str)
        && kind != "HTTP"
        && kind != "UNSPECIFIED_PLUGIN_TYPE"
    {
        return Err(fail(format!(
            "spec.type: {kind:?} is not translated by the local mesh (it loads HTTP filters only): refused rather than dropped"
        )));
    }
    let mut match_labels = Vec::new();
    if let Some(selector) = spec.get("selector") {
        let selector = selector
            .as_object()
            .ok_or_else(|| fail("spec.selector: must be an object".into()))?;
        for (key, labels) in selector {
            if key != "matchLabels" {
                return Err(fail(format!(
                    "spec.selector.{key}: not translated by the local mesh: refused rather than dropped"
                )));
            }
            for (label, value) in labels.as_object().into_iter().flatten() {
                let value = value.as_str().ok_or_else(|| {
                    fail(format!(
                        "spec.selector.matchLabels.{label}: expected a string"
                    ))
                })?;
                match_labels.push((label.clone(), value.to_owned()));
            }
        }
    }
    for key in ["targetRef", "targetRefs"] {
        if spec.contains_key(key) {
            return Err(fail(format!(
                "spec.{key}: not translated by the local mesh (it selects by spec.selector): refused rather than dropped"
            )));
        }
    }
    for key in spec.keys() {
        let modelled = [
            "selector",
            "match",
            "url",
            "pluginName",
            "pluginConfig",
            "failStrategy",
            "vmConfig",
            "imagePullPolicy",
            "sha256",
            "type",
        ];
        if !modelled.contains(&key.as_str()) {
            warnings.push(format!(
                "spec.{key} is not modelled by the local mesh and was ignored"
            ));
        }
    }
    Ok(WasmPluginSpec {
        namespace,
        name: name.clone(),
        plugin_name: spec
            .get("pluginName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        plugin_config,
        failure_policy,
        host_env_keys,
        env_values,
        match_labels,
        selectors,
        warnings,
    })
}

/// One `match[]` entry: no mode (or UNDEFINED) means both sides, as in Istio.
fn selector(i: usize, entry: &Value) -> Result<Selector, String> {
    let mode = match entry.get("mode").and_then(Value::as_str) {
        None | Some("UNDEFINED") | Some("CLIENT_AND_SERVER") => Mode::ClientAndServer,
        Some("CLIENT") => Mode::Client,
        Some("SERVER") => Mode::Server,
        Some(other) => return Err(format!("spec.match[{i}].mode: unknown value {other:?}")),
    };
    let mut ports = Vec::new();
    if let Some(list) = entry.get("ports") {
        let list = list
            .as_array()
            .ok_or_else(|| format!("spec.match[{i}].ports: expected a list"))?;
        for (j, port) in list.iter().enumerate() {
            let number = port
                .get("number")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    format!(
                        "spec.match[{i}].ports[{j}].number: expected a port 1-65535, got {port}"
                    )
                })?;
            ports.push(number);
        }
    }
    for key in entry.as_object().into_iter().flat_map(|o| o.keys()) {
        if key != "mode" && key != "ports" {
            return Err(format!(
                "spec.match[{i}].{key}: not translated by the local mesh: refused rather than dropped"
            ));
        }
    }
    Ok(Selector { mode, ports })
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
}
