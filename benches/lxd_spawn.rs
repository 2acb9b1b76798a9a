//! Spawn → first SSH login on the real LXD daemon: a paid `spawn_pod` from the warm pool, the
//! same from the cold path, and the `lxc` command-line flow, interleaved in one run.
//!
//! Not a test: a measurement. For N rounds (default 10), in a rotating order:
//! - **warm**: a paid `spawn_pod` through the MCP door (an rmcp client in this process, over a
//!   pipe, against `McpDoor` on a `Provider` whose LXD backend has `warm_pool`), the token
//!   swapped at the in-process test mint, the container taken from the pool; then the first
//!   real login with `sshpass ssh … true`. The pool is refilled (untimed) before each warm round.
//! - **agent**: the same warm spawn, with the first login the way buyers' agents log in: a key,
//!   through the project's own russh client (`paygress::buyer::ssh::run`).
//! - **cold**: the same paid `spawn_pod` on a second provider without a pool: LXD clones the
//!   image and boots the container.
//! - **cli**: what an operator would type — `lxc launch` with the same limits, `lxc exec`
//!   useradd and chpasswd, `lxc config device add … proxy`, then `sshpass ssh` until it logs in.
//!
//! All end at the same point, the first successful SSH login on 127.0.0.1:PORT, on the same
//! image and pool (the paid sides stage a key and a password, the CLI flow sets a password only);
//! a login refused after a spawn's answer is counted and printed (there should be none); the
//! agent's login pins the host keys the answer names; each instance is deleted (untimed) before the next round. Beside them, to show
//! what bounds the warm path, every round also times the same `spawn_pod` on a provider whose
//! backend does nothing (the money path: MCP, validation, swap, journal) and, into the warm
//! container once it is up, one more login of each kind alone: OpenSSH with the password
//! (sshpass), OpenSSH with the key, and russh with the key (the SSH client's and sshd's own cost).
//!
//! Run: `cargo bench --bench lxd_spawn -- 10` (or `LXD_BENCH_N=10`). Image: `LXD_BENCH_IMAGE`
//! (default paygress-debian-12). Pool size: `LXD_BENCH_WARM` (default 2). Storage pool:
//! `LXD_BENCH_POOL` (default: the default profile's) — used by all sides.
//! `LXD_BENCH_IDMAP_ISOLATED=0`: both LXD providers without `security.idmap.isolated`.
//! `LXD_BENCH_COLD_IMAGE_B=ALIAS`: one more side, the cold path on another image (an A/B of
//! image changes in the same interleaved run).
//! Needs root, LXD set up (`provider/lxd-setup.sh`), the image (`provider/build-base-image.sh`),
//! `lxc`, `ssh` and `sshpass`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::backend::FakeBackend;
use common::mint::TestMint;
use paygress::backend::lxd::{LxdBackend, LxdConfig, KEY_POOL, KEY_PROVIDER};
use paygress::backend::Backend;
use paygress::doors::mcp::McpDoor;
use paygress::Provider;
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::{RoleClient, ServiceExt};

const USER: &str = "bench";

