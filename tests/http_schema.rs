//! schemathesis (PyPI, pinned in tools/e2e/requirements.txt) against `/openapi.json` of the
//! running demo's HTTP door: property-based requests to every operation, with a real pod and its
//! owner token supplied so status and top-up reach a real workload. Every response must be no
//! 5xx and match the documented status codes, content types, headers and schemas.

mod common;

use std::path::PathBuf;

use common::http_demo::HttpDemo;
use serde_json::{json, Value};

fn schemathesis() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/e2e/.venv/bin/schemathesis");
    assert!(
        p.exists(),
        "schemathesis is not installed: run tools/test.sh (it installs tools/e2e/requirements.txt into tools/e2e/.venv)"
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_every_response_matches_the_schema() {
    let st = schemathesis();
    let demo = HttpDemo::start();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = reqwest::Client::new();
    // A real pod, paid through the 402 flow with a demo token.
    let tok: Value = c
        .post(format!("{}/tools/get_demo_token", demo.base))
        .json(&json!({"amount_sats": 20}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = c
        .post(format!("{}/pods", demo.base))
        .header("X-Cashu", tok["cashu_token"].as_str().unwrap())
        .json(&json!({"ssh_username": "fuzz"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let pod: Value = r.json().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[headers]\nAuthorization = \"Bearer {owner}\"\n\n[parameters]\n\"path.id\" = \"{id}\"\n",
            owner = pod["owner_token"].as_str().unwrap(),
            id = pod["pod_npub"].as_str().unwrap(),
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(st)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/openapi.json", demo.base))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
            "--max-examples",
            "40",
            "--workers",
            "2",
            "--seed",
            "1",
        ])
        .current_dir(dir.path())
        .kill_on_drop(true)
        .output()
        .await
        .expect("schemathesis");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{text}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        demo.log()
    );
    // Every operation was tested, and cases were generated and passed.
    let ops = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Operations:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_default();
    assert!(
        ops.len() >= 4 && ops[0] == ops[3] && ops[0].parse::<u32>().unwrap_or(0) >= 9,
        "{text}"
    );
    assert!(
        text.contains(" passed") && !text.contains(" failed"),
        "{text}"
    );
}
