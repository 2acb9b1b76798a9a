//! `paygress-cli wallet fund|receive|send|balance|history`: the buyer wallet in
//! `~/.paygress/wallet` ([`paygress::buyer::wallet`]), which `market spawn|topup --amount` and
//! `paygress-cli mcp` pay from. The provider's earnings are a different wallet (`wallet.rs`,
//! selected by `--config`).

use std::io::{IsTerminal, Read};
use std::time::Duration;

use paygress::app::exit;
use paygress::buyer::wallet::{BuyerWallet, WalletError};
use paygress::secret::Secret;

/// Whatever the buyer's side creates (the wallet store and its -wal/-shm files, keys, the
/// journal) is the owner's alone.
pub fn umask_private() {
    // SAFETY: umask only changes this process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

pub async fn open() -> Result<BuyerWallet, i32> {
    umask_private();
    let dir = BuyerWallet::default_dir().map_err(|e| {
        eprintln!("paygress-cli: {e}");
        exit::USAGE
    })?;
    BuyerWallet::open(&dir).await.map_err(|e| {
        eprintln!("paygress-cli: {e}");
        exit::PROVIDER
    })
}

fn fail(e: &WalletError) -> i32 {
    eprintln!("paygress-cli: {e}");
    match e {
        WalletError::NoHome | WalletError::BadMint(_) | WalletError::InvalidToken => exit::USAGE,
        WalletError::Io { .. } | WalletError::Journal(_) => exit::PROVIDER,
        _ => exit::PAYMENT,
    }
}

/// The invoice as a QR code of half-height blocks, for a terminal.
pub fn qr_text(invoice: &str) -> Option<String> {
    // Upper case fits the QR alphanumeric mode (a smaller code); BOLT11 is case-insensitive.
    let code = qrcode::QrCode::new(invoice.to_uppercase().as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

pub async fn fund(mint: &str, sats: u64, timeout: u64) -> i32 {
    let mint = match BuyerWallet::parse_mint(mint) {
        Ok(m) => m,
        Err(e) => return fail(&e),
    };
    let w = match open().await {
        Ok(w) => w,
        Err(c) => return c,
    };
    let invoice = match w.fund_quote(&mint, sats).await {
        Ok(i) => i,
        Err(e) => return fail(&e),
    };
    if std::io::stdout().is_terminal() {
        if let Some(qr) = qr_text(invoice.bolt11()) {
            println!("{qr}");
        }
    }
    println!("Pay this Lightning invoice ({sats} sat) to fund the wallet at {mint}:");
    println!("{}", invoice.bolt11());
    eprintln!("paygress-cli: waiting up to {timeout} s for the payment…");
    match w
        .wait_and_mint(&invoice, Duration::from_secs(timeout))
        .await
    {
        Ok(got) => {
            let total = w.total().await.unwrap_or(got);
            println!("minted {got} sat; balance {total} sat");
            0
        }
        Err(e) => fail(&e),
    }
}

pub async fn receive(token: Option<String>) -> i32 {
    let token = match token.filter(|t| t != "-") {
        Some(t) => Secret::new(t),
        None => {
            let mut s = String::new();
            if let Err(e) = std::io::stdin().take(1 << 20).read_to_string(&mut s) {
                eprintln!("paygress-cli: cannot read standard input: {e}");
                return exit::USAGE;
            }
            Secret::new(s.trim())
        }
    };
    let w = match open().await {
        Ok(w) => w,
        Err(c) => return c,
    };
    match w.receive(&token).await {
        Ok((mint, sats)) => {
            println!("received {sats} sat at {mint}");
            0
        }
        Err(e) => fail(&e),
    }
}

pub async fn send(sats: u64, mint: Option<String>) -> i32 {
    let w = match open().await {
        Ok(w) => w,
        Err(c) => return c,
    };
    match w.send(mint.as_deref(), sats).await {
        Ok(t) => {
            println!("{}", t.expose());
            0
        }
        Err(e) => fail(&e),
    }
}

pub async fn balance(json: bool) -> i32 {
    let w = match open().await {
        Ok(w) => w,
        Err(c) => return c,
    };
    match w.collect_paid_invoices().await {
        Ok(0) => {}
        Ok(n) => eprintln!("paygress-cli: minted {n} sat from invoices paid earlier"),
        // The mint may be down; the balance at hand is still worth showing.
        Err(e) => eprintln!("paygress-cli: could not check earlier invoices: {e}"),
    }
    let b = match w.balances().await {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    let total: u64 = b.iter().map(|(_, s)| s).sum();
    if json {
        let v: Vec<_> = b
            .iter()
            .map(|(m, s)| serde_json::json!({"mint": m.to_string(), "balance_sats": s}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"wallet": w.dir(), "balances": v, "total_sats": total})
        );
    } else {
        println!("{:<50} {:>12}", "MINT", "SATS");
        for (m, s) in &b {
            println!("{:<50} {:>12}", m.to_string(), s);
        }
        println!("{:<50} {:>12}", "total", total);
    }
    0
}

pub async fn history(json: bool) -> i32 {
    let w = match open().await {
        Ok(w) => w,
        Err(c) => return c,
    };
    let entries = match w.journal().entries() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("paygress-cli: {e}");
            return exit::PROVIDER;
        }
    };
    if json {
        println!("{}", serde_json::to_string(&entries).unwrap_or_default());
        return 0;
    }
    println!(
        "{:<20} {:<8} {:>8}  {:<30} PROVIDER / NOTE",
        "WHEN (UTC)", "KIND", "SATS", "MINT"
    );
    for e in &entries {
        let when = paygress::provider::rfc3339(e.at);
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let who = e
            .provider
            .clone()
            .or_else(|| e.note.clone())
            .unwrap_or_default();
        println!(
            "{:<20} {:<8} {:>8}  {:<30} {}",
            when, kind, e.sats, e.mint, who
        );
    }
    0
}
