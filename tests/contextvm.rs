//! ContextVM: the MCP tools over a Nostr relay on 127.0.0.1.
//!
//! - In process: the provider (test mint, backend double) served by the ContextVM door on the
//!   embedded relay, called through contextvm-sdk's Rust client transport. A raw subscriber on
//!   the relay records every ContextVM event to prove that with encryption on no token or
//!   password crosses the relay in clear (and, as a control, that they do with it off).
//! - End to end: the real `paygress-mcp-server --transport contextvm` with its embedded relay
//!   and the real LXD backend, called by the official TypeScript client (`@contextvm/sdk`).

mod common;

use std::path::Path;

use std::time::Duration;

use common::cvm::{body, call, rust_client, world, world_with, World};
use common::mint::TestMint;
use contextvm_sdk::transport::client::{NostrClientTransport, NostrClientTransportConfig};
use contextvm_sdk::EncryptionMode;
use nostr_sdk::prelude::*;
use paygress::config::Encryption;
use rmcp::model::CallToolRequestParams;
use rmcp::ServiceExt;
use serde_json::{json, Value};

/// The whole flow through the Rust client; returns (token, password) so callers can look for
/// them on the relay.
async fn rust_flow(w: &World, mode: EncryptionMode) -> (String, String) {
    let owner = Keys::generate();
    let c = rust_client(w, owner.clone(), mode).await;
    let tools = c.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        ["get_offers", "spawn_pod", "topup_pod", "get_pod_status"]
    );
    let offers = body(&call(&c, "get_offers", json!({})).await);
    assert_eq!(offers["whitelisted_mints"][0], w.mint.url);
    assert_eq!(offers["pod_specs"][0]["rate_msats_per_sec"], 100);

    let token = w.mint.token(100).await;
    let password = "relay-secret-pw-7";
    let r = call(
        &c,
        "spawn_pod",
        json!({"cashu_token": token, "pod_spec_id": "basic", "ssh_username": "alice", "ssh_password": password}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{:?}", r.structured_content);
    let spawned = body(&r);
    assert_eq!(spawned["duration_seconds"], 1000);
    let pod = spawned["pod_npub"].as_str().unwrap().to_string();

    // The owner (the key that paid) sees the login details.
    let st = body(&call(&c, "get_pod_status", json!({"pod_npub": pod})).await);
    assert_eq!(st["state"], "running");
    assert_eq!(st["access"]["ssh_password"], password);
    assert_eq!(st["access"]["ssh_username"], "alice");

    // Another key sees the pod but not the credentials; it may top it up.
    let other = rust_client(w, Keys::generate(), mode).await;
    let st = body(&call(&other, "get_pod_status", json!({"pod_npub": pod})).await);
    assert_eq!(st["state"], "running");
    assert!(st["access"].is_null(), "credentials hidden: {st}");
    let up = call(
        &other,
        "topup_pod",
        json!({"pod_npub": pod, "cashu_token": w.mint.token(10).await}),
    )
    .await;
    assert_ne!(up.is_error, Some(true), "{:?}", up.structured_content);
    assert_eq!(body(&up)["extended_duration_seconds"], 100);

    // The pod is recorded as owned by the paying key.
    let rec = w.provider.store().workload(&pod).unwrap().unwrap();
    assert_eq!(
        rec.owner.as_deref(),
        Some(owner.public_key().to_hex().as_str())
    );
    let _ = c.cancel().await;
    let _ = other.cancel().await;
    (token, password.to_string())
}

fn leaks(events: &[Event], needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for e in events {
        let raw = e.as_json();
        for n in needles {
            if raw.contains(n) {
                found.push(format!("kind {} carries {:.12}…", e.kind.as_u16(), n));
            }
        }
    }
    found
}

#[tokio::test]
async fn rust_client_with_encryption_required_and_nothing_in_clear_on_the_relay() {
    let w = world(Encryption::Required).await;
    let (token, password) = rust_flow(&w, EncryptionMode::Required).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = w.tap.snapshot();
    assert!(
        events.len() >= 10,
        "the tap saw the conversation ({} events)",
        events.len()
    );
    assert!(
        events.iter().all(|e| e.kind != Kind::Custom(25910)),
        "no plaintext ContextVM events when encryption is required"
    );
    let found = leaks(&events, &[&token, &password, "cashu_token", "spawn_pod"]);
    assert!(found.is_empty(), "clear text on the relay: {found:?}");
}

#[tokio::test]
async fn rust_client_with_encryption_disabled_works_and_is_plaintext() {
    let w = world(Encryption::Disabled).await;
    let (token, password) = rust_flow(&w, EncryptionMode::Disabled).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = w.tap.snapshot();
    // The control for the test above: the same search finds the secrets when they are sent in
    // clear, so an empty result there means something.
    assert!(events.iter().all(|e| e.kind == Kind::Custom(25910)));
    assert!(!leaks(&events, &[&token]).is_empty(), "token seen in clear");
    assert!(
        !leaks(&events, &[&password]).is_empty(),
        "password seen in clear"
    );
}

#[tokio::test]
async fn a_plaintext_client_is_refused_when_encryption_is_required() {
    let w = world(Encryption::Required).await;
    let transport = NostrClientTransport::new(
        Keys::generate(),
        NostrClientTransportConfig::default()
            .with_relay_urls(vec![w.relay.url()])
            .with_discovery_relay_urls(vec![w.relay.url()])
            .with_server_pubkey(w.provider.keys().public_key().to_hex())
            .with_encryption_mode(EncryptionMode::Disabled),
    )
    .await
    .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(8), ().serve(transport)).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "a plaintext session must not be established"
    );
}

