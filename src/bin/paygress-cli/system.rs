//! `paygress-cli system reset`: undo a bootstrap over SSH, never destroying earnings.
//!
//! Order matters for money: the earnings are read first; with a balance and no
//! `--withdraw-to FILE` nothing at all is changed. With it, the service is stopped (the
//! withdrawal needs the data directory's lock), every balance is withdrawn on the host by the
//! host's own `wallet withdraw`, and the tokens are written to FILE here (0600, a new file) and
//! the balance read again as zero — all before anything is deleted.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use paygress::app::exit;
use paygress::bootstrap::remote::Remote;
use paygress::bootstrap::settings::HostBackend;
use paygress::bootstrap::{plan, steps};

use crate::bootstrap::SshArgs;

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Remove Paygress from a host bootstrapped with `bootstrap`: the service, its unit,
    /// config, data, binary, user and the workloads it made. Refuses while the earnings wallet
    /// holds a balance unless --withdraw-to FILE takes it out first.
    Reset(ResetArgs),
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The host's address or name.
    #[arg(long, value_name = "HOST")]
    pub host: String,
    #[command(flatten)]
    pub ssh: SshArgs,
    /// Withdraw every earnings balance first and write the Cashu tokens to FILE (a new file,
    /// 0600, one token a line) before anything is removed.
    #[arg(long, value_name = "FILE")]
    pub withdraw_to: Option<PathBuf>,
    /// Also purge the backend's packages bootstrap installed (LXD: lxd, lxd-client, lxcfs and
    /// /var/lib/lxd, with every container in it; sandbox: slirp4netns).
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub uninstall_backend: Option<HostBackend>,
    /// Print the steps without connecting or changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(cmd: SystemCommand) -> i32 {
    let SystemCommand::Reset(a) = cmd;
    let list = plan::reset_steps(a.uninstall_backend);
    if a.dry_run {
        println!(
            "reset: would connect to {}@{}:{}, read the earnings (refusing with a balance unless --withdraw-to), then run as root:",
            a.ssh.user, a.host, a.ssh.port
        );
        steps::print_plan("reset", &list);
        return 0;
    }
    if let Some(f) = &a.withdraw_to {
        if f.exists() {
            eprintln!(
                "paygress-cli: --withdraw-to {}: the file exists; name a new file (tokens are never written over)",
                f.display()
            );
            return exit::USAGE;
        }
    }
    let opts = match a.ssh.connect_options(&a.host) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("paygress-cli: {e}");
            return exit::USAGE;
        }
    };
    let remote = match Remote::connect(opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("paygress-cli: reset: {e}");
            return exit::PROVIDER;
        }
    };
    let code = reset_on(&remote, &a, &list).await;
    remote.close().await;
    code
}

/// The earnings on the host: `None` when Paygress is not installed.
async fn earnings(remote: &Remote) -> Result<Option<u64>, String> {
    let o = remote
        .root(plan::EARNINGS, &[], Duration::from_secs(120))
        .await
        .map_err(|e| e.to_string())?;
    if !o.ok() {
        return Err(format!(
            "cannot read the earnings wallet: {}",
            steps::tail(&o)
        ));
    }
    if o.stdout.trim() == "none" {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim())
        .map_err(|_| "the host's wallet balance is not JSON".to_string())?;
    v.get("total_sats")
        .and_then(|t| t.as_u64())
        .map(Some)
        .ok_or_else(|| "the host's wallet balance has no total".into())
}

async fn reset_on(remote: &Remote, a: &ResetArgs, list: &[steps::Step]) -> i32 {
    let balance = match earnings(remote).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("paygress-cli: reset: {e}; nothing was changed");
            return exit::PROVIDER;
        }
    };
    let balance = balance.unwrap_or(0);
    println!("reset: earnings on the host: {balance} sat");
    if balance > 0 {
        let Some(file) = &a.withdraw_to else {
            eprintln!(
                "paygress-cli: reset: the earnings wallet holds {balance} sat; refusing to delete it. Run again with --withdraw-to FILE to take it out as a token first (nothing was changed)"
            );
            return exit::PAYMENT;
        };
        if let Err(e) = withdraw(remote, file).await {
            eprintln!("paygress-cli: reset: {e}; nothing was deleted");
            return exit::PAYMENT;
        }
        match earnings(remote).await {
            Ok(Some(0)) | Ok(None) => {}
            Ok(Some(left)) => {
                eprintln!("paygress-cli: reset: {left} sat are still in the earnings wallet after the withdrawal (tokens so far are in {}); nothing was deleted", file.display());
                return exit::PAYMENT;
            }
            Err(e) => {
                eprintln!("paygress-cli: reset: {e}; nothing was deleted");
                return exit::PAYMENT;
            }
        }
        println!(
            "reset: {balance} sat withdrawn to {} (0600)",
            file.display()
        );
    }
    match steps::run("reset", remote, list).await {
        Ok(_) => {
            println!("reset: Paygress is removed from {}", a.host);
            0
        }
        Err(e) => {
            eprintln!("paygress-cli: reset: {e}; fix it and run reset again");
            exit::PROVIDER
        }
    }
}

async fn withdraw(remote: &Remote, file: &std::path::Path) -> Result<(), String> {
    let stop = remote
        .root(plan::STOP_ACTION, &[], Duration::from_secs(120))
        .await
        .map_err(|e| e.to_string())?;
    if !stop.ok() {
        return Err(format!("cannot stop the service: {}", steps::tail(&stop)));
    }
    let o = remote
        .root(plan::WITHDRAW_ALL, &[], Duration::from_secs(300))
        .await
        .map_err(|e| e.to_string())?;
    let tokens: Vec<&str> = o
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cashu"))
        .collect();
    if !tokens.is_empty() {
        // The tokens are kept whatever happened next.
        use std::os::unix::fs::OpenOptionsExt;
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
            .and_then(|mut f| {
                for t in &tokens {
                    writeln!(f, "{t}")?;
                }
                f.sync_all()
            });
        if let Err(e) = written {
            // The host's balance is gone; the tokens must not be: the operator's own terminal is
            // the last place left for them.
            println!(
                "reset: cannot write {}: {e}; the withdrawn tokens follow, keep them:",
                file.display()
            );
            for t in &tokens {
                println!("{t}");
            }
            return Err(format!("{}: {e}", file.display()));
        }
    }
    if !o.ok() {
        return Err(format!("the withdrawal failed: {}", steps::tail(&o)));
    }
    Ok(())
}
