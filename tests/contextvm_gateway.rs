//! The seeds' gateway path: a ContextVM gateway starts `start-paygress-context-vm.sh` and speaks
//! MCP to it over stdio, serving it on Nostr under the gateway's own key
//! (`gateway-cli --private-key … --relays … --server ./start-paygress-context-vm.sh`).
//!
//! Everything here is the real thing: the official TypeScript SDK's `NostrMCPGateway`
//! (`tools/e2e/contextvm-gateway.mjs`) wraps the script, which runs the built server binary
//! (sandbox backend, a test mint's tokens); the official TypeScript ContextVM client calls the
//! gateway over a nostr-relay-builder relay on 127.0.0.1. Last, rmcp's stdio client starts the
//! script over plain pipes and gets stdio MCP too.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mint::TestMint;
use common::ts::{contextvm_client, e2e_script};
use nostr_sdk::prelude::*;
use paygress::config::Encryption;
use paygress::doors::contextvm::{self, ContextVmOptions};
use paygress::relay::EmbeddedRelay;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

/// The gateway process; dropping it closes its stdin (it then stops the server it started) and
/// kills it.
struct Gateway {
    child: tokio::process::Child,
    npub: String,
    /// Everything the gateway and the server it started wrote on stderr.
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.start_kill();
    }
}

/// Removes the pods a test sold: the server keeps its workloads when it stops (a restarted
/// provider re-adopts them), so the end of the gateway does not remove them.
struct SandboxCleanup {
    config: std::path::PathBuf,
    pods: Vec<String>,
}

impl Drop for SandboxCleanup {
    fn drop(&mut self) {
        let config = self.config.clone();
        let names: Vec<String> = self
            .pods
            .iter()
            .map(|p| common::lxd_instance_name(p))
            .collect();
        // Drop cannot await; the backend is async, so it gets a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let cfg = paygress::config::Config::load(&config).unwrap();
                let backend = paygress::backend::from_config(&cfg).await.unwrap();
                for n in names {
                    let _ = backend.destroy(&n).await;
                }
            })
        })
        .join();
    }
}

/// A provider config on the sandbox backend in `dir`, accepting `mint`'s tokens. No relays: the
/// gateway is the only thing on Nostr.
fn config_file(dir: &Path, mint: &TestMint) -> std::path::PathBuf {
    let cfg = common::config(dir, &[&mint.url], 100, common::free_port_block(3));
    let file = dir.join("paygress.toml");
    std::fs::write(&file, toml::to_string(&cfg).unwrap()).unwrap();
    file
}

/// Start the official gateway in front of `start-paygress-context-vm.sh --config config`, as
/// `key`, on `relay`, with the seeds' environment naming the provider's own key `provider`.
/// With `inject` the gateway writes each client's key into `_meta.clientPubkey`; `caller` is
/// the script's PAYGRESS_STDIO_CALLER, if set. Returns once the whole chain (relay, gateway, script, server) has
/// answered an MCP `initialize`.
async fn start_gateway(
    relay: &EmbeddedRelay,
    config: &Path,
    key: &Keys,
    provider: &Keys,
    inject: bool,
    caller: Option<&str>,
) -> Gateway {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("start-paygress-context-vm.sh");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(e2e_script("contextvm-gateway.mjs"))
        .args(["--relay", &relay.url(), "--key"])
        .arg(key.secret_key().to_secret_hex())
        .args(["--encryption", "optional"]);
    if inject {
        cmd.arg("--inject-client-pubkey");
    }
    if let Some(c) = caller {
        cmd.env("PAYGRESS_STDIO_CALLER", c);
    }
    let mut child = cmd
        .args(["--", "bash"])
        .arg(&script)
        .arg("--config")
        .arg(config)
        .env("PAYGRESS_BIN", env!("CARGO_BIN_EXE_paygress-mcp-server"))
        // The seeds set these for the server; under a gateway they must not make it answer on
        // the relays itself.
        .env("NOSTR_RELAYS", relay.url())
        .env("NOSTR_PRIVATE_KEY", provider.secret_key().to_secret_hex())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let sink = stderr.clone();
    let mut errs = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(l)) = errs.next_line().await {
            sink.lock().unwrap().push(l);
        }
    });
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("gateway started in time")
        .unwrap()
        .expect("gateway printed its ready line");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["step"], "ready");
    assert_eq!(ready["pubkey"], key.public_key().to_hex());
    let gateway = Gateway {
        child,
        npub: key.public_key().to_bech32().unwrap(),
        stderr,
    };
    let opts = ContextVmOptions {
        relays: vec![relay.url()],
        encryption: Encryption::Optional,
        announce: false,
    };
    contextvm::self_check(key.public_key(), &opts, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the wrapped server answers through the gateway: {e}\n{}",
                gateway.stderr()
            )
        });
    gateway
}