/// Announcements (CEP-6 server announcement, kind 11316) appear only when the config asks.
#[tokio::test]
async fn the_server_announces_itself_only_when_configured() {
    let kinds = Filter::new().kinds([Kind::Custom(11316), Kind::Custom(10002)]);
    let quiet = world(Encryption::Optional).await;
    let loud = world_with(Encryption::Optional, true).await;
    let fetch = |w: &World, author: PublicKey| {
        let url = w.relay.url();
        let filter = kinds.clone().author(author);
        async move {
            let c = Client::default();
            c.add_relay(url).await.unwrap();
            c.connect().await;
            let mut found = Vec::new();
            for _ in 0..30 {
                found = c
                    .fetch_events(filter.clone(), Duration::from_secs(2))
                    .await
                    .unwrap()
                    .into_iter()
                    .collect::<Vec<_>>();
                if !found.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            found
        }
    };
    let announced = fetch(&loud, loud.provider.keys().public_key()).await;
    assert!(
        announced.iter().any(|e| e.kind == Kind::Custom(11316)),
        "announcement published: {announced:?}"
    );
    let silent = quiet.provider.keys().public_key();
    let c = Client::default();
    c.add_relay(quiet.relay.url()).await.unwrap();
    c.connect().await;
    let none = c
        .fetch_events(kinds.clone().author(silent), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(none.len(), 0, "nothing announced without nostr.announce");
}

// ---- end to end: the real binary and the official TypeScript client -----------------------

struct ServerProcess {
    child: tokio::process::Child,
    relay_url: String,
    npub: String,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A provider config on the LXD backend in `dir`, accepting `mint`'s tokens.
fn lxd_config_file(dir: &Path, mint: &TestMint) -> std::path::PathBuf {
    let cfg = common::config(dir, &[&mint.url], 100, common::free_port_block(3));
    let text = toml::to_string(&cfg)
        .unwrap()
        .replace("kind = \"sandbox\"", "kind = \"lxd\"");
    let file = dir.join("paygress.toml");
    std::fs::write(&file, text).unwrap();
    file
}

async fn start_binary(mint: &TestMint, encryption: &str) -> ServerProcess {
    let dir = tempfile::tempdir().unwrap();
    let file = lxd_config_file(dir.path(), mint);
    let relay_port = common::free_port_block(1).0;
    let keys = Keys::generate();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_paygress-mcp-server"))
        .args(["--transport", "contextvm", "--config"])
        .arg(&file)
        .arg("--embedded-relay")
        .arg(format!("127.0.0.1:{relay_port}"))
        .env("NOSTR_PRIVATE_KEY", keys.secret_key().to_secret_hex())
        .env("CONTEXTVM_ENCRYPTION", encryption)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut s = ServerProcess {
        child,
        relay_url: format!("ws://127.0.0.1:{relay_port}"),
        npub: keys.public_key().to_bech32().unwrap(),
        _dir: dir,
    };
    // Ready when it prints the line naming its npub and relays.
    use tokio::io::AsyncBufReadExt;
    let stderr = s.child.stderr.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("ContextVM server") {
                assert!(l.contains(&s.npub) && l.contains(&s.relay_url), "{l}");
                return;
            }
        }
        panic!("server exited before serving");
    })
    .await;
    assert!(ready.is_ok(), "server did not start in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    s
}

async fn ts_client(s: &ServerProcess, key: &Keys, encryption: &str, calls: Value) -> Vec<Value> {
    common::ts::contextvm_client(&s.relay_url, &s.npub, key, encryption, calls).await
}

async fn ts_flow(encryption: &str) {
    let mint = TestMint::start().await;
    let s = start_binary(&mint, encryption).await;
    let owner = Keys::generate();
    let token = mint.token(100).await;
    let steps = ts_client(
        &s,
        &owner,
        encryption,
        json!([
            {"name": "get_offers"},
            {"name": "spawn_pod", "arguments": {"cashu_token": token, "pod_spec_id": "basic", "ssh_username": "bob", "ssh_password": "ts-pass-word-9"}},
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
    let offers = &steps[1]["result"]["structuredContent"];
    assert_eq!(offers["whitelisted_mints"][0], mint.url);
    assert_eq!(offers["backend"], "lxd");
    let spawn = &steps[2]["result"];
    assert_ne!(spawn["isError"], true, "{spawn}");
    let pod = spawn["structuredContent"]["pod_npub"]
        .as_str()
        .unwrap()
        .to_string();
    let _cleanup = common::LxdCleanup::for_pod(&pod);
    assert_eq!(spawn["structuredContent"]["duration_seconds"], 1000);

    // Status as the owner (a new session with the same key) and as another key.
    let status = json!([{"name": "get_pod_status", "arguments": {"pod_npub": pod}}]);
    let mine = ts_client(&s, &owner, encryption, status.clone()).await;
    let st = &mine[1]["result"]["structuredContent"];
    assert_eq!(st["state"], "running");
    assert_eq!(st["access"]["ssh_password"], "ts-pass-word-9");
    let theirs = ts_client(&s, &Keys::generate(), encryption, status).await;
    let st = &theirs[1]["result"]["structuredContent"];
    assert_eq!(st["state"], "running");
    assert!(st["access"].is_null(), "credentials hidden: {st}");
}

#[tokio::test]
async fn official_typescript_client_with_encryption() {
    ts_flow("required").await;
}

#[tokio::test]
async fn official_typescript_client_without_encryption() {
    ts_flow("disabled").await;
}

/// `start-paygress-context-vm.sh` starts the server in ContextVM mode from a config plus the
/// environment and prints its npub and relays once it is reachable; a client then gets offers.
#[tokio::test]
async fn the_start_script_serves_contextvm_and_prints_npub_and_relays() {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = lxd_config_file(dir.path(), &mint);
    let relay_port = common::free_port_block(1).0;
    let keys = Keys::generate();
    let mut child = tokio::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("start-paygress-context-vm.sh"))
        .arg("--config")
        .arg(&file)
        .env("PAYGRESS_BIN", env!("CARGO_BIN_EXE_paygress-mcp-server"))
        .env("PAYGRESS_EMBEDDED_RELAY", format!("127.0.0.1:{relay_port}"))
        .env("NOSTR_PRIVATE_KEY", keys.secret_key().to_secret_hex())
        .env("CONTEXTVM_ENCRYPTION", "required")
        // As from systemd or nohup: no input, so it serves ContextVM itself.
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let npub = keys.public_key().to_bech32().unwrap();
    let relay_url = format!("ws://127.0.0.1:{relay_port}");
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("ContextVM server") {
                return l;
            }
        }
        panic!("the script's server exited before serving");
    })
    .await
    .expect("ready line in time");
    assert!(line.contains(&npub), "{line}");
    assert!(line.contains(&relay_url), "{line}");
    assert!(line.contains("encryption required"), "{line}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let s = ServerProcess {
        child,
        relay_url,
        npub,
        _dir: dir,
    };
    let steps = ts_client(
        &s,
        &Keys::generate(),
        "required",
        json!([{"name": "get_offers"}]),
    )
    .await;
    assert_eq!(
        steps[1]["result"]["structuredContent"]["whitelisted_mints"][0],
        mint.url
    );
}

