//! Starting the pieces of the local mesh on loopback addresses that stand in
//! for pod IPs, and stopping them all (every process is a `Proc`).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use harness::{
    envoy::{self, Envoy},
    process::ChildGuard,
};
use serde_json::Value;

use crate::{
    destination_rule::ClusterPolicy,
    envoy_config, runtime,
    wasm_plugin::{Side, WasmPluginSpec},
};

pub const GRPC_PORT: u16 = 30051;
pub const HTTP_PORT: u16 = 8080;
pub const SERVICE_HTTP_PORT: u16 = 80;
pub const SIDECAR_INBOUND_PORT: u16 = 15006;
pub const ENVOY_ADMIN_PORT: u16 = 15000;
/// The pod template labels in `istio/base/` (server.yaml, client-grpc.yaml):
/// what a WasmPlugin or Sidecar `selector` is matched against.
pub const SERVER_POD_LABELS: [(&str, &str); 2] = [("app", "server"), ("version", "v1")];
pub const CLIENT_POD_LABELS: [(&str, &str); 2] = [("app", "client-grpc"), ("version", "v1")];
/// The Service's FQDN, as istiod names outbound clusters after it.
pub const SERVICE_HOST: &str = "server.default.svc.cluster.local";

/// Where everything the mesh runs comes from.
#[derive(Clone, Debug)]
pub struct Artifacts {
    pub envoy: PathBuf,
    pub wasm: PathBuf,
    pub bin_dir: PathBuf,
    /// Per-run logs and rendered configs.
    pub run_dir: PathBuf,
}

impl Artifacts {
    /// Find Envoy, the `.wasm` and our binaries; each missing piece is one
    /// clear error with the command that provides it. Explicit paths win over
    /// the harness's defaults (`$ENVOY` or `.venv/bin/envoy`, `dist/`).
    pub fn locate(envoy: Option<PathBuf>, wasm: Option<PathBuf>) -> anyhow::Result<Self> {
        let envoy = match envoy {
            Some(path) if path.is_file() => path,
            Some(path) => bail!(harness::Error::EnvoyMissing(path)),
            None => harness::paths::envoy()?,
        };
        let wasm = match wasm {
            Some(path) if path.is_file() => path,
            Some(path) => bail!(harness::Error::WasmMissing(path)),
            None => harness::paths::wasm()?,
        };
        Ok(Self {
            envoy: std::fs::canonicalize(&envoy).unwrap_or(envoy),
            wasm: std::fs::canonicalize(&wasm).unwrap_or(wasm),
            bin_dir: bin_dir()?,
            run_dir: harness::paths::target_dir().join("mesh"),
        })
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// Our binaries sit next to `mesh` (or, for tests, one level up from `deps/`).
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the mesh executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for _ in 0..2 {
        if ["server", "client-grpc", "client-http"]
            .iter()
            .all(|b| dir.join(b).exists())
        {
            return Ok(dir);
        }
        dir = dir.join("..");
    }
    bail!(
        "server, client-grpc and client-http are not built next to {}: run `cargo build --bins` (or `make demo`)",
        exe.display()
    )
}

/// Loopback addresses standing in for pod IPs: `127.<subnet>.1.<i+1>` for
/// server pods, `.2.1` for the Service, `.3.1` for the client pod.
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    pub subnet: u8,
    pub pods: usize,
}

impl Addresses {
    fn ip(&self, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.subnet, c, d))
    }
    pub fn pod_ip(&self, i: usize) -> IpAddr {
        self.ip(1, i as u8 + 1)
    }
    pub fn app_grpc(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.pod_ip(i), GRPC_PORT)
    }
    pub fn app_http(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.pod_ip(i), HTTP_PORT)
    }
    pub fn sidecar_inbound(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.pod_ip(i), SIDECAR_INBOUND_PORT)
    }
    pub fn sidecar_admin(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.pod_ip(i), ENVOY_ADMIN_PORT)
    }
    pub fn service_grpc(&self) -> SocketAddr {
        SocketAddr::new(self.ip(2, 1), GRPC_PORT)
    }
    pub fn service_http(&self) -> SocketAddr {
        SocketAddr::new(self.ip(2, 1), SERVICE_HTTP_PORT)
    }
    pub fn service_admin(&self) -> SocketAddr {
        SocketAddr::new(self.ip(2, 1), ENVOY_ADMIN_PORT)
    }
    /// Where the client app dials `server:30051` (its sidecar's outbound listener).
    pub fn client_sidecar(&self) -> SocketAddr {
        SocketAddr::new(self.ip(3, 1), GRPC_PORT)
    }
    pub fn client_sidecar_admin(&self) -> SocketAddr {
        SocketAddr::new(self.ip(3, 1), ENVOY_ADMIN_PORT)
    }
}

