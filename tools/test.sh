#!/usr/bin/env bash
# Runs every test on a fresh Debian/Ubuntu machine: installs what the tests need (idempotent),
# then formatting and lint checks, then unit, integration and end-to-end tests from one build.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
export DEBIAN_FRONTEND=noninteractive

# --- system packages ---------------------------------------------------------------------------
# Installed without Recommends, so everything the tests run is named here (and checked below).
# protoc: the in-process test mint (cdk's `mint` feature) builds a gRPC signatory.
# sshpass/openssh-client: tests log in to real workloads; openssl: the LXD HTTPS test makes
# certificates; nodejs/npm: the official MCP and ContextVM clients; python3-venv: the official
# MCP Python SDK in a venv.
want=(protobuf-compiler sshpass openssh-client openssl ca-certificates nodejs python3 python3-venv)
commands=(protoc sshpass ssh ssh-keygen openssl node npm /usr/bin/python3)
# --- sandbox isolation: each workload's own network (slirp4netns and an nftables egress
# filter); bubblewrap is the sandbox_spawn benchmark's baseline.
want+=(slirp4netns nftables bubblewrap)
commands+=(slirp4netns nft bwrap)
# nginx: the TLS-terminating reverse proxy the HTTP door's tests start in front of it
# (tests/http.rs, tests/examples.rs), each with its own config, prefix and port on 127.0.0.1;
# curl and jq: the examples' 402 walk-through (examples/curl_402.sh).
want+=(nginx curl jq)
commands+=(/usr/sbin/nginx curl jq)
# tmux: tests/buyer_wallet.rs runs `wallet fund` on a real terminal and reads the QR code back.
want+=(tmux)
commands+=(tmux)
# Proxmox (tests/proxmox.rs): `ip` makes the nat test's network namespace (nft is above); fakepve,
# the PVE API server the tests run against, is pinned in tools/e2e/requirements.txt (venv below).
want+=(iproute2)
commands+=(ip)
# dpkg-dev: dpkg-scanpackages indexes the bootstrap test's local apt repository (below).
want+=(dpkg-dev)
commands+=(dpkg-scanpackages)
# zstd: tests/pve_image.rs compresses the Debian 12 tree as a Proxmox `vztmpl` .tar.zst is, and
# bootstrap's template repack it runs packs with `tar --zstd`.
want+=(zstd)
commands+=(zstd)
if [ "${1:-}" = --print-deps ]; then
  printf 'package %s\n' "${want[@]}"
  # npm ships inside some nodejs builds and as its own package in Debian's.
  dpkg-query -W -f='${Status}' npm 2>/dev/null | grep -q "install ok installed" && echo "package npm"
  printf 'command %s\n' "${commands[@]}"
  exit 0
fi
sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "test.sh: installing ${missing[*]}"
  $sudo_ apt-get update -qq
  $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
apt_install "${want[@]}"
command -v npm >/dev/null || apt_install npm

# --- kubectl: a real client of the simulated Kubernetes API server (tests/kubesim.rs,
# tests/kubernetes.rs). These machines ship kubectl 1.32 (package `kubectl`), which the fidelity
# tests were written against; where none is installed, Debian's kubernetes-client (1.20) is the
# packaged one (not installed beside 1.32: both own /usr/bin/kubectl).
command -v kubectl >/dev/null || apt_install kubernetes-client

# --- LXD: the real daemon and a locally built base image (both scripts are idempotent) --------
bash provider/lxd-setup.sh
bash provider/build-base-image.sh
# Every setup script installs what it and its daemons run, whatever this machine had before.
if ! deps=$(/usr/bin/python3 tools/check-setup-deps.py provider/lxd-setup.sh provider/build-base-image.sh tools/test.sh); then
  grep -v ' <- ' <<<"$deps" >&2
  exit 1
fi
# ...and the check itself catches the mistake it exists for: a command that only a Recommends
# brings (LXD's dnsmasq), on this machine where dnsmasq-base is installed.
control=$(mktemp)
printf 'printf "package lxd\\ncommand dnsmasq\\n"\n' >"$control"
if /usr/bin/python3 tools/check-setup-deps.py "$control" >/dev/null; then
  echo "test.sh: tools/check-setup-deps.py accepted dnsmasq through lxd's Recommends" >&2
  exit 1
fi
rm -f "$control"

