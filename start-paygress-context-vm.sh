#!/usr/bin/env bash
# Start paygress-mcp-server as a ContextVM server: the MCP tools over Nostr relays, answering as
# the provider's Nostr key.
#
#   ./start-paygress-context-vm.sh [--config FILE] [more paygress-mcp-server flags]
#
# Configuration: --config FILE, else PAYGRESS_CONFIG, else provider/paygress.example.toml. The
# seed environment variables override it (NOSTR_RELAYS, NOSTR_PRIVATE_KEY, WHITELISTED_MINTS,
# SSH_HOST, ... and CONTEXTVM_ENCRYPTION=optional|required|disabled).
# With PAYGRESS_EMBEDDED_RELAY=ADDR (e.g. 127.0.0.1:7777) the server also runs its own relay,
# so this works on a machine with no internet.
#
# Builds the server first when needed (cargo, release profile; PAYGRESS_PROFILE=dev for a
# faster debug build). PAYGRESS_BIN=/path/to/paygress-mcp-server skips the build.
# Prints the server's npub and relays once it has answered its own request through them.
set -euo pipefail
cd "$(dirname "$0")"

config=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --config | -c)
            [ $# -ge 2 ] || { echo "start-paygress-context-vm: --config needs a file" >&2; exit 2; }
            config=$2; shift 2 ;;
        --config=*) config=${1#--config=}; shift ;;
        --transport | --transport=*)
            echo "start-paygress-context-vm: the transport is always contextvm here" >&2; exit 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
config=${config:-${PAYGRESS_CONFIG:-provider/paygress.example.toml}}
[ -r "$config" ] || { echo "start-paygress-context-vm: cannot read config $config" >&2; exit 2; }

bin=${PAYGRESS_BIN:-}
if [ -z "$bin" ]; then
    profile=${PAYGRESS_PROFILE:-release}
    dir=$profile; [ "$profile" = dev ] && dir=debug
    echo "start-paygress-context-vm: building paygress-mcp-server ($profile)" >&2
    cargo build --quiet --profile "$profile" --bin paygress-mcp-server >&2
    bin=target/$dir/paygress-mcp-server
fi

if [ -n "${PAYGRESS_EMBEDDED_RELAY:-}" ]; then
    args+=(--embedded-relay "$PAYGRESS_EMBEDDED_RELAY")
fi

# The server prints "ContextVM server <npub> on <relays> (...)" on stderr when it is reachable.
exec "$bin" --transport contextvm --config "$config" ${args[@]+"${args[@]}"} </dev/null
