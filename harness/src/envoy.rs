//! A real Envoy process on a rendered config, with its admin API and log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::process::{ChildGuard, pinned, wait_for};
use crate::{Error, Result, http, paths};

/// How long Envoy gets to become ready (V8 compiles the module first).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of one admin request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(25);

/// Options for [`Envoy::start_with`] and [`Envoy::launch`]; [`Default`]
/// suits tests.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Envoy binary; `None` = [`paths::envoy`] (`ENVOY`, else `.venv`).
    pub binary: Option<PathBuf>,
    /// Pin the process to this CPU (`taskset -c <cpu>`); `None` = unpinned.
    pub cpu: Option<usize>,
    /// A command Envoy runs under (e.g. `valgrind` and its flags): Envoy's
    /// path and arguments are appended to it. Empty = Envoy itself.
    pub wrapper: Vec<String>,
    /// Worker threads (`--concurrency`); 1 makes per-worker state deterministic.
    pub concurrency: u32,
    /// Extra environment for the Envoy process (e.g. `POD_NAME`, which
    /// istio-proxy has from the Downward API). The launcher removes an
    /// inherited `POD_NAME`, so callers control it.
    pub env: Vec<(String, String)>,
    /// `--log-level`.
    pub log_level: String,
    /// `--component-log-level`, e.g. `wasm:debug`; empty = none.
    pub component_log_level: String,
    /// Wait for `/ready` before returning (set false to start several
    /// Envoys at once and [`Envoy::wait_ready`] each, or to inspect an Envoy
    /// that fails to start).
    pub wait_ready: bool,
    pub ready_timeout: Duration,
    /// Extra command-line arguments.
    pub extra_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            binary: None,
            cpu: None,
            wrapper: Vec::new(),
            concurrency: 1,
            env: Vec::new(),
            log_level: "info".to_owned(),
            component_log_level: String::new(),
            wait_ready: true,
            ready_timeout: READY_TIMEOUT,
            extra_args: Vec::new(),
        }
    }
}

/// A running Envoy; killed (and reaped) on drop. Its config and log stay in
/// [`Envoy::dir`].
#[derive(Debug)]
pub struct Envoy {
    child: ChildGuard,
    dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    admin_path: PathBuf,
    admin: Option<SocketAddr>,
}

impl Envoy {
    /// Starts Envoy on `bootstrap` with default [`Options`] and waits until
    /// it is ready.
    pub fn start(label: &str, bootstrap: &Value) -> Result<Envoy> {
        Envoy::start_with(label, bootstrap, Options::default())
    }

    /// Starts Envoy on `bootstrap`, writing `envoy.json` and `envoy.log`
    /// into a fresh [`paths::run_dir`].
    pub fn start_with(label: &str, bootstrap: &Value, options: Options) -> Result<Envoy> {
        Envoy::start_in(paths::run_dir(label)?, bootstrap, options)
    }

    /// Like [`Envoy::start_with`], in an existing run directory (one that
    /// already holds, say, ECDS files the bootstrap points at).
    pub fn start_in(dir: PathBuf, bootstrap: &Value, options: Options) -> Result<Envoy> {
        Envoy::launch(&dir, "envoy", bootstrap, &options)
    }

