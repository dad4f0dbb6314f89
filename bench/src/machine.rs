//! The machine a run measures on: which CPU the servers and the load are
//! pinned to, and what the report says about it.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use crate::{benchmark::progress, procfs, report::Machine, tools::Tools};

/// Pins: servers on the first allowed CPU, load on the second.
pub(crate) struct Cores {
    /// CPUs this process could use before pinning itself.
    pub online: usize,
    pub server: Option<usize>,
    pub load: Option<usize>,
}

/// Pin this process to the load's CPU and say where the rest goes.
pub(crate) fn pin_cores() -> anyhow::Result<Cores> {
    let allowed = procfs::allowed_cpus();
    if allowed.len() < 2 {
        progress("fewer than 2 CPUs available: nothing is pinned, numbers will be noisier");
        return Ok(Cores {
            online: allowed.len(),
            server: None,
            load: None,
        });
    }
    // This process drives the churn and polls stats: it belongs with the load.
    procfs::pin_self(allowed[1])?;
    Ok(Cores {
        online: allowed.len(),
        server: Some(allowed[0]),
        load: Some(allowed[1]),
    })
}

/// What `program arg` prints (a version line), or "" if it fails or takes
/// longer than a few seconds: the report's header must not hang the run.
fn command_line(program: &Path, arg: &str) -> String {
    use std::io::Read as _;
    let Ok(mut child) = Command::new(program)
        .arg(arg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return String::new();
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return String::new();
            }
        }
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    out.trim().to_owned()
}

/// The report's header: CPU, kernel, versions, pins.
pub(crate) fn describe(tools: &Tools, cores: &Cores) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let envoy_version = command_line(&tools.envoy, "--version");
    // "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL" → "Envoy 1.40.0".
    let envoy_version = envoy_version
        .split_once("version: ")
        .and_then(|(_, v)| v.split('/').nth(1))
        .map(|v| format!("Envoy {v}"))
        .unwrap_or(envoy_version);
    Machine {
        cpu_model,
        cpus: cores.online,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        envoy_version,
        h2load_version: command_line(&tools.h2load, "--version"),
        server_cpu: cores.server,
        load_cpu: cores.load,
        load_average_start: procfs::load_average(),
        load_average_end: None,
        run_secs: 0.0,
        other_cpu_secs: 0.0,
        own_cpu_secs: 0.0,
        steal_secs: 0.0,
    }
}
