//! The experiments: what runs, what the client prints, what a user should
//! conclude — checked, not just shown.
//!
//! A scenario is one value ([`Scenario`]); the table of them is
//! [`catalog::SCENARIOS`], one engine runs any of them
//! ([`engine::run_scenario`]: start the topology it asks for, run its client,
//! read the records, print, check), and each expectation is a small named
//! function in [`check`]. Adding a scenario is a row in the catalog and, when
//! no existing check says what it expects, a function in `check`.

pub mod catalog;
pub mod check;
pub mod engine;
pub mod events;

use anyhow::bail;
use sidecar::SidecarPolicies;

pub use catalog::{SCENARIOS, find};
pub use engine::{Options, Outcome, Plan, preflight, run_scenario};

use crate::topology::{Addresses, GRPC_PORT, HEADLESS_HOST, Layout};

/// One experiment, as data: everything the engine needs to run it and to
/// judge what the client saw.
#[derive(Debug)]
pub struct Scenario {
    /// Its place in `mesh list` and the demo; `mesh run N` finds it.
    pub number: u8,
    /// `mesh run NAME`; its logs go to `target/mesh/NAME/`.
    pub name: &'static str,
    pub title: &'static str,
    /// How the client reaches the server pods; decides what else runs.
    pub path: ClientPath,
    pub pods: Pods,
    /// The DestinationRule the client sidecar applies: a file name (without
    /// `.yaml`) in `<istio-dir>/destinationrules/`; `None`: Istio's defaults.
    /// Only a [`ClientPath::Sidecar`] has a sidecar to apply it.
    pub destination_rule: Option<&'static str>,
    /// Extra flags for every server pod (after its addresses).
    pub server_args: &'static [&'static str],
    pub client: Client,
    /// What happens to the pods while the client runs, in time order.
    pub events: &'static [Event],
    /// What a user should see; printed under the results, and what `check`
    /// verifies.
    pub expected: &'static str,
    pub check: check::Check,
}

/// Something done to the pods `at` this long after the client started.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub at: std::time::Duration,
    pub action: Action,
}

/// What an [`Event`] does: what happens to pods in a cluster, and what
/// Kubernetes updates after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A new server pod (and sidecar) starts; once ready, the endpoints and
    /// DNS list it (a scale-out).
    AddPod,
    /// SIGKILL to a pod's app and sidecar; the endpoints still list it until
    /// a [`Action::Publish`] (the node lost it; the kubelet has not told).
    /// It lands a moment into a call, as a pod dies under load: the engine
    /// waits for the client's current call to end and kills 20 ms into the
    /// next (the client must call back to back: `--interval 0`).
    Kill(Which),
    /// SIGSTOP to a pod's app and sidecar (its node is lost): no answer, and
    /// no FIN or RST on its connections; the endpoints still list it until a
    /// [`Action::Publish`]. It lands mid-call, as a kill does.
    Freeze(Which),
    /// SIGTERM to a pod's app (the pod is deleted): it reports NOT_SERVING
    /// and drains; the endpoints drop it at once. It lands mid-call, as a
    /// kill does.
    Drain(Which),
    /// The endpoints and DNS catch up with the pods that run.
    Publish,
}

impl Action {
    /// What it is doing, for messages ("killing server-…").
    pub fn verb(self) -> &'static str {
        match self {
            Self::AddPod => "adding a pod",
            Self::Kill(_) => "killing",
            Self::Freeze(_) => "freezing",
            Self::Drain(_) => "draining",
            Self::Publish => "updating the endpoints",
        }
    }

    /// Whether the engine applies it while a call is in flight.
    pub fn lands_mid_call(self) -> bool {
        matches!(self, Self::Kill(_) | Self::Freeze(_) | Self::Drain(_))
    }
}

/// Which pod an event acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The pod that answered the client's latest call (where its connection
    /// is, on an L4 path).
    Serving,
    /// The pod whose sidecar has the client's call in flight (behind a
    /// client sidecar the next call's pod is the sidecar's pick, not the
    /// last one's): read from the server sidecars' stats a moment into the
    /// call.
    InFlight,
}

