//! Starting the pieces of the local mesh on loopback addresses that stand in
//! for pod IPs, and stopping them all (every process is a
//! `harness::process::ChildGuard`, every Envoy a `harness::envoy::Envoy`);
//! adding, killing and draining pods while it runs.
//!
//! What the mesh simplifies about pods coming and going (the one list; what
//! it simplifies about the sidecars' configuration is in the `sidecar`
//! crate's docs). None changes which pod a call can reach when:
//! - A killed pod's kernel closes its sockets at once, so its peers see a
//!   reset; on a cluster a vanished node sends nothing and clients wait for
//!   TCP or HTTP/2 keepalives. The mesh shows the fastest case.
//! - The kubelet's report of a dead pod, the EndpointSlice update and
//!   istiod's push are one explicit `Publish` event, a fixed time after the
//!   kill; on a cluster they take what they take.
//! - Endpoints reach Envoy from a watched file (`sidecar::eds`), not from
//!   istiod over ADS, and kube-proxy is an Envoy `tcp_proxy` with the same
//!   per-connection random pick.
//! - A drained pod's sidecar keeps running until the run ends, as
//!   istio-proxy keeps serving through `terminationDrainDuration`.
//! - The cluster DNS listens on port 1053 (53 would need root) and answers
//!   for the headless Service only, with CoreDNS's default TTL (5 s).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use harness::{
    dns::{self, DnsServer},
    envoy::{self, Envoy},
    process::ChildGuard,
};
use serde_json::Value;

use sidecar::{
    AppProtocol, InboundPort, SidecarPolicies, eds, inbound,
    outbound::{self, OutboundPort},
    wasm_plugin::{Side, WasmPluginSpec},
};

pub use sidecar::pods::pod_names;

use crate::kube_proxy;

pub const GRPC_PORT: u16 = 30051;
/// The headless Service's name: client-side round robin resolves it.
pub const HEADLESS_HOST: &str = "server-headless.default.svc.cluster.local";
/// The cluster DNS's port on loopback: 53 would need root.
pub const DNS_PORT: u16 = 1053;
/// `mesh --subnet`'s default.
pub const DEFAULT_SUBNET: u8 = 10;
pub const HTTP_PORT: u16 = 8080;
pub const SERVICE_HTTP_PORT: u16 = 80;
pub const SIDECAR_INBOUND_PORT: u16 = 15006;
/// The server sidecar's listener for the app's HTTP port (istiod serves all
/// ports on 15006; without iptables a second port needs its own address).
pub const SIDECAR_INBOUND_HTTP_PORT: u16 = 15080;
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
    /// Where the client app dials `server:80` (its sidecar's outbound listener).
    pub fn client_sidecar_http(&self) -> SocketAddr {
        SocketAddr::new(self.ip(3, 1), SERVICE_HTTP_PORT)
    }
    /// Server pod `i`'s sidecar in front of its HTTP port (the second
    /// inbound port gets its own listener: no iptables, see `sidecar::inbound`).
    pub fn sidecar_inbound_http(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.pod_ip(i), SIDECAR_INBOUND_HTTP_PORT)
    }
    /// The cluster DNS (CoreDNS's stand-in).
    pub fn dns(&self) -> SocketAddr {
        SocketAddr::new(self.ip(4, 1), DNS_PORT)
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
    /// The cluster DNS on `Addresses::dns`, answering for the headless
    /// Service (`HEADLESS_HOST`) with the pods' addresses.
    pub dns: bool,
}

/// Every sidecar's bootstrap for one mesh: what `Mesh::start` runs and
/// `mesh render` writes, from one function so the two cannot drift.
pub struct SidecarConfigs {
    /// One per server pod, in pod order.
    pub servers: Vec<Value>,
    pub client: Value,
}

