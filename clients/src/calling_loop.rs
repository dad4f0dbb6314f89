//! The calling loop shared by both clients: N callers share one numbering,
//! one writer prints every line (never interleaved, flushed per line) and
//! keeps the summary.
//!
//! Output is bounded end to end: the callers hand records over a bounded
//! queue, and stdout is written by its own thread from another bounded
//! queue. When stdout blocks (`client-grpc ... | less`, not scrolling), the
//! queues fill and the callers wait, instead of the client piling up lines in
//! memory; SIGINT/SIGTERM still end it, since no async task ever blocks on
//! the write itself.

use std::{
    future::Future,
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinSet,
};

use crate::{
    record::{Call, Record},
    summary::Summary,
};

/// Records waiting to be printed, and chunks of text waiting to be written.
pub const QUEUE: usize = 64;

/// After SIGINT/SIGTERM, how long a blocked stdout gets to take the rest.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

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

/// How the output ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Open,
    /// Write failed: typically a closed pipe (`| head`), nobody is reading.
    Closed,
    /// Still blocked when the grace after a stop signal ran out.
    Blocked,
}

/// Runs `callers` until `count` calls are done, `shutdown` completes, or
/// stdout goes away; prints each call and the final summary to `out`, and
/// returns the summary. Calls still in flight at shutdown are abandoned
/// (not printed, not counted), so Ctrl-C answers at once.
pub async fn run<C: Caller>(
    config: &LoopConfig,
    callers: Vec<C>,
    out: impl Write + Send + 'static,
    shutdown: impl Future<Output = ()>,
) -> Summary {
    let writer = match Writer::spawn(out) {
        Ok(writer) => writer,
        Err(e) => {
            log::error!("cannot start the output thread: {e}");
            return Summary::default();
        }
    };
    let (records_tx, mut records) = mpsc::channel(QUEUE);
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
    // Set when the stop signal arrives: the end of the grace for stdout.
    let mut give_up: Option<tokio::time::Instant> = None;
    // A chunk the writer has no room for yet; no new record is taken until
    // it is handed over, which is what holds the callers back.
    let mut pending: Option<String> = None;
    let mut output = Output::Open;
    let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
    loop {
        tokio::select! {
            record = records.recv(), if pending.is_none() => {
                // `None`: every caller is done.
                let Some(record) = record else { break };
                summary.add(&record);
                let mut chunk = if config.json { record.json_line() } else { record.text_line() };
                chunk.push('\n');
                let periodic = config.summary_every > 0
                    && summary.calls % config.summary_every == 0
                    // The final summary follows anyway.
                    && summary.calls != config.count;
                if periodic {
                    chunk.push_str(&summary_text(&summary, config.json));
                }
                pending = Some(chunk);
            }
            permit = writer.chunks.reserve(), if pending.is_some() => match permit {
                Ok(permit) => permit.send(pending.take().unwrap_or_default()),
                Err(_) => {
                    output = Output::Closed;
                    break;
                }
            },
            () = &mut shutdown, if give_up.is_none() => {
                give_up = Some(tokio::time::Instant::now() + STOP_GRACE);
                let _ = stop_tx.send(true);
            }
            () = tokio::time::sleep_until(give_up.unwrap_or_else(far)), if give_up.is_some() => {
                output = Output::Blocked;
                break;
            }
        }
    }
    drop(workers);

    if output == Output::Open {
        let final_summary = summary_text(&summary, config.json);
        output = writer.finish(final_summary, shutdown, give_up).await;
    }
    match output {
        Output::Open => {}
        Output::Closed => log::debug!("stdout closed, stopped"),
        Output::Blocked => {
            log::warn!(
                "stdout is blocked (nothing reads it): exiting without waiting; \
                 the summary goes to stderr"
            );
            eprint!("{}", summary_text(&summary, config.json));
        }
    }
    summary
}

/// The thread that owns stdout: a blocking write holds only this thread.
struct Writer {
    chunks: mpsc::Sender<String>,
    /// Sent once everything was written; dropped if a write failed.
    written: oneshot::Receiver<()>,
}

