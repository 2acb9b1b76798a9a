//! No secret of the HTTP door reaches the logs: a paid spawn (token in X-Cashu, a password), a
//! replay, status with the owner token, a top-up with the token in the body, a failed spawn with
//! a refund and a garbled request run under the product's logger at `trace` for every crate, and
//! the output is searched for every token, password, owner token and refund token.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::backend::{FakeBackend, Step};
use common::mint::TestMint;
use common::Capture;
use paygress::config::HttpSection;
use paygress::doors::http::{self, HttpOptions};
use paygress::Provider;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_http_door_at_trace_level_logs_no_secret() {
    let capture = Capture::default();
    let writer = capture.clone();
    paygress::app::init_logging_to("trace", move || writer.clone());

    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), &[&mint.url], 100, common::free_port_block(4));
    let backend = Arc::new(FakeBackend::new());
    let provider = Provider::open(cfg, backend.clone()).await.unwrap();
    let shutdown = CancellationToken::new();
    let (addr, _task) = http::start(
        provider,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        HttpOptions {
            section: HttpSection::default(),
            other_doors: vec![],
            extra_tools: vec![],
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{addr}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = reqwest::Client::new();
    let mut secrets: Vec<String> = Vec::new();

    let t1 = mint.token(10).await;
    let password = "http-Secret-Pass-42";
    let body = json!({"ssh_username": "alice", "ssh_password": password});
    let mut pod = Value::Null;
    for _ in 0..2 {
        pod = c
            .post(format!("{base}/pods"))
            .header("X-Cashu", &t1)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    }
    let owner = pod["owner_token"].as_str().unwrap().to_string();
    let id = pod["pod_npub"].as_str().unwrap().to_string();
    let st: Value = c
        .get(format!("{base}/pods/{id}"))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["access"]["ssh_password"], password);
    let t2 = mint.token(5).await;
    let up = c
        .post(format!("{base}/top-up-pod"))
        .json(&json!({"pod_npub": id, "cashu_token": t2}))
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), 200);
    backend.fail(Step::Create);
    let t3 = mint.token(10).await;
    let failed: Value = c
        .post(format!("{base}/pods"))
        .header("X-Cashu", &t3)
        .json(&json!({"ssh_username": "bob"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refund = failed["refund_token"].as_str().unwrap().to_string();
    // A garbled body carrying a token, and a token in a malformed header.
    let t4 = mint.token(10).await;
    let _ = c
        .post(format!("{base}/pods"))
        .body(format!(
            "{{\"cashu_token\": \"{t4}\", \"ssh_username\": [1]}}"
        ))
        .send()
        .await
        .unwrap();
    let _ = c
        .get(format!("{base}/pods"))
        .header("authorization", format!("Bearer {t4}"))
        .send()
        .await
        .unwrap();
    shutdown.cancel();

    secrets.extend([t1, t2, t3, t4, refund, owner, password.to_string()]);
    let logs = capture.text();
    assert!(
        logs.contains("http request"),
        "the door logged at all: {logs}"
    );
    for s in &secrets {
        // Long enough a fragment that a match is the secret itself.
        let probe = &s[s.len().saturating_sub(40)..];
        assert!(!logs.contains(probe), "a secret is in the logs: …{probe}");
    }
}
