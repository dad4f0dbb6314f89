//! One Envoy under test: started pinned to a core with `--concurrency 1`,
//! ports read back from its admin API, stopped on drop.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use mesh::runtime::{self, Proc};
use serde_json::Value;

use crate::procfs;

pub struct Envoy {
    pub name: String,
    pub proc: Proc,
    pub admin: SocketAddr,
    pub listener: SocketAddr,
    pub config_path: PathBuf,
}

/// A process started under `taskset -c <cpu>` when `cpu` is given.
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

/// Start Envoy on `config` (written to `dir/<name>.envoy.json`); returns
/// once it is launched. [`Envoy::wait_ready`] finishes the start-up, so
/// several Envoys can compile their wasm modules at the same time.
pub fn spawn(
    envoy: &Path,
    cpu: Option<usize>,
    dir: &Path,
    name: &str,
    config: &Value,
    pod: &str,
) -> anyhow::Result<Starting> {
    spawn_with(pinned(envoy, cpu), dir, name, config, pod)
}

/// [`spawn`] with the command that runs Envoy given (for instance Envoy
/// under valgrind); the Envoy arguments are appended to it.
pub fn spawn_with(
    mut command: Command,
    dir: &Path,
    name: &str,
    config: &Value,
    pod: &str,
) -> anyhow::Result<Starting> {
    let config_path = dir.join(format!("{name}.envoy.json"));
    std::fs::write(&config_path, serde_json::to_vec_pretty(config)?)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let admin_path = dir.join(format!("{name}.admin-address"));
    let _ = std::fs::remove_file(&admin_path);
    command
        .arg("-c")
        .arg(&config_path)
        .args(["--disable-hot-restart", "--concurrency", "1"])
        .args([
            "--log-level",
            "warn",
            "--component-log-level",
            "wasm:info,lua:info",
        ])
        .arg("--admin-address-path")
        .arg(&admin_path)
        // istio-proxy has POD_NAME from the Downward API (host_env_keys).
        .env("POD_NAME", pod);
    let log = dir.join(format!("{name}.envoy.log"));
    let proc = Proc::spawn(&format!("Envoy {name}"), command, &log)?;
    Ok(Starting {
        name: name.to_owned(),
        proc,
        admin_path,
        config_path,
    })
}

pub struct Starting {
    name: String,
    proc: Proc,
    admin_path: PathBuf,
    config_path: PathBuf,
}

impl Starting {
    /// Wait for `/ready`, then read the listener's bound port.
    pub fn wait_ready(mut self, deadline: Duration) -> anyhow::Result<Envoy> {
        let start = Instant::now();
        let fail = |proc: &mut Proc, what: String| -> anyhow::Error {
            anyhow::anyhow!(
                "{} {what}; config {}, log {}:\n{}",
                proc.name,
                self.config_path.display(),
                proc.log.display(),
                proc.log_tail(12)
            )
        };
        let admin = loop {
            let admin = std::fs::read_to_string(&self.admin_path)
                .ok()
                .and_then(|a| a.trim().parse::<SocketAddr>().ok());
            if let Some(admin) = admin
                && let Ok((200, _)) = runtime::http_get(admin, "/ready")
            {
                break admin;
            }
            if let Some(status) = self.proc.exited() {
                return Err(fail(
                    &mut self.proc,
                    format!("rejected its config or failed to start ({status})"),
                ));
            }
            if start.elapsed() > deadline {
                return Err(fail(
                    &mut self.proc,
                    format!("was not ready within {deadline:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        let (status, body) = admin_get(admin, "/listeners?format=json")?;
        if status != 200 {
            bail!("{}: /listeners answered {status}", self.proc.name);
        }
        let listener = listener_address(&body).with_context(|| {
            format!(
                "{}: no bound listener in /listeners: {body}",
                self.proc.name
            )
        })?;
        Ok(Envoy {
            name: self.name,
            proc: self.proc,
            admin,
            listener,
            config_path: self.config_path,
        })
    }
}

/// An admin API GET (the harness's client de-chunks Envoy's answers).
pub fn admin_get(admin: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    runtime::http_get(admin, path)
}

/// The first listener's bound address in `/listeners?format=json`.
pub fn listener_address(json: &str) -> Option<SocketAddr> {
    let value: Value = serde_json::from_str(json).ok()?;
    let socket = value.pointer("/listener_statuses/0/local_address/socket_address")?;
    let ip = socket.get("address")?.as_str()?;
    let port = socket.get("port_value")?.as_u64()?;
    format!("{ip}:{port}").parse().ok()
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
        self.proc.pid()
    }

    pub fn cpu_micros(&self) -> anyhow::Result<u64> {
        procfs::cpu_micros(self.pid())
    }

    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        procfs::rss_bytes(self.pid())
    }

    /// One stat by its full `/stats` name, `None` if Envoy has no such stat.
    pub fn stat(&self, name: &str) -> anyhow::Result<Option<i64>> {
        let (status, body) = admin_get(self.admin, &format!("/stats?filter=^{name}$"))?;
        if status != 200 {
            bail!("{}: /stats answered {status}", self.name);
        }
        Ok(parse_stat(&body, name))
    }

    /// `[critical]`/`[error]` lines of its log.
    pub fn error_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.proc.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("[critical]") || l.contains("[error]"))
            .map(|l| format!("{}: {l}", self.name))
            .collect()
    }

    /// The log, to find the filter's start-up line.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_port_is_read_from_the_admin_api() {
        let json = r#"{"listener_statuses":[{"name":"virtualInbound","local_address":{"socket_address":{"address":"127.0.0.1","port_value":41234}}}]}"#;
        assert_eq!(
            listener_address(json),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(listener_address(r#"{"listener_statuses":[]}"#), None);
        assert_eq!(listener_address("not json"), None);
    }

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
