//! Shared test harness: a real mint, a backend double, configs on temporary data dirs.
#![allow(dead_code)]

pub mod backend;
pub mod cvm;
pub mod faulty;
pub mod http_demo;
pub mod kube;
pub mod kubesim;
pub mod mint;
pub mod netns;
pub mod nginx;
pub mod nutshell;
pub mod proxmox;
pub mod sandbox;
pub mod seller;
pub mod ssh;
pub mod ts;

use std::collections::BTreeMap;
use std::path::Path;

use paygress::config::Config;

/// A config for a provider whose data lives in `data_dir`, accepting tokens from `mints`,
/// with one tier "basic" at `rate` msat/s and SSH ports `ports`.
pub fn config(data_dir: &Path, mints: &[&str], rate: u64, ports: (u16, u16)) -> Config {
    let mints: Vec<String> = mints.iter().map(|m| format!("{m:?}")).collect();
    let text = format!(
        r#"
[provider]
name = "Test provider"
location = "Loopback"
ssh_host = "127.0.0.1"
data_dir = {dir:?}
minimum_duration_seconds = 60
ssh_port_range_start = {start}
ssh_port_range_end = {end}
expiry_grace_seconds = 600
reaper_interval_seconds = 1

[payments]
whitelisted_mints = [{mints}]

[images]
allowed = ["paygress-debian-12", "alpine"]
default = "paygress-debian-12"

[[tiers]]
id = "basic"
name = "Basic"
description = "1 vCPU, 512 MiB"
cpu_millicores = 1000
memory_mb = 512
rate_msats_per_sec = {rate}

[[tiers]]
id = "large"
name = "Large"
description = "2 vCPU, 2 GiB"
cpu_millicores = 2000
memory_mb = 2048
rate_msats_per_sec = {rate2}

[backend]
kind = "sandbox"
"#,
        dir = data_dir.display().to_string(),
        start = ports.0,
        end = ports.1,
        mints = mints.join(", "),
        rate2 = rate * 4,
    );
    Config::from_toml_with_env(&text, &BTreeMap::new()).expect("test config")
}

/// A block of `n` consecutive host ports that are free right now (best effort, racy by nature
/// but the provider re-checks each port when it allocates one).
pub fn free_port_block(n: u16) -> (u16, u16) {
    use rand::Rng;
    for _ in 0..200 {
        let start: u16 = rand::thread_rng().gen_range(20_000..60_000);
        let end = start + n - 1;
        if (start..=end).all(|p| std::net::TcpListener::bind(("0.0.0.0", p)).is_ok()) {
            return (start, end);
        }
    }
    panic!("no free port block of {n}");
}

/// The LXD instance behind a pod id (`pg-` and the first 12 hex digits of its public key).
pub fn lxd_instance_name(pod_npub: &str) -> String {
    use nostr_sdk::prelude::{FromBech32, PublicKey};
    let pk = PublicKey::from_bech32(pod_npub).expect("pod npub");
    format!("pg-{}", &pk.to_hex()[..12])
}

/// Removes a test's LXD container however the test ends (the provider keeps workloads across
/// its own restarts on purpose, so stopping a server does not).
pub struct LxdCleanup(pub String);

impl LxdCleanup {
    pub fn for_pod(pod_npub: &str) -> LxdCleanup {
        LxdCleanup(lxd_instance_name(pod_npub))
    }
}

impl Drop for LxdCleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("lxc")
            .args(["delete", "--force", &self.0])
            .output();
    }
}

/// A log writer that keeps everything written, for searching.
#[derive(Clone, Default)]
pub struct Capture(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

/// OpenSSH client options for logging in to fresh test workloads.
pub const SSH_OPTS: [&str; 8] = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "ConnectTimeout=10",
];