fn result<'a>(steps: &'a [Value], i: usize, name: &str) -> &'a Value {
    assert_eq!(steps[i]["name"], name, "{steps:?}");
    let r = &steps[i]["result"];
    assert_ne!(r["isError"], true, "{name}: {r}");
    &r["structuredContent"]
}

/// The whole sale through the gateway: offers, a paid spawn (SSH answers), a top-up and status
/// from other sessions. Returns what `get_pod_status` showed (the buyer, another key, and
/// another key naming the buyer's key in `_meta.clientPubkey`).
async fn sale_through_the_gateway(inject: bool, caller: Option<&str>) -> [Value; 3] {
    let mint = TestMint::start().await;
    let relay = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &mint);
    let mut cleanup = SandboxCleanup {
        config: config.clone(),
        pods: Vec::new(),
    };
    let gateway_key = Keys::generate();
    let provider_key = Keys::generate();
    let gw = start_gateway(&relay, &config, &gateway_key, &provider_key, inject, caller).await;

    // One client session: tools, offers, a paid spawn.
    let token = mint.token(100).await;
    let buyer = Keys::generate();
    // The buyer names itself in `_meta.clientPubkey` too, as a client may.
    let me = json!({"clientPubkey": buyer.public_key().to_hex()});
    let steps = contextvm_client(
        &relay.url(),
        &gw.npub,
        &buyer,
        "required",
        json!([
            {"name": "get_offers"},
            {"name": "spawn_pod", "arguments": {"cashu_token": token, "pod_spec_id": "basic",
                "ssh_username": "carol", "ssh_password": "gateway-pass-4"}, "_meta": me},
        ]),
    )
    .await;
    let names: Vec<&str> = steps[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["get_offers", "spawn_pod", "topup_pod", "get_pod_status"]
    );
    let offers = result(&steps, 1, "get_offers");
    assert_eq!(offers["whitelisted_mints"][0], mint.url);
    assert_eq!(offers["backend"], "sandbox");
    assert_eq!(
        offers["provider"]["npub"],
        provider_key.public_key().to_bech32().unwrap()
    );
    let spawned = result(&steps, 2, "spawn_pod");
    assert_eq!(spawned["duration_seconds"], 1000);
    assert_eq!(spawned["ssh_username"], "carol");
    assert_eq!(spawned["ssh_password"], "gateway-pass-4");
    let pod = spawned["pod_npub"].as_str().unwrap().to_string();
    cleanup.pods.push(pod.clone());
    let port = spawned["node_port"].as_u64().unwrap() as u16;
    // Paid: the token is spent at the mint.
    assert!(
        mint.receive_fresh(&token).await.is_err(),
        "the spawn's token was swapped"
    );
    // The pod answers SSH.
    let mut banner = [0u8; 7];
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::io::AsyncReadExt::read_exact(&mut c, &mut banner)
        .await
        .unwrap();
    assert_eq!(&banner, b"SSH-2.0");

    // A second session (a new `initialize` through the same gateway), another key: top-up and
    // status, once plainly and once claiming to be the buyer.
    let topup = mint.token(10).await;
    let steps = contextvm_client(
        &relay.url(),
        &gw.npub,
        &Keys::generate(),
        "optional",
        json!([
            {"name": "topup_pod", "arguments": {"pod_npub": pod, "cashu_token": topup}},
            {"name": "get_pod_status", "arguments": {"pod_npub": pod}},
            {"name": "get_pod_status", "arguments": {"pod_npub": pod},
                "_meta": {"clientPubkey": buyer.public_key().to_hex()}},
        ]),
    )
    .await;
    let up = result(&steps, 1, "topup_pod");
    assert_eq!(up["success"], true);
    assert_eq!(up["extended_duration_seconds"], 100);
    let other = result(&steps, 2, "get_pod_status").clone();
    assert_eq!(other["state"], "running");
    assert!(
        other["seconds_remaining"].as_u64().unwrap() > 1000,
        "the top-up's time is added: {other}"
    );
    assert!(mint.receive_fresh(&topup).await.is_err(), "top-up paid");
    let forged = result(&steps, 3, "get_pod_status").clone();

    // The buyer again, in a third session.
    let steps = contextvm_client(
        &relay.url(),
        &gw.npub,
        &buyer,
        "required",
        json!([{"name": "get_pod_status", "arguments": {"pod_npub": pod}, "_meta": me}]),
    )
    .await;
    let mine = result(&steps, 1, "get_pod_status").clone();

    // Wrapped, the server spoke stdio only: it never served ContextVM on the relays itself.
    let log = gw.stderr();
    assert!(log.contains("provider open"), "{log}");
    assert!(!log.contains("ContextVM server"), "{log}");
    [mine, other, forged]
}

