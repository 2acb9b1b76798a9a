//! LXD backend (placeholder: the REST implementation lands with the LXD work).

use serde::{Deserialize, Serialize};

/// `[backend.lxd]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LxdConfig {
    /// Local unix socket of the LXD daemon.
    #[serde(default = "default_socket")]
    pub socket: std::path::PathBuf,
}

fn default_socket() -> std::path::PathBuf {
    "/var/lib/lxd/unix.socket".into()
}

impl Default for LxdConfig {
    fn default() -> Self {
        LxdConfig {
            socket: default_socket(),
        }
    }
}
