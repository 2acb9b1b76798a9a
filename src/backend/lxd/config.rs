//! `[backend.lxd]`: the LXD backend's settings, with their defaults and the checks the type
//! system cannot make (each message names the key). Split from `lxd.rs`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::egress;

/// `[backend.lxd]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LxdConfig {
    /// Local unix socket of the LXD daemon (used when `url` is not set).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// A remote LXD, `https://host:8443`. When set, the unix socket is not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// PEM client certificate the remote LXD trusts (`lxc config trust add`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// PEM server certificate of the remote LXD: pinned (exact match) by default, or a CA that
    /// signed it when `server_cert_is_ca` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cert: Option<PathBuf>,
    /// Treat `server_cert` as a CA (name and chain checked) instead of a pinned certificate.
    #[serde(default)]
    pub server_cert_is_ca: bool,
    /// LXD project the instances live in.
    #[serde(default = "default_project")]
    pub project: String,
    /// Profiles applied to every instance (they supply the root disk and the network).
    #[serde(default = "default_profiles")]
    pub profiles: Vec<String>,
    /// Storage pool for the root disk, overriding the profiles' (e.g. a btrfs or zfs pool, where
    /// a new container is a copy-on-write snapshot of the image instead of a full unpack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_pool: Option<String>,
    /// Host address the SSH proxy device listens on.
    #[serde(default = "default_listen")]
    pub ssh_listen_address: String,
    /// Where to read the SSH banner from when checking readiness. Default: 127.0.0.1 for a local
    /// LXD listening on a wildcard or loopback address, the listen address otherwise, and the
    /// URL's host for a remote LXD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_check_host: Option<String>,
    /// Allow nested containers (`security.nesting`). Off unless the operator needs it.
    #[serde(default)]
    pub nesting: bool,
    /// Most processes one container may run (`limits.processes`): a fork bomb stays inside.
    #[serde(default = "default_pids_max")]
    pub pids_max: u32,
    /// Give every container a host id range of its own (`security.idmap.isolated`), so root in
    /// one container is not the same host uid as root in another.
    #[serde(default = "default_true")]
    pub idmap_isolated: bool,
    /// A managed bridge dedicated to workloads: their `eth0` goes on it, and the backend puts an
    /// egress ACL on it (no host, link-local or private destinations; see `egress`). Unset: the
    /// bridge `provider/lxd-setup.sh` makes ([`DEFAULT_EGRESS_NETWORK`]) when LXD has it;
    /// without it the start is refused unless `allow_unfiltered_egress` says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_network: Option<String>,
    /// Accept workloads on the profiles' own network with no egress policy: they can then reach
    /// the host's addresses, each other and private networks. Off: such a start is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unfiltered_egress: bool,
    /// More destinations (CIDRs) the egress ACL rejects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_deny: Vec<String>,
    /// Warm containers kept ready per (tier, image): booted, unsold, with no login and no
    /// forwarded port, so a spawn only sets the login and adds the SSH forward (see
    /// `lxd/pool.rs`). Each costs an idle container's memory (about 25 MiB here). 0: none.
    #[serde(default)]
    pub warm_pool: u32,
    /// Timeout of each ordinary LXD request.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u64,
    /// How long create/resume may wait for the container to answer SSH.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_seconds: u64,
    /// How long a clean stop may take before the container is stopped by force.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_seconds: u64,
}

fn default_socket() -> PathBuf {
    "/var/lib/lxd/unix.socket".into()
}
fn default_project() -> String {
    "default".into()
}
fn default_profiles() -> Vec<String> {
    vec!["default".into()]
}
fn default_listen() -> String {
    "0.0.0.0".into()
}
fn default_pids_max() -> u32 {
    512
}
/// The workload bridge `provider/lxd-setup.sh` creates, used when `egress_network` is unset.
pub const DEFAULT_EGRESS_NETWORK: &str = "paygressbr0";

/// Which network gets the egress ACL: the configured one; else the default workload bridge when
/// LXD has it; else none, which only `allow_unfiltered_egress` accepts. `Err` says how to fix it.
pub(super) fn egress_choice(
    cfg: &LxdConfig,
    default_exists: bool,
) -> Result<Option<String>, String> {
    match (
        &cfg.egress_network,
        default_exists,
        cfg.allow_unfiltered_egress,
    ) {
        (Some(n), _, _) => Ok(Some(n.clone())),
        (None, true, _) => Ok(Some(DEFAULT_EGRESS_NETWORK.to_string())),
        (None, false, true) => Ok(None),
        (None, false, false) => Err(format!(
            "backend.lxd: no network dedicated to workloads, so containers would share LXD's \
             bridge with the host and with each other, unfiltered. Run provider/lxd-setup.sh \
             (it makes {DEFAULT_EGRESS_NETWORK}), or set backend.lxd.egress_network to a managed \
             bridge of your own, or set backend.lxd.allow_unfiltered_egress = true to accept \
             that containers can reach the host's addresses, each other and private networks"
        )),
    }
}