/// A gateway that does not say who calls: the buyer gets the login details with the spawn, and
/// `get_pod_status` shows them to no one, whatever a client claims.
#[tokio::test]
async fn the_official_gateway_wrapping_the_start_script_sells_a_pod() {
    let [mine, other, forged] = sale_through_the_gateway(false, None).await;
    for st in [&mine, &other, &forged] {
        assert_eq!(st["state"], "running");
        assert!(st["access"].is_null(), "no login details: {st}");
    }
}

/// A gateway that injects each client's key: the key that paid owns the pod, as when the server
/// serves ContextVM itself; a client naming the buyer's key is overruled by the gateway.
#[tokio::test]
async fn behind_a_gateway_that_injects_client_keys_the_buyer_owns_the_pod() {
    let [mine, other, forged] = sale_through_the_gateway(true, Some("gateway-meta")).await;
    assert_eq!(mine["access"]["ssh_password"], "gateway-pass-4", "{mine}");
    assert_eq!(mine["access"]["ssh_username"], "carol");
    assert!(other["access"].is_null(), "{other}");
    assert!(forged["access"].is_null(), "{forged}");
}

/// The control for the test above (the `_meta` a client sends does reach the server), and the
/// reason `gateway-meta` is only for a gateway that injects: behind one that does not, a client
/// naming the buyer's key sees the buyer's login details.
#[tokio::test]
async fn trusting_client_keys_behind_a_gateway_that_does_not_inject_them_is_unsafe() {
    let [mine, other, forged] = sale_through_the_gateway(false, Some("gateway-meta")).await;
    assert_eq!(mine["access"]["ssh_password"], "gateway-pass-4", "{mine}");
    assert!(other["access"].is_null(), "{other}");
    assert_eq!(
        forged["access"]["ssh_password"], "gateway-pass-4",
        "{forged}"
    );
}

/// Any stdio MCP client that starts the script (here rmcp's, over plain pipes, where Node's
/// gateway gives a socket) gets stdio MCP, and the script says why on stderr.
#[tokio::test]
async fn the_start_script_serves_stdio_to_a_client_on_a_pipe() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::TokioChildProcess;
    use rmcp::ServiceExt;
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &mint);
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("start-paygress-context-vm.sh"))
        .arg("--config")
        .arg(&config)
        .env("PAYGRESS_BIN", env!("CARGO_BIN_EXE_paygress-mcp-server"));
    let (transport, stderr) = TokioChildProcess::builder(cmd)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = ().serve(transport).await.unwrap();
    let offers = client
        .call_tool(CallToolRequestParams::new("get_offers"))
        .await
        .unwrap();
    assert_eq!(
        offers.structured_content.unwrap()["whitelisted_mints"][0],
        mint.url
    );
    let _ = client.cancel().await;
    let mut lines = tokio::io::BufReader::new(stderr.unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the script's first line")
        .unwrap()
        .unwrap_or_default();
    assert!(first.contains("serving stdio (stdin is a pipe"), "{first}");
}
