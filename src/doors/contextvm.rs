//! The ContextVM door: the same MCP tools, carried over Nostr relays.
//!
//! ContextVM puts MCP JSON-RPC into Nostr events (kind 25910, or NIP-44/NIP-59 gift wraps 1059 /
//! 21059 when encrypted). We do not speak that protocol ourselves: the ContextVM project's
//! `contextvm-sdk` provides a transport for rmcp, and the handler is the very [`McpDoor`] the
//! stdio door serves. What this file adds is the policy a provider needs:
//! - The caller is the client's Nostr pubkey, which the SDK injects into every request; it
//!   becomes the workload owner, so only the key that paid sees the login details.
//! - Relays are only the configured ones: the SDK's public bootstrap relays are replaced by the
//!   configured list, so a provider on a private relay never leaks events elsewhere.
//! - Announcements (CEP-6) and the relay list are published only when the config asks.

use std::sync::Arc;

use contextvm_sdk::transport::server::{
    ClientPubkey, NostrServerTransport, NostrServerTransportConfig,
};
use contextvm_sdk::{EncryptionMode, GiftWrapMode, ServerInfo};
use tokio_util::sync::CancellationToken;

use super::mcp::{Identify, McpDoor};
use crate::config::Encryption;
use crate::provider::{Caller, Provider};

/// What the ContextVM door needs beyond the provider.
#[derive(Debug, Clone)]
pub struct ContextVmOptions {
    /// Relay URLs; never empty.
    pub relays: Vec<String>,
    pub encryption: Encryption,
    /// Publish the CEP-6 announcement and the relay list (on `relays` only).
    pub announce: bool,
}

impl ContextVmOptions {
    /// The options the provider's config names.
    pub fn from_config(cfg: &crate::config::Config) -> ContextVmOptions {
        ContextVmOptions {
            relays: cfg.nostr.relays.clone(),
            encryption: cfg.nostr.encryption,
            announce: cfg.nostr.announce,
        }
    }
}

/// Why the door could not start.
#[derive(Debug, thiserror::Error)]
pub enum ContextVmError {
    #[error("ContextVM needs at least one relay: set nostr.relays (or NOSTR_RELAYS), or nostr.embedded_relay")]
    NoRelays,
    #[error("ContextVM transport: {0}")]
    Transport(String),
}

/// Who is calling: the client pubkey the ContextVM transport attached to the request. A request
/// without one (the SDK's own synthesised messages) owns nothing.
pub fn identify_by_client_pubkey() -> Identify {
    Arc::new(|ctx| match ctx.extensions.get::<ClientPubkey>() {
        Some(pk) => Caller::Nostr(pk.0.to_ascii_lowercase()),
        None => Caller::Anonymous,
    })
}

/// Who is calling through a ContextVM gateway that runs this server over stdio: the
/// `_meta.clientPubkey` the gateway writes into each request (`@contextvm/sdk`'s gateway with
/// `injectClientPubkey`, which overwrites any value the client sent). A request without a valid
/// one is anonymous. Only for such a gateway: behind one that does not inject, a client could
/// name any key and read another buyer's login details.
pub fn identify_by_gateway_meta() -> Identify {
    Arc::new(|ctx| {
        match ctx
            .meta
            .get("clientPubkey")
            .and_then(|v| v.as_str())
            .and_then(|s| nostr_sdk::PublicKey::from_hex(s).ok())
        {
            Some(pk) => Caller::Nostr(pk.to_hex()),
            None => Caller::Anonymous,
        }
    })
}

/// A caller nobody can name: for a gateway that does not say who calls. Spawns still return
/// their login details; `get_pod_status` shows them to no one.
pub fn identify_as_anonymous() -> Identify {
    Arc::new(|_| Caller::Anonymous)
}

