//! The report: data (JSON) and its Markdown rendering, goals of issue 6
//! judged against what was measured.

use crate::configs::Variant;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    /// Envoy configurations, `Variant::ALL` order.
    pub proxy: Vec<ProxyRow>,
    /// tonic hello-world, then the echo server.
    pub servers: Vec<ServerRow>,
    /// Without the filter, then with it.
    pub churn: Vec<ChurnRow>,
    pub goals: Vec<Goal>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    pub envoy_version: String,
    pub h2load_version: String,
    /// Core the servers (Envoy, echo, hello) were pinned to.
    pub server_cpu: Option<usize>,
    /// Core h2load and the churn client were pinned to.
    pub load_cpu: Option<usize>,
    pub load_average_start: Option<f64>,
    pub load_average_end: Option<f64>,
    /// Wall-clock length of the run.
    pub run_secs: f64,
    /// CPU time processes other than the benchmark's used meanwhile (other
    /// work on the machine): the machine's busy time minus the benchmark's
    /// own, so negative where the two accountings disagree.
    pub other_cpu_secs: f64,
    /// CPU time of the benchmark's own processes: the scale of the
    /// accounting error between `/proc/stat` and per-process times.
    pub own_cpu_secs: f64,
    pub steal_secs: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub warmup_ms: u64,
    pub duration_ms: u64,
    pub latency_duration_ms: u64,
    pub clients: u32,
    pub streams: u32,
    pub churn_connections: u64,
    pub churn_parallel: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProxyRow {
    pub key: String,
    pub label: String,
    /// Per round, in the order measured.
    pub req_per_sec: Vec<f64>,
    pub req_per_sec_median: f64,
    /// The row this one is compared with: `no-filter` for the
    /// `direct_response` rows, `sidecar-no-filter` for the sidecar rows.
    pub baseline: String,
    /// Median over rounds of (this / its baseline, same round).
    pub ratio_vs_no_filter: f64,
    pub cpu_us_per_request: Vec<f64>,
    pub cpu_us_per_request_median: f64,
    /// Median over rounds of (this CPU µs/request − no filter's, same round).
    pub added_cpu_us: f64,
    /// Unloaded p50 and p99 of each round.
    pub p50_us: Vec<u64>,
    pub p99_us: Vec<u64>,
    /// Over every round's requests together.
    pub p50_us_pooled: f64,
    pub p99_us_pooled: f64,
    /// Pooled percentile minus no filter's pooled percentile (the rounds
    /// alternate, so both pools span the same stretch of time).
    pub added_p50_us: f64,
    pub added_p99_us: f64,
    pub rss_bytes: u64,
    pub module_bytes: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerRow {
    pub key: String,
    pub label: String,
    pub req_per_sec: Vec<f64>,
    pub req_per_sec_median: f64,
    /// Median over rounds of (this / tonic hello-world, same round).
    pub ratio_vs_hello: f64,
    pub cpu_us_per_request_median: f64,
    pub rss_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChurnRow {
    pub key: String,
    pub label: String,
    pub connections: u64,
    /// Answers that carried `x-upstream-pod`.
    pub tagged: u64,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub rss_growth_bytes: i64,
    /// Highest `connections_tracked` gauge value seen (filter only).
    pub tracked_max: Option<i64>,
    pub cap: Option<u32>,
    pub evicted: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Met,
    NotMet,
    /// The run was too short to judge (e.g. `--quick` churn below the cap).
    NotJudged,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Goal {
    pub goal: String,
    pub target: String,
    pub measured: String,
    pub verdict: Verdict,
}

/// One table of proxy rows; the first row of each is its baseline.
fn proxy_table(rows: &[&ProxyRow]) -> String {
    let mut out = String::new();
    out.push_str("| configuration | req/s | × no filter | Envoy CPU µs/req | added µs/req | p50 µs | p99 µs | added p50 / p99 µs | Envoy RSS MiB | module |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let base = r.key == r.baseline;
        out.push_str(&format!(
            "| {} | {} | {:.2} | {:.1} | {} | {:.0} | {:.0} | {} | {} | {} |\n",
            r.label,
            thousands(r.req_per_sec_median),
            r.ratio_vs_no_filter,
            r.cpu_us_per_request_median,
            if base {
                "—".to_owned()
            } else {
                format!("{:+.1}", r.added_cpu_us)
            },
            r.p50_us_pooled,
            r.p99_us_pooled,
            if base {
                "—".to_owned()
            } else {
                format!("{:+.0} / {:+.0}", r.added_p50_us, r.added_p99_us)
            },
            mib(r.rss_bytes),
            r.module_bytes.map_or("—".to_owned(), |b| format!(
                "{} B ({:.1} KiB)",
                thousands(b as f64),
                b as f64 / 1024.0
            )),
        ));
    }

    out
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// Median of per-round ratios a[i] / b[i].
pub fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, b)| **b > 0.0)
        .map(|(a, b)| a / b)
        .collect();
    median(&ratios)
}

/// Median over rounds of (a − b, same round): what `a` adds over `b`, paired
/// like the ratios so drift between rounds cancels.
pub fn median_difference(a: &[f64], b: &[f64]) -> f64 {
    let differences: Vec<f64> = a.iter().zip(b).map(|(a, b)| a - b).collect();
    median(&differences)
}

/// Fewer rounds than this, or `--quick`, and the goals are not judged
/// (issue 6: at least three alternating rounds).
pub const MIN_JUDGED_ROUNDS: usize = 3;

impl Settings {
    /// Whether this run is long enough to judge the timing goals.
    pub fn judged(&self) -> bool {
        !self.quick && self.rounds >= MIN_JUDGED_ROUNDS
    }
}

/// Share of the benchmark's own CPU time within which the machine's and the
/// processes' accounting are taken to agree.
const OTHER_WORK_TOLERANCE: f64 = 0.05;

const MIB: f64 = 1024.0 * 1024.0;

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB)
}