/// How the client app reaches the server pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientPath {
    /// The Service's address: the L4 stand-in (kube-proxy) picks a pod for
    /// each new connection.
    L4Service,
    /// The client pod's sidecar (outbound cluster from the DestinationRule)
    /// to the server pods' sidecars (the filter on their inbound side).
    Sidecar,
    /// The pods' own addresses (a headless Service's records): no proxy.
    PodAddresses,
    /// The headless Service's name, resolved by real DNS queries to the
    /// cluster DNS (`{dns}` in the client's arguments): no proxy.
    HeadlessDns,
}

impl ClientPath {
    /// What runs besides the server pods' apps.
    pub fn layout(self, policies: SidecarPolicies, server_args: Vec<String>) -> Layout {
        Layout {
            l4_service: self == Self::L4Service,
            sidecars: (self == Self::Sidecar).then_some(policies),
            server_args,
            dns: self == Self::HeadlessDns,
        }
    }

    /// What `binary` dials on this path (`{target}` in its arguments).
    pub fn target(self, addrs: &Addresses, binary: Binary) -> anyhow::Result<String> {
        Ok(match (self, binary) {
            (Self::L4Service, Binary::ClientGrpc) => addrs.service_grpc().to_string(),
            (Self::L4Service, Binary::ClientHttp) => addrs.service_http().to_string(),
            (Self::Sidecar, Binary::ClientGrpc) => addrs.client_sidecar().to_string(),
            (Self::PodAddresses, Binary::ClientGrpc) => (0..addrs.pods)
                .map(|i| addrs.app_grpc(i).to_string())
                .collect::<Vec<_>>()
                .join(","),
            (Self::Sidecar, Binary::ClientHttp) => addrs.client_sidecar_http().to_string(),
            (Self::HeadlessDns, Binary::ClientGrpc) => format!("{HEADLESS_HOST}:{GRPC_PORT}"),
            (Self::PodAddresses | Self::HeadlessDns, Binary::ClientHttp) => bail!(
                "{} via {self:?}: the local mesh has no such route (client-http takes one URL)",
                binary.name()
            ),
        })
    }
}

/// How many server pods a scenario starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pods {
    /// `--pods` (default 3).
    Flag,
    /// Exactly this many, whatever `--pods` says.
    Exactly(usize),
}

/// The client app: one of our client binaries and how it is called.
#[derive(Debug)]
pub struct Client {
    pub binary: Binary,
    /// Its arguments before `--count`; `{target}` stands for what the
    /// scenario's [`ClientPath::target`] gives.
    pub args: &'static [&'static str],
    pub calls: Calls,
    /// `--interval` between calls.
    pub interval: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    ClientGrpc,
    ClientHttp,
}

impl Binary {
    pub fn name(self) -> &'static str {
        match self {
            Self::ClientGrpc => "client-grpc",
            Self::ClientHttp => "client-http",
        }
    }
}

/// How many calls the client makes (`--count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Calls {
    /// `--calls` (default 12).
    Flag,
    /// `--calls`, but at least this many.
    AtLeast(u64),
    /// `--calls`, but enough for every pod's connection to reach the
    /// DestinationRule's `maxRequestsPerConnection` and roll over.
    PastConnectionLimit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_path_the_mesh_lacks_is_refused_by_name() {
        let addrs = Addresses {
            subnet: 10,
            pods: 2,
        };
        assert_eq!(
            ClientPath::PodAddresses
                .target(&addrs, Binary::ClientGrpc)
                .unwrap(),
            "127.10.1.1:30051,127.10.1.2:30051"
        );
        let error = ClientPath::PodAddresses
            .target(&addrs, Binary::ClientHttp)
            .unwrap_err()
            .to_string();
        assert!(error.contains("client-http via PodAddresses"), "{error}");
    }
}
