//! Sandbox spawn latency: `SandboxBackend::create` with full isolation against the same without
//! outbound network, and against bubblewrap starting a process in comparable namespaces.
//!
//! Not a test: a measurement. For N rounds (default 10), interleaved so that drift hits every
//! side alike:
//! - **isolated**: `create` with the defaults (own network namespace, slirp4netns and the
//!   nftables egress filter, private devpts and /dev, seccomp), until the SSH banner answers;
//! - **no-net**: the same with `network = "none"` (namespace with loopback only): the cost of
//!   the outbound network is the difference;
//! - **bwrap**: `bwrap --unshare-all` with a read-only host root, its own /dev, /proc and tmpfs
//!   (about what the jail's init gets), running `/bin/true` to exit — a baseline for the
//!   namespace setup alone, with no SSH server, no cgroup and no network.
//!
//! Run as root: `cargo bench --bench sandbox_spawn -- 10` (or `cargo test --bench
//! sandbox_spawn -- 10` for a debug build). Needs slirp4netns, nft and bwrap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paygress::backend::sandbox::{NetworkMode, SandboxBackend, SandboxConfig};
use paygress::backend::{Backend, WorkloadSpec};
use paygress::config::Tier;
use paygress::secret::Secret;

fn free_port() -> u16 {
    for _ in 0..200 {
        let p: u16 = 40_000 + (rand::random::<u16>() % 20_000);
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port");
}

fn spec(name: &str) -> WorkloadSpec {
    WorkloadSpec {
        name: name.into(),
        provider_id: "bench".into(),
        tier: Tier {
            id: "b".into(),
            name: "bench".into(),
            description: String::new(),
            cpu_millicores: 1000,
            memory_mb: 256,
            disk_gb: None,
            rate_msats_per_sec: 1,
        },
        image: "host".into(),
        ssh_username: "bench".into(),
        ssh_password: Secret::new("bench-password-1"),
        ssh_public_key: None,
        host_port: Some(free_port()),
        expires_at: paygress::provider::now_secs() + 600,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10)
        .max(1);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir_in("/var/tmp").expect("temp dir");
    let open = |network, sub: &str| {
        let cfg = SandboxConfig {
            network,
            ..Default::default()
        };
        Arc::new(
            rt.block_on(SandboxBackend::open(cfg, &dir.path().join(sub)))
                .unwrap_or_else(|e| panic!("sandbox: {e}")),
        )
    };
    let isolated = open(NetworkMode::Outbound, "a");
    let no_net = open(NetworkMode::None, "b");
    let bwrap = |_: ()| {
        let t = Instant::now();
        let st = std::process::Command::new("bwrap")
            .args([
                "--unshare-all",
                "--die-with-parent",
                "--new-session",
                "--ro-bind",
                "/",
                "/",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--tmpfs",
                "/tmp",
                "--tmpfs",
                "/run",
                "--tmpfs",
                "/home",
                "/bin/true",
            ])
            .status()
            .expect("bwrap");
        assert!(st.success(), "bwrap failed");
        t.elapsed()
    };
    let ours = |b: &Arc<SandboxBackend>, i: usize, what: &str| -> Duration {
        let s = spec(&format!(
            "bench-{what}-{i}-{:06x}",
            rand::random::<u32>() & 0xffffff
        ));
        let t = Instant::now();
        rt.block_on(b.create(&s)).expect("create");
        let d = t.elapsed();
        rt.block_on(b.destroy(&s.name)).expect("destroy");
        d
    };
    println!("sandbox spawn → SSH banner, {n} rounds each (bwrap: namespaces only, to exit)");
    println!();
    println!(
        "{:>5} | {:>12} {:>12} {:>12}",
        "round", "isolated ms", "no-net ms", "bwrap ms"
    );
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        // Alternate which side goes first: the first create of a round pays more.
        let (x, y) = if i % 2 == 0 {
            let x = ours(&isolated, i, "iso");
            (x, ours(&no_net, i, "nonet"))
        } else {
            let y = ours(&no_net, i, "nonet");
            (ours(&isolated, i, "iso"), y)
        };
        let (x, y) = (x.as_secs_f64() * 1e3, y.as_secs_f64() * 1e3);
        let z = bwrap(()).as_secs_f64() * 1e3;
        println!("{:>5} | {x:>12.1} {y:>12.1} {z:>12.1}", i + 1);
        a.push(x);
        b.push(y);
        c.push(z);
    }
    let (ma, mb, mc) = (median(&mut a), median(&mut b), median(&mut c));
    println!();
    println!("median: isolated {ma:.1} ms, no-net {mb:.1} ms, bwrap {mc:.1} ms");
    println!(
        "ratios: isolated / no-net {:.2}, no-net / bwrap {:.2}",
        ma / mb,
        mb / mc
    );
}