/// The sidecars istiod would configure for `policies` and `plugin`, with the
/// module at `wasm_file` (where istio-agent would have put it). The client
/// sidecar's outbound cluster takes its endpoints by EDS from the files in
/// `endpoints_dir` (as istiod pushes them; see `sidecar::eds`).
pub fn sidecar_configs(
    addrs: Addresses,
    pod_names: &[String],
    client_pod: &str,
    policies: &SidecarPolicies,
    plugin: &WasmPluginSpec,
    wasm_file: &Path,
    endpoints_dir: &Path,
) -> SidecarConfigs {
    let servers = pod_names
        .iter()
        .enumerate()
        .map(|(i, pod)| server_sidecar(addrs, i, pod, policies, plugin, wasm_file).bootstrap())
        .collect();
    // The client side selects by Service port.
    let ports = [
        OutboundPort {
            listen: addrs.client_sidecar(),
            service_port: GRPC_PORT,
            protocol: AppProtocol::Http2,
            endpoints: Vec::new(),
            wasm: plugin.applies(Side::Client, GRPC_PORT),
        },
        OutboundPort {
            listen: addrs.client_sidecar_http(),
            service_port: SERVICE_HTTP_PORT,
            protocol: AppProtocol::Http1,
            endpoints: Vec::new(),
            wasm: plugin.applies(Side::Client, SERVICE_HTTP_PORT),
        },
    ];
    let client_wasm = ports
        .iter()
        .any(|p| p.wasm)
        .then(|| plugin.envoy_plugin(wasm_file).http_filter());
    let mut client = outbound::client_sidecar(
        client_pod,
        addrs.client_sidecar_admin(),
        SERVICE_HOST,
        &ports,
        &policies.outbound,
        client_wasm,
    );
    for cluster in client["static_resources"]["clusters"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        *cluster = eds::from_file(cluster.take(), endpoints_dir);
    }
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
        vec![
            InboundPort::grpc(addrs.app_grpc(i)).listen(addrs.sidecar_inbound(i)),
            InboundPort::http(addrs.app_http(i)).listen(addrs.sidecar_inbound_http(i)),
        ],
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

/// A running local mesh; dropping it stops every process. Pods can be
/// added, killed and drained while it runs ([`Mesh::add_pod`],
/// [`Mesh::kill_pod`], [`Mesh::drain_pod`]); [`Mesh::publish`] then updates
/// what Kubernetes would: the client sidecar's endpoints (EDS), the L4
/// stand-in's (kube-proxy) and the headless Service's DNS records.
pub struct Mesh {
    pub addrs: Addresses,
    pub client_pod: String,
    pub dir: PathBuf,
    /// Every pod started, by index (its address is `addrs.pod_ip(index)`).
    pods: Vec<Pod>,
    client_sidecar: Option<Envoy>,
    kube_proxy: Option<Envoy>,
    dns: Option<DnsServer>,
    endpoints: EndpointFiles,
    /// Errors Envoys of killed pods logged before they died.
    errors_of_the_dead: Vec<String>,
    /// What a pod added later needs.
    start: PodTemplate,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // The processes stop as the fields drop, right after this.
        let _ = std::fs::remove_dir_all(self.endpoints.dir());
    }
}

/// The client sidecar's Envoy counters a scenario reads, summed over its
/// outbound listeners and clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSidecarCounts {
    /// Connections the client app opened to it (`downstream_cx_total`).
    pub client_connections: u64,
    /// Requests it sent again (`upstream_rq_retry`).
    pub retried: u64,
    /// Connections to pods it failed to open (`upstream_cx_connect_fail`).
    pub connect_failures: u64,
}

/// What [`Mesh::add_pod`] starts a pod from: what the Deployment's pod
/// template says.
struct PodTemplate {
    artifacts: Artifacts,
    layout: Layout,
    plugin: WasmPluginSpec,
    seed: u64,
}

/// One server pod: the app and, with sidecars, its sidecar.
pub struct Pod {
    pub name: String,
    pub state: PodState,
    app: ChildGuard,
    sidecar: Option<Envoy>,
}

impl Pod {
    /// What a SIGKILL of the pod stops, for messages.
    pub fn containers(&self) -> &'static str {
        if self.sidecar.is_some() {
            "its app and sidecar"
        } else {
            "its app"
        }
    }
}

