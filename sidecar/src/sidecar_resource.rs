//! Sidecar `inboundConnectionPool` → the server sidecars' inbound cluster
//! (sidecar → app). istiod lets it override the connection pool it would
//! otherwise take from the DestinationRule of the first Service selecting
//! the pod on that port (`buildInboundCluster`); `istio/sidecar.yaml` sets
//! one so that choice never depends on Service creation order.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::{
    destination_rule::{ClusterPolicy, ConnectionPool},
    pods::SERVER_POD_LABELS,
    resource::{self, FieldError, Problem, TranslateError},
};

/// A translated Sidecar.
#[derive(Clone, Debug)]
pub struct Translation {
    pub name: String,
    /// The inbound cluster's policy: Istio's defaults plus the pool.
    pub inbound: ClusterPolicy,
}

/// A Sidecar's `spec`: what the local mesh models. `egress`, `ingress`,
/// `outboundTrafficPolicy`, … are refused by name.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "an object")]
struct SidecarSpec {
    workload_selector: Option<WorkloadSelector>,
    inbound_connection_pool: Option<ConnectionPool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct WorkloadSelector {
    labels: Option<BTreeMap<String, String>>,
}

pub fn translate(resource: &Value) -> Result<Translation, TranslateError> {
    const KIND: &str = "Sidecar";
    let (name, spec): (String, SidecarSpec) = resource::read(resource, KIND)?;
    let fail = |error| TranslateError {
        kind: KIND,
        name: name.clone(),
        error,
    };
    if let Some(selector) = spec.workload_selector {
        let path = "spec.workloadSelector.labels";
        let labels = selector
            .labels
            .ok_or_else(|| fail(FieldError::new(path, Problem::Missing)))?;
        check_selects_server_pods(&labels).map_err(|e| fail(e.under(path)))?;
    }
    let mut inbound = ClusterPolicy::default();
    if let Some(pool) = spec.inbound_connection_pool {
        pool.apply(&mut inbound)
            .map_err(|e| fail(e.under("spec.inboundConnectionPool")))?;
    }
    Ok(Translation { name, inbound })
}

/// A Sidecar for other pods would leave the server sidecars on defaults
/// while the file says otherwise: refused, naming the label.
fn check_selects_server_pods(labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    for (key, value) in labels {
        if !SERVER_POD_LABELS
            .iter()
            .any(|(k, v)| k == key && value == v)
        {
            return Err(FieldError::new(key.clone(), Problem::SelectsNoServerPod));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn sidecar(spec: Value) -> Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
               "metadata": {"name": "server"}, "spec": spec})
    }

    #[test]
    fn inbound_connection_pool_sets_the_inbound_policy() {
        let t = translate(&sidecar(json!({
            "workloadSelector": {"labels": {"app": "server"}},
            "inboundConnectionPool": {"tcp": {"connectTimeout": "3s"},
                                      "http": {"http2MaxRequests": 0, "maxRequestsPerConnection": 5}},
        })))
        .unwrap();
        assert_eq!(t.inbound.connect_timeout, Duration::from_secs(3));
        assert_eq!(t.inbound.max_requests, u32::MAX, "0 keeps the default");
        assert_eq!(t.inbound.max_requests_per_connection, Some(5));
        let empty = translate(&sidecar(json!({}))).unwrap();
        assert_eq!(empty.inbound, ClusterPolicy::default());
    }

    #[test]
    fn what_the_mesh_does_not_model_is_refused_by_name() {
        for (spec, field) in [
            (
                json!({"workloadSelector": {"labels": {"app": "client-grpc"}}}),
                "spec.workloadSelector.labels.app",
            ),
            (json!({"egress": [{"hosts": ["./*"]}]}), "spec.egress"),
            (
                json!({"ingress": [{"port": {"number": 30051}}]}),
                "spec.ingress",
            ),
            (
                json!({"inboundConnectionPool": {"tcp": {"connectTimeout": "0s"}}}),
                "spec.inboundConnectionPool.tcp.connectTimeout",
            ),
        ] {
            let err = translate(&sidecar(spec.clone())).unwrap_err().to_string();
            assert!(
                err.starts_with("Sidecar server: ") && err.contains(field),
                "{spec}: {err}"
            );
        }
    }
}
