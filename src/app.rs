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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// The config path from the flag or `PAYGRESS_CONFIG`.
pub fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("PAYGRESS_CONFIG").map(PathBuf::from))
}

/// Load the config named by the flag or environment.
pub fn load_config(flag: Option<PathBuf>) -> Result<Config, StartError> {
    let path = config_path(flag).ok_or(StartError::NoConfig)?;
    Ok(Config::load(&path)?)
}

/// Open the provider on the backend its config names, with the reaper running.
pub async fn open_provider(cfg: Config) -> Result<Arc<Provider>, StartError> {
    let backend: Arc<dyn Backend> = backend::from_config(&cfg)
        .await
        .map_err(StartError::Backend)?;
    let provider = Provider::open(cfg, backend)
        .await
        .map_err(StartError::Provider)?;
    Ok(provider)
}

/// Exit codes shared by the binaries.
pub mod exit {
    /// Bad command line or configuration.
    pub const USAGE: i32 = 2;
    /// A payment problem (token refused, mint unreachable, insufficient value).
    pub const PAYMENT: i32 = 3;
    /// The provider or backend failed.
    pub const PROVIDER: i32 = 4;
}
