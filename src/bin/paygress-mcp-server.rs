//! `paygress-mcp-server`: the provider's MCP tool server (stdio; ContextVM over Nostr).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use paygress::app::{self, exit};
use paygress::doors::contextvm;
use paygress::doors::mcp::McpDoor;
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// MCP over standard input/output (for AI assistants and inspectors).
    Stdio,
    /// MCP over Nostr relays (ContextVM), with the provider's Nostr key.
    Contextvm,
    /// Both at once; the server keeps serving ContextVM after stdin closes.
    Both,
}

/// Sell SSH-ready compute for Cashu ecash, as MCP tools: get_offers, spawn_pod, topup_pod,
/// get_pod_status.
///
/// Logs go to stderr; in stdio mode stdout carries the MCP protocol. ContextVM mode serves the
/// same tools over the relays in `nostr.relays`, answering as the provider's Nostr key; it runs
/// until interrupted (Ctrl-C or SIGTERM).
#[derive(Debug, Parser)]
#[command(name = "paygress-mcp-server", version, about, long_about)]
struct Args {
    /// Provider configuration (TOML). Also PAYGRESS_CONFIG.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// How clients reach the server.
    #[arg(long, value_enum, default_value = "stdio")]
    transport: Transport,
    /// Run an embedded Nostr relay on ADDR (e.g. 127.0.0.1:7777; port 0 picks one) and serve
    /// ContextVM on it too. Overrides nostr.embedded_relay.
    #[arg(long, value_name = "ADDR")]
    embedded_relay: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    app::init_logging();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paygress-mcp-server: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let mut cfg = match app::load_config(args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("paygress-mcp-server: {e}");
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    let nostr = args.transport != Transport::Stdio;
    // The embedded relay lives as long as this function.
    let _relay = match app::start_embedded_relay(&mut cfg, args.embedded_relay).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("paygress-mcp-server: {e}");
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    if nostr && cfg.nostr.relays.is_empty() {
        eprintln!(
            "paygress-mcp-server: {}",
            contextvm::ContextVmError::NoRelays
        );
        return ExitCode::from(exit::USAGE as u8);
    }
    let provider = match app::open_provider(cfg).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("paygress-mcp-server: {e}");
            return ExitCode::from(exit::PROVIDER as u8);
        }
    };
    let shutdown = CancellationToken::new();
    let reaper = provider.start_reaper(shutdown.clone());
    tracing::info!(npub = %provider.npub(), backend = %provider.backend().kind(), "provider open");

    let mut contextvm_task = None;
    if nostr {
        match app::start_contextvm(&provider, shutdown.clone()).await {
            Ok(t) => contextvm_task = Some(t),
            Err(e) => {
                eprintln!("paygress-mcp-server: {e}");
                shutdown.cancel();
                let _ = reaper.await;
                return ExitCode::from(exit::PROVIDER as u8);
            }
        }
    }

    let mut code = ExitCode::SUCCESS;
    if args.transport != Transport::Contextvm {
        let door = McpDoor::local(provider.clone());
        paygress::doors::stdio::serve_filtered(
            tokio::io::stdin(),
            tokio::io::stdout(),
            |r, w| async move {
                match door.serve((r, w)).await {
                    Ok(service) => {
                        let _ = service.waiting().await;
                    }
                    Err(e) => tracing::error!("MCP session ended during initialisation: {e}"),
                }
            },
        )
        .await;
    }
    if let Some(task) = contextvm_task {
        tokio::select! {
            _ = app::interrupted() => {}
            r = &mut Box::pin(task) => {
                if let Ok(Err(e)) = r {
                    eprintln!("paygress-mcp-server: {e}");
                    code = ExitCode::from(exit::PROVIDER as u8);
                }
            }
        }
    }
    shutdown.cancel();
    let _ = reaper.await;
    code
}
