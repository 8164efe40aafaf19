#!/usr/bin/env bash
# Run every Molecule scenario of the repository on systemd-nspawn hosts: each role's scenario
# (roles/<role>/molecule/default, from roles/<role>, named <role>), each role's other scenarios
# (roles/<role>/molecule/<s>, named <role>-<s>, e.g. companion-upgrade), then the site scenario
# (molecule/default, from the repository root). Prints each scenario's wall time; exits
# non-zero if any failed.
#
# Every scenario runs on Debian 13 (trixie, the real server's OS); the companion scenario (the
# server) and the pi_push scenario (the Pi, whose Raspberry Pi OS may still be Bookworm) run on
# Debian 12 (bookworm, still supported) as well. A run is NAME or NAME@DISTRO.
#
# Usage (as root; `make molecule` does this with .venv/bin on PATH):
#   tests/molecule_rig/run-scenarios.sh                 the whole matrix (what CI runs)
#   tests/molecule_rig/run-scenarios.sh companion site  only these, on $MOLECULE_DISTRO (trixie)
#   tests/molecule_rig/run-scenarios.sh companion@bookworm
#   tests/molecule_rig/run-scenarios.sh companion-upgrade   0.1.0 -> this tree, with data
#   FAIL_FAST=1 tests/molecule_rig/run-scenarios.sh     stop at the first failure
set -uo pipefail

RIG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$RIG_DIR/../.." && pwd)"

if [[ $EUID -ne 0 ]]; then
    echo "run-scenarios: must run as root (systemd-nspawn, overlayfs, bridges)" >&2
    exit 1
fi
if ! command -v molecule >/dev/null && [[ -x $REPO/.venv/bin/molecule ]]; then
    export PATH="$REPO/.venv/bin:$PATH"
fi
for tool in molecule systemd-nspawn debootstrap iptables; do
    command -v "$tool" >/dev/null || {
        echo "run-scenarios: missing $tool (apt: systemd-container debootstrap iptables; make venv)" >&2
        exit 1
    }
done

# scenario name -> directory molecule runs in, and molecule's scenario name there
declare -A DIRS=() SCENARIOS=()
ORDER=()
for dir in "$REPO"/roles/*/molecule/default "$REPO"/roles/*/molecule/*; do
    [[ -f $dir/molecule.yml ]] || continue
    role="$(basename "$(dirname "$(dirname "$dir")")")" scenario="$(basename "$dir")"
    name="$role"
    [[ $scenario == default ]] || name="$role-$scenario"
    [[ -z ${DIRS[$name]:-} ]] || continue
    DIRS[$name]="$REPO/roles/$role"
    SCENARIOS[$name]="$scenario"
    ORDER+=("$name")
done
if [[ -f $REPO/molecule/default/molecule.yml ]]; then
    DIRS[site]="$REPO"
    SCENARIOS[site]=default
    ORDER+=(site)
fi

DEFAULT_DISTRO="${MOLECULE_DISTRO:-trixie}"
RUNS=()
if [[ $# -gt 0 ]]; then
    for run in "$@"; do
        [[ $run == *@* ]] || run="$run@$DEFAULT_DISTRO"
        RUNS+=("$run")
    done
else
    for name in "${ORDER[@]}"; do
        RUNS+=("$name@trixie")
    done
    # Debian 12 stays supported: the companion (Python 3.11) and the Pi's push tool there too.
    [[ -n ${DIRS[companion]:-} ]] && RUNS+=("companion@bookworm")
    [[ -n ${DIRS[pi_push]:-} ]] && RUNS+=("pi_push@bookworm")
fi
for run in "${RUNS[@]}"; do
    name="${run%@*}" distro="${run#*@}"
    [[ -n ${DIRS[$name]:-} ]] || { echo "run-scenarios: no scenario '$name' (have: ${ORDER[*]})" >&2; exit 2; }
    [[ $distro == trixie || $distro == bookworm ]] || { echo "run-scenarios: unknown distro '$distro' (trixie, bookworm)" >&2; exit 2; }
done

# Build the images up front so their one-off cost is not billed to the first scenario.
summary=()
for distro in $(printf '%s\n' "${RUNS[@]#*@}" | sort -u); do
    started=$SECONDS
    MOLECULE_DISTRO="$distro" "$RIG_DIR/build-image.sh" >/dev/null || { echo "run-scenarios: $distro image build failed" >&2; exit 1; }
    summary+=("$(printf '%-26s %-6s %5ss' "image@$distro" ok $((SECONDS - started)))")
done

# Molecule names a scenario's ephemeral directory (instance config, SSH key, the companion's
# service/ snapshot) after the basename of the directory it runs in: roles/companion of two
# checkouts would share ~/.ansible/tmp/molecule.<hash of "companion">.default and wreck each
# other's runs. Give each checkout and run its own.
EPHEMERAL_ROOT="${HOME:-/root}/.ansible/tmp/chi-molecule-$(printf '%s' "$REPO" | sha256sum | cut -c1-12)"

failed=0
for run in "${RUNS[@]}"; do
    name="${run%@*}" distro="${run#*@}"
    echo
    echo "=== run-scenarios: $run (molecule test -s ${SCENARIOS[$name]} in ${DIRS[$name]#"$REPO"/}, Debian $distro) ==="
    started=$SECONDS
    (cd "${DIRS[$name]}" && MOLECULE_DISTRO="$distro" \
        MOLECULE_EPHEMERAL_DIRECTORY="$EPHEMERAL_ROOT/$name-$distro" \
        molecule test --scenario-name "${SCENARIOS[$name]}")
    rc=$?
    took=$((SECONDS - started))
    if [[ $rc -eq 0 ]]; then
        summary+=("$(printf '%-26s %-6s %5ss' "$run" ok "$took")")
    else
        summary+=("$(printf '%-26s %-6s %5ss  (exit %s)' "$run" FAILED "$took" "$rc")")
        failed=1
        if [[ ${FAIL_FAST:-0} == 1 ]]; then
            break
        fi
    fi
done

echo
echo "=== run-scenarios: summary (wall time) ==="
printf '%s\n' "${summary[@]}"
exit $failed
