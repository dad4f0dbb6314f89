//! Shared by the client tests: a real echo server in-process on ephemeral
//! ports, and the client binaries run as real processes with deadlines.

#![allow(dead_code)] // each test binary uses its own subset

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
    sync::oneshot,
    task::JoinHandle,
};

/// Nothing here should take more than a few seconds; this only turns a hang
/// into a failure.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub const CLIENT_GRPC: &str = env!("CARGO_BIN_EXE_client-grpc");
pub const CLIENT_HTTP: &str = env!("CARGO_BIN_EXE_client-http");

pub struct TestServer {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(pod: &str) -> Self {
        Self::start_with(server::Config::local(pod)).await
    }

    pub async fn start_with(config: server::Config) -> Self {
        Self::try_start_with(config)
            .await
            .expect("bind the test server")
    }

    /// [`TestServer::start_with`], a bind failure returned (e.g. a port
    /// chosen for several addresses turned out taken on one).
    pub async fn try_start_with(config: server::Config) -> anyhow::Result<Self> {
        let server = server::Server::bind(config).await?;
        let (grpc, http) = (server.grpc_addr(), server.http_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Ok(Self {
            grpc,
            http,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops and waits until the listeners are closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("server stops within the deadline")
                .expect("server task")
                .expect("server");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A server on its own runtime and thread: [`KillableServer::kill`] drops
/// that runtime, which closes every socket at once, as killing the process
/// would (a [`TestServer`] shares the test's runtime, which lives on).
pub struct KillableServer {
    pub grpc: SocketAddr,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KillableServer {
    pub fn start(pod: &str) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (kill, killed) = oneshot::channel::<()>();
        let config = server::Config::local(pod);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime for the server");
            runtime.block_on(async move {
                let server = server::Server::bind(config).await.expect("bind");
                addr_tx.send(server.grpc_addr()).expect("test waits");
                tokio::spawn(server.serve(std::future::pending()));
                let _ = killed.await;
            });
            // `runtime` drops here with every task and socket it owns.
        });
        let grpc = addr_rx
            .recv_timeout(DEADLINE)
            .expect("killable server bound");
        Self {
            grpc,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for KillableServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nothing listens on: bound, then released.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// The `#N: ...` lines.
    pub fn calls(&self) -> Vec<&str> {
        self.stdout.lines().filter(|l| l.starts_with('#')).collect()
    }

    /// The text after the first `--- summary:` line, up to the next call.
    pub fn last_summary(&self) -> String {
        let start = self
            .stdout
            .rfind("--- summary:")
            .unwrap_or_else(|| panic!("no summary in:\n{}", self.stdout));
        self.stdout[start..].to_owned()
    }

    /// A row of the last summary's table: (calls, share) for a pod or for
    /// `error <CODE>`.
    pub fn summary_row(&self, name: &str) -> Option<(u64, String)> {
        self.last_summary().lines().find_map(|line| {
            let rest = line.strip_prefix("  ")?.strip_prefix(name)?;
            let mut cols = rest.split_whitespace();
            let calls = cols.next()?.parse().ok()?;
            let share = cols.next()?.to_owned();
            cols.next().is_none().then_some((calls, share))
        })
    }

    pub fn json(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
            .collect()
    }
}

/// Where a test's client stderr is kept.
pub fn log_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("clients-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.stderr"))
}

fn command(bin: &str, args: &[&str], stderr: Stdio) -> Command {
    let mut command = Command::new(bin);
    command
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true);
    // Flags only: a CLIENT_* variable in the developer's shell must not leak in.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CLIENT_") {
            command.env_remove(key);
        }
    }
    command
}

/// Runs a client to completion (killed if it outlives [`DEADLINE`]).
pub async fn run_client(name: &str, bin: &str, args: &[&str]) -> Output {
    run_client_with_env(name, bin, args, &[]).await
}

