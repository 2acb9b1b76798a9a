//! Isolation of sandbox workloads, probed from inside as a hostile buyer would: logged in with
//! the real OpenSSH client over the workload's SSH port, paid with real tokens from the test
//! mint, with the provider's own services (the mint, a Nostr relay, a plain TCP service standing
//! for the MCP/HTTP doors) listening on 127.0.0.1 of the host.
//!
//! Root mode runs here (the test is root); rootless mode is probed through the real demo run by
//! an unprivileged user at the end. Network probes go only to 127.0.0.0/8 and to a network
//! namespace the test makes itself (a veth pair in 198.18.0.0/15, the benchmarking range).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mint::TestMint;
use common::netns::TestNet;
use common::sandbox::Cleanup;
use common::ssh::{ssh_password, ssh_password_cmd};
use paygress::api::{SpawnRequest, SpawnResult};
use paygress::backend::sandbox::{SandboxBackend, SandboxConfig};
use paygress::backend::Backend;
use paygress::config::Config;
use paygress::secret::Secret;
use paygress::{Caller, Provider};
use tokio_util::sync::CancellationToken;

const RATE: u64 = 100;

struct Env {
    /// First field: dropped before `dir` takes the state directory away.
    _guard: Cleanup,
    mint: TestMint,
    cfg: Config,
    backend: Arc<SandboxBackend>,
    provider: Arc<Provider>,
    dir: tempfile::TempDir,
}

async fn env_with(sandbox: SandboxConfig, memory_mb: u32) -> Env {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut cfg = common::config(dir.path(), &[&mint.url], RATE, common::free_port_block(4));
    cfg.tiers[0].memory_mb = memory_mb;
    cfg.backend.sandbox = sandbox.clone();
    let backend = Arc::new(
        SandboxBackend::open(sandbox, dir.path())
            .await
            .expect("sandbox backend"),
    );
    let as_dyn: Arc<dyn Backend> = backend.clone();
    let provider = Provider::open(cfg.clone(), as_dyn).await.expect("provider");
    Env {
        _guard: Cleanup {
            backend: Some(backend.clone()),
        },
        mint,
        cfg,
        backend,
        provider,
        dir,
    }
}

async fn env() -> Env {
    env_with(SandboxConfig::default(), 512).await
}

async fn spawn(e: &Env, user: &str, password: &str) -> SpawnResult {
    let req = SpawnRequest {
        cashu_token: Secret::new(e.mint.token(100).await),
        ssh_username: user.into(),
        ssh_password: Some(Secret::new(password)),
        ..Default::default()
    };
    e.provider
        .spawn(req, Caller::Local, None, CancellationToken::new())
        .await
        .expect("paid spawn")
}

/// A shell line that prints `open` if a TCP connection to `host:port` succeeds within 3 s,
/// `closed` otherwise (bash's /dev/tcp: no tool needed inside).
fn tcp_probe(host: &str, port: u16) -> String {
    format!(
        "if timeout 3 bash -c 'exec 3<>/dev/tcp/{host}/{port}' 2>/dev/null; then echo open; else echo closed; fi"
    )
}

/// The provider's loopback services: the mint, a relay and a TCP service, each on 127.0.0.1.
struct Services {
    relay: paygress::relay::EmbeddedRelay,
    plain: std::net::TcpListener,
}

async fn services() -> Services {
    let relay = paygress::relay::EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("relay");
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    Services { relay, plain }
}

fn mint_port(e: &Env) -> u16 {
    e.mint
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("mint port")
}

