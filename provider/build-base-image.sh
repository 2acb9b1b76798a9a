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
# - Idempotent: if the alias exists and was made by the current tuning (TUNE_VERSION, kept in the
#   image's properties) nothing is done; the built tarballs are cached under /var/cache/paygress
#   so a rerun (or a fresh LXD) imports without running debootstrap again. A cache made by an
#   older tuning is unpacked, tuned again (every step of tune_rootfs is idempotent) and repacked,
#   which needs no mirror. The alias is moved to the new image in one request, so a container
#   created meanwhile never finds it missing; the previous image is kept (see the end).
# - Fast boot and fast logins (tune_rootfs): sshd starts as soon as the journal's socket is
#   there instead of after network.target, units that do nothing in a container are
#   masked, and the per-login motd regeneration is off. The reasons, and why none of it weakens
#   anything, are next to each step.
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
COMMANDS=(debootstrap wget gpgv tar gzip chroot awk find mktemp du cut sha256sum)
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
# Bump when tune_rootfs changes: cached rootfs tarballs and imported images of an older tuning
# are then tuned again. Version 1 had no stamp (everything up to the nonce template).
TUNE_VERSION=2
TUNE_STAMP="$ROOTFS_TAR.tune"
# SHA-256 of Debian's own ssh.service the copy in tune_rootfs was made from (bookworm,
# openssh-server 1:9.2p1-2+deb12u*). If Debian changes its unit, the build stops here so the copy
# is reviewed instead of silently freezing an old unit.
DEBIAN_SSH_UNIT_SHA256=35b2858970feb78e985900b33ba8cb84249dfadbf296155e5639cafcf1dd40a3

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
command -v lxc >/dev/null || die "lxc not found: run provider/lxd-setup.sh first"
lxd waitready --timeout=10 >/dev/null 2>&1 || die "LXD is not running: run provider/lxd-setup.sh first"

# The tuning an imported image was made with (its `paygress.tune` property; none: 1).
image_tune() {
    lxc image show "$ALIAS" 2>/dev/null | awk '$1 == "paygress.tune:" { gsub(/"/, "", $2); print $2; f = 1 } END { if (!f) print 1 }'
}

if lxc image info "$ALIAS" >/dev/null 2>&1 && [ "$REBUILD" != 1 ] && [ "$(image_tune)" = "$TUNE_VERSION" ]; then
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

# Everything done to the debootstrapped tree. Idempotent: it is also applied again to a cached
# tree of an older TUNE_VERSION.
tune_rootfs() {
    local rootfs=$1 keygen nameserver t
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

    # --- Version 2: boot and login speed. -------------------------------------------------------
    # sshd early. Debian orders ssh.service after network.target, i.e. after systemd-networkd,
    # which waits for udevd and its coldplug: sshd listened ~0.6 s into a container's boot on one
    # vCPU. sshd needs none of it: it listens on the wildcard address, the backend reaches it on
    # the container's own loopback through the proxy device, and the root file system (all it
    # reads) is mounted by LXD before init runs. Only the journal socket is waited for, so its
    # log goes where the rest does. An ordering can only be added in a
    # drop-in, never removed, so this is the whole unit, Debian's own lines otherwise (an upgrade
    # of openssh-server does not replace it; it changes nothing sshd does, only when it starts).
    # The ExecStartPre of the host-key drop-in below still applies.
    local unit=$rootfs/usr/lib/systemd/system/ssh.service
    [ -f "$unit" ] || unit=$rootfs/lib/systemd/system/ssh.service
    [ "$(sha256sum <"$unit" | cut -d' ' -f1)" = "$DEBIAN_SSH_UNIT_SHA256" ] \
        || die "Debian's ssh.service changed ($unit): review the copy in tune_rootfs, then update DEBIAN_SSH_UNIT_SHA256"
    cat >"$rootfs/etc/systemd/system/ssh.service" <<'UNIT'
[Unit]
Description=OpenBSD Secure Shell server
Documentation=man:sshd(8) man:sshd_config(5)
# Paygress: started as soon as the journal's socket is up, not after network.target (see
# provider/build-base-image.sh). LXD mounts the root file system before init starts.
DefaultDependencies=no
After=systemd-journald.socket
Conflicts=shutdown.target
Before=shutdown.target
ConditionPathExists=!/etc/ssh/sshd_not_to_be_run

[Service]
EnvironmentFile=-/etc/default/ssh
ExecStartPre=/usr/sbin/sshd -t
ExecStart=/usr/sbin/sshd -D $SSHD_OPTS
ExecReload=/usr/sbin/sshd -t
ExecReload=/bin/kill -HUP $MAINPID
KillMode=process
Restart=on-failure
RestartPreventExitStatus=255
Type=notify
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755

[Install]
WantedBy=multi-user.target
Alias=sshd.service
UNIT
    # With sshd up that early, systemd-tmpfiles would create /run/nologin ("System is booting
    # up") after sshd answers and systemd-user-sessions remove it later, so a login could be
    # refused right after the backend saw the banner. That file only guards logins during boot on
    # a multi-user host; here the container is one buyer's, so it is never made (an operator's
    # /etc/nologin still works).
    ln -sf /dev/null "$rootfs/etc/tmpfiles.d/systemd-nologin.conf"
    # Units with nothing to do in an unprivileged container, masked (each is CPU on every boot
    # of a 1-vCPU container, and the timers wake idle pool members): module loading (the
    # host's kernel; a container cannot load modules), pstore (the host's), network settings from
    # the kernel command line (the host's), ext4 scrubbing and fstrim (the host's storage).
    for u in modprobe@.service systemd-modules-load.service systemd-pstore.service \
        systemd-network-generator.service e2scrub_reap.service e2scrub_all.timer fstrim.timer; do
        ln -sf /dev/null "$rootfs/etc/systemd/system/$u"
    done
    rm -f "$rootfs/etc/systemd/system/sysinit.target.wants/systemd-network-generator.service" \
        "$rootfs/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service" \
        "$rootfs/etc/systemd/system/timers.target.wants/e2scrub_all.timer" \
        "$rootfs/etc/systemd/system/timers.target.wants/fstrim.timer"
    # No motd regeneration on every login: pam_motd runs run-parts /etc/update-motd.d (a shell and
    # uname) in each session, ~25 ms of every login measured in a pool member. Cosmetic only.
    sed -i '/pam_motd\.so/d' "$rootfs/etc/pam.d/sshd"
}