fn signed_mib(bytes: i64) -> String {
    format!("{:+.2}", bytes as f64 / MIB)
}

/// 84531.2 → "84,531".
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Verdict {
    fn mark(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::NotMet => "**not met**",
            Verdict::NotJudged => "not judged",
        }
    }
}

pub fn verdict(ok: bool) -> Verdict {
    if ok { Verdict::Met } else { Verdict::NotMet }
}

impl Report {
    pub fn proxy_row(&self, key: &str) -> Option<&ProxyRow> {
        self.proxy.iter().find(|r| r.key == key)
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let s = &self.settings;
        let mut out = String::new();
        let pinning = match (m.server_cpu, m.load_cpu) {
            (Some(a), Some(b)) => {
                format!("servers pinned to CPU {a}, h2load and the churn client to CPU {b}")
            }
            _ => "no pinning (fewer than 2 CPUs)".to_owned(),
        };
        let load = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.2}"));
        // The machine's counters (/proc/stat, tick-sampled) and the
        // processes' own (precise) disagree by a few percent on some
        // kernels: a difference within that is no evidence of other work.
        let tolerance = (OTHER_WORK_TOLERANCE * m.own_cpu_secs).max(1.0);
        let other = if m.other_cpu_secs < -tolerance {
            format!(
                "n/a (the machine's CPU time is {:.1} s less than the benchmark's own {:.0} s: \
                 accounting differs on this kernel)",
                -m.other_cpu_secs, m.own_cpu_secs
            )
        } else if m.other_cpu_secs <= tolerance {
            format!(
                "none measurable ({:+.1} CPU-s against the benchmark's own {:.0} s)",
                m.other_cpu_secs, m.own_cpu_secs
            )
        } else {
            let share = if m.run_secs > 0.0 {
                100.0 * m.other_cpu_secs / m.run_secs
            } else {
                0.0
            };
            format!("≈ {:.1} CPU-s ({share:.0}% of one core)", m.other_cpu_secs)
        };
        out.push_str(&format!(
            "Machine: {} × {}, Linux {}; {}; {}; {pinning}. Run: {:.0} s; other work on the machine \
             meanwhile: {other}, hypervisor steal {:.1} s; \
             1-min load average {} at start, {} at end.{}\n\n",
            m.cpus,
            m.cpu_model,
            m.kernel,
            m.envoy_version,
            m.h2load_version,
            m.run_secs,
            m.steal_secs,
            load(m.load_average_start),
            load(m.load_average_end),
            if s.quick {
                " **--quick run: too short to judge anything.**"
            } else if !s.judged() {
                " **Fewer than 3 rounds: too few to judge the goals.**"
            } else {
                ""
            },
        ));

