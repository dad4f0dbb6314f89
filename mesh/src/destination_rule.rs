//! DestinationRule `trafficPolicy` → the Envoy cluster fields istiod sets
//! (`pilot/pkg/networking/core/cluster_traffic_policy.go`), with Istio's
//! defaults where a field is unset. Anything this translation does not model
//! becomes a warning naming the field: never silently dropped.

use std::time::Duration;

use serde_json::{Map, Value, json};

/// Istio's "unlimited" for circuit-breaker thresholds.
pub const UNLIMITED: u32 = u32::MAX;
/// Istio's default `connect_timeout` (meshConfig.connectTimeout).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Istio's default pool idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, PartialEq)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Http2Keepalive {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
}

/// The cluster-level policy a DestinationRule produces.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterPolicy {
    /// Envoy `lb_policy`.
    pub lb_policy: &'static str,
    pub connect_timeout: Duration,
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// Only set when > 0 (Istio leaves it unlimited otherwise).
    pub max_requests_per_connection: Option<u32>,
    pub idle_timeout: Duration,
    pub max_connection_duration: Option<Duration>,
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// HTTP/2 clusters only.
    pub max_concurrent_streams: Option<u32>,
    pub http2_keepalive: Option<Http2Keepalive>,
}

impl Default for ClusterPolicy {
    /// What istiod generates when no DestinationRule applies.
    fn default() -> Self {
        Self {
            lb_policy: "LEAST_REQUEST",
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_connections: UNLIMITED,
            max_pending_requests: UNLIMITED,
            max_requests: UNLIMITED,
            max_retries: UNLIMITED,
            max_requests_per_connection: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connection_duration: None,
            tcp_keepalive: None,
            max_concurrent_streams: None,
            http2_keepalive: None,
        }
    }
}

/// A translated DestinationRule: the policy plus what was not translated.
#[derive(Clone, Debug)]
pub struct Translation {
    pub name: String,
    pub host: String,
    pub policy: ClusterPolicy,
    /// One line per field the local mesh does not model, naming it.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("DestinationRule {name}: {field}: {problem}")]
pub struct TranslateError {
    name: String,
    field: String,
    problem: String,
}

/// Reads one JSON object, remembering which keys were used so the rest can be
/// reported as unsupported.
struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
    used: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(path: impl Into<String>, value: &'a Value) -> Result<Self, (String, String)> {
        let path = path.into();
        match value.as_object() {
            Some(map) => Ok(Self {
                path,
                map,
                used: Vec::new(),
            }),
            None => Err((path, "must be an object".into())),
        }
    }

