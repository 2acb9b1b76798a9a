//! Provider configuration: one TOML file, overridden by the seed's environment variables.
//!
//! Everything the provider needs to know is read and checked once, at start. A bad value stops
//! the start with a message that names the key and the problem (`tiers[1].rate_msats_per_sec:
//! must be greater than 0`), because a provider that starts with a half-understood config is a
//! provider that charges the wrong price.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::lxd::LxdConfig;
use crate::backend::proxmox::ProxmoxConfig;
use crate::backend::sandbox::SandboxConfig;

/// A compute tier ("pod spec" on the wire): what a buyer gets and what a second of it costs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Stable identifier buyers pass as `pod_spec_id`.
    pub id: String,
    /// Human name.
    pub name: String,
    /// One line describing the tier.
    #[serde(default)]
    pub description: String,
    /// CPU in thousandths of a core (1000 = one core).
    pub cpu_millicores: u32,
    /// Memory limit in MiB.
    pub memory_mb: u32,
    /// Root disk size in GB, where the backend supports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<u32>,
    /// Price in millisatoshis per second of runtime.
    pub rate_msats_per_sec: u64,
}

/// Who the provider is and the rules it sells by.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// Name shown to buyers.
    #[serde(default = "default_name")]
    pub name: String,
    /// Free-text location shown to buyers ("Frankfurt, DE").
    #[serde(default)]
    pub location: String,
    /// Host name or address buyers SSH to.
    #[serde(default = "default_ssh_host")]
    pub ssh_host: String,
    /// Where state (SQLite journal, wallets, keys) lives.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Shortest time a spawn may buy.
    #[serde(default = "default_min_duration")]
    pub minimum_duration_seconds: u64,
    /// Longest time one payment may buy (spawn or top-up); caps the deadline arithmetic.
    #[serde(default = "default_max_duration")]
    pub maximum_duration_seconds: u64,
    /// First host port handed out for SSH forwards.
    #[serde(default = "default_port_start")]
    pub ssh_port_range_start: u16,
    /// Last host port handed out for SSH forwards (inclusive).
    #[serde(default = "default_port_end")]
    pub ssh_port_range_end: u16,
    /// How long an expired workload stays stopped (resumable by a top-up) before deletion.
    #[serde(default = "default_grace")]
    pub expiry_grace_seconds: u64,
    /// How often the reaper looks for expired workloads.
    #[serde(default = "default_reaper_interval")]
    pub reaper_interval_seconds: u64,
    /// Most workloads alive at once (0 = only the port range limits it).
    #[serde(default)]
    pub max_workloads: u32,
    /// Payments are refused (untouched) while the data dir's file system has less free space
    /// than this: the journal must be able to record what a swap took.
    #[serde(default = "default_min_free_disk")]
    pub min_free_disk_mb: u64,
    /// Spawns one remote caller (a Nostr key, over the marketplace or ContextVM) may have in
    /// flight at once; more are refused untouched (`resource_unavailable`).
    #[serde(default = "default_per_sender")]
    pub max_concurrent_per_sender: u32,
}

fn default_per_sender() -> u32 {
    4
}