/// Where a pod is in its life, as the endpoints see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Running and listed in the endpoints (once published).
    Ready,
    /// SIGTERM sent: the app reports NOT_SERVING and drains; no longer an
    /// endpoint (Kubernetes takes a terminating pod out at once).
    Terminating,
    /// SIGKILL sent to the app and its sidecar; still listed until the next
    /// [`Mesh::publish`] (the kubelet has not reported it yet).
    Killed,
    /// SIGSTOP sent to the app and its sidecar (the node is lost): they
    /// neither answer nor close a connection; still listed until the next
    /// [`Mesh::publish`] (the node controller has not marked the node yet).
    Frozen,
    /// Killed or frozen, and no longer listed.
    Gone,
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
        // Meshes on other subnets may run at the same time: each its own
        // folder (logs, configs, endpoint files).
        let dir = match addrs.subnet {
            DEFAULT_SUBNET => artifacts.run_dir.join(name),
            subnet => artifacts.run_dir.join(format!("{name}.subnet-{subnet}")),
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // Per process: two meshes of one name (other network namespaces,
        // a test run twice at once) must not read each other's endpoints.
        let endpoints = EndpointFiles::new(&dir.join(format!("endpoints.{}", std::process::id())))?;
        let mut mesh = Mesh {
            addrs,
            client_pod: pod_names("client-grpc", 1, seed.rotate_left(17)).remove(0),
            dir,
            pods: Vec::new(),
            client_sidecar: None,
            kube_proxy: None,
            dns: None,
            endpoints,
            errors_of_the_dead: Vec::new(),
            start: PodTemplate {
                artifacts: artifacts.clone(),
                layout: layout.clone(),
                plugin: plugin.clone(),
                seed,
            },
        };

        let mut needed = Vec::new();
        for i in 0..addrs.pods {
            needed.extend(mesh.pod_addresses(i));
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
                (
                    addrs.client_sidecar_http(),
                    "client sidecar outbound (HTTP)",
                ),
                (addrs.client_sidecar_admin(), "client sidecar admin"),
            ]);
        }
        for (addr, what) in needed {
            ensure_free(addr, what)?;
        }
        if layout.dns {
            mesh.dns = Some(
                DnsServer::start(addrs.dns(), dns::KUBERNETES_TTL).with_context(|| {
                    format!(
                        "the cluster DNS cannot start on {}; is another mesh on this --subnet?",
                        addrs.dns()
                    )
                })?,
            );
        }

        // Apps first, then every Envoy at once (they start in parallel);
        // the endpoint files exist before any Envoy reads them.
        for i in 0..addrs.pods {
            mesh.spawn_pod(i)?;
        }
        mesh.endpoints.write_all(&mesh.endpoint_sets())?;
        mesh.publish_dns()?;
        if let Some(policies) = &layout.sidecars {
            let client_config = sidecar_configs(
                addrs,
                &[],
                &mesh.client_pod,
                policies,
                plugin,
                &artifacts.wasm,
                mesh.endpoints.dir(),
            )
            .client;
            let client_pod = mesh.client_pod.clone();
            mesh.client_sidecar = Some(mesh.spawn_envoy(
                &format!("{client_pod}.sidecar"),
                &client_config,
                Some(&client_pod),
            )?);
        }
        if layout.l4_service {
            let config = kube_proxy::l4_service(
                addrs.service_admin(),
                &[addrs.service_grpc(), addrs.service_http()],
                mesh.endpoints.dir(),
            );
            mesh.kube_proxy = Some(mesh.spawn_envoy("service-server.kube-proxy", &config, None)?);
        }

        for i in 0..addrs.pods {
            mesh.wait_pod_ready(i)?;
        }
        for envoy in [&mut mesh.client_sidecar, &mut mesh.kube_proxy]
            .into_iter()
            .flatten()
        {
            wait_envoy_ready(envoy, &mesh.dir)?;
        }
        Ok(mesh)
    }

    /// What [`Mesh::publish`] updates, for messages: `kube-proxy (EDS)`, ...
    pub fn endpoint_consumers(&self) -> String {
        let mut consumers = Vec::new();
        if self.client_sidecar.is_some() {
            consumers.push("the client sidecar (EDS)");
        }
        if self.kube_proxy.is_some() {
            consumers.push("kube-proxy (EDS)");
        }
        if self.dns.is_some() {
            consumers.push("DNS (A records of server-headless)");
        }
        if consumers.is_empty() {
            "nothing".to_owned()
        } else {
            consumers.join(", ")
        }
    }

    /// Every pod started so far, by index.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The names of every pod started so far, by index.
    pub fn pod_names(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.name.clone()).collect()
    }

    /// The index of the pod named `name`.
    pub fn pod_index(&self, name: &str) -> Option<usize> {
        self.pods.iter().position(|p| p.name == name)
    }

    /// Starts one more server pod (and its sidecar), waits until it is
    /// ready, then publishes it, as Kubernetes adds a pod to the endpoints
    /// once its readiness probe passes. Returns its index.
    pub fn add_pod(&mut self) -> anyhow::Result<usize> {
        let i = self.pods.len();
        if i >= MAX_PODS {
            bail!("cannot add a pod: the mesh has addresses for {MAX_PODS} pods");
        }
        for (addr, what) in self.pod_addresses(i) {
            ensure_free(addr, what)?;
        }
        self.spawn_pod(i)?;
        self.wait_pod_ready(i)?;
        self.publish()?;
        Ok(i)
    }

    /// SIGKILL to pod `i`'s app and sidecar (the node lost the pod). The
    /// endpoints still list it until the next [`Mesh::publish`].
    pub fn kill_pod(&mut self, i: usize) -> anyhow::Result<()> {
        let pod = self.live_pod(i)?;
        pod.state = PodState::Killed;
        pod.app.kill();
        if let Some(sidecar) = pod.sidecar.take() {
            let name = format!("Envoy {}.sidecar", pod.name);
            self.errors_of_the_dead.extend(
                sidecar
                    .error_lines()
                    .into_iter()
                    .map(|line| format!("{name}: {line}")),
            );
            // Dropping an Envoy SIGKILLs and reaps it.
            drop(sidecar);
        }
        Ok(())
    }

    /// SIGSTOP to pod `i`'s app and sidecar: the node is lost. Nothing
    /// resets its connections (as when a node vanishes: no FIN, no RST);
    /// calls on them wait for the caller's deadline or keepalive. The
    /// endpoints still list it until the next [`Mesh::publish`]. Stopped
    /// processes still die by the SIGKILL every process guard sends.
    pub fn freeze_pod(&mut self, i: usize) -> anyhow::Result<()> {
        let pod = self.live_pod(i)?;
        pod.state = PodState::Frozen;
        pod.app
            .signal(libc::SIGSTOP)
            .and_then(|()| {
                pod.sidecar
                    .as_ref()
                    .map_or(Ok(()), |s| s.signal(libc::SIGSTOP))
            })
            .with_context(|| format!("cannot send SIGSTOP to {}", pod.name))
    }

    /// SIGTERM to pod `i`'s app (Kubernetes deleting the pod): it reports
    /// NOT_SERVING, finishes its calls and exits (`--drain-grace`,
    /// `--drain-timeout`). Kubernetes takes a terminating pod out of the
    /// endpoints at once, so this publishes. Its sidecar keeps running, as
    /// istio-proxy drains for `terminationDrainDuration` (5s).
    pub fn drain_pod(&mut self, i: usize) -> anyhow::Result<()> {
        let pod = self.live_pod(i)?;
        pod.state = PodState::Terminating;
        pod.app
            .signal(libc::SIGTERM)
            .with_context(|| format!("cannot send SIGTERM to {}", pod.name))?;
        self.publish()
    }

    /// Writes the endpoints of the pods that are [`PodState::Ready`] (and
    /// killed ones the kubelet has not reported: none after this) to every
    /// consumer, and waits until each running Envoy lists exactly them.
    pub fn publish(&mut self) -> anyhow::Result<()> {
        for pod in &mut self.pods {
            if matches!(pod.state, PodState::Killed | PodState::Frozen) {
                pod.state = PodState::Gone;
            }
        }
        let sets = self.endpoint_sets();
        self.endpoints.write_all(&sets)?;
        self.publish_dns()?;
        for (cluster, hosts) in &sets {
            let envoy = match cluster.kind {
                ClusterKind::Outbound => self.client_sidecar.as_ref(),
                ClusterKind::KubeProxy => self.kube_proxy.as_ref(),
            };
            if let Some(envoy) = envoy {
                wait_for_hosts(envoy, &cluster.name, hosts)?;
            }
        }
        Ok(())
    }

    /// Lines with `[critical]`/`[error]` in any Envoy log of this mesh.
    pub fn envoy_errors(&self) -> Vec<String> {
        let sidecars = self.pods.iter().filter_map(|p| {
            p.sidecar
                .as_ref()
                .map(|e| (format!("Envoy {}.sidecar", p.name), e))
        });
        let others = [
            ("Envoy client sidecar", self.client_sidecar.as_ref()),
            ("Envoy kube-proxy", self.kube_proxy.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, e)| e.map(|e| (name.to_owned(), e)));
        let mut errors = self.errors_of_the_dead.clone();
        for (name, envoy) in sidecars.chain(others) {
            errors.extend(
                envoy
                    .error_lines()
                    .into_iter()
                    .map(|line| format!("{name}: {line}")),
            );
        }
        errors
    }

    /// The cluster DNS's answers so far (none without it).
    pub fn dns_answers(&self) -> Vec<dns::Answer> {
        self.dns
            .as_ref()
            .map(DnsServer::answers)
            .unwrap_or_default()
    }

    /// How many pods the endpoints list now (ready ones, and killed ones
    /// the kubelet has not reported yet).
    pub fn listed_count(&self) -> usize {
        self.listed().len()
    }

    /// The client sidecar's counters, from one read of its stats; `None`
    /// without a client sidecar or if its admin API is gone.
    pub fn client_sidecar_counts(&self) -> Option<ClientSidecarCounts> {
        let stats = self.client_sidecar.as_ref()?.stats().ok()?;
        let sum = |prefix: &str, suffix: &str| -> u64 {
            stats
                .iter()
                .filter(|(name, _)| name.starts_with(prefix) && name.ends_with(suffix))
                .map(|(_, v)| v)
                .sum()
        };
        Some(ClientSidecarCounts {
            client_connections: sum("http.outbound_", ".downstream_cx_total"),
            retried: sum("cluster.outbound|", ".upstream_rq_retry"),
            connect_failures: sum("cluster.outbound|", ".upstream_cx_connect_fail"),
        })
    }

    /// The running pods whose sidecars have a request in flight (their
    /// inbound listeners' `downstream_rq_active`), by index. An error if the
    /// mesh has no server sidecars or one cannot be read.
    pub fn pods_with_requests_in_flight(&self) -> anyhow::Result<Vec<usize>> {
        if self.start.layout.sidecars.is_none() {
            bail!("the pods have no sidecars to tell which one has the call in flight");
        }
        let mut busy = Vec::new();
        for (i, pod) in self.pods.iter().enumerate() {
            let Some(sidecar) = pod
                .sidecar
                .as_ref()
                .filter(|_| pod.state == PodState::Ready)
            else {
                continue;
            };
            let in_flight: u64 = sidecar
                .stats_matching("downstream_rq_active")
                .with_context(|| format!("reading {}'s sidecar stats", pod.name))?
                .iter()
                .filter(|(name, _)| name.starts_with("http.inbound_"))
                .map(|(_, v)| v)
                .sum();
            if in_flight > 0 {
                busy.push(i);
            }
        }
        Ok(busy)
    }

    /// The sidecar of server pod `i`'s admin address (stats, config_dump).
    pub fn sidecar_admin(&self, i: usize) -> SocketAddr {
        self.addrs.sidecar_admin(i)
    }

    fn live_pod(&mut self, i: usize) -> anyhow::Result<&mut Pod> {
        let count = self.pods.len();
        match self.pods.get_mut(i) {
            Some(pod) if pod.state == PodState::Ready => Ok(pod),
            Some(pod) => bail!("pod {} is {:?}, not running", pod.name, pod.state),
            None => bail!("no pod {i}: the mesh has {count} pods"),
        }
    }

    /// The addresses pod `i` takes.
    fn pod_addresses(&self, i: usize) -> Vec<(SocketAddr, &'static str)> {
        let a = self.addrs;
        let mut needed = vec![
            (a.app_grpc(i), "server pod gRPC"),
            (a.app_http(i), "server pod HTTP"),
        ];
        if self.start.layout.sidecars.is_some() {
            needed.push((a.sidecar_inbound(i), "server sidecar inbound"));
            needed.push((a.sidecar_inbound_http(i), "server sidecar inbound (HTTP)"));
            needed.push((a.sidecar_admin(i), "server sidecar admin"));
        }
        needed
    }

    /// Starts pod `i`'s app and (with sidecars) its sidecar; not yet ready.
    fn spawn_pod(&mut self, i: usize) -> anyhow::Result<()> {
        let (addrs, start) = (self.addrs, &self.start);
        let name = pod_names("server", i + 1, start.seed).remove(i);
        let mut command = Command::new(start.artifacts.bin("server"));
        command
            .arg("--grpc-addr")
            .arg(addrs.app_grpc(i).to_string())
            .arg("--http-addr")
            .arg(addrs.app_http(i).to_string())
            .args(&start.layout.server_args)
            .env("POD_NAME", &name);
        let log = self.dir.join(format!("{name}.server.log"));
        let app = ChildGuard::spawn_logged(&format!("server {name}"), &mut command, &log)?;
        let sidecar = match &start.layout.sidecars {
            Some(policies) => {
                let config = server_sidecar(
                    addrs,
                    i,
                    &name,
                    policies,
                    &start.plugin,
                    &start.artifacts.wasm,
                )
                .bootstrap();
                Some(self.spawn_envoy(&format!("{name}.sidecar"), &config, Some(&name))?)
            }
            None => None,
        };
        self.pods.push(Pod {
            name,
            state: PodState::Ready,
            app,
            sidecar,
        });
        Ok(())
    }

    fn wait_pod_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let addr = self.addrs.app_grpc(i);
        let pod = &mut self.pods[i];
        pod.app.wait_listening(addr, READY_DEADLINE)?;
        if let Some(sidecar) = &mut pod.sidecar {
            wait_envoy_ready(sidecar, &self.dir)?;
        }
        Ok(())
    }

    /// The headless Service's A records: the listed pods' addresses.
    fn publish_dns(&self) -> anyhow::Result<()> {
        let Some(dns) = &self.dns else {
            return Ok(());
        };
        let ips: Vec<Ipv4Addr> = self
            .listed()
            .into_iter()
            .filter_map(|i| match self.addrs.pod_ip(i) {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            })
            .collect();
        dns.set_a_records(HEADLESS_HOST, &ips)
            .context("updating the cluster DNS")
    }

    /// The pods the endpoints list: ready ones, and killed or frozen ones
    /// not reported yet.
    fn listed(&self) -> Vec<usize> {
        self.pods
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                matches!(
                    p.state,
                    PodState::Ready | PodState::Killed | PodState::Frozen
                )
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// What each endpoint consumer should list now: the client sidecar's
    /// outbound cluster (the pods' sidecars) and kube-proxy's Service ports
    /// (the pods' apps). Killed pods stay until published away.
    fn endpoint_sets(&self) -> Vec<(EndpointCluster, Vec<SocketAddr>)> {
        let a = self.addrs;
        let listed = self.listed();
        let hosts = |at: fn(&Addresses, usize) -> SocketAddr| -> Vec<SocketAddr> {
            listed.iter().map(|&i| at(&a, i)).collect()
        };
        let mut sets = Vec::new();
        if self.start.layout.sidecars.is_some() {
            sets.push((
                EndpointCluster {
                    name: outbound::outbound_cluster_name(GRPC_PORT, SERVICE_HOST),
                    kind: ClusterKind::Outbound,
                },
                hosts(Addresses::sidecar_inbound),
            ));
            sets.push((
                EndpointCluster {
                    name: outbound::outbound_cluster_name(SERVICE_HTTP_PORT, SERVICE_HOST),
                    kind: ClusterKind::Outbound,
                },
                hosts(Addresses::sidecar_inbound_http),
            ));
        }
        if self.start.layout.l4_service {
            sets.push((
                EndpointCluster {
                    name: kube_proxy::cluster_name(a.service_grpc()),
                    kind: ClusterKind::KubeProxy,
                },
                hosts(Addresses::app_grpc),
            ));
            sets.push((
                EndpointCluster {
                    name: kube_proxy::cluster_name(a.service_http()),
                    kind: ClusterKind::KubeProxy,
                },
                hosts(Addresses::app_http),
            ));
        }
        sets
    }

    /// Start Envoy `name` on `config` (harness's launcher: config and log
    /// as `<name>.envoy.{json,log}` in the mesh's folder); not yet ready.
    fn spawn_envoy(
        &self,
        name: &str,
        config: &Value,
        pod_name: Option<&str>,
    ) -> anyhow::Result<Envoy> {
        let options = envoy::Options {
            binary: Some(self.start.artifacts.envoy.clone()),
            log_level: "warn".into(),
            component_log_level: "wasm:info".into(),
            // istio-proxy has POD_NAME from the Downward API.
            env: pod_name
                .map(|pod| vec![("POD_NAME".to_owned(), pod.to_owned())])
                .unwrap_or_default(),
            wait_ready: false,
            ..envoy::Options::default()
        };
        Envoy::launch(&self.dir, &format!("{name}.envoy"), config, &options)
            .with_context(|| format!("cannot start Envoy {name}"))
    }
}