    fn field(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn object(&mut self, key: &'static str) -> Result<Option<Fields<'a>>, (String, String)> {
        let path = self.field(key);
        self.get(key).map(|v| Fields::new(path, v)).transpose()
    }

    fn u32(&mut self, key: &'static str) -> Result<Option<u32>, (String, String)> {
        let path = self.field(key);
        self.get(key)
            .map(|v| {
                v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or((
                    path,
                    format!("expected a non-negative 32-bit integer, got {v}"),
                ))
            })
            .transpose()
    }

    fn duration(&mut self, key: &'static str) -> Result<Option<Duration>, (String, String)> {
        let path = self.field(key);
        self.get(key)
            .map(|v| {
                let text = v.as_str().ok_or_else(|| {
                    (path.clone(), format!("expected a duration string, got {v}"))
                })?;
                // Istio's CRDs take Go's `time.ParseDuration` syntax (`1.5s`,
                // `1h30m`), which is what the clients' parser reads.
                clients::duration::parse_duration(text)
                    .map_err(|e| (path, format!("invalid duration {text:?}: {e}")))
            })
            .transpose()
    }

    fn str(&mut self, key: &'static str) -> Result<Option<&'a str>, (String, String)> {
        let path = self.field(key);
        self.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or((path, format!("expected a string, got {v}")))
            })
            .transpose()
    }

    /// Unused keys become warnings.
    fn finish(self, warnings: &mut Vec<String>) {
        for key in self.map.keys() {
            if !self.used.iter().any(|u| u == key) {
                warnings.push(format!(
                    "{}.{key} is not modelled by the local mesh and was ignored",
                    self.path
                ));
            }
        }
    }
}

/// Translate one DestinationRule (the whole resource, as parsed YAML).
pub fn translate(resource: &Value) -> Result<Translation, TranslateError> {
    let name = resource
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_owned();
    let fail = |(field, problem): (String, String)| TranslateError {
        name: name.clone(),
        field,
        problem,
    };
    if resource.get("kind").and_then(Value::as_str) != Some("DestinationRule") {
        return Err(fail(("kind".into(), "expected DestinationRule".into())));
    }
    let spec = resource
        .get("spec")
        .ok_or_else(|| fail(("spec".into(), "missing".into())))?;
    let mut warnings = Vec::new();
    let mut spec = Fields::new("spec", spec).map_err(fail)?;
    let host = spec
        .str("host")
        .map_err(fail)?
        .ok_or_else(|| fail(("spec.host".into(), "missing".into())))?
        .to_owned();
    spec.get("exportTo"); // visibility only: nothing to translate on one machine
    let mut policy = ClusterPolicy::default();
    if let Some(traffic) = spec.object("trafficPolicy").map_err(fail)? {
        translate_traffic_policy(traffic, &mut policy, &mut warnings).map_err(fail)?;
    }
    spec.finish(&mut warnings);
    Ok(Translation {
        name,
        host,
        policy,
        warnings,
    })
}

fn translate_traffic_policy(
    mut traffic: Fields<'_>,
    policy: &mut ClusterPolicy,
    warnings: &mut Vec<String>,
) -> Result<(), (String, String)> {
    if let Some(mut lb) = traffic.object("loadBalancer")? {
        if let Some(simple) = lb.str("simple")? {
            policy.lb_policy = match simple {
                "ROUND_ROBIN" => "ROUND_ROBIN",
                "LEAST_REQUEST" | "LEAST_CONN" => "LEAST_REQUEST",
                "RANDOM" => "RANDOM",
                "UNSPECIFIED" => "LEAST_REQUEST",
                "PASSTHROUGH" => {
                    warnings.push(format!(
                        "{}: PASSTHROUGH (original destination) needs iptables; kept LEAST_REQUEST",
                        lb.field("simple")
                    ));
                    "LEAST_REQUEST"
                }
                other => {
                    return Err((lb.field("simple"), format!("unknown algorithm {other:?}")));
                }
            };
        }
        lb.finish(warnings);
    }
    if let Some(mut pool) = traffic.object("connectionPool")? {
        let mut tcp_idle = None;
        if let Some(mut tcp) = pool.object("tcp")? {
            if let Some(n) = tcp.u32("maxConnections")? {
                policy.max_connections = n;
            }
            if let Some(d) = tcp.duration("connectTimeout")? {
                policy.connect_timeout = d;
            }
            if let Some(mut ka) = tcp.object("tcpKeepalive")? {
                policy.tcp_keepalive = Some(TcpKeepalive {
                    probes: ka.u32("probes")?,
                    time: ka.duration("time")?,
                    interval: ka.duration("interval")?,
                });
                ka.finish(warnings);
            }
            policy.max_connection_duration = tcp.duration("maxConnectionDuration")?;
            tcp_idle = tcp.duration("idleTimeout")?;
            tcp.finish(warnings);
        }
        let mut http_idle = None;
        if let Some(mut http) = pool.object("http")? {
            if let Some(n) = http.u32("http1MaxPendingRequests")? {
                policy.max_pending_requests = n;
            }
            if let Some(n) = http.u32("http2MaxRequests")? {
                policy.max_requests = n;
            }
            policy.max_requests_per_connection =
                http.u32("maxRequestsPerConnection")?.filter(|&n| n > 0);
            if let Some(n) = http.u32("maxRetries")? {
                policy.max_retries = n;
            }
            http_idle = http.duration("idleTimeout")?;
            policy.max_concurrent_streams = http.u32("maxConcurrentStreams")?;
            if let Some(mut ka) = http.object("http2KeepAlive")? {
                let interval = ka.duration("interval")?;
                // Envoy's KeepaliveSettings.timeout is required: refuse here,
                // by name, rather than render a cluster Envoy rejects.
                let timeout = ka.duration("timeout")?.ok_or_else(|| {
                    (
                        ka.field("timeout"),
                        "required (Envoy's connection_keepalive needs a PING timeout)".to_owned(),
                    )
                })?;
                policy.http2_keepalive = Some(Http2Keepalive {
                    interval,
                    timeout: Some(timeout),
                });
                ka.finish(warnings);
            }
            // These only matter for HTTP/1.1 upstreams; gRPC clusters are h2.
            for key in ["h2UpgradePolicy", "useClientProtocol"] {
                if http.get(key).is_some() {
                    warnings.push(format!(
                        "{}: has no effect on the gRPC (HTTP/2) cluster the local mesh builds",
                        http.field(key)
                    ));
                }
            }
            http.finish(warnings);
        }
        // http.idleTimeout wins over tcp.idleTimeout, as in istiod.
        if let Some(idle) = http_idle.or(tcp_idle) {
            policy.idle_timeout = idle;
        }
        pool.finish(warnings);
    }
    traffic.finish(warnings);
    Ok(())
}

/// Envoy's JSON form of a duration.
fn envoy_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
    }
}