fn default_true() -> bool {
    true
}
fn default_request_timeout() -> u64 {
    30
}
fn default_ready_timeout() -> u64 {
    90
}
fn default_stop_timeout() -> u64 {
    10
}

impl Default for LxdConfig {
    fn default() -> Self {
        LxdConfig {
            socket: default_socket(),
            url: None,
            client_cert: None,
            client_key: None,
            server_cert: None,
            server_cert_is_ca: false,
            project: default_project(),
            profiles: default_profiles(),
            storage_pool: None,
            ssh_listen_address: default_listen(),
            ssh_check_host: None,
            nesting: false,
            pids_max: default_pids_max(),
            idmap_isolated: true,
            egress_network: None,
            allow_unfiltered_egress: false,
            egress_deny: Vec::new(),
            warm_pool: 0,
            request_timeout_seconds: default_request_timeout(),
            ready_timeout_seconds: default_ready_timeout(),
            stop_timeout_seconds: default_stop_timeout(),
        }
    }
}

impl LxdConfig {
    /// Check the settings that the type system cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !is_safe_token(&self.project) {
            return Err(format!(
                "backend.lxd.project: {:?} is not a valid LXD project name",
                self.project
            ));
        }
        if self.profiles.iter().any(|p| !is_safe_token(p)) {
            return Err(
                "backend.lxd.profiles: profile names may hold only letters, digits, '-' and '_'"
                    .into(),
            );
        }
        if self
            .storage_pool
            .as_deref()
            .is_some_and(|p| !is_safe_token(p))
        {
            return Err(
                "backend.lxd.storage_pool: pool names may hold only letters, digits, '-' and '_'"
                    .into(),
            );
        }
        if self
            .egress_network
            .as_deref()
            .is_some_and(|n| !is_safe_token(n) || n.len() > 15)
        {
            return Err(
                "backend.lxd.egress_network: a network name of at most 15 letters, digits, '-' \
                 and '_'"
                    .into(),
            );
        }
        egress::denied(&self.egress_deny)?;
        if self.pids_max == 0 {
            return Err("backend.lxd.pids_max: must be greater than 0".into());
        }
        if self.ssh_listen_address.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "backend.lxd.ssh_listen_address: {:?} is not an IP address",
                self.ssh_listen_address
            ));
        }
        if self.request_timeout_seconds == 0 || self.ready_timeout_seconds == 0 {
            return Err("backend.lxd: timeouts must be greater than 0".into());
        }
        // Deadlines are `Instant + timeout`: a day is plenty, and keeps the sum far from overflow.
        if [
            self.request_timeout_seconds,
            self.ready_timeout_seconds,
            self.stop_timeout_seconds,
        ]
        .iter()
        .any(|t| *t > 86_400)
        {
            return Err("backend.lxd: timeouts must be at most 86400 s (a day)".into());
        }
        if let Some(url) = &self.url {
            let u = reqwest::Url::parse(url).map_err(|e| format!("backend.lxd.url: {e}"))?;
            if u.scheme() != "https" || u.host_str().is_none() {
                return Err("backend.lxd.url: must be https://HOST[:PORT]".into());
            }
            for (key, v) in [
                ("client_cert", &self.client_cert),
                ("client_key", &self.client_key),
                ("server_cert", &self.server_cert),
            ] {
                if v.is_none() {
                    return Err(format!(
                        "backend.lxd.{key}: required for a remote LXD (url is set)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// LXD project, profile and pool names as this backend accepts them: safe in a URL unescaped.
pub(super) fn is_safe_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod egress_choice_tests {
    use super::*;

    #[test]
    fn unset_egress_uses_the_setup_bridge_or_is_refused_unless_allowed() {
        let mut c = LxdConfig::default();
        assert_eq!(
            egress_choice(&c, true).unwrap().as_deref(),
            Some(DEFAULT_EGRESS_NETWORK)
        );
        let e = egress_choice(&c, false).unwrap_err();
        assert!(
            e.contains("allow_unfiltered_egress") && e.contains("lxd-setup.sh"),
            "{e}"
        );
        c.allow_unfiltered_egress = true;
        assert_eq!(egress_choice(&c, false).unwrap(), None);
        c.egress_network = Some("mine".into());
        assert_eq!(egress_choice(&c, false).unwrap().as_deref(), Some("mine"));
    }
}