/// The provider's own services on the host's loopback do not answer from inside a workload,
/// though they answer from the host; the workload's own loopback works.
#[tokio::test]
async fn the_providers_loopback_services_do_not_answer_from_inside() {
    let e = env().await;
    let s = services().await;
    let pw = "probe-pass-123";
    let r = spawn(&e, "alice", pw).await;
    let ports = [
        ("mint", mint_port(&e)),
        ("relay", s.relay.addr().port()),
        ("service", s.plain.local_addr().unwrap().port()),
        ("own ssh port", r.node_port),
    ];
    for (what, port) in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "{what} answers on the host"
        );
        for host in ["127.0.0.1", "localhost", "127.0.0.2"] {
            let out = ssh_password(r.node_port, "alice", pw, &tcp_probe(host, port))
                .await
                .unwrap();
            assert_eq!(
                out.trim(),
                "closed",
                "{what} on {host}:{port} answers inside"
            );
        }
    }
    // The workload's own loopback is its own: a listener inside answers inside.
    let out = ssh_password(
        r.node_port,
        "alice",
        pw,
        &format!(
            "(exec 3<>/dev/null; timeout 5 perl -MIO::Socket::INET -e '$s=IO::Socket::INET->new(LocalAddr=>\"127.0.0.1:5555\",Listen=>1,ReuseAddr=>1) or die; $c=$s->accept; print $c \"hi\\n\"' &) ; sleep 1; {}",
            tcp_probe("127.0.0.1", 5555)
        ),
    )
    .await
    .unwrap();
    assert_eq!(out.trim(), "open", "{out}");
}

/// Another tenant's terminals are neither listed nor openable: each workload has its own devpts,
/// and `/dev` holds only the minimal set of devices.
#[tokio::test]
async fn other_tenants_terminals_are_neither_listed_nor_openable() {
    let e = env().await;
    let a = spawn(&e, "alice", "tenant-a-pass").await;
    let b = spawn(&e, "bob", "tenant-b-pass").await;
    // Bob holds a terminal open.
    let mut c = ssh_password_cmd(b.node_port, "bob", "tenant-b-pass");
    c.arg("-tt")
        .arg("tty; sleep 30")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut bob = c.spawn().unwrap();
    let mut out = bob.stdout.take().unwrap();
    let mut first = vec![0u8; 64];
    use tokio::io::AsyncReadExt;
    let n = tokio::time::timeout(Duration::from_secs(20), out.read(&mut first))
        .await
        .expect("bob's tty")
        .unwrap();
    let bob_tty = String::from_utf8_lossy(&first[..n]).trim().to_string();
    assert!(bob_tty.starts_with("/dev/pts/"), "{bob_tty}");

    // Alice, without a terminal of her own, sees an empty devpts (only its ptmx).
    let listed = ssh_password(a.node_port, "alice", "tenant-a-pass", "ls -A /dev/pts")
        .await
        .unwrap();
    assert_eq!(listed.trim(), "ptmx", "other terminals listed: {listed}");
    // Not openable by number either, whichever number bob has.
    let out = ssh_password(
        a.node_port,
        "alice",
        "tenant-a-pass",
        "n=0; for i in $(seq 0 15); do (exec 3<>/dev/pts/$i) 2>/dev/null && n=$((n+1)); done; echo $n",
    )
    .await
    .unwrap();
    assert_eq!(out.trim(), "0", "opened another terminal");
    // With a terminal of her own she sees just that one.
    let mut c = ssh_password_cmd(a.node_port, "alice", "tenant-a-pass");
    c.arg("-tt");
    let out = common::ssh::run(c, Some("ls /dev/pts | tr '\\n' ' '; echo; exit\n"))
        .await
        .unwrap();
    assert!(out.contains("0 ptmx"), "{out}");
    let _ = bob.start_kill();
}