# --- bootstrap (tests/bootstrap.rs): a local apt repository for the test host -----------------
# The test host (an LXD container) has no route to any mirror, so the packages bootstrap installs
# there (LXD and its runtime, the sandbox's, sudo for the test's non-root user) are downloaded
# here, with their whole Depends closure, from the mirror this machine's apt already uses, into
# /var/cache/paygress/debs, and indexed; the test mounts that directory read-only as the host's
# only apt source. Redone whenever the list changes (a copy of it marks what is there).
debs=/var/cache/paygress/debs
bootstrap_pkgs="nftables iproute2 lxcfs lxd lxd-client dnsmasq-base btrfs-progs debootstrap gpgv debian-archive-keyring slirp4netns sudo"
if [ "$(cat "$debs/.packages" 2>/dev/null)" != "$bootstrap_pkgs" ] || ! [ -s "$debs/Packages" ]; then
  $sudo_ mkdir -p "$debs.new"
  # shellcheck disable=SC2086
  closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances $bootstrap_pkgs | grep '^[a-z0-9]' | sort -u)
  # shellcheck disable=SC2086
  (cd "$debs.new" && $sudo_ apt-get download -qq $closure 2>/dev/null)
  (cd "$debs.new" && dpkg-scanpackages -m . 2>/dev/null | $sudo_ tee Packages >/dev/null)
  echo "$bootstrap_pkgs" | $sudo_ tee "$debs.new/.packages" >/dev/null
  $sudo_ rm -rf "$debs" && $sudo_ mv "$debs.new" "$debs"
fi

# --- official npm clients for the end-to-end tests ---------------------------------------------
# Versions are pinned in tools/e2e/package.json; npm reads its registry from the system's config.
# Reinstalled whenever package.json changes (a stamp of its hash), so a bumped pin takes effect.
stamp=tools/e2e/node_modules/.paygress-package-json.sha256
if ! [ -f "$stamp" ] || [ "$(cat "$stamp")" != "$(sha256sum <tools/e2e/package.json)" ]; then
  npm install --prefix tools/e2e --no-audit --no-fund --loglevel=error
  sha256sum <tools/e2e/package.json >"$stamp"
fi

# --- official MCP Python SDK for the end-to-end tests (tests/mcp_sdk.rs) -----------------------
# Pinned in tools/e2e/requirements.txt, installed into the venv tools/e2e/.venv made by Debian's
# python3 (installed above with python3-venv); pip reads its index from the system's
# configuration. A copy of the requirements in the venv marks what is installed, so a changed pin
# reinstalls.
venv=tools/e2e/.venv
if ! cmp -s tools/e2e/requirements.txt "$venv/installed-requirements.txt"; then
  [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tools/e2e/requirements.txt
  cp tools/e2e/requirements.txt "$venv/installed-requirements.txt"
fi

# --- Nutshell, the independent reference mint for the fault tests (tests/faults.rs) -----------
# Its own venv (cashu 0.17 needs pydantic 1), from Debian's python3; pip reads its index from the
# system's configuration. A copy of the pins in the venv marks what is installed.
nut=tools/e2e/.venv-nutshell
if ! cmp -s tools/e2e/nutshell/requirements.txt "$nut/installed-requirements.txt"; then
  dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed" \
    || { sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"; $sudo_ apt-get update -qq; $sudo_ apt-get install -y -qq python3 python3-venv >/dev/null; }
  [ -x "$nut/bin/python" ] || /usr/bin/python3 -m venv "$nut"
  "$nut/bin/python" -m pip install --quiet --disable-pip-version-check -r tools/e2e/nutshell/requirements.txt
  cp tools/e2e/nutshell/requirements.txt "$nut/installed-requirements.txt"
fi

# --- checks ------------------------------------------------------------------------------------
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# A provider build without the demo (no embedded mint, no protoc) is held to the same standard.
cargo clippy --no-default-features --all-targets --locked -- -D warnings

# --- tests -------------------------------------------------------------------------------------
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --no-fail-fast --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# The README's first command, exactly as written, serves MCP: the official Inspector runs it and
# calls get_offers (on a fresh machine that is the demo).
first=$(awk '/^```sh$/ { inblock = 1; next } inblock { print; exit }' README.md | sed 's/[[:space:]]*#.*$//')
echo "test.sh: the README's first command: $first"
if out=$(tools/e2e/node_modules/.bin/mcp-inspector --cli $first --method tools/call --tool-name get_offers 2>"$log.first") \
    && grep -q '"pod_specs"' <<<"$out"; then
  echo "test result: ok. 1 passed; 0 failed (README first command answers get_offers)" | tee -a "$log"
else
  cat "$log.first" >&2
  echo "test result: FAILED. 0 passed; 1 failed (README first command did not answer get_offers)" | tee -a "$log"
  status=1
fi
rm -f "$log.first"
passed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^passed/) n += $i } END { print n + 0 }' "$log")
failed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^failed/) n += $i } END { print n + 0 }' "$log")
echo "tests: ${passed:-0} passed, ${failed:-0} failed"
exit "$status"
