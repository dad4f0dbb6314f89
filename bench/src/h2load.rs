//! Load from h2load (nghttp2): gRPC-shaped POSTs, parsed summary, and
//! per-request latencies from `--log-file`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use harness::process::ChildGuard;

use harness::process::pinned;

/// Find h2load on PATH; the error names the command that installs it.
pub fn locate() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("h2load"))
        .find(|candidate| candidate.is_file())
        .context("h2load not found on PATH: run `make bench-deps` (installs the Debian package nghttp2-client)")
}

/// One h2load invocation.
pub struct Load<'a> {
    pub h2load: &'a Path,
    pub cpu: Option<usize>,
    pub url: String,
    pub body: &'a Path,
    pub clients: u32,
    pub streams: u32,
    /// How long it loads, or how many requests it sends.
    pub amount: Amount,
    /// Per-request log (for latency percentiles).
    pub request_log: Option<&'a Path>,
    /// h2load's own output.
    pub output: &'a Path,
}

/// How much load one invocation applies.
#[derive(Clone, Copy, Debug)]
pub enum Amount {
    /// `-D`: for this long.
    For(Duration),
    /// `-n`: exactly this many requests, however long they take (given up
    /// after `deadline`).
    Requests { count: u64, deadline: Duration },
}

/// h2load's summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub elapsed_secs: f64,
    pub req_per_sec: f64,
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub status_2xx: u64,
}

impl Load<'_> {
    /// A measured run: every request must succeed, and at least one must.
    pub fn measure(&self) -> anyhow::Result<Summary> {
        self.run_h2load(false)
    }

    /// A warm-up: a short one on a busy core may finish no request at all,
    /// which is no error; a failed or errored request still is.
    pub fn warm_up(&self) -> anyhow::Result<Summary> {
        self.run_h2load(true)
    }

    fn run_h2load(&self, none_done_is_ok: bool) -> anyhow::Result<Summary> {
        let mut command = pinned(self.h2load, self.cpu);
        command
            .args(["-t", "1"])
            .arg(format!("-c{}", self.clients))
            .arg(format!("-m{}", self.streams))
            .arg(match self.amount {
                Amount::For(duration) => format!("-D{}ms", duration.as_millis().max(1)),
                Amount::Requests { count, .. } => format!("-n{count}"),
            })
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .arg("-d")
            .arg(self.body);
        if let Some(log) = self.request_log {
            command.arg("--log-file").arg(log);
        }
        command.arg(&self.url);
        let mut proc = ChildGuard::spawn_logged("h2load", &mut command, self.output)?;
        let deadline = match self.amount {
            Amount::For(duration) => duration + Duration::from_secs(30),
            Amount::Requests { deadline, .. } => deadline,
        };
        let status = proc.wait_for_exit(deadline)?;
        let output = std::fs::read_to_string(self.output)
            .with_context(|| format!("cannot read {}", self.output.display()))?;
        let summary = parse(&output).with_context(|| {
            format!(
                "h2load ({status}) against {}, output {}:\n{output}",
                self.url,
                self.output.display()
            )
        })?;
        if (summary.succeeded == 0 && !none_done_is_ok)
            || summary.failed > 0
            || summary.errored > 0
            || summary.status_2xx != summary.succeeded
        {
            bail!(
                "h2load against {}: {} of {} requests succeeded ({} failed, {} errored, {} 2xx); output {}",
                self.url,
                summary.succeeded,
                summary.total,
                summary.failed,
                summary.errored,
                summary.status_2xx,
                self.output.display()
            );
        }
        Ok(summary)
    }
}

fn number_before(text: &str, label: &str) -> Option<u64> {
    // "845312 total, 845392 started, 845312 done, ..." → the number before `label`.
    let words: Vec<&str> = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .find(|w| w[1] == label)
        .and_then(|w| w[0].parse().ok())
}

