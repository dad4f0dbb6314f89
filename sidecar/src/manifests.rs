//! Reads our own `istio/` manifests: the local mesh runs exactly what users
//! apply to a cluster.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize as _;
use serde_json::Value;

use crate::{SidecarPolicies, destination_rule, sidecar_resource, wasm_plugin};

/// The DestinationRule experiments, by the name of their file in
/// `istio/destinationrules/` (and of their `make dr-*` target).
pub const EXPERIMENTS: [&str; 3] = ["reuse", "one-per-conn", "tight"];

/// Where the manifests are: `--istio-dir`, else `./istio`, else the checkout
/// this binary was built from.
pub fn istio_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_owned();
    }
    let here = PathBuf::from("istio");
    if here.join("wasmplugin.yaml").exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../istio")
}

/// Every YAML document in a file, as JSON values.
pub fn load_yaml(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc)
            .with_context(|| {
                format!(
                    "{} is not valid YAML (fix the line named below; `kubectl apply --dry-run=client -f {0}` \
                     shows the same, or point --istio-dir at a good copy)",
                    path.display()
                )
            })?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn one_of_kind(path: &Path, kind: &str) -> anyhow::Result<Value> {
    let docs = load_yaml(path)?;
    let mut found = docs
        .into_iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some(kind));
    let Some(first) = found.next() else {
        bail!("{} holds no {kind}", path.display());
    };
    if found.next().is_some() {
        bail!("{} holds more than one {kind}", path.display());
    }
    Ok(first)
}

pub fn wasm_plugin(dir: &Path) -> anyhow::Result<wasm_plugin::WasmPluginSpec> {
    let path = dir.join("wasmplugin.yaml");
    wasm_plugin::parse(&one_of_kind(&path, "WasmPlugin")?)
        .with_context(|| path.display().to_string())
}

pub fn destination_rule(
    dir: &Path,
    experiment: &str,
) -> anyhow::Result<destination_rule::Translation> {
    let path = dir
        .join("destinationrules")
        .join(format!("{experiment}.yaml"));
    if experiment.contains(['/', '\\']) || !path.is_file() {
        bail!(
            "unknown experiment {experiment:?}: no {} (experiments in {}: none, {})",
            path.display(),
            dir.display(),
            experiments(dir).join(", ")
        );
    }
    destination_rule::translate(&one_of_kind(&path, "DestinationRule")?)
        .with_context(|| path.display().to_string())
}

/// The DestinationRule files in `dir/destinationrules/`, by name without
/// `.yaml`, sorted.
pub fn experiments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("destinationrules"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".yaml")
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// Where the server pods' Sidecar lives.
pub const SIDECAR_FILE: &str = "sidecar.yaml";

/// The server sidecars' inbound policy from `dir/sidecar.yaml`; without that
/// file, Istio's defaults and a note saying so.
pub fn inbound_policy(
    dir: &Path,
) -> anyhow::Result<(destination_rule::ClusterPolicy, Option<String>)> {
    let path = dir.join(SIDECAR_FILE);
    if !path.exists() {
        return Ok((
            Default::default(),
            Some(format!(
                "no {}: the server sidecars' inbound cluster gets Istio's defaults (on a cluster, \
                 istiod would take the connectionPool of the DestinationRule of whichever Service \
                 it lists first for the pod's port)",
                path.display()
            )),
        ));
    }
    let t = sidecar_resource::translate(&one_of_kind(&path, "Sidecar")?)
        .with_context(|| path.display().to_string())?;
    Ok((t.inbound, None))
}

/// An experiment's sidecar policies: `none` (no DestinationRule) or the name
/// of a file in `dir/destinationrules/`; plus notes for the user.
pub fn experiment(dir: &Path, name: &str) -> anyhow::Result<(SidecarPolicies, Vec<String>)> {
    let outbound = match name {
        "none" => Default::default(),
        name => destination_rule(dir, name)?.policy,
    };
    let (inbound, note) = inbound_policy(dir)?;
    Ok((
        SidecarPolicies { outbound, inbound },
        note.into_iter().collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_manifests_translate_cleanly() {
        let dir = istio_dir(None);
        let plugin = wasm_plugin(&dir).unwrap();
        assert_eq!(plugin.plugin_name, "upstream-tagger");
        use crate::wasm_plugin::Side;
        assert!(plugin.applies(Side::Server, 30051) && !plugin.applies(Side::Client, 30051));
        assert_eq!(plugin.host_env_keys, ["POD_NAME"]);
        assert!(plugin.warnings.is_empty(), "{:?}", plugin.warnings);
        let mut expected = EXPERIMENTS.map(String::from).to_vec();
        expected.sort();
        assert_eq!(experiments(&dir), expected);
        for experiment in EXPERIMENTS {
            destination_rule(&dir, experiment).unwrap();
        }
        // The inbound pool comes from istio/sidecar.yaml, not the DestinationRule.
        let (policies, notes) = self::experiment(&dir, "tight").unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(policies.inbound.max_connections, u32::MAX);
        assert_eq!(policies.outbound.max_connections, 1);
        assert_eq!(
            destination_rule(&dir, "one-per-conn")
                .unwrap()
                .policy
                .max_requests_per_connection,
            Some(1)
        );
        assert_eq!(
            destination_rule(&dir, "reuse")
                .unwrap()
                .policy
                .max_requests_per_connection,
            Some(100)
        );
        assert_eq!(
            destination_rule(&dir, "tight").unwrap().policy.max_requests,
            1
        );
    }

    #[test]
    fn broken_yaml_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("mesh-broken-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("destinationrules")).unwrap();
        std::fs::write(dir.join("destinationrules/reuse.yaml"), "kind: [unclosed").unwrap();
        let err = format!("{:#}", destination_rule(&dir, "reuse").unwrap_err());
        assert!(err.contains("reuse.yaml is not valid YAML"), "{err}");
        assert!(
            err.contains("--istio-dir") && err.contains("line"),
            "no fix: {err}"
        );
        let err = format!("{:#}", wasm_plugin(&dir).unwrap_err());
        assert!(err.contains("cannot read"), "{err}");
        let err = format!("{:#}", destination_rule(&dir, "nope").unwrap_err());
        assert!(
            err.contains("unknown experiment \"nope\"") && err.contains("none, reuse"),
            "{err}"
        );
        // No Sidecar file: defaults, and the user is told.
        let (policies, notes) = experiment(&dir, "none").unwrap();
        assert_eq!(policies, SidecarPolicies::default());
        assert!(notes[0].contains("sidecar.yaml"), "{notes:?}");
        std::fs::remove_dir_all(dir).ok();
    }
}
