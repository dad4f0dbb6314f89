//! Child processes that cannot outlive us, free ports, and waiting with
//! deadlines.
//!
//! A guarded child dies however we end: `Drop` kills it on normal exit,
//! errors and panics; [`stop_children_on_signals`] on Ctrl-C/SIGTERM; and
//! the kernel (`PR_SET_PDEATHSIG`) if we are killed outright.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Pids of live guarded children, readable from a signal handler (atomics only).
static CHILDREN: [AtomicI32; 128] = [const { AtomicI32::new(0) }; 128];

extern "C" fn kill_children_and_exit(signal: libc::c_int) {
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

/// On SIGINT/SIGTERM/SIGHUP: kill every guarded child and exit 128+signal.
/// For long-running tools (the mesh, benchmarks); tests need not call it.
pub fn stop_children_on_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only touches atomics and async-signal-safe calls.
        unsafe {
            libc::signal(
                signal,
                kill_children_and_exit as *const () as libc::sighandler_t,
            )
        };
    }
}

/// Owns a child process and kills it (SIGKILL) and reaps it on `Drop`, so a
/// failing test, a failed benchmark or a stopped mesh never leaves a
/// listener behind. The one process guard of the workspace (tests, mesh,
/// bench).
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    name: String,
    slot: Option<usize>,
    /// Where its stdout/stderr go (the `spawn_*` constructors).
    log: Option<PathBuf>,
}

