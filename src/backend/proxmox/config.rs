//! `[backend.proxmox]`: what the operator configures, and every check that needs no server.
//!
//! Kept apart from the backend so the config can be read and validated at load time (a bad key
//! stops the start naming it) without touching the network.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::api::{self, Trust};
use super::nat::Nat;
use crate::secret::Secret;

/// Which kind of guest the backend makes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    /// A container from an `ostemplate` (`local:vztmpl/…`).
    #[default]
    Lxc,
    /// A linked clone of a cloud-init template VM (its vmid).
    Qemu,
}

/// How buyers reach a guest's SSH daemon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// An address from `pool_start..=pool_end` per guest; SSH at address:ssh_port.
    #[default]
    Static,
    /// The address the guest got by DHCP, read from the API.
    Dhcp,
    /// Guests on a NAT bridge with pool addresses; a host port DNAT'd to each.
    Nat,
}

/// `[backend.proxmox.network]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    #[serde(default)]
    pub mode: NetworkMode,
    /// First and last guest address handed out (`static` and `nat`).
    #[serde(default)]
    pub pool_start: Option<Ipv4Addr>,
    #[serde(default)]
    pub pool_end: Option<Ipv4Addr>,
    /// Prefix length of the guests' network.
    #[serde(default = "default_prefix")]
    pub prefix_len: u8,
    /// Gateway guests route through.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Port the guests' sshd listens on.
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,
    /// Argv that runs nft (`nat`), given the rules on stdin with `-f -`.
    #[serde(default = "default_nft")]
    pub nft_command: Vec<String>,
    /// The nftables table Paygress owns (`nat`).
    #[serde(default = "default_table")]
    pub nft_table: String,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            mode: NetworkMode::default(),
            pool_start: None,
            pool_end: None,
            prefix_len: default_prefix(),
            gateway: None,
            ssh_port: default_ssh_port(),
            nft_command: default_nft(),
            nft_table: default_table(),
        }
    }
}

/// `[backend.proxmox]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxmoxConfig {
    /// `https://HOST:8006`.
    #[serde(default)]
    pub url: String,
    /// Node the guests live on.
    #[serde(default = "default_node")]
    pub node: String,
    /// `USER@REALM!NAME`.
    #[serde(default)]
    pub token_id: String,
    /// File holding the token secret (mode 0600; never logged).
    #[serde(default)]
    pub token_secret_file: PathBuf,
    /// SHA-256 fingerprint of the node's certificate (`AB:CD:…`), as `pvenode cert info` shows.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Or: a CA certificate (PEM) the node's certificate chains to (`/etc/pve/pve-root-ca.pem`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub kind: GuestKind,
    /// Storage for root disks.
    #[serde(default = "default_storage")]
    pub storage: String,
    /// Bridge guests' `net0` attaches to.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// Offered image → `ostemplate` volume (LXC) or template VM id (QEMU).
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
    /// Range of vmids the backend may use.
    #[serde(default = "default_vmid_min")]
    pub vmid_min: u32,
    #[serde(default = "default_vmid_max")]
    pub vmid_max: u32,
    /// Swap per guest, MiB.
    #[serde(default)]
    pub swap_mb: u32,
    /// Root disk size when the tier names none, GiB.
    #[serde(default = "default_disk")]
    pub default_disk_gb: u32,
    /// QEMU: the disk of the template that gets resized to the tier's `disk_gb`.
    #[serde(default = "default_qemu_disk")]
    pub qemu_disk: String,
    /// LXC: allow nested containers (`features: nesting=1`).
    #[serde(default)]
    pub nesting: bool,
    /// Longest a PVE task may run.
    #[serde(default = "default_task_timeout")]
    pub task_timeout_seconds: u64,
    /// Longest a started guest may take until its SSH port answers.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_seconds: u64,
    #[serde(default)]
    pub network: NetworkConfig,
}

impl Default for ProxmoxConfig {
    fn default() -> Self {
        ProxmoxConfig {
            url: String::new(),
            node: default_node(),
            token_id: String::new(),
            token_secret_file: PathBuf::new(),
            fingerprint: None,
            ca_file: None,
            kind: GuestKind::default(),
            storage: default_storage(),
            bridge: default_bridge(),
            templates: BTreeMap::new(),
            vmid_min: default_vmid_min(),
            vmid_max: default_vmid_max(),
            swap_mb: 0,
            default_disk_gb: default_disk(),
            qemu_disk: default_qemu_disk(),
            nesting: false,
            task_timeout_seconds: default_task_timeout(),
            ready_timeout_seconds: default_ready_timeout(),
            network: NetworkConfig::default(),
        }
    }
}