impl ClusterPolicy {
    /// The Envoy cluster (JSON) for `endpoints`, as istiod would build it
    /// with STATIC endpoints instead of EDS. `http2`: a gRPC/h2 cluster.
    pub fn envoy_cluster(
        &self,
        name: &str,
        endpoints: &[std::net::SocketAddr],
        http2: bool,
    ) -> Value {
        let mut common = Map::new();
        common.insert(
            "idle_timeout".into(),
            json!(envoy_duration(self.idle_timeout)),
        );
        if let Some(n) = self.max_requests_per_connection {
            common.insert("max_requests_per_connection".into(), json!(n));
        }
        if let Some(d) = self.max_connection_duration {
            common.insert("max_connection_duration".into(), json!(envoy_duration(d)));
        }
        let protocol = if http2 {
            let mut h2 = Map::new();
            if let Some(n) = self.max_concurrent_streams {
                h2.insert("max_concurrent_streams".into(), json!(n));
            }
            if let Some(ka) = &self.http2_keepalive {
                let mut keepalive = Map::new();
                if let Some(d) = ka.interval {
                    keepalive.insert("interval".into(), json!(envoy_duration(d)));
                }
                if let Some(d) = ka.timeout {
                    keepalive.insert("timeout".into(), json!(envoy_duration(d)));
                }
                h2.insert("connection_keepalive".into(), Value::Object(keepalive));
            }
            json!({"http2_protocol_options": h2})
        } else {
            json!({"http_protocol_options": {}})
        };
        let lb_endpoints: Vec<Value> = endpoints
            .iter()
            .map(|addr| {
                json!({"endpoint": {"address": {"socket_address": {
                    "address": addr.ip().to_string(), "port_value": addr.port()}}}})
            })
            .collect();
        let mut cluster = json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": envoy_duration(self.connect_timeout),
            "lb_policy": self.lb_policy,
            "circuit_breakers": {"thresholds": [{
                "max_connections": self.max_connections,
                "max_pending_requests": self.max_pending_requests,
                "max_requests": self.max_requests,
                "max_retries": self.max_retries,
                "track_remaining": true,
            }]},
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "common_http_protocol_options": common,
                    "explicit_http_config": protocol,
                }
            },
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
        });
        if let Some(ka) = &self.tcp_keepalive {
            let mut keepalive = Map::new();
            if let Some(n) = ka.probes {
                keepalive.insert("keepalive_probes".into(), json!(n));
            }
            if let Some(d) = ka.time {
                keepalive.insert("keepalive_time".into(), json!(d.as_secs()));
            }
            if let Some(d) = ka.interval {
                keepalive.insert("keepalive_interval".into(), json!(d.as_secs()));
            }
            cluster["upstream_connection_options"] = json!({"tcp_keepalive": keepalive});
        }
        cluster
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dr(traffic_policy: Value) -> Value {
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "server"},
            "spec": {"host": "server.default.svc.cluster.local", "trafficPolicy": traffic_policy},
        })
    }

    fn policy(traffic_policy: Value) -> ClusterPolicy {
        let t = translate(&dr(traffic_policy)).expect("translates");
        assert!(
            t.warnings.is_empty(),
            "unexpected warnings {:?}",
            t.warnings
        );
        t.policy
    }

    #[test]
    fn unset_fields_get_istio_defaults() {
        let p = policy(json!({}));
        assert_eq!(p, ClusterPolicy::default());
        assert_eq!(p.lb_policy, "LEAST_REQUEST");
        assert_eq!(p.max_connections, 4_294_967_295);
        assert_eq!(p.connect_timeout, Duration::from_secs(10));
        assert_eq!(p.idle_timeout, Duration::from_secs(3600));
        assert_eq!(p.max_requests_per_connection, None);
    }

    #[test]
    fn each_connection_pool_field_maps_to_its_cluster_field() {
        type Check = fn(&ClusterPolicy) -> bool;
        let cases: &[(Value, Check)] = &[
            (json!({"tcp": {"maxConnections": 1}}), |p| {
                p.max_connections == 1
            }),
            (json!({"tcp": {"connectTimeout": "250ms"}}), |p| {
                p.connect_timeout == Duration::from_millis(250)
            }),
            (
                json!({"tcp": {"tcpKeepalive": {"probes": 3, "time": "7200s", "interval": "75s"}}}),
                |p| {
                    p.tcp_keepalive
                        == Some(TcpKeepalive {
                            probes: Some(3),
                            time: Some(Duration::from_secs(7200)),
                            interval: Some(Duration::from_secs(75)),
                        })
                },
            ),
            (json!({"tcp": {"maxConnectionDuration": "30m"}}), |p| {
                p.max_connection_duration == Some(Duration::from_secs(1800))
            }),
            (json!({"tcp": {"idleTimeout": "5m"}}), |p| {
                p.idle_timeout == Duration::from_secs(300)
            }),
            (
                json!({"tcp": {"idleTimeout": "5m"}, "http": {"idleTimeout": "7s"}}),
                |p| p.idle_timeout == Duration::from_secs(7),
            ),
            (json!({"http": {"http1MaxPendingRequests": 1}}), |p| {
                p.max_pending_requests == 1
            }),
            (json!({"http": {"http2MaxRequests": 50}}), |p| {
                p.max_requests == 50
            }),
            (json!({"http": {"maxRequestsPerConnection": 100}}), |p| {
                p.max_requests_per_connection == Some(100)
            }),
            (json!({"http": {"maxRequestsPerConnection": 0}}), |p| {
                p.max_requests_per_connection.is_none()
            }),
            (json!({"http": {"maxRetries": 2}}), |p| p.max_retries == 2),
            (json!({"http": {"maxConcurrentStreams": 8}}), |p| {
                p.max_concurrent_streams == Some(8)
            }),
            (
                json!({"http": {"http2KeepAlive": {"interval": "10s", "timeout": "3s"}}}),
                |p| {
                    p.http2_keepalive
                        == Some(Http2Keepalive {
                            interval: Some(Duration::from_secs(10)),
                            timeout: Some(Duration::from_secs(3)),
                        })
                },
            ),
        ];
        for (pool, check) in cases {
            let p = policy(json!({"connectionPool": pool}));
            assert!(check(&p), "{pool} gave {p:?}");
        }
    }

    /// The syntax itself is the clients' parser's (tested there); here: a
    /// DestinationRule field takes Istio's forms and names itself when bad.
    #[test]
    fn duration_fields_take_istio_syntax() {
        let p = policy(json!({"connectionPool": {"tcp": {"connectTimeout": "1.5s"},
                                                  "http": {"idleTimeout": "1h30m"}}}));
        assert_eq!(p.connect_timeout, Duration::from_millis(1500));
        assert_eq!(p.idle_timeout, Duration::from_secs(5400));
        let err = translate(&dr(
            json!({"connectionPool": {"tcp": {"connectTimeout": "10"}}}),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("spec.trafficPolicy.connectionPool.tcp.connectTimeout")
                && err.contains("invalid duration \"10\""),
            "{err}"
        );
    }

    #[test]
    fn load_balancer_names_map_to_envoy_policies() {
        for (simple, envoy) in [
            ("ROUND_ROBIN", "ROUND_ROBIN"),
            ("LEAST_REQUEST", "LEAST_REQUEST"),
            ("LEAST_CONN", "LEAST_REQUEST"),
            ("RANDOM", "RANDOM"),
            ("UNSPECIFIED", "LEAST_REQUEST"),
        ] {
            let p = policy(json!({"loadBalancer": {"simple": simple}}));
            assert_eq!(p.lb_policy, envoy, "{simple}");
        }
    }

    #[test]
    fn unsupported_fields_are_warned_about_by_name() {
        let t = translate(&dr(json!({
            "outlierDetection": {"consecutive5xxErrors": 1},
            "loadBalancer": {"simple": "ROUND_ROBIN", "warmupDurationSecs": "10s"},
            "connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE"}},
        })))
        .unwrap();
        let all = t.warnings.join("\n");
        for field in [
            "spec.trafficPolicy.outlierDetection",
            "spec.trafficPolicy.loadBalancer.warmupDurationSecs",
            "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
        ] {
            assert!(all.contains(field), "{field} not named in {all}");
        }
        assert_eq!(
            t.policy.lb_policy, "ROUND_ROBIN",
            "supported fields still apply"
        );
    }

    #[test]
    fn malformed_values_are_errors_naming_the_field() {
        for (pool, field) in [
            (
                json!({"http": {"http2MaxRequests": "many"}}),
                "http.http2MaxRequests",
            ),
            (
                json!({"http": {"http2MaxRequests": -1}}),
                "http.http2MaxRequests",
            ),
            (
                json!({"tcp": {"connectTimeout": "soon"}}),
                "tcp.connectTimeout",
            ),
            (json!({"tcp": 7}), "connectionPool.tcp"),
        ] {
            let err = translate(&dr(json!({"connectionPool": pool})))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
        let err = translate(&json!({"kind": "VirtualService"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected DestinationRule"), "{err}");
    }

    #[test]
    fn envoy_cluster_carries_the_policy() {
        let p = policy(json!({
            "loadBalancer": {"simple": "ROUND_ROBIN"},
            "connectionPool": {"tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1, "http2MaxRequests": 1, "maxRequestsPerConnection": 1}},
        }));
        let addr: std::net::SocketAddr = "127.0.0.2:15006".parse().unwrap();
        let c = p.envoy_cluster("outbound|30051||server", &[addr], true);
        assert_eq!(c["lb_policy"], "ROUND_ROBIN");
        assert_eq!(c["connect_timeout"], "10s");
        let t = &c["circuit_breakers"]["thresholds"][0];
        assert_eq!(
            (
                t["max_connections"].as_u64(),
                t["max_pending_requests"].as_u64(),
                t["max_requests"].as_u64()
            ),
            (Some(1), Some(1), Some(1))
        );
        assert_eq!(t["max_retries"], 4_294_967_295u64);
        assert_eq!(t["track_remaining"], true);
        let opts = &c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(
            opts["common_http_protocol_options"]["max_requests_per_connection"],
            1
        );
        assert_eq!(
            opts["common_http_protocol_options"]["idle_timeout"],
            "3600s"
        );
        assert!(opts["explicit_http_config"]["http2_protocol_options"].is_object());
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["port_value"],
            15006
        );
        assert_eq!(envoy_duration(Duration::from_millis(250)), "0.250000000s");
    }
}