/// Parse h2load's summary lines:
/// `finished in 10.00s, 84531.20 req/s, 2.1MB/s`,
/// `requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout`,
/// `status codes: N 2xx, N 3xx, N 4xx, N 5xx`.
pub fn parse(output: &str) -> anyhow::Result<Summary> {
    let finished = output
        .lines()
        .find(|l| l.starts_with("finished in "))
        .context("no `finished in` line")?;
    let mut parts = finished.trim_start_matches("finished in ").split(", ");
    let elapsed = parts.next().context("no elapsed time")?;
    let elapsed_secs = if let Some(ms) = elapsed.strip_suffix("ms") {
        ms.parse::<f64>().context("elapsed")? / 1000.0
    } else {
        elapsed
            .trim_end_matches('s')
            .parse::<f64>()
            .context("elapsed")?
    };
    let req_per_sec: f64 = parts
        .next()
        .and_then(|p| p.strip_suffix(" req/s"))
        .context("no req/s")?
        .parse()
        .context("req/s")?;
    let requests = output
        .lines()
        .find(|l| l.starts_with("requests: "))
        .context("no `requests:` line")?;
    let codes = output
        .lines()
        .find(|l| l.starts_with("status codes: "))
        .context("no `status codes:` line")?;
    let get = |line: &str, label: &str| {
        number_before(line, label).with_context(|| format!("no `{label}` count"))
    };
    Ok(Summary {
        elapsed_secs,
        req_per_sec,
        total: get(requests, "total")?,
        succeeded: get(requests, "succeeded")?,
        failed: get(requests, "failed")?,
        errored: get(requests, "errored")?,
        status_2xx: get(codes, "2xx")?,
    })
}

/// Per-request durations (µs) from an h2load `--log-file`: tab-separated
/// start time (µs since epoch), status (-1 = failed stream), duration (µs).
pub fn parse_request_log(text: &str) -> anyhow::Result<Vec<u64>> {
    let mut durations = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < 3 {
            bail!(
                "request log line {}: expected 3 tab-separated columns: {line:?}",
                n + 1
            );
        }
        let status: i64 = fields[1]
            .trim()
            .parse()
            .with_context(|| format!("line {}: status", n + 1))?;
        if !(200..300).contains(&status) {
            bail!("request log line {}: status {status}", n + 1);
        }
        durations.push(
            fields[2]
                .trim()
                .parse()
                .with_context(|| format!("line {}: duration", n + 1))?,
        );
    }
    if durations.is_empty() {
        bail!("the request log is empty");
    }
    Ok(durations)
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted values.
pub fn percentile(values: &[u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "starting benchmark...
spawning thread #0: 8 total client(s). Timing-based test with 0s of warm-up time and 10s of main duration for measurements.
Warm-up phase is over for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 10.00s, 84531.20 req/s, 2.10MB/s
requests: 845312 total, 845392 started, 845312 done, 845312 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 845312 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 21.03MB (22051224) total, 1.62MB (1690704) headers (space savings 96.00%), 4.03MB (4226560) data
";

    #[test]
    fn summary_is_parsed() {
        let s = parse(OUTPUT).unwrap();
        assert_eq!(
            s,
            Summary {
                elapsed_secs: 10.0,
                req_per_sec: 84531.20,
                total: 845312,
                succeeded: 845312,
                failed: 0,
                errored: 0,
                status_2xx: 845312,
            }
        );
        let ms = OUTPUT.replace("finished in 10.00s", "finished in 512.3ms");
        assert!((parse(&ms).unwrap().elapsed_secs - 0.5123).abs() < 1e-9);
        assert!(parse("garbage").is_err());
    }

    #[test]
    fn request_log_gives_durations_and_rejects_failures() {
        let log = "1700000000000000\t200\t120\n1700000000000200\t200\t95\n";
        assert_eq!(parse_request_log(log).unwrap(), [120, 95]);
        assert!(parse_request_log("1700000000000000\t-1\t120\n").is_err());
        assert!(parse_request_log("").is_err());
        assert!(parse_request_log("1\t200\n").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&values, 50.0), 50);
        assert_eq!(percentile(&values, 99.0), 99);
        assert_eq!(percentile(&values, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
