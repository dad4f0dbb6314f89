//! Starting the pieces of the local mesh on loopback addresses that stand in
//! for pod IPs, and stopping them all (every process is a
//! `harness::process::ChildGuard`, every Envoy a `harness::envoy::Envoy`).

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

use sidecar::{
    InboundPort, SidecarPolicies, inbound, outbound,
    wasm_plugin::{Side, WasmPluginSpec},
};

pub use sidecar::pods::pod_names;

use crate::kube_proxy;

pub const GRPC_PORT: u16 = 30051;
pub const HTTP_PORT: u16 = 8080;
pub const SERVICE_HTTP_PORT: u16 = 80;
pub const SIDECAR_INBOUND_PORT: u16 = 15006;
pub const ENVOY_ADMIN_PORT: u16 = 15000;
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
        Ok(Self {
            envoy: harness::paths::envoy_at(envoy)?,
            wasm: harness::paths::wasm_at(wasm)?,
            bin_dir: harness::paths::bin_dir(&["server", "client-grpc", "client-http"])?,
            run_dir: harness::paths::target_dir().join("mesh"),
        })
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
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

/// Which parts a scenario needs.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// The L4 Service (kube-proxy stand-in) in front of the apps.
    pub l4_service: bool,
    /// Sidecars on both sides, with these policies.
    pub sidecars: Option<SidecarPolicies>,
    /// Extra flags for every server pod (after its addresses).
    pub server_args: Vec<String>,
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
    let servers = pod_names
        .iter()
        .enumerate()
        .map(|(i, pod)| server_sidecar(addrs, i, pod, policies, plugin, wasm_file).bootstrap())
        .collect();
    // The client side selects by Service port (30051 here too).
    let client_wasm = plugin
        .applies(Side::Client, GRPC_PORT)
        .then(|| plugin.envoy_plugin(wasm_file).http_filter());
    let sidecars: Vec<_> = (0..pod_names.len())
        .map(|i| addrs.sidecar_inbound(i))
        .collect();
    let client = outbound::client_sidecar(
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

/// Server pod `i`'s sidecar: `sidecar::inbound::server_pod` (the function
/// the filter's in-Envoy tests render theirs with) for the pod's gRPC port.
pub fn server_sidecar(
    addrs: Addresses,
    i: usize,
    pod: &str,
    policies: &SidecarPolicies,
    plugin: &WasmPluginSpec,
    wasm_file: &Path,
) -> sidecar::InboundSidecar {
    inbound::server_pod(
        pod,
        addrs.pod_ip(i),
        addrs.sidecar_admin(i),
        vec![InboundPort::grpc(addrs.app_grpc(i)).listen(addrs.sidecar_inbound(i))],
        &policies.inbound,
        plugin,
        wasm_file,
    )
}

/// A seed for pod names: one per run, so every scenario shows the same pods.
pub fn name_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(42)
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
            ensure_free(addr, what)?;
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
                .args(&layout.server_args)
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
            let config = kube_proxy::l4_service(
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

/// Fail early, with the fix, when an address the mesh needs is taken.
fn ensure_free(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) => anyhow::bail!(
            "{addr} ({what}) is not free: {e}. Is another `mesh up` running? Stop it, or use another --subnet."
        ),
    }
}