/// The host's devices are not there, and a device node on the host's (read-only) filesystem
/// does not work inside (`nodev`).
#[tokio::test]
async fn host_devices_cannot_be_opened() {
    let e = env().await;
    let pw = "dev-pass-1234";
    let r = spawn(&e, "alice", pw).await;
    let out = ssh_password(r.node_port, "alice", pw, "ls -A /dev | sort | tr '\\n' ' '")
        .await
        .unwrap();
    let mut seen: Vec<&str> = out.split_whitespace().collect();
    seen.sort();
    let mut want = vec![
        "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
        "urandom", "zero",
    ];
    want.sort();
    assert_eq!(seen, want, "{out}");
    // The minimal devices work.
    let out = ssh_password(
        r.node_port,
        "alice",
        pw,
        "head -c 4 /dev/urandom | wc -c; head -c 3 /dev/zero | wc -c; echo x > /dev/null && echo ok",
    )
    .await
    .unwrap();
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["4", "3", "ok"]);
    // World-usable host devices, by path and as a device node the host keeps elsewhere.
    let nodes = tempfile::tempdir_in("/var/tmp").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(nodes.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let node = nodes.path().join("null-node");
    let st = std::process::Command::new("mknod")
        .arg(&node)
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(std::fs::OpenOptions::new().write(true).open(&node).is_ok());
    for path in [
        "/dev/kvm".to_string(),
        "/dev/fuse".to_string(),
        "/dev/net/tun".to_string(),
        "/dev/mem".to_string(),
        "/dev/vda".to_string(),
        node.display().to_string(),
    ] {
        let out = ssh_password(
            r.node_port,
            "alice",
            pw,
            &format!("(exec 3<>'{path}') 2>/dev/null && echo opened || echo refused"),
        )
        .await
        .unwrap();
        assert_eq!(out.trim(), "refused", "{path} opened inside");
    }
}

/// 40 silent TCP connections and 20 wrong-password logins against a workload's SSH port do not
/// lock its owner out: the owner still logs in, within 2 s of trying.
#[tokio::test]
async fn silent_connections_and_wrong_passwords_do_not_lock_the_owner_out() {
    let e = env().await;
    let pw = "owner-pass-123";
    let r = spawn(&e, "alice", pw).await;
    let port = r.node_port;
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
    }
    let mut wrong = tokio::task::JoinSet::new();
    for i in 0..20 {
        wrong
            .spawn(async move { ssh_password(port, "alice", &format!("wrong-{i}"), "true").await });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let out = ssh_password(port, "alice", pw, "echo in").await;
    let took = t.elapsed();
    assert_eq!(out.as_deref().map(str::trim), Ok("in"), "owner locked out");
    assert!(took < Duration::from_secs(2), "owner login took {took:?}");
    while let Some(r) = wrong.join_next().await {
        assert!(r.unwrap().is_err(), "a wrong password logged in");
    }
    drop(silent);
}

/// A fork bomb and a memory hog stay inside the tier: the tasks are capped, the memory hog is
/// killed, and the workload and the host go on.
#[tokio::test]
async fn a_fork_bomb_and_a_memory_hog_stay_inside_the_tier() {
    let e = env_with(
        SandboxConfig {
            pids_max: 64,
            ..Default::default()
        },
        64,
    )
    .await;
    let pw = "bomb-pass-123";
    let r = spawn(&e, "alice", pw).await;
    // Bounded fork "bomb": ask for 500 sleepers, count how many the tier allowed.
    let out = ssh_password(
        r.node_port,
        "alice",
        pw,
        "for i in $(seq 500); do sleep 20 2>/dev/null & done 2>/dev/null; ls /proc | grep -cE '^[0-9]+$'",
    )
    .await
    .unwrap_or_else(|e| e);
    let n: usize = out
        .split_whitespace()
        .rev()
        .find_map(|w| w.parse().ok())
        .unwrap_or(0);
    assert!(n <= 64, "{n} tasks ran in a tier of 64: {out}");
    // The host still forks.
    assert!(std::process::Command::new("true")
        .status()
        .unwrap()
        .success());
    if e.backend.cgroup_mode().enforces_memory() {
        let err = ssh_password(
            r.node_port,
            "alice",
            pw,
            "pkill sleep; head -c 300M /dev/zero | tail > /dev/null",
        )
        .await
        .unwrap_err();
        assert!(err.contains("137"), "{err}");
    }
    let out = ssh_password(r.node_port, "alice", pw, "pkill sleep; echo alive")
        .await
        .unwrap();
    assert!(out.contains("alive"), "{out}");
}

