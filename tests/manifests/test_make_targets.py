"""The cluster make targets: what they run, in which order, and how they fail.

No cluster can run here, so `kubectl`/`istioctl` are recording stand-ins that
forward `kubectl kustomize` to the real kubectl; a missing tool and an
unreachable API server are real.
"""

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from manifest_lib import ISTIO, KUBE_VERSIONS, ROOT, Server, find, kubectl, kubernetes_validate, kustomize

FAKE = """#!/bin/sh
# Recording stand-in for {tool}: one line per call in $FAKE_LOG.
echo "{tool} $*" >> "$FAKE_LOG"
case "$1" in
  kustomize) exec "$REAL_KUBECTL" "$@" ;;
  get) [ "$2 $3" = "crd wasmplugins.extensions.istio.io" ] && [ -n "$FAKE_NO_ISTIO" ] && exit 1 ;;
  logs) [ -n "$FAKE_LOGS_FAIL" ] && { echo "Error from server (Forbidden): pods is forbidden" >&2; exit 1; }
        [ -n "$FAKE_LOGS" ] && cat "$FAKE_LOGS" ;;
  kube-inject) shift; while [ $# -gt 0 ]; do case "$1" in -f) in=$2; shift;; -o) out=$2; shift;; esac; shift; done
               { echo "# injected"; cat "$in"; } > "$out" ;;
esac
exit 0
"""


