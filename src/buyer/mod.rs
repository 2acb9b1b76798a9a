//! The buyer's side: what an agent's owner runs on their own machine to buy compute.
//!
//! The provider's code (core, doors, backends) never depends on this module and this module
//! never reaches into the provider's core: it talks to providers only through the marketplace's
//! wire contract ([`crate::market`]), exactly as a stranger's client would.
//!
//! - [`wallet`]: the buyer wallet (cdk, persistent in `~/.paygress/wallet`), funded over
//!   Lightning (NUT-04 mint quote) or by a token.
//! - [`journal`]: the owner's record of every fund, receive, send, spend and refund; the spending
//!   caps are counted from it.
//! - [`caps`]: the buyer config (relays, spending caps), read from a file only, so an agent's
//!   prompt can never raise a cap.
//! - [`purchase`]: pay a provider from the wallet and take any refund straight back.
//! - [`ssh`]: the agent's kept SSH key, pinned host keys, commands over russh's client.
//! - [`agent`]: what the buyer's MCP tools do, [`tools`]: their arguments, results and errors;
//!   [`mcp`]: the thin MCP door over them (`paygress-cli mcp`).

pub mod agent;
pub mod caps;
pub mod journal;
pub mod mcp;
pub mod purchase;
pub mod ssh;
pub mod tools;
pub mod wallet;

use std::path::PathBuf;

/// `$HOME/.paygress`, where the buyer's identity, wallet and keys live.
pub fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".paygress"))
}

/// Create `dir` (and parents) and make it 0700.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
