//! Child processes of the mesh: every one is registered so that normal exit,
//! an error, a panic or Ctrl-C all stop it, and none outlives the mesh.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicI32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Pids of live children, readable from a signal handler (atomics only).
static CHILDREN: [AtomicI32; 64] = [const { AtomicI32::new(0) }; 64];

extern "C" fn stop_children_and_exit(signal: libc::c_int) {
    for slot in &CHILDREN {
        let pid = slot.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) is async-signal-safe.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // SAFETY: _exit(2) is async-signal-safe.
    unsafe { libc::_exit(128 + signal) };
}

/// On SIGINT/SIGTERM/SIGHUP: kill every child, exit 128+signal.
pub fn stop_children_on_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only touches atomics and async-signal-safe calls.
        unsafe { libc::signal(signal, stop_children_and_exit as *const () as libc::sighandler_t) };
    }
}

/// A running child, killed (and reaped) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    slot: Option<usize>,
    pub log: PathBuf,
}

impl Proc {
    /// Start `command` with stdout+stderr (unless piped by the caller) into
    /// `log`. The child also dies with the mesh (PR_SET_PDEATHSIG).
    pub fn spawn(name: &str, command: Command, log: &Path) -> anyhow::Result<Self> {
        Self::start(name, command, log, false)
    }

    /// Like `spawn`, but stdout is a pipe for the caller (`take_stdout`).
    pub fn spawn_piped(name: &str, command: Command, log: &Path) -> anyhow::Result<Self> {
        Self::start(name, command, log, true)
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    fn start(name: &str, mut command: Command, log: &Path, piped: bool) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stderr(out.try_clone()?)
            .stdout(if piped { Stdio::piped() } else { Stdio::from(out) });
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({program})"))?;
        let slot = CHILDREN.iter().position(|slot| {
            slot.compare_exchange(0, child.id() as i32, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            slot,
            log: log.to_owned(),
        })
    }

    /// `Some(status)` if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for it to exit, killing it after `deadline`.
    pub fn wait_for_exit(&mut self, deadline: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > deadline {
                let _ = self.child.kill();
                bail!("{} did not finish within {deadline:?} and was stopped", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(slot) = self.slot {
            CHILDREN[slot].store(0, Ordering::SeqCst);
        }
    }
}

/// Fail early, with the fix, when an address the mesh needs is taken.
pub fn ensure_free(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "{addr} ({what}) is not free: {e}. Is another `mesh up` running? Stop it, or use another --subnet."
        ),
    }
}

/// Wait until `addr` accepts TCP connections, while `proc` keeps running.
pub fn wait_listening(proc: &mut Proc, addr: SocketAddr, deadline: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = proc.exited() {
            bail!(
                "{} exited ({status}) before listening on {addr}; its log {}:\n{}",
                proc.name,
                proc.log.display(),
                proc.log_tail(15)
            );
        }
        if start.elapsed() > deadline {
            bail!(
                "{} did not listen on {addr} within {deadline:?}; its log {}:\n{}",
                proc.name,
                proc.log.display(),
                proc.log_tail(15)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal HTTP/1.1 GET (Envoy admin endpoints), returning status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP response")?;
    Ok((status, body.to_owned()))
}
