//! Spawn → SSH-ready on the real LXD daemon: `LxdBackend` against the `lxc` command-line flow.
//!
//! Not a test: a measurement. For N rounds (default 5), alternately:
//! - **ours**: `LxdBackend::create` (one REST create with limits + proxy device, start, user via
//!   exec with argv + environment, SSH banner wait), then the first real login with `sshpass ssh`;
//! - **cli**: what an operator would type — `lxc launch` with the same limits, `lxc exec` useradd,
//!   `lxc exec` chpasswd, `lxc config device add … proxy`, then `sshpass ssh` until it logs in.
//!
//! Both end at the same point, the first successful SSH login on 127.0.0.1:PORT, on the same
//! image, and each instance is deleted (untimed) before the next round starts. The rounds are
//! interleaved so that drift (page cache, disk) hits both sides alike.
//!
//! Run: `cargo bench --bench lxd_spawn -- 10` (or `LXD_BENCH_N=10`), or without a release build:
//! `cargo test --bench lxd_spawn -- 10`. Image: `LXD_BENCH_IMAGE` (default paygress-debian-12).
//! `LXD_BENCH_IDMAP_ISOLATED=0`: ours without `security.idmap.isolated` (the default is on).
//! Storage pool: `LXD_BENCH_POOL` (default: the default profile's, `dir` after lxd-setup.sh) —
//! used by both sides (`storage_pool` in our config, `lxc launch -s POOL` for the CLI).
//! Needs root, LXD set up (`provider/lxd-setup.sh`), the image (`provider/build-base-image.sh`),
//! `lxc`, `ssh` and `sshpass`.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use paygress::backend::lxd::{LxdBackend, LxdConfig};
use paygress::backend::{Backend, WorkloadSpec};
use paygress::config::Tier;
use paygress::secret::Secret;

const USER: &str = "bench";

/// Everything the bench made, removed at the end whatever happens.
static MADE: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn made(name: &str) {
    if let Ok(mut m) = MADE.lock() {
        m.push(name.to_string());
    }
}

struct CleanupOnExit;

impl Drop for CleanupOnExit {
    fn drop(&mut self) {
        let names: Vec<String> = MADE.lock().map(|m| m.clone()).unwrap_or_default();
        for n in names {
            let _ = Command::new("lxc")
                .args(["delete", "--force", &n])
                .stderr(Stdio::null())
                .stdout(Stdio::null())
                .status();
        }
    }
}

