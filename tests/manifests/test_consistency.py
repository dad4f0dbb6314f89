"""The manifests agree with each other, with the binaries' flags and with the filter."""

import re
from urllib.parse import urlsplit

import pytest
import yaml

from manifest_lib import ISTIO, ROOT, find, load_yaml, rust_str_consts

DEPLOYMENTS = ["server", "client-grpc", "client-grpc-headless", "client-http"]


def deployments(docs):
    return [d for d in docs if d["kind"] == "Deployment"]


def pod_labels(deploy):
    return deploy["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def containers(deploy):
    return deploy["spec"]["template"]["spec"]["containers"]


def args(deploy) -> dict:
    """`--flag=value` args of the first container as a dict."""
    out = {}
    for arg in containers(deploy)[0].get("args", []):
        assert arg.startswith("--") and "=" in arg, f"{deploy['metadata']['name']}: write args as --flag=value: {arg}"
        key, value = arg[2:].split("=", 1)
        out[key] = value
    return out


def test_every_deployment_selects_its_own_pods(base_docs):
    deploys = deployments(base_docs)
    assert sorted(d["metadata"]["name"] for d in deploys) == sorted(DEPLOYMENTS)
    for d in deploys:
        selector = d["spec"]["selector"]["matchLabels"]
        assert selects(selector, pod_labels(d)), d["metadata"]["name"]
        # Istio samples' convention: app + version on every pod.
        assert set(pod_labels(d)) >= {"app", "version"}
        others = [o for o in deploys if o is not d and selects(selector, pod_labels(o))]
        assert not others, f"{d['metadata']['name']} selector also matches {[o['metadata']['name'] for o in others]}"


@pytest.mark.parametrize("service", ["server", "server-headless"])
def test_services_select_exactly_the_server_pods(base_docs, service):
    svc = find(base_docs, "Service", service)
    selected = [
        d["metadata"]["name"] for d in deployments(base_docs) if selects(svc["spec"]["selector"], pod_labels(d))
    ]
    assert selected == ["server"]


@pytest.mark.parametrize("service", ["server", "server-headless"])
def test_service_target_ports_match_container_ports(base_docs, service):
    svc = find(base_docs, "Service", service)
    ports = containers(find(base_docs, "Deployment", "server"))[0]["ports"]
    by_name = {p["name"]: p["containerPort"] for p in ports}
    for port in svc["spec"]["ports"]:
        target = port["targetPort"]
        if isinstance(target, str):
            assert target in by_name, f"{service}:{port['port']} targets unknown container port {target!r}"
        else:
            assert target in by_name.values(), f"{service}:{port['port']} targets {target}, not a container port"
        # Istio picks the protocol from appProtocol (else the name prefix): keep both right.
        assert port["name"] == port["appProtocol"], port
        assert port["name"] in ("grpc", "http")


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_one_container_named_like_its_deployment(base_docs, name):
    # `make logs` reads `kubectl logs deployment/NAME -c NAME`.
    assert [c["name"] for c in containers(find(base_docs, "Deployment", name))] == [name]


def test_server_ports_probes_and_pod_name(base_docs):
    server = find(base_docs, "Deployment", "server")
    assert server["spec"]["replicas"] == 3
    c = containers(server)[0]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 30051, "http": 8080}
    # Listen addresses agree with the declared ports.
    a = args(server)
    assert a["grpc-addr"].endswith(":30051") and a["http-addr"].endswith(":8080")
    assert c["readinessProbe"]["grpc"]["port"] == 30051
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # The kubelet must not SIGKILL the server's drain.
    seconds = lambda v: int(v.rstrip("s"))  # noqa: E731
    grace = server["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > seconds(env["DRAIN_GRACE"]["value"]) + seconds(env["DRAIN_TIMEOUT"]["value"])


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_pods_meet_the_restricted_pod_security_standard(base_docs, name):
    spec = find(base_docs, "Deployment", name)["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] > 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc.get("privileged", False) is False
        for kind in ("requests", "limits"):
            assert set(c["resources"][kind]) == {"cpu", "memory"}, (name, kind)


def _service_port(docs, host_port: str) -> tuple[dict, int]:
    host, _, port = host_port.rpartition(":")
    svc = find(docs, "Service", host)
    numbers = [p["port"] for p in svc["spec"]["ports"]]
    assert int(port) in numbers, f"{host_port}: Service {host} has ports {numbers}"
    return svc, int(port)


def test_clients_point_at_the_services(base_docs):
    grpc = args(find(base_docs, "Deployment", "client-grpc"))
    assert grpc == {"host": "server:30051", "interval": "1s"}  # the Go demo's flags
    svc, port = _service_port(base_docs, grpc["host"])
    assert svc["spec"]["type"] == "ClusterIP"
    assert [p["name"] for p in svc["spec"]["ports"] if p["port"] == port] == ["grpc"]

    headless = args(find(base_docs, "Deployment", "client-grpc-headless"))
    assert headless["mode"] == "round-robin"
    svc, _ = _service_port(base_docs, headless["host"])
    assert svc["spec"]["clusterIP"] == "None"

    http = args(find(base_docs, "Deployment", "client-http"))
    url = urlsplit(http["url"])
    assert (url.scheme, url.path) == ("http", "/pod")
    svc, port = _service_port(base_docs, f"{url.hostname}:{url.port}")
    assert [p["targetPort"] for p in svc["spec"]["ports"] if p["port"] == port] == ["http"]


def _clap_flags(path):
    """Long flag names a clap derive file declares (field names, kebab-cased)."""
    text = path.read_text()
    return {m.replace("_", "-") for m in re.findall(r"#\[arg\([^\]]*\)\]\s*pub\s+(\w+)\s*:", text)}


def test_client_args_are_flags_the_binaries_accept(base_docs):
    common = _clap_flags(ROOT / "clients/src/cli.rs")
    accepted = {
        "client-grpc": _clap_flags(ROOT / "clients/src/grpc/args.rs") | common,
        "client-grpc-headless": _clap_flags(ROOT / "clients/src/grpc/args.rs") | common,
        "client-http": _clap_flags(ROOT / "clients/src/http.rs") | common,
    }
    assert {"host", "mode", "interval", "count"} <= accepted["client-grpc"]
    assert {"url", "interval", "count"} <= accepted["client-http"]
    for name, flags in accepted.items():
        unknown = set(args(find(base_docs, "Deployment", name))) - flags
        assert not unknown, f"{name}: flags the binary does not have: {unknown}"
    # The mode value is one of the enum's variants (clap kebab-cases them).
    variants = re.search(r"pub enum Mode \{([^}]*)\}", (ROOT / "clients/src/grpc/args.rs").read_text()).group(1)
    kebab = {re.sub(r"(?<!^)([A-Z])", r"-\1", v.strip()).lower() for v in variants.split(",") if v.strip()}
    assert args(find(base_docs, "Deployment", "client-grpc-headless"))["mode"] in kebab


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_images_are_the_ones_make_images_builds(base_docs, name):
    image = containers(find(base_docs, "Deployment", name))[0]["image"]
    # `make kube-deploy` rewrites exactly this prefix and tag to $(HUB)/$(TAG).
    m = re.fullmatch(r"localhost/grpc-lb/([a-z0-9-]+):latest", image)
    assert m, image
    assert (ROOT / "images" / f"{m.group(1)}.Containerfile").is_file()


# ---- Istio objects ----------------------------------------------------------------


@pytest.fixture(scope="module")
def wasm():
    (doc,) = load_yaml(ISTIO / "wasmplugin.yaml")
    return doc


def test_wasmplugin_selects_the_server_pods_inbound(wasm, base_docs):
    spec = wasm["spec"]
    selected = [
        d["metadata"]["name"] for d in deployments(base_docs) if selects(spec["selector"]["matchLabels"], pod_labels(d))
    ]
    assert selected == ["server"]
    assert spec["match"] == [{"mode": "SERVER"}]
    assert spec["pluginName"] == "upstream-tagger"
    assert spec["failStrategy"] == "FAIL_OPEN"
    assert spec["vmConfig"]["env"] == [{"name": "POD_NAME", "valueFrom": "HOST"}]
    # `make kube-manifests` swaps this url for $(WASM_URL); the image is the one `make images` builds.
    assert re.fullmatch(r"oci://localhost/grpc-lb/upstream-tagger:latest", spec["url"])
    assert (ROOT / "images" / "upstream-tagger.Containerfile").is_file()


def test_plugin_config_header_names_are_the_filter_constants(wasm):
    consts = rust_str_consts(ROOT / "wire/src/headers.rs")
    config = wasm["spec"]["pluginConfig"]
    assert config["pod_header"] == consts["UPSTREAM_POD"]
    assert config["connection_id_header"] == consts["UPSTREAM_CONNECTION_ID"]
    assert config["connection_requests_header"] == consts["UPSTREAM_CONNECTION_REQUESTS"]


def test_plugin_config_spells_out_the_filter_defaults(wasm):
    source = (ROOT / "filter/src/config.rs").read_text()
    fields = re.findall(r'"(\w+)"', re.search(r"pub const FIELDS: &\[&str\] = &\[(.*?)\];", source, re.S).group(1))
    number = lambda name: int(
        re.search(rf"pub const {name}: u32 = ([0-9_]+);", source).group(1).replace("_", "")
    )  # noqa: E731
    config = wasm["spec"]["pluginConfig"]
    # Every field but pod_name (unset = discovered from the sidecar) is written out.
    assert sorted(config) == sorted(f for f in fields if f != "pod_name")
    assert config["tag_all_http"] is False
    assert re.search(r"tag_all_http: false,", source)
    assert config["max_tracked_connections"] == number("DEFAULT_MAX_TRACKED_CONNECTIONS")
    assert config["idle_timeout_seconds"] == number("DEFAULT_IDLE_TIMEOUT_SECONDS")


def test_server_pods_expose_the_filter_stats(base_docs):
    annotations = find(base_docs, "Deployment", "server")["spec"]["template"]["metadata"]["annotations"]
    proxy_config = yaml.safe_load(annotations["proxy.istio.io/config"])
    prefixes = proxy_config["proxyStatsMatcher"]["inclusionPrefixes"]
    # Envoy names a filter's metrics wasmcustom.<name>; the filter's start with upstream_tagger.
    assert any(p.startswith("wasmcustom.upstream_tagger") for p in prefixes)
    metric_names = set(
        re.findall(r'"(upstream_tagger[a-z_]*)"', "".join(p.read_text() for p in (ROOT / "filter/src").glob("*.rs")))
    )
    assert metric_names, "no upstream_tagger_* metric names found in filter/src"
    for metric in metric_names:
        assert any(f"wasmcustom.{metric}".startswith(p) for p in prefixes), metric


@pytest.mark.parametrize(
    "file,lb,pool",
    [
        ("reuse.yaml", "ROUND_ROBIN", {"http": {"http2MaxRequests": 50, "maxRequestsPerConnection": 100}}),
        ("one-per-conn.yaml", "ROUND_ROBIN", {"http": {"maxRequestsPerConnection": 1}}),
        (
            "tight.yaml",
            "ROUND_ROBIN",
            {"tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1, "http2MaxRequests": 1}},
        ),
    ],
)
def test_destination_rules_replace_each_other_and_target_the_service(base_docs, file, lb, pool):
    (dr,) = load_yaml(ISTIO / "destinationrules" / file)
    # Same name: applying one experiment replaces the previous one.
    assert dr["metadata"]["name"] == "server"
    find(base_docs, "Service", dr["spec"]["host"])
    assert dr["spec"]["trafficPolicy"]["loadBalancer"] == {"simple": lb}
    assert dr["spec"]["trafficPolicy"]["connectionPool"] == pool


def test_routing_targets_existing_service_ports(all_docs):
    ports = {p["port"] for p in find(all_docs, "Service", "server")["spec"]["ports"]}
    for vs in [d for d in all_docs if d["kind"] == "VirtualService"]:
        for route in vs["spec"]["http"]:
            for dest in route["route"]:
                assert dest["destination"]["host"] == "server"
                assert dest["destination"]["port"]["number"] in ports
    ingress = find(all_docs, "VirtualService", "server-ingress")
    gw = find(all_docs, "Gateway", "server-gateway")
    assert ingress["spec"]["gateways"] == [gw["metadata"]["name"]]
    assert gw["spec"]["selector"] == {"istio": "ingressgateway"}
    # gRPC (content-type application/grpc*) reaches the gRPC port, the rest the HTTP port.
    grpc_route, http_route = ingress["spec"]["http"]
    assert grpc_route["match"] == [{"headers": {"content-type": {"prefix": "application/grpc"}}}]
    assert grpc_route["route"][0]["destination"]["port"]["number"] == 30051
    assert http_route["route"][0]["destination"]["port"]["number"] == 80