/// Writes outside the home fail; the provider's data directory, keys and config are not
/// readable.
#[tokio::test]
async fn no_write_outside_home_and_provider_secrets_unreadable() {
    let e = env().await;
    let pw = "files-pass-123";
    let r = spawn(&e, "alice", pw).await;
    let data = e.dir.path();
    let config_file = data.join("paygress.toml");
    std::fs::write(&config_file, "secret = 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    for p in ["/etc/x", "/usr/x", "/x", "/var/tmp/x", "/dev/x", "/proc/x"] {
        let out = ssh_password(
            r.node_port,
            "alice",
            pw,
            &format!("touch {p} 2>/dev/null && echo wrote || echo denied"),
        )
        .await
        .unwrap();
        assert_eq!(out.trim(), "denied", "wrote {p}");
    }
    let secrets = [
        data.to_path_buf(),
        config_file.clone(),
        e.backend.state_dir().join("ssh_host_ed25519_key"),
        e.cfg
            .nostr
            .private_key_file
            .clone()
            .map(|k| data.join(k))
            .unwrap_or_else(|| data.join("nostr.key")),
    ];
    for s in secrets {
        let out = ssh_password(
            r.node_port,
            "alice",
            pw,
            &format!(
                "cat '{0}' >/dev/null 2>&1 && echo read; ls '{0}' >/dev/null 2>&1 && echo listed; echo end",
                s.display()
            ),
        )
        .await
        .unwrap();
        assert_eq!(out.trim(), "end", "{} readable inside: {out}", s.display());
    }
}

/// Outbound traffic works: the workload reaches a server in a network namespace the test made,
/// and an address the config denies is refused.
#[tokio::test]
async fn outbound_reaches_a_server_in_the_tests_namespace() {
    let net = TestNet::new();
    let e = env().await;
    let pw = "net-pass-1234";
    let r = spawn(&e, "alice", pw).await;
    let host = net.server.ip().to_string();
    let port = net.server.port();
    let out = ssh_password(
        r.node_port,
        "alice",
        pw,
        &format!("timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/{port}; head -n1 <&3'"),
    )
    .await
    .unwrap();
    assert_eq!(out.trim(), "hello-from-testnet");

    // The same server, denied by config, is refused.
    let denied = env_with(
        SandboxConfig {
            egress_deny: vec![format!("{host}/32")],
            ..Default::default()
        },
        512,
    )
    .await;
    let r = spawn(&denied, "alice", pw).await;
    let out = ssh_password(r.node_port, "alice", pw, &tcp_probe(&host, port))
        .await
        .unwrap();
    assert_eq!(out.trim(), "closed");
}

/// A client that never sends its first line is closed after the login grace time (20 s), not
/// held forever.
#[tokio::test]
async fn a_silent_connection_is_closed_after_the_login_grace_time() {
    use tokio::io::AsyncReadExt;
    let e = env().await;
    let r = spawn(&e, "alice", "grace-pass-123").await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", r.node_port))
        .await
        .unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // the server's banner
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a silent connection was held for 40 s");
    assert!(t.elapsed() >= Duration::from_secs(19), "{:?}", t.elapsed());
}

/// The seccomp deny list holds inside: no new user namespace (so no way to capabilities), no
/// kernel keyrings, no bpf, no mounts; ordinary programs run.
#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn denied_syscalls_fail_inside() {
    let e = env().await;
    let pw = "seccomp-pass-1";
    let r = spawn(&e, "alice", pw).await;
    let out = ssh_password(
        r.node_port,
        "alice",
        pw,
        "unshare -U true 2>/dev/null && echo userns; unshare -r true 2>/dev/null && echo root; \
         mount -t tmpfs none ~ 2>/dev/null && echo mounted; \
         perl -e 'print join(\" \", map { my $r = syscall($_, 0, 0, 0); \"($r, \" . ($!+0) . \")\" } (250, 321, 425, 323)), \"\\n\"'; \
         echo ran",
    )
    .await
    .unwrap();
    // keyctl, bpf, io_uring_setup, userfaultfd (x86_64 numbers): -1 with EPERM each.
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["(-1, 1) (-1, 1) (-1, 1) (-1, 1)", "ran"],
        "{out}"
    );
}

