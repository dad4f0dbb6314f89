//! Hostile peers against the real server binary (issue 14, items 1–3): many
//! never-finished streams, stuck calls, a preface alone, header lines
//! trickling in, idle connections, and accepts failing for lack of file
//! descriptors. Memory and CPU are read from `/proc/<pid>`.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use harness::process::ChildGuard;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The server binary as a child process, its addresses read from its log.
struct Server {
    guard: ChildGuard,
    log: PathBuf,
    grpc: SocketAddr,
    http: SocketAddr,
}

impl Server {
    /// `args` come after the listen addresses; `nofile` caps the process's
    /// file descriptors (`ulimit -n`).
    fn start(name: &str, args: &[&str], nofile: Option<u32>) -> Self {
        let dir = harness::paths::run_dir(name).unwrap();
        let log = dir.join("server.log");
        let bin = env!("CARGO_BIN_EXE_server");
        let mut command = match nofile {
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                sh
            }
            None => Command::new(bin),
        };
        command
            .args([
                "--grpc-addr=127.0.0.1:0",
                "--http-addr=127.0.0.1:0",
                "--pod-name=p",
            ])
            .args(args)
            .env("RUST_LOG", "info");
        let guard = ChildGuard::spawn_logged(name, &mut command, &log).unwrap();
        let (grpc, http) = harness::process::wait_for(
            "the server's listening line",
            Duration::from_secs(20),
            Duration::from_millis(20),
            Some(&log),
            || listening(&std::fs::read_to_string(&log).ok()?),
        )
        .unwrap();
        Self {
            guard,
            log,
            grpc,
            http,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Resident memory in KiB (`VmRSS`, or `VmHWM` for the peak).
    fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.guard.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// User + system CPU time used so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.guard.pid())).unwrap();
        // Fields after the `(comm)`, which may contain spaces: utime and stime
        // are the 14th and 15th fields overall, in USER_HZ (100/s on Linux).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        Duration::from_millis((fields[0] + fields[1]) * 10)
    }
}

/// `... gRPC on 127.0.0.1:X, HTTP on 127.0.0.1:Y ...` → (X, Y).
fn listening(log: &str) -> Option<(SocketAddr, SocketAddr)> {
    let line = log.lines().find(|l| l.contains(": gRPC on "))?;
    let grpc = line.split(": gRPC on ").nth(1)?.split(',').next()?;
    let http = line.split("HTTP on ").nth(1)?.split(' ').next()?;
    Some((grpc.parse().ok()?, http.parse().ok()?))
}

// ---- raw HTTP/2, so a peer can break the rules a real client keeps --------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// A getInfo call's request headers, HPACK literals without indexing: the
/// request opens the stream, and with no END_STREAM it never finishes.
fn get_info_headers(stream: u32) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", proto::GET_INFO_PATH),
        (":authority", "p"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0);
        block.push(name.len() as u8);
        block.extend(name.as_bytes());
        block.push(value.len() as u8);
        block.extend(value.as_bytes());
    }
    frame(HEADERS, END_HEADERS, stream, &block)
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn read_frame(r: &mut (impl AsyncReadExt + Unpin)) -> Option<Frame> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Preface and settings exchanged: ready for streams.
async fn h2_connect(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(PREFACE).await.unwrap();
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    loop {
        let f = read_frame(&mut stream).await.expect("server settings");
        if f.kind == SETTINGS && f.flags & ACK == 0 {
            break;
        }
    }
    stream
        .write_all(&frame(SETTINGS, ACK, 0, &[]))
        .await
        .unwrap();
    stream
}

/// What the server said on a connection until it closed or `until` passed.
#[derive(Default, Debug)]
struct Seen {
    refused: u64,
    other_resets: u64,
    /// Streams the server finished (HEADERS with END_STREAM or a reset).
    finished: std::collections::BTreeSet<u32>,
    goaway: bool,
    closed: bool,
}

async fn watch(mut read: tokio::net::tcp::OwnedReadHalf, until: Duration) -> Seen {
    let mut seen = Seen::default();
    let _ = tokio::time::timeout(until, async {
        while let Some(f) = read_frame(&mut read).await {
            match f.kind {
                RST_STREAM => {
                    let code = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                    if code == REFUSED_STREAM {
                        seen.refused += 1;
                    } else {
                        seen.other_resets += 1;
                        seen.finished.insert(f.stream);
                    }
                }
                HEADERS if f.flags & END_STREAM != 0 => {
                    seen.finished.insert(f.stream);
                }
                GOAWAY => seen.goaway = true,
                _ => {}
            }
        }
        seen.closed = true;
    })
    .await;
    seen
}

/// One getInfo through a real client: the server still answers.
async fn still_serves(addr: SocketAddr) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let answer = proto::PodClient::new(channel)
        .get_info(proto::InfoRequest::default())
        .await
        .expect("getInfo");
    assert_eq!(answer.into_inner().name, "p");
}

