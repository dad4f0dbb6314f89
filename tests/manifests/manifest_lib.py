"""Helpers for the offline manifest tests: rendering, schema validation, paths.

Two validators, and every document must go through exactly one of them:
- core Kubernetes kinds: the `kubernetes-validate --strict` CLI (PyPI), which
  ships the upstream JSON schemas per Kubernetes version;
- Istio kinds (*.istio.io): the openAPIV3Schema of their CustomResourceDefinition
  (from the istio.io/istio module tools/istio-oracle pins, or $ISTIO_CRDS),
  turned into JSON Schema with the API server's semantics (unknown fields are
  errors unless x-kubernetes-preserve-unknown-fields).
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
ISTIO = ROOT / "istio"
OUT = ROOT / "target" / "test-manifests"
VENV_BIN = Path(os.environ.get("VENV", ROOT / ".venv")) / "bin"
# Oldest Kubernetes the manifests promise to work on, and the newest schema
# set kubernetes-validate ships (a current release).
KUBE_VERSIONS = ("1.30.0", "1.37.0")
# Files applied on their own by make targets, outside the kustomizations.
STANDALONE = [ISTIO / "wasmplugin.yaml", *sorted((ISTIO / "destinationrules").glob("*.yaml"))]

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def kubectl() -> str:
    path = shutil.which("kubectl")
    assert (
        path
    ), "kubectl not found: it renders the kustomizations (install kubectl, https://kubernetes.io/docs/tasks/tools/)"
    return path


def kustomize(directory: Path) -> list[dict]:
    """`kubectl kustomize DIR` parsed into documents (no kustomize binary needed)."""
    proc = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def load_yaml(path: Path) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def is_istio(doc: dict) -> bool:
    return doc.get("apiVersion", "").split("/")[0].endswith(".istio.io")


def ident(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def find(docs: list[dict], kind: str, name: str) -> dict:
    hits = [d for d in docs if d.get("kind") == kind and d.get("metadata", {}).get("name") == name]
    assert len(hits) == 1, f"expected exactly one {kind}/{name}, found {len(hits)}"
    return hits[0]


# ---- core kinds: kubernetes-validate -------------------------------------------


def kubernetes_validate(docs: list[dict], version: str, name: str) -> subprocess.CompletedProcess:
    """Run `kubernetes-validate --strict` on DOCS written to target/; returns the process."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    exe = VENV_BIN / "kubernetes-validate"
    assert exe.exists(), f"{exe} missing: run `make venv`"
    return subprocess.run([str(exe), "--strict", "-k", version, str(path)], capture_output=True, text=True, timeout=120)


# ---- Istio kinds: CRD openAPIV3Schema ------------------------------------------


def crd_path() -> Path:
    """Istio's CRDs: $ISTIO_CRDS, else the ones the istio.io/istio module pinned by
    tools/istio-oracle ships (downloaded into the Go module cache when missing)."""
    if os.environ.get("ISTIO_CRDS"):
        path = Path(os.environ["ISTIO_CRDS"])
        assert path.is_file(), f"ISTIO_CRDS={path}: no such file (crd-all.gen.yaml of an Istio release)"
        return path
    go = shutil.which("go")
    assert go, "go not found: it fetches Istio's CRDs (install Go 1.26+, https://go.dev/doc/install, or set ISTIO_CRDS)"
    proc = subprocess.run(
        [go, "mod", "download", "-json", "istio.io/istio"],
        cwd=ROOT / "tools" / "istio-oracle",
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"go mod download istio.io/istio failed:\n{proc.stdout}{proc.stderr}"
    path = Path(json.loads(proc.stdout)["Dir"]) / "manifests" / "charts" / "base" / "files" / "crd-all.gen.yaml"
    assert path.is_file(), f"{path} missing from the istio.io/istio module"
    return path


_FORMAT_BOUNDS = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
}