/// Secret files and directories the provider names (its key files, its config), even
/// world-readable and outside the data directory, are covered inside; the rest of the host
/// stays readable.
#[tokio::test]
async fn named_secret_paths_are_covered_inside() {
    use std::os::unix::fs::PermissionsExt;
    let outside = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = outside.path().join("nostr.key");
    std::fs::write(&key, "nsec-would-be-here\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let conf_dir = outside.path().join("etc-paygress");
    std::fs::create_dir(&conf_dir).unwrap();
    std::fs::set_permissions(&conf_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(conf_dir.join("paygress.toml"), "x = 1\n").unwrap();
    std::fs::set_permissions(
        conf_dir.join("paygress.toml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let visible = outside.path().join("visible");
    std::fs::write(&visible, "public\n").unwrap();
    std::fs::set_permissions(&visible, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mint = TestMint::start().await;
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let cfg = common::config(dir.path(), &[&mint.url], RATE, common::free_port_block(2));
    let backend = Arc::new(
        SandboxBackend::open_hiding(
            SandboxConfig::default(),
            dir.path(),
            &[key.clone(), conf_dir.clone()],
        )
        .await
        .expect("sandbox backend"),
    );
    let _guard = Cleanup {
        backend: Some(backend.clone()),
    };
    let provider = Provider::open(cfg, backend.clone() as Arc<dyn Backend>)
        .await
        .unwrap();
    let req = SpawnRequest {
        cashu_token: Secret::new(mint.token(100).await),
        ssh_username: "alice".into(),
        ssh_password: Some(Secret::new("secret-pass-1")),
        ..Default::default()
    };
    let r = provider
        .spawn(req, Caller::Local, None, CancellationToken::new())
        .await
        .unwrap();
    let out = ssh_password(
        r.node_port,
        "alice",
        "secret-pass-1",
        &format!(
            "cat '{}'; echo; cat '{}/paygress.toml' 2>/dev/null || echo no-config; cat '{}'",
            key.display(),
            conf_dir.display(),
            visible.display()
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["", "no-config", "public"],
        "{out}"
    );
}

/// The offer says how isolated workloads are (in `get_offers` and as a tag and content of the
/// offer event), and selling the sandbox beyond this machine needs an explicit setting.
#[tokio::test]
async fn the_isolation_level_is_published_and_strangers_need_an_explicit_setting() {
    use paygress::backend::Isolation;
    let e = env().await;
    let offers = e.provider.offers();
    assert_eq!(offers.isolation, Isolation::Sandbox);
    assert_eq!(
        serde_json::to_value(&offers).unwrap()["isolation"],
        "sandbox"
    );
    let keys = nostr_sdk::Keys::generate();
    let event = paygress::market::offer_event(&offers, 60, 1_700_000_000)
        .unwrap()
        .sign_with_keys(&keys)
        .unwrap();
    assert!(event
        .tags
        .iter()
        .any(|t| t.as_slice() == ["isolation", "sandbox"]));
    let listed = paygress::market::ListedOffer::parse(&event).unwrap();
    assert_eq!(listed.offers.isolation, Isolation::Sandbox);

    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let public = SandboxConfig {
        listen_address: "0.0.0.0".into(),
        ..Default::default()
    };
    let err = SandboxBackend::open(public.clone(), dir.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("sell_to_strangers = true"), "{err}");
    let b = SandboxBackend::open(
        SandboxConfig {
            sell_to_strangers: true,
            ..public
        },
        dir.path(),
    )
    .await
    .expect("with the explicit setting");
    drop(b);
}

/// A restarted provider re-adopts a running workload with its network: the egress filter is
/// loaded again and a new slirp4netns attached, so outbound still works, and loopback services
/// of the host still do not answer.
#[tokio::test]
async fn a_readopted_workload_keeps_outbound_access_and_its_filter() {
    let net = TestNet::new();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let open = || SandboxBackend::open(SandboxConfig::default(), dir.path());
    let b = Arc::new(open().await.expect("sandbox"));
    let mut guard = Cleanup {
        backend: Some(b.clone()),
    };
    let spec = paygress::backend::WorkloadSpec {
        name: format!("readopt-{:08x}", rand::random::<u32>()),
        provider_id: "p".into(),
        tier: e_tier(),
        image: "host".into(),
        ssh_username: "alice".into(),
        ssh_password: Secret::new("readopt-pass-1"),
        ssh_public_key: None,
        host_port: Some(common::free_port_block(1).0),
        expires_at: paygress::provider::now_secs() + 600,
    };
    b.create(&spec).await.expect("create");
    let (host, port) = (net.server.ip().to_string(), net.server.port());
    let greet = format!("timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/{port}; head -n1 <&3'");
    let pw = "readopt-pass-1";
    assert_eq!(
        ssh_password(spec.host_port.unwrap(), "alice", pw, &greet)
            .await
            .unwrap()
            .trim(),
        "hello-from-testnet"
    );
    // The provider goes away (its slirp4netns with it); the workload's init stays.
    let init = b.init_pid(&spec.name).await.expect("init");
    guard.backend = None;
    drop(b);
    let b = Arc::new(open().await.expect("sandbox again"));
    let _guard = Cleanup {
        backend: Some(b.clone()),
    };
    assert_eq!(
        b.init_pid(&spec.name).await,
        Some(init),
        "re-adopted, not restarted"
    );
    assert_eq!(
        ssh_password(spec.host_port.unwrap(), "alice", pw, &greet)
            .await
            .unwrap()
            .trim(),
        "hello-from-testnet"
    );
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sp = service.local_addr().unwrap().port();
    let out = ssh_password(
        spec.host_port.unwrap(),
        "alice",
        pw,
        &tcp_probe("127.0.0.1", sp),
    )
    .await
    .unwrap();
    assert_eq!(out.trim(), "closed");
    b.destroy(&spec.name).await.unwrap();
}

fn e_tier() -> paygress::config::Tier {
    paygress::config::Tier {
        id: "t".into(),
        name: "t".into(),
        description: String::new(),
        cpu_millicores: 500,
        memory_mb: 256,
        disk_gb: None,
        rate_msats_per_sec: 1,
    }
}

/// The config file the provider was started with (`--config`), world-readable outside the data
/// directory, is covered inside its sandbox workloads.
#[tokio::test]
async fn the_providers_config_file_is_covered_inside() {
    use std::os::unix::fs::PermissionsExt;
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let etc = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(etc.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = common::config(
        &dir.path().join("data"),
        &[&mint.url],
        RATE,
        common::free_port_block(2),
    );
    let file = etc.path().join("paygress.toml");
    std::fs::write(&file, toml::to_string(&cfg).expect("config as TOML")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = paygress::app::load_config(Some(file.clone())).expect("load");
    let provider = paygress::app::open_provider(cfg).await.expect("provider");
    let req = SpawnRequest {
        cashu_token: Secret::new(mint.token(100).await),
        ssh_username: "alice".into(),
        ssh_password: Some(Secret::new("config-pass-1")),
        ..Default::default()
    };
    let r = provider
        .spawn(req, Caller::Local, None, CancellationToken::new())
        .await
        .unwrap();
    let out = ssh_password(
        r.node_port,
        "alice",
        "config-pass-1",
        &format!("cat '{}' 2>/dev/null | grep -c . || true", file.display()),
    )
    .await
    .unwrap();
    assert_eq!(out.trim(), "0", "the config file is readable inside");
    assert!(std::fs::metadata(&file).unwrap().len() > 0);
    // Clean up: the provider goes, a backend on its state re-adopts the workload and is dropped
    // through the usual guard.
    drop(provider);
    let backend = SandboxBackend::open(SandboxConfig::default(), &dir.path().join("data"))
        .await
        .unwrap();
    let _guard = Cleanup {
        backend: Some(Arc::new(backend)),
    };
}
