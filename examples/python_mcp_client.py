"""Buy a pod from Paygress with the official MCP Python SDK (PyPI `mcp`), over stdio.

    python examples/python_mcp_client.py [SERVER_COMMAND ...]

The default server is `paygress-mcp-server --demo`: an embedded test mint and a temporary
provider on this machine, with the extra tool get_demo_token to pay with. Against a real
provider, pass its command and set CASHU_TOKEN to a token from one of its whitelisted mints.

It lists the tools, reads the offers, pays for the first tier's minimum time, prints the ssh
command and password, and reads the pod's status. The demo removes its pods when the server
exits, which is when this script ends.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import anyio
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters


async def call(client: Client, name: str, arguments: dict) -> dict:
    result = await client.call_tool(name, arguments)
    body = result.structured_content or {}
    if result.is_error:
        raise SystemExit(f"{name} failed: {body.get('error_type')}: {body.get('message')}")
    return body


async def main(command: list[str]) -> None:
    params = StdioServerParameters(command=command[0], args=command[1:])
    async with Client(params) as client:
        tools = [t.name for t in (await client.list_tools()).tools]
        print(f"tools: {', '.join(tools)}")

        offers = await call(client, "get_offers", {})
        tier = offers["pod_specs"][0]
        msats = tier["rate_msats_per_sec"] * offers["minimum_duration_seconds"]
        sats = -(-msats // 1000)
        print(f"tier {tier['id']}: {tier['rate_msats_per_sec']} msat/s, minimum {sats} sat")

        token = os.environ.get("CASHU_TOKEN")
        if not token:
            token = (await call(client, "get_demo_token", {"amount_sats": sats}))["cashu_token"]

        pod = await call(client, "spawn_pod", {
            "cashu_token": token,
            "pod_spec_id": tier["id"],
            "ssh_username": "alice",
        })
        print(f"pod {pod['pod_npub']} until {pod['expires_at']}")
        print(f"ssh: ssh -p {pod['node_port']} {pod['ssh_username']}@{pod['host']}")
        print(f"password: {pod['ssh_password']}")
        with socket.create_connection((pod["host"], pod["node_port"]), timeout=10) as s:
            banner = s.recv(64).decode(errors="replace").strip()
        print(f"ssh answers: {banner}")

        status = await call(client, "get_pod_status", {"pod_npub": pod["pod_npub"]})
        print(json.dumps({"state": status["state"], "seconds_remaining": status["seconds_remaining"]}))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:] or ["paygress-mcp-server", "--demo"])