@pytest.fixture
def fakes(tmp_path):
    log = tmp_path / "calls.log"
    log.touch()
    tools = {}
    for tool in ("kubectl", "istioctl", "grpcurl"):
        path = tmp_path / "bin" / tool
        path.parent.mkdir(exist_ok=True)
        path.write_text(FAKE.replace("{tool}", tool))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
        tools[tool] = path
    env = {
        **os.environ,
        "FAKE_LOG": str(log),
        "REAL_KUBECTL": kubectl(),
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
    }
    env.pop("MAKEFLAGS", None)
    env.pop("MAKELEVEL", None)

    def make(*args, **extra_env):
        proc = subprocess.run(
            ["make", "--no-print-directory", "-C", str(ROOT), *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={**env, **extra_env},
        )
        calls = [line.split() for line in log.read_text().splitlines()]
        log.write_text("")
        return proc, calls

    make.tools = tools
    return make


def verbs(calls):
    """Calls minus the read-only probes and rendering, as 'tool verb ...' strings."""
    out = []
    for c in calls:
        if c[1] in ("version", "kustomize") or c[1:3] == ["get", "crd"] or c[1:3] == ["config", "current-context"]:
            continue
        out.append(" ".join(c))
    return out


ROLLOUTS = [
    f"kubectl rollout status -n default deployment/{d} --timeout=180s"
    for d in ("server", "client-grpc", "client-http", "client-grpc-headless")
]
GET_PODS = "kubectl get pods -n default -l app in (server,client-grpc,client-http,client-grpc-headless) -o wide"


def test_kube_deploy_applies_then_waits_then_lists(fakes):
    proc, calls = fakes("kube-deploy", "HUB=registry.example.com/team", "TAG=v9")
    assert proc.returncode == 0, proc.stderr
    assert verbs(calls) == ["kubectl apply -n default -f target/kube/deploy.yaml", *ROLLOUTS, GET_PODS]
    # The cluster was checked before anything was applied.
    assert calls[0][1] == "version"
    # Applied: istio/base, with only the images moved to $(HUB)/$(TAG).
    applied = list(yaml.safe_load_all((ROOT / "target/kube/deploy.yaml").read_text()))
    base = kustomize(ISTIO / "base")
    assert len(applied) == len(base)
    for got, want in zip(applied, base):
        if got["kind"] == "Deployment":
            for c in want["spec"]["template"]["spec"]["containers"]:
                c["image"] = (
                    c["image"].replace("localhost/grpc-lb/", "registry.example.com/team/").replace(":latest", ":v9")
                )
        assert got == want
    images = [
        c["image"] for d in applied if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert sorted(images) == sorted(
        f"registry.example.com/team/{n}:v9" for n in ("server", "client-grpc", "client-grpc", "client-http")
    )


def test_istio_inject_injects_applies_routes_then_waits(fakes):
    proc, calls = fakes("istio-inject", "HUB=registry.example.com/team", "TAG=v9")
    assert proc.returncode == 0, proc.stderr
    assert verbs(calls) == [
        "istioctl kube-inject -f target/kube/deploy.yaml -o target/kube/deploy-injected.yaml",
        "kubectl apply -n default -f target/kube/deploy-injected.yaml",
        "kubectl apply -n default -f istio/virtualservice.yaml -f istio/gateway.yaml -f istio/sidecar.yaml",
        *ROLLOUTS,
        GET_PODS,
    ]
    assert "istio-injection=enabled" in proc.stdout  # the label way is shown too


@pytest.mark.parametrize(
    "extra,url",
    [
        ([], "oci://registry.example.com/team/upstream-tagger:v9"),
        (["WASM_URL=http://wasm.example.com/upstream_tagger.wasm"], "http://wasm.example.com/upstream_tagger.wasm"),
    ],
)
def test_wasm_deploy_applies_the_plugin_with_the_chosen_url(fakes, extra, url):
    proc, calls = fakes("wasm-deploy", "HUB=registry.example.com/team", "TAG=v9", *extra)
    assert proc.returncode == 0, proc.stderr
    assert verbs(calls) == ["kubectl apply -n default -f target/kube/wasmplugin.yaml"]
    (applied,) = yaml.safe_load_all((ROOT / "target/kube/wasmplugin.yaml").read_text())
    (source,) = yaml.safe_load_all((ISTIO / "wasmplugin.yaml").read_text())
    assert applied["spec"].pop("url") == url
    source["spec"].pop("url")
    assert applied == source


@pytest.mark.parametrize(
    "target,expected",
    [
        ("dr-reuse", "kubectl apply -n default -f istio/destinationrules/reuse.yaml"),
        ("dr-one-per-conn", "kubectl apply -n default -f istio/destinationrules/one-per-conn.yaml"),
        ("dr-tight", "kubectl apply -n default -f istio/destinationrules/tight.yaml"),
        ("dr-delete", "kubectl delete -n default destinationrule server --ignore-not-found"),
    ],
)
def test_destination_rule_targets(fakes, target, expected):
    proc, calls = fakes(target, "NAMESPACE=default")
    assert proc.returncode == 0, proc.stderr
    assert verbs(calls) == [expected]


def test_logs_shows_every_client(fakes):
    proc, calls = fakes("logs")
    assert proc.returncode == 0, proc.stderr
    assert verbs(calls) == [
        f"kubectl logs -n default deployment/{d} -c {d} --tail=20"
        for d in ("client-grpc", "client-http", "client-grpc-headless")
    ]


def test_kube_delete_removes_workloads_and_istio_objects(fakes):
    proc, calls = fakes("kube-delete")
    assert proc.returncode == 0, proc.stderr
    assert verbs(calls) == [
        "kubectl delete -n default --ignore-not-found -k istio/base",
        "kubectl delete -n default --ignore-not-found -f istio/virtualservice.yaml -f istio/gateway.yaml -f istio/sidecar.yaml -f istio/wasmplugin.yaml",
        "kubectl delete -n default --ignore-not-found destinationrule server",
    ]


def test_grpcurl_calls_get_info_through_the_given_ingress(fakes):
    proc, calls = fakes("grpcurl", "INGRESS=203.0.113.7:80")
    assert proc.returncode == 0, proc.stderr
    assert "+ grpcurl -plaintext -v 203.0.113.7:80 api.protobuf.pod/getInfo" in proc.stdout
    assert verbs(calls) == ["grpcurl -plaintext -v 203.0.113.7:80 api.protobuf.pod/getInfo"]


# ---- clear failures -------------------------------------------------------------


def _one_error_line(proc, *fragments):
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert " — fix: " in errors[0]


@pytest.mark.parametrize("target", ["kube-deploy", "kube-delete", "logs", "wasm-deploy", "dr-reuse", "kube-manifests"])
def test_missing_kubectl_is_one_clear_line(fakes, target):
    proc, calls = fakes(target, "KUBECTL=/nonexistent/kubectl")
    _one_error_line(proc, "kubectl not found")
    assert calls == []


@pytest.mark.parametrize("target", ["kube-deploy", "istio-inject", "wasm-deploy", "dr-tight", "logs", "kube-delete"])
def test_unreachable_cluster_is_one_clear_line(fakes, tmp_path, target):
    # A real kubectl against an API server address nothing listens on.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "nowhere",
                "clusters": [{"name": "nowhere", "cluster": {"server": "https://127.0.0.1:9"}}],
                "contexts": [{"name": "nowhere", "context": {"cluster": "nowhere", "user": "nobody"}}],
                "users": [{"name": "nobody", "user": {"token": "x"}}],
            }
        )
    )
    proc, calls = fakes(target, f"KUBECTL={kubectl()}", KUBECONFIG=str(kubeconfig))
    _one_error_line(proc, "no Kubernetes cluster answers", "context: nowhere")
    assert calls == []  # istioctl was never reached either


@pytest.mark.parametrize("target", ["wasm-deploy", "dr-reuse", "dr-delete", "istio-inject"])
def test_cluster_without_istio_is_one_clear_line(fakes, target):
    proc, calls = fakes(target, FAKE_NO_ISTIO="1")
    _one_error_line(proc, "Istio is not installed", "istioctl install")
    assert all(c[1] in ("version", "get", "kustomize") for c in calls), calls