/// The policies istiod gives the sidecars in one experiment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SidecarPolicies {
    /// The client's outbound cluster: the DestinationRule under test.
    pub outbound: ClusterPolicy,
    /// The server sidecars' inbound cluster (sidecar → app): the Sidecar's
    /// `inboundConnectionPool` (`istio/sidecar.yaml`), never the
    /// DestinationRule (see `sidecar.rs`).
    pub inbound: ClusterPolicy,
}

/// Which parts a scenario needs.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// The L4 Service (kube-proxy stand-in) in front of the apps.
    pub l4_service: bool,
    /// Sidecars on both sides, with these policies.
    pub sidecars: Option<SidecarPolicies>,
}

/// Every sidecar's bootstrap for one mesh: what `Mesh::start` runs and
/// `mesh render` writes, from one function so the two cannot drift.
pub struct SidecarConfigs {
    /// One per server pod, in pod order.
    pub servers: Vec<Value>,
    pub client: Value,
}

/// The sidecars istiod would configure for `policies` and `plugin`, with the
/// module at `wasm_file` (where istio-agent would have put it).
pub fn sidecar_configs(
    addrs: Addresses,
    pod_names: &[String],
    client_pod: &str,
    policies: &SidecarPolicies,
    plugin: &WasmPluginSpec,
    wasm_file: &Path,
) -> SidecarConfigs {
    let wasm = envoy_config::wasm_filter(plugin, wasm_file);
    // The server side selects by container (target) port, the client side
    // by Service port; both are 30051 here.
    let server_wasm = plugin
        .applies(Side::Server, GRPC_PORT)
        .then(|| wasm.clone());
    let client_wasm = plugin.applies(Side::Client, GRPC_PORT).then_some(wasm);
    let servers = pod_names
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            envoy_config::server_sidecar(
                pod,
                addrs.sidecar_admin(i),
                addrs.sidecar_inbound(i),
                addrs.app_grpc(i),
                harness::render::AppProtocol::Http2,
                &policies.inbound,
                server_wasm.clone(),
            )
        })
        .collect();
    let sidecars: Vec<_> = (0..pod_names.len())
        .map(|i| addrs.sidecar_inbound(i))
        .collect();
    let client = envoy_config::client_sidecar(
        client_pod,
        addrs.client_sidecar_admin(),
        addrs.client_sidecar(),
        SERVICE_HOST,
        GRPC_PORT,
        &policies.outbound,
        &sidecars,
        client_wasm,
    );
    SidecarConfigs { servers, client }
}

/// A seed for pod names: one per run, so every scenario shows the same pods.
pub fn name_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(42)
}

/// Kubernetes-like pod names: `<deployment>-<replicaset hash>-<5 chars>`.
pub fn pod_names(deployment: &str, count: usize, seed: u64) -> Vec<String> {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64: good enough for names.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ALPHABET[(state % ALPHABET.len() as u64) as usize] as char
    };
    let hash: String = (0..9).map(|_| next()).collect();
    (0..count)
        .map(|_| {
            format!(
                "{deployment}-{hash}-{}",
                (0..5).map(|_| next()).collect::<String>()
            )
        })
        .collect()
}

/// A running local mesh; dropping it stops every process.
pub struct Mesh {
    pub addrs: Addresses,
    pub pod_names: Vec<String>,
    pub client_pod: String,
    pub dir: PathBuf,
    procs: Vec<ChildGuard>,
    /// (name for messages, Envoy).
    envoys: Vec<(String, Envoy)>,
}

