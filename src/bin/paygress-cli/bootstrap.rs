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
use paygress::bootstrap::settings::{self, HostBackend, PveNetwork, PveSettings, Settings};
use paygress::bootstrap::{libc, plan, pve, pve_image, steps, tty};
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
    /// What sells the compute: LXD containers, the embedded sandbox (weaker isolation), or
    /// LXC guests of the Proxmox VE host itself (PVE 8 or newer; see the --pve-* options).
    ///
    /// proxmox: bootstrap first checks that the host is Proxmox VE 8 or newer with pveproxy
    /// running; a host that is not is refused before anything changes. Then, with pveum on
    /// the host, it makes one role per ACL path holding exactly the privileges the backend
    /// needs, the user paygress@pve (no password) and its API token paygress@pve!provider
    /// (privilege separation on; the secret is written on the host into
    /// /etc/paygress/proxmox-token, 0600, and never crosses the wire), and the ACLs on /vms,
    /// /storage/<storage>, /storage/<template storage> and /sdn/zones/localnetwork/<bridge>.
    /// The config talks to https://127.0.0.1:8006 and pins the SHA-256 fingerprint of the
    /// node certificate read on the host.
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
    #[command(flatten)]
    pub pve: PveArgs,
}

/// The `--pve-*` options (`--backend proxmox` only).
#[derive(Debug, Args)]
#[command(next_help_heading = "Proxmox VE (--backend proxmox)")]
pub struct PveArgs {
    /// --backend proxmox: the PVE node the guests live on (default: the host's own node name,
    /// read on the host).
    #[arg(long, value_name = "NODE", value_parser = pve::check_node)]
    pub pve_node: Option<String>,
    /// --backend proxmox: the storage for the guests' root disks (default: local-lvm).
    #[arg(long, value_name = "STORAGE", value_parser = pve::check_storage)]
    pub pve_storage: Option<String>,
    /// --backend proxmox: the storage holding container templates (default: local).
    #[arg(long, value_name = "STORAGE", value_parser = pve::check_storage)]
    pub pve_template_storage: Option<String>,
    /// --backend proxmox: the template sold as the default image, a file name as `pveam
    /// available` lists it (default: the newest debian-12-standard on the template storage,
    /// downloaded with pveam when none is there). Bootstrap derives from it the template the
    /// config names: the same tree plus the Paygress first-boot login (step pve-image).
    #[arg(long, value_name = "FILE", value_parser = pve::check_template_name)]
    pub pve_template: Option<String>,
    /// --backend proxmox: the bridge guests attach to (default: vmbr0).
    #[arg(long, value_name = "BRIDGE", value_parser = pve::check_bridge)]
    pub pve_bridge: Option<String>,
    /// --backend proxmox: how guests get their address: `dhcp` (from the bridge's network,
    /// read from the API; default) or `static` (from --pve-pool, with --pve-gateway).
    #[arg(long, value_name = "MODE", value_parser = ["dhcp", "static"])]
    pub pve_network: Option<String>,
    /// --backend proxmox with --pve-network static: the guests' addresses, FIRST-LAST.
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_pool)]
    pub pve_pool: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
    /// --backend proxmox with --pve-network static: the guests' gateway.
    #[arg(long, value_name = "IPV4")]
    pub pve_gateway: Option<std::net::Ipv4Addr>,
    /// --backend proxmox with --pve-network static: the prefix length of the guests' network
    /// (default: 24).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(8..=32))]
    pub pve_prefix_len: Option<u8>,
}

impl PveArgs {
    fn any(&self) -> bool {
        self.pve_node.is_some()
            || self.pve_storage.is_some()
            || self.pve_template_storage.is_some()
            || self.pve_template.is_some()
            || self.pve_bridge.is_some()
            || self.pve_network.is_some()
            || self.pve_pool.is_some()
            || self.pve_gateway.is_some()
            || self.pve_prefix_len.is_some()
    }

    fn targets(&self) -> pve::Targets {
        pve::Targets {
            storage: self
                .pve_storage
                .clone()
                .unwrap_or_else(|| "local-lvm".into()),
            template_storage: self
                .pve_template_storage
                .clone()
                .unwrap_or_else(|| "local".into()),
            bridge: self.pve_bridge.clone().unwrap_or_else(|| "vmbr0".into()),
        }
    }

