//! The proxy phase: one Envoy per configuration (no filter, native,
//! empty wasm, upstream-tagger, Lua, and the sidecars in front of the echo
//! server), each checked to do its work, then alternated under load.

use std::path::Path;

use anyhow::ensure;
use upstream_tagger::headers::{
    UPSTREAM_CONNECTION_ID, UPSTREAM_CONNECTION_REQUESTS, UPSTREAM_POD,
};

use super::{Bench, Loaded, envoy_errors, start_echo_server, start_envoys};
use harness::http::h2c;

use crate::{
    benchmark::progress,
    configs::{Inputs, Variant},
    envoy::Envoy,
    grpc, h2load,
    report::{ProxyRow, median, median_difference, median_ratio},
};

/// Envoy's gauge of live V8 VMs.
const V8_ACTIVE_STAT: &str = "wasm.envoy.wasm.runtime.v8.active";

/// Check that a configuration does what it claims before measuring it: a
/// fast filter that tags nothing would be a lie.
fn verify(variant: Variant, envoy: &Envoy, pod: &str, body: &[u8]) -> anyhow::Result<()> {
    let (answers, other) = h2c::probe(envoy.listener, grpc::GET_INFO_PATH, body, 2)?;
    let context = || format!("{} ({}): ", variant.label(), envoy.config_path.display());
    for a in answers.iter().chain([&other]) {
        ensure!(a.status == 200, "{}HTTP {}", context(), a.status);
    }
    let (first, second) = (&answers[0], &answers[1]);
    let tags = |a: &h2c::Answer| {
        (
            a.header(UPSTREAM_POD).map(str::to_owned),
            a.header(UPSTREAM_CONNECTION_ID).map(str::to_owned),
            a.header(UPSTREAM_CONNECTION_REQUESTS).map(str::to_owned),
        )
    };
    let (t1, t2, t3) = (tags(first), tags(second), tags(&other));
    if matches!(
        variant.filters(),
        Variant::EmptyWasm | Variant::UpstreamTagger
    ) {
        // A module that failed to load, open-failing, would look like no
        // filter at all: the floor must be a V8 VM that really runs.
        let active = envoy.stat(V8_ACTIVE_STAT)?;
        ensure!(
            active.is_some_and(|n| n >= 1),
            "{}no V8 wasm VM is running ({V8_ACTIVE_STAT} = {active:?})",
            context()
        );
    }
    match variant.filters() {
        Variant::NoFilter | Variant::EmptyWasm => {
            for t in [&t1, &t2, &t3] {
                ensure!(
                    *t == (None, None, None),
                    "{}unexpected tags {t:?}",
                    context()
                );
            }
        }
        // Every tagging configuration: the pod on each answer, one connection
        // id for the first connection's two calls and another for the second.
        Variant::HeaderMutation | Variant::UpstreamTagger | Variant::Lua => {
            for t in [&t1, &t2, &t3] {
                ensure!(
                    t.0.as_deref() == Some(pod),
                    "{}pod header {:?}",
                    context(),
                    t.0
                );
            }
            ensure!(
                t1.1.is_some() && t1.1 == t2.1 && t1.1 != t3.1,
                "{}connection ids {:?} {:?} {:?}",
                context(),
                t1.1,
                t2.1,
                t3.1
            );
            if variant.filters() == Variant::HeaderMutation {
                // Envoy has no per-connection request count to offer.
                return Ok(());
            }
            let counts = [t1.2.as_deref(), t2.2.as_deref(), t3.2.as_deref()];
            ensure!(
                counts == [Some("1"), Some("2"), Some("1")],
                "{}request counts {counts:?}",
                context()
            );
        }
        Variant::SidecarNoFilter | Variant::SidecarTagger => {
            unreachable!("filters() maps sidecars")
        }
    }
    if variant.is_sidecar() {
        // The real echo server answered, through the sidecar.
        ensure!(
            first.grpc_status.as_deref() == Some("0"),
            "{}grpc-status {:?} (is the echo server answering?)",
            context(),
            first.grpc_status
        );
    }
    Ok(())
}