fn default_prefix() -> u8 {
    24
}
fn default_ssh_port() -> u16 {
    22
}
fn default_nft() -> Vec<String> {
    vec!["nft".into()]
}
fn default_table() -> String {
    "paygress".into()
}
fn default_node() -> String {
    "pve".into()
}
fn default_storage() -> String {
    "local-lvm".into()
}
fn default_bridge() -> String {
    "vmbr0".into()
}
fn default_vmid_min() -> u32 {
    100_000
}
fn default_vmid_max() -> u32 {
    199_999
}
fn default_disk() -> u32 {
    8
}
fn default_qemu_disk() -> String {
    "scsi0".into()
}
fn default_task_timeout() -> u64 {
    300
}
fn default_ready_timeout() -> u64 {
    180
}

/// Read the token secret; the file must not be readable by anyone but its owner.
pub(super) fn read_secret(path: &std::path::Path) -> Result<Secret, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "backend.proxmox.token_secret_file: cannot read {}: {e}",
            path.display()
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "backend.proxmox.token_secret_file: {} must be mode 0600 (it is readable by others)",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "backend.proxmox.token_secret_file: cannot read {}: {e}",
            path.display()
        )
    })?;
    let secret = text.trim();
    if secret.is_empty() || secret.contains(char::is_whitespace) {
        return Err("backend.proxmox.token_secret_file: holds no single token secret".into());
    }
    Ok(Secret::new(secret))
}

impl ProxmoxConfig {
    /// Check everything that can be checked without the server.
    pub fn validate(&self) -> Result<Trust, String> {
        let key = |k: &str| format!("backend.proxmox.{k}");
        // Deadlines are `Instant + timeout`: a day is plenty, and keeps the sum far from overflow.
        for (k, t) in [
            ("task_timeout_seconds", self.task_timeout_seconds),
            ("ready_timeout_seconds", self.ready_timeout_seconds),
        ] {
            if t == 0 || t > 86_400 {
                return Err(format!("{}: must be 1 to 86400 s", key(k)));
            }
        }
        if self.url.is_empty() {
            return Err(format!("{}: required", key("url")));
        }
        let (user, name) = self
            .token_id
            .rsplit_once('!')
            .ok_or_else(|| format!("{}: must be USER@REALM!NAME", key("token_id")))?;
        if !user.contains('@') || name.is_empty() || self.token_id.contains(['=', ' ']) {
            return Err(format!("{}: must be USER@REALM!NAME", key("token_id")));
        }
        // PVE's own format (the one bootstrap checks the host's name with): capitals allowed.
        if crate::bootstrap::pve::check_node(&self.node).is_err() {
            return Err(format!("{}: not a node name", key("node")));
        }
        let trust = match (&self.fingerprint, &self.ca_file) {
            (Some(fp), None) => Trust::Fingerprint(
                api::parse_fingerprint(fp).map_err(|e| format!("backend.proxmox.{e}"))?,
            ),
            (None, Some(ca)) => Trust::CaFile(ca.clone()),
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{}: give fingerprint or ca_file, not both",
                    key("fingerprint")
                ))
            }
            (None, None) => {
                return Err(format!(
                    "{}: required (or ca_file): the node's certificate is never accepted unchecked",
                    key("fingerprint")
                ))
            }
        };
        if self.vmid_min < 100 || self.vmid_min > self.vmid_max || self.vmid_max > 999_999_999 {
            return Err(format!(
                "{}: vmid_min..=vmid_max must lie within 100..=999999999",
                key("vmid_min")
            ));
        }
        for (image, t) in &self.templates {
            let ok = match self.kind {
                GuestKind::Lxc => t.contains(":vztmpl/") && !t.contains(char::is_whitespace),
                GuestKind::Qemu => t.parse::<u32>().is_ok_and(|v| v >= 100),
            };
            if !ok {
                return Err(format!(
                    "{}: {image:?} → {t:?} is not {}",
                    key("templates"),
                    match self.kind {
                        GuestKind::Lxc => "an ostemplate volume like local:vztmpl/NAME",
                        GuestKind::Qemu => "the vmid of a template VM",
                    }
                ));
            }
        }
        let n = &self.network;
        if matches!(n.mode, NetworkMode::Static | NetworkMode::Nat) {
            match (n.pool_start, n.pool_end) {
                (Some(a), Some(b)) if u32::from(a) <= u32::from(b) => {}
                _ => {
                    return Err(format!(
                        "{}: pool_start..=pool_end required for static and nat modes",
                        key("network.pool_start")
                    ))
                }
            }
        }
        if n.prefix_len == 0 || n.prefix_len > 32 {
            return Err(format!("{}: must be 1..=32", key("network.prefix_len")));
        }
        if n.mode == NetworkMode::Nat {
            Nat::new(n.nft_command.clone(), n.nft_table.clone())
                .map_err(|e| format!("backend.proxmox.{e}"))?;
        }
        Ok(trust)
    }
}