    fn network(&self) -> Result<PveNetwork, String> {
        let static_flags =
            self.pve_pool.is_some() || self.pve_gateway.is_some() || self.pve_prefix_len.is_some();
        match self.pve_network.as_deref() {
            Some("static") => match (self.pve_pool, self.pve_gateway) {
                (Some((pool_start, pool_end)), Some(gateway)) => Ok(PveNetwork::Static {
                    pool_start,
                    pool_end,
                    prefix_len: self.pve_prefix_len.unwrap_or(24),
                    gateway,
                }),
                _ => {
                    Err("--pve-network static needs --pve-pool FIRST-LAST and --pve-gateway".into())
                }
            },
            _ if static_flags => Err(
                "--pve-pool, --pve-gateway and --pve-prefix-len are for --pve-network static"
                    .into(),
            ),
            _ => Ok(PveNetwork::Dhcp),
        }
    }

    /// The config's Proxmox part: from the host's facts, or (before connecting, to check the
    /// rest of the config) from placeholders of the right form.
    fn settings(&self, facts: Option<&pve::Facts>) -> Result<PveSettings, String> {
        let t = self.targets();
        let template = match facts.and_then(|f| f.template.clone()) {
            Some(v) => v,
            None => format!(
                "{}:vztmpl/{}",
                t.template_storage,
                self.pve_template
                    .as_deref()
                    .unwrap_or("debian-12-standard_12.7-1_amd64.tar.zst")
            ),
        };
        Ok(PveSettings {
            node: match (&self.pve_node, facts) {
                (Some(n), _) => n.clone(),
                (None, Some(f)) => f.node.clone(),
                (None, None) => "pve".into(),
            },
            fingerprint: facts
                .map(|f| f.fingerprint.clone())
                .unwrap_or_else(|| vec!["00"; 32].join(":")),
            storage: t.storage,
            bridge: t.bridge,
            template,
            network: self.network()?,
        })
    }
}

