//! `paygress-cli wallet`: two wallets behind one command, never mixed.
//!
//! - The **buyer wallet** (`~/.paygress/wallet`, see `buyer_wallet.rs`): `fund`, `receive`,
//!   `send`, `history`, and `balance` without `--config`.
//! - The **provider's earnings**, one wallet per whitelisted mint under the provider's data dir:
//!   `withdraw`, and `balance --config FILE` (or `PAYGRESS_CONFIG`).

use std::path::PathBuf;

use clap::Subcommand;
use paygress::app::{self, exit};
use paygress::payments::Payments;
use paygress::ErrorType;

#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Buyer wallet: get a Lightning invoice from a mint (NUT-04), wait for it to be paid, mint.
    Fund {
        /// The Cashu mint to fund at.
        #[arg(long, value_name = "URL")]
        mint: String,
        /// Amount in sats.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        amount: u64,
        /// Seconds to wait for the payment.
        #[arg(long, value_name = "SECS", default_value_t = 600)]
        timeout: u64,
    },
    /// Buyer wallet: receive a Cashu token (swapped at its mint); without TOKEN or with `-`,
    /// read it from standard input.
    Receive {
        #[arg(value_name = "TOKEN")]
        token: Option<String>,
    },
    /// Buyer wallet: take sats out as a Cashu token, printed on stdout.
    Send {
        /// Amount in sats.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        amount: u64,
        /// Mint to send from (default: the first holding enough).
        #[arg(long, value_name = "URL")]
        mint: Option<String>,
    },
    /// Buyer wallet: every fund, receive, send, spend and refund (~/.paygress/wallet/journal.jsonl).
    History {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Balance of the buyer wallet; with --config, of the provider's earnings at each
    /// whitelisted mint.
    Balance {
        /// Provider configuration (TOML): show the provider's earnings instead of the buyer
        /// wallet. Also PAYGRESS_CONFIG.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Provider: the books of the data dir as JSON: every wallets/*.sqlite whatever mint it is
    /// for, its proofs by state (unspent, reserved, pending), the payments journal's unsettled
    /// rows and withdrawn tokens not yet confirmed. Takes the data dir's lock (the provider must
    /// be stopped). `system reset` reads it before deleting anything.
    Books {
        /// Provider configuration (TOML). Also PAYGRESS_CONFIG.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Provider: take sats out of the earnings as a Cashu token, printed on stdout. With --all,
    /// every token is first appended to withdrawn.tokens in the data dir (0600, fsynced), and
    /// tokens already there from an earlier unconfirmed withdrawal are printed again.
    Withdraw {
        /// Provider configuration (TOML). Also PAYGRESS_CONFIG.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Amount in sats.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..), required_unless_present = "all", conflicts_with = "all")]
        amount: Option<u64>,
        /// Withdraw the whole balance at every mint: one token a line.
        #[arg(long, conflicts_with = "mint")]
        all: bool,
        /// Mint to withdraw from (default: the first whitelisted mint).
        #[arg(long, value_name = "URL")]
        mint: Option<String>,
    },
}

/// The provider's earnings wallets. `exclusive` takes the data dir's lock first: a withdrawal
/// spends proofs, and a running provider spending the same ones for a refund would make one of
/// the two fail half-way, so it waits for the provider to be stopped. A balance only reads.
async fn open_payments(
    config: Option<PathBuf>,
    exclusive: bool,
) -> Result<(Payments, Option<paygress::datadir_lock::DataDirLock>), i32> {
    let cfg = app::load_config(config).map_err(|e| {
        eprintln!("paygress-cli: {e}");
        exit::USAGE
    })?;
    let lock = match exclusive {
        true => Some(
            paygress::datadir_lock::DataDirLock::acquire(&cfg.provider.data_dir).map_err(|e| {
                eprintln!("paygress-cli: {e}");
                exit::PROVIDER
            })?,
        ),
        false => None,
    };
    let payments = Payments::open(
        &cfg.provider.data_dir,
        &cfg.payments.whitelisted_mints,
        std::time::Duration::from_secs(cfg.payments.mint_timeout_seconds),
    )
    .await
    .map_err(|e| {
        eprintln!("paygress-cli: {e}");
        exit::PROVIDER
    })?;
    Ok((payments, lock))
}

pub async fn run(cmd: WalletCommand) -> i32 {
    match cmd {
        WalletCommand::Fund {
            mint,
            amount,
            timeout,
        } => crate::buyer_wallet::fund(&mint, amount, timeout).await,
        WalletCommand::Receive { token } => crate::buyer_wallet::receive(token).await,
        WalletCommand::Send { amount, mint } => crate::buyer_wallet::send(amount, mint).await,
        WalletCommand::History { json } => crate::buyer_wallet::history(json).await,
        WalletCommand::Balance { config, json } if app::config_path(config.clone()).is_none() => {
            crate::buyer_wallet::balance(json).await
        }
        WalletCommand::Balance { config, json } => {
            let payments = match open_payments(config, false).await {
                Ok((p, _)) => p,
                Err(code) => return code,
            };
            match payments.balances().await {
                Ok(b) => {
                    if json {
                        let v: Vec<_> = b
                            .iter()
                            .map(|(m, s)| serde_json::json!({"mint": m.to_string(), "balance_sats": s}))
                            .collect();
                        println!(
                            "{}",
                            serde_json::json!({ "balances": v, "total_sats": b.iter().map(|(_, s)| s).sum::<u64>() })
                        );
                    } else {
                        println!("{:<50} {:>12}", "MINT", "SATS");
                        for (m, s) in &b {
                            println!("{:<50} {:>12}", m.to_string(), s);
                        }
                        println!(
                            "{:<50} {:>12}",
                            "total",
                            b.iter().map(|(_, s)| s).sum::<u64>()
                        );
                    }
                    0
                }
                Err(e) => {
                    eprintln!("paygress-cli: {e}");
                    exit::PAYMENT
                }
            }
        }
        WalletCommand::Books { config } => books(config).await,
        WalletCommand::Withdraw {
            config,
            amount,
            mint,
            all,
        } => {
            let data_dir = match app::load_config(config.clone()) {
                Ok(c) => c.provider.data_dir,
                Err(e) => {
                    eprintln!("paygress-cli: {e}");
                    return exit::USAGE;
                }
            };
            let (payments, _lock) = match open_payments(config, true).await {
                Ok(p) => p,
                Err(code) => return code,
            };
            let amount = match (all, amount) {
                (true, _) => return withdraw_all(&payments, &data_dir).await,
                (false, Some(a)) => a,
                (false, None) => {
                    eprintln!("paygress-cli: pass --amount SATS or --all");
                    return exit::USAGE;
                }
            };
            let mint = match mint {
                Some(m) => match payments.mint(&m) {
                    Ok(u) => u,
                    Err(e) => {
                        eprintln!("paygress-cli: {e}");
                        return exit::USAGE;
                    }
                },
                None => match payments.mints().next() {
                    Some(m) => m.clone(),
                    None => {
                        eprintln!("paygress-cli: no whitelisted mint");
                        return exit::USAGE;
                    }
                },
            };
            match payments.withdraw(&mint, amount).await {
                Ok(token) => {
                    println!("{}", token.expose());
                    0
                }
                Err(e) => {
                    eprintln!("paygress-cli: {e}");
                    if e.error_type == ErrorType::InternalError {
                        exit::PROVIDER
                    } else {
                        exit::PAYMENT
                    }
                }
            }
        }
    }
}

/// The data dir's books as JSON, under its lock.
async fn books(config: Option<PathBuf>) -> i32 {
    let cfg = match app::load_config(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("paygress-cli: {e}");
            return exit::USAGE;
        }
    };
    let _lock = match cfg.provider.data_dir.exists() {
        true => match paygress::datadir_lock::DataDirLock::acquire(&cfg.provider.data_dir) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("paygress-cli: {e}");
                return exit::PROVIDER;
            }
        },
        false => None,
    };
    match paygress::books::read(&cfg.provider.data_dir).await {
        Ok(b) => match serde_json::to_string(&b) {
            Ok(s) => {
                println!("{s}");
                0
            }
            Err(e) => {
                eprintln!("paygress-cli: {e}");
                exit::PROVIDER
            }
        },
        Err(e) => {
            eprintln!("paygress-cli: {e}");
            exit::PROVIDER
        }
    }
}

