//! A server pod's sidecar, inbound side, as an Envoy bootstrap: per port an
//! HCM with the WasmPlugin's filter (if it selects the port) before the
//! router, the inbound route istiod builds (no timeout, no retries, the
//! client's `grpc-timeout` honoured and uncapped, `stream_idle_timeout` off),
//! and the `inbound|<port>||` cluster to the app with the Sidecar's
//! `inboundConnectionPool` (no `lb_policy`: istiod applies only the pool to
//! inbound clusters). HTTP/2 options on the HCM and the cluster only for
//! gRPC/HTTP2 ports, as istiod. Node metadata as istio-agent sets it.
//!
//! istiod serves every inbound port on one listener, `virtualInbound`
//! (15006), choosing a filter chain by original destination port. Without
//! iptables each port needs its own address: the first port's listener is
//! `virtualInbound`, each further port's `virtualInbound_<app port>`, with
//! the same filter chain istiod gives that port (see the crate docs for the
//! other deliberate differences).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::{
    destination_rule::{ClusterPolicy, Direction},
    pods::SERVER_APP,
    router, socket_address,
    wasm_filter::WasmFilter,
    wasm_plugin::{Side, WasmPluginSpec},
};

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
    /// Sidecar listener address; port 0 = let the kernel pick (ask Envoy's
    /// admin API, `harness::envoy::Envoy::listener_addr`).
    pub listen: SocketAddr,
    /// The app's address.
    pub app: SocketAddr,
    pub protocol: AppProtocol,
    /// Whether the sidecar's WasmPlugin filters run on this port (the
    /// WasmPlugin's `match` selects it).
    pub wasm: bool,
}

impl InboundPort {
    /// A gRPC port in front of `app`, listening on 127.0.0.1:0.
    pub fn grpc(app: SocketAddr) -> Self {
        InboundPort {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            app,
            protocol: AppProtocol::Http2,
            wasm: true,
        }
    }

    /// A plain HTTP/1.1 port in front of `app`, listening on 127.0.0.1:0.
    pub fn http(app: SocketAddr) -> Self {
        InboundPort {
            protocol: AppProtocol::Http1,
            ..InboundPort::grpc(app)
        }
    }

    /// Listens on `listen` instead of an ephemeral port.
    pub fn listen(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }

    /// Istio's inbound cluster name: `inbound|<app port>||`.
    pub fn cluster_name(&self) -> String {
        inbound_cluster_name(self.app.port())
    }

    fn hcm(&self, http_filters: &[Value]) -> Value {
        let cluster = self.cluster_name();
        let port = self.app.port();
        let mut filters: Vec<Value> = if self.wasm {
            http_filters.to_vec()
        } else {
            Vec::new()
        };
        filters.push(router());
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": format!("inbound_0.0.0.0_{port}"),
            "codec_type": "AUTO",
            // istiod turns Envoy's 5-minute default off.
            "stream_idle_timeout": "0s",
            "route_config": {
                "name": cluster,
                "virtual_hosts": [{
                    "name": format!("inbound|http|{port}"),
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {
                        "cluster": cluster,
                        "timeout": "0s",
                        // istiod's default inbound route: no stream limit, and the
                        // client's grpc-timeout honoured, uncapped.
                        "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"},
                    }}],
                }],
            },
            "http_filters": filters,
        });
        if self.protocol == AppProtocol::Http2 {
            hcm["http2_protocol_options"] = json!({});
        } else {
            // istiod retries a request the app's connection reset before it
            // was sent, on every inbound port but gRPC's ("does not work
            // well for gRPC streaming": route.go BuildDefaultHTTPInboundRoute).
            hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["retry_policy"] =
                json!({"retry_on": "reset-before-request", "num_retries": 2});
        }
        hcm
    }
}

/// The inbound cluster name istiod gives an app port.
pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
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
    /// Admin address (port 0 = ephemeral; the launcher reads it back).
    pub admin: SocketAddr,
    pub ports: Vec<InboundPort>,
    /// The inbound clusters' policy: the Sidecar's `inboundConnectionPool`.
    pub policy: ClusterPolicy,
    /// WasmPlugin filters, in filter order, before the router.
    pub wasm_filters: Vec<WasmFilter>,
    pub delivery: Delivery,
}

impl InboundSidecar {
    /// A sidecar for pod `pod_name` in `namespace` on 127.0.0.1, Istio's
    /// default inbound policy, no ports, no filters.
    pub fn new(pod_name: &str, namespace: &str) -> Self {
        InboundSidecar {
            pod_name: pod_name.to_owned(),
            namespace: namespace.to_owned(),
            pod_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            metadata_name: Some(pod_name.to_owned()),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            ports: Vec::new(),
            policy: ClusterPolicy::default(),
            wasm_filters: Vec::new(),
            delivery: Delivery::Inline,
        }
    }

