//! What a scenario saw: the client's `--json` records, read as they come and
//! summarised by the clients' own [`Summary`], then shown the way a user
//! reads `kubectl logs` (the client's own `#N:` lines and a table of pods,
//! connections, counts and errors).

use std::{collections::HashSet, time::Duration};

use anyhow::bail;
use serde::{Serialize, Serializer};
use wire::{Record, Summary};

use crate::scenario::events::Happened;

/// A client's `--json` stdout, taken line by line.
#[derive(Debug, Default)]
pub struct ClientOutput {
    pub records: Vec<Record>,
    /// The clients' summary of `records`.
    pub summary: Summary,
    /// The client printed its own summary line (it does so last).
    pub summarised: bool,
}

impl ClientOutput {
    /// One line of output: a call record is kept (`true`); the client's
    /// closing summary line must be the summary of the records read before
    /// it (`false`). Anything else is an error that quotes the line: never
    /// dropped.
    pub fn push_line(&mut self, line: &str) -> anyhow::Result<bool> {
        if self.summarised {
            bail!("the client printed a line after its summary: {line:?}");
        }
        match Record::from_json_line(line) {
            Ok(record) => {
                self.summary.add(&record);
                self.records.push(record);
                Ok(true)
            }
            Err(_) if line == self.summary.json_line() => {
                self.summarised = true;
                Ok(false)
            }
            Err(_) if line.starts_with(r#"{"summary":"#) => bail!(
                "the client's summary line disagrees with its {} records: {line:?} (the records add up to {})",
                self.records.len(),
                self.summary.json_line()
            ),
            Err(e) => bail!("the client printed a line that is not a call record ({e}): {line:?}"),
        }
    }
}

/// Shows what `kubectl logs` would, trimmed for long runs: the first lines,
/// every pod's first answer, every line that opens a new connection or
/// fails (up to a cap), the call an event struck, the last.
pub struct LinePrinter {
    all: bool,
    shown: usize,
    hidden: usize,
    last: Option<String>,
    /// Pods that answered so far (shown or not).
    answered: HashSet<String>,
    /// Calls so far that were the first on their connection.
    connections_opened: usize,
    /// An event was just shown: the next call (in flight when it struck)
    /// shows too.
    after_event: bool,
}

const HEAD: usize = 6;
const CAP: usize = 16;

impl LinePrinter {
    /// `all`: print every line, untrimmed.
    pub fn new(all: bool) -> Self {
        Self {
            all,
            shown: 0,
            hidden: 0,
            last: None,
            answered: HashSet::new(),
            connections_opened: 0,
            after_event: false,
        }
    }

    /// `record` (the client's next) as the client prints it (its own
    /// formatter), or hidden.
    pub fn offer(&mut self, record: &Record) {
        // The sidecar filter's count where it tags, else the app's own.
        let first_on_connection = record
            .call
            .upstream_connection_requests()
            .or(record.call.conn_requests)
            == Some(1);
        let new_connection = first_on_connection && self.connections_opened < CAP;
        self.connections_opened += usize::from(first_on_connection);
        // A pod's first answer always shows (at most one line per pod):
        // where a pod added during the run comes in.
        let new_pod = match &record.call.outcome {
            Ok(pod) => !self.answered.contains(pod) && self.answered.insert(pod.clone()),
            Err(_) => false,
        };
        let struck = std::mem::take(&mut self.after_event);
        let interesting = self.shown < HEAD
            || struck
            || new_pod
            || (self.shown < CAP && (new_connection || record.call.outcome.is_err()));
        let line = record.text_line();
        if self.all || interesting {
            self.flush_hidden();
            println!("{line}");
            self.shown += 1;
            self.last = None;
        } else {
            self.hidden += 1;
            self.last = Some(line);
        }
    }

    fn flush_hidden(&mut self) {
        match (self.hidden, self.last.take()) {
            (0, _) | (_, None) => {}
            (1, Some(last)) => println!("{last}"),
            (n, Some(last)) => {
                let not_shown = n - 1;
                let lines = if not_shown == 1 { "line" } else { "lines" };
                println!("   ⋮ ({not_shown} {lines} not shown; --all-lines shows every line)");
                println!("{last}");
            }
        }
        self.hidden = 0;
    }

    /// Print the last hidden line (and how many were hidden before it).
    pub fn finish(&mut self) {
        self.flush_hidden();
    }

    /// An event in the run, always shown, in order with the calls.
    pub fn event(&mut self, line: &str) {
        self.flush_hidden();
        println!("   -- {line}");
        self.after_event = true;
    }
}

