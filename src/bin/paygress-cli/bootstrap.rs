//! `paygress-cli bootstrap`: make a Debian/Ubuntu machine a provider over SSH.
//!
//! A thin command: the flags become [`Settings`] and an SSH session, the steps are
//! [`paygress::bootstrap::plan`]'s; after them it waits until the offer is on the relays (asked
//! from this side, as a buyer would) and prints the npub, the tiers and the journalctl command.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use nostr_sdk::prelude::*;
use paygress::app::exit;
use paygress::bootstrap::remote::{Auth, ConnectOptions, HostKeyPolicy, Remote};
use paygress::bootstrap::settings::{self, HostBackend, Settings};
use paygress::bootstrap::{libc, plan, steps, tty};
use sha2::{Digest, Sha256};

/// How to reach and log in to the host (shared with `system reset`).
#[derive(Debug, Args)]
pub struct SshArgs {
    /// User to log in as: root, or a user that may run sudo.
    #[arg(long, value_name = "USER", default_value = "root")]
    pub user: String,
    /// SSH port.
    #[arg(long, value_name = "PORT", default_value_t = 22)]
    pub port: u16,
    /// Private key file to log in with (OpenSSH format, unencrypted).
    #[arg(long, value_name = "FILE", conflicts_with = "password_stdin")]
    pub key: Option<PathBuf>,
    /// Read the user's password from the first line of standard input (SSH login, and sudo).
    #[arg(long)]
    pub password_stdin: bool,
    /// Read the sudo password from the first line of standard input (with --key). Without it
    /// the password is asked on the terminal when sudo needs one; it is never stored.
    #[arg(long, conflicts_with = "password_stdin")]
    pub sudo_password_stdin: bool,
    /// Accept only this host key (`SHA256:…`, as `ssh-keygen -lf` prints it).
    #[arg(long, value_name = "SHA256:FINGERPRINT")]
    pub host_key: Option<String>,
    /// known_hosts file to check the host key against (and to add it to on first contact).
    /// Default: ~/.ssh/known_hosts.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Do not ask: trust an unknown host key on first contact (never a changed one), and go on.
    #[arg(long)]
    pub yes: bool,
}

impl SshArgs {
    /// The connection options, reading a password from stdin if asked to.
    pub fn connect_options(&self, host: &str) -> Result<ConnectOptions, String> {
        if let Some(pin) = &self.host_key {
            if !pin.starts_with("SHA256:") || pin.len() < 20 {
                return Err("--host-key must be SHA256:… as ssh-keygen -lf prints it".into());
            }
        }
        let known_hosts = match &self.known_hosts {
            Some(f) => f.clone(),
            None => std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".ssh").join("known_hosts"))
                .ok_or("no HOME: pass --known-hosts FILE or --host-key")?,
        };
        let (auth, sudo_password) = match (&self.key, self.password_stdin) {
            (Some(k), _) => {
                let sudo = match self.sudo_password_stdin {
                    true => Some(tty::stdin_line().ok_or("no password on standard input")?),
                    false => None,
                };
                (Auth::Key(k.clone()), sudo)
            }
            (None, true) => (
                Auth::Password(tty::stdin_line().ok_or("no password on standard input")?),
                None,
            ),
            (None, false) => match tty::ask_secret(&format!("{}@{}'s password: ", self.user, host))
            {
                Some(p) => (Auth::Password(p), None),
                None => return Err(
                    "no way to log in: pass --key FILE or --password-stdin (no terminal to ask on)"
                        .into(),
                ),
            },
        };
        Ok(ConnectOptions {
            host: host.to_string(),
            port: self.port,
            user: self.user.clone(),
            auth,
            host_key: HostKeyPolicy {
                pinned: self.host_key.clone(),
                known_hosts,
                accept_new: self.yes,
                ask: !self.yes,
            },
            sudo_password,
        })
    }
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// The host's address or name.
    #[arg(long, value_name = "HOST")]
    pub host: String,
    #[command(flatten)]
    pub ssh: SshArgs,
    /// The provider's name in its offer.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Where the provider is, in its offer (free text).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub location: String,
    /// What sells the compute: LXD containers, or the embedded sandbox (weaker isolation).
    #[arg(long, value_enum, default_value = "lxd")]
    pub backend: HostBackend,
    /// Mints whose tokens are accepted (repeat, or comma-separated). At least one.
    #[arg(long = "mints", value_name = "URL", value_delimiter = ',', num_args = 1.., required = true)]
    pub mints: Vec<String>,
    /// Nostr relays the offer is published on (repeat, or comma-separated). At least one.
    #[arg(long = "relays", value_name = "URL", value_delimiter = ',', num_args = 1.., required = true)]
    pub relays: Vec<String>,
    /// Tiers to sell: a TOML file of [[tiers]] tables, as in the config (default: basic and
    /// standard).
    #[arg(long, value_name = "FILE")]
    pub tier_file: Option<PathBuf>,
    /// The address buyers SSH to (default: --host).
    #[arg(long, value_name = "HOST")]
    pub ssh_host: Option<String>,
    /// Host ports for the workloads' SSH, START-END.
    #[arg(long, value_name = "START-END", default_value = "30000-30999", value_parser = parse_range)]
    pub ssh_ports: (u16, u16),
    /// --backend sandbox: serve the workloads' SSH on every address of the host (0.0.0.0) and
    /// write down in the config that the sandbox's weaker isolation is sold to strangers.
    /// Without it the sandbox serves 127.0.0.1 only.
    #[arg(long)]
    pub sell_sandbox_to_strangers: bool,
    /// --backend lxd: the address of LXD's default bridge (lxdbr0), when LXD is first
    /// initialised; pick a subnet the host does not use.
    #[arg(long, value_name = "A.B.C.D/N", default_value = "10.77.0.1/24", value_parser = plan::parse_bridge_addr)]
    pub lxd_bridge_addr: String,
    /// --backend lxd: the address of the workloads' bridge (paygressbr0, with the egress ACL).
    #[arg(long, value_name = "A.B.C.D/N", default_value = "10.78.0.1/24", value_parser = plan::parse_bridge_addr)]
    pub lxd_workload_bridge_addr: String,
    /// Print the steps without connecting or changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for the offer on the relays after the start, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub offer_timeout: u64,
}

