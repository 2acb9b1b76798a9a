//! The embedded default: everything `paygress-mcp-server --demo` needs on a machine with no
//! mint, no relay and no backend configured.
//!
//! Demo mode is honest about what is fake: the money (an embedded mint with a fake Lightning
//! backend, see [`mint`]) and nothing else. The provider core, the payment path, the doors and
//! the backend are the real ones, so a walk through the demo is a walk through the product:
//! - the backend is LXD when its socket answers and has the base image, otherwise the local
//!   sandbox (weaker isolation; for development, demos and trusted users);
//! - state lives in a temporary directory that is removed, with every workload, at exit, and an
//!   expired pod is deleted 15 s after it stops (a real provider waits longer for a late top-up);
//! - one extra MCP tool, `get_demo_token`, hands out test tokens so an agent can walk the whole
//!   flow. It exists only here.

pub mod mint;

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::backend::lxd::{LxdBackend, LxdConfig};
use crate::backend::{Backend, BackendKind};
use crate::config::Config;
use crate::doors::mcp::{output_schema, schema_object, ExtraTool};
use crate::error::{ErrorType, ProviderError};
use mint::DemoMint;

/// What the demo says about itself, first thing on stderr.
pub const NOTICE: &str = "demo: payments are test tokens, not real sats";

/// Largest token `get_demo_token` hands out.
pub const MAX_DEMO_TOKEN_SATS: u64 = 100_000;

/// The LXD image the demo offers when it runs on LXD.
const LXD_IMAGE: &str = "paygress-debian-12";

/// Which backend the demo uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoBackend {
    /// LXD when its socket answers and has the base image, else the sandbox.
    Auto,
    Lxd,
    Sandbox,
}

/// A prepared demo: the mint, the config pointing at it, the backend. Dropping it stops the
/// mint and removes the state directory.
pub struct Demo {
    pub mint: Arc<DemoMint>,
    pub config: Config,
    pub backend: Arc<dyn Backend>,
    _state: tempfile::TempDir,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Mint(#[from] mint::MintError),
    #[error("demo state directory: {0}")]
    State(std::io::Error),
    #[error("demo backend: {0}")]
    Backend(String),
    #[error("demo config: {0}")]
    Config(#[from] crate::config::ConfigError),
}

impl Demo {
    /// Start the mint, choose the backend, write the config.
    pub async fn prepare(choice: DemoBackend) -> Result<Demo, DemoError> {
        let state = tempfile::Builder::new()
            .prefix("paygress-demo-")
            .tempdir()
            .map_err(DemoError::State)?;
        let mint = Arc::new(DemoMint::start().await?);
        let (backend, kind) = choose_backend(choice, state.path()).await?;
        let image = match kind {
            BackendKind::Lxd => LXD_IMAGE,
            _ => "host",
        };
        let (start, end) = free_port_block(20);
        let text = format!(
            r#"
[provider]
name = "Paygress demo"
location = "this machine"
ssh_host = "127.0.0.1"
data_dir = {dir:?}
minimum_duration_seconds = 60
maximum_duration_seconds = 86400
ssh_port_range_start = {start}
ssh_port_range_end = {end}
expiry_grace_seconds = 15
reaper_interval_seconds = 1

[payments]
whitelisted_mints = [{mint:?}]

[images]
allowed = [{image:?}]
default = {image:?}

[[tiers]]
id = "small"
name = "Small"
description = "0.5 vCPU, 256 MiB"
cpu_millicores = 500
memory_mb = 256
rate_msats_per_sec = 10

[[tiers]]
id = "basic"
name = "Basic"
description = "1 vCPU, 512 MiB"
cpu_millicores = 1000
memory_mb = 512
rate_msats_per_sec = 20

[backend]
kind = {kind:?}
"#,
            dir = state.path().join("data").display().to_string(),
            mint = mint.url,
            kind = kind.to_string(),
        );
        // The documented environment overrides apply to the demo too (tiers, durations, ...).
        let env = std::env::vars()
            .filter(|(k, _)| crate::config::ENV_OVERRIDES.contains(&k.as_str()))
            .collect();
        let config = Config::from_toml_with_env(&text, &env)?;
        Ok(Demo {
            mint,
            config,
            backend,
            _state: state,
        })
    }

    /// The `get_demo_token` tool.
    pub fn token_tool(&self) -> Arc<dyn ExtraTool> {
        Arc::new(DemoTokenTool {
            mint: self.mint.clone(),
        })
    }

    /// Lines for stderr at start.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![
            NOTICE.to_string(),
            format!("demo: mint {} (fake Lightning backend)", self.mint.url),
        ];
        lines.push(match self.backend.kind() {
            BackendKind::Lxd => "demo: backend lxd (the local LXD daemon)".to_string(),
            _ => "demo: backend sandbox (namespaces on this machine: weaker isolation than LXD; for development, demos and trusted users)".to_string(),
        });
        lines
    }
}