def test_missing_istioctl_is_one_clear_line(fakes):
    proc, calls = fakes("istio-inject", "ISTIOCTL=/nonexistent/istioctl")
    _one_error_line(proc, "istioctl not found")
    assert calls == []


def test_missing_grpcurl_prints_the_command_and_the_fix(fakes):
    proc, _ = fakes("grpcurl", "INGRESS=203.0.113.7:80", "GRPCURL=/nonexistent/grpcurl")
    assert "+ grpcurl -plaintext -v 203.0.113.7:80 api.protobuf.pod/getInfo" in proc.stdout
    _one_error_line(proc, "grpcurl not found")


def test_push_refuses_local_only_names(fakes):
    proc, _ = fakes("push", "BUILDER=buildah", "HUB=localhost/grpc-lb")
    _one_error_line(proc, "HUB=localhost/grpc-lb names local images only")


def test_unknown_builder_is_one_clear_line(fakes):
    proc, _ = fakes("images", "BUILDER=podmanx")
    _one_error_line(proc, "BUILDER=podmanx is not supported")


# ---- pods come and go: max-age, scale, kill-pod ---------------------------------

SERVER_ROLLOUT = "kubectl rollout status -n default deployment/server --timeout=180s"
MAX_AGE_PATCH = ROOT / "target/kube/max-age-patch.json"


