import os
import shutil
import subprocess

import pytest

from manifest_lib import (
    APPS,
    BUILDAH_FLAGS,
    HUB,
    ISTIO,
    OUT,
    ROOT,
    STANDALONE,
    STORAGE,
    TAG,
    Image,
    IstioSchemas,
    buildah,
    crd_path,
    kustomize,
    load_yaml,
)


@pytest.fixture(scope="session")
def base_docs():
    """istio/base rendered: the core workloads."""
    return kustomize(ISTIO / "base")


@pytest.fixture(scope="session")
def all_docs():
    """istio/ rendered (base + routing) plus the standalone WasmPlugin and DestinationRules."""
    docs = kustomize(ISTIO)
    for path in STANDALONE:
        docs += load_yaml(path)
    return docs


@pytest.fixture(scope="session")
def istio_schemas():
    return IstioSchemas(crd_path())


@pytest.fixture(scope="session")
def images():
    """`make images BUILDER=buildah` into a private vfs store; {name: exported Image}."""
    shutil.rmtree(STORAGE, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / "make-images.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL")}
    with open(log, "w") as out:
        proc = subprocess.run(
            [
                "make",
                "--no-print-directory",
                "-C",
                str(ROOT),
                "images",
                "BUILDER=buildah",
                f"BUILDAH_FLAGS={BUILDAH_FLAGS}",
                f"HUB={HUB}",
                f"TAG={TAG}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=3600,
            env=env,
        )
    text = log.read_text()
    assert proc.returncode == 0, f"make images failed (log: {log}):\n" + "\n".join(text.splitlines()[-30:])
    exported = {}
    for name in [*APPS, "upstream-tagger"]:
        layout = STORAGE / "oci" / name
        layout.parent.mkdir(parents=True, exist_ok=True)
        pushed = buildah("push", "--quiet", f"{HUB}/{name}:{TAG}", f"oci:{layout}:{TAG}")
        assert pushed.returncode == 0, pushed.stderr
        exported[name] = Image(layout)
    return exported
