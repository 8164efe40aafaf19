#!/usr/bin/env bash
# Keep one systemd-nspawn test host running, the way systemd-nspawn@.service would.
#
# Usage: launch-host.sh MACHINE HOSTNAME ROOTDIR BRIDGE
# Started detached (setsid) by rig.sh, which records this script's pid.
#
# A guest's `systemctl reboot` makes `systemd-nspawn --boot` exit with 133; we boot it again,
# which gives tests a real reboot (fresh PID 1, units started from their enablement). SIGTERM
# to this script is forwarded to nspawn, which asks the guest's systemd for a clean poweroff;
# then we exit instead of booting again.
set -uo pipefail

machine="$1" hostname="$2" rootdir="$3" bridge="$4"
stop=0
child=""
on_term() {
    stop=1
    if [[ -n $child ]]; then
        kill -TERM "$child" 2>/dev/null
    fi
}
trap on_term TERM INT HUP

boots=0
quick_failures=0
while [[ $stop -eq 0 ]]; do
    boots=$((boots + 1))
    started=$SECONDS
    echo "launch-host: boot #$boots of $machine at $(date -u +%FT%TZ)"
    # --register=no --keep-unit: this VM has neither systemd nor D-Bus as PID 1, and nspawn
    # exits at once with "Failed to open system bus" without them.
    # --system-call-filter=bpf: nspawn's default filter denies bpf(), and without it the
    # guest's systemd silently ignores IPAddressAllow=/IPAddressDeny= (measured: a unit with
    # IPAddressDeny=any still connected); the roles rely on those for their port filters.
    systemd-nspawn --quiet --boot --directory="$rootdir" --machine="$machine" \
        --hostname="$hostname" --register=no --keep-unit --network-bridge="$bridge" \
        --console=passive --resolv-conf=copy-host --link-journal=no \
        --system-call-filter=bpf &
    child=$!
    wait "$child"
    rc=$?
    # `wait` returns early (rc > 128) when a trapped signal arrives; wait for the real exit.
    while kill -0 "$child" 2>/dev/null; do
        wait "$child"
        rc=$?
    done
    child=""
    echo "launch-host: $machine exited with $rc"
    if [[ $rc -eq 133 ]]; then
        quick_failures=0
        continue
    fi
    # Booting again right after a reboot can fail at once: the previous boot's veth pair
    # may still be being torn down ("Failed to add new veth interfaces: File exists").
    # Such a start dies within seconds; try again a few times before giving up.
    if [[ $stop -eq 0 && $boots -gt 1 && $((SECONDS - started)) -lt 15 && $quick_failures -lt 5 ]]; then
        quick_failures=$((quick_failures + 1))
        sleep 2
        continue
    fi
    break
done
