//! The churn phase: the filter's per-connection state under many short
//! connections.

use std::{
    sync::atomic::{AtomicBool, AtomicI64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use upstream_tagger::{headers::UPSTREAM_POD, metrics};

use super::{Bench, envoy_errors, start_envoys};
use harness::http::h2c;

use crate::{
    benchmark::progress,
    configs::{Inputs, Variant},
    envoy::Envoy,
    grpc,
    report::ChurnRow,
};

fn wasm_stat(name: &str) -> String {
    format!("wasmcustom.{name}")
}

/// Wait until Envoy has no open downstream connection and, with the filter,
/// its tick has flushed the counters for everything that was tagged.
fn settle(envoy: &Envoy, tagged_total: Option<u64>) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(10);
    let start = Instant::now();
    loop {
        let active = envoy.stat("http.bench.downstream_cx_active")?.unwrap_or(0);
        let flushed = match tagged_total {
            Some(total) => {
                envoy
                    .stat(&wasm_stat(metrics::REQUESTS_TAGGED))?
                    .unwrap_or(0) as u64
                    >= total
            }
            None => true,
        };
        if active == 0 && flushed {
            return Ok(());
        }
        if start.elapsed() > deadline {
            bail!(
                "{}: {active} connections still open or stats not flushed after {deadline:?}",
                envoy.name
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Short connections, one request each, through Envoy without and with the
/// filter: RSS before and after, and the filter's tracked-connections gauge.
pub(crate) fn measure(bench: &Bench, inputs: &Inputs, pod: &str) -> anyhow::Result<Vec<ChurnRow>> {
    let opts = bench.opts;
    let variants = [Variant::NoFilter, Variant::UpstreamTagger];
    progress(&format!(
        "churn: {} connections, one request each, without and with the filter",
        opts.churn_connections
    ));
    let envoys = start_envoys(bench, inputs, &variants, "churn-", pod)?;
    let body = grpc::get_info_body();
    // Let allocator pools and the wasm heap reach their working size first,
    // so growth is what the churn itself leaves behind.
    let warm = (opts.churn_connections / 20).clamp(1, 2_000);
    let mut rows = Vec::new();
    for (variant, envoy) in variants.iter().zip(&envoys) {
        let filtered = *variant == Variant::UpstreamTagger;
        let warmed = h2c::churn(
            envoy.listener,
            grpc::GET_INFO_PATH,
            &body,
            warm,
            opts.churn_parallel,
            UPSTREAM_POD,
        )?;
        settle(envoy, filtered.then_some(warmed.tagged))?;
        let rss_before = envoy.rss_bytes()?;
        let tracked_max = AtomicI64::new(i64::MIN);
        let stop = AtomicBool::new(false);
        let gauge = wasm_stat(metrics::CONNECTIONS_TRACKED);
        let outcome = std::thread::scope(|scope| {
            // The gauge is flushed on the filter's 1 s tick: sample it more
            // often than that for the whole run. The unfiltered Envoy is
            // polled the same way (its answer is simply absent), so admin
            // traffic weighs the same on both RSS figures.
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Some(v)) = envoy.stat(&gauge) {
                        tracked_max.fetch_max(v, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            let outcome = h2c::churn(
                envoy.listener,
                grpc::GET_INFO_PATH,
                &body,
                opts.churn_connections,
                opts.churn_parallel,
                UPSTREAM_POD,
            );
            stop.store(true, Ordering::Relaxed);
            outcome
        })?;
        settle(envoy, filtered.then_some(warmed.tagged + outcome.tagged))?;
        let rss_after = envoy.rss_bytes()?;
        let (tracked_max, evicted) = if filtered {
            let last = envoy
                .stat(&gauge)?
                .context("the filter's tracked-connections gauge is missing from /stats")?;
            (
                Some(tracked_max.load(Ordering::Relaxed).max(last)),
                envoy.stat(&wasm_stat(metrics::CONNECTIONS_EVICTED))?,
            )
        } else {
            (None, None)
        };
        let expected_tagged = if filtered { outcome.connections } else { 0 };
        ensure!(
            outcome.tagged == expected_tagged,
            "{}: {} of {} churn answers tagged, expected {expected_tagged}",
            variant.label(),
            outcome.tagged,
            outcome.connections
        );
        progress(&format!(
            "churn {:<34} RSS {:.1} → {:.1} MiB, tracked max {}",
            variant.label(),
            rss_before as f64 / 1048576.0,
            rss_after as f64 / 1048576.0,
            tracked_max.map_or("—".into(), |v| v.to_string())
        ));
        rows.push(ChurnRow {
            key: variant.key().into(),
            label: variant.label().into(),
            connections: outcome.connections,
            tagged: outcome.tagged,
            rss_before_bytes: rss_before,
            rss_after_bytes: rss_after,
            rss_growth_bytes: rss_after as i64 - rss_before as i64,
            tracked_max,
            cap: filtered.then_some(inputs.cap),
            evicted,
        });
    }
    envoy_errors(&envoys)?;
    Ok(rows)
}