fn bridges(a: &BootstrapArgs) -> plan::LxdBridges {
    plan::LxdBridges {
        default: a.lxd_bridge_addr.clone(),
        workloads: a.lxd_workload_bridge_addr.clone(),
    }
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected START-END, e.g. 30000-30999")?;
    let a: u16 = a.trim().parse().map_err(|_| "START is not a port")?;
    let b: u16 = b.trim().parse().map_err(|_| "END is not a port")?;
    if a == 0 || b < a {
        return Err("expected 1 <= START <= END".into());
    }
    Ok((a, b))
}

fn arch_matches(uname: &str) -> bool {
    let ours = std::env::consts::ARCH;
    let theirs = uname.trim();
    theirs == ours || (ours == "aarch64" && theirs == "arm64")
}

pub async fn run(a: BootstrapArgs) -> i32 {
    let tiers = match &a.tier_file {
        Some(f) => match settings::read_tier_file(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("paygress-cli: {e}");
                return exit::USAGE;
            }
        },
        None => settings::default_tiers(),
    };
    let s = Settings {
        name: a.name.clone(),
        location: a.location.clone(),
        backend: a.backend,
        mints: a.mints.clone(),
        relays: a.relays.clone(),
        tiers,
        ssh_host: a.ssh_host.clone().unwrap_or_else(|| a.host.clone()),
        ports: a.ssh_ports,
        sandbox_public: a.sell_sandbox_to_strangers,
    };
    if a.sell_sandbox_to_strangers && a.backend != HostBackend::Sandbox {
        eprintln!("paygress-cli: --sell-sandbox-to-strangers is for --backend sandbox");
        return exit::USAGE;
    }
    let toml = match s.to_toml() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("paygress-cli: {e}");
            return exit::USAGE;
        }
    };
    if a.dry_run {
        let steps = plan::bootstrap_steps(a.backend, &bridges(&a), &toml, Vec::new(), "(checksum)");
        println!(
            "bootstrap: would connect to {}@{}:{}, check the host key, and run as root:",
            a.ssh.user, a.host, a.ssh.port
        );
        steps::print_plan("bootstrap", &steps);
        println!(
            "bootstrap: then wait for the offer on {}",
            a.relays.join(", ")
        );
        return 0;
    }
    let binary = match std::env::current_exe().and_then(std::fs::read) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("paygress-cli: cannot read this program's binary to upload it: {e}");
            return exit::PROVIDER;
        }
    };
    let sha256 = hex::encode(Sha256::digest(&binary));
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
            eprintln!("paygress-cli: bootstrap: {e}");
            return exit::PROVIDER;
        }
    };
    println!(
        "bootstrap: connected to {}:{} (host key {})",
        a.host, a.ssh.port, remote.host_key
    );
    let code = bootstrap_on(&remote, &a, &toml, binary, &sha256, &s).await;
    remote.close().await;
    code
}

