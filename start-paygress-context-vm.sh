#!/usr/bin/env bash
# Start paygress-mcp-server for ContextVM (MCP over Nostr), in either of the two ways the seed
# documents use it:
#
#   ./start-paygress-context-vm.sh [--config FILE] [--transport T] [more server flags]
#       run from a shell (or systemd, nohup, ...): the server itself serves ContextVM on the
#       relays, answering as the provider's Nostr key.
#   gateway-cli --private-key … --relays … --server ./start-paygress-context-vm.sh
#   cvmi serve -- ./start-paygress-context-vm.sh
#       run by a ContextVM gateway: the gateway serves Nostr under its own key and speaks MCP to
#       this script over stdin/stdout, so the server serves plain stdio MCP and stays off the
#       relays (answering there too would be a second server beside the gateway).
#       A gateway passes every client through one stdio session, so the server cannot tell
#       buyers apart: by default they are anonymous (a spawn returns its login details, and
#       get_pod_status shows them to nobody). Behind a gateway that writes each client's key
#       into `_meta.clientPubkey` (@contextvm/sdk's injectClientPubkey, which overwrites what a
#       client sends), PAYGRESS_STDIO_CALLER=gateway-meta (or --stdio-caller gateway-meta)
#       makes that key the owner, as when the server serves ContextVM itself. Never set it
#       behind a gateway that does not inject: a client could then name another buyer's key.
#
# Which one: --transport stdio|contextvm|both (or PAYGRESS_TRANSPORT), else "auto": stdio when
# stdin is a pipe or a socket (a parent program talks to us: a gateway, an MCP client; Node's
# child_process gives a socket, Python's and Rust's a pipe), and contextvm otherwise (a
# terminal, /dev/null, a file). The choice is printed on stderr.
#
# Configuration: --config FILE, else PAYGRESS_CONFIG, else provider/paygress.example.toml. The
# seed environment variables override it (NOSTR_RELAYS, NOSTR_PRIVATE_KEY, WHITELISTED_MINTS,
# SSH_HOST, ... and CONTEXTVM_ENCRYPTION=optional|required|disabled).
# With PAYGRESS_EMBEDDED_RELAY=ADDR (e.g. 127.0.0.1:7777) the server also runs its own relay,
# so this works on a machine with no internet (contextvm and both only).
#
# Builds the server first when needed (cargo, release profile; PAYGRESS_PROFILE=dev for a
# faster debug build). PAYGRESS_BIN=/path/to/paygress-mcp-server skips the build. Nothing but
# the protocol is ever written on stdout.
# Serving ContextVM, it prints the server's npub and relays once it has answered its own
# request through them.
set -euo pipefail
cd "$(dirname "$0")"

say() { echo "start-paygress-context-vm: $*" >&2; }

config=""
transport=${PAYGRESS_TRANSPORT:-auto}
caller=${PAYGRESS_STDIO_CALLER:-anonymous}
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --config | -c)
            [ $# -ge 2 ] || { say "--config needs a file"; exit 2; }
            config=$2; shift 2 ;;
        --config=*) config=${1#--config=}; shift ;;
        --transport)
            [ $# -ge 2 ] || { say "--transport needs stdio, contextvm, both or auto"; exit 2; }
            transport=$2; shift 2 ;;
        --transport=*) transport=${1#--transport=}; shift ;;
        --stdio-caller)
            [ $# -ge 2 ] || { say "--stdio-caller needs anonymous, gateway-meta or local"; exit 2; }
            caller=$2; shift 2 ;;
        --stdio-caller=*) caller=${1#--stdio-caller=}; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
case "$transport" in
    stdio | contextvm | both) why="asked for" ;;
    auto)
        if [ -p /dev/stdin ] || [ -S /dev/stdin ]; then
            transport=stdio why="stdin is a pipe: a gateway or MCP client started this"
        else
            transport=contextvm why="stdin is not a pipe"
        fi ;;
    *) say "--transport must be stdio, contextvm, both or auto, not '$transport'"; exit 2 ;;
esac
config=${config:-${PAYGRESS_CONFIG:-provider/paygress.example.toml}}
[ -r "$config" ] || { say "cannot read config $config"; exit 2; }

bin=${PAYGRESS_BIN:-}
if [ -z "$bin" ]; then
    profile=${PAYGRESS_PROFILE:-release}
    dir=$profile; [ "$profile" = dev ] && dir=debug
    say "building paygress-mcp-server ($profile)"
    cargo build --quiet --profile "$profile" --bin paygress-mcp-server >&2
    bin=target/$dir/paygress-mcp-server
fi

say "serving $transport ($why; --transport stdio|contextvm|both chooses)"
if [ "$transport" = stdio ]; then
    exec "$bin" --transport stdio --stdio-caller "$caller" --config "$config" \
        ${args[@]+"${args[@]}"}
fi
if [ -n "${PAYGRESS_EMBEDDED_RELAY:-}" ]; then
    args+=(--embedded-relay "$PAYGRESS_EMBEDDED_RELAY")
fi
if [ "$transport" = both ]; then
    exec "$bin" --transport both --config "$config" ${args[@]+"${args[@]}"}
fi
# The server prints "ContextVM server <npub> on <relays> (...)" on stderr when it is reachable.
exec "$bin" --transport contextvm --config "$config" ${args[@]+"${args[@]}"} </dev/null