    /// Starts Envoy on `bootstrap` in `dir`, its files named after `stem`:
    /// `<stem>.json` (the config), `<stem>.log` (Envoy's log),
    /// `<stem>.stderr` and `<stem>.admin-address`. Waits for `/ready` if
    /// `options.wait_ready`. Several Envoys can share one directory.
    pub fn launch(dir: &Path, stem: &str, bootstrap: &Value, options: &Options) -> Result<Envoy> {
        let binary = match &options.binary {
            Some(path) if path.is_file() => path.clone(),
            Some(path) => return Err(Error::EnvoyMissing(path.clone())),
            None => paths::envoy()?,
        };
        let config_path = dir.join(format!("{stem}.json"));
        let log_path = dir.join(format!("{stem}.log"));
        let admin_path = dir.join(format!("{stem}.admin-address"));
        // A file left by an earlier run would name a dead admin address,
        // and Envoy appends to its log: an earlier run's errors would be
        // read as this one's.
        let _ = std::fs::remove_file(&admin_path);
        let _ = std::fs::remove_file(&log_path);
        write_json(&config_path, bootstrap)?;

        let mut cmd = match options.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = pinned(Path::new(program), options.cpu);
                cmd.args(args).arg(&binary);
                cmd
            }
            None => pinned(&binary, options.cpu),
        };
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--log-path")
            .arg(&log_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--log-level", &options.log_level])
            .args(["--concurrency", &options.concurrency.to_string()])
            // Envoy buffers its log file for 10s by default; tests and
            // users tailing it want lines as they happen.
            .args(["--file-flush-interval-msec", "100"])
            // Several Envoys run side by side; hot restart would make them
            // fight over the same shared-memory base id.
            .arg("--disable-hot-restart")
            .args(&options.extra_args)
            .env_remove("POD_NAME");
        if !options.component_log_level.is_empty() {
            cmd.args(["--component-log-level", &options.component_log_level]);
        }
        for (key, value) in &options.env {
            cmd.env(key, value);
        }
        let child =
            ChildGuard::spawn_logged("envoy", &mut cmd, &dir.join(format!("{stem}.stderr")))?;
        let mut envoy = Envoy {
            child,
            dir: dir.to_owned(),
            config_path,
            log_path,
            admin_path,
            admin: None,
        };
        if options.wait_ready {
            envoy.wait_ready(options.ready_timeout)?;
        }
        Ok(envoy)
    }

    /// Waits until the admin API answers `/ready` with 200; fails early,
    /// with the log's tail, if Envoy exits (say, rejecting its config).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let log = self.log_path.clone();
        let admin_path = self.admin_path.clone();
        let mut admin = None;
        let mut exited = None;
        let ready = wait_for("Envoy /ready", timeout, POLL, Some(&log), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return Some(false);
            }
            if admin.is_none() {
                admin = std::fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|s| s.trim().parse::<SocketAddr>().ok());
            }
            let addr = admin?;
            let response = http::get(addr, "/ready", ADMIN_TIMEOUT).ok()?;
            (response.status == 200).then_some(true)
        })?;
        if !ready {
            return Err(Error::EnvoyExited {
                status: exited.map(|s| s.to_string()).unwrap_or_default(),
                log: self.log_path.clone(),
                tail: self.log_tail(30),
            });
        }
        self.admin = admin;
        Ok(())
    }

    /// Validates `bootstrap` with `envoy --mode validate`; `Ok(Err(output))`
    /// when Envoy rejects it.
    pub fn validate(label: &str, bootstrap: &Value) -> Result<std::result::Result<(), String>> {
        let envoy = paths::envoy()?;
        let dir = paths::run_dir(label)?;
        let config_path = dir.join("envoy.json");
        write_json(&config_path, bootstrap)?;
        let output = Command::new(&envoy)
            .args([
                "--mode",
                "validate",
                "--disable-hot-restart",
                "-l",
                "error",
                "-c",
            ])
            .arg(&config_path)
            .env_remove("POD_NAME")
            .output()
            .map_err(|e| Error::io(format!("cannot run {}", envoy.display()), e))?;
        if output.status.success() {
            Ok(Ok(()))
        } else {
            Ok(Err(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )))
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends `signal` to the Envoy process ([`ChildGuard::signal`]).
    pub fn signal(&self, signal: libc::c_int) -> std::io::Result<()> {
        self.child.signal(signal)
    }

    /// This run's directory (config, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The rendered bootstrap file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Envoy's log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `Some(status)` if Envoy has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The admin address (known once ready).
    pub fn admin_addr(&self) -> Result<SocketAddr> {
        self.admin
            .ok_or_else(|| Error::Http("Envoy admin address unknown: not ready".into()))
    }

    /// GET on the admin API; non-200 is an error.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        let response = http::get(self.admin_addr()?, path, ADMIN_TIMEOUT)?;
        if response.status != 200 {
            return Err(Error::Http(format!(
                "admin {path} answered {}: {}",
                response.status, response.body
            )));
        }
        Ok(response.body)
    }

    /// The bound address of listener `name` (works with port 0 configs).
    pub fn listener_addr(&self, name: &str) -> Result<SocketAddr> {
        let body = self.admin_get("/listeners?format=json")?;
        let parsed: Value = serde_json::from_str(&body)
            .map_err(|e| Error::Http(format!("admin /listeners is not JSON: {e}")))?;
        listener_address(&parsed, name)
            .ok_or_else(|| Error::Http(format!("no listener {name:?} in admin /listeners: {body}")))
    }

    /// Counters and gauges from `/stats` (histograms are left out).
    pub fn stats(&self) -> Result<BTreeMap<String, u64>> {
        Ok(parse_stats(&self.admin_get("/stats")?))
    }

    /// The counters and gauges whose names match `regex` (Envoy's
    /// `/stats?filter=`), without transferring the rest.
    pub fn stats_matching(&self, regex: &str) -> Result<BTreeMap<String, u64>> {
        Ok(parse_stats(
            &self.admin_get(&format!("/stats?filter={regex}"))?,
        ))
    }

    /// One counter or gauge from `/stats`, `None` if Envoy does not have it.
    pub fn stat(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.stats()?.get(name).copied())
    }

    /// Waits until stat `name` exists and satisfies `accept`; returns its value.
    pub fn wait_for_stat(
        &self,
        name: &str,
        timeout: Duration,
        accept: impl Fn(u64) -> bool,
    ) -> Result<u64> {
        let mut last = None;
        let found = wait_for(&format!("stat {name}"), timeout, POLL, None, || {
            last = self.stat(name).ok().flatten();
            last.filter(|v| accept(*v))
        });
        found.map_err(|_| Error::Timeout {
            what: format!("stat {name} reaching the expected value (last: {last:?})"),
            timeout,
            log: Some(self.log_path.clone()),
        })
    }

    /// The Prometheus exposition (`/stats/prometheus`).
    pub fn prometheus(&self) -> Result<String> {
        self.admin_get("/stats/prometheus")
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `n` log lines.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Log lines at level `error` or `critical`.
    pub fn error_lines(&self) -> Vec<String> {
        error_lines(&self.log())
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        wait_for(
            &format!("log line containing {needle:?}"),
            timeout,
            POLL,
            Some(&self.log_path),
            || {
                self.log()
                    .lines()
                    .find(|l| l.contains(needle))
                    .map(str::to_owned)
            },
        )
    }
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::io("cannot render JSON", std::io::Error::other(e)))?;
    std::fs::write(path, text).map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// The bound address of listener `name` in `/listeners?format=json`.