build_rootfs() {
    local mirror work rootfs t
    # Only debootstrap needs packages (and maybe the mirror); a cached tree does not.
    install_packages
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

    tune_rootfs "$rootfs"

    t=$(now)
    tar --numeric-owner --xattrs -C "$rootfs" -cf "$work/rootfs.tar" .
    log "rootfs tar $(du -m "$work/rootfs.tar" | cut -f1) MB in $(elapsed "$t")"


    # Publish into the cache atomically: a half-written tarball must never look like a cache hit.
    mv "$work/rootfs.tar" "$ROOTFS_TAR.tmp" && mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    echo "$TUNE_VERSION" >"$TUNE_STAMP"
    rm -rf "$work"
    trap - EXIT
}

# A cached tree of an older tuning: unpack, tune again, repack (no mirror needed).
retune_cached() {
    local work t
    log "tuning cached $ROOTFS_TAR again (tuning $(cat "$TUNE_STAMP" 2>/dev/null || echo 1) -> $TUNE_VERSION)"
    work=$(mktemp -d "$CACHE_DIR/build.XXXXXX")
    # shellcheck disable=SC2064 # expand $work now
    trap "rm -rf '$work'" EXIT
    mkdir "$work/rootfs"
    t=$(now)
    tar --numeric-owner --xattrs -xpf "$ROOTFS_TAR" -C "$work/rootfs"
    tune_rootfs "$work/rootfs"
    tar --numeric-owner --xattrs -C "$work/rootfs" -cf "$work/rootfs.tar" .
    mv "$work/rootfs.tar" "$ROOTFS_TAR.tmp" && mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    echo "$TUNE_VERSION" >"$TUNE_STAMP"
    log "tuned again in $(elapsed "$t")"
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
  paygress.tune: "${TUNE_VERSION}"
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
elif [ "$(cat "$TUNE_STAMP" 2>/dev/null || echo 1)" != "$TUNE_VERSION" ]; then
    retune_cached
else
    log "using cached $ROOTFS_TAR"
fi
build_meta

fingerprint() { lxc image info "$1" 2>/dev/null | awk '$1 == "Fingerprint:" { print $2 }' || true; }
t=$(now)
out=$(lxc image import "$META_TAR" "$ROOTFS_TAR" 2>&1) || die "image import failed: $out"
new=$(printf '%s\n' "$out" | awk '/fingerprint:/ { print $NF }' | tail -n1)
[ -n "$new" ] || die "image import printed no fingerprint: $out"
old=$(fingerprint "$ALIAS")
if [ -n "$old" ]; then
    # One request moves the alias, so a create meanwhile never finds it missing. Instances made
    # from the old image keep working (the storage driver keeps what they still share).
    log "replacing existing image $ALIAS"
    lxc query -X PUT "/1.0/images/aliases/$ALIAS" \
        --data "{\"target\": \"$new\", \"description\": \"\"}" >/dev/null
    # The previous image is kept: a create that already resolved the alias to it must not fail
    # half-way. The backend's warm pool removes its members made from it (their base image is
    # no longer the alias's target); delete the image once nothing is made from it any more.
    [ "$old" = "$new" ] || log "previous image $old kept; remove it with: lxc image delete $old"
else
    lxc image alias create "$ALIAS" "$new"
fi
log "imported $ALIAS in $(elapsed "$t")"
