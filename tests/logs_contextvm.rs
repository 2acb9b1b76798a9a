//! No secret reaches the logs over ContextVM either: a spawn and a status call through the
//! relay, in plaintext mode (where every layer sees the JSON in clear) and with encryption, run
//! under the product's logger with the filter `trace` for every crate. The wire crates (rmcp,
//! contextvm-sdk, nostr, websockets) print message bodies at debug level, so the logger holds
//! them at info whatever the filter; this test is what proves the cap works. Then a client sends
//! messages of the wrong shape carrying a token, which contextvm-sdk logs whole at error level
//! when it cannot convert them. The captured output is searched for the tokens, the password and
//! the secret keys.

mod common;

use common::Capture;

use common::cvm::{body, call, rust_client, world, Raw};
use contextvm_sdk::EncryptionMode;
use nostr_sdk::prelude::*;
use paygress::config::Encryption;
use serde_json::json;

#[tokio::test]
async fn contextvm_flows_at_trace_level_log_no_secret() {
    let capture = Capture::default();
    let writer = capture.clone();
    // The product's own logger, at the most verbose filter an operator can set.
    paygress::app::init_logging_to("trace", move || writer.clone());

    let mut secrets: Vec<String> = Vec::new();
    for (enc, mode) in [
        (Encryption::Disabled, EncryptionMode::Disabled),
        (Encryption::Required, EncryptionMode::Required),
    ] {
        let w = world(enc).await;
        secrets.push(w.provider.keys().secret_key().to_secret_hex());
        secrets.push(w.provider.keys().secret_key().to_bech32().unwrap());
        let client_keys = Keys::generate();
        secrets.push(client_keys.secret_key().to_secret_hex());
        let c = rust_client(&w, client_keys, mode).await;
        let token = w.mint.token(100).await;
        let password = format!("cvm-Log-Secret-{}", secrets.len());
        let r = call(
            &c,
            "spawn_pod",
            json!({"cashu_token": token, "pod_spec_id": "basic", "ssh_username": "carol", "ssh_password": password}),
        )
        .await;
        assert_ne!(r.is_error, Some(true), "{:?}", r.structured_content);
        let pod = body(&r)["pod_npub"].as_str().unwrap().to_string();
        let st = body(&call(&c, "get_pod_status", json!({"pod_npub": pod})).await);
        assert_eq!(st["access"]["ssh_password"], password);
        // A token from the wrong place: refused, and still not logged.
        let foreign = w.mint.token(7).await.replace('A', "B");
        let _ = call(
            &c,
            "topup_pod",
            json!({"pod_npub": pod, "cashu_token": foreign}),
        )
        .await;
        secrets.push(token);
        secrets.push(password);
        let _ = c.cancel().await;
    }

    // Messages whose shape rmcp does not accept (a token where MCP wants an object, or an id):
    // the SDK cannot convert them, drops them, and says so in the logs.
    let w = world(Encryption::Optional).await;
    let raw = Raw::start(&w, Keys::generate()).await;
    let token = w.mint.token(21).await;
    for bad in [
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "spawn_pod", "arguments": token}}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": token}),
        json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": token}),
        json!({"jsonrpc": "2.0", "id": {"t": token}, "result": {}}),
    ] {
        raw.send(&bad.to_string()).await;
    }
    // Messages from one client are handled in order: once this is answered, so is the one above.
    let listed = raw
        .ask(r#"{"jsonrpc":"2.0","id":8,"method":"tools/list","params":{}}"#)
        .await
        .expect("the door answers");
    assert_eq!(listed["id"], 8);
    secrets.push(token);

    let logs = capture.text();
    assert!(
        logs.contains("Failed to convert incoming server-side message"),
        "the wrongly shaped messages reached the SDK's conversion"
    );
    assert!(
        logs.len() > 10_000,
        "TRACE captured the flows ({} bytes)",
        logs.len()
    );
    for s in &secrets {
        // Tokens are long; a 24-character window of the payload is enough to spot a leak.
        let probe = if s.starts_with("cashu") {
            &s[10..34]
        } else {
            s.as_str()
        };
        assert!(
            !logs.contains(probe),
            "a secret reached the logs: {:.12}…",
            s
        );
    }
}
