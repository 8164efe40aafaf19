#!/usr/bin/env bash
# Host-side plumbing of the systemd-nspawn Molecule rig; called by create.yml and destroy.yml.
#
#   rig.sh net-up BRIDGE SUBNET          bridge with the subnet's .1, ip_forward, MASQUERADE
#   rig.sh net-down BRIDGE SUBNET        undo net-up for this bridge only
#   rig.sh host-mount HOSTDIR LOWERDIR NAME ADDRESS HOSTS_FILE PUBKEY
#                                        overlayfs HOSTDIR/root = LOWERDIR + HOSTDIR/upper, then
#                                        the host's identity, static address, /etc/hosts, root key
#   rig.sh host-start HOSTDIR MACHINE HOSTNAME BRIDGE   boot it (detached launcher, pid file)
#   rig.sh host-stop HOSTDIR...          clean poweroff, unmount, delete (hosts in parallel)
#
# Every command is idempotent: create/destroy may be re-run after a failed or killed run.
# Everything changed on this machine is tagged "chi-molecule" and confined to the scenario's own
# bridge and subnet, so scenarios with distinct bridges run side by side.
set -euo pipefail

RIG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_ROOT="${CHI_RIG_STATE_DIR:-/var/lib/chi-molecule}"
TAG=chi-molecule