const READY_DEADLINE: Duration = Duration::from_secs(20);
/// Pod addresses are `127.<subnet>.1.<1..=250>`.
const MAX_PODS: usize = 250;

fn wait_envoy_ready(envoy: &mut Envoy, dir: &Path) -> anyhow::Result<()> {
    let name = envoy
        .config_path()
        .file_stem()
        .map(|s| s.to_string_lossy().trim_end_matches(".envoy").to_owned())
        .unwrap_or_default();
    match envoy.wait_ready(READY_DEADLINE) {
        Ok(()) => Ok(()),
        Err(harness::Error::EnvoyExited { status, .. }) => bail!(
            "Envoy {name} rejected its config or failed to start ({status}); config and log in {}:\n{}\n\
             fix: the config is rendered from the manifests in istio/ - correct the \
             DestinationRule or WasmPlugin field Envoy names above (an \
             `invalid pluginConfig` line means the WasmPlugin's pluginConfig); \
             `envoy --mode validate -c <file>.envoy.json` from that folder reproduces it",
            dir.display(),
            envoy.log_tail(12)
        ),
        Err(_) => bail!(
            "Envoy {name} not ready within {READY_DEADLINE:?}; log {}:\n{}",
            envoy.log_path().display(),
            envoy.log_tail(12)
        ),
    }
}

