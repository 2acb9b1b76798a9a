//! `paygress-cli spawn|topup|status --server URL` end to end: the real CLI against the real
//! demo server's HTTP door, following the 402 flow itself, then a real ssh login.

mod common;

use std::process::Command;

use common::http_demo::HttpDemo;
use common::mint::{fresh_wallet, TestMint};
use serde_json::{json, Value};

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_paygress-cli"))
        .args(args)
        .env_remove("PAYGRESS_OWNER_TOKEN")
        .env_remove("PAYGRESS_SERVER")
        .output()
        .expect("paygress-cli");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn demo_token(c: &reqwest::Client, base: &str, sats: u64) -> String {
    let v: Value = c
        .post(format!("{base}/tools/get_demo_token"))
        .json(&json!({"amount_sats": sats}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["cashu_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_topup_and_status_over_http_with_the_cli() {
    let demo = HttpDemo::start();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = reqwest::Client::new();
    let offers: Value = c
        .get(format!("{}/offers", demo.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The dearest tier, whose minimum costs more than 1 sat.
    let spec = offers["pod_specs"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|t| t["rate_msats_per_sec"].as_u64())
        .unwrap();
    let tier = spec["id"].as_str().unwrap().to_string();
    let min_sats = (spec["rate_msats_per_sec"].as_u64().unwrap()
        * offers["minimum_duration_seconds"].as_u64().unwrap())
    .div_ceil(1000);
    assert!(min_sats >= 2, "{offers}");

    // A token worth too little is not even sent: exit 3, and it is still spendable.
    let small = demo_token(&c, &demo.base, min_sats - 1).await;
    let (code, _, err) = cli(&[
        "spawn", "-s", &demo.base, "--tier", &tier, "--token", &small, "--user", "alice",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("not sent") && err.contains("at least"),
        "{err}"
    );
    let w = fresh_wallet(&demo.mint).await;
    let got = w
        .receive(&small, cdk::wallet::ReceiveOptions::default())
        .await
        .expect("still spendable");
    assert_eq!(u64::from(got), min_sats - 1);

    // Another mint's token: not sent either.
    let other = TestMint::start().await;
    let foreign = other.token(min_sats * 2).await;
    let (code, _, err) = cli(&[
        "spawn", "-s", &demo.base, "--tier", &tier, "--token", &foreign, "--user", "alice",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("accepts"), "{err}");

    // An unknown tier: the server's answer, exit 2.
    let t = demo_token(&c, &demo.base, min_sats).await;
    let (code, _, err) = cli(&[
        "spawn", "-s", &demo.base, "--tier", "nope", "--token", &t, "--user", "alice",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid_spec"), "{err}");

    // Paid: the ssh command, the password and the owner token.
    let (code, out, err) = cli(&[
        "spawn",
        "-s",
        &demo.base,
        "--tier",
        &tier,
        "--token",
        &t,
        "--user",
        "alice",
        "--password",
        "cli-over-http-1",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let pod = out.split_whitespace().nth(1).expect("pod id").to_string();
    let ssh = out
        .lines()
        .find(|l| l.starts_with("ssh -p "))
        .expect("ssh command");
    let port: u16 = ssh.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(ssh.ends_with("alice@127.0.0.1"), "{ssh}");
    assert!(out.contains("password: cli-over-http-1"), "{out}");
    let owner = out
        .lines()
        .find_map(|l| l.strip_prefix("owner token (shown once; for status --owner-token): "))
        .expect("owner token")
        .to_string();
    let id = common::ssh::ssh_password(port, "alice", "cli-over-http-1", "id -un")
        .await
        .expect("ssh login");
    assert_eq!(id.trim(), "alice");

    // Status: the login again with the owner token, not without.
    let (code, out, err) = cli(&[
        "status",
        "-s",
        &demo.base,
        "--pod",
        &pod,
        "--owner-token",
        &owner,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": running,") && out.contains(ssh), "{out}");
    let (code, out, _) = cli(&["status", "-s", &demo.base, "--pod", &pod]);
    assert_eq!(code, 0);
    assert!(!out.contains("password"), "{out}");

    // Top-up.
    let t2 = demo_token(&c, &demo.base, 3).await;
    let (code, out, err) = cli(&["topup", "-s", &demo.base, "--pod", &pod, "--token", &t2]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("extended by"), "{out}");
    // --json prints the answer as is.
    let (code, out, _) = cli(&["status", "-s", &demo.base, "--pod", &pod, "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["pod_npub"], pod.as_str());
    // A pod that does not exist: exit 2.
    let (code, _, err) = cli(&["status", "-s", &demo.base, "--pod", "npub1nothere"]);
    assert_eq!(code, 2, "{err}");
}

/// `paygress-cli provider start` with only `http.listen` set (by PAYGRESS_HTTP) serves the door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_start_serves_the_http_door_from_the_config() {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), &[&mint.url], 100, common::free_port_block(2));
    cfg.nostr.marketplace = false;
    cfg.nostr.contextvm = false;
    let path = dir.path().join("paygress.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_paygress-cli"))
        .args(["provider", "start", "--config"])
        .arg(&path)
        .env("PAYGRESS_HTTP", format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let start = std::time::Instant::now();
    let health: Value = loop {
        if let Ok(r) = c.get(format!("{base}/healthz")).send().await {
            break r.json().await.unwrap();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no HTTP door"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(health["doors"], json!(["http"]), "{health}");
    assert_eq!(health["backend_up"], true);
    let r = c
        .post(format!("{base}/pods"))
        .json(&json!({"ssh_username": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    unsafe {
        libc::kill(child.id().unwrap() as i32, libc::SIGTERM);
    }
    let st = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success(), "{st}");
}

#[test]
fn the_server_commands_have_help_and_usage_errors_exit_2() {
    for (cmd, words) in [
        (
            "spawn",
            &[
                "--server",
                "--tier",
                "--token",
                "--owner-token",
                "--request-id",
            ][..],
        ),
        ("topup", &["--server", "--pod", "--token"][..]),
        ("status", &["--server", "--pod", "--owner-token"][..]),
    ] {
        let (code, out, _) = cli(&[cmd, "--help"]);
        assert_eq!(code, 0);
        for w in words {
            assert!(out.contains(w), "{cmd} --help lacks {w}: {out}");
        }
        let (code, _, err) = cli(&[cmd]);
        assert_eq!(code, 2, "{err}");
    }
    // A pod id that is not one is refused before any request.
    let (code, _, err) = cli(&["status", "-s", "http://127.0.0.1:1", "--pod", "../../x"]);
    assert_eq!(code, 2, "{err}");
    // A server that does not answer: exit 4.
    let (code, _, err) = cli(&["status", "-s", "http://127.0.0.1:1", "--pod", "npub1x"]);
    assert_eq!(code, 4, "{err}");
}
