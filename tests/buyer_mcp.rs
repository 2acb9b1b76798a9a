//! `paygress-cli mcp` end to end: the official MCP Python SDK (PyPI `mcp`) as the agent,
//! against a real provider process (`paygress-cli provider start`, sandbox backend, test mint,
//! relay on 127.0.0.1). The agent funds the wallet by Lightning, finds the provider, buys a pod,
//! runs commands on it over SSH, tops it up, reads its status, is refused past the owner's cap
//! with nothing paid, and gets a refund back into the wallet to the sat when the provider fails
//! after payment. Host-key pinning is driven by rmcp's client (the official Rust SDK), since it
//! needs the provider restarted mid-session.
//!
//! tools/test.sh installs the SDK (tools/e2e/requirements.txt into tools/e2e/.venv).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::seller::{Seller, CLI};
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;
use serde_json::{json, Value};

fn e2e() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/e2e")
}

fn python() -> PathBuf {
    let p = e2e().join(".venv/bin/python");
    assert!(
        p.exists(),
        "the official MCP Python SDK is not installed: run tools/test.sh"
    );
    p
}

/// A buyer config with a 100-sat per-call cap.
fn buyer_config(dir: &Path, s: &Seller) -> PathBuf {
    let f = dir.join("buyer.toml");
    std::fs::write(
        &f,
        format!(
            "relays = [{:?}]\nmint = {:?}\n[caps]\nper_call_sats = 100\nper_day_sats = 1000\nper_provider_sats = 500\n",
            s.relay.url(),
            s.mint.url
        ),
    )
    .unwrap();
    f
}

