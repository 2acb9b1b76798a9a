//! `paygress-cli provider status`: what a provider is doing, here (`--config`) or on a
//! bootstrapped host over SSH (`--host`).
//!
//! Only numbers the provider knows: its doors, relays and last accepted heartbeat and live
//! workload count come from the status file it keeps ([`paygress::status`]); the earnings are
//! read from the wallet files in its data dir ([`paygress::books`]), which is only read, never
//! created or added to. Over SSH the host's own
//! `paygress-cli provider status --json` answers, run as the service's user.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use paygress::app::{self, exit};
use paygress::bootstrap::remote::Remote;
use serde_json::{json, Value};

use crate::bootstrap::SshArgs;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Provider configuration (TOML) of a provider on this machine. Also PAYGRESS_CONFIG.
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "host")]
    pub config: Option<PathBuf>,
    /// A host made a provider by `bootstrap`: ask it over SSH (the SSH flags below apply).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    #[command(flatten)]
    pub ssh: SshArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The host's own status, as its service user sees it.
const REMOTE_STATUS: &str = "cd / && runuser -u paygress -- /usr/local/bin/paygress-cli \
    provider status --config /etc/paygress/paygress.toml --json";

pub async fn run(a: StatusArgs) -> i32 {
    let v = match &a.host {
        Some(host) => match remote(&a, host).await {
            Ok(v) => v,
            Err((code, e)) => {
                eprintln!("paygress-cli: {e}");
                return code;
            }
        },
        None => match local(a.config.clone()).await {
            Ok(v) => v,
            Err((code, e)) => {
                eprintln!("paygress-cli: {e}");
                return code;
            }
        },
    };
    if a.json {
        println!("{v}");
    } else {
        print_table(&v);
    }
    0
}

async fn remote(a: &StatusArgs, host: &str) -> Result<Value, (i32, String)> {
    let opts = a.ssh.connect_options(host).map_err(|e| (exit::USAGE, e))?;
    let r = Remote::connect(opts)
        .await
        .map_err(|e| (exit::PROVIDER, e.to_string()))?;
    let o = r
        .root(REMOTE_STATUS, &[], Duration::from_secs(60))
        .await
        .map_err(|e| (exit::PROVIDER, e.to_string()));
    r.close().await;
    let o = o?;
    if !o.ok() {
        return Err((
            exit::PROVIDER,
            format!(
                "the host's provider status failed (is Paygress bootstrapped there?): {}",
                paygress::bootstrap::steps::tail(&o)
            ),
        ));
    }
    serde_json::from_str(o.stdout.trim())
        .map_err(|_| (exit::PROVIDER, "the host's status is not JSON".to_string()))
}

/// Reads only: the data dir is never created, nor a wallet, seed or journal in it. Opening its
/// SQLite files as another user (root, say) would leave files there the provider cannot open,
/// so it refuses unless run as the data dir's owner.
async fn local(config: Option<PathBuf>) -> Result<Value, (i32, String)> {
    use std::os::unix::fs::MetadataExt;
    let cfg = app::load_config(config).map_err(|e| (exit::USAGE, e.to_string()))?;
    let dir = &cfg.provider.data_dir;
    if let Ok(m) = std::fs::metadata(dir) {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if m.uid() != me {
            return Err((
                exit::USAGE,
                format!(
                    "{} belongs to uid {}, not to this user (uid {me}): run provider status as the data dir's owner (e.g. runuser -u paygress --), so that no file there is made by another user",
                    dir.display(),
                    m.uid()
                ),
            ));
        }
    }
    let st = paygress::status::read(dir).ok();
    let books = paygress::books::read(dir)
        .await
        .map_err(|e| (exit::PAYMENT, e.to_string()))?;
    let earnings: Vec<Value> = books
        .wallets
        .iter()
        .map(|w| json!({"mint": w.mints.join(", "), "balance_sats": w.unspent_sats}))
        .collect();
    let total = books.unspent_sats;
    let running = st.as_ref().is_some_and(paygress::status::is_running);
    // The journal's count is current; the status file's is as of the last heartbeat.
    let journal = cfg.data_path("paygress.sqlite3");
    let live = match journal.exists() {
        true => paygress::store::Store::open(&journal)
            .and_then(|s| s.live_count())
            .ok(),
        false => None,
    };
    let mut st = st;
    if let (Some(s), Some(n)) = (st.as_mut(), live) {
        s.live_workloads = n;
    }
    Ok(json!({
        "running": running,
        "name": cfg.provider.name,
        "backend": cfg.backend.kind,
        "live_workloads": live.or(st.as_ref().map(|s| s.live_workloads)).unwrap_or(0),
        "status": st,
        "earnings": earnings,
        "earnings_total_sats": total,
    }))
}

fn ago(t: Option<u64>) -> String {
    match t {
        Some(t) => {
            let now = paygress::provider::now_secs();
            format!("{} s ago", now.saturating_sub(t))
        }
        None => "never".into(),
    }
}

fn print_table(v: &Value) {
    let running = v["running"].as_bool().unwrap_or(false);
    let st = &v["status"];
    println!("{:<12} {}", "provider", v["name"].as_str().unwrap_or(""));
    if st.is_null() {
        println!("{:<12} never started (no status file)", "state");
    } else {
        println!("{:<12} {}", "npub", st["npub"].as_str().unwrap_or(""));
        match running {
            true => println!(
                "{:<12} running (pid {}, started {})",
                "state",
                st["pid"],
                ago(st["started_at"].as_u64())
            ),
            false => println!(
                "{:<12} not running (last seen {})",
                "state",
                ago(st["updated_at"].as_u64())
            ),
        }
        let doors: Vec<&str> = st["doors"]
            .as_array()
            .map(|d| d.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "{:<12} {}",
            "doors",
            if doors.is_empty() {
                "none".to_string()
            } else {
                doors.join(", ")
            }
        );
        for r in st["relays"].as_array().into_iter().flatten() {
            println!(
                "{:<12} {} {}",
                "relay",
                r["url"].as_str().unwrap_or(""),
                if r["connected"].as_bool() == Some(true) {
                    "connected"
                } else {
                    "not connected"
                }
            );
        }
        println!(
            "{:<12} {} (every {} s)",
            "heartbeat",
            ago(st["last_heartbeat_at"].as_u64()),
            st["heartbeat_seconds"]
        );
        println!("{:<12} {} live", "workloads", st["live_workloads"]);
    }
    for e in v["earnings"].as_array().into_iter().flatten() {
        println!(
            "{:<12} {} sat at {}",
            "earnings",
            e["balance_sats"],
            e["mint"].as_str().unwrap_or("")
        );
    }
    println!("{:<12} {} sat", "total", v["earnings_total_sats"]);
}
