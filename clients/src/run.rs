//! The calling loop shared by both clients: N callers share one numbering,
//! one writer prints every line (never interleaved, flushed per line) and
//! keeps the summary.

use std::{
    future::Future,
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};

use crate::{
    record::{Call, Record},
    summary::Summary,
};

/// Makes one call. Each concurrent caller owns its own (per-caller state such
/// as an HTTP keep-alive connection); shared state lives behind an `Arc`.
pub trait Caller: Send + 'static {
    /// One call, including its own timeout: the error code for a timeout
    /// differs per protocol, and a caller may need to drop a connection.
    fn call(&mut self) -> impl Future<Output = Call> + Send;
}

/// How the loop runs: a plain struct that tests build directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopConfig {
    /// Pause after each call, per caller.
    pub interval: Duration,
    /// Stop after this many calls in total; 0 = until stopped.
    pub count: u64,
    /// Also print the summary after every this many calls; 0 = never.
    pub summary_every: u64,
    /// One JSON object per line instead of text.
    pub json: bool,
}

/// Runs `callers` until `count` calls are done, `shutdown` completes, or
/// stdout goes away; prints each call and the final summary to `out`, and
/// returns the summary. Calls still in flight at shutdown are abandoned
/// (not printed, not counted), so Ctrl-C answers at once.
pub async fn run<C: Caller>(
    config: &LoopConfig,
    callers: Vec<C>,
    mut out: impl Write,
    shutdown: impl Future<Output = ()>,
) -> Summary {
    let (records_tx, mut records) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let next = Arc::new(AtomicU64::new(1));
    // Dropping the set aborts the callers, whatever way this returns.
    let mut workers = JoinSet::new();
    for caller in callers {
        workers.spawn(call_loop(
            caller,
            next.clone(),
            config.clone(),
            records_tx.clone(),
            stop.clone(),
        ));
    }
    drop(records_tx);

    let mut summary = Summary::default();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut stopping = false;
    let mut writable = true;
    loop {
        tokio::select! {
            record = records.recv() => {
                // `None`: every caller is done.
                let Some(record) = record else { break };
                summary.add(&record);
                let line = if config.json { record.json_line() } else { record.text_line() };
                let periodic = config.summary_every > 0
                    && summary.calls % config.summary_every == 0
                    // The final summary follows anyway.
                    && summary.calls != config.count;
                let mut result = write_line(&mut out, &line);
                if periodic && result.is_ok() {
                    result = write_summary(&mut out, &summary, config.json);
                }
                if let Err(e) = result {
                    // Typically a closed pipe (`| head`): nobody is reading.
                    log::debug!("stdout closed ({e}), stopping");
                    writable = false;
                    break;
                }
            }
            () = &mut shutdown, if !stopping => {
                stopping = true;
                let _ = stop_tx.send(true);
            }
        }
    }
    if writable && let Err(e) = write_summary(&mut out, &summary, config.json) {
        log::debug!("cannot print the summary: {e}");
    }
    summary
}

async fn call_loop<C: Caller>(
    mut caller: C,
    next: Arc<AtomicU64>,
    config: LoopConfig,
    records: mpsc::UnboundedSender<Record>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let n = next.fetch_add(1, Ordering::Relaxed);
        if config.count != 0 && n > config.count {
            return;
        }
        let started = Instant::now();
        let call = tokio::select! {
            call = caller.call() => call,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let record = Record {
            n,
            latency: started.elapsed(),
            call,
        };
        if records.send(record).is_err() {
            return;
        }
        // No pause after the last numbered call.
        if config.count != 0 && next.load(Ordering::Relaxed) > config.count {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(config.interval) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

fn write_line(out: &mut impl Write, line: &str) -> io::Result<()> {
    writeln!(out, "{line}")?;
    out.flush()
}

fn write_summary(out: &mut impl Write, summary: &Summary, json: bool) -> io::Result<()> {
    if json {
        write_line(out, &summary.json_line())
    } else {
        out.write_all(summary.text().as_bytes())?;
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future,
        sync::{Arc, Mutex},
    };

    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Answers from a fixed script of pods; `None` entries fail.
    struct Scripted {
        answers: Arc<Mutex<Vec<Option<&'static str>>>>,
    }

    impl Caller for Scripted {
        async fn call(&mut self) -> Call {
            let next = self.answers.lock().unwrap().pop().flatten();
            match next {
                Some(pod) => Call::ok(pod),
                None => Call::error("UNAVAILABLE", "scripted failure"),
            }
        }
    }

    fn config(count: u64) -> LoopConfig {
        LoopConfig {
            interval: Duration::ZERO,
            count,
            summary_every: 0,
            json: false,
        }
    }

    fn scripted(callers: usize, answers: Vec<Option<&'static str>>) -> Vec<Scripted> {
        let answers = Arc::new(Mutex::new(answers.into_iter().rev().collect()));
        (0..callers)
            .map(|_| Scripted {
                answers: answers.clone(),
            })
            .collect()
    }

    #[tokio::test]
    async fn prints_count_numbered_lines_then_the_summary() {
        let out = Shared::default();
        let callers = scripted(1, vec![Some("a"), None, Some("b")]);
        let summary = run(&config(3), callers, out.clone(), future::pending()).await;
        assert_eq!((summary.calls, summary.ok, summary.errors), (3, 2, 1));
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..3],
            ["#1: a", "#2: error: UNAVAILABLE scripted failure", "#3: b"]
        );
        assert_eq!(lines[3], "--- summary: 3 calls, 2 ok, 1 errors");
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_numbering() {
        let out = Shared::default();
        let callers = scripted(4, vec![Some("a"); 20]);
        let summary = run(&config(20), callers, out.clone(), future::pending()).await;
        assert_eq!(summary.calls, 20);
        let mut numbers: Vec<u64> = out
            .text()
            .lines()
            .filter_map(|l| l.strip_prefix('#')?.split(':').next()?.parse().ok())
            .collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn periodic_summaries_and_json_lines() {
        let out = Shared::default();
        let config = LoopConfig {
            summary_every: 2,
            json: true,
            ..config(4)
        };
        run(
            &config,
            scripted(1, vec![Some("a"); 4]),
            out.clone(),
            future::pending(),
        )
        .await;
        let lines: Vec<serde_json::Value> = out
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // call, call, summary(2), call, call, final summary(4): no duplicate at 4.
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[2]["summary"]["calls"], 2);
        assert_eq!(lines[5]["summary"]["calls"], 4);
        assert_eq!(lines[3]["n"], 3);
    }

    #[tokio::test]
    async fn shutdown_stops_an_endless_loop_with_a_summary() {
        let out = Shared::default();
        let config = LoopConfig {
            interval: Duration::from_millis(1),
            ..config(0)
        };
        let watched = out.clone();
        // Stop once a few lines are out, as Ctrl-C would.
        let shutdown = async move {
            while watched.text().lines().count() < 3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let summary = run(
            &config,
            scripted(2, vec![Some("a"); 10_000]),
            out.clone(),
            shutdown,
        )
        .await;
        assert!(summary.calls >= 3);
        assert!(out.text().ends_with(&summary.text()));
    }

    #[tokio::test]
    async fn a_closed_stdout_stops_the_loop() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let summary = run(
            &config(0),
            scripted(1, vec![Some("a"); 10_000]),
            Closed,
            future::pending(),
        )
        .await;
        assert_eq!(summary.calls, 1);
    }
}