impl ChildGuard {
    /// Guards an already spawned child.
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        let pid = child.id() as i32;
        let slot = CHILDREN.iter().position(|slot| {
            slot.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        });
        ChildGuard {
            child,
            name: name.into(),
            slot,
            log: None,
        }
    }

    /// Spawns `command` with stdout and stderr appended to `log`.
    pub fn spawn_logged(name: &str, command: &mut Command, log: &Path) -> Result<Self> {
        Self::spawn(name, command, log, false)
    }

    /// Spawns `command` with stderr to `log` and stdout a pipe for the
    /// caller ([`ChildGuard::take_stdout`]).
    pub fn spawn_piped(name: &str, command: &mut Command, log: &Path) -> Result<Self> {
        Self::spawn(name, command, log, true)
    }

    fn spawn(name: &str, command: &mut Command, log: &Path, piped: bool) -> Result<Self> {
        let out = File::create(log)
            .map_err(|e| Error::io(format!("cannot create {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io(format!("cannot reopen {}", log.display()), e))?;
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(if piped {
                Stdio::piped()
            } else {
                Stdio::from(out)
            })
            .stderr(err)
            .spawn()
            .map_err(|e| Error::io(format!("cannot start {name} ({command:?})"), e))?;
        let mut guard = ChildGuard::new(name, child);
        guard.log = Some(log.to_owned());
        Ok(guard)
    }

    /// The stdout pipe of a [`ChildGuard::spawn_piped`] child (once).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The process id (for `/proc/<pid>/stat` and friends).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`libc::SIGTERM`, `libc::SIGSTOP`, ...) to the process.
    pub fn signal(&self, signal: libc::c_int) -> std::io::Result<()> {
        // SAFETY: kill(2) on our own child, whose pid stays ours until the
        // guard reaps it.
        if unsafe { libc::kill(self.pid() as i32, signal) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .map_err(|e| Error::io(format!("cannot poll {}", self.name), e))
    }

    /// `Some(status)` if it has exited (an error polling counts as running).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.try_wait().ok().flatten()
    }

    /// Its log file (stdout and stderr), if it was spawned with one.
    pub fn log(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The last `lines` lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self
            .log
            .as_ref()
            .and_then(|log| std::fs::read_to_string(log).ok())
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits for it to exit; kills it (and fails) after `deadline`.
    pub fn wait_for_exit(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > deadline {
                self.kill();
                return Err(Error::Stopped {
                    name: self.name.clone(),
                    deadline,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `addr` accepts TCP connections while the process keeps
    /// running; fails with its log's tail if it exits or `deadline` passes.
    pub fn wait_listening(&mut self, addr: SocketAddr, deadline: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            let status = self.exited();
            if status.is_some() || start.elapsed() > deadline {
                return Err(Error::NotListening {
                    name: self.name.clone(),
                    what: match status {
                        Some(status) => format!("exited ({status}) before listening on {addr}"),
                        None => format!("did not listen on {addr} within {deadline:?}"),
                    },
                    log: self.log.clone().unwrap_or_default(),
                    tail: self.log_tail(15),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills and reaps now (what `Drop` does).
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(slot) = self.slot.take() {
            CHILDREN[slot].store(0, Ordering::SeqCst);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A command for `program`, run under `taskset -c <cpu>` when `cpu` is
/// given (taskset execs the program: the pid is the program's).
pub fn pinned(program: &Path, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpu.to_string()).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// A port that was free on 127.0.0.1 a moment ago. Prefer binding port 0
/// and asking the process (see [`crate::envoy::Envoy::listener_addr`]);
/// use this only where a port must be chosen up front.
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("cannot bind 127.0.0.1:0", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("cannot read local address", e))
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// Polls `check` every `interval` until it returns `Some`, or fails with
/// [`Error::Timeout`] naming `what` after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    log: Option<&Path>,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                timeout,
                log: log.map(PathBuf::from),
            });
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_kills_the_child_on_drop() {
        let dir = crate::paths::run_dir("guard").unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let guard = ChildGuard::spawn_logged("sleep", &mut cmd, &dir.join("sleep.log")).unwrap();
        let proc_dir = PathBuf::from(format!("/proc/{}", guard.pid()));
        assert!(proc_dir.exists());
        drop(guard);
        // Reaped by Drop: the pid is gone, not a zombie.
        assert!(!proc_dir.exists());
    }

    #[test]
    fn pinned_runs_under_taskset_only_when_asked() {
        let program = Path::new("/bin/true");
        let plain = pinned(program, None);
        assert_eq!(plain.get_program(), "/bin/true");
        assert_eq!(plain.get_args().count(), 0);
        let on_one = pinned(program, Some(1));
        assert_eq!(on_one.get_program(), "taskset");
        let args: Vec<_> = on_one.get_args().collect();
        assert_eq!(args, ["-c", "1", "/bin/true"]);
    }

    #[test]
    fn wait_for_exit_returns_the_status_or_stops_the_child() {
        let dir = crate::paths::run_dir("guard-exit").unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo two; exit 3"]);
        let mut quick =
            ChildGuard::spawn_logged("quick", &mut cmd, &dir.join("quick.log")).unwrap();
        let status = quick.wait_for_exit(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(quick.log_tail(1), "two");
        assert_eq!(quick.log_tail(5), "one\ntwo");
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let mut slow = ChildGuard::spawn_logged("slow", &mut cmd, &dir.join("slow.log")).unwrap();
        let proc_dir = PathBuf::from(format!("/proc/{}", slow.pid()));
        let err = slow.wait_for_exit(Duration::from_millis(50)).unwrap_err();
        assert!(
            err.to_string().contains("slow did not finish within"),
            "{err}"
        );
        assert!(!proc_dir.exists(), "stopped and reaped");
    }

    #[test]
    fn wait_listening_fails_with_the_log_when_the_child_exits() {
        let dir = crate::paths::run_dir("guard-listen").unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo cannot bind; exit 1"]);
        let mut child = ChildGuard::spawn_logged("app", &mut cmd, &dir.join("app.log")).unwrap();
        let err = child
            .wait_listening(free_addr().unwrap(), Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("app exited") && err.contains("cannot bind"),
            "{err}"
        );
    }

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).unwrap();
    }

    #[test]
    fn wait_for_times_out_with_the_reason() {
        let mut calls = 0;
        let err = wait_for(
            "the impossible",
            Duration::from_millis(50),
            Duration::from_millis(5),
            None,
            || {
                calls += 1;
                None::<()>
            },
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("the impossible did not happen within"),
            "{err}"
        );
        assert!(calls >= 2);
        let mut n = 0;
        let v = wait_for(
            "third try",
            Duration::from_secs(5),
            Duration::from_millis(1),
            None,
            || {
                n += 1;
                (n == 3).then_some(n)
            },
        )
        .unwrap();
        assert_eq!(v, 3);
    }
}
