//! Child processes that cannot outlive us, free ports, and waiting with
//! deadlines.
//!
//! A guarded child dies however we end: `Drop` kills it on normal exit,
//! errors and panics; [`stop_children_on_signals`] on Ctrl-C/SIGTERM; and
//! the kernel (`PR_SET_PDEATHSIG`) if we are killed outright.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
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
/// failing test never leaves a listener behind.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    name: String,
    slot: Option<usize>,
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
        Ok(ChildGuard::new(name, child))
    }

    /// The stdout pipe of a [`ChildGuard::spawn_piped`] child (once).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The process id (for `/proc/<pid>/stat` and friends).
    pub fn pid(&self) -> u32 {
        self.child.id()
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
