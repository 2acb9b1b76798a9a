//! `kill -9` at every journal step of spawn and top-up, with real processes: the real
//! `paygress-mcp-server` (sandbox backend) is told to SIGKILL itself at one step
//! (`PAYGRESS_CRASH_AT`, `src/crashpoint.rs`), restarted, and the buyer repeats the same
//! request. It ends with a pod (or a top-up) or a refund, never a lost payment, and the books
//! balance to the sat: paid = earnings + refunds received by a fresh wallet + tokens still
//! spendable.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::mint::TestMint;
use paygress::backend::sandbox::{SandboxBackend, SandboxConfig};
use paygress::backend::Backend;
use paygress::payments::Payments;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};

fn write_config(dir: &Path, mint: &str) -> PathBuf {
    let cfg = common::config(dir, &[mint], 100, common::free_port_block(4));
    let f = dir.join("paygress.toml");
    std::fs::write(&f, toml::to_string(&cfg).unwrap()).unwrap();
    f
}

async fn start(cfg: &Path, crash_at: Option<&str>) -> RunningService<RoleClient, ()> {
    start_with(cfg, crash_at, None, None).await
}

async fn start_with(
    cfg: &Path,
    crash_at: Option<&str>,
    fail_write_at: Option<&str>,
    log: Option<&Path>,
) -> RunningService<RoleClient, ()> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_paygress-mcp-server"));
    cmd.arg("--config").arg(cfg);
    match crash_at {
        Some(s) => cmd.env("PAYGRESS_CRASH_AT", s),
        None => cmd.env_remove("PAYGRESS_CRASH_AT"),
    };
    match fail_write_at {
        Some(s) => cmd.env("PAYGRESS_FAIL_WRITE_AT", s),
        None => cmd.env_remove("PAYGRESS_FAIL_WRITE_AT"),
    };
    let mut child = TokioChildProcess::builder(cmd);
    if let Some(log) = log {
        child = child.stderr(std::fs::File::create(log).unwrap());
    }
    ().serve(child.spawn().unwrap().0).await.unwrap()
}

async fn call(
    s: &RunningService<RoleClient, ()>,
    name: &str,
    args: Value,
) -> Option<CallToolResult> {
    s.call_tool(
        CallToolRequestParams::new(name.to_string())
            .with_arguments(args.as_object().unwrap().clone()),
    )
    .await
    .ok()
}

fn body(r: &CallToolResult) -> Value {
    r.structured_content.clone().unwrap_or_else(|| {
        let text = r
            .content
            .first()
            .and_then(|c| c.as_text())
            .map(|t| t.text.clone());
        serde_json::from_str(&text.unwrap_or_default()).unwrap_or_default()
    })
}

/// Remove the sandbox workloads the test's providers made, and read the earnings.
async fn finish(dir: &Path, mint: &str) -> u64 {
    let db = rusqlite::Connection::open(dir.join("paygress.sqlite3")).unwrap();
    let provider_id: String = db
        .query_row("SELECT v FROM meta WHERE k = 'provider_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    drop(db);
    let b = Arc::new(
        SandboxBackend::open(SandboxConfig::default(), dir)
            .await
            .unwrap(),
    );
    for w in b.list(&provider_id).await.unwrap() {
        b.destroy(&w.name).await.unwrap();
    }
    let p = Payments::open(dir, &[mint.to_string()], Duration::from_secs(10))
        .await
        .unwrap();
    p.balances().await.unwrap().iter().map(|(_, b)| b).sum()
}

async fn books(mint: &TestMint, paid: u64, earnings: u64, refunds: &[String], tokens: &[String]) {
    let mut refunded = 0;
    for r in refunds {
        refunded += mint.receive_fresh(r).await.expect("a refund is receivable");
    }
    let mut spendable = 0;
    for t in tokens {
        spendable += mint.receive_fresh(t).await.unwrap_or(0);
    }
    assert_eq!(
        paid,
        earnings + refunded + spendable,
        "books: paid {paid}, earnings {earnings} + refunds {refunded} + spendable {spendable}"
    );
}

/// Kill at `step` during a spawn, restart, repeat: a pod or a refund.
async fn spawn_crash(step: &str) {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &mint.url);
    let token = mint.token(1000).await;
    let args = json!({"cashu_token": token, "ssh_username": "alice", "request_id": "crash-1"});
    let s = start(&cfg, Some(step)).await;
    let first = call(&s, "spawn_pod", args.clone()).await;
    assert!(first.is_none(), "{step}: the server died at the step");
    drop(s);
    let s = start(&cfg, None).await;
    let r = call(&s, "spawn_pod", args.clone()).await.expect("answer");
    let b = body(&r);
    let mut refunds = vec![];
    if r.is_error == Some(true) {
        assert_ne!(b["error_type"], "token_already_spent", "{step}: {b}");
        let refund = b["refund_token"].as_str();
        assert!(
            refund.is_some() || step == "spawn_journalled",
            "{step}: {b}"
        );
        refunds.extend(refund.map(str::to_string));
    } else {
        assert_eq!(b["paid_msats"], 1_000_000, "{step}: {b}");
    }
    // A second repeat gives the same answer.
    let again = body(&call(&s, "spawn_pod", args).await.expect("answer"));
    assert_eq!(again["pod_npub"], b["pod_npub"], "{step}");
    s.cancel().await.unwrap();
    let earnings = finish(dir.path(), &mint.url).await;
    books(&mint, 1000, earnings, &refunds, &[token]).await;
}