fn default_min_free_disk() -> u64 {
    64
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsSection {
    /// Mint URLs whose tokens are accepted. Tokens from any other mint are refused untouched.
    #[serde(default)]
    pub whitelisted_mints: Vec<String>,
    /// Longest wait for one answer from a mint. A swap whose answer does not come in time has an
    /// unknown outcome and is settled with the mint afterwards (README, "Money rules").
    #[serde(default = "default_mint_timeout")]
    pub mint_timeout_seconds: u64,
}

impl Default for PaymentsSection {
    fn default() -> Self {
        PaymentsSection {
            whitelisted_mints: Vec::new(),
            mint_timeout_seconds: default_mint_timeout(),
        }
    }
}

fn default_mint_timeout() -> u64 {
    20
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesSection {
    /// Images buyers may ask for.
    #[serde(default)]
    pub allowed: Vec<String>,
    /// Image used when the buyer names none; must be in `allowed`.
    #[serde(default = "default_image")]
    pub default: String,
}

impl Default for ImagesSection {
    fn default() -> Self {
        ImagesSection {
            allowed: vec![default_image()],
            default: default_image(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NostrSection {
    /// Relay URLs (`ws://` or `wss://`).
    #[serde(default)]
    pub relays: Vec<String>,
    /// File holding the provider's Nostr secret key (nsec or hex); created 0600 if missing.
    /// Relative paths are under `data_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_file: Option<PathBuf>,
    /// The secret key itself (from `NOSTR_PRIVATE_KEY`); never written to the config file.
    #[serde(skip)]
    pub private_key: Option<crate::secret::Secret>,
    /// ContextVM encryption (NIP-44 gift wraps): `optional` answers in kind the client asked
    /// in, `required` refuses plaintext, `disabled` speaks plaintext only.
    #[serde(default)]
    pub encryption: Encryption,
    /// Publish the public ContextVM server announcement (CEP-6) and relay list, on the
    /// configured relays only.
    #[serde(default)]
    pub announce: bool,
    /// Run an embedded relay on this address (`127.0.0.1:7777`) for development; its URL is
    /// put first in `relays`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded_relay: Option<std::net::SocketAddr>,
    /// Doors `paygress-cli provider start` opens on the relays: the marketplace (offer + private
    /// requests) and ContextVM.
    #[serde(default = "yes")]
    pub marketplace: bool,
    #[serde(default = "yes")]
    pub contextvm: bool,
    /// How often the marketplace offer is republished; buyers treat an offer older than three
    /// heartbeats as a provider that is gone.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_seconds: u64,
}

fn yes() -> bool {
    true
}

fn default_heartbeat() -> u64 {
    60
}

impl Default for NostrSection {
    fn default() -> Self {
        NostrSection {
            relays: Vec::new(),
            private_key_file: None,
            private_key: None,
            encryption: Encryption::default(),
            announce: false,
            embedded_relay: None,
            marketplace: true,
            contextvm: true,
            heartbeat_seconds: default_heartbeat(),
        }
    }
}

/// How the ContextVM door treats encryption.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    #[default]
    Optional,
    Required,
    Disabled,
}

/// Which backend provisions workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    Lxd,
    Proxmox,
    Kubernetes,
    Sandbox,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    pub kind: BackendChoice,
    #[serde(default)]
    pub lxd: LxdConfig,
    /// `[backend.sandbox]`: the embedded namespace sandbox (no daemon needed).
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Kubernetes namespace for workloads (`POD_NAMESPACE`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// `[backend.kubernetes]`: the Kubernetes backend.
    #[serde(default)]
    pub kubernetes: crate::backend::kubernetes::KubernetesConfig,
    /// `[backend.proxmox]`: the Proxmox VE API, its token, TLS pin, templates and network.
    #[serde(default)]
    pub proxmox: ProxmoxConfig,
}

impl Default for BackendSection {
    fn default() -> Self {
        BackendSection {
            kind: BackendChoice::Sandbox,
            lxd: LxdConfig::default(),
            sandbox: SandboxConfig::default(),
            namespace: default_namespace(),
            kubernetes: Default::default(),
            proxmox: ProxmoxConfig::default(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub provider: ProviderSection,
    #[serde(default)]
    pub payments: PaymentsSection,
    #[serde(default)]
    pub images: ImagesSection,
    #[serde(default)]
    pub tiers: Vec<Tier>,
    #[serde(default)]
    pub nostr: NostrSection,
    #[serde(default)]
    pub backend: BackendSection,
    #[serde(default)]
    pub http: HttpSection,
}

/// The HTTP door (`[http]`): off unless `listen` is set (or `PAYGRESS_HTTP`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Address to serve on, e.g. `127.0.0.1:8080`. Env `PAYGRESS_HTTP`.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    /// Reverse proxies whose `X-Forwarded-For` is believed; from anyone else it is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Origins browsers may call from (CORS). Empty: no CORS headers at all.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_http_body")]
    pub max_body_bytes: usize,
    /// Requests per minute one client address may make (0: unlimited).
    #[serde(default = "default_http_rate")]
    pub rate_limit_per_minute: u32,
    /// Longest a request may take, in seconds; a spawn cut short is rolled back and refunded.
    #[serde(default = "default_http_timeout")]
    pub request_timeout_seconds: u64,
}

fn default_http_body() -> usize {
    64 * 1024
}
fn default_http_rate() -> u32 {
    120
}
fn default_http_timeout() -> u64 {
    300
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: None,
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
            max_body_bytes: default_http_body(),
            rate_limit_per_minute: default_http_rate(),
            request_timeout_seconds: default_http_timeout(),
        }
    }
}

/// A configuration problem: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config: {key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

fn default_name() -> String {
    "Paygress provider".into()
}
fn default_ssh_host() -> String {
    "127.0.0.1".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("paygress-data")
}
fn default_min_duration() -> u64 {
    60
}
fn default_max_duration() -> u64 {
    30 * 24 * 3600
}
fn default_port_start() -> u16 {
    30000
}
fn default_port_end() -> u16 {
    30999
}
fn default_grace() -> u64 {
    3600
}
fn default_reaper_interval() -> u64 {
    5
}
fn default_image() -> String {
    "paygress-debian-12".into()
}
fn default_namespace() -> String {
    "user-workloads".into()
}

impl Default for ProviderSection {
    fn default() -> Self {
        ProviderSection {
            name: default_name(),
            location: String::new(),
            ssh_host: default_ssh_host(),
            data_dir: default_data_dir(),
            minimum_duration_seconds: default_min_duration(),
            maximum_duration_seconds: default_max_duration(),
            ssh_port_range_start: default_port_start(),
            ssh_port_range_end: default_port_end(),
            expiry_grace_seconds: default_grace(),
            reaper_interval_seconds: default_reaper_interval(),
            max_workloads: 0,
            min_free_disk_mb: default_min_free_disk(),
            max_concurrent_per_sender: default_per_sender(),
        }
    }
}

/// The environment variables the seed documents defined, and that still override the file.
pub const ENV_OVERRIDES: &[&str] = &[
    "NOSTR_RELAYS",
    "NOSTR_PRIVATE_KEY",
    "WHITELISTED_MINTS",
    "POD_SPECS_FILE",
    "SSH_HOST",
    "SSH_PORT_RANGE_START",
    "SSH_PORT_RANGE_END",
    "MINIMUM_POD_DURATION_SECONDS",
    "BASE_IMAGE",
    "POD_NAMESPACE",
    "CONTEXTVM_ENCRYPTION",
    "PAYGRESS_HTTP",
];

impl Config {
    /// Read a TOML file, apply environment overrides from the process environment, validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read file: {e}"))
        })?;
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| ENV_OVERRIDES.contains(&k.as_str()))
            .collect();
        Config::from_toml_with_env(&text, &env)
    }

    /// Parse TOML text, apply the given overrides, validate. Separated from [`Config::load`] so
    /// tests need not touch the process environment.
    pub fn from_toml_with_env(
        text: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| text.get(s).unwrap_or("").trim().to_string())
                .filter(|s| !s.is_empty() && s.len() < 80)
                .unwrap_or_else(|| "(file)".into());
            ConfigError::new(key, e.message().to_string())
        })?;
        cfg.apply_env(env)?;
        cfg.validate()?;
        // A provider says which backend sells its compute: the default (the sandbox) is weaker
        // isolation than LXD and must never be chosen by omission.
        let kind_set = toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|t| t.get("backend")?.get("kind").cloned())
            .is_some();
        if !kind_set {
            return Err(ConfigError::new(
                "backend.kind",
                "must be set: \"lxd\", \"proxmox\", \"kubernetes\" or \"sandbox\" (the sandbox \
                 isolates less than LXD; see the README)",
            ));
        }
        Ok(cfg)
    }

    /// Apply the seed's environment variables on top of the file.
    pub fn apply_env(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        fn list(v: &str) -> Vec<String> {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        }
        fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ConfigError> {
            v.trim()
                .parse()
                .map_err(|_| ConfigError::new(key, format!("not a valid number: {v:?}")))
        }
        if let Some(v) = env.get("NOSTR_RELAYS") {
            self.nostr.relays = list(v);
        }
        if let Some(v) = env.get("NOSTR_PRIVATE_KEY") {
            if !v.trim().is_empty() {
                self.nostr.private_key = Some(crate::secret::Secret::new(v.trim()));
            }
        }
        if let Some(v) = env.get("CONTEXTVM_ENCRYPTION") {
            self.nostr.encryption = match v.trim() {
                "optional" => Encryption::Optional,
                "required" => Encryption::Required,
                "disabled" => Encryption::Disabled,
                other => {
                    return Err(ConfigError::new(
                        "CONTEXTVM_ENCRYPTION",
                        format!("expected optional, required or disabled, got {other:?}"),
                    ))
                }
            };
        }
        if let Some(v) = env.get("WHITELISTED_MINTS") {
            self.payments.whitelisted_mints = list(v);
        }
        if let Some(v) = env.get("POD_SPECS_FILE") {
            let text = std::fs::read_to_string(v)
                .map_err(|e| ConfigError::new("POD_SPECS_FILE", format!("cannot read {v}: {e}")))?;
            self.tiers = serde_json::from_str(&text).map_err(|e| {
                ConfigError::new("POD_SPECS_FILE", format!("not a JSON array of tiers: {e}"))
            })?;
        }
        if let Some(v) = env.get("SSH_HOST") {
            self.provider.ssh_host = v.trim().to_string();
        }
        if let Some(v) = env.get("SSH_PORT_RANGE_START") {
            self.provider.ssh_port_range_start = num("SSH_PORT_RANGE_START", v)?;
        }
        if let Some(v) = env.get("SSH_PORT_RANGE_END") {
            self.provider.ssh_port_range_end = num("SSH_PORT_RANGE_END", v)?;
        }
        if let Some(v) = env.get("MINIMUM_POD_DURATION_SECONDS") {
            self.provider.minimum_duration_seconds = num("MINIMUM_POD_DURATION_SECONDS", v)?;
        }
        if let Some(v) = env.get("BASE_IMAGE") {
            let image = v.trim().to_string();
            if !self.images.allowed.contains(&image) {
                self.images.allowed.push(image.clone());
            }
            self.images.default = image;
        }
        if let Some(v) = env.get("PAYGRESS_HTTP") {
            if !v.trim().is_empty() {
                self.http.listen = Some(v.trim().parse().map_err(|_| {
                    ConfigError::new(
                        "PAYGRESS_HTTP",
                        format!("not an address like 127.0.0.1:8080: {v:?}"),
                    )
                })?);
            }
        }
        if let Some(v) = env.get("POD_NAMESPACE") {
            self.backend.namespace = v.trim().to_string();
            self.backend.kubernetes.namespace = Some(v.trim().to_string());
        }
        Ok(())
    }

    /// Check every rule the money path relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.provider;
        if p.name.trim().is_empty() {
            return Err(ConfigError::new("provider.name", "must not be empty"));
        }
        if p.ssh_host.trim().is_empty() || p.ssh_host.contains(char::is_whitespace) {
            return Err(ConfigError::new(
                "provider.ssh_host",
                "must be a host name or address",
            ));
        }
        if p.minimum_duration_seconds == 0 {
            return Err(ConfigError::new(
                "provider.minimum_duration_seconds",
                "must be at least 1",
            ));
        }
        if p.maximum_duration_seconds < p.minimum_duration_seconds {
            return Err(ConfigError::new(
                "provider.maximum_duration_seconds",
                "must not be below minimum_duration_seconds",
            ));
        }
        if p.ssh_port_range_start == 0 || p.ssh_port_range_start > p.ssh_port_range_end {
            return Err(ConfigError::new(
                "provider.ssh_port_range_start",
                format!(
                    "range {}..={} is empty or starts at 0",
                    p.ssh_port_range_start, p.ssh_port_range_end
                ),
            ));
        }
        let h = &self.http;
        if h.max_body_bytes < 1024 || h.max_body_bytes > 16 * 1024 * 1024 {
            return Err(ConfigError::new(
                "http.max_body_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        for (i, o) in h.cors_origins.iter().enumerate() {
            let scheme_ok = o.starts_with("https://") || o.starts_with("http://");
            if !scheme_ok
                || o.ends_with('/')
                || o.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::new(
                    format!("http.cors_origins[{i}]"),
                    "must be an origin like https://app.example.com (scheme and host, no path)",
                ));
            }
        }
        if h.request_timeout_seconds == 0 || h.request_timeout_seconds > 3600 {
            return Err(ConfigError::new(
                "http.request_timeout_seconds",
                "must be between 1 and 3600",
            ));
        }
        if p.reaper_interval_seconds == 0 {
            return Err(ConfigError::new(
                "provider.reaper_interval_seconds",
                "must be at least 1",
            ));
        }
        if self.payments.mint_timeout_seconds == 0 {
            return Err(ConfigError::new(
                "payments.mint_timeout_seconds",
                "must be at least 1",
            ));
        }
        if self.payments.whitelisted_mints.is_empty() {
            return Err(ConfigError::new(
                "payments.whitelisted_mints",
                "must name at least one mint URL",
            ));
        }
        for (i, m) in self.payments.whitelisted_mints.iter().enumerate() {
            let ok = reqwest::Url::parse(m).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| !h.is_empty())
            }) && !m.contains(char::is_whitespace)
                && m.parse::<cdk::mint_url::MintUrl>().is_ok();
            if !ok {
                return Err(ConfigError::new(
                    format!("payments.whitelisted_mints[{i}]"),
                    format!("not an http(s) URL: {m:?}"),
                ));
            }
        }
        if self.tiers.is_empty() {
            return Err(ConfigError::new("tiers", "must define at least one tier"));
        }
        let mut ids = HashSet::new();
        for (i, t) in self.tiers.iter().enumerate() {
            let key = |f: &str| format!("tiers[{i}].{f}");
            if !crate::validate::is_identifier(&t.id) {
                return Err(ConfigError::new(
                    key("id"),
                    "must be 1-64 characters of a-z, 0-9, '-', '_' or '.'",
                ));
            }
            if !ids.insert(t.id.clone()) {
                return Err(ConfigError::new(
                    key("id"),
                    format!("duplicate tier id {:?}", t.id),
                ));
            }
            if t.name.trim().is_empty() {
                return Err(ConfigError::new(key("name"), "must not be empty"));
            }
            if t.cpu_millicores == 0 {
                return Err(ConfigError::new(
                    key("cpu_millicores"),
                    "must be greater than 0",
                ));
            }
            if t.memory_mb < 16 {
                return Err(ConfigError::new(key("memory_mb"), "must be at least 16"));
            }
            if t.disk_gb == Some(0) {
                return Err(ConfigError::new(
                    key("disk_gb"),
                    "must be greater than 0 when set",
                ));
            }
            if t.rate_msats_per_sec == 0 {
                return Err(ConfigError::new(
                    key("rate_msats_per_sec"),
                    "must be greater than 0",
                ));
            }
        }
        if self.images.allowed.is_empty() {
            return Err(ConfigError::new(
                "images.allowed",
                "must list at least one image",
            ));
        }
        for (i, img) in self.images.allowed.iter().enumerate() {
            if !crate::validate::is_image_name(img) {
                return Err(ConfigError::new(
                    format!("images.allowed[{i}]"),
                    format!("not a valid image name: {img:?}"),
                ));
            }
        }
        if !self.images.allowed.contains(&self.images.default) {
            return Err(ConfigError::new(
                "images.default",
                format!("{:?} is not in images.allowed", self.images.default),
            ));
        }
        if !(5..=3600).contains(&self.nostr.heartbeat_seconds) {
            return Err(ConfigError::new(
                "nostr.heartbeat_seconds",
                "must be between 5 and 3600",
            ));
        }
        for (i, r) in self.nostr.relays.iter().enumerate() {
            if !(r.starts_with("ws://") || r.starts_with("wss://")) {
                return Err(ConfigError::new(
                    format!("nostr.relays[{i}]"),
                    format!("not a ws:// or wss:// URL: {r:?}"),
                ));
            }
        }
        let k8s_namespace = self
            .backend
            .kubernetes
            .namespace
            .as_ref()
            .unwrap_or(&self.backend.namespace);
        if self.backend.kind == BackendChoice::Kubernetes
            && !crate::validate::is_identifier(k8s_namespace)
        {
            return Err(ConfigError::new(
                "backend.namespace",
                "not a valid namespace name",
            ));
        }
        if self.backend.kind == BackendChoice::Proxmox {
            if let Err(problem) = self.backend.proxmox.validate() {
                let (key, problem) = problem
                    .split_once(": ")
                    .unwrap_or(("backend.proxmox", &problem));
                return Err(ConfigError::new(key, problem));
            }
            // An offered image without a template would be paid for and then refunded.
            if let Some(img) = self
                .images
                .allowed
                .iter()
                .find(|i| !self.backend.proxmox.templates.contains_key(*i))
            {
                return Err(ConfigError::new(
                    "backend.proxmox.templates",
                    format!("no template for the allowed image {img:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Absolute-or-relative path under the data dir.
    pub fn data_path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.provider.data_dir.join(rel)
    }

    /// The tier with this id.
    pub fn tier(&self, id: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.id == id)
    }

    /// Number of host ports in the SSH range.
    pub fn port_capacity(&self) -> u32 {
        u32::from(self.provider.ssh_port_range_end) - u32::from(self.provider.ssh_port_range_start)
            + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[provider]
name = "test"
[payments]
whitelisted_mints = ["http://127.0.0.1:3338"]
[[tiers]]
id = "basic"
name = "Basic"
cpu_millicores = 1000
memory_mb = 512
rate_msats_per_sec = 100
[backend]
kind = "sandbox"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, &BTreeMap::new())
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.provider.minimum_duration_seconds, 60);
        assert_eq!(c.images.default, "paygress-debian-12");
        assert_eq!(c.port_capacity(), 1000);
    }

    #[test]
    fn errors_name_the_key() {
        let e =
            parse(&BASE.replace("rate_msats_per_sec = 100", "rate_msats_per_sec = 0")).unwrap_err();
        assert_eq!(e.key, "tiers[0].rate_msats_per_sec");
        let e = parse(&BASE.replace("127.0.0.1:3338", "not a url")).unwrap_err();
        assert_eq!(e.key, "payments.whitelisted_mints[0]");
        let e = parse(&BASE.replace("name = \"test\"", "nmae = \"test\"")).unwrap_err();
        assert!(e.to_string().contains("nmae"), "{e}");
        let e = parse(&BASE.replace("memory_mb = 512", "memory_mb = \"lots\"")).unwrap_err();
        assert!(
            e.to_string().contains("lots") || e.to_string().contains("integer"),
            "{e}"
        );
    }

    #[test]
    fn the_backend_kind_must_be_named() {
        let e = parse(&BASE.replace("[backend]\nkind = \"sandbox\"\n", "")).unwrap_err();
        assert_eq!(e.key, "backend.kind");
        assert!(e.to_string().contains("sandbox"), "{e}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let c = parse(include_str!("../provider/paygress.example.toml")).unwrap();
        assert_eq!(c.backend.kind, BackendChoice::Lxd);
        assert_eq!(c.tiers.len(), 2);
    }

    #[test]
    fn env_overrides_the_file() {
        let mut env = BTreeMap::new();
        env.insert(
            "WHITELISTED_MINTS".to_string(),
            "http://a.example, http://b.example".into(),
        );
        env.insert("SSH_PORT_RANGE_START".to_string(), "40000".into());
        env.insert("SSH_PORT_RANGE_END".to_string(), "40009".into());
        env.insert("BASE_IMAGE".to_string(), "ubuntu-24".into());
        env.insert("MINIMUM_POD_DURATION_SECONDS".to_string(), "120".into());
        let c = Config::from_toml_with_env(BASE, &env).unwrap();
        assert_eq!(c.payments.whitelisted_mints.len(), 2);
        assert_eq!(c.port_capacity(), 10);
        assert_eq!(c.images.default, "ubuntu-24");
        assert_eq!(c.provider.minimum_duration_seconds, 120);
        env.insert("SSH_PORT_RANGE_END".to_string(), "many".into());
        let e = Config::from_toml_with_env(BASE, &env).unwrap_err();
        assert_eq!(e.key, "SSH_PORT_RANGE_END");
    }

    #[test]
    fn contextvm_settings_parse_and_bad_ones_name_the_key() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.nostr.encryption, Encryption::Optional);
        assert!(!c.nostr.announce);
        let text = format!(
            "{BASE}\n[nostr]\nrelays = [\"ws://127.0.0.1:7000\"]\nencryption = \"required\"\nannounce = true\nembedded_relay = \"127.0.0.1:0\"\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.nostr.encryption, Encryption::Required);
        assert!(c.nostr.announce);
        assert_eq!(c.nostr.embedded_relay, Some("127.0.0.1:0".parse().unwrap()));
        let e = parse(&text.replace("\"required\"", "\"sometimes\"")).unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
        let mut env = BTreeMap::new();
        env.insert("CONTEXTVM_ENCRYPTION".to_string(), "disabled".to_string());
        let c = Config::from_toml_with_env(&text, &env).unwrap();
        assert_eq!(c.nostr.encryption, Encryption::Disabled);
        env.insert("CONTEXTVM_ENCRYPTION".to_string(), "maybe".to_string());
        let e = Config::from_toml_with_env(&text, &env).unwrap_err();
        assert_eq!(e.key, "CONTEXTVM_ENCRYPTION");
    }

    #[test]
    fn http_settings_parse_env_overrides_listen_and_bad_ones_name_the_key() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.http.listen, None);
        assert_eq!(c.http.max_body_bytes, 64 * 1024);
        let text = format!(
            "{BASE}\n[http]\nlisten = \"127.0.0.1:8080\"\ntrusted_proxies = [\"127.0.0.1\"]\nrate_limit_per_minute = 0\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.http.listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.http.trusted_proxies.len(), 1);
        let mut env = BTreeMap::new();
        env.insert("PAYGRESS_HTTP".to_string(), "127.0.0.1:9090".to_string());
        let c = Config::from_toml_with_env(&text, &env).unwrap();
        assert_eq!(c.http.listen, Some("127.0.0.1:9090".parse().unwrap()));
        env.insert("PAYGRESS_HTTP".to_string(), "port 80 please".to_string());
        assert_eq!(
            Config::from_toml_with_env(&text, &env).unwrap_err().key,
            "PAYGRESS_HTTP"
        );
        let e = parse(&format!("{text}max_body_bytes = 10\n")).unwrap_err();
        assert_eq!(e.key, "http.max_body_bytes");
        let e = parse(&format!("{text}request_timeout_seconds = 0\n")).unwrap_err();
        assert_eq!(e.key, "http.request_timeout_seconds");
        let e = parse(&format!("{text}cors_origins = [\"app.example\"]\n")).unwrap_err();
        assert_eq!(e.key, "http.cors_origins[0]");
        let e = parse(&format!("{text}lisen = \"x\"\n")).unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
    }
}
