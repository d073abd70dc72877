#!/usr/bin/env bash
# Make sure the system programs the tests and benchmarks run are installed.
#
#   scripts/ensure_system_deps.sh           victoria-metrics (with vmagent) is required: the
#                                           integration tests start it. wrk is installed too when
#                                           apt can, but its absence is only a warning.
#   scripts/ensure_system_deps.sh --bench   wrk is required as well (bench/pipeline drives it).
#
# Silent and quick when everything is there. When something is missing it installs Debian's
# packages with apt-get (one `apt-get update`, then `apt-get install`) if it runs as root on a
# system with apt, as CI does; otherwise it prints the command to run and exits 1.
# PHOENIX_SKIP_SYSTEM_DEPS=1 skips every check (for a run of tests/unit only, say).
set -euo pipefail

if [[ "${PHOENIX_SKIP_SYSTEM_DEPS:-}" == 1 ]]; then
    exit 0
fi

bench=0
case "${1:-}" in
    "") ;;
    --bench) bench=1 ;;
    *) echo "usage: $0 [--bench]" >&2; exit 2 ;;
esac

# Debian package -> the binaries it must provide.
declare -A binaries=([victoria-metrics]="victoria-metrics vmagent" [wrk]="wrk")
required=(victoria-metrics)
optional=()
if ((bench)); then required+=(wrk); else optional+=(wrk); fi

missing_packages() {
    local package binary
    for package in "$@"; do
        for binary in ${binaries[$package]}; do
            if ! command -v "$binary" >/dev/null 2>&1; then
                echo "$package"
                break
            fi
        done
    done
}

mapfile -t need < <(missing_packages "${required[@]}")
mapfile -t want < <(missing_packages "${optional[@]}")
if ((${#need[@]} == 0 && ${#want[@]} == 0)); then
    exit 0
fi

apt_install() {  # apt_install PACKAGE... ; apt-get update runs at most once per invocation
    if [[ -z "${apt_updated:-}" ]]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    if ((${#need[@]})); then
        echo "ensure_system_deps: installing ${need[*]} with apt-get (the tests need it)" >&2
        if ! apt_install "${need[@]}"; then
            echo "ensure_system_deps: apt-get install ${need[*]} failed (see above)" >&2
            exit 1
        fi
    fi
    if ((${#want[@]})); then
        echo "ensure_system_deps: installing ${want[*]} with apt-get (for bench/, optional)" >&2
        apt_install "${want[@]}" || echo "ensure_system_deps: warning: could not install ${want[*]}; bench/pipeline needs it" >&2
    fi
    mapfile -t need < <(missing_packages "${required[@]}")
    if ((${#need[@]})); then
        echo "ensure_system_deps: ${need[*]} installed, yet not on PATH ($PATH)" >&2
        exit 1
    fi
    exit 0
fi

if ((${#want[@]})); then
    echo "ensure_system_deps: note: ${want[*]} not found; bench/pipeline needs it: sudo apt-get install ${want[*]}" >&2
fi
if ((${#need[@]} == 0)); then
    exit 0
fi
why="not running as root"
command -v apt-get >/dev/null 2>&1 || why="apt-get not available"
cat >&2 <<EOF
ensure_system_deps: ${need[*]} not found and cannot be installed here ($why).
The integration tests start VictoriaMetrics (victoria-metrics, vmagent); bench/pipeline drives wrk.
Install them, then run make again:

    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${need[*]}

Elsewhere than Debian/Ubuntu, put victoria-metrics and vmagent (v1.79 or later, from
https://github.com/VictoriaMetrics/VictoriaMetrics/releases) on PATH, and wrk for bench/.
To run only tests that need none of these: PHOENIX_SKIP_SYSTEM_DEPS=1 make pytest PYTEST_ARGS=tests/unit
EOF
exit 1
