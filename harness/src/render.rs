//! Envoy configuration in the shape Istio generates (see
//! `../shared/docs/ISTIO-ENVOY.md`), rendered as JSON values (Envoy reads
//! JSON bootstraps from a `.json` file).
//!
//! - [`WasmPlugin`] → the HTTP filter istiod + istio-agent give the sidecar
//!   for a WasmPlugin (§1: name, `root_id` = pluginName, config as a
//!   `StringValue`, V8 without `vm_id`, local file, `host_env_keys`,
//!   `failure_policy`).
//! - [`InboundSidecar`] → a server-side sidecar bootstrap: node metadata
//!   `NAME`, one listener per app port with HCM + `http2_protocol_options`,
//!   the wasm filter, router, a route without timeout, and the cluster
//!   `inbound|<port>||` to the app.
//!
//! Simplifications, as the local mesh documents: one listener per port
//! instead of `virtualInbound` + iptables, plaintext, STATIC endpoints, and no
//! Istio-only filters (metadata_exchange, istio_authn, istio.stats).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::{Error, Result};

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

/// A WasmPlugin as the sidecar ends up holding it.
#[derive(Debug, Clone, PartialEq)]
pub struct WasmPlugin {
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

impl WasmPlugin {
    /// A plugin for the module at `wasm_path`, Istio defaults otherwise
    /// (no pluginName, no config, FAIL_CLOSED) plus `POD_NAME` from the host.
    pub fn new(namespace: &str, name: &str, wasm_path: impl Into<PathBuf>) -> Self {
        WasmPlugin {
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

    /// The project's WasmPlugin: `default/upstream-tagger`, pluginName
    /// `upstream-tagger`, module `dist/upstream_tagger.wasm` (must exist).
    pub fn upstream_tagger() -> Result<Self> {
        let mut plugin = WasmPlugin::new("default", "upstream-tagger", crate::paths::wasm()?);
        plugin.plugin_name = "upstream-tagger".to_owned();
        Ok(plugin)
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
    /// `path` (a file holding [`WasmPlugin::ecds_resource`]), as istiod
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

/// How the sidecar talks to the app on a port (Istio: from the port's
/// `appProtocol` or name prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    /// `grpc`/`http2`: h2c to the app.
    Http2,
    /// `http`: HTTP/1.1 to the app.
    Http1,
}

/// One inbound port: where the sidecar listens and the app port behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundPort {
    /// Port name (`grpc`, `http`): names the listener.
    pub name: String,
    /// Sidecar listener address; port 0 = let the kernel pick (ask
    /// [`crate::envoy::Envoy::listener_addr`]).
    pub listen: SocketAddr,
    /// The app's address.
    pub app: SocketAddr,
    pub protocol: AppProtocol,
}

impl InboundPort {
    /// A gRPC port in front of `app`, listening on 127.0.0.1:0.
    pub fn grpc(app: SocketAddr) -> Self {
        InboundPort {
            name: "grpc".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            app,
            protocol: AppProtocol::Http2,
        }
    }

    /// A plain HTTP/1.1 port in front of `app`, listening on 127.0.0.1:0.
    pub fn http(app: SocketAddr) -> Self {
        InboundPort {
            name: "http".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            app,
            protocol: AppProtocol::Http1,
        }
    }

    /// Listens on `listen` instead of an ephemeral port.
    pub fn listen(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }

    /// The Envoy listener name (`inbound_<name>`).
    pub fn listener_name(&self) -> String {
        format!("inbound_{}", self.name)
    }

    /// Istio's inbound cluster name: `inbound|<app port>||`.
    pub fn cluster_name(&self) -> String {
        format!("inbound|{}||", self.app.port())
    }

    fn listener(&self, http_filters: &[Value]) -> Value {
        let stat_prefix = format!("inbound_0.0.0.0_{}", self.app.port());
        let mut filters: Vec<Value> = http_filters.to_vec();
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        json!({
            "name": self.listener_name(),
            "address": socket_address(self.listen),
            "filter_chains": [{
                "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": stat_prefix,
                        "codec_type": "AUTO",
                        "http2_protocol_options": {},
                        "route_config": {
                            "name": format!("inbound|{}||", self.app.port()),
                            "virtual_hosts": [{
                                "name": format!("inbound|http|{}", self.app.port()),
                                "domains": ["*"],
                                "routes": [{
                                    "name": "default",
                                    "match": {"prefix": "/"},
                                    "route": {
                                        "cluster": self.cluster_name(),
                                        // Istio: no timeout on inbound routes,
                                        // and grpc-timeout is not capped.
                                        "timeout": "0s",
                                        "max_stream_duration": {
                                            "max_stream_duration": "0s",
                                            "grpc_timeout_header_max": "0s"
                                        }
                                    }
                                }]
                            }]
                        },
                        "http_filters": filters,
                    }
                }]
            }]
        })
    }