/// The agent's summary, and the spends its journal recorded (sats, provider).
async fn agent(
    scenario: &str,
    s: &Seller,
    extra_env: &[(&str, String)],
) -> (Value, Vec<(String, u64, String)>) {
    let home = tempfile::tempdir().unwrap();
    let cfg = buyer_config(home.path(), s);
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg("buyer_agent.py")
        .arg(scenario)
        .arg("--")
        .arg(CLI)
        .args(["mcp", "--config"])
        .arg(&cfg)
        .current_dir(e2e())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("PROVIDER_NPUB", s.npub())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    // A generous bound for liveness only.
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("the agent finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{scenario} failed:\n{stderr}\n{stdout}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    let v: Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("no summary ({e}): {stdout}"));
    // The journal the owner reads names every spend.
    let journal = std::fs::read_to_string(home.path().join(".paygress/wallet/journal.jsonl"))
        .unwrap_or_default();
    assert!(!journal.contains("cashu"), "no token in the journal");
    if let Some(pod) = v["pod_npub"].as_str() {
        s.bought(pod);
    }
    let entries = journal
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["sats"].as_u64().unwrap(),
                e["provider"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    (v, entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_agent_funds_buys_runs_tops_up_and_stays_within_the_cap() {
    let s = Seller::start("127.0.0.1", common::free_port_block(3)).await;
    let token = s.mint.token(33).await;
    let (v, journal) = agent("main", &s, &[("RECEIVE_TOKEN", token)]).await;
    let n = s.npub();
    assert_eq!(
        journal,
        [
            ("fund".to_string(), 400, String::new()),
            ("spend".to_string(), 30, n.clone()),
            ("spend".to_string(), 10, n.clone()),
            ("receive".to_string(), 33, String::new()),
        ],
        "every spend in the owner's journal, nothing for the refused one"
    );
    assert_eq!(v["balance_before"], 0, "{v}");
    assert_eq!(v["balance_funded"], 400, "{v}");
    // 300 s of basic at 100 msat/s: 30 sat.
    assert_eq!(v["paid_sats"], 30, "{v}");
    assert_eq!(v["duration_seconds"], 300, "{v}");
    assert_eq!(v["balance_after_spawn"], 370, "{v}");
    assert_eq!(v["pinned"], 1, "{v}");
    assert_eq!(v["whoami"], "agent\n", "{v}");
    assert_eq!(v["whoami_exit"], 0, "{v}");
    assert_eq!(v["three_exit"], 3, "{v}");
    assert_eq!(v["three_stderr"], "oops\n", "{v}");
    assert_eq!(v["extended"], 100, "{v}");
    assert_eq!(v["topup_paid"], 10, "{v}");
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["cap_error"], "cap_exceeded", "{v}");
    assert_eq!(v["cap_balance_delta"], 0, "nothing paid past the cap: {v}");
    assert_eq!(v["received"], 33, "{v}");
    assert_eq!(v["balance_end"], 370 - 10 + 33, "{v}");
    assert_eq!(v["spent_last_24h"], 40, "{v}");
    assert_eq!(v["progress"], json!([1.0, 2.0, 3.0]), "{v}");
    assert_eq!(
        v["not_read_only"],
        json!([
            "run_command",
            "spawn_pod",
            "topup_pod",
            "wallet_fund",
            "wallet_receive"
        ]),
        "{v}"
    );
}

/// The provider fails after it was paid (its only SSH port is held on ::1, which its
/// pre-payment check on 0.0.0.0 does not see): the refund is back in the wallet to the sat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_failure_after_payment_puts_the_refund_back_in_the_wallet() {
    let port = common::free_port_block(1);
    let s = Seller::start("::1", port).await;
    let _held = std::net::TcpListener::bind(("::1", port.0)).unwrap();
    let (v, journal) = agent("refund", &s, &[]).await;
    let n = s.npub();
    assert_eq!(
        journal,
        [
            ("fund".to_string(), 300, String::new()),
            ("spend".to_string(), 30, n.clone()),
            ("refund".to_string(), 30, n),
        ]
    );
    assert_eq!(v["error_type"], "pod_creation_failed", "{v}");
    assert_eq!(v["refunded_sats"], 30, "{v}");
    assert_eq!(v["balance_funded"], 300, "{v}");
    assert_eq!(v["balance_after"], 300, "to the sat: {v}");
}

async fn call(
    c: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    name: &'static str,
    args: Value,
) -> (bool, Value) {
    let r = c
        .call_tool(
            CallToolRequestParams::new(name).with_arguments(args.as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    (r.is_error.unwrap_or(false), r.structured_content.unwrap())
}

/// Wait until the restarted provider serves the pod's SSH port again (it re-adopts its
/// workloads after it starts; a generous bound for liveness only).
async fn wait_for_port(port: u16) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("port {port} never came back");
}

/// A pod whose SSH host key changes (the provider restarts with a new host key) is refused by
/// run_command, before any login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_host_key_changes_is_refused() {
    let mut s = Seller::start("127.0.0.1", common::free_port_block(2)).await;
    let home = tempfile::tempdir().unwrap();
    let cfg = buyer_config(home.path(), &s);
    let t = s.mint.token(200).await;
    let mut cmd = tokio::process::Command::new(CLI);
    cmd.args(["mcp", "--config"])
        .arg(&cfg)
        .env("HOME", home.path())
        .env_remove("NOSTR_RELAYS")
        .stderr(Stdio::null());
    let c = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
    let (err, got) = call(&c, "wallet_receive", json!({"token": t})).await;
    assert!(!err, "{got}");
    // A malformed extra key is refused before anything is paid.
    let (err, bad) = call(
        &c,
        "spawn_pod",
        json!({"provider": s.npub(), "pod_spec_id": "basic", "duration_seconds": 120,
               "ssh_public_key": "ssh-ed25519 AAAA; rm -rf /"}),
    )
    .await;
    assert!(err && bad["error_type"] == "invalid_request", "{bad}");
    let (_, b) = call(&c, "wallet_balance", json!({})).await;
    assert_eq!(b["total_sats"], 200, "{b}");
    let extra =
        russh::keys::PrivateKey::random(&mut rand::rngs::OsRng, russh::keys::Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .to_openssh()
            .unwrap();
    let (err, pod) = call(
        &c,
        "spawn_pod",
        json!({"provider": s.npub(), "pod_spec_id": "basic", "duration_seconds": 120,
               "ssh_public_key": extra}),
    )
    .await;
    assert!(!err, "{pod}");
    let id = pod["pod_npub"].as_str().unwrap().to_string();
    s.bought(&id);
    // The provider's spawn answer named the sandbox's host key, and that is what is pinned.
    let key = s
        .config
        .parent()
        .unwrap()
        .join("sandbox/ssh_host_ed25519_key");
    let on_disk = russh::keys::PrivateKey::from_openssh(std::fs::read(&key).unwrap())
        .unwrap()
        .public_key()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    assert_eq!(pod["ssh_host_key_fingerprints"], json!([on_disk]), "{pod}");
    let (err, r) = call(
        &c,
        "run_command",
        json!({"pod_npub": id, "command": "whoami"}),
    )
    .await;
    assert!(!err && r["stdout"] == "agent\n", "{r}");
    // The extra key reached authorized_keys through stdin, byte for byte.
    let (err, r) = call(
        &c,
        "run_command",
        json!({"pod_npub": id, "command": "cat ~/.ssh/authorized_keys"}),
    )
    .await;
    assert!(!err && r["stdout"] == format!("{extra}\n"), "{r}");

    let port = pod["node_port"].as_u64().unwrap() as u16;
    // A restart that keeps the host key: the pin still holds (the control for what follows).
    s.restart().await;
    wait_for_port(port).await;
    let (err, r) = call(
        &c,
        "run_command",
        json!({"pod_npub": id, "command": "echo same"}),
    )
    .await;
    assert!(!err && r["stdout"] == "same\n", "{r}");

    // The provider comes back with another host key (its key file replaced).
    let key = s
        .config
        .parent()
        .unwrap()
        .join("sandbox/ssh_host_ed25519_key");
    assert!(key.exists(), "{}", key.display());
    std::fs::remove_file(&key).unwrap();
    s.restart().await;
    wait_for_port(port).await;
    let (err, r) = call(
        &c,
        "run_command",
        json!({"pod_npub": id, "command": "touch /tmp/x"}),
    )
    .await;
    assert!(err, "{r}");
    assert_eq!(r["error_type"], "host_key_mismatch", "{r}");
    let _ = c.cancel().await;
}
