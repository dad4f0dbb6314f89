//! The servers phase: the echo server's `getInfo` against tonic's
//! hello-world `SayHello`, no Envoy in between.

use std::{path::Path, time::Duration};

use harness::process::{ChildGuard, pinned};

use super::{Bench, Loaded, write_body};
use crate::{
    benchmark::progress,
    echo_server::{check_answers, free_addrs},
    grpc, procfs,
    report::{ServerRow, median, median_ratio},
};

/// The echo server and tonic's hello-world, each loaded directly, in
/// alternating rounds.
pub(crate) fn measure(bench: &Bench, pod: &str) -> anyhow::Result<Vec<ServerRow>> {
    let opts = bench.opts;
    let [hello_addr, echo_addr, echo_http] = free_addrs()?;
    let mut command = pinned(&bench.tools.hello, bench.cores.server);
    command.arg("--addr").arg(hello_addr.to_string());
    let mut hello = ChildGuard::spawn_logged(
        "hello-server",
        &mut command,
        &bench.dir.join("hello-server.log"),
    )?;

    let mut command = pinned(&bench.tools.server, bench.cores.server);
    command
        .arg("--grpc-addr")
        .arg(echo_addr.to_string())
        .arg("--http-addr")
        .arg(echo_http.to_string())
        .arg("--pod-name")
        .arg(pod)
        // Start-up lines only: logging is not what is compared.
        .env("RUST_LOG", "warn");
    let mut echo = ChildGuard::spawn_logged(
        "echo server",
        &mut command,
        &bench.dir.join("echo-server.log"),
    )?;
    hello.wait_listening(hello_addr, Duration::from_secs(20))?;
    echo.wait_listening(echo_addr, Duration::from_secs(20))?;

    let hello_body = grpc::say_hello_body();
    let echo_body = grpc::get_info_body();
    check_answers(
        "tonic hello-world",
        hello_addr,
        grpc::SAY_HELLO_PATH,
        &hello_body,
    )?;
    check_answers("echo server", echo_addr, grpc::GET_INFO_PATH, &echo_body)?;
    let hello_file = write_body(&bench.dir, "sayhello.bin", &hello_body)?;
    let echo_file = write_body(&bench.dir, "getinfo.bin", &echo_body)?;

    struct Target<'a> {
        key: &'static str,
        label: &'static str,
        pid: u32,
        url: String,
        body: &'a Path,
    }
    let targets = [
        Target {
            key: "tonic-hello-world",
            label: "tonic hello-world (SayHello)",
            pid: hello.pid(),
            url: format!("http://{hello_addr}{}", grpc::SAY_HELLO_PATH),
            body: &hello_file,
        },
        Target {
            key: "echo-server",
            label: "echo server (getInfo)",
            pid: echo.pid(),
            url: format!("http://{echo_addr}{}", grpc::GET_INFO_PATH),
            body: &echo_file,
        },
    ];
    let mut loaded: [Vec<Loaded>; 2] = [Vec::new(), Vec::new()];
    for round in 0..opts.rounds {
        for k in 0..2 {
            let i = (k + round) % 2;
            let t = &targets[i];
            let l = bench.loaded(t.pid, &t.url, t.body, &format!("r{}-{}", round + 1, t.key))?;
            progress(&format!(
                "round {}/{}: {:<34} {:>9.0} req/s  {:>5.1} µs CPU/req",
                round + 1,
                opts.rounds,
                t.label,
                l.req_per_sec,
                l.cpu_us_per_request
            ));
            loaded[i].push(l);
        }
    }
    let rps = |i: usize| loaded[i].iter().map(|l| l.req_per_sec).collect::<Vec<_>>();
    let mut rows = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        rows.push(ServerRow {
            key: t.key.into(),
            label: t.label.into(),
            req_per_sec: rps(i),
            req_per_sec_median: median(&rps(i)),
            ratio_vs_hello: median_ratio(&rps(i), &rps(0)),
            cpu_us_per_request_median: median(
                &loaded[i]
                    .iter()
                    .map(|l| l.cpu_us_per_request)
                    .collect::<Vec<_>>(),
            ),
            rss_bytes: procfs::rss_bytes(t.pid)?,
        });
    }
    Ok(rows)
}