/// Opens `streams` getInfo streams on a fresh connection, finishes none, and
/// counts the refusals until the server has answered every stream past the
/// limit (or gave up on the connection). The write half is returned, so the
/// connection and its open streams stay until the caller drops it.
async fn flood(addr: SocketAddr, streams: u32) -> (Seen, tokio::net::tcp::OwnedWriteHalf) {
    let (read, mut write) = h2_connect(addr).await.into_split();
    let refused = Arc::new(AtomicU64::new(0));
    let expected = u64::from(streams - server::MAX_CONCURRENT_STREAMS);
    let watcher = {
        let refused = refused.clone();
        tokio::spawn(async move {
            let mut read = read;
            let mut seen = Seen::default();
            while let Some(f) = read_frame(&mut read).await {
                match f.kind {
                    RST_STREAM if f.payload[..4] == REFUSED_STREAM.to_be_bytes() => {
                        seen.refused += 1;
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    GOAWAY => seen.goaway = true,
                    _ => {}
                }
                if seen.goaway || seen.refused == expected {
                    break;
                }
            }
            seen
        })
    };
    let mut batch = Vec::new();
    for i in 0..streams {
        batch.extend(get_info_headers(2 * i + 1));
        if batch.len() > 64 * 1024 {
            // The server may give up on us (GOAWAY) before we are done.
            if write.write_all(&batch).await.is_err() {
                break;
            }
            batch.clear();
        }
    }
    let _ = write.write_all(&batch).await;
    let seen = tokio::time::timeout(Duration::from_secs(20), watcher)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} of {expected} excess streams refused after 20s",
                refused.load(Ordering::Relaxed)
            )
        })
        .unwrap();
    (seen, write)
}

/// Item 1. The probe: 100,000 streams over 4 connections, none finished.
/// Without a limit one connection with 15,000 took a fresh server from ~5 MB
/// to 137 MB (100,000: 912 MB); now the streams past the limit are refused
/// and the peak stays near idle.
#[tokio::test(flavor = "multi_thread")]
async fn never_finished_streams_are_refused_past_the_limit_and_memory_stays_flat() {
    let server = Server::start("streams-flood", &[], None);
    still_serves(server.grpc).await;
    let idle = server.memory_kib("VmRSS");

    let floods: Vec<_> = (0..4)
        .map(|_| tokio::spawn(flood(server.grpc, 25_000)))
        .collect();
    let mut refused = 0;
    let mut open = Vec::new();
    for flood in floods {
        let (seen, write) = flood.await.unwrap();
        open.push(write);
        assert!(
            seen.refused > 0 || seen.goaway,
            "streams past the limit are refused: {seen:?}"
        );
        refused += seen.refused;
    }
    let peak = server.memory_kib("VmHWM");
    let growth_mib = peak.saturating_sub(idle) as f64 / 1024.0;
    eprintln!("idle {idle} KiB, peak {peak} KiB (+{growth_mib:.1} MiB), {refused} streams refused");
    assert!(
        growth_mib < 8.0,
        "peak memory grew {growth_mib:.1} MiB over idle under 100,000 open streams"
    );
    drop(open);
    still_serves(server.grpc).await;
}

/// Item 1. Streams within the limit that never finish their request are
/// ended by the server once the call timeout passes.
#[tokio::test(flavor = "multi_thread")]
async fn stuck_calls_are_ended_after_the_call_timeout() {
    let server = Server::start(
        "stuck-calls",
        &["--max-delay=500ms", "--call-timeout=1s"],
        None,
    );
    let (read, mut write) = h2_connect(server.grpc).await.into_split();
    let streams: Vec<u32> = (0..server::MAX_CONCURRENT_STREAMS)
        .map(|i| 2 * i + 1)
        .collect();
    let started = Instant::now();
    for id in &streams {
        write.write_all(&get_info_headers(*id)).await.unwrap();
    }
    // Each stuck stream gets its answer (CANCELLED) and then a reset, since
    // its request never ended: the reset is what frees the stream's slot.
    let watcher = tokio::spawn(async move {
        let mut read = read;
        let mut answered = std::collections::BTreeSet::new();
        let mut reset = std::collections::BTreeSet::new();
        while let Some(f) = read_frame(&mut read).await {
            if f.kind == HEADERS && f.flags & END_STREAM != 0 {
                answered.insert(f.stream);
            }
            if f.kind == RST_STREAM {
                reset.insert(f.stream);
            }
            if reset.len() == streams.len() {
                break;
            }
        }
        (answered, reset, started.elapsed(), read)
    });
    let (answered, reset, after, mut read) = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("every stuck stream is reset within 10s")
        .unwrap();
    assert_eq!(reset.len(), server::MAX_CONCURRENT_STREAMS as usize);
    assert_eq!(answered.len(), server::MAX_CONCURRENT_STREAMS as usize);
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "ended after {after:?}, the call timeout is 1s"
    );

    // The slots are free again: a complete call on the same connection is
    // answered, not refused.
    let next = 2 * server::MAX_CONCURRENT_STREAMS + 1;
    let mut request = get_info_headers(next);
    request.extend(frame(0x0, END_STREAM, next, &[0, 0, 0, 0, 0]));
    write.write_all(&request).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(f) = read_frame(&mut read).await {
            if f.stream == next && (f.kind == HEADERS || f.kind == RST_STREAM) {
                return Some(f.kind);
            }
        }
        None
    })
    .await
    .expect("an answer on the freed connection");
    assert_eq!(answer, Some(HEADERS), "a new call after the stuck ones");
    drop(write);
}