fn free_port() -> u16 {
    for _ in 0..200 {
        let p: u16 = 40_000 + (rand::random::<u16>() % 20_000);
        if std::net::TcpListener::bind(("0.0.0.0", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port");
}

fn password() -> String {
    format!("Bench-{:016x}", rand::random::<u64>())
}

fn tier() -> Tier {
    Tier {
        id: "bench".into(),
        name: "bench".into(),
        description: String::new(),
        cpu_millicores: 1000,
        memory_mb: 512,
        disk_gb: None,
        rate_msats_per_sec: 1,
    }
}

fn lxc(args: &[&str]) -> Result<(), String> {
    let out = Command::new("lxc")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("lxc: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "lxc {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One `sshpass ssh … true` attempt.
fn ssh_once(port: u16, pw: &str) -> bool {
    Command::new("sshpass")
        .arg("-e")
        .arg("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=QUIET",
        ])
        .args([
            "-o",
            "ConnectTimeout=5",
            "-o",
            "PubkeyAuthentication=no",
            "-p",
        ])
        .arg(port.to_string())
        .arg(format!("{USER}@127.0.0.1"))
        .arg("true")
        .env("SSHPASS", pw)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Retry the login until it works (the CLI flow has no readiness signal of its own).
fn ssh_until_login(port: u16, pw: &str, limit: Duration) -> Result<(), String> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if ssh_once(port, pw) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("no SSH login on port {port} within {limit:?}"))
}

struct Ours {
    create: Duration,
    login: Duration,
}

async fn ours(b: &LxdBackend, image: &str, round: usize) -> Result<Ours, String> {
    let name = format!("pgb-ours-{:06x}-{round}", rand::random::<u32>() & 0xff_ffff);
    let pw = password();
    let spec = WorkloadSpec {
        name: name.clone(),
        provider_id: "paygress-bench".into(),
        tier: tier(),
        image: image.into(),
        ssh_username: USER.into(),
        ssh_password: Secret::new(pw.clone()),
        ssh_public_key: None,
        host_port: Some(free_port()),
        expires_at: 4_000_000_000,
    };
    made(&name);
    let t0 = Instant::now();
    b.create(&spec).await.map_err(|e| format!("create: {e}"))?;
    let create = t0.elapsed();
    let port = spec.host_port.unwrap_or_default();
    tokio::task::spawn_blocking(move || ssh_until_login(port, &pw, Duration::from_secs(60)))
        .await
        .map_err(|e| e.to_string())??;
    let login = t0.elapsed();
    b.destroy(&name)
        .await
        .map_err(|e| format!("destroy: {e}"))?;
    Ok(Ours { create, login })
}

struct Cli {
    launch: Duration,
    user: Duration,
    proxy: Duration,
    login: Duration,
}

fn cli(image: &str, pool: Option<&str>, round: usize) -> Result<Cli, String> {
    let name = format!("pgb-cli-{:06x}-{round}", rand::random::<u32>() & 0xff_ffff);
    let pw = password();
    let port = free_port();
    made(&name);
    let t0 = Instant::now();
    let mut launch_args = vec![
        "launch",
        image,
        name.as_str(),
        "-c",
        "limits.cpu=1",
        "-c",
        "limits.memory=512MiB",
    ];
    if let Some(p) = pool {
        launch_args.extend(["-s", p]);
    }
    lxc(&launch_args)?;
    let launch = t0.elapsed();
    lxc(&[
        "exec",
        &name,
        "--",
        "useradd",
        "-m",
        "-s",
        "/bin/bash",
        USER,
    ])?;
    let env = format!("P={USER}:{pw}");
    lxc(&[
        "exec",
        &name,
        "--env",
        &env,
        "--",
        "sh",
        "-c",
        "printf '%s\\n' \"$P\" | chpasswd",
    ])?;
    let user = t0.elapsed();
    let listen = format!("listen=tcp:0.0.0.0:{port}");
    lxc(&[
        "config",
        "device",
        "add",
        &name,
        "ssh",
        "proxy",
        &listen,
        "connect=tcp:127.0.0.1:22",
    ])?;
    let proxy = t0.elapsed();
    ssh_until_login(port, &pw, Duration::from_secs(60))?;
    let login = t0.elapsed();
    lxc(&["delete", "--force", &name])?;
    Ok(Cli {
        launch,
        user: user - launch,
        proxy: proxy - user,
        login,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .or_else(|| {
            std::env::var("LXD_BENCH_N")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(5)
        .max(1);
    let image = std::env::var("LXD_BENCH_IMAGE").unwrap_or_else(|_| "paygress-debian-12".into());
    let pool = std::env::var("LXD_BENCH_POOL")
        .ok()
        .filter(|p| !p.is_empty());
    // RUST_LOG=paygress=debug shows the backend's phase timings.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let _cleanup = CleanupOnExit;
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let backend = rt
        .block_on(LxdBackend::connect(LxdConfig {
            storage_pool: pool.clone(),
            // LXD_BENCH_IDMAP_ISOLATED=0 measures without per-container id ranges (as before
            // they were the default).
            idmap_isolated: std::env::var("LXD_BENCH_IDMAP_ISOLATED").as_deref() != Ok("0"),
            ..LxdConfig::default()
        }))
        .unwrap_or_else(|e| panic!("LXD is not usable: {e}"));

    let pool_name = pool.clone().unwrap_or_else(|| "profile default".into());
    println!("LXD spawn → first SSH login, {n} rounds each, image {image}, pool {pool_name}, tier 1 vCPU / 512 MiB");
    println!();
    println!(
        "{:>5} | {:>12} {:>12} | {:>9} {:>9} {:>9} {:>12}",
        "round", "ours:create", "ours:login", "cli:launch", "cli:user", "cli:proxy", "cli:login"
    );
    let (mut o_create, mut o_login, mut c_login) = (Vec::new(), Vec::new(), Vec::new());
    let (mut c_launch, mut c_user, mut c_proxy) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..n {
        // Alternate which side goes first, so neither always follows the other's delete.
        let (o, c) = if round % 2 == 0 {
            let o = rt.block_on(ours(&backend, &image, round));
            (o, cli(&image, pool.as_deref(), round))
        } else {
            let c = cli(&image, pool.as_deref(), round);
            (rt.block_on(ours(&backend, &image, round)), c)
        };
        let o = o.unwrap_or_else(|e| panic!("ours, round {round}: {e}"));
        let c = c.unwrap_or_else(|e| panic!("cli, round {round}: {e}"));
        println!(
            "{:>5} | {:>11.2}s {:>11.2}s | {:>8.2}s {:>8.2}s {:>8.2}s {:>11.2}s",
            round + 1,
            secs(o.create),
            secs(o.login),
            secs(c.launch),
            secs(c.user),
            secs(c.proxy),
            secs(c.login)
        );
        o_create.push(secs(o.create));
        o_login.push(secs(o.login));
        c_launch.push(secs(c.launch));
        c_user.push(secs(c.user));
        c_proxy.push(secs(c.proxy));
        c_login.push(secs(c.login));
        std::thread::sleep(Duration::from_millis(500));
    }
    let (mo_create, mo_login, mc_login) = (
        median(&mut o_create),
        median(&mut o_login),
        median(&mut c_login),
    );
    println!(
        "{:>5} | {:>11.2}s {:>11.2}s | {:>8.2}s {:>8.2}s {:>8.2}s {:>11.2}s",
        "med",
        mo_create,
        mo_login,
        median(&mut c_launch),
        median(&mut c_user),
        median(&mut c_proxy),
        mc_login
    );
    println!();
    println!("median spawn → first SSH login: ours {mo_login:.2} s, lxc CLI {mc_login:.2} s");
    println!(
        "ratio ours/cli: {:.2}  (target ≤ 0.50)",
        mo_login / mc_login
    );
    println!("(ours:create is when LxdBackend::create returned, i.e. SSH answered with this instance's banner)");
}
