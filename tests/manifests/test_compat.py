"""`make compat`'s driver (tools/compat.sh): rows for a passing, a failing and a
V8-less Envoy, with stand-ins for envoy and cargo (the real run installs five
Envoy builds; `make compat` does that)."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def fake_envoy(compat: Path, version: str, runtimes: str):
    bin_dir = compat / f"envoy-{version}" / "bin"
    bin_dir.mkdir(parents=True)
    envoy = bin_dir / "envoy"
    # What a real Envoy prints among its start-up lines with --mode init_only.
    envoy.write_text(f"#!/bin/sh\necho '[info][main] [server.cc:467]   envoy.wasm.runtime: {runtimes}' >&2\n")
    envoy.chmod(0o755)


def run_compat(tmp_path: Path, versions: str, cargo_exit: int):
    compat = tmp_path / "compat"
    fake_envoy(compat, "9.1.0", "envoy.wasm.runtime.null, envoy.wasm.runtime.v8")
    fake_envoy(compat, "9.2.0", "envoy.wasm.runtime.null")
    cargo = tmp_path / "cargo"
    cargo.write_text(
        "#!/bin/sh\n"
        'echo "ENVOY=$ENVOY args=$*"\n'
        f"[ {cargo_exit} = 0 ] && echo 'test result: ok. 15 passed; 0 failed; 0 ignored'\n"
        f"[ {cargo_exit} = 0 ] || echo 'test in_envoy_thing ... FAILED'\n"
        f"exit {cargo_exit}\n"
    )
    cargo.chmod(0o755)
    env = dict(os.environ, COMPAT_DIR=str(compat), CARGO=str(cargo))
    return subprocess.run(
        ["bash", str(ROOT / "tools" / "compat.sh"), versions],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


def table(stdout: str) -> dict:
    lines = stdout.splitlines()
    start = lines.index(next(l for l in lines if l.startswith("Envoy ")))
    return {l.split()[0]: l.split(None, 2)[2] for l in lines[start + 1:] if l.strip()}


def test_passing_and_v8less_builds(tmp_path):
    result = run_compat(tmp_path, "9.1.0=1.91 9.2.0=1.92", cargo_exit=0)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table(result.stdout)
    assert rows["9.1.0"] == "pass (15 tests)"
    assert rows["9.2.0"].startswith("skipped: no V8 runtime"), rows
    log = (tmp_path / "compat" / "envoy-9.1.0.log").read_text()
    assert "envoy-9.1.0/bin/envoy" in log and "-p filter --test in_envoy" in log


def test_a_failing_envoy_fails_the_run(tmp_path):
    result = run_compat(tmp_path, "9.1.0=1.91", cargo_exit=1)
    assert result.returncode == 1
    assert table(result.stdout)["9.1.0"].startswith("FAIL")
    assert "in_envoy_thing ... FAILED" in result.stdout
