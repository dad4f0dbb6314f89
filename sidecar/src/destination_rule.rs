//! DestinationRule `trafficPolicy` → the Envoy cluster fields istiod sets
//! (`pilot/pkg/networking/core/cluster_traffic_policy.go`), with Istio's
//! defaults where a field is unset or 0. The spec is read into typed structs
//! that list what this translation models: any other field is refused by
//! name ([`crate::resource`]), never silently dropped.

use std::{fmt, time::Duration};

use serde::{
    Deserialize, Deserializer,
    de::{self, IgnoredAny, Unexpected, Visitor},
};
use serde_json::{Map, Value, json};

use crate::{
    duration::IstioDuration,
    resource::{self, FieldError, Problem},
};

pub use crate::resource::TranslateError;

/// Istio's "unlimited" for circuit-breaker thresholds.
pub const UNLIMITED: u32 = u32::MAX;
/// Istio's default `connect_timeout` (meshConfig.connectTimeout).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The names a DestinationRule `host` may give the server Service from the
/// `default` namespace.
pub const SERVER_HOSTS: [&str; 4] = [
    "server",
    "server.default",
    "server.default.svc",
    "server.default.svc.cluster.local",
];

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

/// The cluster-level policy a DestinationRule (or a Sidecar's
/// `inboundConnectionPool`) produces.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterPolicy {
    /// Envoy `lb_policy` (outbound clusters only: istiod applies only the
    /// connection pool to inbound ones).
    pub lb_policy: &'static str,
    pub connect_timeout: Duration,
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// Only set when > 0 (Istio leaves it unlimited otherwise).
    pub max_requests_per_connection: Option<u32>,
    /// Unset: istiod sends none, and Envoy's default (1h) applies.
    pub idle_timeout: Option<Duration>,
    pub max_connection_duration: Option<Duration>,
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// HTTP/2 clusters only; only set when > 0.
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
            idle_timeout: None,
            max_connection_duration: None,
            tcp_keepalive: None,
            max_concurrent_streams: None,
            http2_keepalive: None,
        }
    }
}

/// A translated DestinationRule.
#[derive(Clone, Debug)]
pub struct Translation {
    pub name: String,
    pub host: String,
    pub policy: ClusterPolicy,
}

/// A DestinationRule's `spec`: the fields the local mesh translates. Any
/// other key (`subsets`, `workloadSelector`, …) is refused by name.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
struct DestinationRuleSpec {
    host: Option<String>,
    /// Visibility only: nothing to translate on one machine.
    #[serde(default, rename = "exportTo")]
    _export_to: Option<IgnoredAny>,
    traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
struct TrafficPolicy {
    load_balancer: Option<LoadBalancer>,
    connection_pool: Option<ConnectionPool>,
}

/// `loadBalancer`: `simple` only (`consistentHash`, `warmup`, … refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct LoadBalancer {
    simple: Option<SimpleLb>,
}

/// `loadBalancer.simple`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum SimpleLb {
    Unspecified,
    LeastConn,
    Random,
    Passthrough,
    RoundRobin,
    LeastRequest,
}

/// `connectionPool` (a DestinationRule's, or a Sidecar's
/// `inboundConnectionPool`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
pub(crate) struct ConnectionPool {
    tcp: Option<TcpSettings>,
    http: Option<HttpSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
struct TcpSettings {
    max_connections: Option<Count>,
    connect_timeout: Option<IstioDuration>,
    tcp_keepalive: Option<TcpKeepaliveSettings>,
    max_connection_duration: Option<IstioDuration>,
    idle_timeout: Option<IstioDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct TcpKeepaliveSettings {
    probes: Option<Count>,
    time: Option<IstioDuration>,
    interval: Option<IstioDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
struct HttpSettings {
    http1_max_pending_requests: Option<Count>,
    http2_max_requests: Option<Count>,
    max_requests_per_connection: Option<Count>,
    max_retries: Option<Count>,
    idle_timeout: Option<IstioDuration>,
    max_concurrent_streams: Option<Count>,
    http2_keep_alive: Option<Http2KeepAliveSettings>,
    /// Read and accepted: on a gRPC port the cluster is HTTP/2 whatever it
    /// says, in istiod (`applyH2Upgrade`) as here.
    #[serde(rename = "h2UpgradePolicy")]
    _h2_upgrade_policy: Option<H2UpgradePolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct Http2KeepAliveSettings {
    interval: Option<IstioDuration>,
    timeout: Option<IstioDuration>,
}

/// `http.h2UpgradePolicy`: every value is accepted (see `HttpSettings`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum H2UpgradePolicy {
    Default,
    DoNotUpgrade,
    Upgrade,
}

/// A count field (`maxConnections`, `probes`, …): a non-negative 32-bit
/// integer.
#[derive(Clone, Copy, Debug)]
struct Count(u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Number;
        impl Visitor<'_> for Number {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-negative 32-bit integer")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Count, E> {
                u32::try_from(n)
                    .map(Count)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(n), &self))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Count, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(n), &self)),
                }
            }
        }
        deserializer.deserialize_u32(Number)
    }
}