/// Every balance out, one token a line; stops at the first failure (what was printed is out).
/// Each token is kept in the data dir (fsynced) before it is printed, and tokens kept by an
/// earlier run that was never confirmed are printed first: the SSH stream that carries them is
/// not a place money can live.
async fn withdraw_all(payments: &Payments, data_dir: &std::path::Path) -> i32 {
    // Finish or undo what a killed swap or refund left reserved or pending.
    payments.recover().await;
    match paygress::books::pending(data_dir) {
        Ok(old) => {
            for t in old {
                println!("{t}");
            }
        }
        Err(e) => {
            eprintln!("paygress-cli: cannot read the withdrawn tokens kept earlier: {e}");
            return exit::PROVIDER;
        }
    }
    let balances = match payments.balances().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("paygress-cli: {e}");
            return exit::PAYMENT;
        }
    };
    for (mint, sats) in balances {
        if sats == 0 {
            continue;
        }
        match payments.withdraw(&mint, sats).await {
            Ok(token) => {
                let t = token.expose().to_string();
                if let Err(e) = paygress::books::keep_pending(data_dir, std::slice::from_ref(&t)) {
                    // The proofs are sent; the token must reach the operator all the same.
                    eprintln!("paygress-cli: cannot keep the withdrawn token in the data dir: {e}");
                    println!("{t}");
                    return exit::PROVIDER;
                }
                println!("{t}");
            }
            Err(e) => {
                eprintln!("paygress-cli: {mint}: {e}");
                return exit::PAYMENT;
            }
        }
    }
    0
}
