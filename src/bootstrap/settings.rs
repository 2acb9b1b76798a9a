//! The provider configuration bootstrap writes to `/etc/paygress/paygress.toml`.
//!
//! Made by serialising a table with the `toml` crate (never by pasting strings), then read back
//! through [`Config::from_toml_with_env`] so that a value the provider would refuse at start is
//! refused here, before anything on the host changes. It holds no secret: the Nostr key is a file
//! the host generates (`nostr.key` in the data directory).

use std::collections::BTreeMap;

use crate::config::{Config, Tier};

/// Where things live on the host (fixed: the unit file names them too).
pub const CONFIG_PATH: &str = "/etc/paygress/paygress.toml";
pub const DATA_DIR: &str = "/var/lib/paygress";
pub const BINARY_PATH: &str = "/usr/local/bin/paygress-cli";
pub const UNIT_NAME: &str = "paygress-provider";
/// The image buyers get by default (the config's `images.default`).
pub const DEFAULT_IMAGE: &str = "paygress-debian-12";

/// The backends bootstrap can prepare a host for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HostBackend {
    /// LXD from the host's packages, its storage pool and bridges, and the base image.
    Lxd,
    /// The embedded sandbox (no daemon; weaker isolation, see the README).
    Sandbox,
    /// A Proxmox VE host: an API token with the least privileges, LXC guests through its API.
    Proxmox,
}

impl HostBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            HostBackend::Lxd => "lxd",
            HostBackend::Sandbox => "sandbox",
            HostBackend::Proxmox => "proxmox",
        }
    }
}

/// What the operator chose.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    pub location: String,
    pub backend: HostBackend,
    pub mints: Vec<String>,
    pub relays: Vec<String>,
    pub tiers: Vec<Tier>,
    /// The address buyers SSH to.
    pub ssh_host: String,
    pub ports: (u16, u16),
    /// Sandbox only: serve the workloads' SSH on every address (`0.0.0.0`) and say in the
    /// config that selling the sandbox's weaker isolation to strangers is the operator's choice
    /// (`backend.sandbox.sell_to_strangers`). Otherwise it listens on 127.0.0.1 only.
    pub sandbox_public: bool,
    /// Proxmox only: what `[backend.proxmox]` says.
    pub proxmox: Option<PveSettings>,
}

/// How guests get their address on a Proxmox host (the backend's `network.mode`; `nat` needs
/// nftables rights the unprivileged service does not have, so bootstrap does not offer it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PveNetwork {
    /// The address each guest gets by DHCP on the bridge, read from the API.
    Dhcp,
    /// Addresses from a pool, with prefix length and gateway.
    Static {
        pool_start: std::net::Ipv4Addr,
        pool_end: std::net::Ipv4Addr,
        prefix_len: u8,
        gateway: std::net::Ipv4Addr,
    },
}

/// `[backend.proxmox]` as bootstrap writes it: the API on the host itself, the token it made,
/// the certificate fingerprint it read there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PveSettings {
    pub node: String,
    pub fingerprint: String,
    pub storage: String,
    pub bridge: String,
    /// The ostemplate volid (`local:vztmpl/…`) sold as the default image.
    pub template: String,
    pub network: PveNetwork,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0}: {1}")]
    TierFile(String, String),
    #[error("the configuration would be refused by the provider: {0}")]
    Invalid(String),
}

#[derive(serde::Deserialize)]
struct TierFile {
    tiers: Vec<Tier>,
}

/// Tiers from a TOML file of `[[tiers]]` tables (the config's own format).
pub fn read_tier_file(path: &std::path::Path) -> Result<Vec<Tier>, SettingsError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| SettingsError::TierFile(name.clone(), e.to_string()))?;
    let file: TierFile =
        toml::from_str(&text).map_err(|e| SettingsError::TierFile(name, e.message().into()))?;
    Ok(file.tiers)
}