/// istiod copies these counts only when > 0: 0 keeps its default.
fn positive(count: Option<Count>) -> Option<u32> {
    count.map(|Count(n)| n).filter(|&n| n > 0)
}

fn duration(d: Option<IstioDuration>) -> Option<Duration> {
    d.map(|IstioDuration(d)| d)
}

/// Translate one DestinationRule (the whole resource, as parsed YAML).
pub fn translate(resource: &Value) -> Result<Translation, TranslateError> {
    const KIND: &str = "DestinationRule";
    let (name, spec): (String, DestinationRuleSpec) = resource::read(resource, KIND)?;
    let fail = |error| TranslateError {
        kind: KIND,
        name: name.clone(),
        error,
    };
    let host = spec
        .host
        .ok_or_else(|| fail(FieldError::new("spec.host", Problem::Missing)))?;
    // Anything else would not reach the server Service's sidecars at all.
    if !SERVER_HOSTS.contains(&host.as_str()) {
        return Err(fail(FieldError::new(
            "spec.host",
            Problem::NotTheServer(host),
        )));
    }
    let mut policy = ClusterPolicy::default();
    if let Some(traffic) = spec.traffic_policy {
        traffic
            .apply(&mut policy)
            .map_err(|e| fail(e.under("spec.trafficPolicy")))?;
    }
    Ok(Translation { name, host, policy })
}

impl TrafficPolicy {
    /// Errors name the field from `trafficPolicy`.
    fn apply(self, policy: &mut ClusterPolicy) -> Result<(), FieldError> {
        if let Some(simple) = self.load_balancer.and_then(|lb| lb.simple) {
            policy.lb_policy = match simple {
                SimpleLb::RoundRobin => "ROUND_ROBIN",
                SimpleLb::LeastRequest | SimpleLb::LeastConn | SimpleLb::Unspecified => {
                    "LEAST_REQUEST"
                }
                SimpleLb::Random => "RANDOM",
                SimpleLb::Passthrough => {
                    return Err(FieldError::new("loadBalancer.simple", Problem::Passthrough));
                }
            };
        }
        if let Some(pool) = self.connection_pool {
            pool.apply(policy).map_err(|e| e.under("connectionPool"))?;
        }
        Ok(())
    }
}

impl ConnectionPool {
    /// `self` → `policy`, as istiod's `applyConnectionPool`. Errors name the
    /// field from the pool.
    pub(crate) fn apply(self, policy: &mut ClusterPolicy) -> Result<(), FieldError> {
        let mut tcp_idle = None;
        if let Some(tcp) = self.tcp {
            if let Some(n) = positive(tcp.max_connections) {
                policy.max_connections = n;
            }
            if let Some(d) = duration(tcp.connect_timeout) {
                policy.connect_timeout = d;
            }
            if let Some(ka) = tcp.tcp_keepalive {
                policy.tcp_keepalive = Some(TcpKeepalive {
                    probes: positive(ka.probes),
                    time: duration(ka.time),
                    interval: duration(ka.interval),
                });
            }
            policy.max_connection_duration = duration(tcp.max_connection_duration);
            tcp_idle = duration(tcp.idle_timeout);
        }
        let mut http_idle = None;
        if let Some(http) = self.http {
            if let Some(n) = positive(http.http1_max_pending_requests) {
                policy.max_pending_requests = n;
            }
            if let Some(n) = positive(http.http2_max_requests) {
                policy.max_requests = n;
            }
            policy.max_requests_per_connection = positive(http.max_requests_per_connection);
            if let Some(n) = positive(http.max_retries) {
                policy.max_retries = n;
            }
            http_idle = duration(http.idle_timeout);
            policy.max_concurrent_streams = positive(http.max_concurrent_streams);
            if let Some(ka) = http.http2_keep_alive {
                // Envoy's KeepaliveSettings.timeout is required: refuse here,
                // by name, rather than render a cluster Envoy rejects.
                let timeout = duration(ka.timeout).ok_or_else(|| {
                    FieldError::new(
                        "http.http2KeepAlive.timeout",
                        Problem::KeepaliveTimeoutRequired,
                    )
                })?;
                policy.http2_keepalive = Some(Http2Keepalive {
                    interval: duration(ka.interval),
                    timeout: Some(timeout),
                });
            }
        }
        // http.idleTimeout wins over tcp.idleTimeout, as in istiod.
        policy.idle_timeout = http_idle.or(tcp_idle).or(policy.idle_timeout);
        Ok(())
    }
}

