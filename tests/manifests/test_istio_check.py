"""`make istio-check` on copies of istio/: what issue 11 names as done.

- a DestinationRule with `maxRequestsPerConnection: 7` and `http2MaxRequests: 0`
  gives the same outbound cluster from istiod and from the local mesh (7, and
  Istio's default 4294967295 for the 0);
- `timeout: 0s` put back into the VirtualService fails the check, naming `timeout`.

These run the real oracle (built by `make istio-check` on first use) and the
real `mesh render`."""

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTBOUND = "outbound|30051||server.default.svc.cluster.local"


def istio_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "istio"
    shutil.copytree(ROOT / "istio", copy)
    shutil.rmtree(copy / "destinationrules")
    (copy / "destinationrules").mkdir()
    return copy


def istio_check(istio_dir: Path):
    return subprocess.run(
        ["make", "--no-print-directory", "-s", "istio-check", f"ISTIO_DIR={istio_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )


def outbound_cluster(rendering: Path) -> dict:
    doc = json.loads(rendering.read_text())
    clusters = [c for c in doc["client"]["clusters"] if c["name"] == OUTBOUND]
    assert len(clusters) == 1, f"{rendering}: no single {OUTBOUND}"
    return clusters[0]


def test_zero_keeps_istios_default_in_both_renderings(tmp_path):
    copy = istio_copy(tmp_path)
    # The same file mesh/tests/cli.rs renders.
    fixture = ROOT / "tests" / "fixtures" / "destinationrule-seven.yaml"
    shutil.copy(fixture, copy / "destinationrules" / "zeros.yaml")
    result = istio_check(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert "istio-oracle compare zeros:" in out and ", 0 differences" in out, out
    for side in ("istiod", "mesh"):
        cluster = outbound_cluster(ROOT / "target" / "istio-check" / "zeros" / f"{side}.json")
        options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert int(options["common_http_protocol_options"]["max_requests_per_connection"]) == 7, side
        assert int(cluster["circuit_breakers"]["thresholds"][0]["max_requests"]) == 4294967295, side


def test_a_zero_route_timeout_fails_naming_timeout(tmp_path):
    copy = istio_copy(tmp_path)
    vs = copy / "virtualservice.yaml"
    text = vs.read_text()
    grpc_route = "          number: 30051\n"
    assert grpc_route in text
    vs.write_text(text.replace(grpc_route, grpc_route + "    timeout: 0s\n", 1))
    result = istio_check(copy)
    assert result.returncode != 0, result.stdout
    problems = [l for l in (result.stdout + result.stderr).splitlines() if "virtualservice.yaml" in l]
    assert any("timeout" in l and "VirtualService/server" in l for l in problems), result.stdout + result.stderr
