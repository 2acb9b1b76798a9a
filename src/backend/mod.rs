//! The one trait every compute backend implements.
//!
//! The provider core never knows which backend it drives: it asks for a workload to be created
//! with a tier's limits, an image and login credentials, and later to have its deadline moved, to
//! be stopped, resumed or destroyed. The backend answers with the endpoint buyers SSH to: LXD and
//! the sandbox forward a host port the core reserved for them, while Kubernetes gets a NodePort
//! from its API server and Proxmox a guest address, so only the backend knows where SSH lives. Keeping the trait this small is what lets
//! LXD, Proxmox, Kubernetes and the local sandbox stand behind the same money path, and lets tests
//! put a double behind it that fails at any step.
//!
//! Contract every implementation keeps:
//! - `create` returns only once SSH accepts connections on the endpoint it returns; if it fails at any
//!   point it removes whatever it had made before returning the error (rollback), so a failed
//!   create leaves nothing behind. The core still calls `destroy` afterwards as a safety net, so
//!   `destroy` of something missing is not an error.
//! - Every workload a backend makes is marked as this provider's (`provider_id`), so `list` returns
//!   only the workloads this provider owns and restart can re-adopt them or remove orphans.
//! - No user-supplied string (username, password, key) is ever interpolated into a shell command.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{BackendChoice, Config, Tier};
use crate::secret::Secret;

pub mod kubernetes;
pub mod lxd;
pub mod proxmox;
pub mod sandbox;

/// Which kind of backend serves workloads; published in offers so buyers can filter on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Lxd,
    Proxmox,
    Kubernetes,
    Sandbox,
    /// A backend supplied by the embedding program (tests use this for their double).
    Custom,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            BackendKind::Lxd => "lxd",
            BackendKind::Proxmox => "proxmox",
            BackendKind::Kubernetes => "kubernetes",
            BackendKind::Sandbox => "sandbox",
            BackendKind::Custom => "custom",
        };
        f.write_str(s)
    }
}

/// How strongly a backend keeps a buyer's workload apart from the host and from other buyers;
/// published in offers (`isolation`) so buyers can filter on it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A virtual machine: a kernel of its own.
    Vm,
    /// A container: shared kernel, its own root filesystem and id-mapped users (LXD,
    /// Kubernetes).
    Container,
    /// Namespaced processes on the provider's own host: shared kernel, the host's filesystem
    /// readable (see the README's sandbox section for exactly what is isolated).
    Sandbox,
    /// Not said (a custom backend, or an offer from an older provider).
    #[default]
    Unknown,
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::Vm => "vm",
            Isolation::Container => "container",
            Isolation::Sandbox => "sandbox",
            Isolation::Unknown => "unknown",
        })
    }
}

/// Everything a backend needs to make one workload.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Stable workload name, safe as a container/VM/pod name: `[a-z0-9-]`, starts with a letter,
    /// at most 40 characters.
    pub name: String,
    /// The provider instance this workload belongs to (marks ownership on the backend).
    pub provider_id: String,
    pub tier: Tier,
    pub image: String,
    /// Login user, already validated (`^[a-z_][a-z0-9_-]{0,31}$`, not a system account).
    pub ssh_username: String,
    pub ssh_password: Secret,
    /// One OpenSSH public key line, already validated, if the buyer gave one.
    pub ssh_public_key: Option<String>,
    /// Host port the core reserved for the SSH forward: `Some` exactly when the backend's
    /// [`Backend::host_port_from_core`] is true.
    pub host_port: Option<u16>,
    /// Unix seconds when the paid time runs out.
    pub expires_at: u64,
}

/// What a backend reports about one of its workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadInfo {
    pub name: String,
    pub state: WorkloadState,
    /// Where buyers SSH to, when the backend knows it.
    pub endpoint: Option<Endpoint>,
}

/// Where buyers reach a workload's SSH daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Host name or address; `None` means the provider's own `provider.ssh_host`.
    pub host: Option<String>,
    pub port: u16,
}

impl Endpoint {
    /// A port on the provider's own SSH host (what LXD and the sandbox forward).
    pub fn on_provider_host(port: u16) -> Self {
        Endpoint { host: None, port }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadState {
    Running,
    Stopped,
    /// Being created, being deleted, or in a state the backend cannot name.
    Other,
}

/// A backend failure. The message is for operators and buyers alike, so it must never carry a
/// secret (password, token, key).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The backend has no room (quota, capacity, port already taken on the host).
    #[error("backend has no capacity: {0}")]
    Capacity(String),
    /// The image asked for does not exist on the backend.
    #[error("image not available on the backend: {0}")]
    ImageMissing(String),
    /// The workload does not exist.
    #[error("workload not found: {0}")]
    NotFound(String),
    /// The workload did not become reachable over SSH in time.
    #[error("workload did not become ready: {0}")]
    NotReady(String),
    /// The backend API answered with an error or could not be reached.
    #[error("backend error: {0}")]
    Api(String),
}

/// The operations the provider core needs from a compute backend.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Which kind this is, for offers.
    fn kind(&self) -> BackendKind;

