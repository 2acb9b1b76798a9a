//! Start-up shared by the binaries: find the config, set up logging, build the backend, open the
//! provider. Kept here so every binary starts the same way and reports the same errors.

use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::{self, Backend};
use crate::config::{Config, ConfigError};
use crate::provider::Provider;

/// Why start-up failed; each maps to a clear message and an exit code.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("no configuration: pass --config FILE or set PAYGRESS_CONFIG (an example is provider/paygress.example.toml)")]
    NoConfig,
    #[error("backend: {0}")]
    Backend(String),
    #[error("{0}")]
    Provider(crate::error::ProviderError),
}

/// Log to stderr (stdout may be a protocol stream). `PAYGRESS_LOG` (or `RUST_LOG`) sets the
/// filter; the default keeps dependencies quiet.
pub fn init_logging() {
    let filter = std::env::var("PAYGRESS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| {
            "info,cdk=warn,cdk_common=warn,cdk_sql_common=warn,rmcp=warn,nostr=warn".into()
        });
    init_logging_to(&filter, std::io::stderr);
}

/// Crates that carry protocol messages and print their bodies at debug and trace level: MCP
/// arguments (Cashu tokens, passwords) and plaintext Nostr events. They are held at `info`
/// whatever the filter says, so no log level can put a secret in the logs.
const WIRE_CRATES: &[&str] = &[
    "rmcp",
    "contextvm_sdk",
    "nostr",
    "nostr_sdk",
    "nostr_relay_pool",
    "nostr_relay_builder",
    "nostr_database",
    "tungstenite",
    "tokio_tungstenite",
    "async_wsocket",
];

/// Modules that print whole messages even at error level: contextvm-sdk's rmcp conversion logs
/// the payload it could not convert (a client's message of the wrong shape, tokens and all).
/// They are not logged at all; the SDK's worker still warns that a message was dropped.
const BODY_AT_ANY_LEVEL: &[&str] = &["contextvm_sdk::rmcp_transport::convert"];

fn is_under(target: &str, module: &str) -> bool {
    target
        .strip_prefix(module)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

fn is_wire_target(target: &str) -> bool {
    WIRE_CRATES.iter().any(|c| is_under(target, c))
}

/// Whether an event may be logged at all, whatever the filter.
fn may_log(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    if BODY_AT_ANY_LEVEL.iter().any(|m| is_under(target, m)) {
        return false;
    }
    *meta.level() <= tracing::Level::INFO || !is_wire_target(target)
}

/// Install the logger with an explicit filter and writer (tests use this to capture output).
pub fn init_logging_to<W>(filter: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let cap = tracing_subscriber::filter::filter_fn(may_log);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .with_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_filter(cap);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// The config path from the flag or `PAYGRESS_CONFIG`.
pub fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("PAYGRESS_CONFIG").map(PathBuf::from))
}

/// Load the config named by the flag or environment.
pub fn load_config(flag: Option<PathBuf>) -> Result<Config, StartError> {
    let path = config_path(flag).ok_or(StartError::NoConfig)?;
    let mut cfg = Config::load(&path)?;
    // The config file is the provider's: a sandbox covers it inside every workload.
    cfg.backend.sandbox.hide.push(path);
    Ok(cfg)
}

/// Open the provider on the backend its config names, with the reaper running.
pub async fn open_provider(cfg: Config) -> Result<Arc<Provider>, StartError> {
    // The lock first: a second process must not touch the backend's state either.
    let dir_lock = Provider::lock_data_dir(&cfg).map_err(StartError::Provider)?;
    let backend: Arc<dyn Backend> = backend::from_config(&cfg)
        .await
        .map_err(StartError::Backend)?;
    let provider = Provider::open_locked(cfg, backend, dir_lock)
        .await
        .map_err(StartError::Provider)?;
    Ok(provider)
}

/// Remove every workload the provider of `cfg` made on its backend, with the provider stopped
/// (the data directory's lock is taken). Only workloads carrying this provider's id are listed
/// by the backend, so nothing else on the host is touched. Returns how many were removed.
pub async fn remove_own_workloads(cfg: &Config) -> Result<usize, StartError> {
    own_workloads(cfg, true).await
}

