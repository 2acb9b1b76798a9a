#!/usr/bin/env bash
# Install and initialise LXD for Paygress on Debian/Ubuntu, without assuming systemd.
#
# Why it looks like this:
# - Many VPS images and every CI container run without systemd as PID 1, so the daemons are
#   started by hand, detached with setsid, each with a log file.
# - nftables must be installed before LXD starts, otherwise LXD finds no firewall driver and
#   the bridge gets no NAT.
# - lxcfs must run before LXD starts: it is what makes `free` and `nproc` inside a container
#   show the container's limits instead of the host's.
# - `lxd init --auto` fails on hosts where it cannot find an unused subnet by itself, so the
#   bridge gets a fixed address from a preseed (override with PAYGRESS_LXD_BRIDGE_ADDR).
#
# - Packages are installed without their Recommends (no surprise daemons on a provider host), so
#   every package LXD needs at run time is named here: dnsmasq-base is only a Recommends of lxd,
#   yet LXD runs dnsmasq for its bridge. `--print-deps` prints the packages and the commands this
#   script and the daemons it starts call; tools/check-setup-deps.py checks that one covers the
#   other on any machine (tools/test.sh runs it after this script).
#
# Idempotent: when LXD is already up and initialised it only checks and exits (well under 1 s).
# Runs with no input. Usage: lxd-setup.sh [--print-deps]. Settings (environment):
#   PAYGRESS_LXD_BRIDGE_ADDR  bridge address/prefix     (default 10.77.0.1/24)
#   PAYGRESS_LXD_BRIDGE       bridge name               (default lxdbr0)
#   PAYGRESS_LXD_WORKLOAD_BRIDGE       bridge for workloads only (default paygressbr0; "" = none)
#   PAYGRESS_LXD_WORKLOAD_BRIDGE_ADDR  its address/prefix        (default 10.78.0.1/24)
#   PAYGRESS_LXD_LOG_DIR      where daemon logs go      (default /var/log/lxd)
#   PAYGRESS_LXD_STORAGE      driver of the pool "default": auto (default), btrfs or dir
#   PAYGRESS_LXD_POOL_SIZE    size of the btrfs loop file (default 30GiB)
#
# btrfs (a loop file here, or a real partition set up by hand) makes a new container a snapshot
# (~0.1 s; spawn-to-SSH measured 1.13 s against 2.75 s on dir) and is what lets tier disk sizes be
# enforced as quotas, so `auto` picks it whenever the kernel has btrfs and loop devices. dir works
# everywhere, but every new container is a full unpack of the image (~120 MB: 0.2-2 s depending
# on the machine) and a tenant can fill the host's disk. The choice is made once, when LXD is
# first initialised; re-runs never change it.
set -euo pipefail

BRIDGE_ADDR=${PAYGRESS_LXD_BRIDGE_ADDR:-10.77.0.1/24}
BRIDGE=${PAYGRESS_LXD_BRIDGE:-lxdbr0}
# Workloads get a bridge of their own: LXD 5.0 puts network ACLs on bridges only, and the backend
# keeps its egress ACL (no host, link-local or private destinations) on this one
# (`backend.lxd.egress_network`), leaving the default bridge as it is.
WORKLOAD_BRIDGE=${PAYGRESS_LXD_WORKLOAD_BRIDGE-paygressbr0}
WORKLOAD_BRIDGE_ADDR=${PAYGRESS_LXD_WORKLOAD_BRIDGE_ADDR:-10.78.0.1/24}
LOG_DIR=${PAYGRESS_LXD_LOG_DIR:-/var/log/lxd}
LXD_DIR=${LXD_DIR:-/var/lib/lxd}
SOCKET="$LXD_DIR/unix.socket"
LXCFS_DIR=/var/lib/lxcfs
STORAGE=${PAYGRESS_LXD_STORAGE:-auto}
POOL_SIZE=${PAYGRESS_LXD_POOL_SIZE:-30GiB}
case "$STORAGE" in auto | dir | btrfs) ;; *) echo "lxd-setup: PAYGRESS_LXD_STORAGE must be auto, btrfs or dir" >&2; exit 1 ;; esac
kernel_has_btrfs() {
    { grep -qw btrfs /proc/filesystems 2>/dev/null \
        || [ -d "/lib/modules/$(uname -r)/kernel/fs/btrfs" ]; } && [ -e /dev/loop-control ]
}
STORAGE_WHY=""
if [ "$STORAGE" = auto ]; then
    if kernel_has_btrfs; then
        STORAGE=btrfs
    else
        STORAGE=dir
        STORAGE_WHY=" (no btrfs or loop devices in this kernel: disk sizes are not enforced)"
    fi