/// Which pod served calls when, in time slices: what `kubectl logs` of the
/// client shows line by line, at a glance.
#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    /// One mark per slice of this many milliseconds, from the client's start.
    pub slice_ms: u64,
    /// One row per pod (every pod that ran, in start order), then `failed`
    /// and (when something happened to the pods) `events`: `#` served (or failed) calls in that slice, `^` an
    /// event, `.` nothing.
    pub rows: Vec<TimelineRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TimelineRow {
    pub name: String,
    pub marks: String,
}

/// At most this many slices: a row fits a terminal beside a pod name.
const TIMELINE_COLUMNS: u64 = 48;

impl Timeline {
    /// `times[i]` is when `calls[i]` arrived; `events` as applied.
    pub fn new(calls: &[Record], times: &[Duration], pods: &[String], events: &[Happened]) -> Self {
        let end = times
            .iter()
            .copied()
            .chain(events.iter().map(Happened::at))
            .max()
            .unwrap_or_default()
            .as_millis() as u64;
        // A slice length that reads easily: 1, 2, 5, 10, 20, 50 ... ms.
        let wanted = end / TIMELINE_COLUMNS + 1;
        let slice_ms = [1, 2, 5]
            .into_iter()
            .flat_map(|m| (0..7).map(move |e| m * 10u64.pow(e)))
            .filter(|&s| s >= wanted)
            .min()
            .unwrap_or(wanted);
        let columns = (end / slice_ms + 1) as usize;
        let column = |t: Duration| (t.as_millis() as u64 / slice_ms) as usize;
        let mut rows: Vec<TimelineRow> = pods
            .iter()
            .chain([&"failed".to_owned(), &"events".to_owned()])
            .take(pods.len() + 1 + usize::from(!events.is_empty()))
            .map(|name| TimelineRow {
                name: name.clone(),
                marks: String::new(),
            })
            .collect();
        let mut grid = vec![vec![false; columns]; rows.len()];
        let (failed, event_row) = (pods.len(), pods.len() + 1);
        for (call, &t) in calls.iter().zip(times) {
            let row = match &call.call.outcome {
                Ok(pod) => pods.iter().position(|p| p == pod),
                Err(_) => Some(failed),
            };
            if let Some(row) = row {
                grid[row][column(t)] = true;
            }
        }
        for event in events {
            grid[event_row][column(event.at())] = true;
        }
        for ((row, cells), i) in rows.iter_mut().zip(&grid).zip(0..) {
            let mark = if i == event_row { '^' } else { '#' };
            row.marks = cells
                .iter()
                .map(|&on| if on { mark } else { '.' })
                .collect();
        }
        Timeline { slice_ms, rows }
    }

    /// The rows as printed under a scenario's table.
    pub fn text(&self) -> String {
        let width = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
        let mut out = format!(
            "   timeline, one mark per {} ms from the client's start (# calls, ^ events):\n",
            self.slice_ms
        );
        for row in &self.rows {
            out.push_str(&format!("   {:<width$}  {}\n", row.name, row.marks));
        }
        out
    }
}

/// The client sidecar's own count of attempts it made again (Envoy's
/// `upstream_rq_retry`) and of connections it could not open
/// (`upstream_cx_connect_fail`): the failures the client never saw.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SidecarRetries {
    pub retried: u64,
    pub connect_failures: u64,
}

impl std::fmt::Display for SidecarRetries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "client sidecar: {} request(s) retried, {} connection(s) failed to open (Envoy stats upstream_rq_retry, upstream_cx_connect_fail)",
            self.retried, self.connect_failures
        )
    }
}

/// How many calls failed and over how long: what a pod's loss costs.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FailureWindow {
    pub failed: u64,
    /// The first failed call's arrival, ms after the client's start.
    pub first_ms: u64,
    /// The last failed call's arrival.
    pub last_ms: u64,
    /// The first answered call after the last failure (none: the run ended
    /// failing).
    pub recovered_ms: Option<u64>,
}

/// The failed calls of a run, if any.
pub fn failure_window(calls: &[Record], times: &[Duration]) -> Option<FailureWindow> {
    let ms = |t: &Duration| t.as_millis() as u64;
    let failed: Vec<usize> = (0..calls.len().min(times.len()))
        .filter(|&i| calls[i].call.outcome.is_err())
        .collect();
    let (&first, &last) = (failed.first()?, failed.last()?);
    Some(FailureWindow {
        failed: failed.len() as u64,
        first_ms: ms(&times[first]),
        last_ms: ms(&times[last]),
        recovered_ms: (last + 1..times.len().min(calls.len()))
            .find(|&i| calls[i].call.outcome.is_ok())
            .map(|i| ms(&times[i])),
    })
}

