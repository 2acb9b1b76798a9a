//! Isolation of LXD workloads, probed from inside over real ssh as a hostile buyer would, on
//! the real LXD daemon with the locally built base image.
//!
//! The daemon is shared with other tests: nothing global is changed. The egress test makes a
//! bridge network of its own (unique name, an address in 198.19.0.0/16, the benchmarking
//! range) for the backend's `egress_network`, and removes the instances, the network and the
//! ACL when it ends. Network probes go to 127.0.0.0/8 inside the container and to a network
//! namespace the test makes (see `common::netns`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::netns::TestNet;
use common::ssh::{ssh_password, ssh_password_cmd};
use paygress::backend::lxd::{LxdBackend, LxdConfig};
use paygress::backend::{Backend, WorkloadSpec};
use paygress::config::Tier;
use paygress::secret::Secret;

fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn free_port() -> u16 {
    for _ in 0..100 {
        let p: u16 = 40_000 + (rand::random::<u16>() % 20_000);
        if std::net::TcpListener::bind(("0.0.0.0", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port");
}

fn spec(name: &str, password: &str) -> WorkloadSpec {
    WorkloadSpec {
        name: name.into(),
        provider_id: format!("prov-{}", suffix()),
        tier: Tier {
            id: "t".into(),
            name: "test".into(),
            description: String::new(),
            cpu_millicores: 1000,
            memory_mb: 256,
            disk_gb: None,
            rate_msats_per_sec: 1,
        },
        image: "paygress-debian-12".into(),
        ssh_username: "alice".into(),
        ssh_password: Secret::new(password),
        ssh_public_key: None,
        host_port: Some(free_port()),
        expires_at: paygress::provider::now_secs() + 3600,
    }
}

fn lxd_query(method: &str, path: &str, body: Option<serde_json::Value>) -> Result<String, String> {
    let mut c = std::process::Command::new("lxc");
    c.args(["query", "--force-local", "-X", method]);
    if let Some(b) = body {
        c.arg("--data").arg(b.to_string());
    }
    let out = c.arg(path).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Removes the instances, then the test's network and its ACL, however the test ends.
struct Cleanup {
    instances: Vec<String>,
    network: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.instances {
            let _ = std::process::Command::new("lxc")
                .args(["delete", "--force", n])
                .stderr(std::process::Stdio::null())
                .status();
        }
        if let Some(net) = &self.network {
            let _ = lxd_query("DELETE", &format!("/1.0/networks/{net}"), None);
            let _ = lxd_query(
                "DELETE",
                &format!("/1.0/network-acls/paygress-egress-{net}"),
                None,
            );
        }
    }
}

fn tcp_probe(host: &str, port: u16) -> String {
    format!(
        "if timeout 3 bash -c 'exec 3<>/dev/tcp/{host}/{port}' 2>/dev/null; then echo open; else echo closed; fi"
    )
}

/// Inside an LXD workload: the provider's loopback services are not there, other tenants'
/// terminals are neither listed nor openable, host devices do not open, a fork bomb stops at
/// `limits.processes`, nothing outside the home is writable, the provider's files do not
/// exist, and each container has a host id range of its own.
#[tokio::test]
async fn an_lxd_workload_is_kept_from_the_host_and_other_tenants() {
    let b = Arc::new(
        LxdBackend::connect(LxdConfig {
            pids_max: 64,
            ..Default::default()
        })
        .await
        .expect("LXD"),
    );
    let (na, nb) = (format!("pgi-a-{}", suffix()), format!("pgi-b-{}", suffix()));
    let _guard = Cleanup {
        instances: vec![na.clone(), nb.clone()],
        network: None,
    };
    let (sa, sb) = (spec(&na, "lxd-iso-pass-a"), spec(&nb, "lxd-iso-pass-b"));
    // At once: isolated id maps must not collide.
    let (ra, rb) = tokio::join!(b.create(&sa), b.create(&sb));
    ra.expect("create a");
    rb.expect("create b");
    let (pa, pb) = (sa.host_port.unwrap(), sb.host_port.unwrap());

    // A service of the provider on the host's loopback.
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = service.local_addr().unwrap().port();
    let out = ssh_password(pa, "alice", "lxd-iso-pass-a", &tcp_probe("127.0.0.1", port))
        .await
        .unwrap();
    assert_eq!(out.trim(), "closed");

    // B holds a terminal; A sees none of it.
    let mut c = ssh_password_cmd(pb, "alice", "lxd-iso-pass-b");
    c.arg("-tt")
        .arg("tty; sleep 30")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut holder = c.spawn().unwrap();
    let mut first = vec![0u8; 64];
    use tokio::io::AsyncReadExt;
    let mut so = holder.stdout.take().unwrap();
    let n = tokio::time::timeout(Duration::from_secs(30), so.read(&mut first))
        .await
        .expect("b's tty")
        .unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("/dev/pts/"));
    let out = ssh_password(
        pa,
        "alice",
        "lxd-iso-pass-a",
        "ls -A /dev/pts | tr '\\n' ' '; echo; n=0; for i in $(seq 0 15); do (exec 3<>/dev/pts/$i) 2>/dev/null && n=$((n+1)); done; echo $n; \
         for d in /dev/kvm /dev/fuse /dev/mem /dev/vda /dev/sda; do (exec 3<>$d) 2>/dev/null && echo opened $d; done; \
         for p in /etc/x /usr/x /x /var/x; do touch $p 2>/dev/null && echo wrote $p; done; \
         ls /var/lib/lxd /root 2>/dev/null | head -1; echo end",
    )
    .await
    .unwrap();
    // Only the container's own console (pts 0, root's) and ptmx; nothing openable.
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["0 ptmx ", "0", "end"],
        "inside an LXD workload"
    );
    let _ = holder.start_kill();

    // A bounded fork bomb: perl forks until the kernel refuses, prints how many it got, and
    // kills them again; the container's limit (64 tasks, its own system included) holds.
    let out = ssh_password(
        pa,
        "alice",
        "lxd-iso-pass-a",
        "perl -e 'my @k; for (1..300) { my $p = fork; last unless defined $p; if (!$p) { sleep 30; exit 0 } push @k, $p } print scalar(@k), \"\\n\"; kill 9, @k'",
    )
    .await
    .unwrap();
    let count: usize = out.trim().parse().unwrap_or(usize::MAX);
    assert!(
        count < 64,
        "{count} forks in a container of 64 tasks: {out}"
    );
    assert!(ssh_password(pa, "alice", "lxd-iso-pass-a", "echo alive")
        .await
        .unwrap()
        .contains("alive"));

    // A memory hog past the tier's 256 MiB is killed; the container lives on.
    let err = ssh_password(
        pa,
        "alice",
        "lxd-iso-pass-a",
        "head -c 600M /dev/zero | tail > /dev/null",
    )
    .await
    .unwrap_err();
    assert!(err.contains("137"), "{err}");
    assert!(ssh_password(pa, "alice", "lxd-iso-pass-a", "echo alive")
        .await
        .unwrap()
        .contains("alive"));

    // Separate host id ranges.
    let base = |n: &str| {
        let v: serde_json::Value =
            serde_json::from_str(&lxd_query("GET", &format!("/1.0/instances/{n}"), None).unwrap())
                .unwrap();
        v["config"]["volatile.idmap.base"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let (ba, bb) = (base(&na), base(&nb));
    assert!(!ba.is_empty() && ba != bb, "idmap bases {ba:?} and {bb:?}");
}

/// With `egress_network`, the backend puts an egress ACL on that network: outbound traffic to a
/// server in the test's own namespace works, and once the config denies that server, the same
/// container is refused.
#[tokio::test]
async fn the_egress_acl_lets_outbound_through_and_refuses_what_it_denies() {
    let net = TestNet::new();
    let bridge = format!("pgi{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut guard = Cleanup {
        instances: Vec::new(),
        network: Some(bridge.clone()),
    };
    let third = rand::random::<u8>();
    lxd_query(
        "POST",
        "/1.0/networks",
        Some(serde_json::json!({
            "name": bridge,
            "type": "bridge",
            "config": {
                "ipv4.address": format!("198.19.{third}.1/24"),
                "ipv4.nat": "true",
                "ipv6.address": "none",
            },
        })),
    )
    .expect("a bridge of the test's own");
    let cfg = LxdConfig {
        egress_network: Some(bridge.clone()),
        ..Default::default()
    };
    let b = LxdBackend::connect(cfg.clone())
        .await
        .expect("LXD with ACL");
    let acl: serde_json::Value = serde_json::from_str(
        &lxd_query(
            "GET",
            &format!("/1.0/network-acls/paygress-egress-{bridge}"),
            None,
        )
        .unwrap(),
    )
    .unwrap();
    let denied = acl["egress"][0]["destination"].as_str().unwrap_or("");
    assert!(
        denied.contains("169.254.0.0/16") && denied.contains("10.0.0.0/8"),
        "{acl}"
    );

    let n = format!("pgi-net-{}", suffix());
    guard.instances.push(n.clone());
    let s = spec(&n, "lxd-net-pass-1");
    b.create(&s).await.expect("create");
    let (host, port) = (net.server.ip().to_string(), net.server.port());
    let greet = format!("timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/{port}; head -n1 <&3'");
    let mut out = Err(String::new());
    // The container's DHCP lease may take a moment after SSH answers.
    for _ in 0..20 {
        out = ssh_password(s.host_port.unwrap(), "alice", "lxd-net-pass-1", &greet).await;
        if out.as_deref().map(str::trim) == Ok("hello-from-testnet") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(out.as_deref().map(str::trim), Ok("hello-from-testnet"));

    // The same server, denied by config: the ACL is updated and the container refused.
    LxdBackend::connect(LxdConfig {
        egress_deny: vec![format!("{host}/32")],
        ..cfg
    })
    .await
    .expect("LXD with a stricter ACL");
    let out = ssh_password(
        s.host_port.unwrap(),
        "alice",
        "lxd-net-pass-1",
        &tcp_probe(&host, port),
    )
    .await
    .unwrap();
    assert_eq!(out.trim(), "closed");
    // Instances go before the network (the guard's order).
    drop(guard);
}

/// A tier's disk size is a quota the tenant cannot write past. `provider/lxd-setup.sh` makes the
/// default pool btrfs wherever the kernel has btrfs; on such a machine the pool must enforce
/// sizes, and a workload with a 1 GiB disk cannot fill the host's.
#[tokio::test]
async fn a_tier_disk_size_is_enforced_on_the_default_pool() {
    let kernel_btrfs = std::fs::read_to_string("/proc/filesystems")
        .map(|f| f.split_whitespace().any(|w| w == "btrfs"))
        .unwrap_or(false);
    let pool: serde_json::Value =
        serde_json::from_str(&lxd_query("GET", "/1.0/storage-pools/default", None).expect("pool"))
            .expect("pool JSON");
    let driver = pool["driver"].as_str().unwrap_or("").to_string();
    if !kernel_btrfs {
        eprintln!(
            "this kernel has no btrfs: the setup keeps a dir pool, which enforces no disk size"
        );
        assert_eq!(driver, "dir");
        return;
    }
    assert_eq!(
        driver, "btrfs",
        "the setup should have made a btrfs pool: {pool}"
    );

    let b = LxdBackend::connect(LxdConfig::default())
        .await
        .expect("LXD");
    let name = format!("pgi-disk-{}", suffix());
    let _guard = Cleanup {
        instances: vec![name.clone()],
        network: None,
    };
    let mut s = spec(&name, "lxd-disk-pass");
    s.tier.disk_gb = Some(1);
    b.create(&s).await.expect("create");
    // 1.5 GiB into the home of a 1 GiB disk: the write stops at the quota.
    let out = ssh_password(
        s.host_port.unwrap(),
        "alice",
        "lxd-disk-pass",
        "if dd if=/dev/zero of=$HOME/fill bs=1M count=1536 conv=fsync 2>/tmp/dd.err; \
         then echo wrote-all; else echo refused; fi; du -m $HOME/fill | cut -f1; tail -1 /tmp/dd.err",
    )
    .await
    .expect("ssh");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first().copied(), Some("refused"), "{out}");
    let written: u64 = lines
        .get(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(u64::MAX);
    assert!(
        written <= 1024,
        "wrote {written} MiB into a 1 GiB disk: {out}"
    );
    // The tenant's disk stays usable after hitting the quota, and freeing space works.
    let out = ssh_password(
        s.host_port.unwrap(),
        "alice",
        "lxd-disk-pass",
        "rm -f $HOME/fill && echo freed",
    )
    .await
    .expect("ssh after quota");
    assert_eq!(out.trim(), "freed");
}
