//! `paygress-cli mcp`: the buyer's MCP server on stdio, for the owner's own AI assistant
//! ([`paygress::buyer::mcp`]). Spending caps come from the buyer config file only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use paygress::app::exit;
use paygress::buyer::agent::Agent;
use paygress::buyer::caps::BuyerConfig;
use paygress::buyer::mcp::BuyerDoor;
use rmcp::ServiceExt;

#[derive(Debug, Args)]
pub struct McpArgs {
    /// Relay URL (repeat for several; added to the config's `relays`). Also NOSTR_RELAYS.
    #[arg(
        long = "relay",
        value_name = "URL",
        env = "NOSTR_RELAYS",
        value_delimiter = ','
    )]
    relays: Vec<String>,
    /// Buyer config (TOML: relays, mint, [caps]); default ~/.paygress/buyer.toml. This is not
    /// a provider config.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Seconds to wait for a provider's answer.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    timeout: u64,
}

pub async fn run(a: McpArgs) -> i32 {
    crate::buyer_wallet::umask_private();
    let (path, must) = match a.config {
        Some(p) => (p, true),
        None => match BuyerConfig::default_path() {
            Some(p) => (p, false),
            None => {
                eprintln!("paygress-cli: HOME is not set");
                return exit::USAGE;
            }
        },
    };
    let mut config = match BuyerConfig::load(&path, must) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("paygress-cli: {e}");
            return exit::USAGE;
        }
    };
    for r in a.relays {
        if !config.relays.contains(&r) {
            config.relays.push(r);
        }
    }
    if config.relays.is_empty() {
        eprintln!("paygress-cli: no relays: pass --relay URL or set `relays` in the buyer config");
        return exit::USAGE;
    }
    let agent = match Agent::open(config, Duration::from_secs(a.timeout)).await {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("paygress-cli: {}", e.message);
            return exit::PROVIDER;
        }
    };
    // The same stdio framing as the provider's server: bad lines do not end the session, and
    // every MCP revision (the `initialize` handshake and 2026-07-28 `server/discover`) works.
    let door = BuyerDoor::new(agent);
    let info = rmcp::ServerHandler::get_info(&door);
    paygress::doors::stdio::serve_filtered(
        tokio::io::stdin(),
        tokio::io::stdout(),
        &info,
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
    0
}