/// `--transport both`: one provider answers on stdio and over the relay at once.
#[tokio::test]
async fn both_transports_serve_the_same_provider() {
    use rmcp::transport::TokioChildProcess;
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = lxd_config_file(dir.path(), &mint);
    let relay_port = common::free_port_block(1).0;
    let keys = Keys::generate();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_paygress-mcp-server"));
    cmd.args(["--transport", "both", "--config"])
        .arg(&file)
        .arg("--embedded-relay")
        .arg(format!("127.0.0.1:{relay_port}"))
        .env("NOSTR_PRIVATE_KEY", keys.secret_key().to_secret_hex());
    let stdio = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
    let offers = stdio
        .call_tool(CallToolRequestParams::new("get_offers"))
        .await
        .unwrap();
    assert_eq!(body(&offers)["whitelisted_mints"][0], mint.url);

    let s = ServerProcess {
        child: tokio::process::Command::new("true").spawn().unwrap(),
        relay_url: format!("ws://127.0.0.1:{relay_port}"),
        npub: keys.public_key().to_bech32().unwrap(),
        _dir: dir,
    };
    let steps = ts_client(
        &s,
        &Keys::generate(),
        "optional",
        json!([{"name": "get_offers"}]),
    )
    .await;
    assert_eq!(
        steps[1]["result"]["structuredContent"]["whitelisted_mints"][0],
        mint.url
    );
    let _ = stdio.cancel().await;
}