async fn bootstrap_on(
    remote: &Remote,
    a: &BootstrapArgs,
    toml: &str,
    binary: Vec<u8>,
    sha256: &str,
    s: &Settings,
) -> i32 {
    // Offers older than this run are some earlier process's (maybe with the same tiers): only
    // one published after this moment says the service just configured is up.
    let started = Timestamp::now();
    match remote
        .root(plan::PREFLIGHT, &[], Duration::from_secs(60))
        .await
    {
        Ok(o) if o.ok() => {
            let mut lines = o.stdout.lines();
            let machine = lines.next().unwrap_or("");
            if !arch_matches(machine) {
                eprintln!(
                    "paygress-cli: bootstrap: the host is {} and this paygress-cli is built for {}: run the bootstrap from a paygress-cli built for the host's architecture; nothing was changed",
                    machine.trim(),
                    std::env::consts::ARCH
                );
                return exit::USAGE;
            }
            let host_libc = libc::parse_host_libc(lines.next().unwrap_or(""));
            let verdict = libc::needed_glibc(&binary).and_then(|n| libc::check(n, &host_libc));
            if let Err(e) = verdict {
                eprintln!("paygress-cli: bootstrap: {e}; nothing was changed");
                return match e {
                    libc::LibcError::Elf(_) => exit::PROVIDER,
                    _ => exit::USAGE,
                };
            }
        }
        Ok(o) => {
            eprintln!("paygress-cli: bootstrap: {}", steps::tail(&o));
            return exit::PROVIDER;
        }
        Err(e) => {
            eprintln!("paygress-cli: bootstrap: {e}");
            return exit::PROVIDER;
        }
    }
    if let Err((code, e)) = check_prior(remote, a, s).await {
        eprintln!("paygress-cli: bootstrap: {e}; nothing was changed");
        return code;
    }
    let list = plan::bootstrap_steps(a.backend, &bridges(a), toml, binary, sha256);
    let done = match steps::run("bootstrap", remote, &list).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("paygress-cli: bootstrap: {e}; fix it and run bootstrap again (the steps done are kept)");
            return exit::PROVIDER;
        }
    };
    // Nothing changed, so the service was not restarted: the running one already serves this
    // config, and any offer it published since it started counts (not only one after this run
    // began, which would mean waiting up to a heartbeat for its next republication).
    let since = match done.iter().all(|(_, o)| *o == steps::Outcome::Unchanged) {
        true => service_started(remote).await.unwrap_or(started),
        false => started,
    };
    let npub = match remote
        .root(plan::IDENTITY, &[], Duration::from_secs(60))
        .await
    {
        Ok(o) if o.ok() && o.stdout.trim().starts_with("npub1") => o.stdout.trim().to_string(),
        Ok(o) => {
            eprintln!(
                "paygress-cli: bootstrap: cannot read the provider's npub: {}",
                steps::tail(&o)
            );
            return exit::PROVIDER;
        }
        Err(e) => {
            eprintln!("paygress-cli: bootstrap: cannot read the provider's npub: {e}");
            return exit::PROVIDER;
        }
    };
    let wait = Duration::from_secs(a.offer_timeout);
    let offer = match wait_for_offer(&npub, &a.relays, &s.tiers, since, wait).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "paygress-cli: bootstrap: the service runs but {e}; see: journalctl -u {} -e",
                settings::UNIT_NAME
            );
            return exit::PROVIDER;
        }
    };
    println!(
        "bootstrap: the offer is on the relays ({}, {}, backend {})",
        offer.offers.provider.name, offer.offers.provider.location, offer.offers.backend
    );
    println!("provider npub: {npub}");
    println!("tiers:");
    for t in &offer.offers.pod_specs {
        println!(
            "  {:<12} {:<20} {} mcpu, {} MB, {} msat/s",
            t.id, t.name, t.cpu_millicores, t.memory_mb, t.rate_msats_per_sec
        );
    }
    println!("logs: journalctl -u {} -f", settings::UNIT_NAME);
    0
}