/// An EDS cluster the mesh publishes endpoints to, and which Envoy has it.
#[derive(Clone, Debug)]
struct EndpointCluster {
    name: String,
    kind: ClusterKind,
}

#[derive(Clone, Copy, Debug)]
enum ClusterKind {
    /// The client sidecar's `outbound|30051||server...`.
    Outbound,
    /// A Service port of the L4 stand-in.
    KubeProxy,
}

/// The endpoint files the Envoys watch (`sidecar::eds`): each write is a
/// whole new file renamed into place, which Envoy sees as one update.
struct EndpointFiles {
    dir: PathBuf,
    version: u64,
}

impl EndpointFiles {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
            version: 0,
        })
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    fn write_all(&mut self, sets: &[(EndpointCluster, Vec<SocketAddr>)]) -> anyhow::Result<()> {
        self.version += 1;
        for (cluster, hosts) in sets {
            let file = eds::assignment_file(&self.dir, &cluster.name);
            let staged = file.with_extension("staged");
            let body =
                serde_json::to_vec_pretty(&eds::assignment(&cluster.name, hosts, self.version))?;
            std::fs::write(&staged, body)
                .with_context(|| format!("cannot write {}", staged.display()))?;
            std::fs::rename(&staged, &file)
                .with_context(|| format!("cannot move {} into place", file.display()))?;
        }
        Ok(())
    }
}