/// Wait until the backend has started `n` creates (each spawn past its swap starts one).
async fn creates_started(w: &World, n: u32) {
    for _ in 0..600 {
        if *w.backend.creates.lock().unwrap() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{n} creates never started");
}

/// A sender with `max_concurrent_per_sender` spawns in flight (the backend's create is slow)
/// gets its next request, a top-up, refused with `resource_unavailable` at the door, its token
/// untouched; another sender is served meanwhile, and the first sender's spawns complete.
#[tokio::test]
async fn a_sender_over_the_cap_is_refused_at_the_door_and_others_are_served() {
    let w = common::cvm::ready(
        common::cvm::prepare_with(Encryption::Required, false, |c| {
            c.provider.max_concurrent_per_sender = 2;
        })
        .await,
    )
    .await;
    let a = rust_client(&w, Keys::generate(), EncryptionMode::Required).await;
    let b = rust_client(&w, Keys::generate(), EncryptionMode::Required).await;
    let spawn = |t: String, user: &str| json!({"cashu_token": t, "ssh_username": user});
    let first = body(&call(&a, "spawn_pod", spawn(w.mint.token(100).await, "alice")).await);
    let pod = first["pod_npub"].as_str().expect("a pod").to_string();

    w.backend.set_create_delay(Duration::from_secs(3));
    let (t1, t2) = (w.mint.token(100).await, w.mint.token(100).await);
    let slow = async {
        tokio::join!(
            call(&a, "spawn_pod", spawn(t1, "alice")),
            call(&a, "spawn_pod", spawn(t2, "alice"))
        )
    };
    let over = async {
        creates_started(&w, 3).await;
        let t = w.mint.token(50).await;
        let r = call(
            &a,
            "topup_pod",
            json!({"pod_npub": pod, "cashu_token": t.clone()}),
        )
        .await;
        let other = call(&b, "spawn_pod", spawn(w.mint.token(100).await, "bob")).await;
        (r, t, other)
    };
    let ((s1, s2), (refused, refused_token, other)) = tokio::join!(slow, over);
    assert_eq!(refused.is_error, Some(true));
    let e = body(&refused);
    assert_eq!(e["error_type"], "resource_unavailable", "{e}");
    assert!(e.get("refund_token").is_none(), "nothing was taken: {e}");
    assert_eq!(
        w.mint
            .receive_fresh(&refused_token)
            .await
            .expect("untouched"),
        50,
        "the refused token is still spendable"
    );
    assert!(
        body(&other)["pod_npub"].as_str().is_some(),
        "another sender is served"
    );
    for s in [s1, s2] {
        assert!(body(&s)["pod_npub"].as_str().is_some(), "{:?}", body(&s));
    }
}

/// Whom a ContextVM event is addressed to (its `p` tag).
fn addressee(e: &Event) -> Option<PublicKey> {
    e.tags.iter().find_map(|t| match t.as_standardized() {
        Some(TagStandard::PublicKey { public_key, .. }) => Some(*public_key),
        _ => None,
    })
}

/// One buyer's spawn reaches no other client: another client connected to the same provider at
/// the same time receives nothing of it (not a progress token, not the timing of someone else's
/// purchase). contextvm-sdk 0.2 broadcasts server notifications to every client, so the door
/// sends no progress over ContextVM; before it did, the bystander got all four. In clear, so
/// the tap reads every event; as a control, the buyer's own answer is seen addressed to it.
#[tokio::test]
async fn another_buyers_spawn_sends_nothing_to_a_bystander() {
    let w = world(Encryption::Disabled).await;
    let bystander = Keys::generate();
    let b = rust_client(&w, bystander.clone(), EncryptionMode::Disabled).await;
    assert_eq!(b.list_all_tools().await.unwrap().len(), 4);

    let buyer = common::cvm::Raw::start(&w, Keys::generate()).await;
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    assert!(buyer.ask(init).await.is_some(), "initialize answered");
    buyer
        .send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .await;
    let token = w.mint.token(100).await;
    let spawn = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "spawn_pod",
        "arguments": {"cashu_token": token, "ssh_username": "alice", "request_id": "progress-1"},
        "_meta": {"progressToken": "buyer-progress-7"}}});
    let answer = buyer.ask(&spawn.to_string()).await.expect("spawn answered");
    assert!(
        answer["result"]["structuredContent"]["pod_npub"].is_string(),
        "{answer}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let to = |who: PublicKey, what: &str| {
        w.tap
            .snapshot()
            .into_iter()
            .filter(|e| addressee(e) == Some(who) && e.content.contains(what))
            .count()
    };
    assert!(
        to(buyer.keys.public_key(), "pod_npub") >= 1,
        "the tap sees the buyer's answer"
    );
    assert_eq!(
        to(bystander.public_key(), "notifications/progress"),
        0,
        "another client got someone else's progress"
    );
    let since_spawn = w
        .tap
        .snapshot()
        .into_iter()
        .filter(|e| addressee(e) == Some(bystander.public_key()))
        .filter(|e| !e.content.contains("\"tools\"") && !e.content.contains("protocolVersion"))
        .count();
    assert_eq!(since_spawn, 0, "the bystander got only its own answers");
    let _ = b.cancel().await;
}
