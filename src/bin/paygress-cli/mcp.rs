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
    let service = match BuyerDoor::new(agent).serve(rmcp::transport::stdio()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("paygress-cli: MCP session did not start: {e}");
            return exit::PROVIDER;
        }
    };
    let _ = service.waiting().await;
    0
}