        out.push_str(&format!(
            "### Envoy, one worker (`--concurrency 1`), `direct_response`, gRPC-shaped POSTs\n\n\
             {} rounds alternating the configurations; per round and configuration: {} ms warm-up, \
             {} ms under load (`h2load -c {} -m {}`), {} ms unloaded (`-c 1 -m 1`). Medians over rounds; \
             ratios and added CPU are per-round comparisons to no filter (same round), then the median; \
             p50/p99 are over every round's unloaded requests together.\n\n",
            s.rounds, s.warmup_ms, s.duration_ms, s.clients, s.streams, s.latency_duration_ms
        ));
        let (direct, sidecar): (Vec<&ProxyRow>, Vec<&ProxyRow>) = self
            .proxy
            .iter()
            .partition(|r| r.baseline != Variant::SidecarNoFilter.key());
        out.push_str(&proxy_table(&direct));
        if !sidecar.is_empty() {
            out.push_str(&format!(
                "\n### Envoy as the server's inbound sidecar, in front of the real echo server\n\n\
                 The same rounds, alternating with the rows above: the route forwards to the echo \
                 server (release build) over h2c, so each call has a request body, a response body \
                 and trailers, as in a pod. Cores: Envoy and the echo server share CPU {} (a pod's \
                 sidecar and app share its CPU), h2load runs on CPU {}. The ratio, added CPU \
                 (Envoy's only) and added latency are against the sidecar without a filter.\n\n",
                m.server_cpu
                    .map_or("(unpinned)".to_owned(), |c| c.to_string()),
                m.load_cpu
                    .map_or("(unpinned)".to_owned(), |c| c.to_string()),
            ));
            out.push_str(&proxy_table(&sidecar));
        }
        out.push_str(&format!(
            "\n### Echo server vs stock tonic hello-world (one core each, `h2load -c {} -m {}`, {} rounds)\n\n",
            s.clients, s.streams, s.rounds
        ));
        out.push_str("| server | req/s | × hello-world | server CPU µs/req | RSS MiB |\n|---|---:|---:|---:|---:|\n");
        for r in &self.servers {
            out.push_str(&format!(
                "| {} | {} | {:.2} | {:.1} | {} |\n",
                r.label,
                thousands(r.req_per_sec_median),
                r.ratio_vs_hello,
                r.cpu_us_per_request_median,
                mib(r.rss_bytes)
            ));
        }

        out.push_str(&format!(
            "\n### Connection churn: {} fresh h2c connections, one gRPC request each, {} at a time\n\n",
            thousands(s.churn_connections as f64),
            s.churn_parallel
        ));
        out.push_str("| configuration | connections | tagged | Envoy RSS before MiB | after MiB | growth MiB | tracked (max seen) | cap | evicted |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let opt = |v: Option<i64>| v.map_or("—".to_owned(), |v| thousands(v as f64));
        for r in &self.churn {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.label,
                thousands(r.connections as f64),
                thousands(r.tagged as f64),
                mib(r.rss_before_bytes),
                mib(r.rss_after_bytes),
                signed_mib(r.rss_growth_bytes),
                opt(r.tracked_max),
                r.cap.map_or("—".to_owned(), |c| thousands(c as f64)),
                opt(r.evicted),
            ));
        }

        out.push_str(
            "\n### Goals (issue 6)\n\n| goal | target | measured | verdict |\n|---|---|---|---|\n",
        );
        for g in &self.goals {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                g.goal,
                g.target,
                g.measured,
                g.verdict.mark()
            ));
        }
        out
    }
}

/// A made-up report for the tests of what reads one (goals, markdown).
#[cfg(test)]
pub(crate) mod sample {
    use super::*;