impl Writer {
    fn spawn(mut out: impl Write + Send + 'static) -> io::Result<Self> {
        let (chunks, mut rx) = mpsc::channel::<String>(QUEUE);
        let (written_tx, written) = oneshot::channel();
        std::thread::Builder::new()
            .name("output".into())
            .spawn(move || {
                while let Some(chunk) = rx.blocking_recv() {
                    if let Err(e) = out.write_all(chunk.as_bytes()).and_then(|()| out.flush()) {
                        log::debug!("cannot write to stdout: {e}");
                        return;
                    }
                }
                let _ = written_tx.send(());
            })?;
        Ok(Self { chunks, written })
    }

    /// Queues the last chunk and waits until everything is written, the
    /// write fails, or (after a stop signal) the grace runs out. A stop
    /// signal that had not come yet still ends the wait.
    async fn finish(
        self,
        last: String,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
        mut give_up: Option<tokio::time::Instant>,
    ) -> Output {
        let Self {
            chunks,
            mut written,
        } = self;
        let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
        let mut chunks = Some(chunks);
        let mut last = Some(last);
        loop {
            if last.is_none() {
                // Everything is queued: closing the queue lets the thread end.
                chunks = None;
            }
            tokio::select! {
                permit = async { chunks.as_ref()?.reserve().await.ok() }, if last.is_some() => match permit {
                    Some(permit) => permit.send(last.take().unwrap_or_default()),
                    None => return Output::Closed,
                },
                done = &mut written, if last.is_none() => {
                    return if done.is_ok() { Output::Open } else { Output::Closed };
                }
                () = &mut shutdown, if give_up.is_none() => {
                    give_up = Some(tokio::time::Instant::now() + STOP_GRACE);
                }
                () = tokio::time::sleep_until(give_up.unwrap_or_else(far)), if give_up.is_some() => {
                    return Output::Blocked;
                }
            }
        }
    }
}

async fn call_loop<C: Caller>(
    mut caller: C,
    next: Arc<AtomicU64>,
    config: LoopConfig,
    records: mpsc::Sender<Record>,
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
        let (started, clock) = (SystemTime::now(), Instant::now());
        let call = tokio::select! {
            call = caller.call() => call,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let record = Record {
            n,
            started,
            latency: clock.elapsed(),
            call,
        };
        // Waits while the output is behind: this is the backpressure.
        tokio::select! {
            sent = records.send(record) => if sent.is_err() { return },
            _ = stop.wait_for(|stop| *stop) => return,
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

/// The summary as printed: the text table, or one JSON line.
fn summary_text(summary: &Summary, json: bool) -> String {
    if json {
        summary.json_line() + "\n"
    } else {
        summary.text()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future,
        sync::{Arc, Mutex},
    };

    use tokio::sync::oneshot;

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
        // The first write fails; what was already queued is all that ran.
        assert!(
            summary.calls <= 2 * QUEUE as u64 + 2,
            "{} calls",
            summary.calls
        );
    }

    /// A writer that never returns, like a pipe nobody reads.
    struct Stuck;
    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            loop {
                std::thread::park();
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_blocked_stdout_holds_the_callers_and_a_stop_still_ends_the_loop() {
        let (stop, stopped) = oneshot::channel::<()>();
        let made = Arc::new(AtomicU64::new(0));
        let callers: Vec<Counting> = (0..4).map(|_| Counting(made.clone())).collect();
        let loop_ = tokio::spawn(async move {
            run(&config(0), callers, Stuck, async {
                let _ = stopped.await;
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let made = made.load(Ordering::Relaxed);
        // One chunk in the writer, the two queues, and a call per caller.
        assert!(
            made <= 2 * QUEUE as u64 + 8,
            "{made} calls made with stdout blocked"
        );
        stop.send(()).unwrap();
        let summary = tokio::time::timeout(STOP_GRACE * 3, loop_)
            .await
            .expect("the loop ends after a stop although stdout is blocked")
            .unwrap();
        assert!(summary.calls <= made);
    }

    /// Answers at once, and counts the calls made.
    struct Counting(Arc<AtomicU64>);

    impl Caller for Counting {
        async fn call(&mut self) -> Call {
            self.0.fetch_add(1, Ordering::Relaxed);
            Call::ok("a")
        }
    }
}
