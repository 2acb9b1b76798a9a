#!/usr/bin/env bash
# Runs every test on a fresh Debian/Ubuntu machine: installs what the tests need (idempotent),
# then formatting and lint checks, then unit, integration and end-to-end tests from one build.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
export DEBIAN_FRONTEND=noninteractive

# --- system packages ---------------------------------------------------------------------------
# protoc: the in-process test mint (cdk's `mint` feature) builds a gRPC signatory.
# sshpass/openssh-client: tests log in to real workloads; openssl: the LXD HTTPS test makes certificates.
want=(protobuf-compiler sshpass openssh-client openssl ca-certificates)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  $sudo_ apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- LXD: the real daemon and a locally built base image (both scripts are idempotent) --------
bash provider/lxd-setup.sh
bash provider/build-base-image.sh

# --- official npm clients for the end-to-end tests ---------------------------------------------
# Versions are pinned in tools/e2e/package.json; npm reads its registry from the system's config.
if ! [ -x tools/e2e/node_modules/.bin/mcp-inspector ] || ! [ -d tools/e2e/node_modules/@contextvm/sdk ]; then
  command -v npm >/dev/null || { sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"; $sudo_ apt-get install -y -qq nodejs npm >/dev/null; }
  npm install --prefix tools/e2e --no-audit --no-fund --loglevel=error
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
# A provider build without the demo (no embedded mint, no protoc) must keep compiling.
cargo check --locked --no-default-features --lib --bins

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