    /// How isolated its workloads are, for offers.
    fn isolation(&self) -> Isolation {
        match self.kind() {
            BackendKind::Proxmox => Isolation::Vm,
            BackendKind::Lxd | BackendKind::Kubernetes => Isolation::Container,
            BackendKind::Sandbox => Isolation::Sandbox,
            BackendKind::Custom => Isolation::Unknown,
        }
    }

    /// The SSH public key types (`ssh-ed25519`, …) this backend can install for a login.
    /// Published in offers and checked before payment, so a key the backend would refuse
    /// never costs the buyer anything. The default is every type OpenSSH accepts.
    fn login_key_types(&self) -> &'static [&'static str] {
        crate::validate::KEY_TYPES
    }

    /// SHA-256 fingerprints (`SHA256:…`) of the SSH host keys workload `name` presents, put in
    /// the spawn answer so buyers can pin them. The default, none, leaves buyers to pin the key
    /// they see right after the purchase.
    fn host_key_fingerprints(&self, _name: &str) -> Vec<String> {
        Vec::new()
    }

    /// Whether the core reserves a host port from `provider.ssh_port_range_*` for each workload
    /// (passed as [`WorkloadSpec::host_port`]). Backends whose endpoints are chosen elsewhere (a
    /// NodePort, a guest address) say `false`.
    fn host_port_from_core(&self) -> bool {
        true
    }

    /// Create and start the workload; return, once SSH accepts connections there, the endpoint
    /// buyers SSH to. On failure, remove anything made and return the error.
    async fn create(&self, spec: &WorkloadSpec) -> Result<Endpoint, BackendError>;

    /// Record a new deadline (backends may store it as metadata; the core's reaper enforces it).
    async fn extend(&self, name: &str, expires_at: u64) -> Result<(), BackendError>;

    /// Stop a workload whose time ran out, keeping its disk so a late top-up can resume it.
    async fn stop(&self, name: &str) -> Result<(), BackendError>;

    /// Start a stopped workload again (after a late top-up); return, once SSH answers, the
    /// endpoint buyers SSH to (it may differ from the one `create` gave).
    async fn resume(&self, name: &str) -> Result<Endpoint, BackendError>;

    /// Remove the workload and everything it holds. Removing a missing workload is not an error.
    async fn destroy(&self, name: &str) -> Result<(), BackendError>;

    /// Look at one workload; `None` when it does not exist.
    async fn inspect(&self, name: &str) -> Result<Option<WorkloadInfo>, BackendError>;

    /// Every workload this provider (`provider_id`) owns on the backend.
    async fn list(&self, provider_id: &str) -> Result<Vec<WorkloadInfo>, BackendError>;

    /// Keep warm, unsold workloads ready for these tiers and images, owned by `provider_id`, so
    /// a spawn does not wait for a boot (how many is the backend's own setting, e.g.
    /// `backend.lxd.warm_pool`). Called once the core has recovered; warm workloads an earlier
    /// run left are re-adopted or removed here. They never appear in [`Backend::list`] and are
    /// never handed out twice. The default keeps none.
    async fn start_warm_pool(&self, _provider_id: &str, _tiers: &[Tier], _images: &[String]) {}

    /// Remove every warm, unsold workload (the provider is shutting down).
    async fn stop_warm_pool(&self) {}
}

/// Build the backend the config names.
pub async fn from_config(cfg: &Config) -> Result<std::sync::Arc<dyn Backend>, String> {
    match cfg.backend.kind {
        BackendChoice::Lxd => {
            let b = lxd::LxdBackend::connect(cfg.backend.lxd.clone())
                .await
                .map_err(|e| e.to_string())?;
            Ok(std::sync::Arc::new(b))
        }
        BackendChoice::Sandbox => {
            // Covered inside every workload: the provider's keys (and `hide`, which holds the
            // config file when it was loaded by `app::load_config`).
            let mut secrets = vec![cfg.data_path(
                cfg.nostr
                    .private_key_file
                    .clone()
                    .unwrap_or_else(|| "nostr.key".into()),
            )];
            secrets.extend(cfg.backend.lxd.client_key.clone());
            let b = sandbox::SandboxBackend::open_hiding(
                cfg.backend.sandbox.clone(),
                &cfg.provider.data_dir,
                &secrets,
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok(std::sync::Arc::new(b))
        }
        BackendChoice::Kubernetes => {
            let k = &cfg.backend.kubernetes;
            let namespace = k
                .namespace
                .clone()
                .unwrap_or_else(|| cfg.backend.namespace.clone());
            let b = kubernetes::KubernetesBackend::connect(k.clone(), namespace)
                .await
                .map_err(|e| e.to_string())?;
            Ok(std::sync::Arc::new(b))
        }
        BackendChoice::Proxmox => {
            let b = proxmox::ProxmoxBackend::connect(cfg.backend.proxmox.clone())
                .await
                .map_err(|e| e.to_string())?;
            Ok(std::sync::Arc::new(b))
        }
    }
}
