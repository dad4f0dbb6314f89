//! Child processes of the mesh: every one is registered so that normal exit,
//! an error, a panic or Ctrl-C all stop it, and none outlives the mesh.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;
use harness::process::ChildGuard;

pub use harness::process::stop_children_on_signals;

/// A running child with its log file; killed (and reaped) on drop, and on
/// Ctrl-C once `stop_children_on_signals` ran (see `harness::process`).
pub struct Proc {
    pub name: String,
    guard: ChildGuard,
    pub log: PathBuf,
}

impl Proc {
    /// Start `command` with stdout+stderr into `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let guard = ChildGuard::spawn_logged(name, &mut command, log)?;
        Ok(Self::from_guard(name, guard, log))
    }

    /// Like `spawn`, but stdout is a pipe for the caller (`take_stdout`).
    pub fn spawn_piped(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let guard = ChildGuard::spawn_piped(name, &mut command, log)?;
        Ok(Self::from_guard(name, guard, log))
    }

    fn from_guard(name: &str, guard: ChildGuard, log: &Path) -> Self {
        Self {
            name: name.to_owned(),
            guard,
            log: log.to_owned(),
        }
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.guard.take_stdout()
    }

    /// `Some(status)` if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.guard.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Wait for it to exit, killing it after `deadline`.
    pub fn wait_for_exit(
        &mut self,
        deadline: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.guard.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > deadline {
                self.guard.kill();
                bail!(
                    "{} did not finish within {deadline:?} and was stopped",
                    self.name
                );
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

/// GET on an admin endpoint (harness's HTTP/1.1 client), status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let response = harness::http::get(addr, path, Duration::from_secs(5))?;
    Ok((response.status, response.body))
}