log() { printf 'rig: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# Only /24 subnets: addresses are "<first three octets>.<index>", which keeps the playbooks
# free of address arithmetic filters (ansible.utils is not available offline).
check_subnet() {
    [[ $1 =~ ^([0-9]+\.[0-9]+\.[0-9]+)\.0/24$ ]] || die "subnet must look like A.B.C.0/24, got '$1'"
    printf '%s' "${BASH_REMATCH[1]}"
}

ipt_ensure() {  # ipt_ensure TABLE CHAIN RULE...: add the rule unless it is already there
    local table="$1" chain="$2"
    shift 2
    iptables -w -t "$table" -C "$chain" "$@" 2>/dev/null || iptables -w -t "$table" -I "$chain" "$@"
}

ipt_remove() {
    local table="$1" chain="$2"
    shift 2
    while iptables -w -t "$table" -C "$chain" "$@" 2>/dev/null; do
        iptables -w -t "$table" -D "$chain" "$@"
    done
}

net_lock() {
    mkdir -p "$STATE_ROOT"
    exec 8>"$STATE_ROOT/.net.lock"
    flock 8
}

net_up() {
    local bridge="$1" subnet="$2" prefix
    prefix="$(check_subnet "$subnet")"
    [[ ${#bridge} -le 15 ]] || die "bridge name '$bridge' longer than 15 characters"
    net_lock
    if ! ip link show "$bridge" >/dev/null 2>&1; then
        ip link add "$bridge" type bridge
    fi
    ip addr replace "$prefix.1/24" dev "$bridge"
    ip link set "$bridge" up
    # Remember the machine's own ip_forward setting once, restore it when the last rig bridge
    # goes away (other scenarios may still be running when this one is destroyed).
    [[ -f $STATE_ROOT/.ip_forward.orig ]] || sysctl -n net.ipv4.ip_forward >"$STATE_ROOT/.ip_forward.orig"
    sysctl -qw net.ipv4.ip_forward=1
    ipt_ensure nat POSTROUTING -s "$subnet" ! -o "$bridge" -j MASQUERADE -m comment --comment "$TAG:$bridge"
    # Harmless when FORWARD's policy is ACCEPT, needed when it is DROP.
    ipt_ensure filter FORWARD -i "$bridge" -j ACCEPT -m comment --comment "$TAG:$bridge"
    ipt_ensure filter FORWARD -o "$bridge" -j ACCEPT -m comment --comment "$TAG:$bridge"
    echo "$subnet" >"$STATE_ROOT/.bridge-$bridge"
    log "network $bridge $subnet up"
}

net_down() {
    local bridge="$1" subnet="$2"
    check_subnet "$subnet" >/dev/null
    net_lock
    ipt_remove nat POSTROUTING -s "$subnet" ! -o "$bridge" -j MASQUERADE -m comment --comment "$TAG:$bridge"
    ipt_remove filter FORWARD -i "$bridge" -j ACCEPT -m comment --comment "$TAG:$bridge"
    ipt_remove filter FORWARD -o "$bridge" -j ACCEPT -m comment --comment "$TAG:$bridge"
    if ip link show "$bridge" >/dev/null 2>&1; then
        ip link delete "$bridge" type bridge
    fi
    rm -f "$STATE_ROOT/.bridge-$bridge"
    if ! compgen -G "$STATE_ROOT/.bridge-*" >/dev/null && [[ -f $STATE_ROOT/.ip_forward.orig ]]; then
        sysctl -qw "net.ipv4.ip_forward=$(cat "$STATE_ROOT/.ip_forward.orig")"
        rm -f "$STATE_ROOT/.ip_forward.orig"
    fi
    log "network $bridge $subnet down"
}

host_mount() {
    local hostdir="$1" lower="$2" name="$3" address="$4" hosts_file="$5" pubkey="$6"
    local prefix="${address%.*}"
    [[ -f $lower/.complete ]] || die "lower dir $lower is not a finished image (run build-image.sh)"
    mkdir -p "$hostdir/upper" "$hostdir/work" "$hostdir/root"
    if ! mountpoint -q "$hostdir/root"; then
        mount -t overlay overlay \
            -o "lowerdir=$lower,upperdir=$hostdir/upper,workdir=$hostdir/work" "$hostdir/root"
        echo changed
    fi
    local root="$hostdir/root"
    # Per-host identity the shared image deliberately lacks; written once, kept across reboots.
    if [[ ! -s $root/etc/machine-id ]]; then
        tr -d '-' </proc/sys/kernel/random/uuid >"$root/etc/machine-id"
    fi
    if ! compgen -G "$root/etc/ssh/ssh_host_*_key" >/dev/null; then
        ssh-keygen -q -A -f "$root"
    fi
    echo "$name" >"$root/etc/hostname"
    # No DNS between hosts: every host of the scenario is listed in every host's /etc/hosts.
    install -m 0644 "$hosts_file" "$root/etc/hosts"
    # "10-" sorts before the image's DHCP 80-container-host0.network, so this one applies.
    cat >"$root/etc/systemd/network/10-host0.network" <<EOF
[Match]
Name=host0

[Network]
Address=$address/24
Gateway=$prefix.1
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
    install -d -m 0700 "$root/root/.ssh"
    install -m 0600 "$pubkey" "$root/root/.ssh/authorized_keys"
}

launcher_alive() {
    local pid
    pid="$(cat "$1/launcher.pid" 2>/dev/null)" || return 1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

host_start() {
    local hostdir="$1" machine="$2" hostname="$3" bridge="$4"
    if launcher_alive "$hostdir"; then
        return 0
    fi
    mountpoint -q "$hostdir/root" || die "$hostdir/root is not mounted"
    # setsid: the host outlives the ansible task; stdio to a log so the task does not wait on it.
    setsid "$RIG_DIR/launch-host.sh" "$machine" "$hostname" "$hostdir/root" "$bridge" \
        >>"$hostdir/console.log" 2>&1 </dev/null &
    echo $! >"$hostdir/launcher.pid"
    echo changed
}

# Processes whose root directory is the host's tree: the guest, whatever nspawn left behind.
guest_pids() {
    local root="$1" p
    for p in /proc/[0-9]*; do
        if [[ "$(readlink "$p/root" 2>/dev/null)" == "$root" ]]; then
            echo "${p#/proc/}"
        fi
    done
}

host_stop() {
    local hostdir="$1" pid waited=0
    [[ -d $hostdir ]] || return 0
    if launcher_alive "$hostdir"; then
        pid="$(cat "$hostdir/launcher.pid")"
        kill -TERM "$pid"
        # A clean poweroff takes 2-4 s; give slow hosts 60 s before using force.
        while kill -0 "$pid" 2>/dev/null && [[ $waited -lt 60 ]]; do
            sleep 1
            waited=$((waited + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$hostdir did not power off within 60 s; killing it"
            pkill -KILL -P "$pid" || true
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    local stray
    stray="$(guest_pids "$hostdir/root")"
    if [[ -n $stray ]]; then
        # shellcheck disable=SC2086  # one pid per word
        kill -KILL $stray 2>/dev/null || true
        sleep 1
    fi
    if mountpoint -q "$hostdir/root"; then
        umount "$hostdir/root" || umount -l "$hostdir/root"
    fi
    # The console outlives the host, for the post-mortem of a failed run (molecule test
    # destroys the hosts right after a failed verify).
    if [[ -f $hostdir/console.log ]]; then
        local bridge_dir
        bridge_dir="$(dirname "$hostdir")"
        mkdir -p "$STATE_ROOT/last-console"
        cp "$hostdir/console.log" \
            "$STATE_ROOT/last-console/$(basename "$bridge_dir")-$(basename "$hostdir").log"
    fi
    rm -rf "$hostdir"
}

cmd="${1:-}"
shift || true
case "$cmd" in
    net-up) net_up "$@" ;;
    net-down) net_down "$@" ;;
    host-mount) host_mount "$@" ;;
    host-start) host_start "$@" ;;
    host-stop)
        # In parallel: each clean poweroff takes a few seconds.
        pids=()
        for hostdir in "$@"; do
            host_stop "$hostdir" &
            pids+=($!)
        done
        rc=0
        for pid in "${pids[@]}"; do
            wait "$pid" || rc=1
        done
        exit $rc
        ;;
    *) die "usage: rig.sh net-up|net-down|host-mount|host-start|host-stop ARGS (see header)" ;;
esac
