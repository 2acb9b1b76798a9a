#!/usr/bin/env bash
# The NUT-24 payment flow with curl, step by step, against a Paygress HTTP door.
#
#   examples/curl_402.sh [BASE_URL]            (default http://127.0.0.1:8080)
#
# Pays with the token in $CASHU_TOKEN; without one, against the demo
# (`paygress-mcp-server --demo --transport none --http 127.0.0.1:8080`), it asks the demo's mint
# for a test token. CURL_CA=FILE trusts a private CA (a TLS proxy in front of the door).
# Needs curl and jq. Every value from the server goes into JSON through jq, never into a command.
set -euo pipefail
base=${1:-http://127.0.0.1:8080}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl_() { curl -sS ${CURL_CA:+--cacert "$CURL_CA"} "$@"; }

echo "1. GET /offers: what is for sale"
curl_ -f "$base/offers" >"$tmp/offers"
tier=$(jq -r '.pod_specs[0].id' "$tmp/offers")
echo "   tier $tier at $(jq -r '.pod_specs[0].rate_msats_per_sec' "$tmp/offers") msat/s," \
  "at least $(jq -r '.minimum_duration_seconds' "$tmp/offers") s"

echo "2. POST /pods without paying: 402 Payment Required with a NUT-18 request in X-Cashu"
jq -nc --arg tier "$tier" '{pod_spec_id: $tier, ssh_username: "alice"}' >"$tmp/request"
code=$(curl_ -o "$tmp/402" -D "$tmp/headers" -w '%{http_code}' -X POST "$base/pods" \
  -H 'content-type: application/json' --data-binary @"$tmp/request")
[ "$code" = 402 ] || { echo "expected 402, got $code: $(cat "$tmp/402")" >&2; exit 1; }
creq=$(tr -d '\r' <"$tmp/headers" | awk -F': ' 'tolower($1) == "x-cashu" { print $2 }')
sats=$(jq -r '.details.amount_sats' "$tmp/402")
echo "   HTTP $code, X-Cashu: ${creq:0:24}… ($sats sat)"

echo "3. a token worth at least $sats sat from one of the whitelisted mints"
if [ -n "${CASHU_TOKEN:-}" ]; then
  printf '%s' "$CASHU_TOKEN" >"$tmp/token"
else
  jq -nc --argjson sats "$sats" '{amount_sats: $sats}' >"$tmp/ask"
  curl_ -f -X POST "$base/tools/get_demo_token" -H 'content-type: application/json' \
    --data-binary @"$tmp/ask" | jq -r '.cashu_token' >"$tmp/token"
  echo "   (a demo token from the demo's test mint)"
fi

echo "4. POST /pods again with X-Cashu: <token>: 201 Created"
# The token goes in a header file so it never appears in a process list.
printf 'X-Cashu: %s\n' "$(cat "$tmp/token")" >"$tmp/pay-header"
code=$(curl_ -o "$tmp/pod" -w '%{http_code}' -X POST "$base/pods" -H @"$tmp/pay-header" \
  -H 'content-type: application/json' --data-binary @"$tmp/request")
[ "$code" = 201 ] || { echo "expected 201, got $code: $(cat "$tmp/pod")" >&2; exit 1; }
echo "   HTTP $code"
echo "   ssh: $(jq -r '.ssh_command' "$tmp/pod")"
echo "   password: $(jq -r '.ssh_password' "$tmp/pod")"
echo "   expires: $(jq -r '.expires_at' "$tmp/pod")"
pod=$(jq -r '.pod_npub' "$tmp/pod")

echo "5. GET /pods/{id} with the owner token: login details again"
printf 'Authorization: Bearer %s\n' "$(jq -r '.owner_token' "$tmp/pod")" >"$tmp/auth-header"
curl_ -f -H @"$tmp/auth-header" "$base/pods/$pod" >"$tmp/status"
echo "   pod $pod: $(jq -r '.state' "$tmp/status"), $(jq -r '.seconds_remaining' "$tmp/status") s left," \
  "access for $(jq -r '.access.ssh_username' "$tmp/status")"
