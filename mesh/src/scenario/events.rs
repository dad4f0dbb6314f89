//! A scenario's events, applied to the running mesh on the client's clock,
//! and what was done, as the run reports it (`t=1.00s added server-...`).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use wire::Record;

use super::{Action, Event, Which};
use crate::topology::{Mesh, PodState};

/// An event as it happened.
#[derive(Clone, Debug, Serialize)]
pub struct Happened {
    /// When it began, milliseconds after the client started.
    pub t_ms: u64,
    /// When the mesh had finished it (the pod ready, the Envoys listing the
    /// new endpoints), milliseconds after the client started.
    pub done_ms: u64,
    /// `added`, `killed`, `frozen`, `drained` or `endpoints`.
    pub what: &'static str,
    /// The pod it acted on (none for `endpoints`).
    pub pod: Option<String>,
    pub detail: String,
}

impl Happened {
    /// `t=1.00s added server-5d9c7-x7k2 (...)`, as printed in the run.
    pub fn line(&self) -> String {
        let pod = self
            .pod
            .as_deref()
            .map(|p| format!(" {p}"))
            .unwrap_or_default();
        format!(
            "t={:.2}s {}{pod} ({}; done at t={:.2}s)",
            self.t_ms as f64 / 1000.0,
            self.what,
            self.detail,
            self.done_ms as f64 / 1000.0
        )
    }

    pub fn at(&self) -> Duration {
        Duration::from_millis(self.t_ms)
    }

    pub fn done(&self) -> Duration {
        Duration::from_millis(self.done_ms)
    }
}

/// Applies `event` to `mesh`; `calls` are the client's records so far (to
/// find the pod it is talking to), `start` the client's start.
pub fn apply(
    event: &Event,
    mesh: &mut Mesh,
    calls: &[Record],
    start: Instant,
) -> anyhow::Result<Happened> {
    // A kill's or drain's time is when it strikes, after finding its pod.
    let mut began = start.elapsed();
    let (what, pod, detail) = match event.action {
        Action::AddPod => {
            let i = mesh.add_pod().context(event.action.verb())?;
            let listed = mesh.listed_count();
            (
                "added",
                Some(mesh.pods()[i].name.clone()),
                format!(
                    "{}; once ready, published to {}: {listed} pods",
                    mesh.addrs.pod_ip(i),
                    mesh.endpoint_consumers()
                ),
            )
        }
        Action::Kill(which) | Action::Freeze(which) | Action::Drain(which) => {
            let (i, name) = pick(mesh, which, calls)?;
            began = start.elapsed();
            let (what, detail) = strike(mesh, event.action, i)
                .with_context(|| format!("{} {name}", event.action.verb()))?;
            (what, Some(name), detail)
        }
        Action::Publish => {
            // A lost node's kubelet reports nothing: the node controller
            // marks the node, then its pods, not ready.
            let reporter = if mesh.pods().iter().any(|p| p.state == PodState::Frozen) {
                "the node controller marked the lost node's pod not ready"
            } else {
                "the kubelet reported the loss"
            };
            mesh.publish().context(event.action.verb())?;
            (
                "endpoints",
                None,
                format!(
                    "{reporter}: {} pods published to {}",
                    mesh.listed_count(),
                    mesh.endpoint_consumers()
                ),
            )
        }
    };
    Ok(Happened {
        t_ms: began.as_millis() as u64,
        done_ms: start.elapsed().as_millis() as u64,
        what,
        pod,
        detail,
    })
}

/// A kill, freeze or drain of pod `i`: what it printed as, and the detail.
fn strike(mesh: &mut Mesh, action: Action, i: usize) -> anyhow::Result<(&'static str, String)> {
    let containers = mesh.pods()[i].containers();
    Ok(match action {
        Action::Kill(_) => {
            mesh.kill_pod(i)?;
            (
                "killed",
                format!("SIGKILL to {containers}; the endpoints still list it"),
            )
        }
        Action::Freeze(_) => {
            mesh.freeze_pod(i)?;
            (
                "frozen",
                format!(
                    "its node is lost: SIGSTOP to {containers}, its connections stay open and silent; the endpoints still list it"
                ),
            )
        }
        Action::Drain(_) => {
            mesh.drain_pod(i)?;
            (
                "drained",
                format!(
                    "SIGTERM: NOT_SERVING, finishing its calls; dropped from {}: {} pods",
                    mesh.endpoint_consumers(),
                    mesh.listed_count()
                ),
            )
        }
        Action::AddPod | Action::Publish => bail!("{} acts on no one pod", action.verb()),
    })
}

/// The pod `which` names: its index and name.
fn pick(mesh: &Mesh, which: Which, calls: &[Record]) -> anyhow::Result<(usize, String)> {
    match which {
        Which::Serving => {
            let name = calls
                .iter()
                .rev()
                .find_map(|r| r.call.outcome.as_ref().ok())
                .context("no call has been answered yet, so no pod is serving the client")?;
            let i = mesh
                .pod_index(name)
                .with_context(|| format!("{name} answered, but the mesh runs no such pod"))?;
            Ok((i, name.clone()))
        }
        Which::InFlight => {
            // The request may still be on its way to a server sidecar.
            let deadline = Instant::now() + IN_FLIGHT_WAIT;
            loop {
                // Several busy: a call just ended as the next began; look again.
                match mesh.pods_with_requests_in_flight()?.as_slice() {
                    [i] => return Ok((*i, mesh.pods()[*i].name.clone())),
                    _ if Instant::now() < deadline => std::thread::sleep(IN_FLIGHT_POLL),
                    [] => {
                        bail!("no server sidecar had a request in flight within {IN_FLIGHT_WAIT:?}")
                    }
                    many => bail!(
                        "{} server sidecars still had requests in flight after {IN_FLIGHT_WAIT:?}; the event needs one",
                        many.len()
                    ),
                }
            }
        }
    }
}

/// How long [`Which::InFlight`] waits for the client's call to reach a
/// server sidecar, and how often it looks.
const IN_FLIGHT_WAIT: Duration = Duration::from_millis(500);
const IN_FLIGHT_POLL: Duration = Duration::from_millis(5);
