//! One Envoy under test: started by the harness's launcher, pinned to a core
//! with `--concurrency 1`, its listener read back from the admin API,
//! stopped on drop.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use harness::envoy::{self, Options};
use serde_json::Value;

use crate::procfs;

pub struct Envoy {
    pub name: String,
    pub listener: SocketAddr,
    pub config_path: PathBuf,
    process: envoy::Envoy,
}

/// The listener every configuration serves on (`configs::bootstrap`).
const LISTENER: &str = "virtualInbound";

/// Start Envoy on `config` (written to `dir/<name>.envoy.json`); returns
/// once it is launched. [`Starting::wait_ready`] finishes the start-up, so
/// several Envoys can compile their wasm modules at the same time.
pub fn spawn(
    envoy: &Path,
    cpu: Option<usize>,
    dir: &Path,
    name: &str,
    config: &Value,
    pod: &str,
) -> anyhow::Result<Starting> {
    spawn_with(&[], envoy, cpu, dir, name, config, pod)
}

/// [`spawn`] under `wrapper` (for instance valgrind and its flags): Envoy's
/// path and arguments are appended to it.
pub fn spawn_with(
    wrapper: &[String],
    envoy: &Path,
    cpu: Option<usize>,
    dir: &Path,
    name: &str,
    config: &Value,
    pod: &str,
) -> anyhow::Result<Starting> {
    let options = Options {
        binary: Some(envoy.to_owned()),
        cpu,
        wrapper: wrapper.to_vec(),
        log_level: "warn".into(),
        component_log_level: "wasm:info,lua:info".into(),
        // istio-proxy has POD_NAME from the Downward API (host_env_keys).
        env: vec![("POD_NAME".into(), pod.into())],
        wait_ready: false,
        ..Options::default()
    };
    let process = envoy::Envoy::launch(dir, &format!("{name}.envoy"), config, &options)
        .with_context(|| format!("cannot start Envoy {name}"))?;
    Ok(Starting {
        name: name.to_owned(),
        process,
    })
}

pub struct Starting {
    name: String,
    process: envoy::Envoy,
}

impl Starting {
    /// Wait for `/ready`, then read the listener's bound port.
    pub fn wait_ready(mut self, deadline: Duration) -> anyhow::Result<Envoy> {
        if let Err(e) = self.process.wait_ready(deadline) {
            let what = match e {
                harness::Error::EnvoyExited { status, .. } => {
                    format!("rejected its config or failed to start ({status})")
                }
                _ => format!("was not ready within {deadline:?}"),
            };
            anyhow::bail!(
                "Envoy {} {what}; config {}, log {}:\n{}",
                self.name,
                self.process.config_path().display(),
                self.process.log_path().display(),
                self.process.log_tail(12)
            );
        }
        let listener = self
            .process
            .listener_addr(LISTENER)
            .with_context(|| format!("Envoy {}", self.name))?;
        Ok(Envoy {
            name: self.name,
            listener,
            config_path: self.process.config_path().to_owned(),
            process: self.process,
        })
    }
}

/// The value of stat `name` in `/stats` text output.
pub fn parse_stat(text: &str, name: &str) -> Option<i64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(": ")?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

impl Envoy {
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn cpu_micros(&self) -> anyhow::Result<u64> {
        procfs::cpu_micros(self.pid())
    }

    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        procfs::rss_bytes(self.pid())
    }

    /// One stat by its full `/stats` name, `None` if Envoy has no such stat
    /// (asked for alone: this is polled under load).
    pub fn stat(&self, name: &str) -> anyhow::Result<Option<i64>> {
        let body = self
            .process
            .admin_get(&format!("/stats?filter=^{name}$"))
            .with_context(|| format!("Envoy {}", self.name))?;
        Ok(parse_stat(&body, name))
    }

    /// `[critical]`/`[error]` lines of its log.
    pub fn error_lines(&self) -> Vec<String> {
        self.process
            .error_lines()
            .into_iter()
            .map(|l| format!("{}: {l}", self.name))
            .collect()
    }

    /// The log, to find the filter's start-up line.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_found_by_exact_name() {
        let text = "wasmcustom.upstream_tagger_connections_tracked: 10000\nwasmcustom.upstream_tagger_connections_tracked_x: 3\n";
        assert_eq!(
            parse_stat(text, "wasmcustom.upstream_tagger_connections_tracked"),
            Some(10000)
        );
        assert_eq!(parse_stat(text, "wasmcustom.nope"), None);
    }
}