/// How many workloads carrying this provider's marks the backend has (`destroy`: remove them
/// too, and say how many were removed).
pub async fn own_workloads(cfg: &Config, destroy: bool) -> Result<usize, StartError> {
    let _lock = Provider::lock_data_dir(cfg).map_err(StartError::Provider)?;
    let store = crate::store::Store::open(&cfg.data_path("paygress.sqlite3"))
        .map_err(|e| StartError::Provider(e.into()))?;
    // A provider that never started made nothing (and gets no id here: its first start does).
    let Some(provider_id) = store
        .meta("provider_id")
        .map_err(|e| StartError::Provider(e.into()))?
    else {
        return Ok(0);
    };
    let backend = backend::from_config(cfg)
        .await
        .map_err(StartError::Backend)?;
    let owned = backend
        .list(&provider_id)
        .await
        .map_err(|e| StartError::Backend(e.to_string()))?;
    for w in owned.iter().filter(|_| destroy) {
        backend
            .destroy(&w.name)
            .await
            .map_err(|e| StartError::Backend(format!("{}: {e}", w.name)))?;
    }
    Ok(owned.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn wire_crates_are_matched_by_crate_not_by_prefix() {
        assert!(super::is_wire_target("rmcp"));
        assert!(super::is_wire_target("rmcp::service"));
        assert!(super::is_wire_target("nostr_relay_pool::relay::inner"));
        assert!(!super::is_wire_target("nostrich"));
        assert!(!super::is_wire_target("paygress::provider"));
    }
}

/// Start the embedded relay when the flag or `nostr.embedded_relay` asks for one, and put its
/// URL first in `nostr.relays`. The relay runs as long as the returned value lives.
pub async fn start_embedded_relay(
    cfg: &mut Config,
    flag: Option<std::net::SocketAddr>,
) -> Result<Option<crate::relay::EmbeddedRelay>, String> {
    let Some(addr) = flag.or(cfg.nostr.embedded_relay) else {
        return Ok(None);
    };
    let relay = crate::relay::EmbeddedRelay::start(addr)
        .await
        .map_err(|e| format!("cannot start the embedded relay on {addr}: {e}"))?;
    eprintln!("paygress: embedded relay at {}", relay.url());
    cfg.nostr.relays.insert(0, relay.url());
    Ok(Some(relay))
}

/// Serve the MCP tools over ContextVM on the configured relays until `shutdown`; returns once
/// the server has answered its own request through the relays (or failed to within 20 s, which
/// is reported and not fatal) and has printed its npub and relays.
pub async fn start_contextvm(
    provider: &Arc<Provider>,
    extra_tools: &[Arc<dyn crate::doors::mcp::ExtraTool>],
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<(), crate::doors::contextvm::ContextVmError>>, String> {
    use crate::doors::contextvm::{self, ContextVmOptions};
    let opts = ContextVmOptions::from_config(provider.config());
    let transport = contextvm::transport(provider, &opts)
        .await
        .map_err(|e| e.to_string())?;
    let mut door = crate::doors::mcp::McpDoor::local(provider.clone())
        .identified_by(contextvm::identify_by_client_pubkey());
    for t in extra_tools {
        door = door.with_extra_tool(t.clone());
    }
    let task = tokio::spawn(contextvm::serve(door, transport, shutdown));
    let pk = provider.keys().public_key();
    if let Err(e) = contextvm::self_check(pk, &opts, std::time::Duration::from_secs(20)).await {
        eprintln!("paygress: warning: {e}; serving anyway");
    }
    let encryption = match opts.encryption {
        crate::config::Encryption::Optional => "optional",
        crate::config::Encryption::Required => "required",
        crate::config::Encryption::Disabled => "disabled",
    };
    eprintln!(
        "paygress: ContextVM server {} on {} (encryption {encryption}{})",
        provider.npub(),
        opts.relays.join(", "),
        if opts.announce { ", announced" } else { "" }
    );
    Ok(task)
}

/// Ctrl-C or SIGTERM.
pub async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Exit codes shared by the binaries.
pub mod exit {
    /// Bad command line or configuration.
    pub const USAGE: i32 = 2;
    /// A payment problem (token refused, mint unreachable, insufficient value).
    pub const PAYMENT: i32 = 3;
    /// The provider or backend failed, or did not answer.
    pub const PROVIDER: i32 = 4;

    /// The exit code for an error the provider returned.
    pub fn for_error(t: crate::error::ErrorType) -> i32 {
        use crate::error::ErrorType::*;
        match t {
            InvalidRequest | InvalidSpec | PodNotFound => USAGE,
            InvalidToken | MintNotAllowed | TokenAlreadySpent | InsufficientPayment
            | PaymentFailed => PAYMENT,
            ResourceUnavailable | PodCreationFailed | InternalError => PROVIDER,
        }
    }
}