/// Kill at `step` during a top-up, restart, repeat: extended once, or refunded.
async fn topup_crash(step: &str) {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &mint.url);
    let t1 = mint.token(1000).await;
    let t2 = mint.token(500).await;
    let s = start(&cfg, Some(step)).await;
    let pod = body(
        &call(
            &s,
            "spawn_pod",
            json!({"cashu_token": t1, "ssh_username": "alice"}),
        )
        .await
        .unwrap(),
    );
    let pod_id = pod["pod_npub"].as_str().expect("a pod").to_string();
    let args = json!({"pod_npub": pod_id, "cashu_token": t2, "request_id": "crash-top"});
    assert!(
        call(&s, "topup_pod", args.clone()).await.is_none(),
        "{step}: died"
    );
    drop(s);
    let s = start(&cfg, None).await;
    let r = call(&s, "topup_pod", args.clone()).await.expect("answer");
    let b = body(&r);
    let mut refunds = vec![];
    if r.is_error == Some(true) {
        assert_ne!(b["error_type"], "token_already_spent", "{step}: {b}");
        refunds.extend(b["refund_token"].as_str().map(str::to_string));
        assert!(
            !refunds.is_empty() || step == "topup_journalled",
            "{step}: {b}"
        );
    } else {
        assert_eq!(b["extended_duration_seconds"], 5000, "{step}: {b}");
    }
    let again = body(&call(&s, "topup_pod", args).await.expect("answer"));
    assert_eq!(
        again["new_expires_at"], b["new_expires_at"],
        "{step}: extended once"
    );
    s.cancel().await.unwrap();
    let earnings = finish(dir.path(), &mint.url).await;
    books(&mint, 1500, earnings, &refunds, &[t1, t2]).await;
}

#[tokio::test]
async fn kill_9_after_the_spawn_is_journalled() {
    spawn_crash("spawn_journalled").await;
}

#[tokio::test]
async fn kill_9_after_the_swap_before_it_is_journalled() {
    spawn_crash("spawn_swapped").await;
}

#[tokio::test]
async fn kill_9_after_the_spawn_is_paid() {
    spawn_crash("spawn_paid").await;
}

#[tokio::test]
async fn kill_9_after_the_workload_is_created() {
    spawn_crash("spawn_created").await;
}

#[tokio::test]
async fn kill_9_after_the_spawn_is_completed() {
    spawn_crash("spawn_completed").await;
}

#[tokio::test]
async fn kill_9_after_the_top_up_is_journalled() {
    topup_crash("topup_journalled").await;
}

#[tokio::test]
async fn kill_9_after_the_top_up_swap() {
    topup_crash("topup_swapped").await;
}

#[tokio::test]
async fn kill_9_after_the_top_up_is_paid() {
    topup_crash("topup_paid").await;
}

#[tokio::test]
async fn kill_9_after_the_workload_is_extended() {
    topup_crash("topup_extended").await;
}

/// Kill at `step` while a refund is minted (a payment that buys less than the minimum after the
/// mint's fees is refunded), restart, repeat: one refund, delivered; none minted twice.
async fn refund_crash(step: &str) {
    let mint = TestMint::start_with_fee(100).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &mint.url);
    // 6 sat buys the 60 s minimum at face value; after the input fee it buys less.
    let token = mint.token(6).await;
    let args = json!({"cashu_token": token, "ssh_username": "alice", "request_id": "crash-r"});
    let s = start(&cfg, Some(step)).await;
    assert!(
        call(&s, "spawn_pod", args.clone()).await.is_none(),
        "{step}: died"
    );
    drop(s);
    let s = start(&cfg, None).await;
    let r = call(&s, "spawn_pod", args.clone()).await.expect("answer");
    let b = body(&r);
    assert_eq!(r.is_error, Some(true));
    // The refund's reason was journalled before the crash: the buyer hears the same one.
    assert_eq!(b["error_type"], "insufficient_payment", "{step}: {b}");
    assert!(
        b["message"].as_str().unwrap_or("").contains("minimum"),
        "{step}: {b}"
    );
    let refund = b["refund_token"].as_str().expect("the refund").to_string();
    let again = body(&call(&s, "spawn_pod", args).await.expect("answer"));
    assert_eq!(
        again["refund_token"].as_str(),
        Some(refund.as_str()),
        "{step}: the same refund"
    );
    s.cancel().await.unwrap();
    let earnings = finish(dir.path(), &mint.url).await;
    assert_eq!(earnings, 0, "{step}: everything received went back, once");
    assert!(
        mint.receive_fresh(&refund).await.is_ok(),
        "{step}: the refund is receivable"
    );
    assert!(
        mint.receive_fresh(&token).await.is_err(),
        "{step}: the token was taken"
    );
}