impl std::fmt::Display for FailureWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |ms: u64| ms as f64 / 1000.0;
        write!(
            f,
            "{} call(s) failed, from t={:.2}s to t={:.2}s",
            self.failed,
            s(self.first_ms),
            s(self.last_ms)
        )?;
        match self.recovered_ms {
            Some(ms) => write!(
                f,
                "; answered again at t={:.2}s, {} ms after the first failure",
                s(ms),
                ms - self.first_ms
            ),
            None => write!(f, "; no answer after the last failure"),
        }
    }
}

/// The table printed under each scenario.
pub fn table(s: &Summary) -> String {
    let connections_per_pod = s.connections_per_pod();
    let mut out = String::new();
    out.push_str(&format!(
        "  {:<28} {:>6} {:>7} {:>12}\n",
        "pod", "calls", "share", "connections"
    ));
    for (pod, calls) in &s.pods {
        let share = 100.0 * *calls as f64 / s.calls.max(1) as f64;
        let conns = connections_per_pod
            .get(pod)
            .map_or("-".to_owned(), |c| c.to_string());
        out.push_str(&format!(
            "  {pod:<28} {calls:>6} {share:>6.1}% {conns:>12}\n"
        ));
    }
    let errors = if s.errors_by_code.is_empty() {
        "0".to_owned()
    } else {
        s.errors_by_code
            .iter()
            .map(|(code, n)| format!("{code}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    out.push_str(&format!(
        "  pods reached: {}   calls: {}   distinct connections: {}   max requests/connection: {}   errors: {errors}\n",
        s.pods.len(),
        s.calls,
        s.connections().unwrap_or(0),
        s.max_connection_requests().unwrap_or(0),
    ));
    out
}

/// A scenario's summary in `mesh --json`: the clients' [`Summary`] under the
/// names the mesh has always used (`calls_per_pod`, `connections`, ...).
pub fn serialize_summary<S: Serializer>(s: &Summary, serializer: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(
        &serde_json::json!({
            "calls": s.calls,
            "ok": s.ok,
            "errors": s.errors,
            "calls_per_pod": s.pods,
            "connections": s.connections().unwrap_or(0),
            "connections_per_pod": s.connections_per_pod(),
            "max_requests_per_connection": s.max_connection_requests().unwrap_or(0),
            "errors_by_code": s.errors_by_code,
            "all_tagged": s.all_tagged(),
        }),
        serializer,
    )
}

#[cfg(test)]
mod tests {
    use wire::{Call, Tags};

    use super::*;

    /// What `client-grpc --json` prints for an answer through the sidecars.
    fn tagged(n: u64, pod: &str, id: &str, requests: u64) -> String {
        let call = Call::ok(pod).with_tags(Tags {
            pod: Some(pod.into()),
            connection_id: Some(id.into()),
            connection_requests: Some(requests.to_string()),
        });
        Record {
            n,
            started: std::time::UNIX_EPOCH,
            latency: std::time::Duration::ZERO,
            call,
        }
        .json_line()
    }

    fn read(lines: &[String]) -> ClientOutput {
        let mut output = ClientOutput::default();
        for line in lines {
            output.push_line(line).unwrap();
        }
        output
    }

    #[test]
    fn records_read_back_and_their_summary_line_is_checked() {
        let mut lines = vec![
            tagged(3, "server-0", "12", 2),
            r#"{"n":4,"ok":false,"code":"UNAVAILABLE","message":"upstream connect error x=y","started_unix_us":0,"latency_us":5}"#.into(),
        ];
        let output = read(&lines);
        let ok = &output.records[0];
        assert_eq!(ok.n, 3);
        assert_eq!(ok.call.outcome.as_deref(), Ok("server-0"));
        assert_eq!(ok.call.tags.connection_id.as_deref(), Some("12"));
        assert_eq!(ok.call.upstream_connection_requests(), Some(2));
        let err = output.records[1].call.outcome.as_ref().unwrap_err();
        assert_eq!(err.code, "UNAVAILABLE");
        assert_eq!(err.message, "upstream connect error x=y");
        // What the client prints as it ends: the same summary.
        lines.push(output.summary.json_line());
        assert!(read(&lines).summarised);
    }

    #[test]
    fn a_line_that_is_not_a_record_is_an_error_naming_it() {
        for (line, says) in [
            ("#1: server-0", "not a call record"),
            ("  pod   calls", "not a call record"),
            (
                r#"{"n":1,"ok":true,"started_unix_us":0,"latency_us":1}"#,
                "without a pod",
            ),
            (r#"{"summary":{"calls":9}}"#, "disagrees with its 0 records"),
        ] {
            let error = ClientOutput::default()
                .push_line(line)
                .unwrap_err()
                .to_string();
            assert!(error.contains(says), "{line}: {error}");
            assert!(error.contains(&format!("{line:?}")), "{error}");
        }
        let mut output = ClientOutput::default();
        output.push_line(&Summary::default().json_line()).unwrap();
        let error = output.push_line(&tagged(1, "a", "1", 1)).unwrap_err();
        assert!(error.to_string().contains("after its summary"), "{error}");
    }

    #[test]
    fn summary_counts_pods_connections_and_errors() {
        let output = read(&[
            tagged(1, "a", "1", 1),
            tagged(2, "b", "2", 1),
            tagged(3, "a", "1", 2),
            r#"{"n":4,"ok":false,"code":"UNAVAILABLE","message":"overflow","started_unix_us":0,"latency_us":5}"#.into(),
        ]);
        let s = &output.summary;
        assert_eq!((s.calls, s.ok, s.errors), (4, 3, 1));
        assert_eq!(s.pods["a"], 2);
        assert_eq!(s.connections(), Some(2));
        assert_eq!(s.max_connection_requests(), Some(2));
        assert_eq!(s.errors_by_code["UNAVAILABLE"], 1);
        assert!(s.all_tagged());
        assert!(table(s).contains("pods reached: 2"));
    }

    fn at(n: u64, pod: Option<&str>) -> Record {
        let call = match pod {
            Some(pod) => Call::ok(pod),
            None => Call::error("UNAVAILABLE", "reset"),
        };
        Record {
            n,
            started: std::time::UNIX_EPOCH,
            latency: Duration::ZERO,
            call,
        }
    }

    #[test]
    fn timeline_marks_each_pods_slices_failures_and_events() {
        let calls = [
            at(1, Some("a")),
            at(2, Some("a")),
            at(3, None),
            at(4, Some("b")),
        ];
        let times = [0, 150, 300, 450].map(Duration::from_millis);
        let event = Happened {
            t_ms: 290,
            done_ms: 300,
            what: "killed",
            pod: Some("a".into()),
            detail: String::new(),
        };
        let pods = ["a".to_owned(), "b".to_owned()];
        let timeline = Timeline::new(&calls, &times, &pods, &[event]);
        assert_eq!(timeline.slice_ms, 10);
        let marks: Vec<(&str, &str)> = timeline
            .rows
            .iter()
            .map(|r| (r.name.as_str(), r.marks.as_str()))
            .collect();
        let row = |cols: &[usize], mark: char| -> String {
            (0..46)
                .map(|c| if cols.contains(&c) { mark } else { '.' })
                .collect()
        };
        assert_eq!(
            marks,
            [
                ("a", row(&[0, 15], '#').as_str()),
                ("b", row(&[45], '#').as_str()),
                ("failed", row(&[30], '#').as_str()),
                ("events", row(&[29], '^').as_str()),
            ]
        );
        // No event: no events row.
        let quiet = Timeline::new(&calls, &times, &pods, &[]);
        assert_eq!(quiet.rows.last().map(|r| r.name.as_str()), Some("failed"));
    }

    #[test]
    fn failure_window_says_how_many_failed_and_when_calls_came_back() {
        let calls = [at(1, Some("a")), at(2, None), at(3, None), at(4, Some("b"))];
        let times = [100, 200, 250, 400].map(Duration::from_millis);
        let window = failure_window(&calls, &times).unwrap();
        assert_eq!(
            window,
            FailureWindow {
                failed: 2,
                first_ms: 200,
                last_ms: 250,
                recovered_ms: Some(400)
            }
        );
        assert!(
            window
                .to_string()
                .contains("answered again at t=0.40s, 200 ms after")
        );
        assert_eq!(failure_window(&calls[..1], &times[..1]), None);
    }

    #[test]
    fn json_summary_keeps_the_mesh_names() {
        let output = read(&[tagged(1, "a", "1", 1), tagged(2, "a", "1", 2)]);
        #[derive(serde::Serialize)]
        struct Wrap(#[serde(serialize_with = "serialize_summary")] Summary);
        let json = serde_json::to_value(Wrap(output.summary)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "calls": 2, "ok": 2, "errors": 0,
                "calls_per_pod": {"a": 2},
                "connections": 1, "connections_per_pod": {"a": 1},
                "max_requests_per_connection": 2,
                "errors_by_code": {}, "all_tagged": true,
            })
        );
    }
}
