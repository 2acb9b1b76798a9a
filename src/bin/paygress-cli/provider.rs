//! `paygress-cli provider start`: run a provider's doors until interrupted.
//!
//! The doors are the ones the config enables: on its relays the marketplace (offer, heartbeat,
//! private requests) and ContextVM; the HTTP door when `http.listen` is set. stdio MCP is `paygress-mcp-server`'s job, since it owns
//! standard input.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use paygress::app::{self, exit};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Open every door the config enables (nostr.marketplace, nostr.contextvm on nostr.relays;
    /// the HTTP door on http.listen or PAYGRESS_HTTP) and serve until Ctrl-C or SIGTERM.
    Start {
        /// Provider configuration (TOML). Also PAYGRESS_CONFIG.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Also run an embedded relay on ADDR (e.g. 127.0.0.1:7777) and serve on it.
        #[arg(long, value_name = "ADDR")]
        embedded_relay: Option<SocketAddr>,
    },
    /// Print the provider's npub, creating its Nostr key (0600, in the data dir as the config
    /// names it) when there is none yet. The secret is never printed.
    Identity {
        /// Provider configuration (TOML). Also PAYGRESS_CONFIG.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// What the provider is doing: doors open, relays connected, last heartbeat accepted, live
    /// workloads, earnings per mint; here (--config) or on a bootstrapped host (--host).
    Status(crate::status::StatusArgs),
    /// Remove every workload this provider made on its backend (only those carrying its own
    /// marks), with the provider stopped. `system reset` runs it on the host.
    RemoveWorkloads {
        /// Provider configuration (TOML). Also PAYGRESS_CONFIG.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Remove nothing: exit 0 when none is left, 1 when some are (printing how many).
        #[arg(long)]
        check: bool,
    },
}

pub async fn run(cmd: ProviderCommand) -> i32 {
    match cmd {
        ProviderCommand::Start {
            config,
            embedded_relay,
        } => start(config, embedded_relay).await,
        ProviderCommand::Identity { config } => identity(config),
        ProviderCommand::Status(a) => crate::status::run(a).await,
        ProviderCommand::RemoveWorkloads { config, check } => remove_workloads(config, check).await,
    }
}

fn identity(config: Option<PathBuf>) -> i32 {
    let cfg = match app::load_config(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("paygress-cli: {e}");
            return exit::USAGE;
        }
    };
    let keys = match &cfg.nostr.private_key {
        Some(k) => paygress::identity::parse_secret_key(k, "NOSTR_PRIVATE_KEY"),
        None => {
            let file = cfg
                .nostr
                .private_key_file
                .clone()
                .unwrap_or_else(|| "nostr.key".into());
            paygress::identity::load_or_create(&cfg.data_path(file))
        }
    };
    match keys {
        Ok(k) => {
            println!("{}", paygress::identity::npub(&k));
            0
        }
        Err(e) => {
            eprintln!("paygress-cli: {e}");
            exit::PROVIDER
        }
    }
}

async fn remove_workloads(config: Option<PathBuf>, check: bool) -> i32 {
    let cfg = match app::load_config(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("paygress-cli: {e}");
            return exit::USAGE;
        }
    };
    match app::own_workloads(&cfg, !check).await {
        Ok(n) if check => {
            println!("{n} workloads of this provider");
            i32::from(n > 0)
        }
        Ok(n) => {
            println!("removed {n} workloads");
            0
        }
        Err(e) => {
            eprintln!("paygress-cli: {e}");
            exit::PROVIDER
        }
    }
}

async fn start(config: Option<PathBuf>, embedded_relay: Option<SocketAddr>) -> i32 {
    let mut cfg = match app::load_config(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("paygress-cli: {e}");
            return exit::USAGE;
        }
    };
    let _relay = match app::start_embedded_relay(&mut cfg, embedded_relay).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("paygress-cli: {e}");
            return exit::USAGE;
        }
    };
    let nostr_doors = cfg.nostr.marketplace || cfg.nostr.contextvm;
    if nostr_doors && cfg.nostr.relays.is_empty() {
        eprintln!("paygress-cli: provider start needs relays: set nostr.relays (or NOSTR_RELAYS), or pass --embedded-relay");
        return exit::USAGE;
    }
    if !nostr_doors && cfg.http.listen.is_none() {
        eprintln!(
            "paygress-cli: no door enabled: set nostr.marketplace, nostr.contextvm or http.listen"
        );
        return exit::USAGE;
    }
    let provider = match app::open_provider(cfg).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("paygress-cli: {e}");
            return exit::PROVIDER;
        }
    };
    let shutdown = CancellationToken::new();
    let reaper = provider.start_reaper(shutdown.clone());
    let cfg = provider.config().clone();
    paygress::status::init(
        &cfg.provider.data_dir,
        &provider.npub(),
        cfg.nostr.heartbeat_seconds,
    );
    let mut tasks = Vec::new();
    if cfg.nostr.marketplace {
        let heartbeat = Duration::from_secs(cfg.nostr.heartbeat_seconds);
        tasks.push(tokio::spawn({
            let (p, r, s) = (provider.clone(), cfg.nostr.relays.clone(), shutdown.clone());
            async move {
                paygress::doors::nostr_dm::run(p, r, heartbeat, s)
                    .await
                    .map_err(|e| e.to_string())
            }
        }));
        eprintln!(
            "paygress: marketplace: offer from {} on {} (heartbeat {} s)",
            provider.npub(),
            cfg.nostr.relays.join(", "),
            cfg.nostr.heartbeat_seconds
        );
    }
    if cfg.nostr.contextvm {
        match app::start_contextvm(&provider, &[], shutdown.clone()).await {
            Ok(t) => tasks.push(tokio::spawn(async move {
                paygress::status::door_open("contextvm");
                match t.await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            })),
            Err(e) => {
                eprintln!("paygress-cli: {e}");
                shutdown.cancel();
                return exit::PROVIDER;
            }
        }
    }
    if let Some(addr) = cfg.http.listen {
        let mut doors = Vec::new();
        if cfg.nostr.marketplace {
            doors.push("marketplace".to_string());
        }
        if cfg.nostr.contextvm {
            doors.push("contextvm".to_string());
        }
        let opts = paygress::doors::http::HttpOptions {
            section: cfg.http.clone(),
            other_doors: doors,
            extra_tools: Vec::new(),
        };
        match paygress::doors::http::start(provider.clone(), addr, opts, shutdown.clone()).await {
            Ok((bound, task)) => {
                eprintln!("paygress: HTTP door at http://{bound}");
                paygress::status::door_open(format!("http {bound}"));
                tasks.push(tokio::spawn(async move {
                    task.await.map_err(|e| e.to_string())
                }));
            }
            Err(e) => {
                eprintln!("paygress-cli: {e}");
                shutdown.cancel();
                return exit::USAGE;
            }
        }
    }
    eprintln!("paygress: provider running; Ctrl-C to stop");
    let mut code = 0;
    let first_end = futures::future::select_all(tasks.iter_mut());
    tokio::select! {
        _ = app::interrupted() => {}
        (r, _, _) = first_end => {
            if let Ok(Err(e)) = r {
                eprintln!("paygress-cli: {e}");
                code = exit::PROVIDER;
            }
        }
    }
    shutdown.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let _ = reaper.await;
    paygress::status::stopped();
    code
}