/// How long an Envoy may take to apply an endpoint update (it takes
/// milliseconds; the bound only keeps a refused update from hanging a run).
const ENDPOINT_UPDATE_DEADLINE: Duration = Duration::from_secs(5);

/// Waits until `envoy`'s admin API lists exactly `hosts` for `cluster`.
fn wait_for_hosts(envoy: &Envoy, cluster: &str, hosts: &[SocketAddr]) -> anyhow::Result<()> {
    let mut want = hosts.to_vec();
    want.sort_unstable();
    let mut last = None;
    let applied = harness::process::wait_for(
        &format!("the endpoints of {cluster}"),
        ENDPOINT_UPDATE_DEADLINE,
        Duration::from_millis(10),
        None,
        || {
            let body = envoy.admin_get("/clusters?format=json").ok()?;
            let parsed: Value = serde_json::from_str(&body).ok()?;
            last = eds::hosts_in_admin(&parsed, cluster);
            (last.as_ref() == Some(&want)).then_some(())
        },
    );
    applied.map_err(|_| {
        anyhow::anyhow!(
            "Envoy {} did not apply the endpoint update of {cluster} within {:?}: it {}, \
             the update {want:?}; its log ({}):\n{}",
            envoy.config_path().display(),
            ENDPOINT_UPDATE_DEADLINE,
            match last {
                Some(hosts) => format!("lists {hosts:?}"),
                None => "has no such cluster".to_owned(),
            },
            envoy.log_path().display(),
            envoy.log_tail(8)
        )
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint update the running Envoy refuses (here: an assignment
    /// for another cluster, which Envoy rejects by name) is an error naming
    /// the cluster, what Envoy still lists and its log, within the deadline:
    /// never a hang.
    #[test]
    fn an_endpoint_update_envoy_refuses_is_an_error_not_a_hang() {
        let dir = harness::paths::run_dir("mesh-refused-eds").unwrap();
        let endpoints = dir.join("endpoints");
        std::fs::create_dir_all(&endpoints).unwrap();
        let service: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let cluster = kube_proxy::cluster_name(service);
        let pod: SocketAddr = "127.0.0.2:30051".parse().unwrap();
        let file = eds::assignment_file(&endpoints, &cluster);
        std::fs::write(&file, eds::assignment(&cluster, &[pod], 1).to_string()).unwrap();
        let config = kube_proxy::l4_service("127.0.0.1:0".parse().unwrap(), &[service], &endpoints);
        let envoy = Envoy::launch(&dir, "kube-proxy", &config, &envoy::Options::default())
            .expect("Envoy starts");
        wait_for_hosts(&envoy, &cluster, &[pod]).expect("the first assignment applies");

        let wrong = eds::assignment("some-other-cluster", &[], 2);
        let staged = file.with_extension("staged");
        std::fs::write(&staged, wrong.to_string()).unwrap();
        std::fs::rename(&staged, &file).unwrap();
        let started = std::time::Instant::now();
        let err = wait_for_hosts(&envoy, &cluster, &[])
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < ENDPOINT_UPDATE_DEADLINE + Duration::from_secs(2));
        for expected in [
            "did not apply the endpoint update",
            &cluster,
            "lists [127.0.0.2:30051]",
            // Envoy's own reason, from its log.
            "config rejected: Unexpected EDS cluster",
        ] {
            assert!(err.contains(expected), "{expected:?} missing from:\n{err}");
        }
    }
}
