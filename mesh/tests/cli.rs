//! The `mesh` binary as scripts use it: `--json` on stdout, whether the run
//! passes or fails before it starts.

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
    let (code, json) = mesh(&[
        "run", "grpc-l4", "--json", "--calls", "3", "--subnet", "108",
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