/// The buyer's key: russh's for the agent side, the same one in a file for OpenSSH.
struct Key {
    key: russh::keys::PrivateKey,
    public: String,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn make_key() -> Key {
    let key =
        russh::keys::PrivateKey::random(&mut rand::rngs::OsRng, russh::keys::Algorithm::Ed25519)
            .expect("key");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("id_ed25519");
    let text = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .expect("key text");
    paygress::fsutil::write_private(&file, text.as_bytes()).expect("key file");
    Key {
        public: paygress::buyer::ssh::public_line(&key),
        key,
        file,
        _dir: dir,
    }
}

/// Every instance the CLI side made and every provider id, removed at the end whatever happens.
static MADE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static OWNERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn made(name: &str) {
    if let Ok(mut m) = MADE.lock() {
        m.push(name.to_string());
    }
}

struct CleanupOnExit;

impl Drop for CleanupOnExit {
    fn drop(&mut self) {
        let mut names: Vec<String> = MADE.lock().map(|m| m.clone()).unwrap_or_default();
        let owners: Vec<String> = OWNERS.lock().map(|m| m.clone()).unwrap_or_default();
        if let Ok(out) = Command::new("lxc")
            .args(["query", "--force-local", "/1.0/instances?recursion=1"])
            .output()
        {
            let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            for i in all.as_array().into_iter().flatten() {
                let mine = [KEY_POOL, KEY_PROVIDER].iter().any(|k| {
                    i["config"][*k]
                        .as_str()
                        .is_some_and(|v| owners.iter().any(|o| o == v))
                });
                if mine {
                    if let Some(n) = i["name"].as_str() {
                        names.push(n.to_string());
                    }
                }
            }
        }
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
fn ssh_once(port: u16, user: &str, pw: &str) -> bool {
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
        .arg(format!("{user}@127.0.0.1"))
        .arg("true")
        .env("SSHPASS", pw)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// One OpenSSH key login (`ssh -i KEY … true`).
fn ssh_key_once(port: u16, user: &str, key: &std::path::Path) -> bool {
    Command::new("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=QUIET",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "BatchMode=yes",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(key)
        .arg("-p")
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// One key login with the project's own client (what `paygress-cli mcp` uses), running `true`,
/// with the host key pinned to `pinned` (the spawn answer's fingerprints) as the agent does.
async fn russh_once(
    port: u16,
    user: &str,
    key: &russh::keys::PrivateKey,
    pinned: &[String],
) -> bool {
    matches!(
        paygress::buyer::ssh::run("127.0.0.1", port, user, key, pinned, "true", Duration::from_secs(10)).await,
        Ok(o) if o.exit_code == Some(0)
    )
}

/// Retry the login until it works (the CLI flow has no readiness signal of its own); how many
/// attempts failed first (after a spawn's answer there should be none).
fn ssh_until_login(port: u16, user: &str, pw: &str, limit: Duration) -> Result<u32, String> {
    let end = Instant::now() + limit;
    let mut failed = 0;
    while Instant::now() < end {
        if ssh_once(port, user, pw) {
            return Ok(failed);
        }
        failed += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("no SSH login on port {port} within {limit:?}"))
}

/// A provider behind an in-process MCP door, and a client session to it.
struct Seller {
    provider: Arc<Provider>,
    client: RunningService<RoleClient, ()>,
    _dir: tempfile::TempDir,
}

async fn seller(mint: &TestMint, backend: Arc<dyn Backend>, image: &str) -> Seller {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::config(dir.path(), &[&mint.url], 1, common::free_port_block(64));
    cfg.tiers.truncate(1);
    cfg.images.allowed = vec![image.to_string()];
    cfg.images.default = image.to_string();
    let provider = Provider::open(cfg, backend).await.expect("provider");
    if let Ok(mut o) = OWNERS.lock() {
        o.push(provider.provider_id().to_string());
    }
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let door = McpDoor::local(provider.clone());
    tokio::spawn(async move {
        if let Ok(s) = door.serve(theirs).await {
            let _ = s.waiting().await;
        }
    });
    let client = ().serve(ours).await.expect("MCP session");
    Seller {
        provider,
        client,
        _dir: dir,
    }
}

struct Paid {
    /// spawn_pod called → its answer.
    answer: Duration,
    /// spawn_pod called → first successful login.
    login: Duration,
    /// Later logins, each alone: OpenSSH with the password, OpenSSH with the key, russh with the
    /// key (zero when not measured).
    ssh_only: Duration,
    ssh_key: Duration,
    russh_key: Duration,
    /// Login attempts refused after the answer (a spawn answers only once a login works).
    refused: u32,
    name: String,
}

/// How the first login after a spawn is made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Login {
    /// None: the money path alone.
    Skip,
    /// `sshpass ssh … true` with the password, then one login of each kind alone.
    Password,
    /// russh with the key, as the buyer's agent does.
    Agent,
}

/// A paid `spawn_pod` through the MCP door, then the first real login.
async fn paid_spawn(s: &Seller, mint: &TestMint, key: &Key, login: Login) -> Result<Paid, String> {
    let token = mint.token(100).await;
    let pw = password();
    let args = serde_json::json!({
        "cashu_token": token,
        "ssh_username": USER,
        "ssh_password": pw,
        "ssh_public_key": key.public,
    });
    let args = args.as_object().cloned().unwrap_or_default();
    let t0 = Instant::now();
    let r = s
        .client
        .call_tool(CallToolRequestParams::new("spawn_pod").with_arguments(args))
        .await
        .map_err(|e| format!("spawn_pod: {e}"))?;
    let answer = t0.elapsed();
    let body = r.structured_content.clone().unwrap_or_default();
    if r.is_error == Some(true) {
        return Err(format!("spawn_pod failed: {body}"));
    }
    let port = body["node_port"].as_u64().ok_or("no node_port")? as u16;
    let pod = body["pod_npub"].as_str().ok_or("no pod_npub")?.to_string();
    let pinned: Vec<String> = body["ssh_host_key_fingerprints"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let name = s
        .provider
        .store()
        .workload(&pod)
        .map_err(|e| e.to_string())?
        .ok_or("no workload row")?
        .name;
    let (mut login_t, mut ssh_only, mut ssh_key, mut russh_key) =
        (answer, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut refused = 0;
    match login {
        Login::Skip => {}
        Login::Agent => {
            let end = Instant::now() + Duration::from_secs(60);
            while !russh_once(port, USER, &key.key, &pinned).await {
                refused += 1;
                if Instant::now() > end {
                    return Err(format!("no russh login on port {port}"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            login_t = t0.elapsed();
        }
        Login::Password => {
            let pw2 = pw.clone();
            refused = tokio::task::spawn_blocking(move || {
                ssh_until_login(port, USER, &pw2, Duration::from_secs(60))
            })
            .await
            .map_err(|e| e.to_string())??;
            login_t = t0.elapsed();
            let t1 = Instant::now();
            let ok = tokio::task::spawn_blocking(move || ssh_once(port, USER, &pw))
                .await
                .unwrap_or(false);
            if !ok {
                return Err("the second login failed".into());
            }
            ssh_only = t1.elapsed();
            let file = key.file.clone();
            let t2 = Instant::now();
            let ok = tokio::task::spawn_blocking(move || ssh_key_once(port, USER, &file))
                .await
                .unwrap_or(false);
            if !ok {
                return Err("the OpenSSH key login failed".into());
            }
            ssh_key = t2.elapsed();
            let t3 = Instant::now();
            if !russh_once(port, USER, &key.key, &pinned).await {
                return Err("the russh key login failed".into());
            }
            russh_key = t3.elapsed();
        }
    }
    Ok(Paid {
        answer,
        login: login_t,
        ssh_only,
        ssh_key,
        russh_key,
        refused,
        name,
    })
}

struct Cli {
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
    ssh_until_login(port, USER, &pw, Duration::from_secs(60))?;
    let login = t0.elapsed();
    lxc(&["delete", "--force", &name])?;
    Ok(Cli { login })
}

/// Median and 90th percentile (nearest rank), in milliseconds.
fn stats(v: &[Duration]) -> (f64, f64) {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = ms.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    let p90 = ms[((n as f64 * 0.9).ceil() as usize).clamp(1, n) - 1];
    (median, p90)
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
        .unwrap_or(10)
        .max(1);
    let image = std::env::var("LXD_BENCH_IMAGE").unwrap_or_else(|_| "paygress-debian-12".into());
    let pool = std::env::var("LXD_BENCH_POOL")
        .ok()
        .filter(|p| !p.is_empty());
    let warm_n: u32 = std::env::var("LXD_BENCH_WARM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .max(1);
    // RUST_LOG=paygress=debug shows the backend's phase timings.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let _cleanup = CleanupOnExit;
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let key = make_key();
    // LXD_BENCH_IDMAP_ISOLATED=0 measures without per-container id ranges.
    let idmap_isolated = std::env::var("LXD_BENCH_IDMAP_ISOLATED").as_deref() != Ok("0");
    let lxd = |warm_pool: u32| LxdConfig {
        storage_pool: pool.clone(),
        warm_pool,
        idmap_isolated,
        ..LxdConfig::default()
    };
    let image_b = std::env::var("LXD_BENCH_COLD_IMAGE_B")
        .ok()
        .filter(|i| !i.is_empty());
    let (mint, warm_lxd, warm, cold, cold_b, money) = rt.block_on(async {
        let mint = TestMint::start().await;
        let warm_lxd = LxdBackend::connect(lxd(warm_n))
            .await
            .unwrap_or_else(|e| panic!("LXD is not usable: {e}"));
        let cold_lxd = LxdBackend::connect(lxd(0))
            .await
            .unwrap_or_else(|e| panic!("LXD is not usable: {e}"));
        let warm = seller(&mint, Arc::new(warm_lxd.clone()), &image).await;
        let cold = seller(&mint, Arc::new(cold_lxd), &image).await;
        let cold_b = match &image_b {
            Some(b) => {
                let lxd_b = LxdBackend::connect(lxd(0))
                    .await
                    .unwrap_or_else(|e| panic!("LXD is not usable: {e}"));
                Some(seller(&mint, Arc::new(lxd_b), b).await)
            }
            None => None,
        };
        let money = seller(&mint, Arc::new(FakeBackend::new()), &image).await;
        // One of each untimed: keysets fetched, connections made, caches warm.
        let _ = paid_spawn(&money, &mint, &key, Login::Skip).await;
        (mint, warm_lxd, warm, cold, cold_b, money)
    });

    // The pool's cost: what LXD counts for each idle member (its cgroup: processes and cache).
    let idle = rt.block_on(async {
        warm_lxd.wait_pool_full(Duration::from_secs(300)).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        warm_lxd.pool_status().members
    });
    let mut idle_mib = Vec::new();
    for m in &idle {
        let path = format!("/1.0/instances/{m}/state");
        if let Ok(out) = Command::new("lxc")
            .args(["query", "--force-local", &path])
            .output()
        {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if let Some(b) = v["memory"]["usage"].as_u64() {
                idle_mib.push(b as f64 / 1048576.0);
            }
        }
    }

    let pool_name = pool.clone().unwrap_or_else(|| "profile default".into());
    println!(
        "LXD spawn → first SSH login, {n} rounds, image {image}, storage {pool_name}, tier 1 vCPU / 512 MiB, warm_pool {warm_n}"
    );
    println!();
    println!(
        "{:>5} | {:>11} {:>10} | {:>9} {:>9} {:>9} | {:>11} | {:>11} {:>10} | {:>9} | {:>10}",
        "round",
        "warm:answer",
        "warm:login",
        "pw-alone",
        "key-alone",
        "russh",
        "agent:login",
        "cold:answer",
        "cold:login",
        "cli:login",
        "money-path"
    );
    let (mut w_ans, mut w_login, mut w_ssh, mut w_key, mut w_russh) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut a_ans, mut a_login) = (Vec::new(), Vec::new());
    let (mut c_ans, mut c_login, mut x_login, mut m_ans) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut b_login = Vec::new();
    let (mut refused_w, mut refused_a, mut refused_c) = (0u32, 0u32, 0u32);
    #[derive(Clone, Copy)]
    enum Side {
        Warm,
        Agent,
        Cold,
        ColdB,
        Cli,
    }
    for round in 0..n {
        let (mut w, mut a, mut c, mut x) = (None, None, None, None);
        // Rotate the order, so no side always follows another's delete.
        let mut order = vec![Side::Warm, Side::Agent, Side::Cold, Side::Cli];
        if cold_b.is_some() {
            order.push(Side::ColdB);
        }
        // A fresh order every round, so no side always follows another's delete or refill.
        {
            use rand::seq::SliceRandom;
            order.shuffle(&mut rand::thread_rng());
        }
        for side in order {
            let warm_spawn = |login: Login, what: &str| {
                rt.block_on(async {
                    if !warm_lxd.wait_pool_full(Duration::from_secs(300)).await {
                        panic!("the warm pool did not refill");
                    }
                    let r = paid_spawn(&warm, &mint, &key, login)
                        .await
                        .unwrap_or_else(|e| panic!("{what}, round {round}: {e}"));
                    let _ = warm.provider.backend().destroy(&r.name).await;
                    // The refill this spawn caused ends here, untimed, not during the next side.
                    if !warm_lxd.wait_pool_full(Duration::from_secs(300)).await {
                        panic!("the warm pool did not refill");
                    }
                    r
                })
            };
            match side {
                Side::Warm => w = Some(warm_spawn(Login::Password, "warm")),
                Side::Agent => a = Some(warm_spawn(Login::Agent, "agent")),
                Side::Cold => {
                    c = Some(rt.block_on(async {
                        let r = paid_spawn(&cold, &mint, &key, Login::Password)
                            .await
                            .unwrap_or_else(|e| panic!("cold, round {round}: {e}"));
                        let _ = cold.provider.backend().destroy(&r.name).await;
                        r
                    }))
                }
                Side::ColdB => {
                    if let Some(sb) = &cold_b {
                        let r = rt.block_on(async {
                            let r = paid_spawn(sb, &mint, &key, Login::Password)
                                .await
                                .unwrap_or_else(|e| panic!("cold B, round {round}: {e}"));
                            let _ = sb.provider.backend().destroy(&r.name).await;
                            r
                        });
                        b_login.push(r.login);
                    }
                }
                Side::Cli => {
                    x = Some(
                        cli(&image, pool.as_deref(), round)
                            .unwrap_or_else(|e| panic!("cli, round {round}: {e}")),
                    )
                }
            }
        }
        let (Some(w), Some(a), Some(c), Some(x)) = (w, a, c, x) else {
            panic!("round {round}: a side did not run");
        };
        let m = rt
            .block_on(paid_spawn(&money, &mint, &key, Login::Skip))
            .unwrap_or_else(|e| panic!("money path, round {round}: {e}"));
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:>5} | {:>9.0}ms {:>8.0}ms | {:>7.0}ms {:>7.0}ms {:>7.0}ms | {:>9.0}ms | {:>9.0}ms {:>8.0}ms | {:>7.0}ms | {:>8.1}ms",
            round + 1,
            ms(w.answer),
            ms(w.login),
            ms(w.ssh_only),
            ms(w.ssh_key),
            ms(w.russh_key),
            ms(a.login),
            ms(c.answer),
            ms(c.login),
            ms(x.login),
            ms(m.answer)
        );
        refused_w += w.refused;
        refused_a += a.refused;
        refused_c += c.refused;
        w_ans.push(w.answer);
        w_login.push(w.login);
        w_ssh.push(w.ssh_only);
        w_key.push(w.ssh_key);
        w_russh.push(w.russh_key);
        a_ans.push(a.answer);
        a_login.push(a.login);
        c_ans.push(c.answer);
        c_login.push(c.login);
        x_login.push(x.login);
        m_ans.push(m.answer);
        std::thread::sleep(Duration::from_millis(300));
    }
    println!();
    println!("{:<58} {:>10} {:>10}", "", "median", "p90");
    let rows = [
        (
            "(a) warm: paid spawn_pod → first SSH login (password)",
            &w_login,
        ),
        ("    warm: paid spawn_pod → answer", &w_ans),
        ("    agent: the same → first russh key login", &a_login),
        ("    agent: paid spawn_pod → answer", &a_ans),
        ("    money path alone (MCP + swap + journal)", &m_ans),
        ("    one login alone: OpenSSH, password (sshpass)", &w_ssh),
        ("    one login alone: OpenSSH, key", &w_key),
        (
            "    one login alone: russh (the buyer's client), key",
            &w_russh,
        ),
        ("(b) cold: paid spawn_pod → first SSH login", &c_login),
        ("    cold: paid spawn_pod → answer", &c_ans),
        ("(c) lxc CLI flow → first SSH login", &x_login),
    ];
    for (label, v) in rows {
        let (med, p90) = stats(v);
        println!("{label:<58} {med:>8.0}ms {p90:>8.0}ms");
    }
    if let Some(b) = &image_b {
        let (med, p90) = stats(&b_login);
        let label = format!("(b') cold on image {b} → first SSH login");
        println!("{label:<58} {med:>8.0}ms {p90:>8.0}ms");
        let (c, _) = stats(&c_login);
        println!(
            "ratio cold on {b} / cold on {image} (medians): {:.2}",
            med / c
        );
    }
    let (w, _) = stats(&w_login);
    let (ag, _) = stats(&a_login);
    let (c, _) = stats(&c_login);
    let (x, _) = stats(&x_login);
    if !idle_mib.is_empty() {
        let mean = idle_mib.iter().sum::<f64>() / idle_mib.len() as f64;
        println!(
            "{:<58} {mean:>7.1}MiB  (over {} members, LXD's memory usage)",
            "idle pool member",
            idle_mib.len()
        );
    }
    println!(
        "login attempts refused after the spawn's answer (each should be 0): warm {refused_w}, agent {refused_a}, cold {refused_c}"
    );
    println!();
    println!("ratio warm/cli (medians): {:.3}  (target ≤ 0.10)", w / x);
    println!("ratio agent/cli (medians): {:.3}  (target ≤ 0.10)", ag / x);
    println!("ratio cold/cli (medians): {:.2}  (target ≤ 0.50)", c / x);
    println!("warm p50 {w:.0} ms, agent p50 {ag:.0} ms to a working SSH login  (target ≤ 150 ms)");
    let (wa, _) = stats(&w_ans);
    let (ma, _) = stats(&m_ans);
    let (so, _) = stats(&w_ssh);
    let (sk, _) = stats(&w_key);
    let (sr, _) = stats(&w_russh);
    println!(
        "warm breakdown (medians): money path {ma:.0} ms + claim (login, forward, banner) {:.0} ms = answer {wa:.0} ms; then the first login {:.0} ms (one login alone: password {so:.0} ms, OpenSSH key {sk:.0} ms, russh key {sr:.0} ms)",
        wa - ma,
        w - wa
    );
}