/// Envoy's JSON form of a duration.
pub(crate) fn envoy_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
    }
}

/// Which side of the sidecar a cluster serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `outbound|<port>||<host>`: the DestinationRule's whole policy.
    Outbound,
    /// `inbound|<port>||` (sidecar → app): istiod applies only the
    /// connection pool (`applyTrafficPolicy`), so no `lb_policy`.
    Inbound,
}

impl ClusterPolicy {
    /// The Envoy cluster (JSON) for `endpoints`, as istiod would build it
    /// (STATIC endpoints: see `envoy_config`'s deliberate differences).
    /// `http2`: a gRPC/h2 cluster.
    pub fn envoy_cluster(
        &self,
        name: &str,
        direction: Direction,
        endpoints: &[std::net::SocketAddr],
        http2: bool,
    ) -> Value {
        let mut common = Map::new();
        if let Some(d) = self.idle_timeout {
            common.insert("idle_timeout".into(), json!(envoy_duration(d)));
        }
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
        let mut options = json!({
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": protocol,
        });
        // As istiod: common options only when one of them is set.
        if !common.is_empty() {
            options["common_http_protocol_options"] = Value::Object(common);
        }
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
            "circuit_breakers": {"thresholds": [{
                "max_connections": self.max_connections,
                "max_pending_requests": self.max_pending_requests,
                "max_requests": self.max_requests,
                "max_retries": self.max_retries,
                // istiod 1.31 (DISABLE_TRACK_REMAINING_CB_METRICS, on by
                // default) leaves the remaining_* gauges off; the oracle says so.
                "track_remaining": false,
            }]},
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options,
            },
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
        });
        if direction == Direction::Outbound {
            cluster["lb_policy"] = json!(self.lb_policy);
        }
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
        translate(&dr(traffic_policy)).expect("translates").policy
    }

    fn refusal(traffic_policy: Value) -> String {
        translate(&dr(traffic_policy))
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn unset_fields_get_istio_defaults() {
        let p = policy(json!({}));
        assert_eq!(p, ClusterPolicy::default());
        assert_eq!(p.lb_policy, "LEAST_REQUEST");
        assert_eq!(p.max_connections, 4_294_967_295);
        assert_eq!(p.connect_timeout, Duration::from_secs(10));
        // istiod sends no idle_timeout unless one is set (Envoy's default 1h applies).
        assert_eq!(p.idle_timeout, None);
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
                p.idle_timeout == Some(Duration::from_secs(300))
            }),
            (
                json!({"tcp": {"idleTimeout": "5m"}, "http": {"idleTimeout": "7s"}}),
                |p| p.idle_timeout == Some(Duration::from_secs(7)),
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

    /// The syntax itself is tested in `duration`; here: a DestinationRule
    /// field takes Istio's forms and names itself when refused.
    #[test]
    fn duration_fields_take_istio_syntax_and_limits() {
        let p = policy(json!({"connectionPool": {"tcp": {"connectTimeout": "1.5s"},
                                                  "http": {"idleTimeout": "1h30m"}}}));
        assert_eq!(p.connect_timeout, Duration::from_millis(1500));
        assert_eq!(p.idle_timeout, Some(Duration::from_secs(5400)));
        for (value, words) in [
            ("10", "invalid duration \"10\""),
            ("0s", "must be greater than 1ms"),
            ("500us", "must be greater than 1ms"),
            ("1.5us", "must be greater than 1ms"),
            ("1.5ms", "only durations to ms precision"),
        ] {
            let err = refusal(json!({"connectionPool": {"tcp": {"connectTimeout": value}}}));
            assert!(
                err.contains("spec.trafficPolicy.connectionPool.tcp.connectTimeout")
                    && err.contains(words),
                "{value}: {err}"
            );
        }
    }

    /// istiod copies counts only when > 0 (`applyConnectionPool`): a 0 keeps
    /// its default, never a 0 that would overflow every request.
    #[test]
    fn zero_counts_keep_istio_defaults() {
        let p = policy(json!({"connectionPool": {
            "tcp": {"maxConnections": 0},
            "http": {"http1MaxPendingRequests": 0, "http2MaxRequests": 0,
                     "maxRequestsPerConnection": 7, "maxRetries": 0, "maxConcurrentStreams": 0},
        }}));
        assert_eq!(p.max_requests_per_connection, Some(7));
        assert_eq!(
            (
                p.max_connections,
                p.max_pending_requests,
                p.max_requests,
                p.max_retries
            ),
            (UNLIMITED, UNLIMITED, 4_294_967_295, UNLIMITED)
        );
        assert_eq!(p.max_concurrent_streams, None);
        let c = p.envoy_cluster("c", Direction::Outbound, &[], true);
        assert_eq!(
            c["circuit_breakers"]["thresholds"][0]["max_requests"],
            4_294_967_295u64
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
    fn fields_the_mesh_does_not_translate_are_refused_by_name() {
        for (traffic_policy, field) in [
            (
                json!({"outlierDetection": {"consecutive5xxErrors": 1}}),
                "spec.trafficPolicy.outlierDetection",
            ),
            (
                json!({"loadBalancer": {"consistentHash": {"httpHeaderName": "x"}}}),
                "spec.trafficPolicy.loadBalancer.consistentHash",
            ),
            (
                json!({"loadBalancer": {"simple": "ROUND_ROBIN", "warmupDurationSecs": "10s"}}),
                "spec.trafficPolicy.loadBalancer.warmupDurationSecs",
            ),
            (
                json!({"loadBalancer": {"warmup": {"duration": "10s"}}}),
                "spec.trafficPolicy.loadBalancer.warmup",
            ),
            (
                json!({"loadBalancer": {"simple": "PASSTHROUGH"}}),
                "spec.trafficPolicy.loadBalancer.simple",
            ),
            (
                json!({"retryBudget": {"percent": 20}}),
                "spec.trafficPolicy.retryBudget",
            ),
            (
                json!({"connectionPool": {"http": {"useClientProtocol": true}}}),
                "spec.trafficPolicy.connectionPool.http.useClientProtocol",
            ),
            (
                json!({"connectionPool": {"tcp": {"noSuchField": 1}}}),
                "spec.trafficPolicy.connectionPool.tcp.noSuchField",
            ),
            (
                json!({"tls": {"mode": "ISTIO_MUTUAL"}}),
                "spec.trafficPolicy.tls",
            ),
        ] {
            let err = refusal(traffic_policy.clone());
            assert!(
                err.contains(field) && err.contains("refused rather than dropped"),
                "{traffic_policy}: {err}"
            );
        }
        let mut with_subsets = dr(json!({}));
        with_subsets["spec"]["subsets"] = json!([{"name": "v1"}]);
        let err = translate(&with_subsets).unwrap_err().to_string();
        assert!(err.contains("spec.subsets"), "{err}");
        // h2UpgradePolicy has no effect on a gRPC port, in istiod as here.
        let p = policy(json!({"connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE"}}}));
        assert_eq!(p, ClusterPolicy::default());
    }

    #[test]
    fn a_host_other_than_the_server_service_is_refused() {
        let mut other = dr(json!({}));
        other["spec"]["host"] = json!("reviews");
        let err = translate(&other).unwrap_err().to_string();
        assert!(
            err.contains("spec.host") && err.contains("reviews"),
            "{err}"
        );
        let mut short = dr(json!({}));
        short["spec"]["host"] = json!("server");
        assert_eq!(translate(&short).unwrap().host, "server");
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
        let c = p.envoy_cluster("outbound|30051||server", Direction::Outbound, &[addr], true);
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
        assert_eq!(t["track_remaining"], false);
        let opts = &c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(
            opts["common_http_protocol_options"]["max_requests_per_connection"],
            1
        );
        // No idle timeout set: istiod sends none (Envoy's default 1h applies).
        assert!(
            opts["common_http_protocol_options"]
                .get("idle_timeout")
                .is_none()
        );
        let inbound = p.envoy_cluster("inbound|30051||", Direction::Inbound, &[addr], true);
        assert!(inbound.get("lb_policy").is_none(), "{inbound}");
        assert!(opts["explicit_http_config"]["http2_protocol_options"].is_object());
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["port_value"],
            15006
        );
        assert_eq!(envoy_duration(Duration::from_millis(250)), "0.250000000s");
    }
}
