//! Pods coming and going never hang a run or leave a process behind: an
//! event that cannot be applied fails the scenario with its reason, the
//! cluster DNS that cannot bind is a clear error, and Ctrl-C in the middle
//! of a scale-out stops the pod added during the run too, and so does a
//! panic (the unwinding drops the mesh).

use std::{
    io::{BufRead as _, BufReader},
    net::{TcpListener, UdpSocket},
    panic::{AssertUnwindSafe, catch_unwind},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;

use common::{assert_all_free, interrupt, options, subnet};
use mesh::{
    scenario,
    topology::{Addresses, Artifacts, Layout, Mesh},
};
use sidecar::{SidecarPolicies, manifests};

/// Our processes that name an address of `subnet` (apps) or its run folder
/// (Envoys) on their command lines.
fn processes_on(subnet: u8) -> Vec<String> {
    let needles = [format!("127.{subnet}."), format!(".subnet-{subnet}/")];
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| needles.iter().any(|n| c.contains(n)) && !c.contains("churn"))
        .collect()
}

/// No process of ours is left on `subnet` (within 5 s).
fn assert_no_process_on(subnet: u8) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_on(subnet);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_event_that_cannot_be_applied_fails_the_scenario_with_the_reason() {
    let subnet = subnet("churn: an event that cannot be applied");
    let addrs = Addresses { subnet, pods: 3 };
    // Something else holds the address the 4th pod would get.
    let _squatter = TcpListener::bind(addrs.app_grpc(3)).unwrap();
    let istio_dir = manifests::istio_dir(None);
    let plugin = scenario::preflight(&istio_dir).unwrap();
    let artifacts = Artifacts::locate(None, None).expect("make envoy wasm; cargo build --bins");
    let s = scenario::find("scale-out-mesh").unwrap();
    let started = Instant::now();
    let outcome = scenario::run_scenario(s, &options(subnet), &artifacts, &istio_dir, &plugin)
        .expect("the run itself completes");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(!outcome.passed);
    let problems = outcome.problems.join("\n");
    let taken = addrs.app_grpc(3).to_string();
    for expected in [
        "the event at t=1.00s failed",
        "adding a pod",
        taken.as_str(),
        "not free",
    ] {
        assert!(
            problems.contains(expected),
            "{expected:?} missing from:\n{problems}"
        );
    }
    // The client ran to its end on the pods that were there.
    assert_eq!(outcome.summary.errors, 0, "{:?}", outcome.summary);
    assert_all_free(&[
        addrs.app_grpc(0),
        addrs.sidecar_inbound(2),
        addrs.client_sidecar(),
    ]);
    assert_no_process_on(subnet);
}

#[test]
fn a_cluster_dns_that_cannot_bind_is_a_clear_error_and_nothing_is_left() {
    let subnet = subnet("churn: cluster DNS cannot bind");
    let addrs = Addresses { subnet, pods: 2 };
    let _squatter = UdpSocket::bind(addrs.dns()).unwrap();
    let plugin = scenario::preflight(&manifests::istio_dir(None)).unwrap();
    let artifacts = Artifacts::locate(None, None).expect("make envoy wasm; cargo build --bins");
    let layout = Layout {
        dns: true,
        ..Layout::default()
    };
    let err = Mesh::start(&artifacts, addrs, &layout, &plugin, "dns-taken", 1)
        .err()
        .expect("start fails");
    let err = format!("{err:#}");
    assert!(
        err.contains(&format!("cluster DNS cannot start on {}", addrs.dns()))
            && err.contains("in use"),
        "{err}"
    );
    assert_all_free(&[addrs.app_grpc(0), addrs.app_grpc(1)]);
    assert_no_process_on(subnet);
}

#[test]
fn ctrl_c_during_a_scale_out_stops_every_pod_including_the_added_one() {
    let subnet = subnet("churn: Ctrl-C mid scale-out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["run", "scale-out-mesh", "--subnet", &subnet.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines {
        let line = line.unwrap();
        let added = line.contains("-- t=") && line.contains(" added ");
        seen.push(line);
        if added {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.contains(" added ")),
        "no pod was added:\n{}",
        seen.join("\n")
    );
    interrupt(&mut child);
    let addrs = Addresses { subnet, pods: 4 };
    assert_all_free(&[
        addrs.app_grpc(3),
        addrs.sidecar_inbound(3),
        addrs.sidecar_admin(3),
        addrs.app_grpc(0),
        addrs.client_sidecar(),
    ]);
    assert_no_process_on(subnet);
}

#[test]
fn a_passing_run_with_a_drained_and_an_added_pod_leaves_nothing() {
    let subnet = subnet("churn: a passing run");
    let istio_dir = manifests::istio_dir(None);
    let plugin = scenario::preflight(&istio_dir).unwrap();
    let artifacts = Artifacts::locate(None, None).expect("make envoy wasm; cargo build --bins");
    for name in ["drain-mesh", "scale-out-mesh"] {
        let s = scenario::find(name).unwrap();
        let outcome = scenario::run_scenario(s, &options(subnet), &artifacts, &istio_dir, &plugin)
            .expect("the run completes");
        assert!(outcome.passed, "{name}: {:?}", outcome.problems);
        assert_no_process_on(subnet);
    }
}

#[test]
fn a_panic_after_a_scale_out_stops_every_pod_including_the_added_one() {
    let subnet = subnet("churn: a panic mid-run");
    let plugin = scenario::preflight(&manifests::istio_dir(None)).unwrap();
    let artifacts = Artifacts::locate(None, None).expect("make envoy wasm; cargo build --bins");
    let layout = Layout {
        l4_service: true,
        sidecars: Some(SidecarPolicies::default()),
        dns: true,
        ..Layout::default()
    };
    let addrs = Addresses { subnet, pods: 3 };
    let mut running = Vec::new();
    let unwound = catch_unwind(AssertUnwindSafe(|| {
        let mut mesh = Mesh::start(&artifacts, addrs, &layout, &plugin, "panic", 1).unwrap();
        mesh.add_pod().unwrap();
        mesh.publish().unwrap();
        // A stopped pod too: SIGKILL still ends it.
        mesh.freeze_pod(0).unwrap();
        running = processes_on(subnet);
        panic!("a bug in the middle of a run");
    }));
    let message = unwound.expect_err("the closure panics");
    assert_eq!(
        message.downcast_ref::<&str>(),
        Some(&"a bug in the middle of a run")
    );
    // 4 apps, 4 server sidecars, the client sidecar and the L4 stand-in.
    assert_eq!(running.len(), 10, "running before the panic: {running:#?}");
    let added = Addresses { subnet, pods: 4 };
    assert_all_free(&[
        added.app_grpc(3),
        added.sidecar_inbound(3),
        added.client_sidecar(),
        added.service_grpc(),
    ]);
    assert!(
        UdpSocket::bind(added.dns()).is_ok(),
        "the cluster DNS still holds {}",
        added.dns()
    );
    assert_no_process_on(subnet);
}