    fn cluster(&self, upstream_bind: Option<IpAddr>) -> Value {
        let protocol = match self.protocol {
            AppProtocol::Http2 => json!({"http2_protocol_options": {}}),
            AppProtocol::Http1 => json!({"http_protocol_options": {}}),
        };
        let mut cluster = json!({
            "name": self.cluster_name(),
            "type": "STATIC",
            "connect_timeout": "10s",
            "lb_policy": "ROUND_ROBIN",
            "circuit_breakers": {"thresholds": [{
                "max_connections": 4294967295u32,
                "max_pending_requests": 4294967295u32,
                "max_requests": 4294967295u32,
                "max_retries": 4294967295u32,
                "track_remaining": true
            }]},
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": protocol,
                }
            },
            "load_assignment": {
                "cluster_name": self.cluster_name(),
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(self.app)}}]}]
            }
        });
        if let Some(ip) = upstream_bind {
            cluster["upstream_bind_config"] =
                json!({"source_address": {"address": ip.to_string(), "port_value": 0}});
        }
        cluster
    }
}

fn socket_address(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

/// How the sidecar gets its WasmPlugin filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Config inline in the listener: a refused config makes Envoy refuse
    /// the whole bootstrap (it exits at start-up).
    Inline,
    /// Config by ECDS from files in this directory, as istiod delivers
    /// WasmPlugins: a refused config is an ECDS rejection, the listener
    /// stays up and (with no earlier good config) rejects requests.
    Ecds(PathBuf),
}

/// A server pod's sidecar (Istio's inbound side), as an Envoy bootstrap.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundSidecar {
    /// The pod name (node id, and metadata `NAME` unless overridden).
    pub pod_name: String,
    pub namespace: String,
    /// The pod IP for the node id and `INSTANCE_IPS`.
    pub pod_ip: IpAddr,
    /// Node metadata `NAME`; `None` leaves it out (older/odd sidecars).
    pub metadata_name: Option<String>,
    /// Admin address (port 0 = ephemeral; the harness reads it back).
    pub admin: SocketAddr,
    pub ports: Vec<InboundPort>,
    /// WasmPlugins, in filter order, before the router.
    pub wasm_plugins: Vec<WasmPlugin>,
    pub delivery: Delivery,
    /// Source address of sidecar → app connections; Istio uses 127.0.0.6.
    pub upstream_bind: Option<IpAddr>,
}

impl InboundSidecar {
    /// A sidecar for pod `pod_name` in `namespace`, no ports, no filters.
    pub fn new(pod_name: &str, namespace: &str) -> Self {
        InboundSidecar {
            pod_name: pod_name.to_owned(),
            namespace: namespace.to_owned(),
            pod_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            metadata_name: Some(pod_name.to_owned()),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            ports: Vec::new(),
            wasm_plugins: Vec::new(),
            delivery: Delivery::Inline,
            upstream_bind: None,
        }
    }

    /// Adds an inbound port.
    pub fn port(mut self, port: InboundPort) -> Self {
        self.ports.push(port);
        self
    }

    /// Adds a WasmPlugin's filter (in order, before the router).
    pub fn wasm(mut self, plugin: WasmPlugin) -> Self {
        self.wasm_plugins.push(plugin);
        self
    }

    /// Delivers the WasmPlugins by ECDS from files in `dir` (see
    /// [`InboundSidecar::write_ecds`]).
    pub fn ecds(mut self, dir: impl Into<PathBuf>) -> Self {
        self.delivery = Delivery::Ecds(dir.into());
        self
    }

    /// The ECDS file of `plugin` under `dir`.
    pub fn ecds_path(dir: &Path, plugin: &WasmPlugin) -> PathBuf {
        dir.join(format!("ecds-{}.{}.json", plugin.namespace, plugin.name))
    }

    /// Writes (or atomically replaces, which Envoy picks up live) the ECDS
    /// files; a no-op for inline delivery.
    pub fn write_ecds(&self) -> Result<()> {
        let Delivery::Ecds(dir) = &self.delivery else {
            return Ok(());
        };
        for plugin in &self.wasm_plugins {
            let path = Self::ecds_path(dir, plugin);
            let tmp = path.with_extension("json.tmp");
            let text = serde_json::to_string_pretty(&plugin.ecds_resource())
                .map_err(|e| Error::io("cannot render ECDS", std::io::Error::other(e)))?;
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        }
        Ok(())
    }

    fn http_filters(&self) -> Vec<Value> {
        self.wasm_plugins
            .iter()
            .map(|plugin| match &self.delivery {
                Delivery::Inline => plugin.http_filter(),
                Delivery::Ecds(dir) => plugin.ecds_http_filter(&Self::ecds_path(dir, plugin)),
            })
            .collect()
    }

    /// Overrides (or with `None` removes) node metadata `NAME`.
    pub fn metadata_name(mut self, name: Option<&str>) -> Self {
        self.metadata_name = name.map(str::to_owned);
        self
    }