@pytest.fixture(scope="module")
def server_bin():
    """The real server binary (built here if missing or stale: cargo is quick when it is not)."""
    cargo = os.environ.get("CARGO", "cargo")
    build = [cargo, "build", "-q", "-p", "server", "--bin", "server"]
    proc = subprocess.run(build, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return str(target / "debug" / "server")


def _server_container(deploy):
    (container,) = [c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "server"]
    return container


def _apply_patch_locally(deploy, tmp_path):
    """What the API server does with the patch max-age sent: kubectl's own strategic merge, offline."""
    source = tmp_path / "server-deployment.yaml"
    source.write_text(yaml.safe_dump(deploy))
    proc = subprocess.run(
        [kubectl(), "patch", "--local", "-f", str(source), "--type=strategic"]
        + ["--patch-file", str(MAX_AGE_PATCH), "-o", "yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": str(tmp_path / "no-kubeconfig")},
    )
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


@pytest.mark.parametrize(
    "settings,added,startup",
    [
        (
            ["AGE=30s", "GRACE=10s"],
            ["--max-connection-age=30s", "--max-connection-age-grace=10s"],
            "gRPC connections: GOAWAY at age 30s, closed 10s later",
        ),
        (
            ["AGE=1m30s"],
            ["--max-connection-age=1m30s"],
            "gRPC connections: GOAWAY at age 1m 30s, calls then run as long as they take",
        ),
        (["AGE=off"], [], "gRPC connections: no max age"),
    ],
)
def test_max_age_patches_the_server_args_then_waits(fakes, tmp_path, server_bin, settings, added, startup):
    MAX_AGE_PATCH.unlink(missing_ok=True)
    proc, calls = fakes("max-age", *settings)
    assert proc.returncode == 0, proc.stderr
    assert verbs(calls) == [
        "kubectl patch -n default deployment/server --type=strategic --patch-file target/kube/max-age-patch.json",
        SERVER_ROLLOUT,
    ]
    assert calls[0][1] == "version"  # the cluster was checked first
    assert "watch: " in proc.stdout and "expect: " in proc.stdout

    # The Deployment the patch yields: istio/base's, with only the server
    # args changed (AGE=off: back to exactly istio/base's), and valid.
    base = find(kustomize(ISTIO / "base"), "Deployment", "server")
    patched = _apply_patch_locally(base, tmp_path)
    base_args = _server_container(base)["args"]
    assert _server_container(patched)["args"] == base_args + added
    _server_container(patched)["args"] = base_args
    assert patched == base
    _server_container(patched)["args"] = base_args + added
    validated = kubernetes_validate([patched], KUBE_VERSIONS[-1], f"max-age-{settings[0]}")
    assert validated.returncode == 0, validated.stdout + validated.stderr

    # The server binary takes those args and means what the target says
    # (listening on loopback ephemeral ports instead of the pod's).
    local = [
        {"--grpc-addr": "--grpc-addr=127.0.0.1:0", "--http-addr": "--http-addr=127.0.0.1:0"}.get(a.split("=")[0], a)
        for a in base_args + added
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAX_CONNECTION_AGE")}
    with Server(server_bin, [*local, "--pod-name=p"], {**env, "RUST_LOG": "info"}, f"max-age-{settings[0]}") as server:
        assert startup in server.log(), server.log()


def test_the_commented_max_age_example_in_istio_base_is_what_max_age_sets(fakes):
    # server.yaml shows the flags commented out; uncommented they must be
    # the args `make max-age AGE=30s GRACE=10s` adds.
    commented = re.findall(r"^\s*# - (--max-connection-age\S*)$", (ISTIO / "base/server.yaml").read_text(), re.M)
    proc, _ = fakes("max-age", "AGE=30s", "GRACE=10s")
    assert proc.returncode == 0, proc.stderr
    patch = json.loads(MAX_AGE_PATCH.read_text())
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert commented == [a for a in container["args"] if a.startswith("--max-connection-age")]
    assert commented == ["--max-connection-age=30s", "--max-connection-age-grace=10s"]


@pytest.mark.parametrize(
    "settings,complaint",
    [
        ([], "AGE is missing"),
        (["AGE=0"], "AGE=0 is not a duration above 0"),
        (["AGE=0s"], "AGE=0s is not a duration above 0"),
        (["AGE=30"], "AGE=30 is not a duration above 0"),
        (["AGE=soon"], "AGE=soon is not a duration above 0"),
        (["GRACE=10s"], "GRACE=10s needs AGE"),
        (["AGE=off", "GRACE=10s"], "GRACE=10s with AGE=off"),
        (["AGE=30s", "GRACE=0"], "GRACE=0 is not a duration above 0"),
        (["AGE=30s", "GRACE=1x"], "GRACE=1x is not a duration above 0"),
    ],
)
def test_max_age_rejects_bad_durations_before_kubectl(fakes, settings, complaint):
    proc, calls = fakes("max-age", *settings)
    _one_error_line(proc, complaint)
    assert calls == []


def test_scale_scales_waits_and_lists_the_server_pods(fakes):
    proc, calls = fakes("scale", "REPLICAS=5", "NAMESPACE=demo")
    assert proc.returncode == 0, proc.stderr
    assert verbs(calls) == [
        "kubectl scale -n demo deployment/server --replicas=5",
        "kubectl rollout status -n demo deployment/server --timeout=180s",
        "kubectl get pods -n demo -l app=server -o wide",
    ]
    assert "watch: " in proc.stdout and "pinned" in proc.stdout


@pytest.mark.parametrize("replicas", [None, "0", "-1", "three", "1000", "2.5", "05"])
def test_scale_rejects_a_bad_count_before_kubectl(fakes, replicas):
    proc, calls = fakes("scale", *([f"REPLICAS={replicas}"] if replicas is not None else []))
    _one_error_line(proc, f"REPLICAS={replicas or ''} is not a pod count")
    assert calls == []


def test_kill_pod_deletes_the_pod_of_the_last_answered_call(fakes, tmp_path):
    # client-grpc's text lines (wire::Record::text_line): the last answered
    # call names the pod; error lines do not.
    logs = tmp_path / "client-grpc.log"
    logs.write_text(
        "#1: server-7d9f8-abcde conn-requests=1\n"
        "#2: server-7d9f8-abcde conn-requests=2 x-upstream-pod=server-7d9f8-abcde\n"
        "#3: error: UNAVAILABLE connection refused\n"
        "#4: server-7d9f8-xyz12 conn-requests=1\n"
        "#5: error: CANCELLED operation was canceled\n"
    )
    proc, calls = fakes("kill-pod", FAKE_LOGS=str(logs))
    assert proc.returncode == 0, proc.stderr
    assert verbs(calls) == [
        "kubectl logs -n default deployment/client-grpc -c client-grpc --tail=50",
        "kubectl delete pod -n default server-7d9f8-xyz12 --wait=false",
    ]
    assert "watch: " in proc.stdout and "expect: server-7d9f8-xyz12 drains" in proc.stdout


def test_kill_pod_when_kubectl_logs_fails_says_so_and_deletes_nothing(fakes):
    proc, calls = fakes("kill-pod", FAKE_LOGS_FAIL="1")
    assert "Forbidden" in proc.stderr, proc.stderr
    _one_error_line(proc, "kubectl logs failed")
    assert not any(c[1] == "delete" for c in calls), calls


@pytest.mark.parametrize("lines", ["", "#1: error: UNAVAILABLE connection refused\n", "client-grpc starting\n"])
def test_kill_pod_without_an_answered_call_is_one_clear_line(fakes, tmp_path, lines):
    logs = tmp_path / "client-grpc.log"
    logs.write_text(lines)
    proc, calls = fakes("kill-pod", FAKE_LOGS=str(logs))
    _one_error_line(proc, "no answered call in client-grpc's last 50 log lines")
    assert not any(c[1] == "delete" for c in calls), calls
