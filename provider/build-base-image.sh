#!/usr/bin/env bash
# Build the Paygress base image (Debian 12 minbase + openssh-server) with debootstrap and import
# it into LXD under an alias (default: paygress-debian-12, the default image name in the config).
#
# Why it looks like this:
# - Provider hosts often cannot reach a public image server, so the image is built locally from
#   the Debian mirror the host's apt already uses (read from apt's own configuration; no host
#   name is written here). Set PAYGRESS_IMAGE_MIRROR to override.
# - Every container must get its own SSH host keys, so the image carries none: an ssh.service
#   drop-in generates them at first boot, before sshd starts.
# - /etc/machine-id is emptied so systemd gives each container its own id (and its own DHCP
#   client id on the bridge).
# - The rootfs is stored as an uncompressed tar: the `dir` storage pool unpacks the image for
#   every new container, and skipping gzip there is the biggest single saving in spawn time.
# - Idempotent: if the alias exists nothing is done; the built tarballs are cached under
#   /var/cache/paygress so a rerun (or a fresh LXD) imports without running debootstrap again.
#
# Settings (environment):
#   PAYGRESS_IMAGE_ALIAS    image alias                  (default paygress-debian-12)
#   PAYGRESS_IMAGE_SUITE    Debian suite                 (default bookworm)
#   PAYGRESS_IMAGE_MIRROR   Debian mirror URL            (default: from apt's configuration)
#   PAYGRESS_CACHE_DIR      cache for built tarballs     (default /var/cache/paygress)
#   PAYGRESS_IMAGE_REBUILD  1 = ignore the cache and rebuild
#   PAYGRESS_IMAGE_HOST_KEY_TYPES  SSH host key types made at first boot (default "ed25519 ecdsa";
#                           "all" runs `ssh-keygen -A`, which adds RSA)
#   PAYGRESS_IMAGE_NAMESERVER  resolver inside containers (default: the LXD bridge address)
set -euo pipefail

# What this script installs (without Recommends: debootstrap only recommends the keyring and gpgv
# it needs to verify the mirror's signatures, so they are named) and the commands it runs.
# `lxc` comes from provider/lxd-setup.sh, which must run first. Checked by tools/check-setup-deps.py.
PACKAGES=(debootstrap gpgv debian-archive-keyring)
COMMANDS=(debootstrap wget gpgv tar gzip chroot awk find mktemp du cut)
if [ "${1:-}" = --print-deps ]; then
    printf 'package %s\n' "${PACKAGES[@]}"
    printf 'command %s\n' "${COMMANDS[@]}"
    exit 0
fi
[ $# -eq 0 ] || { echo "usage: build-base-image.sh [--print-deps]" >&2; exit 2; }

ALIAS=${PAYGRESS_IMAGE_ALIAS:-paygress-debian-12}
SUITE=${PAYGRESS_IMAGE_SUITE:-bookworm}
CACHE_DIR=${PAYGRESS_CACHE_DIR:-/var/cache/paygress}
REBUILD=${PAYGRESS_IMAGE_REBUILD:-0}
HOST_KEY_TYPES=${PAYGRESS_IMAGE_HOST_KEY_TYPES:-ed25519 ecdsa}
case " $HOST_KEY_TYPES " in *[!a-z0-9\ ]*) echo "bad PAYGRESS_IMAGE_HOST_KEY_TYPES" >&2; exit 1;; esac
ROOTFS_TAR="$CACHE_DIR/$ALIAS.rootfs.tar"
META_TAR="$CACHE_DIR/$ALIAS.meta.tar.gz"

