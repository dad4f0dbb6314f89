"""Every manifest validated offline against the real schemas; broken ones fail."""

import copy

import pytest

from manifest_lib import ISTIO, KUBE_VERSIONS, STANDALONE, find, ident, is_istio, kubernetes_validate, kustomize


def test_kustomizations_render_the_expected_objects(all_docs, base_docs):
    assert sorted(ident(d) for d in base_docs) == sorted(
        [
            "ServiceAccount/server",
            "ServiceAccount/client-grpc",
            "ServiceAccount/client-http",
            "Service/server",
            "Service/server-headless",
            "Deployment/server",
            "Deployment/client-grpc",
            "Deployment/client-grpc-headless",
            "Deployment/client-http",
        ]
    )
    assert not any(is_istio(d) for d in base_docs), "istio/base must apply to a cluster without Istio"
    istio = sorted(ident(d) for d in all_docs if is_istio(d))
    assert istio == sorted(
        [
            "Gateway/server-gateway",
            "VirtualService/server",
            "VirtualService/server-ingress",
            "WasmPlugin/upstream-tagger",
            "Sidecar/server",
            "DestinationRule/server",
            "DestinationRule/server",
            "DestinationRule/server",
        ]
    )


def test_sidecar_pins_the_inbound_pool_of_the_server_pods(all_docs):
    # Two Services (server, server-headless) select the server pods on 30051:
    # without a Sidecar, istiod would take the inbound pool from the
    # DestinationRule of whichever was created first.
    sidecar = find(all_docs, "Sidecar", "server")
    selector = find(all_docs, "Service", "server")["spec"]["selector"]
    assert sidecar["spec"]["workloadSelector"]["labels"] == selector
    assert sidecar["spec"]["inboundConnectionPool"], "the Sidecar exists to state the inbound pool"
    assert find(all_docs, "Service", "server-headless")["spec"]["selector"] == selector


