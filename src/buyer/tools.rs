//! The buyer's MCP tools' wire types: arguments, results and the typed error body.
//!
//! Kept apart from [`super::agent`] (what the tools do) so the schemas an assistant sees are in
//! one place. No argument is a spending cap: caps come from the config file only.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::caps::{Caps, CapsError};
use super::purchase::PurchaseError;
use super::ssh::SshError;
use super::wallet::WalletError;
use crate::api::Offers;
use crate::error::ProviderError;
use crate::market::buyer::BuyerError;
use crate::secret::Secret;

/// Why a buyer tool failed: the provider's own error types when a provider answered, and the
/// buyer's side's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentErrorType {
    InvalidRequest,
    InvalidSpec,
    InvalidToken,
    MintNotAllowed,
    TokenAlreadySpent,
    InsufficientPayment,
    ResourceUnavailable,
    PodCreationFailed,
    PodNotFound,
    PaymentFailed,
    InternalError,
    /// A spending cap of the owner's config would be passed; nothing was paid.
    CapExceeded,
    /// The wallet holds too little at the provider's mints; nothing was paid.
    InsufficientFunds,
    /// The provider has no live offer on the relays (or no such tier).
    ProviderNotFound,
    /// No answer from the provider in time.
    NoAnswer,
    /// A relay or mint could not be reached.
    Unreachable,
    /// The pod presented an SSH host key other than the pinned one.
    HostKeyMismatch,
    /// SSH to the pod failed.
    SshFailed,
}

/// The typed error body of a buyer tool.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AgentError {
    pub error_type: AgentErrorType,
    pub message: String,
    /// Sats that came back into the wallet (refund), when a payment was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunded_sats: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl AgentError {
    pub fn new(t: AgentErrorType, m: impl Into<String>) -> AgentError {
        AgentError {
            error_type: t,
            message: m.into(),
            refunded_sats: None,
            details: None,
        }
    }
    pub fn invalid(m: impl Into<String>) -> AgentError {
        Self::new(AgentErrorType::InvalidRequest, m)
    }
    pub(crate) fn from_provider(e: &ProviderError, refunded: u64) -> AgentError {
        let t = serde_json::to_value(e.error_type)
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or(AgentErrorType::InternalError);
        AgentError {
            error_type: t,
            message: format!("the provider refused: {}", e.message),
            refunded_sats: Some(refunded),
            details: e.details.clone(),
        }
    }
}

impl From<WalletError> for AgentError {
    fn from(e: WalletError) -> Self {
        let t = match &e {
            WalletError::Insufficient { .. } | WalletError::NoUsableMint(_) => {
                AgentErrorType::InsufficientFunds
            }
            WalletError::InvalidToken | WalletError::BadMint(_) => AgentErrorType::InvalidToken,
            WalletError::AlreadySpent => AgentErrorType::TokenAlreadySpent,
            WalletError::Mint(_) | WalletError::NotPaid(_) => AgentErrorType::PaymentFailed,
            _ => AgentErrorType::InternalError,
        };
        AgentError::new(t, e.to_string())
    }
}

impl From<BuyerError> for AgentError {
    fn from(e: BuyerError) -> Self {
        let t = match &e {
            BuyerError::BadProvider(_) | BuyerError::NoRelays => AgentErrorType::InvalidRequest,
            BuyerError::Timeout(_) => AgentErrorType::NoAnswer,
            BuyerError::Relay(_) => AgentErrorType::Unreachable,
        };
        AgentError::new(t, e.to_string())
    }
}

impl From<PurchaseError> for AgentError {
    fn from(e: PurchaseError) -> Self {
        match e {
            PurchaseError::Market(b) => b.into(),
            PurchaseError::Wallet(w) => w.into(),
            PurchaseError::Cap(CapsError::Exceeded { .. }) => {
                AgentError::new(AgentErrorType::CapExceeded, e.to_string())
            }
            PurchaseError::Cap(_) => AgentError::new(AgentErrorType::InternalError, e.to_string()),
            PurchaseError::NoOffer(_) | PurchaseError::NoTier(_) => {
                AgentError::new(AgentErrorType::ProviderNotFound, e.to_string())
            }
            PurchaseError::Price(_) => AgentError::invalid(e.to_string()),
            PurchaseError::TakenNoAnswer { .. } => {
                AgentError::new(AgentErrorType::NoAnswer, e.to_string())
            }
        }
    }
}