def structural_to_jsonschema(node):
    """Kubernetes structural schema -> JSON Schema with the API server's rules.

    - x-kubernetes-* keys are extensions: dropped (CEL rules are not evaluated).
    - An object schema with `properties` rejects unknown fields (kubectl apply
      uses strict field validation) unless x-kubernetes-preserve-unknown-fields.
    - `nullable` allows null; integer `format`s get their range.
    """
    if isinstance(node, list):
        return [structural_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: structural_to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = structural_to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [structural_to_jsonschema(v) for v in value]
        else:
            out[key] = copy.deepcopy(value)
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("type") == "integer" and node.get("format") in _FORMAT_BOUNDS:
        low, high = _FORMAT_BOUNDS[node["format"]]
        out.setdefault("minimum", low)
        out.setdefault("maximum", high)
    return out


class IstioSchemas:
    """Validators for every served (group, version, kind) in the CRD file."""

    def __init__(self, path: Path):
        self.validators: dict[tuple[str, str, str], jsonschema.Draft7Validator] = {}
        for doc in load_yaml(path):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if not version.get("served"):
                    continue
                schema = structural_to_jsonschema(version["schema"]["openAPIV3Schema"])
                jsonschema.Draft7Validator.check_schema(schema)
                key = (spec["group"], version["name"], spec["names"]["kind"])
                self.validators[key] = jsonschema.Draft7Validator(schema)

    def errors(self, doc: dict) -> list[str]:
        """Every reason the API server (minus CEL rules) would reject DOC; [] if none."""
        api_version = doc.get("apiVersion", "")
        group, _, version = api_version.partition("/")
        key = (group, version, doc.get("kind"))
        validator = self.validators.get(key)
        if validator is None:
            return [f"{ident(doc)}: no served CRD for {api_version} {doc.get('kind')}"]
        problems = []
        name = doc.get("metadata", {}).get("name", "")
        if not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
            problems.append(f"{ident(doc)}: metadata.name {name!r} is not a DNS-1123 subdomain")
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
        for err in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(p) for p in err.absolute_path) or "(root)"
            problems.append(f"{ident(doc)}: {where}: {err.message}")
        return problems


# ---- filter constants ------------------------------------------------------------


def rust_str_consts(path: Path) -> dict[str, str]:
    """`pub const NAME: &str = "value";` items of a Rust source file."""
    text = path.read_text()
    return dict(re.findall(r'pub\s+const\s+([A-Z0-9_]+)\s*:\s*&(?:\'static\s+)?str\s*=\s*"([^"]*)"\s*;', text))


# ---- images ------------------------------------------------------------------------

HUB, TAG = "localhost/grpc-lb-test", "test"
APPS = ["server", "client-grpc", "client-http"]
STORAGE = ROOT / "target" / "images" / "test-storage"
BUILDAH_FLAGS = f"--root {STORAGE}/root --runroot {STORAGE}/run --storage-driver vfs"
WASM = ROOT / "dist" / "upstream_tagger.wasm"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class Image:
    """An image exported with `buildah push IMG oci:DIR`."""

    def __init__(self, layout: Path):
        blob = lambda digest: (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()  # noqa: E731
        index = json.loads((layout / "index.json").read_text())
        (entry,) = index["manifests"]
        self.manifest = json.loads(blob(entry["digest"]))
        self.config = json.loads(blob(self.manifest["config"]["digest"]))["config"]
        self.layers = [(layer["mediaType"], blob(layer["digest"])) for layer in self.manifest["layers"]]

    def files(self) -> dict[str, tarfile.TarInfo]:
        out = {}
        for _, data in self.layers:
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
                for member in tar.getmembers():
                    out[member.name.lstrip("./")] = member
        return out

    def read(self, name: str) -> bytes:
        for _, data in reversed(self.layers):
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
                for member in tar.getmembers():
                    if member.name.lstrip("./") == name:
                        return tar.extractfile(member).read()
        raise KeyError(name)


def buildah(*args, **kw):
    return subprocess.run(["buildah", *BUILDAH_FLAGS.split(), *args], capture_output=True, text=True, timeout=300, **kw)


def extract_binary(images, name, tmp_path) -> str:
    """Copy /usr/local/bin/NAME out of the exported image NAME; returns its path."""
    exe = tmp_path / name
    exe.write_bytes(images[name].read(f"usr/local/bin/{name}"))
    exe.chmod(0o755)
    return str(exe)


class Server:
    """The echo server binary as a real process on 127.0.0.1, logging to target/.

    Use as a context manager: stopped with SIGTERM (then SIGKILL) on exit.
    """

    def __init__(self, exe: str, args: list[str], env: dict[str, str], name: str):
        OUT.mkdir(parents=True, exist_ok=True)
        self.log_path = OUT / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([exe, *args], env=env, stdout=subprocess.DEVNULL, stderr=self._log)
        try:
            deadline = time.monotonic() + 20
            while not re.search(r"HTTP on \S+", self.log()):
                assert self.proc.poll() is None, f"server exited ({self.proc.returncode}); log {self.log_path}"
                assert time.monotonic() < deadline, f"server not listening after 20s; log {self.log_path}"
                time.sleep(0.05)
        except BaseException:
            self.stop()  # never leave it running behind a failed start
            raise
        line = self.log()
        self.grpc_addr = re.search(r"gRPC on (127\.0\.0\.1:\d+)", line).group(1)
        self.http_addr = re.search(r"HTTP on (127\.0\.0\.1:\d+)", line).group(1)

    def log(self) -> str:
        return self.log_path.read_text()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
