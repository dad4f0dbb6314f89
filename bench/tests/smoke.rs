//! The benchmark harness runs end to end: `bench --quick` with tiny
//! durations starts every process, checks each configuration really tags
//! (or does not), measures, and writes a report with every row. Nothing
//! here asserts a timing: benchmarks are `make bench`, not tests.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use bench::{
    configs::Variant,
    report::{Report, Verdict},
};

fn h2load_on_path() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("h2load").is_file()))
}

fn bench(out: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("cannot run the bench binary")
}

fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn quick_run_reports_every_configuration() {
    assert!(
        h2load_on_path(),
        "h2load not found on PATH: run `make bench-deps` (installs the Debian package nghttp2-client)"
    );
    let out = out_dir("smoke");
    let output = bench(
        &out,
        &[
            "--quick",
            "--rounds",
            "2",
            "--warmup",
            "100ms",
            "--duration",
            "200ms",
            "--latency-duration",
            "100ms",
            "--churn-connections",
            "200",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench --quick failed:\n{stderr}");

    let report: Report =
        serde_json::from_slice(&std::fs::read(out.join("quick.json")).unwrap()).unwrap();
    let markdown = std::fs::read_to_string(out.join("quick.md")).unwrap();
    assert_eq!(
        stdout, markdown,
        "stdout carries the same table as the file"
    );

    let keys: Vec<&str> = report.proxy.iter().map(|r| r.key.as_str()).collect();
    let expected: Vec<&str> = Variant::ALL.iter().map(|v| v.key()).collect();
    assert_eq!(keys, expected);
    for row in &report.proxy {
        assert!(
            markdown.contains(&format!("| {} |", row.label)),
            "no row for {}",
            row.label
        );
        assert_eq!(row.req_per_sec.len(), 2, "{}: two rounds", row.key);
        assert_eq!(row.cpu_us_per_request.len(), 2, "{}", row.key);
        assert!(
            row.req_per_sec_median > 0.0
                && row.ratio_vs_no_filter > 0.0
                && row.rss_bytes > 0
                && row
                    .cpu_us_per_request
                    .iter()
                    .all(|c| c.is_finite() && *c > 0.0),
            "{row:?}"
        );
        assert!(
            row.p50_us_pooled > 0.0 && row.p99_us_pooled >= row.p50_us_pooled,
            "{row:?}"
        );
        let is_wasm = ["empty-wasm", "upstream-tagger", "sidecar-upstream-tagger"]
            .contains(&row.key.as_str());
        assert_eq!(row.module_bytes.is_some(), is_wasm, "{}", row.key);
    }
    assert_eq!(report.proxy[0].ratio_vs_no_filter, 1.0);
    // The real-path rows: behind the echo server, against their own baseline.
    let sidecar = report.proxy_row("sidecar-no-filter").unwrap();
    let tagged = report.proxy_row("sidecar-upstream-tagger").unwrap();
    assert_eq!(
        (sidecar.ratio_vs_no_filter, tagged.baseline.as_str()),
        (1.0, "sidecar-no-filter")
    );
    assert!(
        markdown.contains(
            "### Envoy as the server's inbound sidecar, in front of the real echo server"
        ) && markdown.contains("share CPU"),
        "the real-path table says how the cores were shared:\n{markdown}"
    );

    let servers: Vec<&str> = report.servers.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(servers, ["tonic-hello-world", "echo-server"]);
    assert!(
        report.servers.iter().all(|r| r.req_per_sec_median > 0.0
            && r.cpu_us_per_request_median > 0.0
            && r.rss_bytes > 0),
        "{:?}",
        report.servers
    );

    let [without, with] = &report.churn[..] else {
        panic!("two churn rows expected: {:?}", report.churn);
    };
    assert_eq!(
        (without.connections, without.tagged, without.tracked_max),
        (200, 0, None)
    );
    assert!(without.rss_before_bytes > 0 && with.rss_before_bytes > 0);
    assert_eq!(
        (with.connections, with.tagged),
        (200, 200),
        "every churn answer through the filter is tagged"
    );
    let (max, cap) = (with.tracked_max.unwrap(), with.cap.unwrap());
    assert!(
        max >= 200 && max <= i64::from(cap),
        "tracked {max}, cap {cap}"
    );

    for goal in [
        "throughput vs no filter",
        "vs the Lua equivalent",
        "unloaded latency",
        "RSS growth",
        "never above the cap",
        "module size",
        "echo server",
    ] {
        assert!(
            report.goals.iter().any(|g| g.goal.contains(goal)),
            "goal {goal:?} missing"
        );
    }
    assert!(markdown.contains("--quick run: too short to judge anything"));
    for timing in [
        "throughput vs no filter",
        "added Envoy CPU",
        "unloaded latency",
    ] {
        let goal = report
            .goals
            .iter()
            .find(|g| g.goal.contains(timing))
            .unwrap();
        assert_eq!(
            goal.verdict,
            Verdict::NotJudged,
            "{timing}: a quick run judges nothing"
        );
    }

    // Every process the run started is gone: none still has the run's
    // folder on its command line (Envoy's config path is under it).
    let needle = out.to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&needle))
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
}

/// A configuration that does not do its work stops the run instead of
/// looking fast: the empty module passed off as upstream-tagger.
#[test]
fn a_filter_that_does_not_tag_stops_the_run() {
    let empty = bench::tools::default_empty_wasm();
    assert!(
        empty.is_file(),
        "{} missing: run `make bench-deps`",
        empty.display()
    );
    let out = out_dir("not-tagging");
    let output = bench(
        &out,
        &[
            "--quick",
            "--rounds",
            "1",
            "--wasm",
            empty.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a non-tagging filter was measured"
    );
    assert!(
        stderr.contains("upstream-tagger") && stderr.contains("pod header"),
        "{stderr}"
    );
}

#[test]
fn missing_h2load_names_the_make_target() {
    let out = out_dir("no-h2load");
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--quick", "--out"])
        .arg(&out)
        .env("PATH", "")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("h2load not found") && stderr.contains("make bench-deps"),
        "{stderr}"
    );
}

#[test]
fn missing_empty_filter_names_the_make_target() {
    let out = out_dir("no-empty");
    let output = bench(
        &out,
        &["--quick", "--empty-wasm", "/nonexistent/empty_filter.wasm"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("/nonexistent/empty_filter.wasm") && stderr.contains("make bench-deps"),
        "{stderr}"
    );
}

#[test]
fn bad_flags_exit_with_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--rounds=many")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
}
