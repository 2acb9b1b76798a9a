//! `paygress-cli wallet balance|withdraw` against a provider's real earnings.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::backend::FakeBackend;
use common::mint::TestMint;
use paygress::api::SpawnRequest;
use paygress::secret::Secret;
use paygress::{Caller, Provider};
use tokio_util::sync::CancellationToken;

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_paygress-cli"))
        .args(args)
        .env_remove("PAYGRESS_CONFIG")
        .output()
        .unwrap()
}

async fn cli_async(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_paygress-cli"))
        .args(args)
        .env_remove("PAYGRESS_CONFIG")
        .output()
        .await
        .unwrap()
}

/// A provider that earned 100 sat, running (the returned handle holds its data dir), and its
/// config file.
async fn earning_provider(
    mint: &TestMint,
    dir: &std::path::Path,
) -> (Arc<Provider>, std::path::PathBuf) {
    let cfg = common::config(dir, &[&mint.url], 100, common::free_port_block(3));
    let cfg_file = dir.join("paygress.toml");
    std::fs::write(&cfg_file, toml::to_string(&cfg).unwrap()).unwrap();
    let p = Provider::open(cfg, Arc::new(FakeBackend::new()))
        .await
        .unwrap();
    p.spawn(
        SpawnRequest {
            cashu_token: Secret::new(mint.token(100).await),
            ssh_username: "alice".into(),
            ..Default::default()
        },
        Caller::Local,
        None,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    (p, cfg_file)
}

#[tokio::test]
async fn an_operator_can_see_and_withdraw_the_earnings() {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (p, cfg_file) = earning_provider(&mint, dir.path()).await;
    drop(p);
    let f = cfg_file.to_str().unwrap();
    let out = cli_async(&["wallet", "balance", "--config", f, "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total_sats"], 100);

    let out = cli_async(&["wallet", "withdraw", "--config", f, "--amount", "40"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("cashu"));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(&token),
        "the token is not logged"
    );
    assert_eq!(mint.receive_fresh(&token).await.unwrap(), 40);

    let out = cli_async(&["wallet", "balance", "--config", f]).await;
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.lines().last().unwrap().ends_with(" 60"), "{table}");

    // More than there is: a payment error, exit code 3, nothing printed on stdout.
    let out = cli_async(&["wallet", "withdraw", "--config", f, "--amount", "1000"]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_bad_config_names_the_key_and_exits_with_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "[provider]\nname = \"x\"\n[payments]\nwhitelisted_mints = [\"http://127.0.0.1:1\"]\n[[tiers]]\nid = \"a\"\nname = \"A\"\ncpu_millicores = 0\nmemory_mb = 64\nrate_msats_per_sec = 1\n",
    )
    .unwrap();
    let out = cli(&["wallet", "balance", "--config", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tiers[0].cpu_millicores"), "{err}");
    // Without a config, `withdraw` has no earnings to take from (`balance` shows the buyer
    // wallet instead: tests/buyer_wallet.rs).
    let out = cli(&["wallet", "withdraw", "--amount", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    let out = Command::new(env!("CARGO_BIN_EXE_paygress-mcp-server"))
        .args(["--config", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tiers[0].cpu_millicores"));
}

/// A withdrawal spends the earnings' proofs, so it waits for the provider to stop: while one
/// runs on the data dir, `withdraw` exits non-zero naming it and takes nothing; `balance` only
/// reads and still answers. Once the provider stops, the same withdrawal works.
#[tokio::test]
async fn a_withdrawal_while_the_provider_runs_is_refused_and_takes_nothing() {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (p, cfg_file) = earning_provider(&mint, dir.path()).await;
    let f = cfg_file.to_str().unwrap();
    let out = cli_async(&["wallet", "withdraw", "--config", f, "--amount", "40"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(out.stdout.is_empty(), "no token printed");
    assert!(
        err.contains("in use by another paygress process")
            && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    let out = cli_async(&["wallet", "balance", "--config", f, "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total_sats"], 100, "nothing was taken");
    drop(p);
    let out = cli_async(&["wallet", "withdraw", "--config", f, "--amount", "40"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(mint.receive_fresh(token.trim()).await.unwrap(), 40);
}
