//! `paygress-cli system reset`: undo a bootstrap over SSH, never destroying earnings.
//!
//! Order matters for money. The service is stopped first (a running provider could take or
//! spend money between the count and the deletion), then the host's `wallet books` counts every
//! wallet file in the data dir (any mint, unspent, reserved and pending proofs) and the payments
//! journal's unsettled rows. Unsettled rows, or a balance without `--withdraw-to FILE`, refuse:
//! nothing is deleted and the service is started again. With it, the host's `wallet withdraw
//! --all` keeps every token in a fsynced 0600 file of its data dir before printing it; here they
//! are written to FILE (0600, a new file, fsynced with its directory; a fallback file if that
//! fails, never the terminal), the host is sent the sha256 of what was written and only then
//! drops its copy, and the books are read again as empty. The `files` step refuses while the
//! host's copy is still there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use paygress::app::exit;
use paygress::books::Books;
use paygress::bootstrap::remote::Remote;
use paygress::bootstrap::settings::HostBackend;
use paygress::bootstrap::{plan, steps};
use sha2::{Digest, Sha256};

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
    /// /var/lib/lxd, with every container in it; sandbox: slirp4netns). `proxmox` is refused:
    /// the message says which pveum commands remove the user, token and roles bootstrap made.
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub uninstall_backend: Option<HostBackend>,
    /// Print the steps without connecting or changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(cmd: SystemCommand) -> i32 {
    let SystemCommand::Reset(a) = cmd;
    if a.uninstall_backend == Some(HostBackend::Proxmox) {
        eprintln!(
            "paygress-cli: --uninstall-backend proxmox: Proxmox VE is not bootstrap's to uninstall, and reset does not remove what bootstrap made in PVE; after the reset (which removes /etc/paygress with the token's secret file), remove it on the host with: pveum user delete {} (its token goes with it), then pveum role delete for each of {}",
            paygress::bootstrap::pve::PVE_USER,
            paygress::bootstrap::pve::LEAST_PRIVILEGES
                .iter()
                .map(|g| g.role)
                .collect::<Vec<_>>()
                .join(", ")
        );
        return paygress::app::exit::USAGE;
    }
    let list = plan::reset_steps(a.uninstall_backend);
    if a.dry_run {
        println!(
            "reset: would connect to {}@{}:{}, stop the service, count every wallet and the payments journal in the data dir (refusing with a balance unless --withdraw-to, and with unsettled payments), then run as root:",
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
    if !a.ssh.yes {
        let what = match a.uninstall_backend {
            Some(HostBackend::Lxd) => ", and purge LXD",
            Some(HostBackend::Sandbox) => ", and purge slirp4netns",
            Some(HostBackend::Proxmox) => "",
            None => "",
        };
        if !paygress::bootstrap::tty::has_tty() {
            eprintln!(
                "paygress-cli: reset removes Paygress from {}{what}; there is no terminal to confirm on: pass --yes (nothing was changed)",
                a.host
            );
            return exit::USAGE;
        }
        if !paygress::bootstrap::tty::confirm(&format!(
            "Remove Paygress from {} (service, config, data, binary, user, its workloads{what})? [y/N] ",
            a.host
        )) {
            eprintln!("paygress-cli: reset: not confirmed; nothing was changed");
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
    if a.uninstall_backend == Some(HostBackend::Lxd) {
        if let Err(e) = no_foreign_instances(&remote).await {
            eprintln!("paygress-cli: reset: {e}; nothing was changed");
            remote.close().await;
            return exit::PROVIDER;
        }
    }
    let code = reset_on(&remote, &a, &list).await;
    remote.close().await;
    code
}

/// Refuses to purge LXD while it holds instances that carry no Paygress mark (made by
/// someone else: purging would destroy them).
async fn no_foreign_instances(remote: &Remote) -> Result<(), String> {
    let o = remote
        .root(plan::FOREIGN_INSTANCES, &[], Duration::from_secs(120))
        .await
        .map_err(|e| e.to_string())?;
    if !o.ok() {
        return Err(format!("cannot list LXD's instances: {}", steps::tail(&o)));
    }
    let names: Vec<&str> = o.stdout.split_whitespace().collect();
    if names.is_empty() {
        return Ok(());
    }
    Err(format!(
        "LXD on the host has instances Paygress did not make ({}); refusing --uninstall-backend lxd, which would destroy them",
        names.join(", ")
    ))
}

/// The books on the host (`wallet books`): `None` when there is no data dir.
async fn books(remote: &Remote) -> Result<Option<Books>, String> {
    let o = remote
        .root(plan::BOOKS, &[], Duration::from_secs(120))
        .await
        .map_err(|e| e.to_string())?;
    if !o.ok() {
        return Err(format!("cannot read the books: {}", steps::tail(&o)));
    }
    if o.stdout.trim() == "none" {
        return Ok(None);
    }
    serde_json::from_str(o.stdout.trim())
        .map(Some)
        .map_err(|_| "the host's books are not JSON".to_string())
}

/// Why reset stopped before deleting anything.
struct Refusal {
    code: i32,
    message: String,
}

fn refuse(code: i32, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

async fn reset_on(remote: &Remote, a: &ResetArgs, list: &[steps::Step]) -> i32 {
    // The provider is stopped before the books are read: a running one could take a payment
    // (or spend proofs for a refund) between the count and the deletion.
    let was_active = match remote
        .root(plan::IS_ACTIVE, &[], Duration::from_secs(60))
        .await
    {
        Ok(o) => o.ok(),
        Err(e) => {
            eprintln!("paygress-cli: reset: {e}; nothing was changed");
            return exit::PROVIDER;
        }
    };
    match remote
        .root(plan::STOP_ACTION, &[], Duration::from_secs(120))
        .await
    {
        Ok(o) if o.ok() => {}
        Ok(o) => {
            eprintln!(
                "paygress-cli: reset: cannot stop the service: {}; nothing else was changed",
                steps::tail(&o)
            );
            return exit::PROVIDER;
        }
        Err(e) => {
            eprintln!("paygress-cli: reset: {e}; nothing else was changed");
            return exit::PROVIDER;
        }
    }
    if let Err(r) = settle_books(remote, a).await {
        eprintln!("paygress-cli: reset: {}", r.message);
        if was_active {
            match remote.root(plan::START_ACTION, &[], Duration::from_secs(120)).await {
                Ok(o) if o.ok() => eprintln!("paygress-cli: reset: the service is started again"),
                _ => eprintln!(
                    "paygress-cli: reset: the service is stopped and could not be started again (systemctl start paygress-provider)"
                ),
            }
        }
        return r.code;
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

/// With the service stopped: count the books; with money in them, take it out to
/// `--withdraw-to` and count again. Ok only when the data dir holds nothing of value.
async fn settle_books(remote: &Remote, a: &ResetArgs) -> Result<(), Refusal> {
    let nothing = "nothing was deleted";
    let b = books(remote)
        .await
        .map_err(|e| refuse(exit::PROVIDER, format!("{e}; {nothing}")))?
        .unwrap_or_default();
    println!(
        "reset: books on the host: {} sat in {} wallets ({} sat spendable), {} unsettled payments{}",
        b.total_sats,
        b.wallets.len(),
        b.unspent_sats,
        b.unsettled_payments,
        match b.pending_tokens_file {
            true => ", withdrawn tokens not yet confirmed",
            false => "",
        }
    );
    if b.unsettled_payments > 0 {
        return Err(refuse(exit::PAYMENT, format!(
            "the payments journal has {} unsettled payments (swap outcome unknown, paid but not delivered, or refund not yet minted); refusing. Start the provider so that it settles them, then run reset again ({nothing})",
            b.unsettled_payments
        )));
    }
    if b.total_sats == 0 && !b.pending_tokens_file {
        return Ok(());
    }
    let Some(file) = &a.withdraw_to else {
        return Err(refuse(exit::PAYMENT, format!(
            "the earnings wallets hold {} sat{}; refusing to delete them. Run again with --withdraw-to FILE to take them out as tokens first ({nothing})",
            b.total_sats,
            match b.pending_tokens_file {
                true => " and withdrawn tokens never confirmed",
                false => "",
            }
        )));
    };
    let written = withdraw(remote, file)
        .await
        .map_err(|e| refuse(exit::PAYMENT, format!("{e}; {nothing}")))?;
    let after = books(remote)
        .await
        .map_err(|e| refuse(exit::PAYMENT, format!("{e}; {nothing}")))?
        .unwrap_or_default();
    if after.total_sats > 0 || after.pending_tokens_file || after.unsettled_payments > 0 {
        let stuck: Vec<String> = after
            .wallets
            .iter()
            .filter(|w| w.held() > 0)
            .map(|w| format!("{} sat in {} ({})", w.held(), w.file, w.mints.join(", ")))
            .collect();
        return Err(refuse(exit::PAYMENT, format!(
            "after the withdrawal the host still holds {} sat [{}]{} (wallets of mints the config no longer lists, or proofs still reserved or pending, are not withdrawn); tokens so far are in {}; {nothing}",
            after.total_sats,
            stuck.join("; "),
            match after.pending_tokens_file {
                true => ", and its withdrawn tokens are not confirmed",
                false => "",
            },
            written.display()
        )));
    }
    println!(
        "reset: {} sat withdrawn to {} (0600)",
        b.total_sats,
        written.display()
    );
    Ok(())
}

/// Write `tokens` to a new 0600 file, fsynced with its directory.
fn write_tokens(file: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    f.write_all(content)?;
    f.sync_all()?;
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Withdraw everything on the host, write the tokens here (to `file`, or when that fails to a
/// fallback file whose path is printed; the tokens themselves are never printed), then tell the
/// host the sha256 of what was fsynced so that it drops its own copy. Returns the file written.
async fn withdraw(remote: &Remote, file: &Path) -> Result<PathBuf, String> {
    let o = remote
        .root(plan::WITHDRAW_ALL, &[], Duration::from_secs(300))
        .await
        .map_err(|e| {
            format!("{e} (withdrawn tokens, if any, are kept on the host in /var/lib/paygress/withdrawn.tokens)")
        })?;
    let tokens: Vec<&str> = o
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cashu"))
        .collect();
    let mut written = file.to_path_buf();
    if !tokens.is_empty() {
        let content: String = tokens.iter().map(|t| format!("{t}\n")).collect();
        if let Err(e) = write_tokens(file, content.as_bytes()) {
            eprintln!("paygress-cli: reset: cannot write {}: {e}", file.display());
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let name = format!("paygress-withdrawn-{stamp}.tokens");
            let mut candidates = Vec::new();
            if let Some(h) = paygress::buyer::home_dir() {
                if paygress::buyer::private_dir(&h).is_ok() {
                    candidates.push(h.join(&name));
                }
            }
            candidates.push(std::env::temp_dir().join(&name));
            let fallback = candidates
                .into_iter()
                .find(|c| write_tokens(c, content.as_bytes()).is_ok());
            match fallback {
                Some(f) => {
                    println!(
                        "reset: the withdrawn tokens are in {} (0600) instead; keep that file",
                        f.display()
                    );
                    written = f;
                }
                None => {
                    return Err(format!(
                        "cannot write the withdrawn tokens anywhere here ({e}); they stay on the host in /var/lib/paygress/withdrawn.tokens, which reset will not delete"
                    ))
                }
            }
        }
        let sum = hex::encode(Sha256::digest(content.as_bytes()));
        let c = remote
            .root(
                plan::CONFIRM_TOKENS,
                format!("{sum}\n").as_bytes(),
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| {
                format!(
                    "the tokens are in {}, but the host was not told: {e}",
                    written.display()
                )
            })?;
        if !c.ok() {
            return Err(format!(
                "the tokens are in {}, but the host kept its copy: {}",
                written.display(),
                steps::tail(&c)
            ));
        }
    }
    if !o.ok() {
        return Err(format!("the withdrawal failed: {}", steps::tail(&o)));
    }
    Ok(written)
}
