#!/usr/bin/env bash
# Run the main job on this machine: paygress-mcp-server, serving its MCP tools on stdio.
#
#   bash start-paygress.sh [paygress-mcp-server flags]      e.g. --config FILE, --transport both
#
# With no configuration (no --config, no PAYGRESS_CONFIG) the server runs its demo: an embedded
# Cashu test mint (tokens are worthless), LXD when it answers and has the base image, otherwise
# a local sandbox, and a get_demo_token tool to pay with. See README.md.
#
# Installs what the build needs when it is missing (protoc for cdk's embedded mint, a C
# compiler for the bundled SQLite) with apt-get, builds the server (cargo's dev profile, shared
# with the tests; PAYGRESS_PROFILE=release for an optimised build), and runs it. Build output
# goes to stderr: stdout is the MCP protocol.
set -euo pipefail
cd "$(dirname "$0")"

log() { printf 'start-paygress: %s\n' "$*" >&2; }

need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v cc >/dev/null || need+=(gcc libc6-dev)
if [ "${#need[@]}" -gt 0 ]; then
    sudo_=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo_="sudo"
        else
            log "the build needs ${need[*]}; install them (sudo apt-get install ${need[*]}) and run this again"
            exit 1
        fi
    fi
    command -v apt-get >/dev/null || { log "the build needs ${need[*]}; install them and run this again"; exit 1; }
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
        $sudo_ apt-get update -qq >&2
        $sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
fi
if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || {
    log "Rust is not installed: install it from https://rustup.rs, then run this again"
    exit 1
}

profile=${PAYGRESS_PROFILE:-dev}
dir=$profile; [ "$profile" = dev ] && dir=debug
log "building paygress-mcp-server ($profile profile; the first build takes a few minutes)"
cargo build --quiet --profile "$profile" --bin paygress-mcp-server >&2
exec "target/$dir/paygress-mcp-server" "$@"