def test_standalone_files_are_not_in_a_kustomization():
    # Applying istio/ must not switch an experiment on by itself.
    rendered = {ident(d) for d in kustomize(ISTIO)}
    assert "WasmPlugin/upstream-tagger" not in rendered
    assert "DestinationRule/server" not in rendered
    assert [p.name for p in STANDALONE] == ["wasmplugin.yaml", "one-per-conn.yaml", "reuse.yaml", "tight.yaml"]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_core_kinds_pass_kubernetes_validate_strict(all_docs, version):
    core = [d for d in all_docs if not is_istio(d)]
    assert len(core) == 9
    proc = kubernetes_validate(core, version, f"core-{version}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Nothing was waved through for lack of a schema: one "passed" per document.
    out = proc.stdout + proc.stderr
    assert out.count(" passed for resource ") == len(core), out
    assert "Couldn't find schema" not in out, out


def test_istio_kinds_pass_their_crd_schema(all_docs, istio_schemas):
    istio = [d for d in all_docs if is_istio(d)]
    assert len(istio) == 8
    problems = [p for d in istio for p in istio_schemas.errors(d)]
    assert problems == []


def _pick(kind, name=None, experiment=None):
    def pick(docs):
        hits = [
            d
            for d in docs
            if d["kind"] == kind
            and (name is None or d["metadata"]["name"] == name)
            and (experiment is None or d["metadata"].get("labels", {}).get("experiment") == experiment)
        ]
        assert len(hits) == 1, (kind, name, experiment)
        return copy.deepcopy(hits[0])

    return pick


def _container(doc):
    return doc["spec"]["template"]["spec"]["containers"][0]


def _http(doc):
    return doc["spec"]["trafficPolicy"]["connectionPool"]["http"]


def _rename(mapping, old, new):
    mapping[new] = mapping.pop(old)


SERVER = _pick("Deployment", "server")

# (reason, document picker, mutation, text the validator's complaint must contain)
BROKEN_CORE = [
    ("probe-field-typo", SERVER, lambda d: _rename(_container(d)["readinessProbe"], "grpc", "grpcc"), "grpcc"),
    ("replicas-not-integer", SERVER, lambda d: d["spec"].update(replicas="three"), "replicas"),
    ("container-without-name", SERVER, lambda d: _container(d).pop("name"), "'name' is a required property"),
    ("drop-not-a-list", SERVER, lambda d: _container(d)["securityContext"]["capabilities"].update(drop="ALL"), "drop"),
    (
        "service-port-without-port",
        _pick("Service", "server"),
        lambda d: d["spec"]["ports"][0].pop("port"),
        "'port' is a required property",
    ),
]


@pytest.mark.parametrize("reason,pick,mutate,complaint", BROKEN_CORE, ids=[c[0] for c in BROKEN_CORE])
def test_broken_core_manifest_fails_validation(base_docs, reason, pick, mutate, complaint):
    doc = pick(base_docs)
    mutate(doc)
    proc = kubernetes_validate([doc], KUBE_VERSIONS[-1], f"broken-core-{reason}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{reason}: kubernetes-validate accepted it\n{out}"
    assert "did not validate" in out and complaint in out, out


WASM = _pick("WasmPlugin", "upstream-tagger")
REUSE = _pick("DestinationRule", "server", experiment="reuse")
VS = _pick("VirtualService", "server")
GW = _pick("Gateway", "server-gateway")

BROKEN_ISTIO = [
    (
        "dr-field-typo",
        REUSE,
        lambda d: _rename(_http(d), "maxRequestsPerConnection", "maxRequestPerConnection"),
        "maxRequestPerConnection",
    ),
    ("dr-string-for-int", REUSE, lambda d: _http(d).update(http2MaxRequests="many"), "http2MaxRequests"),
    ("dr-int32-overflow", REUSE, lambda d: _http(d).update(http2MaxRequests=2**31), "http2MaxRequests"),
    (
        "dr-unknown-lb",
        REUSE,
        lambda d: d["spec"]["trafficPolicy"]["loadBalancer"].update(simple="ROUND_ROBINN"),
        "ROUND_ROBINN",
    ),
    ("wasm-without-url", WASM, lambda d: d["spec"].pop("url"), "'url' is a required property"),
    ("wasm-unknown-mode", WASM, lambda d: d["spec"]["match"][0].update(mode="SERVERS"), "SERVERS"),
    ("wasm-unknown-fail-strategy", WASM, lambda d: d["spec"].update(failStrategy="FAIL_OPENN"), "FAIL_OPENN"),
    (
        "wasm-env-unknown-source",
        WASM,
        lambda d: d["spec"]["vmConfig"]["env"][0].update(valueFrom="DOWNWARD_API"),
        "DOWNWARD_API",
    ),
    ("wasm-unserved-version", WASM, lambda d: d.update(apiVersion="extensions.istio.io/v1"), "no served CRD"),
    (
        "vs-port-not-a-number",
        VS,
        lambda d: d["spec"]["http"][0]["route"][0]["destination"]["port"].update(number="grpc"),
        "number",
    ),
    ("gateway-field-typo", GW, lambda d: d["spec"]["servers"][0].update(protocl="HTTP"), "protocl"),
    ("unknown-kind", REUSE, lambda d: d.update(kind="DestinationRules"), "no served CRD"),
    ("name-not-dns1123", REUSE, lambda d: d["metadata"].update(name="Server_1"), "DNS-1123"),
]


@pytest.mark.parametrize("reason,pick,mutate,complaint", BROKEN_ISTIO, ids=[c[0] for c in BROKEN_ISTIO])
def test_broken_istio_manifest_fails_validation(all_docs, istio_schemas, reason, pick, mutate, complaint):
    doc = pick(all_docs)
    mutate(doc)
    problems = istio_schemas.errors(doc)
    assert problems, f"{reason}: accepted by the CRD schema"
    assert any(complaint in p for p in problems), problems
