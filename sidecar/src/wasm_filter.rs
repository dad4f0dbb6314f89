//! The Envoy HTTP filter istiod + istio-agent give a sidecar for a
//! WasmPlugin (`pilot/pkg/model/extensions.go`, `pkg/wasm`): name
//! `extensions.istio.io/trafficextension/<ns>.<name>~istio-translated-wasmplugin`,
//! `root_id` = pluginName, the config as a `StringValue`, V8 without
//! `vm_id`, the module as a local file (where istio-agent downloads it),
//! `host_env_keys`, `failure_policy`; inline, or by ECDS as istiod delivers
//! it.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// Type URL of Envoy's wasm HTTP filter config.
pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// WasmPlugin `failStrategy`, as Envoy's `failure_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// `FAIL_CLOSE` (Istio's default): requests fail while the plugin is not running.
    FailClosed,
    /// `FAIL_OPEN`: requests bypass a plugin that is not running.
    FailOpen,
    /// `FAIL_RELOAD`: reload the VM after a failure.
    FailReload,
}

impl FailurePolicy {
    /// The Envoy enum value.
    pub fn as_envoy(self) -> &'static str {
        match self {
            FailurePolicy::FailClosed => "FAIL_CLOSED",
            FailurePolicy::FailOpen => "FAIL_OPEN",
            FailurePolicy::FailReload => "FAIL_RELOAD",
        }
    }
}

/// A WasmPlugin as the sidecar ends up holding it: the filter.
#[derive(Debug, Clone, PartialEq)]
pub struct WasmFilter {
    /// `metadata.namespace` of the WasmPlugin.
    pub namespace: String,
    /// `metadata.name` of the WasmPlugin.
    pub name: String,
    /// `spec.pluginName` → `root_id` ("" when unset).
    pub plugin_name: String,
    /// `spec.pluginConfig` as compact JSON; `None` = unset (0 bytes).
    pub config: Option<String>,
    /// Local module path (istio-agent's download location in a real pod).
    pub wasm_path: PathBuf,
    /// `spec.failStrategy`.
    pub failure_policy: FailurePolicy,
    /// `spec.vmConfig.env[].valueFrom: HOST` names.
    pub host_env_keys: Vec<String>,
    /// `spec.vmConfig.env[]` with inline values (→ `key_values`).
    pub env_values: Vec<(String, String)>,
}

impl WasmFilter {
    /// A plugin for the module at `wasm_path`, Istio defaults otherwise
    /// (no pluginName, no config, FAIL_CLOSED) plus `POD_NAME` from the host.
    pub fn new(namespace: &str, name: &str, wasm_path: impl Into<PathBuf>) -> Self {
        WasmFilter {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            plugin_name: String::new(),
            config: None,
            wasm_path: wasm_path.into(),
            failure_policy: FailurePolicy::FailClosed,
            host_env_keys: vec!["POD_NAME".to_owned()],
            env_values: Vec::new(),
        }
    }

    /// Sets `pluginConfig` (rendered compact, as istiod does).
    pub fn config(mut self, config: &Value) -> Self {
        self.config = Some(config.to_string());
        self
    }

    /// Sets the configuration bytes verbatim (for malformed-input tests;
    /// istiod itself always sends valid JSON).
    pub fn raw_config(mut self, config: impl Into<String>) -> Self {
        self.config = Some(config.into());
        self
    }

    /// Sets `failStrategy`.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// `<ns>.<name>~istio-translated-wasmplugin` (Istio >= 1.30).
    pub fn config_name(&self) -> String {
        format!(
            "{}.{}~istio-translated-wasmplugin",
            self.namespace, self.name
        )
    }

    /// The filter name in the HCM (and the ECDS resource name).
    pub fn filter_name(&self) -> String {
        format!(
            "extensions.istio.io/trafficextension/{}",
            self.config_name()
        )
    }

    /// The HCM `http_filters` entry with the config inline.
    pub fn http_filter(&self) -> Value {
        json!({
            "name": self.filter_name(),
            "typed_config": self.typed_config(),
        })
    }

    /// The HCM `http_filters` entry that fetches the config by ECDS from
    /// `path` (a file holding [`WasmFilter::ecds_resource`]), as istiod
    /// delivers WasmPlugins (there: over ADS).
    pub fn ecds_http_filter(&self, path: &Path) -> Value {
        json!({
            "name": self.filter_name(),
            "config_discovery": {
                "config_source": {
                    "path_config_source": {"path": path.to_string_lossy()},
                    "resource_api_version": "V3",
                    "initial_fetch_timeout": "0s"
                },
                "type_urls": [WASM_TYPE_URL]
            }
        })
    }

    /// The ECDS discovery response carrying this filter's config.
    pub fn ecds_resource(&self) -> Value {
        json!({
            "version_info": "1",
            "resources": [{
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": self.filter_name(),
                "typed_config": self.typed_config(),
            }]
        })
    }

    fn typed_config(&self) -> Value {
        let mut environment = json!({"host_env_keys": self.host_env_keys});
        if !self.env_values.is_empty() {
            let values: serde_json::Map<String, Value> = self
                .env_values
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            environment["key_values"] = Value::Object(values);
        }
        json!({
            "@type": WASM_TYPE_URL,
            "config": {
                "name": self.config_name(),
                "root_id": self.plugin_name,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": self.config.clone().unwrap_or_default(),
                },
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": self.wasm_path.to_string_lossy()}},
                    "environment_variables": environment,
                },
                "failure_policy": self.failure_policy.as_envoy(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasm_filter_has_the_istio_shape() {
        let plugin = WasmFilter::new("default", "upstream-tagger", "/var/lib/istio/data/x/y.wasm");
        let filter = plugin.http_filter();
        assert_eq!(
            filter["name"],
            "extensions.istio.io/trafficextension/default.upstream-tagger~istio-translated-wasmplugin"
        );
        let config = &filter["typed_config"]["config"];
        assert_eq!(
            config["name"],
            "default.upstream-tagger~istio-translated-wasmplugin"
        );
        assert_eq!(config["root_id"], "");
        assert_eq!(
            config["configuration"],
            json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": ""})
        );
        assert_eq!(config["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        assert!(
            config["vm_config"].get("vm_id").is_none(),
            "Istio sets no vm_id"
        );
        assert_eq!(
            config["vm_config"]["code"]["local"]["filename"],
            "/var/lib/istio/data/x/y.wasm"
        );
        assert_eq!(
            config["vm_config"]["environment_variables"],
            json!({"host_env_keys": ["POD_NAME"]})
        );
        assert_eq!(config["failure_policy"], "FAIL_CLOSED");
    }

    #[test]
    fn plugin_config_is_compact_json_in_a_string_value() {
        let plugin = WasmFilter::new("ns", "p", "/m.wasm")
            .config(&json!({"tag_all_http": true, "max_tracked_connections": 16}))
            .failure_policy(FailurePolicy::FailOpen);
        let config = &plugin.http_filter()["typed_config"]["config"];
        let value = config["configuration"]["value"].as_str().unwrap();
        assert!(!value.contains(' ') && !value.contains('\n'), "{value}");
        assert_eq!(
            serde_json::from_str::<Value>(value).unwrap(),
            json!({"tag_all_http": true, "max_tracked_connections": 16})
        );
        assert_eq!(config["failure_policy"], "FAIL_OPEN");
    }
}
