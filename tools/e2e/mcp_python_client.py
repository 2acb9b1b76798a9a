"""The official MCP Python SDK (PyPI `mcp`) as a buyer of `paygress-mcp-server --demo`.

Run by tests/mcp_sdk.rs:  python mcp_python_client.py MODE -- SERVER [ARGS...]
MODE is the SDK's connect mode: `auto` (its default: a `server/discover` probe, the 2026-07-28
revision when the server answers it) or `legacy` (the `initialize` handshake).

It lists the tools, checks every schema with jsonschema (a valid schema, only formats the
validator knows), buys a pod with a demo token while recording progress notifications, checks
that SSH answers on the port, tops the pod up, reads its status, asks for a pod that does not
exist, and validates every result's `structuredContent` (the typed error body too) against the
tool's `outputSchema`. Any failure, and any warning
from the SDK or jsonschema, exits non-zero; on success it prints one JSON summary line.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import traceback
import warnings
from typing import Any

import anyio
from jsonschema import Draft202012Validator
from jsonschema.validators import validator_for
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters

ERROR_TYPES = {
    "invalid_request", "invalid_spec", "invalid_token", "mint_not_allowed", "token_already_spent",
    "insufficient_payment", "resource_unavailable", "pod_creation_failed", "pod_not_found",
    "payment_failed", "internal_error",
}


class Failure(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failure(what)


class WarningLog(logging.Handler):
    """Keeps every warning the SDK or jsonschema logs."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")


def formats_in(schema: Any) -> list[str]:
    found: list[str] = []
    if isinstance(schema, dict):
        if isinstance(schema.get("format"), str):
            found.append(schema["format"])
        for k, v in schema.items():
            if k != "format" or not isinstance(v, str):
                found += formats_in(v)
    elif isinstance(schema, list):
        for v in schema:
            found += formats_in(v)
    return found


def checked_schema(name: str, schema: dict[str, Any]) -> Any:
    """A validator for `schema`, after checking that jsonschema takes it as it is."""
    cls = validator_for(schema, default=Draft202012Validator)
    cls.check_schema(schema)
    known = set(cls.FORMAT_CHECKER.checkers)
    unknown = [f for f in formats_in(schema) if f not in known]
    check(not unknown, f"{name}: formats jsonschema does not know: {unknown}")
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


async def run(mode: str, command: str, args: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"mode": mode}
    params = StdioServerParameters(command=command, args=args)
    async with Client(params, mode=mode) as client:
        session = client.session
        summary["protocol_version"] = session.protocol_version
        info = session.server_info
        summary["server_name"] = info.name if info else None
        listed = await client.list_tools()
        tools = {t.name: t for t in listed.tools}
        summary["tools"] = list(tools)
        validators = {}
        for t in listed.tools:
            checked_schema(f"{t.name} inputSchema", t.input_schema)
            check(t.output_schema is not None, f"{t.name} has no outputSchema")
            validators[t.name] = checked_schema(f"{t.name} outputSchema", t.output_schema)
        validated: list[str] = []

        async def call(name: str, arguments: dict[str, Any], **kw: Any) -> dict[str, Any]:
            r = await client.call_tool(name, arguments, **kw)
            check(r.structured_content is not None, f"{name}: no structuredContent")
            body = r.structured_content
            # Error results too: their typed body is one branch of the outputSchema.
            errors = sorted(validators[name].iter_errors(body), key=str)
            check(not errors, f"{name}: structuredContent does not match outputSchema: {errors[:3]}")
            text = [c.text for c in r.content if getattr(c, "type", None) == "text"]
            check(bool(text) and json.loads(text[0]) == body, f"{name}: text is not the same JSON")
            validated.append(f"{name} (error)" if r.is_error else name)
            if r.is_error:
                check(body.get("error_type") in ERROR_TYPES, f"{name}: untyped error {body}")
            return body

        offers = await call("get_offers", {})
        tier = offers["pod_specs"][0]
        token = (await call("get_demo_token", {"amount_sats": 50}))["cashu_token"]
        progress: list[dict[str, Any]] = []

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append({"progress": p, "total": total, "message": message})

        pod = await call(
            "spawn_pod",
            {"cashu_token": token, "pod_spec_id": tier["id"], "ssh_username": "alice"},
            progress_callback=on_progress,
        )
        check("error_type" not in pod, f"spawn_pod failed: {pod}")
        check(pod["duration_seconds"] == 50_000 // tier["rate_msats_per_sec"], f"price: {pod}")
        with socket.create_connection((pod["host"], pod["node_port"]), timeout=10) as s:
            banner = s.recv(7)
        check(banner == b"SSH-2.0", f"no SSH on the port: {banner!r}")
        top = (await call("get_demo_token", {"amount_sats": 10}))["cashu_token"]
        up = await call("topup_pod", {"pod_npub": pod["pod_npub"], "cashu_token": top})
        check(up.get("success") is True, f"topup_pod: {up}")
        status = await call("get_pod_status", {"pod_npub": pod["pod_npub"]})
        check(status["state"] == "running", f"status: {status}")
        check(status["access"]["node_port"] == pod["node_port"], f"owner access: {status}")
        missing = await call("get_pod_status", {"pod_npub": "npub1doesnotexist"})
        check(missing.get("error_type") == "pod_not_found", f"typed error: {missing}")
        # Progress notifications can trail the result by a moment.
        with anyio.move_on_after(5):
            while len(progress) < 4:
                await anyio.sleep(0.05)
        summary.update(
            progress=[p["progress"] for p in progress],
            progress_total=sorted({p["total"] for p in progress}),
            validated=validated,
            duration_seconds=pod["duration_seconds"],
            extended_duration_seconds=up["extended_duration_seconds"],
            state=status["state"],
        )
    return summary


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    mode, command, args = sys.argv[1], sys.argv[3], sys.argv[4:]
    log = WarningLog()
    logging.getLogger().addHandler(log)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            summary = anyio.run(run, mode, command, args)
        except Exception as e:  # noqa: BLE001 - any failure fails the run, loudly
            while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
                e = e.exceptions[0]
            traceback.print_exception(e, file=sys.stderr)
            print(f"FAILED: {e}", file=sys.stderr)
            return 1
    noise = log.records + [f"{w.category.__name__}: {w.message}" for w in caught]
    if noise:
        print("FAILED: warnings: " + "; ".join(noise), file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
