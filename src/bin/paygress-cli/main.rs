//! `paygress-cli`: the buyer's and the operator's command line.
//!
//! One file per command group: `market` (buy over Nostr), `server` (`spawn|topup|status
//! --server URL`: buy over one provider's HTTP door), `identity` (the buyer's Nostr key),
//! `provider` (run a provider's doors), `wallet` (the buyer wallet, and the provider's
//! earnings with `--config`), `mcp` (the buyer's MCP server), `demo` (the whole
//! flow against the demo server). Exit codes are shared
//! with the server: 0 success, 2 usage (including a request the provider found malformed), 3
//! payment, 4 provider (including no answer).

mod bootstrap;
mod buyer_wallet;
mod demo;
mod identity;
mod market;
mod mcp;
mod provider;
mod server;
mod status;
mod system;
mod wallet;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use paygress::app;

/// Buy SSH-ready compute for Cashu ecash over Nostr, or run and manage a Paygress provider.
///
/// Buyers: `market list` finds live providers, `market spawn` pays and returns an ssh command,
/// `market topup` adds time, `market status` shows a pod. `spawn|topup|status --server URL`
/// do the same with one provider's HTTP door. Requests are NIP-17 private messages;
/// your Nostr identity is created once in ~/.paygress/identity (see `identity`).
///
/// Buyer wallet: `wallet fund` (Lightning), `wallet receive`, `wallet send`, `wallet balance`,
/// `wallet history`, in ~/.paygress/wallet; `market spawn|topup --amount|--duration` pay from it.
///
/// Providers: `provider start` runs the doors the config enables (Nostr, HTTP); `wallet balance
/// --config FILE` and `wallet withdraw --config FILE` are the provider's earnings; `bootstrap`
/// makes a machine a provider over SSH, `system reset` undoes it.
#[derive(Debug, Parser)]
#[command(name = "paygress-cli", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Find providers and buy, top up or check pods over Nostr.
    Market {
        #[command(subcommand)]
        command: Box<market::MarketCommand>,
    },
    /// Your buyer identity (a Nostr key in ~/.paygress/identity).
    Identity {
        #[command(subcommand)]
        command: identity::IdentityCommand,
    },
    /// Run a provider.
    Provider {
        #[command(subcommand)]
        command: provider::ProviderCommand,
    },
    /// Pay with a Cashu token and get an SSH-ready pod from one provider's HTTP door
    /// (`--server URL`), following its 402 payment request.
    Spawn(server::SpawnArgs),
    /// Add paid time to a pod over a provider's HTTP door (`--server URL`).
    Topup(server::TopupArgs),
    /// Show a pod's state over a provider's HTTP door (`--server URL`); login details with
    /// the owner token the spawn printed.
    Status(server::StatusArgs),
    /// The buyer's MCP server on stdio for your AI assistant: finds providers, buys, runs
    /// commands, pays from the buyer wallet within the caps of the buyer config.
    Mcp(mcp::McpArgs),
    /// Make a Debian/Ubuntu machine a provider over SSH: backend, binary, config, Nostr
    /// identity, a hardened systemd service; waits until its offer is on the relays.
    /// Idempotent: a rerun changes nothing and says so.
    Bootstrap(Box<bootstrap::BootstrapArgs>),
    /// Manage a bootstrapped host (`system reset`: remove Paygress from it).
    System {
        #[command(subcommand)]
        command: Box<system::SystemCommand>,
    },
    /// Walk through buying a pod in demo mode (test tokens), printed or run (--run).
    Demo(demo::DemoArgs),
    /// The buyer wallet (~/.paygress/wallet: fund, receive, send, balance, history), or with
    /// --config the provider's earnings (balance, withdraw).
    Wallet {
        #[command(subcommand)]
        command: wallet::WalletCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();

    app::init_logging();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paygress-cli: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = rt.block_on(async {
        match cli.command {
            Command::Market { command } => market::run(*command).await,
            Command::Identity { command } => identity::run(command),
            Command::Provider { command } => provider::run(command).await,
            Command::Spawn(a) => server::spawn(a).await,
            Command::Topup(a) => server::topup(a).await,
            Command::Status(a) => server::status(a).await,
            Command::Bootstrap(a) => bootstrap::run(*a).await,
            Command::System { command } => system::run(*command).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Mcp(args) => mcp::run(args).await,
            Command::Wallet { command } => wallet::run(command).await,
        }
    });
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