/// Reads until the server closes the connection; how long that took.
async fn time_to_close(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// Item 2. A preface alone (both ports speak HTTP/2) and HTTP/1.1 header
/// lines arriving one every 300 ms: closed at the header timeout, while a
/// connection that did send a request stays until the idle timeout.
#[tokio::test(flavor = "multi_thread")]
async fn preface_only_and_slow_header_connections_are_closed_at_the_header_timeout() {
    let server = Server::start(
        "header-timeout",
        &["--header-timeout=1s", "--idle-timeout=30s"],
        None,
    );
    let limit = Duration::from_secs(4);

    for (port, addr) in [("gRPC", server.grpc), ("HTTP", server.http)] {
        let mut preface_only = TcpStream::connect(addr).await.unwrap();
        preface_only.write_all(PREFACE).await.unwrap();
        preface_only
            .write_all(&frame(SETTINGS, 0, 0, &[]))
            .await
            .unwrap();
        let closed = time_to_close(&mut preface_only, limit).await;
        let closed = closed
            .unwrap_or_else(|| panic!("{port}: preface-only connection open after {limit:?}"));
        assert!(
            closed >= Duration::from_millis(900),
            "{port}: closed after {closed:?}"
        );
    }

    let mut slow = TcpStream::connect(server.http).await.unwrap();
    let trickle = async {
        let _ = slow.write_all(b"GET /pod HTTP/1.1\r\n").await;
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow
                .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let started = Instant::now();
    let _ = tokio::time::timeout(limit, trickle).await;
    let closed = started.elapsed();
    assert!(
        closed < limit,
        "slow headers: connection still accepting header lines after {closed:?}"
    );
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}"
    );
}

/// Item 2. Idle connections on both ports are closed at the idle timeout,
/// but a call that runs longer than that is not cut.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_but_not_under_a_running_call() {
    let server = Server::start(
        "idle-timeout",
        &["--header-timeout=1s", "--idle-timeout=1s"],
        None,
    );

    // gRPC: a call that outlasts the idle timeout completes; afterwards the
    // connection is closed once it has been idle for the timeout.
    let (read, mut write) = h2_connect(server.grpc).await.into_split();
    let mut request = get_info_headers(1);
    // delay_ms = 2000: field 1, varint.
    let message = [0x08, 0xd0, 0x0f];
    let mut body = vec![0, 0, 0, 0, message.len() as u8];
    body.extend(message);
    request.extend(frame(0x0, END_STREAM, 1, &body));
    write.write_all(&request).await.unwrap();
    let seen = watch(read, Duration::from_secs(8)).await;
    assert!(
        seen.finished.contains(&1),
        "the 2s call was answered: {seen:?}"
    );
    assert!(seen.closed, "then the idle connection was closed: {seen:?}");
    drop(write);

    // HTTP/1.1 keep-alive: one request, then nothing.
    let mut http = TcpStream::connect(server.http).await.unwrap();
    http.write_all(b"GET /pod HTTP/1.1\r\nhost: p\r\n\r\n")
        .await
        .unwrap();
    let closed = time_to_close(&mut http, Duration::from_secs(4))
        .await
        .expect("idle HTTP/1.1 connection closed within 4s");
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}"
    );
}

/// Item 3. With its descriptors used up, the server cannot accept the
/// connections waiting in its backlog. tonic's own loop retried at once and
/// burned a core; now it backs off, logs once, and recovers.
#[tokio::test(flavor = "multi_thread")]
async fn accept_errors_back_off_when_descriptors_run_out() {
    let server = Server::start("emfile", &["--header-timeout=60s"], Some(48));
    still_serves(server.grpc).await;

    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(server.grpc).await.unwrap());
    }
    harness::process::wait_for(
        "the server to report failing accepts",
        Duration::from_secs(10),
        Duration::from_millis(20),
        Some(&server.log),
        || {
            server
                .log()
                .contains("cannot accept connections")
                .then_some(())
        },
    )
    .unwrap();

    let before = server.cpu();
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let used = server.cpu() - before;
    eprintln!("CPU used in {window:?} with accepts failing: {used:?}");
    assert!(
        used < Duration::from_millis(200),
        "the server used {used:?} of CPU in {window:?} while out of descriptors"
    );
    let log = server.log();
    assert_eq!(
        log.matches("cannot accept connections").count(),
        1,
        "logged once per episode:\n{log}"
    );

    drop(held);
    harness::process::wait_for(
        "the server to accept again",
        Duration::from_secs(10),
        Duration::from_millis(50),
        Some(&server.log),
        || {
            server
                .log()
                .contains("accepting connections again")
                .then_some(())
        },
    )
    .unwrap();
    still_serves(server.grpc).await;
}
