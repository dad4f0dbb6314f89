//! `mesh up` keeps the mesh running and, on Ctrl-C, leaves nothing behind.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use mesh::topology::Addresses;

#[test]
fn up_serves_until_ctrl_c_then_nothing_is_left_listening() {
    let subnet = common::subnet("up: Ctrl-C");
    let client_sidecar = Addresses { subnet, pods: 2 }.client_sidecar().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["up", "--pods", "2", "--subnet", &subnet.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.starts_with("logs and configs:");
        banner.push(line);
        if done {
            break;
        }
    }
    let banner = banner.join("\n");
    assert!(banner.contains("local mesh up"), "{banner}");
    assert!(
        banner.contains(&format!("grpcurl -plaintext -v {client_sidecar}")),
        "{banner}"
    );

    // The client sidecar really answers: one call through the whole mesh.
    let client = std::path::Path::new(env!("CARGO_BIN_EXE_mesh")).with_file_name("client-grpc");
    let out = Command::new(client)
        .args(["--host", &client_sidecar, "--count", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("#1: server-") && stdout.contains("x-upstream-pod=server-"),
        "{stdout}"
    );

    common::interrupt(&mut child);
    let addrs = Addresses { subnet, pods: 2 };
    common::assert_all_free(&[
        addrs.app_grpc(0),
        addrs.app_http(1),
        addrs.sidecar_inbound(1),
        addrs.service_grpc(),
        addrs.client_sidecar(),
        addrs.client_sidecar_admin(),
    ]);
}
