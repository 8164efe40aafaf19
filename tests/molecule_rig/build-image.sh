#!/usr/bin/env bash
# Build (or reuse) the cached Debian base image for the project's systemd-nspawn test hosts.
#
# Usage: build-image.sh            build the tarball if needed, unpack the shared lower dir,
#                                  print the lower dir's path on stdout (last line)
#        build-image.sh --rebuild  force a fresh debootstrap
#
# Which Debian: MOLECULE_DISTRO=trixie (Debian 13, the default: the real server's OS) or
# MOLECULE_DISTRO=bookworm (Debian 12, still supported).
# Which mirror: the one this machine's own apt sources use (so CI and laptops use whatever
# mirror or proxy they are already set up for); override with CHI_MOLECULE_MIRROR and
# CHI_MOLECULE_SECURITY_MIRROR.
#
# Outputs, all OUTSIDE the repository (the image embeds this machine's CA certificates, so it
# is machine-specific and must never be committed):
#   $CHI_MOLECULE_CACHE/<distro>.tar          the image (the thing worth caching in CI)
#   $CHI_MOLECULE_CACHE/<distro>.tar.stamp    recipe hash the tarball was built from
#   $CHI_MOLECULE_CACHE/rootfs-<distro>-<stamp>/  unpacked, never modified afterwards: the
#                                             shared read-only lower dir of every host's overlayfs
# The default cache is /var/cache/chi-molecule. Everything happens under an exclusive flock,
# so concurrent scenarios wait for one build instead of racing each other.
set -euo pipefail

CACHE_DIR="${CHI_MOLECULE_CACHE:-/var/cache/chi-molecule}"
SUITE="${MOLECULE_DISTRO:-trixie}"
TARBALL="$CACHE_DIR/$SUITE.tar"
HOST_CA_DIR=/usr/local/share/ca-certificates
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,iproute2,procps,cron,ca-certificates,rsync,openssh-server,curl,python3-venv

log() { printf 'build-image: %s\n' "$*" >&2; }

case "$SUITE" in
    bookworm | trixie) ;;
    *)
        log "MOLECULE_DISTRO must be trixie or bookworm, got '$SUITE'"
        exit 2
        ;;
esac