/// The tiers offered when no tier file is given.
pub fn default_tiers() -> Vec<Tier> {
    vec![
        Tier {
            id: "basic".into(),
            name: "Basic".into(),
            description: "1 vCPU, 1 GiB RAM".into(),
            cpu_millicores: 1000,
            memory_mb: 1024,
            disk_gb: None,
            rate_msats_per_sec: 100,
        },
        Tier {
            id: "standard".into(),
            name: "Standard".into(),
            description: "2 vCPU, 4 GiB RAM".into(),
            cpu_millicores: 2000,
            memory_mb: 4096,
            disk_gb: None,
            rate_msats_per_sec: 400,
        },
    ]
}

fn table(pairs: Vec<(&str, toml::Value)>) -> toml::Value {
    toml::Value::Table(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn strings(v: &[String]) -> toml::Value {
    toml::Value::Array(v.iter().cloned().map(toml::Value::String).collect())
}

impl Settings {
    /// The config file's text, checked as the provider will check it.
    pub fn to_toml(&self) -> Result<String, SettingsError> {
        let s = |v: &str| toml::Value::String(v.to_string());
        let mut backend = vec![("kind", s(self.backend.as_str()))];
        if self.backend == HostBackend::Lxd {
            backend.push((
                "lxd",
                table(vec![
                    ("socket", s("/var/lib/lxd/unix.socket")),
                    ("egress_network", s("paygressbr0")),
                ]),
            ));
        }
        if let (HostBackend::Proxmox, Some(p)) = (self.backend, &self.proxmox) {
            let mut network = vec![];
            match &p.network {
                PveNetwork::Dhcp => network.push(("mode", s("dhcp"))),
                PveNetwork::Static {
                    pool_start,
                    pool_end,
                    prefix_len,
                    gateway,
                } => {
                    network.push(("mode", s("static")));
                    network.push(("pool_start", s(&pool_start.to_string())));
                    network.push(("pool_end", s(&pool_end.to_string())));
                    network.push(("prefix_len", toml::Value::Integer(i64::from(*prefix_len))));
                    network.push(("gateway", s(&gateway.to_string())));
                }
            }
            backend.push((
                "proxmox",
                table(vec![
                    ("url", s(crate::bootstrap::pve::API_URL)),
                    ("node", s(&p.node)),
                    ("token_id", s(crate::bootstrap::pve::TOKEN_ID)),
                    ("token_secret_file", s(crate::bootstrap::pve::TOKEN_FILE)),
                    ("fingerprint", s(&p.fingerprint)),
                    ("kind", s("lxc")),
                    ("storage", s(&p.storage)),
                    ("bridge", s(&p.bridge)),
                    ("templates", table(vec![(DEFAULT_IMAGE, s(&p.template))])),
                    ("network", table(network)),
                ]),
            ));
        }
        if self.backend == HostBackend::Sandbox && self.sandbox_public {
            backend.push((
                "sandbox",
                table(vec![
                    ("listen_address", s("0.0.0.0")),
                    ("sell_to_strangers", toml::Value::Boolean(true)),
                ]),
            ));
        }
        let tiers = toml::Value::try_from(&self.tiers)
            .map_err(|e| SettingsError::Invalid(e.to_string()))?;
        let doc = table(vec![
            (
                "provider",
                table(vec![
                    ("name", s(&self.name)),
                    ("location", s(&self.location)),
                    ("ssh_host", s(&self.ssh_host)),
                    ("data_dir", s(DATA_DIR)),
                    (
                        "ssh_port_range_start",
                        toml::Value::Integer(i64::from(self.ports.0)),
                    ),
                    (
                        "ssh_port_range_end",
                        toml::Value::Integer(i64::from(self.ports.1)),
                    ),
                ]),
            ),
            (
                "payments",
                table(vec![("whitelisted_mints", strings(&self.mints))]),
            ),
            ("tiers", tiers),
            (
                "nostr",
                table(vec![
                    ("relays", strings(&self.relays)),
                    ("private_key_file", s("nostr.key")),
                ]),
            ),
            ("backend", table(backend)),
        ]);
        let text = format!(
            "# Written by `paygress-cli bootstrap`; a rerun with other flags rewrites it.\n{}",
            toml::to_string(&doc).map_err(|e| SettingsError::Invalid(e.to_string()))?
        );
        Config::from_toml_with_env(&text, &BTreeMap::new())
            .map_err(|e| SettingsError::Invalid(e.to_string()))?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            name: "Node \"one\"'; rm -rf /".into(),
            location: "US-West $(id)".into(),
            backend: HostBackend::Sandbox,
            mints: vec!["http://127.0.0.1:3338".into()],
            relays: vec!["ws://127.0.0.1:7777".into()],
            tiers: default_tiers(),
            ssh_host: "203.0.113.7".into(),
            ports: (30000, 30009),
            sandbox_public: false,
            proxmox: None,
        }
    }

    #[test]
    fn values_round_trip_as_data_whatever_they_contain() {
        let text = settings().to_toml().unwrap();
        let cfg = Config::from_toml_with_env(&text, &BTreeMap::new()).unwrap();
        assert_eq!(cfg.provider.name, "Node \"one\"'; rm -rf /");
        assert_eq!(cfg.provider.location, "US-West $(id)");
        assert_eq!(cfg.tiers.len(), 2);
        assert_eq!(cfg.provider.ssh_port_range_end, 30009);
        assert!(cfg.nostr.private_key.is_none());
    }

    #[test]
    fn a_public_sandbox_is_an_explicit_choice() {
        let text = settings().to_toml().unwrap();
        let cfg = Config::from_toml_with_env(&text, &BTreeMap::new()).unwrap();
        assert_eq!(cfg.backend.sandbox.listen_address, "127.0.0.1");
        assert!(!cfg.backend.sandbox.sell_to_strangers);
        let mut s = settings();
        s.sandbox_public = true;
        let cfg = Config::from_toml_with_env(&s.to_toml().unwrap(), &BTreeMap::new()).unwrap();
        assert_eq!(cfg.backend.sandbox.listen_address, "0.0.0.0");
        assert!(cfg.backend.sandbox.sell_to_strangers);
    }

    #[test]
    fn a_proxmox_config_names_the_token_and_pins_the_certificate() {
        let mut s = settings();
        s.backend = HostBackend::Proxmox;
        s.proxmox = Some(PveSettings {
            node: "pve1".into(),
            fingerprint: vec!["0A"; 32].join(":"),
            storage: "local-lvm".into(),
            bridge: "vmbr1".into(),
            template: "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst".into(),
            network: PveNetwork::Dhcp,
        });
        let cfg = Config::from_toml_with_env(&s.to_toml().unwrap(), &BTreeMap::new()).unwrap();
        let p = &cfg.backend.proxmox;
        assert_eq!(p.url, "https://127.0.0.1:8006");
        assert_eq!(p.token_id, "paygress@pve!provider");
        assert_eq!(
            p.token_secret_file,
            std::path::PathBuf::from("/etc/paygress/proxmox-token")
        );
        assert_eq!(p.node, "pve1");
        assert_eq!(p.bridge, "vmbr1");
        assert_eq!(
            p.fingerprint.as_deref(),
            Some(vec!["0A"; 32].join(":").as_str())
        );
        assert_eq!(p.network.mode, crate::backend::proxmox::NetworkMode::Dhcp);
        // A static pool whose end precedes its start is refused as the provider would.
        s.proxmox.as_mut().unwrap().network = PveNetwork::Static {
            pool_start: "192.0.2.20".parse().unwrap(),
            pool_end: "192.0.2.10".parse().unwrap(),
            prefix_len: 24,
            gateway: "192.0.2.1".parse().unwrap(),
        };
        assert!(matches!(s.to_toml(), Err(SettingsError::Invalid(_))));
    }

    #[test]
    fn a_config_the_provider_would_refuse_is_refused_here() {
        let mut s = settings();
        s.mints.clear();
        assert!(matches!(s.to_toml(), Err(SettingsError::Invalid(_))));
        let mut s = settings();
        s.ports = (30010, 30000);
        assert!(matches!(s.to_toml(), Err(SettingsError::Invalid(_))));
    }
}