    /// Adds an inbound port.
    pub fn port(mut self, port: InboundPort) -> Self {
        self.ports.push(port);
        self
    }

    /// Adds a WasmPlugin's filter (in order, before the router).
    pub fn wasm(mut self, filter: WasmFilter) -> Self {
        self.wasm_filters.push(filter);
        self
    }

    /// Delivers the WasmPlugins by ECDS from files in `dir` (see
    /// [`InboundSidecar::write_ecds`]).
    pub fn ecds(mut self, dir: impl Into<PathBuf>) -> Self {
        self.delivery = Delivery::Ecds(dir.into());
        self
    }

    /// Overrides (or with `None` removes) node metadata `NAME`.
    pub fn metadata_name(mut self, name: Option<&str>) -> Self {
        self.metadata_name = name.map(str::to_owned);
        self
    }

    /// The name of the listener serving `port` (see the module docs).
    pub fn listener_name(&self, port: &InboundPort) -> String {
        match self
            .ports
            .iter()
            .position(|p| p.app == port.app && p.listen == port.listen)
        {
            Some(0) | None => "virtualInbound".to_owned(),
            Some(_) => format!("virtualInbound_{}", port.app.port()),
        }
    }

    /// The ECDS file of `filter` under `dir`.
    pub fn ecds_path(dir: &Path, filter: &WasmFilter) -> PathBuf {
        dir.join(format!("ecds-{}.{}.json", filter.namespace, filter.name))
    }

    /// Writes (or atomically replaces, which Envoy picks up live) the ECDS
    /// files; a no-op for inline delivery.
    pub fn write_ecds(&self) -> std::io::Result<()> {
        let Delivery::Ecds(dir) = &self.delivery else {
            return Ok(());
        };
        for filter in &self.wasm_filters {
            let path = Self::ecds_path(dir, filter);
            let tmp = path.with_extension("json.tmp");
            let text = serde_json::to_string_pretty(&filter.ecds_resource())
                .map_err(std::io::Error::other)?;
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path))?;
        }
        Ok(())
    }

    fn http_filters(&self) -> Vec<Value> {
        self.wasm_filters
            .iter()
            .map(|filter| match &self.delivery {
                Delivery::Inline => filter.http_filter(),
                Delivery::Ecds(dir) => filter.ecds_http_filter(&Self::ecds_path(dir, filter)),
            })
            .collect()
    }

    /// The node: id, cluster and metadata as istio-agent's bootstrap sets them.
    pub fn node(&self) -> Value {
        let ns = &self.namespace;
        let mut metadata = json!({
            "NAMESPACE": ns,
            "INSTANCE_IPS": self.pod_ip.to_string(),
        });
        if let Some(name) = &self.metadata_name {
            metadata["NAME"] = json!(name);
        }
        json!({
            "id": format!("sidecar~{}~{}.{ns}~{ns}.svc.cluster.local", self.pod_ip, self.pod_name),
            "cluster": format!("{SERVER_APP}.{ns}"),
            "metadata": metadata,
        })
    }

    /// The complete bootstrap (with ECDS delivery, also call
    /// [`InboundSidecar::write_ecds`]).
    pub fn bootstrap(&self) -> Value {
        let filters = self.http_filters();
        let listeners: Vec<Value> = self
            .ports
            .iter()
            .map(|port| {
                json!({
                    "name": self.listener_name(port),
                    "address": socket_address(port.listen),
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": port.hcm(&filters),
                    }]}],
                })
            })
            .collect();
        let clusters: Vec<Value> = self
            .ports
            .iter()
            .map(|port| {
                self.policy.envoy_cluster(
                    &port.cluster_name(),
                    Direction::Inbound,
                    &[port.app],
                    port.protocol == AppProtocol::Http2,
                )
            })
            .collect();
        json!({
            "node": self.node(),
            "admin": {"address": socket_address(self.admin)},
            "static_resources": {"listeners": listeners, "clusters": clusters},
        })
    }
}