/// [`run_client`] with environment variables set for the client only.
pub async fn run_client_with_env(
    name: &str,
    bin: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let child = command(bin, args, Stdio::piped())
        .envs(env.iter().copied())
        .spawn()
        .expect("spawn the client");
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{name}: client still running after {DEADLINE:?}"))
        .expect("client output");
    let out = Output {
        status: output.status,
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    std::fs::write(log_path(name), &out.stderr).unwrap();
    out
}

/// A client left running, read line by line.
pub struct Running {
    name: String,
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
}

impl Running {
    pub fn spawn(name: &str, bin: &str, args: &[&str]) -> Self {
        // Straight to the log file: an unread pipe could fill and block it.
        let log = std::fs::File::create(log_path(name)).unwrap();
        let mut child = command(bin, args, Stdio::from(log))
            .spawn()
            .expect("spawn the client");
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            name: name.to_owned(),
            child,
            stdout,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one matches; returns it.
    pub async fn wait_for_line(&mut self, what: impl Fn(&str) -> bool) -> String {
        let read = async {
            while let Some(line) = self.stdout.next_line().await.expect("read stdout") {
                self.seen.push(line.clone());
                if what(&line) {
                    return line;
                }
            }
            panic!(
                "{}: stdout ended; saw:\n{}",
                self.name,
                self.seen.join("\n")
            );
        };
        tokio::time::timeout(DEADLINE, read)
            .await
            .unwrap_or_else(|_| panic!("{}: no matching line within {DEADLINE:?}", self.name))
    }

    /// Sends `signal` (e.g. "INT") and collects the rest of the output.
    pub async fn signal_and_finish(self, signal: &str) -> Output {
        let pid = self.child.id().expect("client still running").to_string();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid}");
        self.finish().await
    }

    /// Collects the rest of the output until the client exits by itself.
    pub async fn finish(mut self) -> Output {
        let finish = async {
            while let Some(line) = self.stdout.next_line().await.expect("read stdout") {
                self.seen.push(line);
            }
            self.child.wait().await.expect("wait")
        };
        let status = tokio::time::timeout(DEADLINE, finish)
            .await
            .unwrap_or_else(|_| panic!("{}: did not exit within {DEADLINE:?}", self.name));
        let stderr = std::fs::read_to_string(log_path(&self.name)).unwrap();
        Output {
            status,
            stdout: self.seen.iter().map(|l| format!("{l}\n")).collect(),
            stderr,
        }
    }
}

/// Issue 14, item 4: a client whose stdout nobody reads keeps its memory
/// flat (unbounded, a debug build queued about 1 MiB in 3 s; the probe's
/// release build 5 MB/s), and SIGINT still ends it, with the summary on
/// stderr.
pub async fn assert_blocked_stdout_is_bounded_and_sigint_ends_it(
    name: &str,
    bin: &str,
    args: &[&str],
) {
    let mut client = spawn_unread(name, bin, args);
    let pid = client.id().expect("client running");
    // By now the 64 KiB pipe is long full.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    let growth_mib = after.saturating_sub(before) as f64 / 1024.0;
    eprintln!("RSS {before} KiB -> {after} KiB over 3 s with stdout blocked");
    assert!(
        growth_mib < 0.5,
        "client memory grew {growth_mib:.1} MiB in 3 s with stdout blocked"
    );

    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(5), client.wait())
        .await
        .expect("SIGINT ends the client although stdout is blocked")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let stderr = std::fs::read_to_string(log_path(name)).unwrap();
    assert!(stderr.contains("stdout is blocked"), "{stderr}");
    assert!(
        stderr.contains("--- summary: "),
        "summary on stderr: {stderr}"
    );
}

/// A client whose stdout is a pipe nobody reads (`client | less`, not
/// scrolling): it fills and then blocks every write. Killed on drop.
fn spawn_unread(name: &str, bin: &str, args: &[&str]) -> Child {
    let log = std::fs::File::create(log_path(name)).unwrap();
    command(bin, args, Stdio::from(log))
        .spawn()
        .expect("spawn the client")
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

/// `#N: rest` → (N, rest).
pub fn split_call(line: &str) -> (u64, &str) {
    let (n, rest) = line
        .strip_prefix('#')
        .and_then(|l| l.split_once(": "))
        .unwrap_or_else(|| panic!("not a call line: {line:?}"));
    (
        n.parse()
            .unwrap_or_else(|_| panic!("bad number in {line:?}")),
        rest,
    )
}
