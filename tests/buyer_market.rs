//! `paygress-cli market spawn|topup --amount|--duration`: paying a real provider process
//! (sandbox backend, test mint, relay on 127.0.0.1) from the buyer wallet, with every refund
//! back in the wallet to the sat.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::seller::{Seller, CLI};
use serde_json::Value;

async fn cli(home: &Path, args: &[&str]) -> Output {
    tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(CLI)
            .args(args)
            .env("HOME", home)
            .env_remove("NOSTR_RELAYS")
            .env_remove("PAYGRESS_NOSTR_KEY")
            .env_remove("PAYGRESS_CONFIG")
            .output(),
    )
    .await
    .expect("cli finished in time")
    .unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn balance(home: &Path) -> u64 {
    let o = cli(home, &["wallet", "balance", "--json"]).await;
    assert!(o.status.success(), "{}", err(&o));
    serde_json::from_str::<Value>(&out(&o)).unwrap()["total_sats"]
        .as_u64()
        .unwrap()
}

async fn fund(home: &Path, mint: &str, sats: u64) {
    let o = cli(
        home,
        &[
            "wallet",
            "fund",
            "--mint",
            mint,
            "--amount",
            &sats.to_string(),
        ],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
}

async fn history(home: &Path) -> Vec<(String, u64)> {
    let o = cli(home, &["wallet", "history", "--json"]).await;
    serde_json::from_str::<Value>(&out(&o))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["sats"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_and_topup_paid_from_the_wallet() {
    let s = Seller::start("127.0.0.1", common::free_port_block(3)).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let (url, npub) = (s.relay.url(), s.npub());
    fund(h, &s.mint.url, 1000).await;

    // 120 s of "basic" at 100 msat/s: exactly 12 sat.
    let o = cli(
        h,
        &[
            "market",
            "spawn",
            "--relay",
            &url,
            "--provider",
            &npub,
            "--tier",
            "basic",
            "--duration",
            "120",
            "--user",
            "alice",
            "--json",
        ],
    )
    .await;
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    let r: Value = serde_json::from_str(&out(&o)).unwrap();
    let pod = r["pod_npub"].as_str().unwrap().to_string();
    s.bought(&pod);
    assert_eq!(r["duration_seconds"], 120);
    assert_eq!(r["paid_msats"], 12_000);
    // The provider names the pod's SSH host key for the buyer to pin.
    let fps = r["ssh_host_key_fingerprints"].as_array().unwrap();
    assert!(
        fps.len() == 1 && fps[0].as_str().unwrap().starts_with("SHA256:"),
        "{r}"
    );
    assert_eq!(balance(h).await, 988);

    // A top-up of 5 sat: 50 s more.
    let o = cli(
        h,
        &[
            "market",
            "topup",
            "--relay",
            &url,
            "--provider",
            &npub,
            "--pod",
            &pod,
            "--amount",
            "5",
            "--json",
        ],
    )
    .await;
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    let t: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(t["extended_duration_seconds"], 50);
    // --duration on a top-up: the pod's tier is looked up (100 s = 10 sat).
    let o = cli(
        h,
        &[
            "market",
            "topup",
            "--relay",
            &url,
            "--provider",
            &npub,
            "--pod",
            &pod,
            "--duration",
            "100",
            "--json",
        ],
    )
    .await;
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    let t: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(t["extended_duration_seconds"], 100);
    assert_eq!(balance(h).await, 973);

    // Refused before any money moves: an unknown tier, a duration under the minimum, more than
    // the wallet holds, and both a token and an amount.
    for args in [
        vec!["--tier", "nosuch", "--amount", "10"],
        vec!["--tier", "basic", "--duration", "10"],
        vec!["--tier", "basic", "--amount", "5000"],
    ] {
        let mut a = vec!["market", "spawn", "--relay", &url, "--provider", &npub];
        a.extend(args.iter().copied());
        let o = cli(h, &a).await;
        assert!(!o.status.success(), "{a:?}: {}", out(&o));
    }
    let o = cli(
        h,
        &[
            "market",
            "spawn",
            "--relay",
            &url,
            "--provider",
            &npub,
            "--tier",
            "basic",
            "--amount",
            "10",
            "--token",
            "cashuBx",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert_eq!(balance(h).await, 973);

    // The provider refuses the request itself before redeeming (a bad login name): the wallet
    // takes its own token back, to the sat.
    let o = cli(
        h,
        &[
            "market",
            "spawn",
            "--relay",
            &url,
            "--provider",
            &npub,
            "--tier",
            "basic",
            "--amount",
            "20",
            "--user",
            "Not A Name!",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}{}", out(&o), err(&o));
    assert_eq!(balance(h).await, 973);
    let h2 = history(h).await;
    assert_eq!(
        h2[h2.len() - 2..],
        [("spend".to_string(), 20), ("refund".to_string(), 20)]
    );
}

/// The provider fails after it was paid (the sandbox cannot bind the SSH port: another program
/// holds it on ::1, which the provider's pre-payment check on 0.0.0.0 does not see): its refund
/// token goes straight into the wallet, which ends where it started, to the sat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_payment_refunds_into_the_wallet() {
    let port = common::free_port_block(1);
    let s = Seller::start("::1", port).await;
    let _held = std::net::TcpListener::bind(("::1", port.0)).unwrap();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    fund(h, &s.mint.url, 300).await;
    let o = cli(
        h,
        &[
            "market",
            "spawn",
            "--relay",
            &s.relay.url(),
            "--provider",
            &s.npub(),
            "--tier",
            "basic",
            "--amount",
            "25",
            "--json",
        ],
    )
    .await;
    assert!(!o.status.success(), "{}", out(&o));
    let e: Value = serde_json::from_str(&out(&o)).unwrap();
    assert!(
        e["refund_token"].is_null(),
        "the refund is in the wallet, not printed: {e}"
    );
    assert_eq!(
        e["error_type"], "pod_creation_failed",
        "failed after payment: {e}"
    );
    assert_eq!(e["details"]["refunded_msats"], 25_000);
    assert!(err(&o).contains("25 sat came back"), "{}", err(&o));
    assert_eq!(balance(h).await, 300);
    assert_eq!(
        history(h).await,
        [
            ("fund".to_string(), 300),
            ("spend".to_string(), 25),
            ("refund".to_string(), 25)
        ]
    );
}

/// The provider is gone after its last heartbeat (its offer is still live on the relay) and
/// never answers: the wallet swaps its own unredeemed token back, to the sat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_takes_the_unredeemed_payment_back() {
    let mut s = Seller::start("127.0.0.1", common::free_port_block(2)).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    fund(h, &s.mint.url, 100).await;
    let _ = s.process.kill().await;
    let _ = s.process.wait().await;
    let o = cli(
        h,
        &[
            "market",
            "spawn",
            "--relay",
            &s.relay.url(),
            "--provider",
            &s.npub(),
            "--tier",
            "basic",
            "--amount",
            "15",
            "--timeout",
            "2",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(4), "{}{}", out(&o), err(&o));
    assert!(err(&o).contains("no answer"), "{}", err(&o));
    assert_eq!(balance(h).await, 100);
    assert_eq!(
        history(h).await,
        [
            ("fund".to_string(), 100),
            ("spend".to_string(), 15),
            ("refund".to_string(), 15)
        ]
    );
}
