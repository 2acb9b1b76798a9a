"""The official MCP Python SDK (PyPI `mcp`) as an AI agent using `paygress-cli mcp`.

Run by tests/buyer_mcp.rs:  python buyer_agent.py SCENARIO -- COMMAND [ARGS...]
with PROVIDER_NPUB (the provider to buy from) and, for `main`, RECEIVE_TOKEN in the environment.

Scenarios:
- `main`: checks every tool's schemas; funds the wallet by Lightning (wallet_fund, then waits
  for wallet_balance to show it: the test mint's fake Lightning pays the invoice); lists the
  providers; buys a pod with progress; runs `whoami` and commands with other exit codes and
  stderr; tops the pod up; reads its status; tries a spawn past the owner's per-call cap
  (refused, nothing paid); receives a token.
- `refund`: funds the wallet, then buys from a provider that fails after payment; the refund is
  back in the wallet to the sat.

Every result's structuredContent is validated against the tool's outputSchema (typed errors
too). Any failure or SDK/jsonschema warning exits non-zero; success prints one JSON line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
import warnings
from typing import Any

import anyio
from jsonschema import Draft202012Validator
from jsonschema.validators import validator_for
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters

TOOLS = {
    "list_providers", "spawn_pod", "topup_pod", "get_pod_status", "run_command",
    "wallet_balance", "wallet_fund", "wallet_receive",
}


CAP_NAMES = {"caps", "per_call_sats", "per_day_sats", "per_provider_sats"}


class Failure(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failure(what)


class WarningLog(logging.Handler):
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
    cls = validator_for(schema, default=Draft202012Validator)
    cls.check_schema(schema)
    known = set(cls.FORMAT_CHECKER.checkers)
    unknown = [f for f in formats_in(schema) if f not in known]
    check(not unknown, f"{name}: formats jsonschema does not know: {unknown}")
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


async def run(scenario: str, command: str, args: list[str]) -> dict[str, Any]:
    provider = os.environ["PROVIDER_NPUB"]
    summary: dict[str, Any] = {"scenario": scenario}
    params = StdioServerParameters(command=command, args=args, env=dict(os.environ))
    async with Client(params) as client:
        listed = await client.list_tools()
        tools = {t.name: t for t in listed.tools}
        check(set(tools) == TOOLS, f"tools: {sorted(tools)}")
        validators = {}
        for t in listed.tools:
            checked_schema(f"{t.name} inputSchema", t.input_schema)
            check(t.output_schema is not None, f"{t.name} has no outputSchema")
            props = set(t.input_schema.get("properties", {}))
            check(not props & CAP_NAMES, f"{t.name} takes a cap: {t.input_schema}")
            validators[t.name] = checked_schema(f"{t.name} outputSchema", t.output_schema)
        spending = sorted(t.name for t in listed.tools
                          if t.annotations and t.annotations.read_only_hint is False)
        summary["not_read_only"] = spending

        async def call(name: str, arguments: dict[str, Any], **kw: Any) -> tuple[bool, dict[str, Any]]:
            r = await client.call_tool(name, arguments, **kw)
            check(r.structured_content is not None, f"{name}: no structuredContent")
            body = r.structured_content
            errors = sorted(validators[name].iter_errors(body), key=str)
            check(not errors, f"{name}: structuredContent does not match outputSchema: {errors[:3]}")
            text = [c.text for c in r.content if getattr(c, "type", None) == "text"]
            check(bool(text) and json.loads(text[0]) == body, f"{name}: text is not the same JSON")
            return bool(r.is_error), body

        async def ok(name: str, arguments: dict[str, Any], **kw: Any) -> dict[str, Any]:
            err, body = await call(name, arguments, **kw)
            check(not err, f"{name} failed: {body}")
            return body

        async def balance() -> int:
            return (await ok("wallet_balance", {}))["total_sats"]

        async def fund(sats: int) -> str:
            start = await balance()
            f = await ok("wallet_fund", {"amount_sats": sats})
            check(f["invoice"].startswith("lnbc"), f"invoice: {f}")
            with anyio.fail_after(30):
                while await balance() < start + sats:
                    await anyio.sleep(0.1)
            check(await balance() == start + sats, "funded to the sat")
            return f["invoice"]

        summary["balance_before"] = await balance()
        await fund(400 if scenario == "main" else 300)
        summary["balance_funded"] = await balance()

        providers = (await ok("list_providers", {"max_rate_msats_per_sec": 150}))["providers"]
        check([p["npub"] for p in providers] == [provider], f"providers: {providers}")
        tiers = [t["id"] for t in providers[0]["offers"]["pod_specs"]]
        check(tiers == ["basic"], f"the price filter keeps only basic: {tiers}")

        if scenario == "refund":
            err, body = await call("spawn_pod", {"provider": provider, "pod_spec_id": "basic",
                                                 "duration_seconds": 300})
            check(err, f"the spawn should fail: {body}")
            summary.update(error_type=body["error_type"], refunded_sats=body.get("refunded_sats"),
                           balance_after=await balance())
            return summary

        progress: list[float] = []

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append(p)

        pod = await ok("spawn_pod", {"provider": provider, "pod_spec_id": "basic",
                                     "duration_seconds": 300}, progress_callback=on_progress)
        summary.update(pod_npub=pod["pod_npub"], paid_sats=pod["paid_sats"], duration_seconds=pod["duration_seconds"],
                       pinned=len(pod["ssh_host_key_fingerprints"]),
                       balance_after_spawn=await balance())
        pod_id = pod["pod_npub"]
        who = await ok("run_command", {"pod_npub": pod_id, "command": "whoami"})
        three = await ok("run_command", {"pod_npub": pod_id, "command": "echo oops >&2; exit 3"})
        check(who["host_key_fingerprint"] in pod["ssh_host_key_fingerprints"], "pinned key used")
        summary.update(whoami=who["stdout"], whoami_exit=who["exit_code"],
                       three_exit=three["exit_code"], three_stderr=three["stderr"])
        err, unknown = await call("run_command", {"pod_npub": "npub1nope", "command": "true"})
        check(err and unknown["error_type"] == "pod_not_found", f"unknown pod: {unknown}")

        up = await ok("topup_pod", {"provider": provider, "pod_npub": pod_id, "duration_seconds": 100})
        summary.update(extended=up["extended_duration_seconds"], topup_paid=up["paid_sats"])
        status = await ok("get_pod_status", {"provider": provider, "pod_npub": pod_id})
        summary.update(state=status["state"], seconds_remaining=status["seconds_remaining"])

        # Past the owner's per-call cap (100 sat in the config): refused, nothing paid.
        before = await balance()
        err, capped = await call("spawn_pod", {"provider": provider, "pod_spec_id": "basic",
                                               "duration_seconds": 1200})
        check(err, f"over the cap: {capped}")
        summary.update(cap_error=capped["error_type"], cap_balance_delta=await balance() - before)
        # An argument that looks like a cap is not one: unknown arguments are refused.
        err, extra = await call("spawn_pod", {"provider": provider, "pod_spec_id": "basic",
                                              "duration_seconds": 60, "per_call_sats": 100000})
        check(err and extra["error_type"] == "invalid_request", f"extra argument: {extra}")

        got = await ok("wallet_receive", {"token": os.environ["RECEIVE_TOKEN"]})
        summary.update(received=got["received_sats"], balance_end=await balance())
        b = await ok("wallet_balance", {})
        summary.update(spent_last_24h=b["spent_last_24h_sats"], caps=b["caps"])
        with anyio.move_on_after(5):
            while len(progress) < 3:
                await anyio.sleep(0.05)
        summary["progress"] = progress
    return summary


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    scenario, command, args = sys.argv[1], sys.argv[3], sys.argv[4:]
    log = WarningLog()
    logging.getLogger().addHandler(log)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            summary = anyio.run(run, scenario, command, args)
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
