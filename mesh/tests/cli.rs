//! The `mesh` binary as scripts use it: `--json` on stdout, whether the run
//! passes or fails before it starts.

mod common;

use std::process::Command;

fn mesh(args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(args)
        .output()
        .expect("run the mesh binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code(), json)
}

#[test]
fn json_run_reports_the_scenario_outcome() {
    let subnet = common::subnet("cli: json run").to_string();
    let (code, json) = mesh(&[
        "run", "grpc-l4", "--json", "--calls", "3", "--subnet", &subnet,
    ]);
    assert_eq!(code, Some(0), "{json:#}");
    assert_eq!(json["passed"], true);
    let scenarios = json["scenarios"].as_array().expect("scenarios array");
    assert_eq!(scenarios.len(), 1);
    assert_eq!(scenarios[0]["scenario"], "grpc-l4");
    assert_eq!(scenarios[0]["calls"].as_array().map(Vec::len), Some(3));
}

#[test]
fn json_run_that_cannot_start_still_answers_in_json() {
    let (code, json) = mesh(&["run", "grpc-l4", "--json", "--wasm", "/nonexistent/x.wasm"]);
    assert_eq!(code, Some(1));
    assert_eq!(json["passed"], false);
    let error = json["error"].as_str().expect("an error string");
    assert!(error.contains("make wasm"), "{error}");
}

/// A copy of `istio/` to change, under target/ (kept for inspection).
fn istio_copy(label: &str) -> std::path::PathBuf {
    let dir = harness::paths::run_dir(label).unwrap();
    let src = sidecar::manifests::istio_dir(None);
    for sub in ["", "destinationrules"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for entry in std::fs::read_dir(src.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, dir.join(sub).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    dir
}

/// `mesh render` as `make istio-check` calls it: (exit code, stderr).
fn render(istio_dir: &std::path::Path, experiment: &str, out: &std::path::Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["render", "--istio-dir"])
        .arg(istio_dir)
        .args(["--experiment", experiment, "--pods", "3", "--out"])
        .arg(out)
        .output()
        .expect("run the mesh binary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// 7 requests per connection and a 0 that keeps Istio's default; the
/// istio-check test renders the same file.
const SEVEN: &str = include_str!("../../tests/fixtures/destinationrule-seven.yaml");

#[test]
fn render_writes_the_mesh_side_of_the_istio_check() {
    let dir = istio_copy("render-seven");
    std::fs::write(dir.join("destinationrules/seven.yaml"), SEVEN).unwrap();
    let out = dir.join("out/seven/mesh.json");
    let (code, stderr) = render(&dir, "seven", &out);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(json["experiment"], "seven");
    assert_eq!(json["source"], "mesh");
    let cluster = &json["client"]["clusters"][0];
    assert_eq!(
        cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["common_http_protocol_options"]["max_requests_per_connection"],
        7
    );
    // http2MaxRequests: 0 keeps Istio's default, never a 0 that overflows everything.
    assert_eq!(
        cluster["circuit_breakers"]["thresholds"][0]["max_requests"],
        4_294_967_295u64
    );
    let hcm = &json["server"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(hcm["stream_idle_timeout"], "0s");
    assert_eq!(
        hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["max_stream_duration"]["grpc_timeout_header_max"],
        "0s"
    );
}

#[test]
fn render_refuses_bad_input_by_name_and_writes_nothing() {
    let dir = istio_copy("render-bad");
    std::fs::write(
        dir.join("destinationrules/zero.yaml"),
        SEVEN.replace(
            "    connectionPool:\n",
            "    connectionPool:\n      tcp:\n        connectTimeout: 0s\n",
        ),
    )
    .unwrap();
    for (experiment, words) in [
        (
            "zero",
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
        ),
        ("nope", "unknown experiment \"nope\""),
    ] {
        let out = dir.join(format!("out/{experiment}.json"));
        let (code, stderr) = render(&dir, experiment, &out);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(words), "{words:?} not in {stderr}");
        assert!(!out.exists(), "{} written", out.display());
    }
    // Without the Sidecar file: Istio's defaults, and the user is told.
    std::fs::remove_file(dir.join("sidecar.yaml")).unwrap();
    let (code, stderr) = render(&dir, "none", &dir.join("out/none.json"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("sidecar.yaml"), "{stderr}");
}