/// Every configuration ([`Variant::ALL`]) checked, then measured round after
/// round (loaded and unloaded), each against its baseline.
pub(crate) fn measure(
    bench: &Bench,
    inputs: &Inputs,
    body: &Path,
    pod: &str,
) -> anyhow::Result<Vec<ProxyRow>> {
    let opts = bench.opts;
    let (_echo, echo_addr) = start_echo_server(bench, pod, "sidecar-app")?;
    let inputs = &Inputs {
        echo: Some(echo_addr),
        ..*inputs
    };
    progress(&format!(
        "starting {} Envoys (one per configuration)",
        Variant::ALL.len()
    ));
    let envoys = start_envoys(bench, inputs, &Variant::ALL, "", pod)?;
    let body_bytes = std::fs::read(body)?;
    for (variant, envoy) in Variant::ALL.iter().zip(&envoys) {
        verify(*variant, envoy, pod, &body_bytes)?;
    }
    progress("every configuration answers and tags as it should");

    let n = Variant::ALL.len();
    let mut loaded: Vec<Vec<Loaded>> = (0..n).map(|_| Vec::new()).collect();
    let mut latency: Vec<Vec<(u64, u64)>> = vec![Vec::new(); n];
    // Every round's request times, pooled per configuration: a p99 from one
    // 2 s run is a handful of requests; from all rounds it is steady.
    let mut pooled: Vec<Vec<u64>> = vec![Vec::new(); n];
    for round in 0..opts.rounds {
        // Rotate the order each round so no configuration always runs first.
        for k in 0..n {
            let i = (k + round) % n;
            let (variant, envoy) = (Variant::ALL[i], &envoys[i]);
            let url = format!("http://{}{}", envoy.listener, grpc::GET_INFO_PATH);
            let name = format!("r{}-{}", round + 1, variant.key());
            let l = bench.loaded(envoy.pid(), &url, body, &name)?;
            let times = bench.unloaded(&url, body, &name)?;
            let (p50, p99) = (
                h2load::percentile(&times, 50.0),
                h2load::percentile(&times, 99.0),
            );
            pooled[i].extend(times);
            progress(&format!(
                "round {}/{}: {:<34} {:>9.0} req/s  {:>5.1} µs CPU/req  p50 {p50} µs  p99 {p99} µs",
                round + 1,
                opts.rounds,
                variant.label(),
                l.req_per_sec,
                l.cpu_us_per_request
            ));
            loaded[i].push(l);
            latency[i].push((p50, p99));
        }
    }
    envoy_errors(&envoys)?;

    let rps = |i: usize| loaded[i].iter().map(|l| l.req_per_sec).collect::<Vec<_>>();
    let cpus = |i: usize| {
        loaded[i]
            .iter()
            .map(|l| l.cpu_us_per_request)
            .collect::<Vec<_>>()
    };
    // (p50, p99) of each configuration's pooled requests, computed once.
    let pooled_p: Vec<(f64, f64)> = pooled
        .iter()
        .map(|times| {
            (
                h2load::percentile(times, 50.0) as f64,
                h2load::percentile(times, 99.0) as f64,
            )
        })
        .collect();
    let mut rows = Vec::new();
    for (i, (variant, envoy)) in Variant::ALL.iter().zip(&envoys).enumerate() {
        let module = match variant.filters() {
            Variant::EmptyWasm => Some(std::fs::metadata(&bench.tools.empty_wasm)?.len()),
            Variant::UpstreamTagger => Some(std::fs::metadata(&bench.tools.tagger_wasm)?.len()),
            _ => None,
        };
        // Each row against its own baseline, measured in the same rounds.
        let base = Variant::ALL
            .iter()
            .position(|v| *v == variant.baseline())
            .expect("every baseline is a configuration");
        rows.push(ProxyRow {
            key: variant.key().into(),
            label: variant.label().into(),
            req_per_sec: rps(i),
            req_per_sec_median: median(&rps(i)),
            baseline: variant.baseline().key().into(),
            ratio_vs_no_filter: median_ratio(&rps(i), &rps(base)),
            cpu_us_per_request: cpus(i),
            cpu_us_per_request_median: median(&cpus(i)),
            added_cpu_us: median_difference(&cpus(i), &cpus(base)),
            p50_us: latency[i].iter().map(|l| l.0).collect(),
            p99_us: latency[i].iter().map(|l| l.1).collect(),
            p50_us_pooled: pooled_p[i].0,
            p99_us_pooled: pooled_p[i].1,
            added_p50_us: pooled_p[i].0 - pooled_p[base].0,
            added_p99_us: pooled_p[i].1 - pooled_p[base].1,
            rss_bytes: envoy.rss_bytes()?,
            module_bytes: module,
        });
    }
    Ok(rows)
}