fi

# Packages, in install order (nftables first: LXD picks its firewall driver when it starts), and
# the commands this script and the daemons it starts run: LXD itself runs dnsmasq (bridge DHCP
# and DNS), nft (bridge NAT), rsync, unsquashfs and xz (image unpack).
FIRST_PACKAGES=(nftables)
PACKAGES=(iproute2 lxcfs lxd lxd-client dnsmasq-base)
COMMANDS=(nft ip lxcfs lxd lxc dnsmasq rsync unsquashfs xz mountpoint umount setsid cmp)
if [ "$STORAGE" = btrfs ]; then
    PACKAGES+=(btrfs-progs)
    COMMANDS+=(mkfs.btrfs btrfs)
fi
if [ "${1:-}" = --print-deps ]; then
    printf 'package %s\n' "${FIRST_PACKAGES[@]}" "${PACKAGES[@]}"
    printf 'command %s\n' "${COMMANDS[@]}"
    exit 0
fi
[ $# -eq 0 ] || { echo "usage: lxd-setup.sh [--print-deps]" >&2; exit 2; }

log() { printf 'lxd-setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

apt_install() {
    local missing=() p
    for p in "$@"; do installed "$p" || missing+=("$p"); done
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # An update only when the package lists cannot resolve the name yet.
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; then
        apt-get update -qq
        apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# 1. Packages. nftables first: LXD picks its firewall driver when it starts.
apt_install "${FIRST_PACKAGES[@]}"
apt_install "${PACKAGES[@]}"

# 1b. Kernel limits for many containers (LXD's production-setup values), raised, never lowered.
# Each container's systemd takes inotify instances from one per-user budget (the containers'
# root maps to the same host uid), and at the default of 128 the ~15th container's init fails
# with "Too many open files" and exits: every spawn after that fails. dmesg_restrict keeps the
# kernel log from tenants. Written to /proc/sys directly (no procps needed) and to
# /etc/sysctl.d so a boot keeps them.
SYSCTLS=(
    fs.inotify.max_user_instances=1048576
    fs.inotify.max_user_watches=1048576
    fs.inotify.max_queued_events=1048576
    vm.max_map_count=262144
    kernel.keys.maxkeys=2000
    kernel.keys.maxbytes=2000000
    kernel.dmesg_restrict=1
)
sysctl_conf=/etc/sysctl.d/60-paygress-lxd.conf
if [ -d /etc/sysctl.d ] && ! printf '%s\n' "${SYSCTLS[@]}" | cmp -s - "$sysctl_conf"; then
    printf '%s\n' "${SYSCTLS[@]}" >"$sysctl_conf"
fi
for kv in "${SYSCTLS[@]}"; do
    key=${kv%%=*} want=${kv#*=} file=/proc/sys/${key//.//}
    [ -w "$file" ] || { log "warning: cannot set $key (read-only here)"; continue; }
    have=$(cat "$file")
    if [ "$have" -lt "$want" ]; then
        log "raising $key from $have to $want"
        echo "$want" >"$file" || log "warning: cannot raise $key"
    fi
done

# 2. lxcfs, before lxd (LXD only notices lxcfs at start).
if ! mountpoint -q "$LXCFS_DIR" 2>/dev/null; then
    log "starting lxcfs"
    # A stale fuse mount (lxcfs died) shows as "Transport endpoint is not connected" and makes
    # even mkdir fail, so it is detached before anything touches the directory.
    umount -l "$LXCFS_DIR" 2>/dev/null || true
    mkdir -p "$LXCFS_DIR" "$LOG_DIR"
    setsid lxcfs "$LXCFS_DIR" </dev/null >>"$LOG_DIR/lxcfs.log" 2>&1 &
    for _ in $(seq 1 50); do mountpoint -q "$LXCFS_DIR" && break; sleep 0.1; done
    mountpoint -q "$LXCFS_DIR" || log "warning: lxcfs did not mount; containers will see host memory/cpu in free/nproc"
fi

# 3. lxd itself.
if ! lxd waitready --timeout=1 >/dev/null 2>&1; then
    mkdir -p "$LOG_DIR"
    if [ -x /usr/libexec/lxd/lxd-apparmor-load ]; then
        /usr/libexec/lxd/lxd-apparmor-load >>"$LOG_DIR/apparmor-load.log" 2>&1 || true
    fi
    log "starting lxd (log: $LOG_DIR/lxd.log)"
    # --group root: the socket stays root-only; the provider runs as root or is given access
    # explicitly by the operator.
    setsid lxd --group root --logfile="$LOG_DIR/lxd.log" </dev/null >>"$LOG_DIR/lxd.out" 2>&1 &
    lxd waitready --timeout=60 || die "lxd did not become ready; see $LOG_DIR/lxd.log and $LOG_DIR/lxd.out"
fi
[ -S "$SOCKET" ] || die "lxd is up but $SOCKET is missing"

# 4. Initialise: storage pool, bridge, default profile. Skipped when all three are in place.
initialised() {
    lxc storage show default >/dev/null 2>&1 || return 1
    lxc network show "$BRIDGE" >/dev/null 2>&1 || return 1
    local profile
    profile=$(lxc profile show default 2>/dev/null) || return 1
    grep -q '^  root:' <<<"$profile" && grep -q '^  eth0:' <<<"$profile"
}

# 5. The workloads' own bridge (after 4, or on its own when LXD was initialised earlier).
workload_bridge() {
    [ -n "$WORKLOAD_BRIDGE" ] || return 0
    if lxc network show "$WORKLOAD_BRIDGE" >/dev/null 2>&1; then
        return 0
    fi
    local prefix=${WORKLOAD_BRIDGE_ADDR%.*}.
    if ip -4 route show | grep -q "^${prefix//./\\.}"; then
        die "the host already routes ${prefix}0; set PAYGRESS_LXD_WORKLOAD_BRIDGE_ADDR to a free subnet"
    fi
    log "creating the workload bridge $WORKLOAD_BRIDGE $WORKLOAD_BRIDGE_ADDR (set backend.lxd.egress_network = \"$WORKLOAD_BRIDGE\")"
    lxc network create "$WORKLOAD_BRIDGE" ipv4.address="$WORKLOAD_BRIDGE_ADDR" ipv4.nat=true \
        ipv6.address=none >/dev/null
}

if initialised; then
    log "LXD already initialised (pool default, bridge $BRIDGE, default profile)"
    workload_bridge
    exit 0
fi

# The bridge subnet must not collide with a route the host already has.
subnet_prefix=${BRIDGE_ADDR%.*}.
if ! lxc network show "$BRIDGE" >/dev/null 2>&1 && ip -4 route show | grep -q "^${subnet_prefix//./\\.}"; then
    die "the host already routes ${subnet_prefix}0; set PAYGRESS_LXD_BRIDGE_ADDR to a free subnet"
fi

log "initialising LXD ($STORAGE pool 'default'$STORAGE_WHY, bridge $BRIDGE $BRIDGE_ADDR)"
preseed=$(cat <<YAML
config: {}
networks:
- name: $BRIDGE
  type: bridge
  config:
    ipv4.address: $BRIDGE_ADDR
    ipv4.nat: "true"
    ipv6.address: none
storage_pools:
- name: default
  driver: $STORAGE
$(if [ "$STORAGE" = btrfs ]; then printf '  config:\n    size: %s\n' "$POOL_SIZE"; fi)
profiles:
- name: default
  devices:
    root:
      path: /
      pool: default
      type: disk
    eth0:
      name: eth0
      network: $BRIDGE
      type: nic
YAML
)
# A preseed updates entities that already exist, except a storage pool's driver/source, so a
# half-initialised daemon (pool made, bridge missing) is completed rather than refused.
if lxc storage show default >/dev/null 2>&1; then
    preseed=$(sed '/^storage_pools:/,/^profiles:/{/^profiles:/!d}' <<<"$preseed")
fi
lxd init --preseed <<<"$preseed"
initialised || die "LXD initialisation did not complete"
workload_bridge
log "LXD ready"