    /// The node: id, cluster and metadata as istio-agent's bootstrap sets them.
    pub fn node(&self) -> Value {
        let mut metadata = json!({
            "NAMESPACE": self.namespace,
            "INSTANCE_IPS": self.pod_ip.to_string(),
            "CLUSTER_ID": "Kubernetes",
            "ISTIO_VERSION": "1.31.0",
        });
        if let Some(name) = &self.metadata_name {
            metadata["NAME"] = json!(name);
        }
        json!({
            "id": format!(
                "sidecar~{}~{}.{}~{}.svc.cluster.local",
                self.pod_ip, self.pod_name, self.namespace, self.namespace
            ),
            "cluster": format!("{}.{}", self.pod_name, self.namespace),
            "metadata": metadata,
        })
    }

    /// The complete bootstrap (with ECDS delivery, also call
    /// [`InboundSidecar::write_ecds`]).
    pub fn bootstrap(&self) -> Value {
        let filters = self.http_filters();
        json!({
            "node": self.node(),
            "admin": {"address": socket_address(self.admin)},
            "static_resources": {
                "listeners": self.ports.iter().map(|p| p.listener(&filters)).collect::<Vec<_>>(),
                "clusters": self.ports.iter().map(|p| p.cluster(self.upstream_bind)).collect::<Vec<_>>(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasm_filter_has_the_istio_shape() {
        let plugin = WasmPlugin::new("default", "upstream-tagger", "/var/lib/istio/data/x/y.wasm");
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
        let plugin = WasmPlugin::new("ns", "p", "/m.wasm")
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

    #[test]
    fn inbound_sidecar_routes_each_port_to_its_inbound_cluster() {
        let app: SocketAddr = "127.0.0.1:30051".parse().unwrap();
        let web: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let sidecar = InboundSidecar::new("server-0", "default")
            .port(InboundPort::grpc(app))
            .port(InboundPort::http(web))
            .wasm(WasmPlugin::new("default", "upstream-tagger", "/m.wasm"));
        let b = sidecar.bootstrap();
        assert_eq!(b["node"]["metadata"]["NAME"], "server-0");
        assert_eq!(
            b["node"]["id"],
            "sidecar~127.0.0.1~server-0.default~default.svc.cluster.local"
        );
        let listeners = b["static_resources"]["listeners"].as_array().unwrap();
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        assert_eq!(listeners.len(), 2);
        assert_eq!(clusters[0]["name"], "inbound|30051||");
        assert_eq!(clusters[1]["name"], "inbound|8080||");
        let h2 = &clusters[0]["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["explicit_http_config"];
        assert!(h2.get("http2_protocol_options").is_some());
        let hcm = &listeners[0]["filter_chains"][0]["filters"][0]["typed_config"];
        assert!(hcm.get("http2_protocol_options").is_some());
        let filters = hcm["http_filters"].as_array().unwrap();
        assert_eq!(filters.len(), 2);
        assert!(
            filters[0]["name"]
                .as_str()
                .unwrap()
                .starts_with("extensions.istio.io/")
        );
        assert_eq!(filters[1]["name"], "envoy.filters.http.router");
        let route = &hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"];
        assert_eq!(route["cluster"], "inbound|30051||");
        assert_eq!(route["timeout"], "0s");
    }

    #[test]
    fn ecds_delivery_points_the_filter_at_a_file_holding_the_same_config() {
        let dir = crate::paths::run_dir("render-ecds").unwrap();
        let plugin = WasmPlugin::new("default", "upstream-tagger", "/m.wasm")
            .config(&json!({"tag_all_http": true}));
        let sidecar = InboundSidecar::new("server-0", "default")
            .port(InboundPort::grpc("127.0.0.1:30051".parse().unwrap()))
            .wasm(plugin.clone())
            .ecds(&dir);
        sidecar.write_ecds().unwrap();
        let b = sidecar.bootstrap();
        let filter = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"][0];
        assert_eq!(filter["name"], plugin.filter_name());
        assert!(filter.get("typed_config").is_none());
        let source = &filter["config_discovery"];
        assert_eq!(source["type_urls"], json!([WASM_TYPE_URL]));
        let path = source["config_source"]["path_config_source"]["path"]
            .as_str()
            .unwrap();
        let written: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(written["resources"][0]["name"], plugin.filter_name());
        assert_eq!(
            written["resources"][0]["typed_config"],
            plugin.http_filter()["typed_config"]
        );
    }

    #[test]
    fn metadata_name_can_be_left_out() {
        let b = InboundSidecar::new("server-0", "default")
            .metadata_name(None)
            .bootstrap();
        assert!(b["node"]["metadata"].get("NAME").is_none());
        assert_eq!(b["node"]["metadata"]["NAMESPACE"], "default");
    }
}