#[tokio::test]
async fn kill_9_after_the_refund_is_journalled_before_it_is_minted() {
    refund_crash("refund_prepared").await;
}

#[tokio::test]
async fn kill_9_after_the_refund_is_minted_before_it_is_journalled() {
    refund_crash("refund_minted").await;
}

/// The journal write right after the swap fails `count` times (`PAYGRESS_FAIL_WRITE_AT`,
/// `src/failpoint.rs`): a transient failure is retried and the pod delivered; a persistent one
/// ends in a full refund a fresh wallet receives. The books balance either way.
async fn spawn_write_fails(count: u32) -> (Value, usize) {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &mint.url);
    let token = mint.token(1000).await;
    let args = json!({"cashu_token": token, "ssh_username": "alice", "request_id": "fail-1"});
    let log = dir.path().join("server.log");
    let fault = format!("spawn_paid:{count}");
    let s = start_with(&cfg, None, Some(&fault), Some(&log)).await;
    let r = call(&s, "spawn_pod", args).await.expect("an answer");
    let b = body(&r);
    let mut refunds = vec![];
    if r.is_error == Some(true) {
        refunds.push(b["refund_token"].as_str().expect("a refund").to_string());
        assert_eq!(b["details"]["refunded_msats"], 1_000_000, "{b}");
    }
    s.cancel().await.unwrap();
    let earnings = finish(dir.path(), &mint.url).await;
    books(&mint, 1000, earnings, &refunds, &[token]).await;
    let failures = std::fs::read_to_string(&log)
        .unwrap()
        .matches("journal write after a swap failed")
        .count();
    (b, failures)
}

#[tokio::test]
async fn a_transient_write_failure_after_the_swap_is_retried_and_the_pod_delivered() {
    let (b, failures) = spawn_write_fails(2).await;
    assert_eq!(failures, 2, "the write failed twice, then held");
    assert_eq!(b["paid_msats"], 1_000_000, "{b}");
    assert!(b["pod_npub"].as_str().is_some(), "{b}");
}

#[tokio::test]
async fn a_persistent_write_failure_after_the_swap_ends_in_a_full_refund() {
    let (b, failures) = spawn_write_fails(1000).await;
    assert!(failures > 2, "retried before giving up");
    assert!(b["refund_token"].as_str().is_some(), "{b}");
}

/// The same for a top-up: the pod is bought normally, then the journal write after the top-up's
/// swap fails `count` times. A transient failure extends the pod; a persistent one refunds the
/// top-up in full and leaves the deadline where it was. The books balance either way.
async fn top_up_write_fails(count: u32) -> (Value, Value, Value, usize) {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &mint.url);
    let (t1, t2) = (mint.token(1000).await, mint.token(500).await);
    let log = dir.path().join("server.log");
    let fault = format!("topup_paid:{count}");
    let s = start_with(&cfg, None, Some(&fault), Some(&log)).await;
    let spawn = json!({"cashu_token": t1, "ssh_username": "alice", "request_id": "tu-spawn"});
    let spawned = body(&call(&s, "spawn_pod", spawn).await.expect("a spawn answer"));
    let pod = spawned["pod_npub"].as_str().expect("a pod").to_string();
    let up = json!({"pod_npub": pod, "cashu_token": t2, "request_id": "tu-1"});
    let r = call(&s, "topup_pod", up).await.expect("a top-up answer");
    let b = body(&r);
    let mut refunds = vec![];
    if r.is_error == Some(true) {
        refunds.push(b["refund_token"].as_str().expect("a refund").to_string());
        assert_eq!(b["details"]["refunded_msats"], 500_000, "{b}");
    }
    let status = body(
        &call(&s, "get_pod_status", json!({"pod_npub": pod}))
            .await
            .expect("a status"),
    );
    s.cancel().await.unwrap();
    let earnings = finish(dir.path(), &mint.url).await;
    books(&mint, 1500, earnings, &refunds, &[t1, t2]).await;
    let failures = std::fs::read_to_string(&log)
        .unwrap()
        .matches("journal write after a swap failed")
        .count();
    (spawned, b, status, failures)
}

#[tokio::test]
async fn a_transient_write_failure_after_a_top_up_swap_is_retried_and_the_pod_extended() {
    let (spawned, b, status, failures) = top_up_write_fails(2).await;
    assert_eq!(failures, 2, "the write failed twice, then held");
    assert_eq!(b["paid_msats"], 500_000, "{b}");
    assert_eq!(status["expires_at"], b["new_expires_at"], "{status}");
    assert_ne!(status["expires_at"], spawned["expires_at"], "{status}");
}

#[tokio::test]
async fn a_persistent_write_failure_after_a_top_up_swap_ends_in_a_full_refund() {
    let (spawned, b, status, failures) = top_up_write_fails(1000).await;
    assert!(failures > 2, "retried before giving up");
    assert!(b["refund_token"].as_str().is_some(), "{b}");
    assert_eq!(status["expires_at"], spawned["expires_at"], "{status}");
    assert_eq!(status["paid_msats"], 1_000_000, "{status}");
}
