//! The echo server (`server`) as bench runs it: free ports, started pinned,
//! checked to answer before anything is measured through it.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    time::Duration,
};

use anyhow::ensure;
use harness::process::{ChildGuard, pinned};

use harness::http::h2c;

use crate::grpc;

/// `N` distinct ports free right now on 127.0.0.1 (for servers that need
/// theirs given): every listener is held until all are chosen, so two
/// answers cannot be the same port.
pub(crate) fn free_addrs<const N: usize>() -> anyhow::Result<[SocketAddr; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut addrs = [SocketAddr::from(([127, 0, 0, 1], 0)); N];
    for (addr, listener) in addrs.iter_mut().zip(&listeners) {
        *addr = listener.local_addr()?;
    }
    Ok(addrs)
}

/// The release echo server (`server`), answering `getInfo` as `pod`, its
/// log in `dir/<name>.log`; returns once it has answered one call.
pub fn start(
    server: &Path,
    cpu: Option<usize>,
    dir: &Path,
    pod: &str,
    name: &str,
) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    let [grpc_addr, http_addr] = free_addrs()?;
    let mut command = pinned(server, cpu);
    command
        .arg("--grpc-addr")
        .arg(grpc_addr.to_string())
        .arg("--http-addr")
        .arg(http_addr.to_string())
        .arg("--pod-name")
        .arg(pod)
        // Start-up lines only: logging is not what is compared.
        .env("RUST_LOG", "warn");
    let mut echo = ChildGuard::spawn_logged(name, &mut command, &dir.join(format!("{name}.log")))?;
    echo.wait_listening(grpc_addr, Duration::from_secs(20))?;
    check_answers(name, grpc_addr, grpc::GET_INFO_PATH, &grpc::get_info_body())?;
    Ok((echo, grpc_addr))
}

/// One call to `path` on `addr` answers HTTP 200 with grpc-status 0.
pub(crate) fn check_answers(
    name: &str,
    addr: SocketAddr,
    path: &str,
    body: &[u8],
) -> anyhow::Result<()> {
    let (answers, _) = h2c::probe(addr, path, body, 1)?;
    let a = &answers[0];
    ensure!(
        a.status == 200 && a.grpc_status.as_deref() == Some("0"),
        "{name} at {addr}{path}: HTTP {} grpc-status {:?}",
        a.status,
        a.grpc_status
    );
    Ok(())
}