/// Build the transport for `provider`'s Nostr key on the configured relays.
pub async fn transport(
    provider: &Provider,
    opts: &ContextVmOptions,
) -> Result<NostrServerTransport, ContextVmError> {
    if opts.relays.is_empty() {
        return Err(ContextVmError::NoRelays);
    }
    let info = &provider.config().provider;
    let config = NostrServerTransportConfig::default()
        .with_relay_urls(opts.relays.clone())
        .with_bootstrap_relay_urls(opts.relays.clone())
        .with_relay_list_urls(opts.relays.clone())
        .with_publish_relay_list(opts.announce)
        .with_announced_server(opts.announce)
        .with_encryption_mode(match opts.encryption {
            Encryption::Optional => EncryptionMode::Optional,
            Encryption::Required => EncryptionMode::Required,
            Encryption::Disabled => EncryptionMode::Disabled,
        })
        .with_gift_wrap_mode(GiftWrapMode::Optional)
        .with_server_info(
            ServerInfo::default()
                .with_name(format!("Paygress: {}", info.name))
                .with_version(env!("CARGO_PKG_VERSION"))
                .with_about(format!(
                    "Pay-per-second SSH compute for Cashu ecash ({}, {})",
                    info.location,
                    provider.backend().kind()
                )),
        );
    NostrServerTransport::new(provider.keys().clone(), config)
        .await
        .map_err(|e| ContextVmError::Transport(e.to_string()))
}

/// Serve `door` (which should identify callers with [`identify_by_client_pubkey`]) over
/// ContextVM until `shutdown` fires or the transport ends.
///
/// The SDK carries every client through one rmcp session, and rmcp's handshake would take the
/// first message the server ever reads, from whichever client, as the session's `initialize`:
/// a notification, a response or a malformed `initialize` there ended the session, and with it
/// the door for every client. So the session starts without the handshake; each client's own
/// `initialize` is answered as an ordinary request (the SDK supplies one for clients that skip
/// it), and anything else is answered or ignored as MCP says, per message.
///
/// The SDK also sends every server notification to all initialised clients, not to the one
/// whose request it belongs to, so the door sends none ([`McpDoor::without_progress`]): one
/// buyer's spawn progress would otherwise reach every connected client.
pub async fn serve(
    door: McpDoor,
    transport: NostrServerTransport,
    shutdown: CancellationToken,
) -> Result<(), ContextVmError> {
    let service = rmcp::service::serve_directly(door.without_progress(), transport, None);
    let cancel = service.cancellation_token();
    tokio::select! {
        _ = shutdown.cancelled() => {
            cancel.cancel();
        }
        r = service.waiting() => {
            if let Err(e) = r {
                return Err(ContextVmError::Transport(e.to_string()));
            }
        }
    }
    Ok(())
}

/// Reach our own server through the relays: an MCP `initialize` from a throwaway key,
/// retried until `within` runs out. Plaintext requests are ephemeral events that a relay does
/// not keep, so a request sent before the server has subscribed is lost; this is how the
/// binary knows it is really reachable before it says so, and how tests wait for readiness.
pub async fn self_check(
    server: nostr_sdk::PublicKey,
    opts: &ContextVmOptions,
    within: std::time::Duration,
) -> Result<(), ContextVmError> {
    use contextvm_sdk::transport::client::{NostrClientTransport, NostrClientTransportConfig};
    let deadline = tokio::time::Instant::now() + within;
    let mode = match opts.encryption {
        Encryption::Disabled => EncryptionMode::Disabled,
        _ => EncryptionMode::Required,
    };
    let mut last = String::from("no answer");
    while tokio::time::Instant::now() < deadline {
        let config = NostrClientTransportConfig::default()
            .with_relay_urls(opts.relays.clone())
            .with_discovery_relay_urls(opts.relays.clone())
            .with_server_pubkey(server.to_hex())
            .with_encryption_mode(mode);
        let attempt = async {
            let t = NostrClientTransport::new(nostr_sdk::Keys::generate(), config)
                .await
                .map_err(|e| e.to_string())?;
            let client = rmcp::ServiceExt::serve((), t)
                .await
                .map_err(|e| e.to_string())?;
            let _ = client.cancel().await;
            Ok::<(), String>(())
        };
        match tokio::time::timeout(std::time::Duration::from_secs(2), attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => {
                last = e;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(_) => last = "no answer within 2 s".into(),
        }
    }
    Err(ContextVmError::Transport(format!(
        "the server did not answer its own initialize through the relays: {last}"
    )))
}
