#!/usr/bin/env bash
# Run every Molecule scenario of the repository on systemd-nspawn hosts: each role's scenario
# (roles/<role>/molecule/default, from roles/<role>), then the site scenario (molecule/default,
# from the repository root). Prints each scenario's wall time; exits non-zero if any failed.
#
# Usage (as root; `make molecule` does this with .venv/bin on PATH):
#   tests/molecule_rig/run-scenarios.sh                 all scenarios
#   tests/molecule_rig/run-scenarios.sh companion site  only these (role names, "site")
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

# scenario name -> directory molecule runs in
declare -A DIRS=()
ORDER=()
for dir in "$REPO"/roles/*/molecule/default; do
    [[ -f $dir/molecule.yml ]] || continue
    role="$(basename "$(dirname "$(dirname "$dir")")")"
    DIRS[$role]="$REPO/roles/$role"
    ORDER+=("$role")
done
if [[ -f $REPO/molecule/default/molecule.yml ]]; then
    DIRS[site]="$REPO"
    ORDER+=(site)
fi

if [[ $# -gt 0 ]]; then
    for name in "$@"; do
        [[ -n ${DIRS[$name]:-} ]] || { echo "run-scenarios: no scenario '$name' (have: ${ORDER[*]})" >&2; exit 2; }
    done
    ORDER=("$@")
fi

# Build the shared image up front so its one-off cost is not billed to the first scenario.
started=$SECONDS
"$RIG_DIR/build-image.sh" >/dev/null || { echo "run-scenarios: image build failed" >&2; exit 1; }
summary=("$(printf '%-16s %-6s %5ss' image ok $((SECONDS - started)))")

failed=0
for name in "${ORDER[@]}"; do
    echo
    echo "=== run-scenarios: $name (molecule test in ${DIRS[$name]#"$REPO"/}) ==="
    started=$SECONDS
    (cd "${DIRS[$name]}" && molecule test)
    rc=$?
    took=$((SECONDS - started))
    if [[ $rc -eq 0 ]]; then
        summary+=("$(printf '%-16s %-6s %5ss' "$name" ok "$took")")
    else
        summary+=("$(printf '%-16s %-6s %5ss  (exit %s)' "$name" FAILED "$took" "$rc")")
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
