"""istio/wasmplugin.yaml and the server's stats annotation, loaded into real Envoy
the way istiod + istio-agent would (docs/istio-translation.md, WasmPlugin):
the filter accepts our pluginConfig, it is exactly the defaults, the built
binaries get tagged responses through it, and the proxyStatsMatcher prefix
lets the filter's metrics through.
"""

import json
import re
import signal
import subprocess
import time
import urllib.request

import pytest
import yaml

from manifest_lib import ISTIO, OUT, ROOT, VENV_BIN, Server, extract_binary, find, load_yaml

POD = "server-5d8f9c-x7k2p"
FAILURE_POLICY = {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN", "FAIL_RELOAD": "FAIL_RELOAD"}


def wasm_filter(plugin: dict, module: str, namespace: str = "default", config=True) -> dict:
    """The HTTP filter a sidecar holds for PLUGIN (config=False: pluginConfig unset)."""
    spec = plugin["spec"]
    # Istio >= 1.30 translates every WasmPlugin into a TrafficExtension
    # (ISTIO-ENVOY.md §1); the Rust harness renders the same names.
    name = f"{namespace}.{plugin['metadata']['name']}~istio-translated-wasmplugin"
    vm = {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": module}}}
    host_env = [e["name"] for e in spec.get("vmConfig", {}).get("env", []) if e.get("valueFrom") == "HOST"]
    if host_env:
        vm["environment_variables"] = {"host_env_keys": host_env}
    value = json.dumps(spec["pluginConfig"], separators=(",", ":")) if config and "pluginConfig" in spec else ""
    return {
        "name": f"extensions.istio.io/trafficextension/{name}",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": spec.get("pluginName", ""),
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": value},
                "vm_config": vm,
                "failure_policy": FAILURE_POLICY[spec.get("failStrategy", "FAIL_CLOSE")],
            },
        },
    }


def inbound_listener(name: str, wasm: dict, cluster: str) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": name,
                            "codec_type": "AUTO",
                            "http2_protocol_options": {},
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "inbound",
                                        "domains": ["*"],
                                        "routes": [
                                            {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}
                                        ],
                                    }
                                ]
                            },
                            "http_filters": [
                                wasm,
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                    },
                                },
                            ],
                        },
                    }
                ]
            }
        ],
    }


def stats_matcher(server_deploy: dict) -> dict:
    """proxy.istio.io/config proxyStatsMatcher → Envoy stats_matcher (our inclusions only)."""
    config = yaml.safe_load(server_deploy["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"])
    matcher = config["proxyStatsMatcher"]
    patterns = [{"prefix": p} for p in matcher.get("inclusionPrefixes", [])]
    patterns += [{"suffix": s} for s in matcher.get("inclusionSuffixes", [])]
    patterns += [{"safe_regex": {"regex": r}} for r in matcher.get("inclusionRegexps", [])]
    return {"inclusion_list": {"patterns": patterns}}


