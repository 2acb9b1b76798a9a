//! The on-disk record of one workload: `<state_dir>/<name>/meta.json`, mode 0600.
//!
//! The sandbox has no daemon to ask "what do you run?", so this file *is* the backend's memory:
//! who owns the workload (`provider_id`, for `list`), its login, deadline, port and tier, which
//! host ids it maps (or that it is rootless), and which process is its init (pid plus start
//! time, so a recycled pid is never mistaken for it). A restarted provider rebuilds everything
//! from these files. Writes go through [`crate::fsutil::write_private`]: atomic (temp file +
//! rename) and never readable by anyone but the provider's user. The password is stored only as
//! a salted hash.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::auth::PasswordHash;
use crate::config::Tier;

const FILE: &str = "meta.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub name: String,
    pub provider_id: String,
    pub user: String,
    pub host_port: u16,
    pub expires_at: u64,
    pub tier: Tier,
    pub image: String,
    pub password: PasswordHash,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Host uid/gid that id 0 inside maps to (a range of `jail::ID_RANGE` ids).
    pub host_base: u32,
    /// The running init, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_start: Option<u64>,
    /// Stopped on purpose (expiry); a workload whose init died otherwise (host reboot) is
    /// brought back by the next `open`.
    #[serde(default)]
    pub stopped: bool,
    /// Made by a rootless provider (its home belongs to that provider's uid, not to a mapped
    /// range): only a rootless provider can start it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rootless: bool,
}

impl Meta {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE)
    }

    /// Read a workload's record; `None` if it has none (not ours, or half made).
    pub fn load(dir: &Path) -> Option<Meta> {
        let text = std::fs::read(Self::path(dir)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::fsutil::write_private(&Self::path(dir), &json)
    }
}