impl From<SshError> for AgentError {
    fn from(e: SshError) -> Self {
        let t = match &e {
            SshError::HostKeyMismatch { .. } => AgentErrorType::HostKeyMismatch,
            _ => AgentErrorType::SshFailed,
        };
        AgentError::new(t, e.to_string())
    }
}

// --- tool arguments and results ---------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortBy {
    /// Cheapest tier first.
    #[default]
    Price,
    Name,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListProvidersArgs {
    /// Only providers on this backend: lxd, proxmox, kubernetes or sandbox.
    #[serde(default)]
    pub capability: Option<String>,
    /// Only tiers at most this price (millisatoshis per second).
    #[serde(default)]
    pub max_rate_msats_per_sec: Option<u64>,
    /// Only tiers with at least this much memory (MiB).
    #[serde(default)]
    pub min_memory_mb: Option<u32>,
    #[serde(default)]
    pub sort: Option<SortBy>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ListedProvider {
    /// The provider's npub: pass it as `provider` to spawn_pod.
    pub npub: String,
    /// Seconds since the provider last republished its offer.
    pub seen_seconds_ago: u64,
    /// The provider's offer; `pod_specs` holds only the tiers that pass the filters.
    pub offers: Offers,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ProvidersResult {
    pub providers: Vec<ListedProvider>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnArgs {
    /// The provider's npub (from list_providers).
    pub provider: String,
    /// Tier id (from the provider's pod_specs).
    pub pod_spec_id: String,
    /// Seconds to buy; the wallet pays exactly ceil(seconds * rate / 1000) sats.
    pub duration_seconds: u64,
    /// Image (default: the provider's default image).
    #[serde(default)]
    pub image: Option<String>,
    /// An OpenSSH public key line to add to the pod's ~/.ssh/authorized_keys besides the agent's
    /// own kept key (for a person to log in too; honoured where the pod runs OpenSSH, e.g. LXD).
    #[serde(default)]
    pub ssh_public_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SpawnOutcome {
    pub pod_npub: String,
    pub provider: String,
    pub host: String,
    pub node_port: u16,
    pub ssh_username: String,
    pub expires_at: String,
    pub duration_seconds: u64,
    pub paid_sats: u64,
    /// Host key fingerprints pinned for this pod; run_command refuses any other key.
    pub ssh_host_key_fingerprints: Vec<String>,
    pub wallet_balance_sats: u64,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUpArgs {
    pub provider: String,
    pub pod_npub: String,
    /// Seconds to add; the wallet pays exactly their price at the pod's tier.
    pub duration_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TopUpOutcome {
    pub pod_npub: String,
    pub extended_duration_seconds: u64,
    pub new_expires_at: String,
    pub paid_sats: u64,
    pub wallet_balance_sats: u64,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusArgs {
    pub provider: String,
    pub pod_npub: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// A pod this agent bought (spawn_pod's pod_npub).
    pub pod_npub: String,
    /// The command line, run by the pod's login shell.
    pub command: String,
    /// Seconds to wait for it (default 60, at most 3600).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunOutcome {
    pub stdout: String,
    pub stderr: String,
    /// The command's exit status; null if it was killed by a signal.
    pub exit_code: Option<u32>,
    pub host_key_fingerprint: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyArgs {}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MintBalance {
    pub mint: String,
    pub sats: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BalanceOutcome {
    pub total_sats: u64,
    pub balances: Vec<MintBalance>,
    /// Paid to providers in the last 24 hours, net of refunds.
    pub spent_last_24h_sats: u64,
    pub caps: Caps,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FundArgs {
    /// Sats to add over Lightning.
    pub amount_sats: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FundOutcome {
    /// The BOLT11 invoice for the owner to pay; the wallet mints by itself once it is paid.
    pub invoice: String,
    pub mint: String,
    pub amount_sats: u64,
    /// Unix seconds when the invoice expires.
    pub expires_at: u64,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveArgs {
    /// A Cashu token (cashuA…/cashuB…) to take into the wallet.
    pub token: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ReceiveOutcome {
    pub mint: String,
    pub received_sats: u64,
    pub wallet_balance_sats: u64,
}