    fn row(
        key: &str,
        rps: f64,
        ratio: f64,
        added_cpu: f64,
        added_p50: f64,
        added_p99: f64,
        module: Option<u64>,
    ) -> ProxyRow {
        ProxyRow {
            key: key.into(),
            label: key.into(),
            baseline: "no-filter".into(),
            req_per_sec: vec![rps],
            req_per_sec_median: rps,
            ratio_vs_no_filter: ratio,
            cpu_us_per_request: vec![10.0 + added_cpu],
            cpu_us_per_request_median: 10.0 + added_cpu,
            added_cpu_us: added_cpu,
            p50_us: vec![100],
            p99_us: vec![200],
            p50_us_pooled: 100.0 + added_p50,
            p99_us_pooled: 200.0 + added_p99,
            added_p50_us: added_p50,
            added_p99_us: added_p99,
            rss_bytes: 1,
            module_bytes: module,
        }
    }

    fn churn(key: &str, connections: u64, growth: i64, tracked: Option<i64>) -> ChurnRow {
        ChurnRow {
            key: key.into(),
            label: key.into(),
            connections,
            tagged: 0,
            rss_before_bytes: 0,
            rss_after_bytes: 0,
            rss_growth_bytes: growth,
            tracked_max: tracked,
            cap: tracked.map(|_| 10_000),
            evicted: tracked.map(|_| 0),
        }
    }

    pub fn report(quick: bool, tagger_rps: f64, module: u64, churn_connections: u64) -> Report {
        Report {
            machine: Machine {
                cpu_model: "cpu".into(),
                cpus: 2,
                kernel: "k".into(),
                envoy_version: "Envoy".into(),
                h2load_version: "h2load".into(),
                server_cpu: Some(0),
                load_cpu: Some(1),
                load_average_start: None,
                load_average_end: None,
                run_secs: 1.0,
                other_cpu_secs: 0.0,
                own_cpu_secs: 100.0,
                steal_secs: 0.0,
            },
            settings: Settings {
                quick,
                rounds: 5,
                warmup_ms: 1,
                duration_ms: 1,
                latency_duration_ms: 1,
                clients: 8,
                streams: 10,
                churn_connections,
                churn_parallel: 16,
            },
            proxy: vec![
                row("no-filter", 100.0, 1.0, 0.0, 0.0, 0.0, None),
                row(
                    "upstream-tagger",
                    tagger_rps,
                    tagger_rps / 100.0,
                    3.0,
                    10.0,
                    30.0,
                    Some(module),
                ),
                row("lua", 50.0, 0.5, 12.0, 30.0, 40.0, None),
            ],
            servers: vec![ServerRow {
                key: "echo-server".into(),
                label: "echo".into(),
                req_per_sec: vec![1.0],
                req_per_sec_median: 1.0,
                ratio_vs_hello: 0.95,
                cpu_us_per_request_median: 1.0,
                rss_bytes: 1,
            }],
            churn: vec![
                churn("no-filter", churn_connections, 100_000, None),
                churn(
                    "upstream-tagger",
                    churn_connections,
                    1_100_000,
                    Some(10_000),
                ),
            ],
            goals: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(
            median_ratio(&[50.0, 80.0, 90.0], &[100.0, 100.0, 100.0]),
            0.8
        );
        assert_eq!(median_ratio(&[1.0], &[0.0]), 0.0);
        // Paired by round: a drift shared by both sides cancels.
        assert_eq!(
            median_difference(&[10.0, 20.0, 30.0], &[8.0, 18.0, 29.0]),
            2.0
        );
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(thousands(84531.2), "84,531");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(100000.0), "100,000");
        assert_eq!(signed_mib(-1024 * 1024), "-1.00");
    }

    #[test]
    fn other_work_that_does_not_add_up_is_not_shown_as_zero() {
        let mut r = sample::report(false, 80.0, 100_000, 100_000);
        // own_cpu_secs = 100: ±5 s is within the accounting error.
        r.machine.other_cpu_secs = -8.0;
        assert!(
            r.markdown()
                .contains("other work on the machine meanwhile: n/a")
        );
        r.machine.other_cpu_secs = -3.0;
        assert!(
            r.markdown()
                .contains("meanwhile: none measurable (-3.0 CPU-s")
        );
        r.machine.other_cpu_secs = 9.0;
        assert!(r.markdown().contains("≈ 9.0 CPU-s (900% of one core)"));
    }
}
