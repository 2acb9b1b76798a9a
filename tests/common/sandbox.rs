//! Sandbox test helpers: cleanup of host-wide state a sandbox test leaves (inits, cgroups).

use std::sync::Arc;
use std::time::{Duration, Instant};

use paygress::backend::sandbox::SandboxBackend;

/// Kills and removes whatever a test left running (inits and cgroups are host-wide), even when
/// the test fails. Synchronous on purpose: it must not need the test's runtime, which is busy
/// dropping the test.
pub struct Cleanup {
    pub backend: Option<Arc<SandboxBackend>>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(b) = self.backend.take() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(b.state_dir()) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta: serde_json::Value = std::fs::read(entry.path().join("meta.json"))
                .ok()
                .and_then(|t| serde_json::from_slice(&t).ok())
                .unwrap_or_default();
            if let Some(pid) = meta["init_pid"].as_i64() {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if cmdline.starts_with(b"paygress-init") {
                    // SAFETY: plain syscall on the init this test started.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGKILL);
                    }
                }
            }
            for dir in b.cgroup_dirs(&name) {
                let deadline = Instant::now() + Duration::from_secs(5);
                while dir.exists()
                    && std::fs::remove_dir(&dir).is_err()
                    && Instant::now() < deadline
                {
                    for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|l| l.trim().parse::<i32>().ok())
                    {
                        // SAFETY: plain syscall on a process in this test's cgroup.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}