impl Mesh {
    pub fn start(
        artifacts: &Artifacts,
        addrs: Addresses,
        layout: &Layout,
        plugin: &WasmPluginSpec,
        name: &str,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let dir = artifacts.run_dir.join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut mesh = Mesh {
            addrs,
            pod_names: pod_names("server", addrs.pods, seed),
            client_pod: pod_names("client-grpc", 1, seed.rotate_left(17)).remove(0),
            dir,
            procs: Vec::new(),
            envoys: Vec::new(),
        };

        let mut needed = Vec::new();
        for i in 0..addrs.pods {
            needed.push((addrs.app_grpc(i), "server pod gRPC"));
            needed.push((addrs.app_http(i), "server pod HTTP"));
            if layout.sidecars.is_some() {
                needed.push((addrs.sidecar_inbound(i), "server sidecar inbound"));
                needed.push((addrs.sidecar_admin(i), "server sidecar admin"));
            }
        }
        if layout.l4_service {
            needed.extend([
                (addrs.service_grpc(), "Service gRPC port"),
                (addrs.service_http(), "Service HTTP port"),
                (addrs.service_admin(), "Service (tcp_proxy) admin"),
            ]);
        }
        if layout.sidecars.is_some() {
            needed.extend([
                (addrs.client_sidecar(), "client sidecar outbound"),
                (addrs.client_sidecar_admin(), "client sidecar admin"),
            ]);
        }
        for (addr, what) in needed {
            runtime::ensure_free(addr, what)?;
        }

        // Apps first, then every Envoy at once (they start in parallel).
        for i in 0..addrs.pods {
            let pod = mesh.pod_names[i].clone();
            let mut command = Command::new(artifacts.bin("server"));
            command
                .arg("--grpc-addr")
                .arg(addrs.app_grpc(i).to_string())
                .arg("--http-addr")
                .arg(addrs.app_http(i).to_string())
                .env("POD_NAME", &pod);
            let log = mesh.dir.join(format!("{pod}.server.log"));
            mesh.procs.push(ChildGuard::spawn_logged(
                &format!("server {pod}"),
                &mut command,
                &log,
            )?);
        }
        let mut envoys = Vec::new();
        if let Some(policies) = &layout.sidecars {
            let configs = sidecar_configs(
                addrs,
                &mesh.pod_names,
                &mesh.client_pod,
                policies,
                plugin,
                &artifacts.wasm,
            );
            for (i, config) in configs.servers.iter().enumerate() {
                let pod = mesh.pod_names[i].clone();
                envoys.push(mesh.spawn_envoy(
                    artifacts,
                    &format!("{pod}.sidecar"),
                    config,
                    Some(&pod),
                )?);
            }
            let client_pod = mesh.client_pod.clone();
            envoys.push(mesh.spawn_envoy(
                artifacts,
                &format!("{client_pod}.sidecar"),
                &configs.client,
                Some(&client_pod),
            )?);
        }
        if layout.l4_service {
            let grpc_pods = (0..addrs.pods).map(|i| addrs.app_grpc(i)).collect();
            let http_pods = (0..addrs.pods).map(|i| addrs.app_http(i)).collect();
            let config = envoy_config::l4_service(
                addrs.service_admin(),
                &[
                    (addrs.service_grpc(), grpc_pods),
                    (addrs.service_http(), http_pods),
                ],
            );
            envoys.push(mesh.spawn_envoy(artifacts, "service-server.kube-proxy", &config, None)?);
        }

        let deadline = Duration::from_secs(20);
        for i in 0..addrs.pods {
            let addr = addrs.app_grpc(i);
            mesh.procs[i].wait_listening(addr, deadline)?;
        }
        for index in envoys {
            mesh.wait_envoy_ready(index, deadline)?;
        }
        Ok(mesh)
    }

    /// Start Envoy `name` on `config` (harness's launcher: config and log
    /// as `<name>.envoy.{json,log}` in the mesh's folder); not yet ready.
    fn spawn_envoy(
        &mut self,
        artifacts: &Artifacts,
        name: &str,
        config: &Value,
        pod_name: Option<&str>,
    ) -> anyhow::Result<usize> {
        let options = envoy::Options {
            binary: Some(artifacts.envoy.clone()),
            log_level: "warn".into(),
            component_log_level: "wasm:info".into(),
            // istio-proxy has POD_NAME from the Downward API.
            env: pod_name
                .map(|pod| vec![("POD_NAME".to_owned(), pod.to_owned())])
                .unwrap_or_default(),
            wait_ready: false,
            ..envoy::Options::default()
        };
        let envoy = Envoy::launch(&self.dir, &format!("{name}.envoy"), config, &options)
            .with_context(|| format!("cannot start Envoy {name}"))?;
        self.envoys.push((format!("Envoy {name}"), envoy));
        Ok(self.envoys.len() - 1)
    }

    fn wait_envoy_ready(&mut self, index: usize, deadline: Duration) -> anyhow::Result<()> {
        let (name, envoy) = &mut self.envoys[index];
        match envoy.wait_ready(deadline) {
            Ok(()) => Ok(()),
            Err(harness::Error::EnvoyExited { status, .. }) => bail!(
                "{name} rejected its config or failed to start ({status}); config and log in {}:\n{}\n\
                 fix: the config is rendered from the manifests in istio/ - correct the \
                 DestinationRule or WasmPlugin field Envoy names above (an \
                 `invalid pluginConfig` line means the WasmPlugin's pluginConfig); \
                 `envoy --mode validate -c <file>.envoy.json` from that folder reproduces it",
                self.dir.display(),
                envoy.log_tail(12)
            ),
            Err(_) => bail!(
                "{name} not ready within {deadline:?}; log {}:\n{}",
                envoy.log_path().display(),
                envoy.log_tail(12)
            ),
        }
    }

    /// Lines with `[critical]`/`[error]` in any Envoy log of this mesh.
    pub fn envoy_errors(&self) -> Vec<String> {
        self.envoys
            .iter()
            .flat_map(|(name, envoy)| {
                envoy
                    .error_lines()
                    .into_iter()
                    .map(move |line| format!("{name}: {line}"))
            })
            .collect()
    }

    /// The sidecar of server pod `i`'s admin address (stats, config_dump).
    pub fn sidecar_admin(&self, i: usize) -> SocketAddr {
        self.addrs.sidecar_admin(i)
    }
}