fn parse_pool(s: &str) -> Result<(std::net::Ipv4Addr, std::net::Ipv4Addr), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected FIRST-LAST, e.g. 192.0.2.100-192.0.2.199")?;
    let a: std::net::Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|_| "FIRST is not an IPv4 address")?;
    let b: std::net::Ipv4Addr = b
        .trim()
        .parse()
        .map_err(|_| "LAST is not an IPv4 address")?;
    if u32::from(a) > u32::from(b) {
        return Err("FIRST must not come after LAST".into());
    }
    Ok((a, b))
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
        proxmox: None,
    };
    let mut s = s;
    if a.sell_sandbox_to_strangers && a.backend != HostBackend::Sandbox {
        eprintln!("paygress-cli: --sell-sandbox-to-strangers is for --backend sandbox");
        return exit::USAGE;
    }
    if a.pve.any() && a.backend != HostBackend::Proxmox {
        eprintln!("paygress-cli: the --pve-* options are for --backend proxmox");
        return exit::USAGE;
    }
    if a.backend == HostBackend::Proxmox {
        match a.pve.settings(None) {
            Ok(p) => s.proxmox = Some(p),
            Err(e) => {
                eprintln!("paygress-cli: {e}");
                return exit::USAGE;
            }
        }
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
        if a.backend == HostBackend::Proxmox {
            println!(
                "bootstrap: check that the host runs Proxmox VE {} or newer with pveproxy active (pveversion, pveum, pveam), read its node name and certificate fingerprint; a host that is not is refused before anything changes",
                pve::MIN_MAJOR
            );
            steps::print_plan(
                "bootstrap (proxmox)",
                &plan::pve_steps(&a.pve.targets(), a.pve.pve_template.as_deref()),
            );
            steps::print_plan(
                "bootstrap (proxmox, once the stock template is there)",
                &[pve_image::image_step(
                    &a.pve.targets(),
                    a.pve
                        .pve_template
                        .as_deref()
                        .unwrap_or("debian-12-standard_12.7-1_amd64.tar.zst"),
                )],
            );
            println!("bootstrap: then write the config with {} and the fingerprint read on the host, and:", pve::API_URL);
        }
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
    let pve_input = format!(
        "{}\n{}\n{}\n{}\n",
        a.pve.targets().template_storage,
        a.pve.pve_template.as_deref().unwrap_or(""),
        a.pve.targets().storage,
        a.pve.targets().bridge
    );
    if a.backend == HostBackend::Proxmox {
        let facts = match pve_facts(remote, &pve_input, a.pve.pve_node.as_deref()).await {
            Ok(f) => f,
            Err((code, e)) => {
                eprintln!("paygress-cli: bootstrap: {e}");
                return code;
            }
        };
        // The config from what the host said, checked now: a value the config refuses must
        // stop the run before any PVE step changes something.
        let mut s = s.clone();
        s.proxmox = match a.pve.settings(Some(&facts)) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("paygress-cli: {e}");
                return exit::USAGE;
            }
        };
        if let Err(e) = s.to_toml() {
            eprintln!("paygress-cli: bootstrap: {e}; nothing was changed");
            return exit::USAGE;
        }
    }
    if let Err((code, e)) = check_prior(remote, a, s).await {
        eprintln!("paygress-cli: bootstrap: {e}; nothing was changed");
        return code;
    }
    let mut toml = toml.to_string();
    // A new token secret (or the user made) needs the service restarted by the later steps.
    let mut restart = false;
    // Whether every step found its state already right (then the service was not restarted).
    let mut unchanged = true;
    if a.backend == HostBackend::Proxmox {
        let list = plan::pve_steps(&a.pve.targets(), a.pve.pve_template.as_deref());
        match steps::run("bootstrap (proxmox)", remote, &list).await {
            Ok(done) => {
                unchanged &= done.iter().all(|(_, o)| *o == steps::Outcome::Unchanged);
                restart = done.iter().any(|(name, o)| {
                    *o == steps::Outcome::Changed
                        && list.iter().any(|s| s.name == *name && s.needs_restart)
                })
            }
            Err(e) => {
                eprintln!("paygress-cli: bootstrap: {e}; fix it and run bootstrap again (the steps done are kept)");
                return exit::PROVIDER;
            }
        }
        // Read again: the template step may just have downloaded the template.
        let mut facts = match pve_facts(remote, &pve_input, a.pve.pve_node.as_deref()).await {
            Ok(f) => f,
            Err((code, e)) => {
                eprintln!("paygress-cli: bootstrap: {e}");
                return code;
            }
        };
        if facts.template.is_none() {
            eprintln!(
                "paygress-cli: bootstrap: the template is still not on storage {} after the template step",
                a.pve.targets().template_storage
            );
            return exit::PROVIDER;
        }
        // The stock template has no Paygress login: derive the one the config names.
        let t = a.pve.targets();
        let Some(stock) = facts
            .template
            .as_deref()
            .and_then(|v| pve_image::stock_name(&t.template_storage, v))
            .map(str::to_string)
        else {
            eprintln!(
                "paygress-cli: bootstrap: the template {:?} is not a file on storage {}",
                facts.template, t.template_storage
            );
            return exit::PROVIDER;
        };
        let image = [pve_image::image_step(&t, &stock)];
        match steps::run("bootstrap (proxmox)", remote, &image).await {
            Ok(done) => unchanged &= done.iter().all(|(_, o)| *o == steps::Outcome::Unchanged),
            Err(e) => {
                eprintln!("paygress-cli: bootstrap: {e}; fix it and run bootstrap again (the steps done are kept)");
                return exit::PROVIDER;
            }
        }
        facts.template = Some(pve_image::image_volid(&t, &stock));
        let mut s = s.clone();
        s.proxmox = match a.pve.settings(Some(&facts)) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("paygress-cli: {e}");
                return exit::USAGE;
            }
        };
        toml = match s.to_toml() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("paygress-cli: bootstrap: {e}");
                return exit::USAGE;
            }
        };
    }
    let list = plan::bootstrap_steps(a.backend, &bridges(a), &toml, binary, sha256);
    match steps::run_after("bootstrap", remote, &list, restart).await {
        Ok(done) => unchanged &= done.iter().all(|(_, o)| *o == steps::Outcome::Unchanged),
        Err(e) => {
            eprintln!("paygress-cli: bootstrap: {e}; fix it and run bootstrap again (the steps done are kept)");
            return exit::PROVIDER;
        }
    }
    // Nothing changed, so the service was not restarted: the running one already serves this
    // config, and any offer it published since it started counts (not only one after this run
    // began, which would mean waiting up to a heartbeat for its next republication).
    let since = match unchanged {
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

/// Run the read-only Proxmox preflight: the host's facts, or why it is refused (nothing changed).
async fn pve_facts(
    remote: &Remote,
    input: &str,
    node: Option<&str>,
) -> Result<pve::Facts, (i32, String)> {
    let o = remote
        .root(pve::PREFLIGHT, input.as_bytes(), Duration::from_secs(120))
        .await
        .map_err(|e| (exit::PROVIDER, e.to_string()))?;
    match o.code {
        Some(0) => pve::parse_facts(&o.stdout, node).map_err(|e| (exit::PROVIDER, e.to_string())),
        Some(3) => Err((
            exit::USAGE,
            pve::PveHostError::NotPve(steps::tail(&o)).to_string(),
        )),
        _ => Err((
            exit::PROVIDER,
            format!("the Proxmox preflight failed: {}", steps::tail(&o)),
        )),
    }
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
    let wanted = a.backend.as_str();
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