log() { printf 'build-base-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
            || { apt-get update -qq && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
    fi
    # The signatures of the mirror are checked; never build from an unverified mirror.
    [ -s /usr/share/keyrings/debian-archive-keyring.gpg ] || die "debian-archive-keyring is missing"
}

[ "$(id -u)" -eq 0 ] || die "must run as root"
install_packages
command -v lxc >/dev/null || die "lxc not found: run provider/lxd-setup.sh first"
lxd waitready --timeout=10 >/dev/null 2>&1 || die "LXD is not running: run provider/lxd-setup.sh first"

if lxc image info "$ALIAS" >/dev/null 2>&1 && [ "$REBUILD" != 1 ]; then
    log "image $ALIAS already present; nothing to do"
    exit 0
fi

# Print the mirror apt uses for $SUITE: a deb822 stanza (/etc/apt/sources.list.d/*.sources)
# whose Suites list $SUITE, or a one-line `deb` entry (/etc/apt/sources.list, *.list).
apt_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$SUITE" '
            function flush() {
                if (uris != "" && types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ")) {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                uris = ""; suites = ""; types = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            tolower($1) == "uris:"   { $1 = ""; uris = $0; sub(/^ +/, "", uris) }
            tolower($1) == "suites:" { $1 = ""; suites = $0; sub(/^ +/, "", suites) }
            tolower($1) == "types:"  { $1 = ""; types = $0; sub(/^ +/, "", types) }
            END { if (!found) flush() }
        ' "$f"
    done | head -n1 | grep . && return 0
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [options] URI SUITE COMPONENTS...
        awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f"
    done | head -n1 | grep .
}

build_rootfs() {
    local mirror work rootfs t
    mirror=${PAYGRESS_IMAGE_MIRROR:-}
    if [ -z "$mirror" ]; then
        mirror=$(apt_mirror) || die "no apt source for suite '$SUITE' found in /etc/apt; set PAYGRESS_IMAGE_MIRROR"
    fi
    log "debootstrap $SUITE from $mirror"
    mkdir -p "$CACHE_DIR"
    work=$(mktemp -d "$CACHE_DIR/build.XXXXXX")
    # shellcheck disable=SC2064 # expand $work now
    trap "rm -rf '$work'" EXIT
    rootfs="$work/rootfs"
    t=$(now)
    debootstrap --variant=minbase --include=openssh-server,systemd-sysv,udev,iproute2 \
        "$SUITE" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    log "debootstrap done in $(elapsed "$t")"

    # Nothing host-specific or secret may stay in the image.
    rm -f "$rootfs"/etc/ssh/ssh_host_*
    : >"$rootfs/etc/machine-id"
    rm -f "$rootfs/var/lib/dbus/machine-id"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    rm -rf "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old "$rootfs"/tmp/*
    # Smaller image, faster unpack for every new container (the dir pool copies the whole rootfs
    # each time): documentation, message translations and the udev hardware database, which a
    # container never uses. dpkg is told to keep leaving them out on later installs.
    rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    rm -rf "$rootfs"/usr/lib/udev/hwdb.bin "$rootfs"/usr/lib/udev/hwdb.d/* "$rootfs"/etc/udev/hwdb.bin
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/paygress-minimal" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/lib/udev/hwdb.d/*
DPKG

    # Host keys at first boot, before sshd starts. ExecStartPre is reset because Debian's own
    # `sshd -t` check runs first and fails while there are no keys (sshd itself refuses a bad
    # config anyway). By default only Ed25519 and ECDSA keys are made: a 3072-bit RSA key takes
    # ~0.4 s of CPU on every first boot, a third of spawn-to-SSH time, and every OpenSSH client
    # since 6.5 speaks Ed25519. HOST_KEY_TYPES=all gives `ssh-keygen -A` (RSA too).
    mkdir -p "$rootfs/etc/systemd/system/ssh.service.d"
    if [ "$HOST_KEY_TYPES" = all ]; then
        keygen='/usr/bin/ssh-keygen -A'
    else
        keygen=/usr/local/sbin/paygress-ssh-host-keys
        cat >"$rootfs$keygen" <<KEYGEN
#!/bin/sh
# Make this container's own SSH host keys on first boot (the image ships none).
set -e
for t in $HOST_KEY_TYPES; do
    f=/etc/ssh/ssh_host_\${t}_key
    [ -s "\$f" ] || /usr/bin/ssh-keygen -q -t "\$t" -N "" -f "\$f"
done
KEYGEN
        chmod 0755 "$rootfs$keygen"
        mkdir -p "$rootfs/etc/ssh/sshd_config.d"
        for t in $HOST_KEY_TYPES; do
            printf 'HostKey /etc/ssh/ssh_host_%s_key\n' "$t"
        done >"$rootfs/etc/ssh/sshd_config.d/10-paygress-host-keys.conf"
    fi
    cat >"$rootfs/etc/systemd/system/ssh.service.d/10-paygress-host-keys.conf" <<UNIT
[Service]
ExecStartPre=
ExecStartPre=$keygen
UNIT

    # Network: DHCP on eth0 from the LXD bridge (udev is in the image, or networkd stays pending).
    mkdir -p "$rootfs/etc/systemd/network"
    cat >"$rootfs/etc/systemd/network/10-eth0.network" <<'NET'
[Match]
Name=eth0

[Network]
DHCP=ipv4
NET
    chroot "$rootfs" systemctl enable systemd-networkd.service >/dev/null 2>&1
    # No one waits for "network online" in a container that only needs sshd on loopback.
    chroot "$rootfs" systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1 || true
    # Without systemd-resolved nothing rewrites resolv.conf: point it at the LXD bridge's dnsmasq
    # (the host's own resolver, copied in by debootstrap, is not reachable from a container).
    nameserver=${PAYGRESS_IMAGE_NAMESERVER:-$(lxc network get "${PAYGRESS_LXD_BRIDGE:-lxdbr0}" ipv4.address 2>/dev/null | cut -d/ -f1)}
    if [ -n "$nameserver" ]; then printf 'nameserver %s\n' "$nameserver" >"$rootfs/etc/resolv.conf"; fi
    echo debian >"$rootfs/etc/hostname"

    t=$(now)
    tar --numeric-owner --xattrs -C "$rootfs" -cf "$work/rootfs.tar" .
    log "rootfs tar $(du -m "$work/rootfs.tar" | cut -f1) MB in $(elapsed "$t")"


    # Publish into the cache atomically: a half-written tarball must never look like a cache hit.
    mv "$work/rootfs.tar" "$ROOTFS_TAR.tmp" && mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$work"
    trap - EXIT
}

# Image metadata (architecture, templates). Cheap, so always written fresh; only the rootfs is
# cached.
build_meta() {
    local meta
    meta=$(mktemp -d)
    mkdir -p "$meta/templates"
    cat >"$meta/metadata.yaml" <<META
architecture: x86_64
creation_date: $(date +%s)
properties:
  description: Paygress base image, Debian ${SUITE} minbase with openssh-server
  os: debian
  release: ${SUITE}
  architecture: amd64
templates:
  /etc/hostname:
    when: [create, copy]
    template: hostname.tpl
  /etc/hosts:
    when: [create, copy]
    template: hosts.tpl
  /etc/ssh/sshd_config.d/05-paygress-instance.conf:
    when: [create, copy]
    template: sshd-instance.tpl
META
    printf '{{ container.name }}\n' >"$meta/templates/hostname.tpl"
    # The backend puts a random, non-secret nonce in the instance config; sshd appends it to its
    # version banner, so the backend can tell that the banner it reads on the host port comes from
    # this very container (and not from some other listener on that port) without waiting for
    # LXD to confirm the proxy device, which costs a fixed second per start.
    cat >"$meta/templates/sshd-instance.tpl" <<'TPL'
# Written by LXD at instance creation from the config key user.paygress.nonce.
VersionAddendum {{ config_get("user.paygress.nonce", "none") }}
TPL
    cat >"$meta/templates/hosts.tpl" <<'HOSTS'
127.0.0.1   localhost
127.0.1.1   {{ container.name }}
::1         localhost ip6-localhost ip6-loopback
ff02::1     ip6-allnodes
ff02::2     ip6-allrouters
HOSTS
    tar -C "$meta" -czf "$META_TAR" metadata.yaml templates
    rm -rf "$meta"
}

if [ "$REBUILD" = 1 ] || [ ! -s "$ROOTFS_TAR" ]; then
    build_rootfs
else
    log "using cached $ROOTFS_TAR"
fi
build_meta

if lxc image info "$ALIAS" >/dev/null 2>&1; then
    log "replacing existing image $ALIAS"
    lxc image delete "$ALIAS"
fi
t=$(now)
lxc image import "$META_TAR" "$ROOTFS_TAR" --alias "$ALIAS" >/dev/null
log "imported $ALIAS in $(elapsed "$t")"
