//! Sidecar `inboundConnectionPool` → the server sidecars' inbound cluster
//! (sidecar → app). istiod lets it override the connection pool it would
//! otherwise take from the DestinationRule of the first Service selecting
//! the pod on that port (`buildInboundCluster`); `istio/sidecar.yaml` sets
//! one so that choice never depends on Service creation order.

use serde_json::Value;

use crate::{
    destination_rule::{
        self, ClusterPolicy, FieldError, Fields, TranslateError, translate_connection_pool,
    },
    pods::SERVER_POD_LABELS,
};

/// A translated Sidecar.
#[derive(Clone, Debug)]
pub struct Translation {
    pub name: String,
    /// The inbound cluster's policy: Istio's defaults plus the pool.
    pub inbound: ClusterPolicy,
}

pub fn translate(resource: &Value) -> Result<Translation, TranslateError> {
    let name = destination_rule::named(resource, "Sidecar")?;
    let fail = |(field, problem): FieldError| TranslateError {
        kind: "Sidecar",
        name: name.clone(),
        field,
        problem,
    };
    let spec = resource
        .get("spec")
        .ok_or_else(|| fail(("spec".into(), "missing".into())))?;
    let mut spec = Fields::new("spec", spec).map_err(fail)?;
    if let Some(mut selector) = spec.object("workloadSelector").map_err(fail)? {
        let path = selector.field("labels");
        let labels = selector
            .get("labels")
            .ok_or_else(|| fail((path.clone(), "missing".into())))?;
        check_selects_server_pods(&path, labels).map_err(fail)?;
        selector.finish().map_err(fail)?;
    }
    let mut inbound = ClusterPolicy::default();
    if let Some(pool) = spec.object("inboundConnectionPool").map_err(fail)? {
        translate_connection_pool(pool, &mut inbound).map_err(fail)?;
    }
    spec.finish().map_err(fail)?;
    Ok(Translation { name, inbound })
}

/// A Sidecar for other pods would leave the server sidecars on defaults
/// while the file says otherwise: refused, naming the label.
fn check_selects_server_pods(path: &str, labels: &Value) -> Result<(), FieldError> {
    let labels = labels
        .as_object()
        .ok_or_else(|| (path.to_owned(), "must be an object".to_owned()))?;
    for (key, value) in labels {
        let matches = SERVER_POD_LABELS
            .iter()
            .any(|(k, v)| k == key && value.as_str() == Some(*v));
        if !matches {
            return Err((
                format!("{path}.{key}"),
                format!(
                    "selects no server pod (they are labelled {})",
                    SERVER_POD_LABELS
                        .iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
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
