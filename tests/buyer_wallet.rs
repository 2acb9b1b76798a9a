//! The buyer wallet (`paygress-cli wallet fund|receive|send|balance|history`) against the real
//! test mint (fake Lightning: its invoices are paid at once), in a HOME of its own.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use common::mint::TestMint;
use tokio::io::AsyncWriteExt;

async fn cli(home: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_paygress-cli"));
    c.args(args)
        .env("HOME", home)
        .env_remove("PAYGRESS_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        pipe.write_all(s.as_bytes()).await.unwrap();
    }
    drop(pipe);
    child.wait_with_output().await.unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn balance(home: &Path) -> u64 {
    let out = cli(home, &["wallet", "balance", "--json"], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["total_sats"].as_u64().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fund_by_lightning_receive_send_and_history() {
    let mint = TestMint::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();

    // Not a terminal: the invoice as plain text, no QR code.
    let out = cli(
        h,
        &["wallet", "fund", "--mint", &mint.url, "--amount", "500"],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.lines().any(|l| l.starts_with("lnbc")), "{stdout}");
    assert!(!stdout.contains('█') && !stdout.contains('▀'), "{stdout}");
    assert!(
        stdout.contains("minted 500 sat; balance 500 sat"),
        "{stdout}"
    );
    assert_eq!(balance(h).await, 500);

    let wallet = h.join(".paygress/wallet");
    assert_eq!(mode(&h.join(".paygress")), 0o700);
    assert_eq!(mode(&wallet), 0o700);
    for e in std::fs::read_dir(&wallet).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }

    // Out as a token that a stranger can redeem for exactly that much.
    let out = cli(h, &["wallet", "send", "--amount", "120"], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert!(token.starts_with("cashu"));
    assert_eq!(mint.receive_fresh(&token).await.unwrap(), 120);
    assert_eq!(balance(h).await, 380);

    // In: as an argument, and from standard input.
    let t1 = mint.token(50).await;
    let out = cli(h, &["wallet", "receive", &t1], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t2 = mint.token(7).await;
    let out = cli(h, &["wallet", "receive"], Some(&format!("{t2}\n"))).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(balance(h).await, 437);

    // The same token again: refused by the mint, nothing counted, the token not echoed.
    let out = cli(h, &["wallet", "receive", &t1], None).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("already spent"));
    assert!(!text(&out.stderr).contains(&t1));
    // Not a token at all: a usage error.
    let out = cli(h, &["wallet", "receive", "cashuBnonsense"], None).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // More than there is: nothing leaves the wallet.
    let out = cli(h, &["wallet", "send", "--amount", "438"], None).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert_eq!(balance(h).await, 437);

    let out = cli(h, &["wallet", "history", "--json"], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<(String, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["sats"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("fund".to_string(), 500),
            ("send".to_string(), 120),
            ("receive".to_string(), 50),
            ("receive".to_string(), 7)
        ]
    );
    let journal = std::fs::read_to_string(wallet.join("journal.jsonl")).unwrap();
    assert!(!journal.contains("cashu"), "no token in the journal");
    let out = cli(h, &["wallet", "history"], None).await;
    assert!(text(&out.stdout).contains("fund"));
}

/// On a terminal `wallet fund` draws the invoice as a QR code: run it in a real tmux pane and
/// read the screen back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fund_draws_a_qr_code_on_a_terminal() {
    let mint = TestMint::start().await;
    let home = tempfile::tempdir().unwrap();
    let socket = format!("paygress-test-{}", std::process::id());
    let tmux = |args: &[&str]| {
        let socket = socket.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            tokio::process::Command::new("tmux")
                .arg("-L")
                .arg(&socket)
                .args(&args)
                .output()
                .await
                .expect("tmux is not installed: run tools/test.sh (it installs tmux)")
        }
    };
    // The program and its arguments reach tmux as one argv each: no shell command is built
    // from them (tmux runs the argv directly when given more than one word).
    // The pane stays readable after the command exits (set before it starts, in one call).
    let out = tmux(&[
        "start-server",
        ";",
        "set-option",
        "-g",
        "remain-on-exit",
        "on",
        ";",
        "new-session",
        "-d",
        "-x",
        "250",
        "-y",
        "200",
        "-e",
        &format!("HOME={}", home.path().display()),
        "--",
        env!("CARGO_BIN_EXE_paygress-cli"),
        "wallet",
        "fund",
        "--mint",
        &mint.url,
        "--amount",
        "21",
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut screen = String::new();
    for _ in 0..200 {
        let out = tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", "0"]).await;
        screen = text(&out.stdout);
        if screen.contains("minted 21 sat") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = tmux(&["kill-server"]).await;
    assert!(screen.contains("minted 21 sat"), "{screen}");
    let qr_rows = screen
        .lines()
        .filter(|l| l.chars().filter(|c| matches!(c, '█' | '▀' | '▄')).count() > 20)
        .count();
    assert!(qr_rows > 10, "a QR code of block characters:\n{screen}");
    assert!(screen.contains("lnbc"), "{screen}");
}

/// `--help` tells the two wallets apart and shows the buyer's options.
#[tokio::test]
async fn help_tells_the_buyer_wallet_from_the_providers_earnings() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    for (args, words) in [
        (
            vec!["wallet", "--help"],
            vec![
                "fund",
                "receive",
                "send",
                "history",
                "Buyer wallet",
                "Provider",
                "earnings",
            ],
        ),
        (
            vec!["wallet", "balance", "--help"],
            vec!["--config", "provider's earnings"],
        ),
        (
            vec!["wallet", "fund", "--help"],
            vec!["--mint", "--amount", "Lightning"],
        ),
        (
            vec!["mcp", "--help"],
            vec!["--relay", "--config", "not a provider config"],
        ),
        (
            vec!["market", "spawn", "--help"],
            vec!["--token", "--amount", "--duration"],
        ),
        (
            vec!["market", "topup", "--help"],
            vec!["--token", "--amount", "--duration"],
        ),
        (vec!["--help"], vec!["mcp", "wallet"]),
    ] {
        let out = cli(h, &args, None).await;
        assert!(out.status.success(), "{args:?}");
        let t = text(&out.stdout);
        for w in words {
            assert!(t.contains(w), "{args:?} help lacks {w}: {t}");
        }
    }
    // A wallet command never touches the provider's wallet unless told to.
    let out = cli(
        h,
        &["wallet", "fund", "--mint", "not a url", "--amount", "1"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// An invoice paid after `wallet fund` stopped waiting is minted by the next `wallet balance`,
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoice_paid_later_is_minted_by_the_next_balance() {
    let mint = TestMint::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    {
        // What `wallet fund` does up to the wait: the quote is in the wallet, nothing minted.
        let w = paygress::buyer::wallet::BuyerWallet::open(&h.join(".paygress/wallet"))
            .await
            .unwrap();
        let m = paygress::buyer::wallet::BuyerWallet::parse_mint(&mint.url).unwrap();
        let inv = w.fund_quote(&m, 77).await.unwrap();
        assert!(inv.bolt11().starts_with("lnbc"));
    }
    let out = cli(h, &["wallet", "balance", "--json"], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("minted 77 sat"),
        "{}",
        text(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total_sats"], 77);
    assert_eq!(balance(h).await, 77, "minted once");
    let out = cli(h, &["wallet", "history", "--json"], None).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["kind"], "fund");
}
