//! The wire types every door speaks: requests in, results out.
//!
//! Field names follow DESIGN.md's wire contract (compatible with the seed's ContextVM tool
//! table). The doc comments become the JSON-schema descriptions an agent reads, so they say what
//! to put in a field and what comes back, not how the code uses it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::backend::{BackendKind, Isolation};
use crate::config::Tier;
use crate::secret::Secret;

/// Buy a new workload.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct SpawnRequest {
    /// A Cashu ecash token (`cashuA…` or `cashuB…`, unit sat) from one of the provider's
    /// whitelisted mints. Its whole value is spent: the pod runs for
    /// floor(value_msats / rate_msats_per_sec) seconds.
    pub cashu_token: Secret,
    /// Tier id from `get_offers` → `pod_specs[].id`. Defaults to the first tier offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_spec_id: Option<String>,
    /// Image from `get_offers` → `allowed_images`. Defaults to the provider's default image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_image: Option<String>,
    /// Login name to create inside the pod: 1-32 of a-z, 0-9, '_' or '-', starting with a letter;
    /// not a system account such as root.
    pub ssh_username: String,
    /// Password for that login (8-128 printable ASCII characters, no ':'). Generated and returned
    /// when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_password: Option<Secret>,
    /// An OpenSSH public key line (`ssh-ed25519 AAAA… comment`) to authorise besides the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<String>,
    /// Optional idempotency key chosen by the caller: repeating a request with the same id returns
    /// the first answer instead of charging again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// What a paid spawn returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SpawnResult {
    /// The pod's id (a Nostr npub); pass it to `topup_pod` and `get_pod_status`.
    pub pod_npub: String,
    /// Host to SSH to.
    pub host: String,
    /// TCP port to SSH to.
    pub node_port: u16,
    pub ssh_username: String,
    /// The password given in the request, or the generated one.
    pub ssh_password: Secret,
    /// When the paid time runs out (RFC 3339, UTC).
    pub expires_at: String,
    /// Seconds of runtime bought.
    pub duration_seconds: u64,
    /// Millisatoshis received for this spawn (after mint fees).
    pub paid_msats: u64,
    pub cpu_millicores: u32,
    pub memory_mb: u32,
    pub pod_spec_id: String,
    pub pod_spec_name: String,
    pub pod_spec_description: String,
    /// Image the pod runs.
    pub image: String,
    /// Ready-to-use next steps, including the ssh command.
    pub instructions: Vec<String>,
    /// SHA-256 fingerprints (`SHA256:…`, as OpenSSH prints them) of the SSH host keys the pod
    /// presents, for the buyer to pin; empty where the backend cannot tell them yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_host_key_fingerprints: Vec<String>,
}

/// Extend a workload's paid time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct TopUpRequest {
    /// The pod's id as returned by `spawn_pod`.
    pub pod_npub: String,
    /// A Cashu token from a whitelisted mint; its whole value is added as runtime at the pod's
    /// tier rate. Anyone may top up any pod.
    pub cashu_token: Secret,
    /// Optional idempotency key (see `spawn_pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopUpResult {
    pub success: bool,
    pub pod_npub: String,
    /// Seconds added by this payment.
    pub extended_duration_seconds: u64,
    /// New end of the paid time (RFC 3339, UTC).
    pub new_expires_at: String,
    /// Millisatoshis received for this top-up.
    pub paid_msats: u64,
    pub message: String,
}

/// Ask about a workload.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct StatusRequest {
    /// The pod's id as returned by `spawn_pod`.
    pub pod_npub: String,
}

/// How to log in; shown only to the workload's owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Access {
    pub host: String,
    pub node_port: u16,
    pub ssh_username: String,
    pub ssh_password: Secret,
    /// Ready-to-paste ssh command.
    pub ssh_command: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PodStatus {
    pub pod_npub: String,
    /// provisioning, running, expired (stopped; a top-up resumes it), deleted or failed.
    pub state: String,
    /// End of the paid time (RFC 3339, UTC).
    pub expires_at: String,
    /// Seconds of paid time left (0 when expired).
    pub seconds_remaining: u64,
    /// When an expired pod is deleted for good (RFC 3339), if it is expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_after: Option<String>,
    pub pod_spec: Tier,
    pub image: String,
    /// Total millisatoshis paid for this pod.
    pub paid_msats: u64,
    /// Login details; present only when the caller owns the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
}

/// The provider's public identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProviderInfo {
    /// The provider's Nostr public key (npub).
    pub npub: String,
    pub name: String,
    pub location: String,
}

/// Free capacity right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Capacity {
    /// Workloads that can still be spawned.
    pub available_slots: u32,
    /// Workloads alive (running, provisioning, or expired within the grace period).
    pub live_workloads: u32,
}

/// What the provider sells and how to pay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Offers {
    pub provider: ProviderInfo,
    /// Shortest runtime a spawn may buy, in seconds.
    pub minimum_duration_seconds: u64,
    /// Longest runtime one payment may buy, in seconds.
    pub maximum_duration_seconds: u64,
    /// Mints whose tokens are accepted.
    pub whitelisted_mints: Vec<String>,
    /// Tiers for sale; price per second is `rate_msats_per_sec`.
    pub pod_specs: Vec<Tier>,
    pub allowed_images: Vec<String>,
    pub default_image: String,
    pub backend: BackendKind,
    /// How isolated workloads are: `vm`, `container`, `sandbox` (processes on the provider's
    /// host) or `unknown`.
    #[serde(default)]
    pub isolation: Isolation,
    pub capacity: Capacity,
    /// Seconds an expired pod stays resumable by a top-up before deletion.
    pub expiry_grace_seconds: u64,
    /// SSH public key types the backend can install for `ssh_public_key`.
    pub ssh_key_types: Vec<String>,
}

/// Steps of a spawn, reported to doors that show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpawnStage {
    /// Request and token checked; nothing spent yet.
    Validated,
    /// The token was swapped at the mint.
    Paid,
    /// The backend is creating the workload.
    Provisioning,
    /// SSH accepts connections.
    Ready,
}

impl SpawnStage {
    pub fn message(self) -> &'static str {
        match self {
            SpawnStage::Validated => "request and token validated",
            SpawnStage::Paid => "payment received at the mint",
            SpawnStage::Provisioning => "creating the workload",
            SpawnStage::Ready => "SSH is ready",
        }
    }
    /// Position in the sequence, 1-based, of [`SpawnStage::TOTAL`].
    pub fn step(self) -> u32 {
        match self {
            SpawnStage::Validated => 1,
            SpawnStage::Paid => 2,
            SpawnStage::Provisioning => 3,
            SpawnStage::Ready => 4,
        }
    }
    pub const TOTAL: u32 = 4;
}