pub fn listener_address(listeners: &Value, name: &str) -> Option<SocketAddr> {
    listeners["listener_statuses"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .and_then(|s| {
            let addr = &s["local_address"]["socket_address"];
            let ip = addr["address"].as_str()?.parse().ok()?;
            let port = u16::try_from(addr["port_value"].as_u64()?).ok()?;
            Some(SocketAddr::new(ip, port))
        })
}

/// Parses `/stats` text (`name: value` lines); non-integer values
/// (histograms) are skipped.
pub fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(": ")?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Lines of an Envoy log at level `error` or `critical`.
pub fn error_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("[error]") || l.contains("[critical]"))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_text_is_parsed() {
        let text = "cluster.x.upstream_cx_total: 3\nwasmcustom.upstream_tagger_requests_tagged: 12\n\
                    http.a.downstream_rq_time: P0(nan,0) P25(nan,0)\nserver.live: 1\n";
        let stats = parse_stats(text);
        assert_eq!(
            stats.get("wasmcustom.upstream_tagger_requests_tagged"),
            Some(&12)
        );
        assert_eq!(stats.get("server.live"), Some(&1));
        assert!(!stats.contains_key("http.a.downstream_rq_time"));
        assert_eq!(stats.len(), 3);
    }

    #[test]
    fn error_and_critical_lines_are_found() {
        let log = "[2026-01-01 00:00:00.000][1][info][main] ok\n\
                   [2026-01-01 00:00:00.000][1][error][wasm] bad\n\
                   [2026-01-01 00:00:00.000][1][warning][wasm] meh\n\
                   [2026-01-01 00:00:00.000][1][critical][main] worse\n";
        let lines = error_lines(log);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("bad") && lines[1].ends_with("worse"));
    }

    #[test]
    fn listener_port_is_read_from_the_admin_api() {
        let json: Value = serde_json::from_str(r#"{"listener_statuses":[{"name":"virtualInbound","local_address":{"socket_address":{"address":"127.0.0.1","port_value":41234}}}]}"#).unwrap();
        assert_eq!(
            listener_address(&json, "virtualInbound"),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(listener_address(&json, "other"), None);
        assert_eq!(
            listener_address(
                &serde_json::json!({"listener_statuses": []}),
                "virtualInbound"
            ),
            None
        );
        assert_eq!(listener_address(&Value::Null, "virtualInbound"), None);
    }

    /// A second Envoy launched on the same file names starts a fresh log:
    /// the first run's error lines are not read as the second's.
    #[test]
    fn a_relaunch_does_not_inherit_the_previous_logs_errors() {
        let dir = paths::run_dir("envoy-relaunch").unwrap();
        std::fs::write(
            dir.join("envoy.log"),
            "[2026-01-01 00:00:00.000][1][critical][main] an earlier run\n",
        )
        .unwrap();
        let bootstrap = serde_json::json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        });
        let envoy = Envoy::launch(&dir, "envoy", &bootstrap, &Options::default()).unwrap();
        assert_eq!(envoy.error_lines(), Vec::<String>::new());
    }

    #[test]
    fn missing_envoy_says_how_to_install_it() {
        let err = crate::Error::EnvoyMissing(PathBuf::from("/nope/envoy"));
        assert!(err.to_string().contains("run `make envoy`"), "{err}");
        let err = crate::Error::WasmMissing(PathBuf::from("/nope/x.wasm"));
        assert!(err.to_string().contains("run `make wasm`"), "{err}");
    }
}
