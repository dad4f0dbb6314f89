//! WasmPlugin → the pieces istiod puts into the sidecar's wasm filter
//! (`../shared/docs/ISTIO-ENVOY.md` §1). Unsupported fields are warnings.

use serde_json::Value;

use harness::render::{FailurePolicy, WasmPlugin};

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
    /// `match[].mode` values.
    pub modes: Vec<String>,
    pub warnings: Vec<String>,
}

impl WasmPluginSpec {
    /// The plugin as the sidecar holds it, with the module at `wasm_file`
    /// (where istio-agent would have downloaded it).
    pub fn envoy_plugin(&self, wasm_file: &std::path::Path) -> WasmPlugin {
        WasmPlugin {
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
        for var in env {
            let key = var
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| fail("spec.vmConfig.env[].name: missing".into()))?;
            match var.get("valueFrom").and_then(Value::as_str) {
                Some("HOST") => host_env_keys.push(key.to_owned()),
                None | Some("INLINE") => env_values.push((
                    key.to_owned(),
                    var.get("value")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                )),
                Some(other) => {
                    return Err(fail(format!(
                        "spec.vmConfig.env[{key}].valueFrom: unknown value {other:?}"
                    )));
                }
            }
        }
    }
    let modes = spec
        .get("match")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(|e| e.get("mode").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
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
        modes,
        warnings,
    })
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
        assert_eq!(p.modes, ["SERVER"]);
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
}
