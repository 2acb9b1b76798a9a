//! `paygress-mcp-server`: the provider's MCP tool server (stdio; ContextVM over Nostr).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use paygress::app::{self, exit};
use paygress::doors::mcp::McpDoor;
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// MCP over standard input/output (for AI assistants and inspectors).
    Stdio,
}

/// Sell SSH-ready compute for Cashu ecash, as MCP tools: get_offers, spawn_pod, topup_pod,
/// get_pod_status.
///
/// Logs go to stderr; stdout carries the MCP protocol.
#[derive(Debug, Parser)]
#[command(name = "paygress-mcp-server", version, about, long_about)]
struct Args {
    /// Provider configuration (TOML). Also PAYGRESS_CONFIG.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// How clients reach the server.
    #[arg(long, value_enum, default_value = "stdio")]
    transport: Transport,
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
    let cfg = match app::load_config(args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("paygress-mcp-server: {e}");
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    let provider = match app::open_provider(cfg).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("paygress-mcp-server: {e}");
            return ExitCode::from(exit::PROVIDER as u8);
        }
    };
    let shutdown = CancellationToken::new();
    let reaper = provider.start_reaper(shutdown.clone());
    tracing::info!(npub = %provider.npub(), backend = %provider.backend().kind(), "serving MCP");
    let code = match args.transport {
        Transport::Stdio => {
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
            ExitCode::SUCCESS
        }
    };
    shutdown.cancel();
    let _ = reaper.await;
    code
}
