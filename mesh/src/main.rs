use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use mesh::{
    scenario::{self, Options, SCENARIOS},
    topology::{Addresses, Artifacts, Layout, Mesh},
};
use sidecar::manifests;

/// The local mesh: real server pods, real Envoy sidecars with upstream-tagger,
/// an L4 Service and the real clients on loopback — the Kubernetes + Istio
/// experiments without a cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Calls per scenario (the reuse scenario makes enough to roll connections over).
    #[arg(long, global = true, default_value_t = 12)]
    calls: u64,
    /// Server pods.
    #[arg(long, global = true, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=50))]
    pods: u8,
    /// Print one JSON document with every scenario's result instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Print every client line (long scenarios are trimmed by default).
    #[arg(long, global = true)]
    all_lines: bool,
    /// Loopback "pod network": addresses are 127.<subnet>.x.y.
    #[arg(long, global = true, default_value_t = mesh::topology::DEFAULT_SUBNET, value_parser = clap::value_parser!(u8).range(1..=254))]
    subnet: u8,
    /// Our manifests (default: ./istio, else the checkout's).
    #[arg(long, global = true)]
    istio_dir: Option<PathBuf>,
    /// Envoy binary (default: $ENVOY, else .venv/bin/envoy).
    #[arg(long, global = true)]
    envoy: Option<PathBuf>,
    /// The filter module (default: dist/upstream_tagger.wasm).
    #[arg(long, global = true)]
    wasm: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run every scenario; exit non-zero if any expectation fails.
    Demo,
    /// Run one scenario by name or number (see `mesh list`).
    Run { scenario: String },
    /// List the scenarios.
    List,
    /// Start the mesh (L4 Service, sidecars with a DestinationRule) and keep it
    /// running until Ctrl-C, printing addresses for grpcurl and the clients.
    Up {
        /// DestinationRule experiment for the sidecars: none, or a file name
        /// (without .yaml) in <istio-dir>/destinationrules/.
        #[arg(long, default_value = "none")]
        experiment: String,
    },
    /// Write the sidecars' Envoy resources for one experiment as JSON (the
    /// local mesh's side of `make istio-check`); starts nothing.
    Render {
        /// none, or a file name (without .yaml) in <istio-dir>/destinationrules/.
        #[arg(long)]
        experiment: String,
        /// Where to write the JSON.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    harness::process::stop_children_on_signals();
    let json = cli.json;
    match run_command(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mesh: {e:#}");
            if json {
                // Scripts reading stdout get an answer too, not silence.
                println!(
                    "{}",
                    serde_json::json!({"passed": false, "error": format!("{e:#}")})
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// The subcommand `cli` names, to its exit code.
fn run_command(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Cmd::List = cli.command {
        for s in SCENARIOS {
            println!("{:>2}. {:<14} {}", s.number, s.name, s.title);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let istio_dir = manifests::istio_dir(cli.istio_dir.as_deref());
    if let Cmd::Render { experiment, out } = &cli.command {
        return render(&istio_dir, experiment, cli.pods.into(), out);
    }
    let plugin = scenario::preflight(&istio_dir)?;
    let artifacts = Artifacts::locate(cli.envoy.clone(), cli.wasm.clone())?;
    let options = Options {
        calls: cli.calls,
        pods: cli.pods.into(),
        subnet: cli.subnet,
        all_lines: cli.all_lines,
        quiet: cli.json,
        seed: mesh::topology::name_seed(),
    };
    let selected: Vec<_> = match &cli.command {
        Cmd::Demo => SCENARIOS.iter().collect(),
        Cmd::Run { scenario } => vec![scenario::find(scenario).ok_or_else(|| {
            anyhow::anyhow!("unknown scenario {scenario:?}; `mesh list` shows them")
        })?],
        Cmd::Up { experiment } => return up(&artifacts, &istio_dir, &plugin, &options, experiment),
        Cmd::List | Cmd::Render { .. } => unreachable!("handled above"),
    };

    let mut outcomes = Vec::new();
    for s in selected {
        outcomes.push(scenario::run_scenario(
            s, &options, &artifacts, &istio_dir, &plugin,
        )?);
    }
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| o.scenario)
        .collect();
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "passed": failed.is_empty(),
                "scenarios": outcomes,
            }))?
        );
    } else {
        println!("\n== verdict");
        for o in &outcomes {
            println!(
                "   [{}] {}. {}",
                if o.passed { "PASS" } else { "FAIL" },
                o.number,
                o.title
            );
        }
        if failed.is_empty() {
            println!(
                "   every expectation held (logs and rendered Envoy configs: {})",
                artifacts.run_dir.display()
            );
        } else {
            println!(
                "   failed: {} — see the logs printed above",
                failed.join(", ")
            );
        }
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn render(
    istio_dir: &std::path::Path,
    experiment: &str,
    pods: usize,
    out: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let mut notes = Vec::new();
    let rendering = mesh::render::render(istio_dir, experiment, pods, &mut notes)?;
    for note in notes {
        eprintln!("note: {note}");
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(out, serde_json::to_vec_pretty(&rendering)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("mesh: wrote {} ({experiment})", out.display());
    Ok(ExitCode::SUCCESS)
}

fn up(
    artifacts: &Artifacts,
    istio_dir: &std::path::Path,
    plugin: &sidecar::wasm_plugin::WasmPluginSpec,
    options: &Options,
    experiment: &str,
) -> anyhow::Result<ExitCode> {
    let (policies, notes) = manifests::experiment(istio_dir, experiment)?;
    for note in notes {
        eprintln!("note: {note}");
    }
    let addrs = Addresses {
        subnet: options.subnet,
        pods: options.pods,
    };
    let layout = Layout {
        l4_service: true,
        sidecars: Some(policies),
        server_args: Vec::new(),
        dns: true,
    };
    let mesh = Mesh::start(artifacts, addrs, &layout, plugin, "up", options.seed)?;
    println!("local mesh up (DestinationRule: {experiment}); Ctrl-C stops everything\n");
    for (i, pod) in mesh.pod_names().iter().enumerate() {
        println!(
            "pod {pod}: app gRPC {} HTTP {}; sidecar inbound gRPC {} HTTP {} admin http://{}",
            addrs.app_grpc(i),
            addrs.app_http(i),
            addrs.sidecar_inbound(i),
            addrs.sidecar_inbound_http(i),
            addrs.sidecar_admin(i)
        );
    }
    println!(
        "Service (L4, kube-proxy): gRPC {} HTTP {}",
        addrs.service_grpc(),
        addrs.service_http()
    );
    println!(
        "client sidecar (L7, outbound): gRPC {} HTTP {} admin http://{}",
        addrs.client_sidecar(),
        addrs.client_sidecar_http(),
        addrs.client_sidecar_admin()
    );
    println!(
        "cluster DNS: {} answers {} with the pods' addresses",
        addrs.dns(),
        mesh::topology::HEADLESS_HOST
    );
    println!("\ntry:");
    println!(
        "  grpcurl -plaintext -v {} api.protobuf.pod/getInfo",
        addrs.client_sidecar()
    );
    println!(
        "  {} --host {} --count 6",
        artifacts.bin("client-grpc").display(),
        addrs.client_sidecar()
    );
    println!(
        "  {} --host {} --count 6",
        artifacts.bin("client-grpc").display(),
        addrs.service_grpc()
    );
    println!(
        "  {} --mode round-robin --host {}:{} --dns-server {} --count 6",
        artifacts.bin("client-grpc").display(),
        mesh::topology::HEADLESS_HOST,
        mesh::topology::GRPC_PORT,
        addrs.dns()
    );
    println!(
        "  {} --url http://{}/ --count 6",
        artifacts.bin("client-http").display(),
        addrs.client_sidecar_http()
    );
    println!(
        "  curl -s http://{}/stats | grep upstream_tagger",
        addrs.sidecar_admin(0)
    );
    println!("logs and configs: {}", mesh.dir.display());
    loop {
        std::thread::park();
    }
}
