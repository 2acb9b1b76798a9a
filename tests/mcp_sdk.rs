//! The official MCP SDKs against the real `paygress-mcp-server` binary over stdio: the Python
//! SDK (PyPI `mcp`) in its default `auto` mode (which speaks the 2026-07-28 revision when the
//! server answers `server/discover`) and in `legacy` mode (the `initialize` handshake), and the
//! TypeScript SDK: `@modelcontextprotocol/sdk` 1.x (handshake) and its successor
//! `@modelcontextprotocol/client` 2.x in its `auto` version negotiation (2026-07-28). Each client is a script under tools/e2e/ that
//! buys a pod from the demo (sandbox backend, embedded test mint) with progress, tops it up,
//! reads its status and validates every result against the tool's `outputSchema`, failing on
//! any validator warning; these tests run the scripts and check what they report.
//!
//! tools/test.sh installs both SDKs (tools/e2e/requirements.txt into tools/e2e/.venv,
//! tools/e2e/package.json into tools/e2e/node_modules); without them these tests fail.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

fn e2e() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/e2e")
}

fn python() -> PathBuf {
    let p = e2e().join(".venv/bin/python");
    assert!(
        p.exists(),
        "the official MCP Python SDK is not installed: run tools/test.sh (it creates tools/e2e/.venv \
         and installs tools/e2e/requirements.txt)"
    );
    p
}

fn node_sdk(package: &str) -> PathBuf {
    let sdk = e2e()
        .join("node_modules")
        .join(package)
        .join("package.json");
    assert!(
        sdk.exists(),
        "the official MCP TypeScript SDK {package} is not installed: run tools/test.sh (npm install --prefix tools/e2e)"
    );
    PathBuf::from("node")
}

/// Run a client script against `paygress-mcp-server --demo --demo-backend sandbox`, in a clean
/// environment with an empty HOME, and return its JSON summary.
async fn run_client(program: PathBuf, script_args: &[&str]) -> Value {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(script_args)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_paygress-mcp-server"))
        .args(["--demo", "--demo-backend", "sandbox"])
        .current_dir(e2e())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // A generous bound for liveness only.
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("the client finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script_args:?} failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("no summary ({e}): {stdout}"))
}

/// What every client must report: all tools, the four progress steps in order, every result
/// (and the typed error) validated, the pod bought, topped up and running.
fn assert_bought_and_validated(s: &Value) {
    assert_eq!(s["server_name"], "paygress-mcp-server", "{s}");
    assert_eq!(
        s["tools"],
        json!([
            "get_offers",
            "spawn_pod",
            "topup_pod",
            "get_pod_status",
            "get_demo_token"
        ]),
        "{s}"
    );
    let numbers = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap_or_else(|| panic!("not a list: {s}"))
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect()
    };
    // Every step arrives, in order. The server writes the last one (ready) before the result,
    // but the TypeScript SDK 1.x runs notification handlers a microtask later than response
    // handlers: when both arrive in one read it drops the last step as "unknown token" itself.
    let progress = numbers(&s["progress"]);
    let all = [1.0, 2.0, 3.0, 4.0];
    let ts_v1_race = s["sdk"] == "v1" && progress == all[..3];
    assert!(progress == all || ts_v1_race, "progress in order: {s}");
    assert_eq!(numbers(&s["progress_total"]), [4.0], "{s}");
    assert_eq!(
        s["validated"],
        json!([
            "get_offers",
            "get_demo_token",
            "spawn_pod",
            "get_demo_token",
            "topup_pod",
            "get_pod_status",
            "get_pod_status (error)"
        ]),
        "{s}"
    );
    // 50 sats at the demo's first tier (10 msat/s), then 10 sats more.
    assert_eq!(s["duration_seconds"], 5000, "{s}");
    assert_eq!(s["extended_duration_seconds"], 1000, "{s}");
    assert_eq!(s["state"], "running", "{s}");
}

/// The Python SDK's default: it probes `server/discover`, gets a real answer and speaks the
/// 2026-07-28 revision (per-request envelope, no handshake) for the whole purchase.
#[tokio::test]
async fn the_python_sdk_in_its_default_auto_mode_buys_tops_up_and_reads_status() {
    let s = run_client(python(), &["mcp_python_client.py", "auto"]).await;
    assert_eq!(s["mode"], "auto");
    assert_eq!(s["protocol_version"], "2026-07-28", "{s}");
    assert_bought_and_validated(&s);
}

/// The Python SDK forced onto the `initialize` handshake.
#[tokio::test]
async fn the_python_sdk_in_legacy_mode_buys_tops_up_and_reads_status() {
    let s = run_client(python(), &["mcp_python_client.py", "legacy"]).await;
    assert_eq!(s["mode"], "legacy");
    assert_eq!(s["protocol_version"], "2025-11-25", "{s}");
    assert_bought_and_validated(&s);
}

/// The TypeScript SDK 1.x (a handshake client, newest revision 2025-11-25); its ajv validator
/// must print no warning about our schemas.
#[tokio::test]
async fn the_typescript_sdk_buys_tops_up_and_reads_status_without_validator_warnings() {
    let s = run_client(
        node_sdk("@modelcontextprotocol/sdk"),
        &["mcp-ts-client.mjs", "v1"],
    )
    .await;
    assert_eq!(s["protocol_version"], "2025-11-25", "{s}");
    assert_bought_and_validated(&s);
}

/// The TypeScript SDK 2.x (`@modelcontextprotocol/client`, the line the Inspector is built on)
/// with `versionNegotiation: {mode: 'auto'}`: it probes `server/discover` and speaks 2026-07-28.
#[tokio::test]
async fn the_typescript_sdk_v2_in_auto_mode_speaks_2026_07_28_and_buys() {
    let s = run_client(
        node_sdk("@modelcontextprotocol/client"),
        &["mcp-ts-client.mjs", "v2-auto"],
    )
    .await;
    assert_eq!(s["protocol_version"], "2026-07-28", "{s}");
    assert_bought_and_validated(&s);
}
