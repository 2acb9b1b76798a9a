//! The running provider's live state, in `<data_dir>/status.json`, for `provider status`.
//!
//! Why a file: `provider status` runs as another process (on the host, or over SSH from the
//! operator's machine) and must not take the data directory's lock or open the doors itself; the
//! provider knows which doors it opened, which relays it is connected to and when its last
//! heartbeat was accepted, and nobody else does. The file is rewritten whole (a temporary file
//! renamed over it, 0600) at start, when a door opens, on every heartbeat and at shutdown, so a
//! reader never sees half of it. It holds no secret: only public keys, URLs, counts and times.
//! Earnings are not in it: `provider status` reads them from the wallets, as `wallet balance`
//! does.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

/// File name in the data directory.
pub const FILE: &str = "status.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelayState {
    pub url: String,
    pub connected: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProviderStatus {
    pub npub: String,
    pub pid: u32,
    pub started_at: u64,
    pub updated_at: u64,
    /// Set when the provider stopped cleanly.
    pub stopped_at: Option<u64>,
    /// Doors open, e.g. `marketplace`, `contextvm`, `http 127.0.0.1:8080`.
    pub doors: Vec<String>,
    /// The relays of the marketplace door, as of the last heartbeat.
    pub relays: Vec<RelayState>,
    pub heartbeat_seconds: u64,
    /// When a relay last accepted the offer.
    pub last_heartbeat_at: Option<u64>,
    /// Workloads sold and not yet removed, as of the last update.
    pub live_workloads: u32,
}

struct Board {
    path: PathBuf,
    status: Mutex<ProviderStatus>,
}

static BOARD: OnceLock<Board> = OnceLock::new();

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write(path: &Path, s: &ProviderStatus) {
    let Ok(text) = serde_json::to_vec_pretty(s) else {
        return;
    };
    if let Err(e) = crate::fsutil::write_private(path, &text) {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}

/// Start publishing this process's state (once per process; later calls are ignored).
pub fn init(data_dir: &Path, npub: &str, heartbeat_seconds: u64) {
    let t = now();
    let status = ProviderStatus {
        npub: npub.to_string(),
        pid: std::process::id(),
        started_at: t,
        updated_at: t,
        heartbeat_seconds,
        ..Default::default()
    };
    let path = data_dir.join(FILE);
    write(&path, &status);
    let _ = BOARD.set(Board {
        path,
        status: Mutex::new(status),
    });
}

/// Change the state and rewrite the file (no-op when [`init`] was not called: tests, the
/// stdio server).
pub fn update(f: impl FnOnce(&mut ProviderStatus)) {
    let Some(b) = BOARD.get() else {
        return;
    };
    let Ok(mut s) = b.status.lock() else {
        return;
    };
    f(&mut s);
    s.updated_at = now();
    write(&b.path, &s);
}

/// A door is open.
pub fn door_open(name: impl Into<String>) {
    let name = name.into();
    update(|s| {
        if !s.doors.contains(&name) {
            s.doors.push(name);
        }
    });
}

/// The provider stopped: no door is open any more.
pub fn stopped() {
    update(|s| {
        s.doors.clear();
        s.relays.iter_mut().for_each(|r| r.connected = false);
        s.stopped_at = Some(now());
    });
}

/// Read the file of the provider whose data directory is `data_dir`.
pub fn read(data_dir: &Path) -> std::io::Result<ProviderStatus> {
    let text = std::fs::read(data_dir.join(FILE))?;
    serde_json::from_slice(&text).map_err(std::io::Error::other)
}

/// Whether the process that wrote `s` still runs (and did not stop cleanly).
pub fn is_running(s: &ProviderStatus) -> bool {
    if s.stopped_at.is_some() || s.pid == 0 {
        return false;
    }
    let Ok(pid) = libc::pid_t::try_from(s.pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = ProviderStatus {
            npub: "npub1x".into(),
            pid: std::process::id(),
            doors: vec!["marketplace".into()],
            relays: vec![RelayState {
                url: "ws://127.0.0.1:1".into(),
                connected: true,
            }],
            ..Default::default()
        };
        write(&dir.path().join(FILE), &s);
        assert_eq!(read(dir.path()).unwrap(), s);
        assert!(is_running(&s));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let stopped = ProviderStatus {
            stopped_at: Some(1),
            ..s
        };
        assert!(!is_running(&stopped));
    }
}