/// Warm containers per tier the demo keeps on LXD (see `backend.lxd.warm_pool`).
pub const DEMO_WARM_POOL: u32 = 1;

async fn choose_backend(
    choice: DemoBackend,
    state: &std::path::Path,
) -> Result<(Arc<dyn Backend>, BackendKind), DemoError> {
    if choice != DemoBackend::Sandbox {
        // A small warm pool (one container per tier): spawns answer without waiting for a boot.
        let lxd = LxdConfig {
            warm_pool: DEMO_WARM_POOL,
            ..LxdConfig::default()
        };
        match LxdBackend::connect(lxd).await {
            Ok(b) if b.has_image(LXD_IMAGE).await => return Ok((Arc::new(b), BackendKind::Lxd)),
            Ok(_) if choice == DemoBackend::Lxd => {
                return Err(DemoError::Backend(format!(
                    "LXD answers but has no image {LXD_IMAGE:?}; build it with provider/build-base-image.sh"
                )))
            }
            Err(e) if choice == DemoBackend::Lxd => return Err(DemoError::Backend(e.to_string())),
            _ => {}
        }
    }
    let b = sandbox_backend(state).await?;
    Ok((b, BackendKind::Sandbox))
}

async fn sandbox_backend(state: &std::path::Path) -> Result<Arc<dyn Backend>, DemoError> {
    let b = crate::backend::sandbox::SandboxBackend::open(
        crate::backend::sandbox::SandboxConfig::default(),
        &state.join("data"),
    )
    .await
    .map_err(|e| DemoError::Backend(e.to_string()))?;
    Ok(Arc::new(b))
}

/// `n` consecutive free ports, searched from 30000 upwards with a random start.
fn free_port_block(n: u16) -> (u16, u16) {
    use rand::Rng;
    for _ in 0..200 {
        let start: u16 = rand::thread_rng().gen_range(30_000..50_000);
        let end = start + n - 1;
        if (start..=end).all(|p| std::net::TcpListener::bind(("0.0.0.0", p)).is_ok()) {
            return (start, end);
        }
    }
    (30_000, 30_000 + n - 1)
}

/// `get_demo_token` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct DemoTokenRequest {
    /// Value of the token in sats (1 to 100000). At the demo's rates 1 sat buys 50-100 seconds.
    pub amount_sats: u64,
}

/// `get_demo_token` result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DemoToken {
    /// A Cashu token from the demo mint: pass it as `cashu_token` to `spawn_pod` or `topup_pod`.
    pub cashu_token: String,
    pub amount_sats: u64,
    pub mint_url: String,
    /// Reminder that the token is worthless outside this demo.
    pub note: String,
}

struct DemoTokenTool {
    mint: Arc<DemoMint>,
}

#[async_trait::async_trait]
impl ExtraTool for DemoTokenTool {
    fn tool(&self) -> Tool {
        Tool::new(
            "get_demo_token",
            "Demo mode only: get a test Cashu token from the embedded demo mint (fake Lightning, \
             worthless outside this demo) to pay spawn_pod or topup_pod with.",
            Arc::new(schema_object::<DemoTokenRequest>()),
        )
        .with_title("Get a demo token")
        .with_raw_output_schema(Arc::new(output_schema::<DemoToken>()))
        .with_annotations(
            ToolAnnotations::with_title("Get a demo token")
                .read_only(false)
                .destructive(false)
                .idempotent(false)
                .open_world(false),
        )
    }

    async fn call(&self, args: JsonObject) -> Result<serde_json::Value, ProviderError> {
        let req: DemoTokenRequest = serde_json::from_value(serde_json::Value::Object(args))
            .map_err(|e| {
                ProviderError::invalid_request(format!(
                    "invalid arguments for get_demo_token: {}",
                    crate::error::sanitize_serde(&e)
                ))
            })?;
        if !(1..=MAX_DEMO_TOKEN_SATS).contains(&req.amount_sats) {
            return Err(ProviderError::invalid_request(format!(
                "amount_sats must be between 1 and {MAX_DEMO_TOKEN_SATS}"
            )));
        }
        let token = self
            .mint
            .token(req.amount_sats)
            .await
            .map_err(|e| ProviderError::new(ErrorType::InternalError, e.to_string()))?;
        serde_json::to_value(DemoToken {
            cashu_token: token,
            amount_sats: req.amount_sats,
            mint_url: self.mint.url.clone(),
            note: "test token from the demo mint: worthless outside this demo".into(),
        })
        .map_err(|e| ProviderError::new(ErrorType::InternalError, e.to_string()))
    }
}