class Envoy:
    """Real Envoy (.venv, `make envoy`) on CONFIG, one worker, logs under target/."""

    def __init__(self, config: dict, workdir):
        exe = VENV_BIN / "envoy"
        assert exe.exists(), f"{exe} missing: run `make envoy`"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "envoy.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.log_path = workdir / "envoy.log"
        self.log_path.unlink(missing_ok=True)  # Envoy appends: keep only this run
        admin_path = workdir / "admin.addr"
        admin_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                str(exe),
                "-c",
                str(self.config_path),
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-path",
                str(self.log_path),
                "--admin-address-path",
                str(admin_path),
                "-l",
                "info",
            ],
            env={"POD_NAME": POD, "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready(admin_path, deadline=time.monotonic() + 30)
        except BaseException:
            self.stop()  # never leave it running behind a failed start
            raise

    def _wait_ready(self, admin_path, deadline):
        while True:
            assert self.proc.poll() is None, f"Envoy exited ({self.proc.returncode}); log {self.log_path}"
            assert time.monotonic() < deadline, f"Envoy not ready in 30s; log {self.log_path}"
            if admin_path.exists() and admin_path.read_text().strip():
                self.admin = admin_path.read_text().strip()
                try:
                    if self.get("/ready").strip() == "LIVE":
                        return
                except OSError:
                    pass
            time.sleep(0.1)

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as r:
            return r.read().decode()

    def listener(self, name: str) -> str:
        for status in json.loads(self.get("/listeners?format=json"))["listener_statuses"]:
            if status["name"] == name:
                a = status["local_address"]["socket_address"]
                return f"{a['address']}:{a['port_value']}"
        raise KeyError(name)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def mesh(images, base_docs, tmp_path_factory):
    """Server binary from the image + an Istio-shaped inbound sidecar for it."""
    bin_dir = tmp_path_factory.mktemp("bin")
    server_exe = extract_binary(images, "server", bin_dir)
    client_exe = extract_binary(images, "client-grpc", bin_dir)
    server = Server(
        server_exe,
        [f"--pod-name={POD}", "--grpc-addr=127.0.0.1:0", "--http-addr=127.0.0.1:0"],
        {},
        "server-behind-envoy",
    )
    envoy = None
    try:
        grpc_host, grpc_port = server.grpc_addr.split(":")
        (plugin,) = load_yaml(ISTIO / "wasmplugin.yaml")
        module = str(ROOT / "dist" / "upstream_tagger.wasm")
        cluster = "inbound|30051||"
        config = {
            "node": {
                "id": f"sidecar~127.0.0.1~{POD}.default~default.svc.cluster.local",
                "cluster": "server.default",
                "metadata": {"NAME": POD, "NAMESPACE": "default"},
            },
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "stats_config": {"stats_matcher": stats_matcher(find(base_docs, "Deployment", "server"))},
            "static_resources": {
                "listeners": [
                    inbound_listener("ours", wasm_filter(plugin, module), cluster),
                    inbound_listener("defaults", wasm_filter(plugin, module, config=False), cluster),
                ],
                "clusters": [
                    {
                        "name": cluster,
                        "type": "STATIC",
                        "connect_timeout": "10s",
                        "typed_extension_protocol_options": {
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                                "explicit_http_config": {"http2_protocol_options": {}},
                            }
                        },
                        "load_assignment": {
                            "cluster_name": cluster,
                            "endpoints": [
                                {
                                    "lb_endpoints": [
                                        {
                                            "endpoint": {
                                                "address": {
                                                    "socket_address": {
                                                        "address": grpc_host,
                                                        "port_value": int(grpc_port),
                                                    }
                                                }
                                            }
                                        }
                                    ]
                                }
                            ],
                        },
                    }
                ],
            },
        }
        envoy = Envoy(config, OUT / "envoy-wasmplugin")
        yield envoy, client_exe
    finally:
        if envoy:
            envoy.stop()
        server.stop()


def _started_lines(log: str) -> list[str]:
    return re.findall(r"upstream-tagger: started: (.*)", log)


def test_filter_accepts_our_plugin_config_and_it_equals_the_defaults(mesh):
    envoy, _ = mesh
    deadline = time.monotonic() + 10
    while len(_started_lines(envoy.log())) < 2:
        assert time.monotonic() < deadline, f"start-up lines missing; log {envoy.log_path}"
        time.sleep(0.1)
    # One root context per listener: ours (pluginConfig from the manifest) and one
    # with pluginConfig unset. Same effective config = the manifest spells out the defaults.
    distinct = sorted(set(_started_lines(envoy.log())))
    assert len(distinct) == 1, distinct
    assert f'pod="{POD}" (from ' in distinct[0]
    assert "invalid pluginConfig" not in envoy.log()
    assert not [line for line in envoy.log().splitlines() if "[critical]" in line or "[error]" in line]


def test_grpc_responses_through_the_sidecar_carry_the_tags(mesh):
    envoy, client = mesh
    out = subprocess.run(
        [client, f"--host={envoy.listener('ours')}", "--count=3", "--interval=10ms"],
        capture_output=True,
        text=True,
        timeout=30,
        env={},
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("#")]
    assert len(lines) == 3, out.stdout
    ids = set()
    for n, line in enumerate(lines, 1):
        assert line.startswith(f"#{n}: {POD} "), line
        assert f"x-upstream-pod={POD}" in line, line
        assert f"x-upstream-connection-requests={n}" in line, line
        ids.add(re.search(r"x-upstream-connection-id=(\d+)", line).group(1))
    assert len(ids) == 1  # one channel, one connection


def test_proxy_stats_matcher_exposes_the_filter_metrics(mesh):
    envoy, client = mesh
    subprocess.run([client, f"--host={envoy.listener('ours')}", "--count=1"], capture_output=True, timeout=30, env={})
    # The filter batches counter updates and flushes them on its 1s tick.
    deadline = time.monotonic() + 10
    while True:
        stats = dict(line.split(": ", 1) for line in envoy.get("/stats").splitlines() if ": " in line)
        assert "wasmcustom.upstream_tagger_requests_tagged" in stats, sorted(stats)[:20]
        if int(stats["wasmcustom.upstream_tagger_requests_tagged"]) >= 1:
            break
        assert time.monotonic() < deadline, "upstream_tagger_requests_tagged stayed 0 for 10s"
        time.sleep(0.2)
    # The matcher is really in force: stats outside the inclusion list are gone.
    assert not any(k.startswith("http.ours.") for k in stats), [k for k in stats if k.startswith("http.")][:5]
    assert "upstream_tagger_requests_tagged" in envoy.get("/stats/prometheus")