/// A server pod's sidecar as istiod configures it from our manifests: the
/// Sidecar's inbound pool (`inbound`) on every port, and the WasmPlugin's
/// filter (module at `wasm_file`) on each port its `selector` and `match`
/// select. The local mesh runs this for every server pod, and the filter's
/// in-Envoy tests run it too (with an extra plain-HTTP port): one function,
/// one rendering.
pub fn server_pod(
    pod_name: &str,
    pod_ip: IpAddr,
    admin: SocketAddr,
    ports: Vec<InboundPort>,
    inbound: &ClusterPolicy,
    plugin: &WasmPluginSpec,
    wasm_file: &Path,
) -> InboundSidecar {
    let mut sidecar = InboundSidecar::new(pod_name, "default");
    sidecar.pod_ip = pod_ip;
    sidecar.admin = admin;
    sidecar.policy = inbound.clone();
    // The server side selects by container (target) port.
    sidecar.ports = ports
        .into_iter()
        .map(|port| InboundPort {
            wasm: plugin.applies(Side::Server, port.app.port()),
            ..port
        })
        .collect();
    if sidecar.ports.iter().any(|p| p.wasm) {
        sidecar.wasm_filters.push(plugin.envoy_plugin(wasm_file));
    }
    sidecar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm_filter::WASM_TYPE_URL;

    fn hcm(config: &Value) -> &Value {
        &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    }

    #[test]
    fn inbound_http2_options_only_on_grpc_ports() {
        let render = |port: InboundPort| {
            InboundSidecar::new("server-0", "default")
                .port(port.listen("127.0.0.1:15006".parse().unwrap()))
                .bootstrap()
        };
        let app = "127.0.0.1:30051".parse().unwrap();
        let grpc = render(InboundPort::grpc(app));
        assert_eq!(hcm(&grpc)["http2_protocol_options"], json!({}));
        let http = render(InboundPort::http(app));
        assert!(hcm(&http).get("http2_protocol_options").is_none());
        let options = &http["static_resources"]["clusters"][0]["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"];
        assert!(options.get("http2_protocol_options").is_none(), "{options}");
        for config in [&grpc, &http] {
            assert_eq!(hcm(config)["stream_idle_timeout"], "0s");
        }
    }

    #[test]
    fn inbound_sidecar_routes_each_port_to_its_inbound_cluster() {
        let app: SocketAddr = "127.0.0.1:30051".parse().unwrap();
        let web: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let sidecar = InboundSidecar::new("server-0", "default")
            .port(InboundPort::grpc(app))
            .port(InboundPort::http(web))
            .wasm(WasmFilter::new("default", "upstream-tagger", "/m.wasm"));
        let b = sidecar.bootstrap();
        assert_eq!(b["node"]["metadata"]["NAME"], "server-0");
        assert_eq!(
            b["node"]["id"],
            "sidecar~127.0.0.1~server-0.default~default.svc.cluster.local"
        );
        let listeners = b["static_resources"]["listeners"].as_array().unwrap();
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        assert_eq!(listeners.len(), 2);
        assert_eq!(listeners[0]["name"], "virtualInbound");
        assert_eq!(listeners[1]["name"], "virtualInbound_8080");
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
    fn the_wasm_filter_goes_only_on_ports_the_wasm_plugin_selects() {
        let plugin = crate::wasm_plugin::parse(&json!({
            "kind": "WasmPlugin", "metadata": {"name": "p"},
            "spec": {"match": [{"mode": "SERVER", "ports": [{"number": 30051}]}]},
        }))
        .unwrap();
        let ports = vec![
            InboundPort::grpc("127.0.0.1:30051".parse().unwrap()),
            InboundPort::http("127.0.0.1:8080".parse().unwrap()),
        ];
        let b = server_pod(
            "server-0",
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            "127.0.0.1:0".parse().unwrap(),
            ports,
            &ClusterPolicy::default(),
            &plugin,
            Path::new("/m.wasm"),
        )
        .bootstrap();
        let filters = |i: usize| {
            b["static_resources"]["listeners"][i]["filter_chains"][0]["filters"][0]["typed_config"]
                ["http_filters"]
                .as_array()
                .map(Vec::len)
        };
        assert_eq!((filters(0), filters(1)), (Some(2), Some(1)));
    }

    #[test]
    fn metadata_name_can_be_left_out() {
        let b = InboundSidecar::new("server-0", "default")
            .metadata_name(None)
            .bootstrap();
        assert!(b["node"]["metadata"].get("NAME").is_none());
        assert_eq!(b["node"]["metadata"]["NAMESPACE"], "default");
    }

    #[test]
    fn ecds_delivery_points_the_filter_at_a_file_holding_the_same_config() {
        let dir = std::env::temp_dir().join(format!("sidecar-ecds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plugin = WasmFilter::new("default", "upstream-tagger", "/m.wasm")
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
        std::fs::remove_dir_all(dir).ok();
    }
}
