"""The cluster make targets: what they run, in which order, and how they fail.

No cluster can run here, so `kubectl`/`istioctl` are recording stand-ins that
forward `kubectl kustomize` to the real kubectl; a missing tool and an
unreachable API server are real.
"""

import os
import stat
import subprocess

import pytest
import yaml

from manifest_lib import ISTIO, ROOT, kubectl, kustomize

FAKE = """#!/bin/sh
# Recording stand-in for {tool}: one line per call in $FAKE_LOG.
echo "{tool} $*" >> "$FAKE_LOG"
case "$1" in
  kustomize) exec "$REAL_KUBECTL" "$@" ;;
  get) [ "$2 $3" = "crd wasmplugins.extensions.istio.io" ] && [ -n "$FAKE_NO_ISTIO" ] && exit 1 ;;
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