/// When the running service became active, by the host's clock (which stamps its offers);
/// `None` when it cannot be told.
async fn service_started(remote: &Remote) -> Option<Timestamp> {
    let o = remote
        .root(plan::SERVICE_STARTED, &[], Duration::from_secs(30))
        .await
        .ok()?;
    let secs: u64 = o.stdout.trim().parse().ok().filter(|s| *s > 0 && o.ok())?;
    Some(Timestamp::from_secs(secs))
}

/// A rerun may change the mints and the backend, but not so that money or workloads are left
/// behind: a mint the new config drops must hold nothing, and the backend may change only while
/// no workload is live (the new backend would never see them again).
async fn check_prior(
    remote: &Remote,
    a: &BootstrapArgs,
    s: &Settings,
) -> Result<(), (i32, String)> {
    let o = remote
        .root(plan::PRIOR, &[], Duration::from_secs(120))
        .await
        .map_err(|e| (exit::PROVIDER, e.to_string()))?;
    if !o.ok() {
        return Err((
            exit::PROVIDER,
            format!(
                "cannot read what the earlier install holds: {}",
                steps::tail(&o)
            ),
        ));
    }
    if o.stdout.trim() == "none" {
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).map_err(|_| {
        (
            exit::PROVIDER,
            "the earlier install's status is not JSON".to_string(),
        )
    })?;
    let norm = |m: &str| {
        <cdk::mint_url::MintUrl as std::str::FromStr>::from_str(m)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| m.to_string())
    };
    let kept: Vec<String> = s.mints.iter().map(|m| norm(m)).collect();
    let earnings = v["earnings"].as_array().cloned().unwrap_or_default();
    for w in &earnings {
        let sats = w["balance_sats"].as_u64().unwrap_or(0);
        let mints = w["mint"].as_str().unwrap_or("");
        let dropped = mints
            .split(", ")
            .filter(|m| !m.is_empty())
            .any(|m| !kept.contains(&norm(m)));
        if sats > 0 && dropped {
            return Err((
                exit::PAYMENT,
                format!(
                    "the earnings at {mints} ({sats} sat) are at a mint the new --mints drops; keep it in --mints, or take them out first (wallet withdraw on the host)"
                ),
            ));
        }
    }
    let live = v["live_workloads"].as_u64().unwrap_or(0);
    let backend = v["backend"].as_str().unwrap_or("");
    let wanted = match a.backend {
        HostBackend::Lxd => "lxd",
        HostBackend::Sandbox => "sandbox",
    };
    if live > 0 && !backend.is_empty() && backend != wanted {
        return Err((
            exit::USAGE,
            format!(
                "the host's provider runs {live} live workloads on the {backend} backend; switching to {wanted} would orphan them: wait until they end (provider status) or keep --backend {backend}"
            ),
        ));
    }
    Ok(())
}

/// Wait until an offer by `npub` selling exactly `tiers` (the config just written, not an
/// older one), published at or after `since`, is on any of `relays`. `since` is this run's
/// start when a step changed something (the service was restarted), else the running
/// service's start: its offers since then are of this very config.
async fn wait_for_offer(
    npub: &str,
    relays: &[String],
    tiers: &[paygress::config::Tier],
    since: Timestamp,
    timeout: Duration,
) -> Result<paygress::market::ListedOffer, String> {
    let pk = PublicKey::from_bech32(npub).map_err(|_| "the host printed no valid npub")?;
    let client = Client::builder().signer(Keys::generate()).build();
    for r in relays {
        let _ = client.add_relay(r.as_str()).await;
    }
    client.connect().await;
    client.wait_for_connection(Duration::from_secs(10)).await;
    let filter = Filter::new()
        .kind(Kind::Custom(paygress::market::OFFER_KIND))
        .author(pk)
        .since(since);
    let deadline = tokio::time::Instant::now() + timeout;
    let found = loop {
        if let Ok(ev) = client
            .fetch_events(filter.clone(), Duration::from_secs(3))
            .await
        {
            if let Some(o) = ev
                .iter()
                .filter(|e| e.created_at >= since)
                .filter_map(paygress::market::ListedOffer::parse)
                .filter(|o| o.offers.pod_specs == tiers)
                .max_by_key(|o| o.published_at)
            {
                break Some(o);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    client.shutdown().await;
    match found {
        Some(o) => Ok(o),
        None => Err(format!(
            "no offer by {npub} with the configured tiers was published on the relays since {}, within {} s (older offers do not count; is the host's clock right?)",
            since.to_human_datetime(),
            timeout.as_secs()
        )),
    }
}