# Print "MAIN SECURITY" (a "-" for one not found): the Debian archive and security URIs of this
# machine's apt sources, one-line and deb822 formats. A URI counts as the archive when one of
# its suites is the machine's codename (or -updates), as security when it is <codename>-security.
host_mirrors() {
    local codename main="" security="" file line uris suites uri suite
    codename="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")"
    pick() {
        if [[ -z $security && ($2 == "$codename-security" || $2 == "$codename/updates") ]]; then
            security="$1"
        elif [[ -z $main && ($2 == "$codename" || $2 == "$codename-updates") ]]; then
            main="$1"
        fi
    }
    local re='^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+([^[:space:]]+)'
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        while read -r line; do
            [[ $line =~ $re ]] && pick "${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}"
        done <"$file"
    done
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file ]] || continue
        # deb822: stanzas end at a blank line (one is appended for the last stanza).
        uris="" suites=""
        while IFS= read -r line; do
            case "$line" in
                URIs:*) uris="${line#URIs:}" ;;
                Suites:*) suites="${line#Suites:}" ;;
            esac
            if [[ -z ${line//[[:space:]]/} ]]; then
                for uri in $uris; do
                    for suite in $suites; do pick "$uri" "$suite"; done
                done
                uris="" suites=""
            fi
        done < <(cat "$file" && echo)
    done
    printf '%s %s\n' "${main:--}" "${security:--}"
}

read -r FOUND_MIRROR FOUND_SECURITY < <(host_mirrors)
[[ $FOUND_MIRROR != - ]] || FOUND_MIRROR=""
[[ $FOUND_SECURITY != - ]] || FOUND_SECURITY=""
MIRROR="${CHI_MOLECULE_MIRROR:-$FOUND_MIRROR}"
SECURITY_MIRROR="${CHI_MOLECULE_SECURITY_MIRROR:-$FOUND_SECURITY}"
if [[ -z $MIRROR ]]; then
    log "no Debian mirror found in this machine's apt sources; set CHI_MOLECULE_MIRROR"
    exit 1
fi

if [[ $EUID -ne 0 ]]; then
    log "must run as root (debootstrap, chroot)"
    exit 1
fi
for tool in debootstrap flock sha256sum tar; do
    command -v "$tool" >/dev/null || { log "missing tool: $tool (apt-get install debootstrap util-linux)"; exit 1; }
done

# The recipe: this script, the package list and the host CA certificates. Any change to one of
# them yields a new stamp and thus a rebuild; nothing else triggers one.
recipe_stamp() {
    {
        sha256sum "$0" | cut -d' ' -f1
        echo "$SUITE $PACKAGES $MIRROR $SECURITY_MIRROR"
        if [[ -d $HOST_CA_DIR ]]; then
            find "$HOST_CA_DIR" -type f -name '*.crt' -print0 | sort -z | xargs -0r sha256sum
        fi
    } | sha256sum | cut -c1-16
}

build_tarball() {
    local work="$1" root="$1/root"
    log "debootstrap $SUITE from $MIRROR (about a minute)"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >&2

    {
        echo "deb $MIRROR $SUITE main"
        echo "deb $MIRROR $SUITE-updates main"
        if [[ -n $SECURITY_MIRROR ]]; then
            echo "deb $SECURITY_MIRROR $SUITE-security main"
        fi
    } >"$root/etc/apt/sources.list"

    # pip/HTTPS inside the hosts fail with CERTIFICATE_VERIFY_FAILED on these machines unless
    # the host's extra CAs are trusted inside the image too.
    if compgen -G "$HOST_CA_DIR/*.crt" >/dev/null; then
        mkdir -p "$root$HOST_CA_DIR"
        cp "$HOST_CA_DIR"/*.crt "$root$HOST_CA_DIR/"
    fi
    chroot "$root" update-ca-certificates >&2

    # apt-daily takes the dpkg lock in the middle of a converge; gettys only spam the console.
    systemctl --root="$root" mask apt-daily.timer apt-daily-upgrade.timer \
        apt-daily.service apt-daily-upgrade.service \
        console-getty.service getty@.service serial-getty@.service getty.target >&2
    # Each host gets a static 10-host0.network at create time; networkd applies it.
    systemctl --root="$root" enable systemd-networkd.service ssh.service >&2

    # Per-host identity is written by create.yml: host keys, machine-id, hostname.
    rm -f "$root"/etc/ssh/ssh_host_*
    : >"$root/etc/machine-id"
    rm -f "$root/etc/hostname" "$root/var/lib/dbus/machine-id"

    # Empty apt lists with an old mtime: Ansible's cache_valid_time then knows they are stale
    # (an emptied directory with a fresh mtime looks "recently updated" and apt finds nothing).
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
    mkdir -p "$root/var/lib/apt/lists/partial"
    touch -d '2000-01-01 00:00:00' "$root/var/lib/apt/lists/partial" "$root/var/lib/apt/lists"

    log "packing $TARBALL"
    tar --numeric-owner --xattrs --acls -C "$root" -cf "$work/$SUITE.tar" .
    mv -f "$work/$SUITE.tar" "$TARBALL"
}

main() {
    local rebuild=0
    [[ ${1:-} == --rebuild ]] && rebuild=1

    mkdir -p "$CACHE_DIR"
    exec 9>"$CACHE_DIR/.lock"
    if ! flock -n 9; then
        log "another caller holds $CACHE_DIR/.lock; waiting"
        flock 9
    fi

    local stamp
    stamp="$(recipe_stamp)"
    if [[ $rebuild -eq 1 || ! -f $TARBALL || "$(cat "$TARBALL.stamp" 2>/dev/null)" != "$stamp" ]]; then
        local work
        work="$(mktemp -d "$CACHE_DIR/build.XXXXXX")"
        # shellcheck disable=SC2064  # expand now: the path is fixed for this build
        trap "rm -rf '$work'" EXIT
        local started=$SECONDS
        build_tarball "$work"
        echo "$stamp" >"$TARBALL.stamp"
        rm -rf "$work"
        trap - EXIT
        log "built $TARBALL ($(du -h "$TARBALL" | cut -f1)) in $((SECONDS - started)) s"
    else
        log "reusing $TARBALL (stamp $stamp)"
    fi

    local rootfs="$CACHE_DIR/rootfs-$SUITE-$stamp"
    if [[ ! -f $rootfs/.complete ]]; then
        rm -rf "$rootfs" "$rootfs.tmp"
        mkdir -p "$rootfs.tmp"
        tar --numeric-owner --xattrs --acls -C "$rootfs.tmp" -xf "$TARBALL"
        touch "$rootfs.tmp/.complete"
        mv "$rootfs.tmp" "$rootfs"
        log "unpacked lower dir $rootfs"
    fi

    # Drop this distro's lower dirs of older recipes (and those of the single-distro rig,
    # named rootfs-<stamp>) that no running host still uses.
    local old
    for old in "$CACHE_DIR"/rootfs-"$SUITE"-* "$CACHE_DIR"/rootfs-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]*; do
        [[ -d $old && $old != "$rootfs" ]] || continue
        if ! grep -q "lowerdir=$old" /proc/mounts; then
            rm -rf "$old"
        fi
    done

    echo "$rootfs"
}

main "$@"
