//! The local sandbox backend, for real: namespaces, cgroups and the embedded SSH server on this
//! machine, logged into with the real OpenSSH client (`ssh`, `sshpass` for passwords) on
//! 127.0.0.1:PORT, and paid for with real tokens from the in-process test mint.
//!
//! Needs root (the backend makes namespaces, mounts and cgroups). Every test has its own data
//! directory, free ports and random workload names, and removes what it made, so the tests are
//! independent and run in parallel.
//!
//! (Over 1.2k lines: one scenario per test, each long because it walks a whole life cycle over
//! real ssh; the isolation probes live in `tests/isolation.rs`.)
//!
//! Rootless mode is tested for real too: a dedicated unprivileged system user (`paygress-test`,
//! made if missing) runs the real `paygress-mcp-server --demo --demo-backend sandbox`, driven
//! over MCP, and the real `ssh` client logs into what it sold.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mint::TestMint;
use paygress::api::{SpawnRequest, SpawnResult, StatusRequest, TopUpRequest};
use paygress::backend::sandbox::{SandboxBackend, SandboxConfig, HOST_KEY_FILE};
use paygress::backend::{
    Backend, BackendError, BackendKind, Endpoint, WorkloadInfo, WorkloadSpec, WorkloadState,
};
use paygress::config::{Config, Tier};
use paygress::secret::Secret;
use paygress::{Caller, Provider, ProviderError};
use tokio_util::sync::CancellationToken;

/// Rate of the first tier in msat/s: 100 sats buy 1000 s.
const RATE: u64 = 100;

use common::sandbox::Cleanup;
use common::ssh::{keygen, run, ssh_key, ssh_password, ssh_password_cmd};

// ---------------------------------------------------------------------------------------------
// A provider on the sandbox backend, paid through the test mint
// ---------------------------------------------------------------------------------------------

struct Env {
    /// First field: dropped before `dir` takes the state directory away.
    guard: Cleanup,
    mint: TestMint,
    cfg: Config,
    backend: Arc<SandboxBackend>,
    provider: Arc<Provider>,
    dir: tempfile::TempDir,
}

async fn sandbox(data_dir: &Path) -> Arc<SandboxBackend> {
    Arc::new(
        SandboxBackend::open(SandboxConfig::default(), data_dir)
            .await
            .expect("sandbox backend"),
    )
}

/// A provider whose first tier has `memory_mb` of memory.
async fn env_with(
    memory_mb: u32,
    wrap: Option<&dyn Fn(Arc<SandboxBackend>) -> Arc<dyn Backend>>,
) -> Env {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), &[&mint.url], RATE, common::free_port_block(4));
    cfg.tiers[0].memory_mb = memory_mb;
    let backend = sandbox(dir.path()).await;
    let as_dyn: Arc<dyn Backend> = match wrap {
        Some(w) => w(backend.clone()),
        None => backend.clone(),
    };
    let provider = Provider::open(cfg.clone(), as_dyn).await.expect("provider");
    let guard = Cleanup {
        backend: Some(backend.clone()),
    };
    Env {
        mint,
        cfg,
        backend,
        provider,
        dir,
        guard,
    }
}

async fn env() -> Env {
    env_with(512, None).await
}

async fn spawn(
    p: &Arc<Provider>,
    token: &str,
    password: Option<&str>,
    key: Option<String>,
) -> Result<SpawnResult, ProviderError> {
    let req = SpawnRequest {
        cashu_token: Secret::new(token),
        ssh_username: "alice".into(),
        ssh_password: password.map(Secret::new),
        ssh_public_key: key,
        ..Default::default()
    };
    p.spawn(req, Caller::Local, None, CancellationToken::new())
        .await
}

/// The workload name and deadline the core recorded for a pod.
fn row(p: &Provider, pod: &str) -> (String, u64) {
    let w = p.store().workload(pod).unwrap().expect("workload row");
    (w.name, w.expires_at)
}

/// Pids (host view) of every process of the workload, from its cgroup.
fn cgroup_exists(b: &SandboxBackend, name: &str) -> bool {
    b.cgroup_dirs(name).iter().any(|d| d.exists())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Pay → log in with the real client: the buyer's name, home and hostname; only the workload's
/// own processes; the host read-only but the home writable and persistent; key login; a wrong
/// password refused; an interactive PTY.
#[tokio::test]
async fn a_paid_workload_is_a_jail_with_its_own_user_home_and_processes() {
    let e = env().await;
    assert_eq!(e.provider.offers().backend, BackendKind::Sandbox);
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path());
    let t = Instant::now();
    let r = spawn(
        &e.provider,
        &e.mint.token(100).await,
        Some("jail-pass-123"),
        Some(public),
    )
    .await
    .expect("paid spawn");
    eprintln!("paid spawn → SSH ready: {:?}", t.elapsed());
    let (name, _) = row(&e.provider, &r.pod_npub);
    let port = r.node_port;
    let pw = "jail-pass-123";

    // 1. Who, where, which host.
    let out = ssh_password(
        port,
        "alice",
        pw,
        "whoami; echo $HOME; hostname; pwd; id -u",
    )
    .await
    .expect("password login");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["alice", "/home/alice", name.as_str(), "/home/alice", "1000"],
        "{out}"
    );

    // 2. Its own process table: a handful, not the host's.
    let out = ssh_password(port, "alice", pw, "ls /proc | grep -cE '^[0-9]+$'; ps -e")
        .await
        .unwrap();
    let count: usize = out.lines().next().unwrap().trim().parse().unwrap();
    assert!(count <= 8, "{count} processes visible: {out}");
    assert!(!out.contains("cargo") && !out.contains("sandbox-"), "{out}");
    // Pid 1 is the workload's init (the OOM killer is told to spare it where the kernel lets
    // root lower `oom_score_adj`; this test machine does not).
    assert_eq!(
        ssh_password(port, "alice", pw, "cat /proc/1/comm")
            .await
            .unwrap()
            .trim(),
        "sh"
    );

    // 3. The host is read-only, the home is writable and survives sessions.
    for path in ["/etc/x", "/usr/x", "/x", "/var/tmp/x"] {
        let r = ssh_password(port, "alice", pw, &format!("touch {path}")).await;
        assert!(r.is_err(), "writing {path} must fail");
    }
    ssh_password(port, "alice", pw, "echo kept > ~/note; touch /tmp/scratch")
        .await
        .expect("home and /tmp are writable");
    assert_eq!(
        ssh_password(port, "alice", pw, "cat ~/note; stat -c %U ~/note")
            .await
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["kept", "alice"]
    );
    // The password is nowhere in the state directory.
    let state = e.backend.state_dir().join(&name);
    let meta = std::fs::read_to_string(state.join("meta.json")).unwrap();
    assert!(!meta.contains(pw));
    let host_key = e.backend.state_dir().join(HOST_KEY_FILE);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&host_key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // 5. Key login works; a wrong password and a wrong user are refused.
    assert_eq!(
        ssh_key(port, "alice", &key, "echo by-key")
            .await
            .unwrap()
            .trim(),
        "by-key"
    );
    assert!(ssh_password(port, "alice", "wrong-password", "true")
        .await
        .is_err());
    assert!(ssh_password(port, "root", pw, "true").await.is_err());

    // Exit status and stderr travel back.
    let err = ssh_password(port, "alice", pw, "echo oops >&2; exit 7")
        .await
        .unwrap_err();
    assert!(
        err.contains("exit status: 7") && err.contains("oops"),
        "{err}"
    );

    // 6. An interactive PTY session.
    let mut c = ssh_password_cmd(port, "alice", pw);
    c.arg("-tt");
    let out = run(c, Some("tty; echo TERM=$TERM; exit\n"))
        .await
        .expect("pty session");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("TERM=") && !out.contains("TERM=\r"), "{out}");
}

/// A process allocating beyond the tier's memory is killed (cgroup OOM), the workload lives on.
#[tokio::test]
async fn memory_beyond_the_tier_is_killed() {
    let e = env_with(64, None).await;
    if !e.backend.cgroup_mode().enforces_memory() {
        eprintln!("SKIPPED: no writable cgroup hierarchy on this host, memory is not enforced");
        return;
    }
    let r = spawn(
        &e.provider,
        &e.mint.token(100).await,
        Some("mem-pass-123"),
        None,
    )
    .await
    .expect("spawn");
    let err = ssh_password(
        r.node_port,
        "alice",
        "mem-pass-123",
        "head -c 300M /dev/zero | tail > /dev/null",
    )
    .await
    .unwrap_err();
    assert!(err.contains("137"), "{err}");
    // Small allocations are fine, and the workload still answers.
    assert_eq!(
        ssh_password(
            r.node_port,
            "alice",
            "mem-pass-123",
            "head -c 16M /dev/zero | tail | wc -c"
        )
        .await
        .unwrap()
        .trim(),
        "16777216"
    );
}

/// A top-up before the deadline keeps it running; at the deadline the reaper stops it and a live
/// session is closed; a late top-up resumes it with the home intact; after the grace period it
/// is removed with everything it had.
#[tokio::test]
async fn expiry_closes_sessions_top_up_resumes_and_grace_removes() {
    let e = env().await;
    let pw = "exp-pass-123";
    let r = spawn(&e.provider, &e.mint.token(100).await, Some(pw), None)
        .await
        .expect("spawn");
    let (name, expires) = row(&e.provider, &r.pod_npub);
    ssh_password(r.node_port, "alice", pw, "echo before > ~/f")
        .await
        .unwrap();

    // Top-up before the deadline: the old deadline passes harmlessly.
    e.provider
        .top_up(TopUpRequest {
            pod_npub: r.pod_npub.clone(),
            cashu_token: Secret::new(e.mint.token(10).await),
            request_id: None,
        })
        .await
        .expect("top-up");
    let (_, expires2) = row(&e.provider, &r.pod_npub);
    assert_eq!(expires2, expires + 100);
    let rep = e.provider.reap_at(expires).await;
    assert!(rep.stopped.is_empty(), "{rep:?}");
    assert_eq!(
        e.backend.inspect(&name).await.unwrap().unwrap().state,
        WorkloadState::Running
    );

    // A live session, then the deadline.
    let mut live = ssh_password_cmd(r.node_port, "alice", pw);
    live.arg("echo started; sleep 60")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut live = live.spawn().unwrap();
    {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(live.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("session started")
            .unwrap();
        assert_eq!(first.as_deref(), Some("started"));
    }
    let t = Instant::now();
    let rep = e.provider.reap_at(expires2).await;
    assert_eq!(rep.stopped, vec![r.pod_npub.clone()]);
    let status = tokio::time::timeout(Duration::from_secs(15), live.wait())
        .await
        .expect("the live session was closed by the stop")
        .unwrap();
    assert!(!status.success());
    eprintln!("stop → session closed: {:?}", t.elapsed());
    assert_eq!(
        e.backend.inspect(&name).await.unwrap().unwrap().state,
        WorkloadState::Stopped
    );
    assert!(!cgroup_exists(&e.backend, &name), "cgroup removed on stop");
    assert!(ssh_password(r.node_port, "alice", pw, "true")
        .await
        .is_err());

    // A late top-up resumes it, home intact.
    e.provider
        .top_up(TopUpRequest {
            pod_npub: r.pod_npub.clone(),
            cashu_token: Secret::new(e.mint.token(10).await),
            request_id: None,
        })
        .await
        .expect("late top-up");
    assert_eq!(
        ssh_password(r.node_port, "alice", pw, "cat ~/f")
            .await
            .unwrap()
            .trim(),
        "before"
    );

    // Expires again; after the grace period it is deleted with its state.
    let (_, expires3) = row(&e.provider, &r.pod_npub);
    let grace = e.cfg.provider.expiry_grace_seconds;
    assert_eq!(
        e.provider.reap_at(expires3 + 1).await.stopped,
        vec![r.pod_npub.clone()]
    );
    assert_eq!(
        e.provider.reap_at(expires3 + 1 + grace).await.deleted,
        vec![r.pod_npub.clone()]
    );
    assert!(e.backend.inspect(&name).await.unwrap().is_none());
    assert!(!e.backend.state_dir().join(&name).exists());
    assert!(!cgroup_exists(&e.backend, &name));
}

/// A provider that restarts (core and backend dropped, new ones on the same data directory)
/// finds its live workload and serves it again.
#[tokio::test]
async fn a_restarted_provider_readopts_its_live_workload() {
    let e = env().await;
    let pw = "restart-pass-123";
    let r = spawn(&e.provider, &e.mint.token(100).await, Some(pw), None)
        .await
        .expect("spawn");
    let (name, _) = row(&e.provider, &r.pod_npub);
    ssh_password(r.node_port, "alice", pw, "sleep 600 > /dev/null 2>&1 &")
        .await
        .unwrap();
    let pid = e.backend.init_pid(&name).await.expect("init runs");

    let Env {
        mut guard,
        mint,
        cfg,
        backend,
        provider,
        dir,
    } = e;
    guard.backend = None;
    let provider_id = provider.provider_id().to_string();
    drop(provider);
    drop(backend);

    let fresh = sandbox(dir.path()).await;
    // Declared after `dir`, so dropped before it even when the test fails.
    let _guard = Cleanup {
        backend: Some(fresh.clone()),
    };
    let reopened = Provider::open(cfg.clone(), fresh.clone())
        .await
        .expect("reopen");
    assert_eq!(reopened.provider_id(), provider_id);
    assert_eq!(fresh.init_pid(&name).await, Some(pid), "the same init");
    let status = reopened
        .status(
            StatusRequest {
                pod_npub: r.pod_npub.clone(),
            },
            &Caller::Local,
        )
        .await
        .unwrap();
    assert_eq!(status.state, "running");
    let out = ssh_password(r.node_port, "alice", pw, "echo still; pgrep -c sleep")
        .await
        .expect("login after restart");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "still");
    assert!(lines[1].trim().parse::<u32>().unwrap() >= 1, "{out}");
    let listed = fresh.list(&provider_id).await.unwrap();
    assert_eq!(
        listed,
        vec![WorkloadInfo {
            name: name.clone(),
            state: WorkloadState::Running,
            endpoint: Some(Endpoint::on_provider_host(r.node_port))
        }]
    );
    fresh.destroy(&name).await.unwrap();
    assert!(!cgroup_exists(&fresh, &name));
    drop(mint);
}

/// A backend wrapper that takes the host port right after the core reserved it and was paid.
struct PortThief {
    inner: Arc<SandboxBackend>,
    held: Mutex<Vec<std::net::TcpListener>>,
    names: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Backend for PortThief {
    fn kind(&self) -> BackendKind {
        BackendKind::Sandbox
    }
    async fn create(&self, spec: &WorkloadSpec) -> Result<Endpoint, BackendError> {
        self.names.lock().unwrap().push(spec.name.clone());
        let l = std::net::TcpListener::bind(("127.0.0.1", spec.host_port.unwrap()))
            .expect("steal the port");
        self.held.lock().unwrap().push(l);
        self.inner.create(spec).await
    }
    async fn extend(&self, n: &str, at: u64) -> Result<(), BackendError> {
        self.inner.extend(n, at).await
    }
    async fn stop(&self, n: &str) -> Result<(), BackendError> {
        self.inner.stop(n).await
    }
    async fn resume(&self, n: &str) -> Result<Endpoint, BackendError> {
        self.inner.resume(n).await
    }
    async fn destroy(&self, n: &str) -> Result<(), BackendError> {
        self.inner.destroy(n).await
    }
    async fn inspect(&self, n: &str) -> Result<Option<WorkloadInfo>, BackendError> {
        self.inner.inspect(n).await
    }
    async fn list(&self, p: &str) -> Result<Vec<WorkloadInfo>, BackendError> {
        self.inner.list(p).await
    }
}

/// The port is taken after payment: the buyer gets a refund a fresh wallet can receive, and no
/// state directory, cgroup or process is left.
#[tokio::test]
async fn a_port_taken_after_payment_is_refunded_and_leaves_nothing() {
    let thief: Arc<Mutex<Option<Arc<PortThief>>>> = Arc::new(Mutex::new(None));
    let t2 = thief.clone();
    let wrap = move |b: Arc<SandboxBackend>| -> Arc<dyn Backend> {
        let t = Arc::new(PortThief {
            inner: b,
            held: Mutex::new(Vec::new()),
            names: Mutex::new(Vec::new()),
        });
        *t2.lock().unwrap() = Some(t.clone());
        t
    };
    let e = env_with(512, Some(&wrap)).await;
    let err = spawn(
        &e.provider,
        &e.mint.token(100).await,
        Some("thief-pass-123"),
        None,
    )
    .await
    .unwrap_err();
    assert!(err.message.contains("port"), "{err:?}");
    assert!(!err.message.contains("thief-pass-123"));
    let refund = err.refund_token.clone().expect("a refund token");
    assert_eq!(e.mint.receive_fresh(refund.expose()).await.unwrap(), 100);
    let thief = thief.lock().unwrap().clone().unwrap();
    let names = thief.names.lock().unwrap().clone();
    assert_eq!(names.len(), 1);
    assert!(e.backend.inspect(&names[0]).await.unwrap().is_none());
    assert!(!e.backend.state_dir().join(&names[0]).exists());
    assert!(!cgroup_exists(&e.backend, &names[0]));
    let _ = e.dir.path();
}

/// A workload spec for backend-level tests: user `bob`, password `life-pass-123`.
fn spec(what: &str, provider_id: &str, port: u16) -> WorkloadSpec {
    WorkloadSpec {
        name: format!("pgt-{what}-{:08x}", rand::random::<u32>()),
        provider_id: provider_id.into(),
        tier: Tier {
            id: "t".into(),
            name: "t".into(),
            description: String::new(),
            cpu_millicores: 500,
            memory_mb: 128,
            disk_gb: None,
            rate_msats_per_sec: 1,
        },
        image: "paygress-debian-12".into(),
        ssh_username: "bob".into(),
        ssh_password: Secret::new("life-pass-123"),
        ssh_public_key: None,
        host_port: Some(port),
        expires_at: paygress::provider::now_secs() + 3600,
    }
}

/// The host "rebooted" under a workload: its init died without a stop. A new backend on the
/// state directory brings it back, home intact (the core still counts it as running); a
/// workload stopped on expiry stays stopped.
#[tokio::test]
async fn a_lost_init_is_restarted_at_open_and_a_stopped_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let b = sandbox(dir.path()).await;
    let _guard = Cleanup {
        backend: Some(b.clone()),
    };
    let (p1, p2) = common::free_port_block(2);
    let lost = spec("lost", "prov-lost", p1);
    let stopped = spec("stopped", "prov-lost", p2);
    b.create(&lost).await.expect("create");
    b.create(&stopped).await.expect("create");
    ssh_password(p1, "bob", "life-pass-123", "echo mine > ~/f")
        .await
        .unwrap();
    b.stop(&stopped.name).await.unwrap();
    let pid = b.init_pid(&lost.name).await.expect("init runs");
    // SAFETY: plain syscall on the init this test started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.inspect(&lost.name).await.unwrap().unwrap().state != WorkloadState::Stopped {
        assert!(Instant::now() < deadline, "the init did not die");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(_guard);
    drop(b);

    let b2 = sandbox(dir.path()).await;
    let _guard2 = Cleanup {
        backend: Some(b2.clone()),
    };
    assert_eq!(
        b2.inspect(&lost.name).await.unwrap().unwrap().state,
        WorkloadState::Running
    );
    assert_ne!(b2.init_pid(&lost.name).await, Some(pid));
    assert_eq!(
        ssh_password(p1, "bob", "life-pass-123", "cat ~/f")
            .await
            .unwrap()
            .trim(),
        "mine"
    );
    assert_eq!(
        b2.inspect(&stopped.name).await.unwrap().unwrap().state,
        WorkloadState::Stopped
    );
    assert!(ssh_password(p2, "bob", "life-pass-123", "true")
        .await
        .is_err());
    b2.destroy(&lost.name).await.unwrap();
    b2.destroy(&stopped.name).await.unwrap();
    assert!(b2.list("prov-lost").await.unwrap().is_empty());
}

/// Through the trait without payment: a failure after the workload was made (its SSH listener
/// cannot serve the key, which fails late) — and the whole stop/resume/destroy cycle, hostile
/// names, list per provider.
#[tokio::test]
async fn the_backend_lifecycle_and_rollback_through_the_trait() {
    let dir = tempfile::tempdir().unwrap();
    let b = sandbox(dir.path()).await;
    let _guard = Cleanup {
        backend: Some(b.clone()),
    };
    let (port, _) = common::free_port_block(1);
    let spec = spec("life", "prov-life", port);
    let name = spec.name.clone();

    // An unsupported key type fails before anything is made, and names no secret.
    let mut bad = spec.clone();
    bad.ssh_public_key = Some("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 x".into());
    let err = b.create(&bad).await.unwrap_err();
    assert!(!err.to_string().contains("life-pass-123"), "{err}");
    assert!(b.inspect(&name).await.unwrap().is_none());

    b.create(&spec).await.expect("create");
    // Creating it twice is refused and leaves the first alone.
    assert!(b.create(&spec).await.is_err());
    assert_eq!(
        ssh_password(port, "bob", "life-pass-123", "whoami")
            .await
            .unwrap()
            .trim(),
        "bob"
    );
    assert_eq!(b.list("prov-life").await.unwrap().len(), 1);
    assert!(b.list("someone-else").await.unwrap().is_empty());

    b.extend(&name, 42).await.unwrap();
    b.stop(&name).await.unwrap();
    b.stop(&name).await.expect("stopping twice is fine");
    assert_eq!(
        b.inspect(&name).await.unwrap().unwrap().state,
        WorkloadState::Stopped
    );
    b.resume(&name).await.unwrap();
    b.resume(&name)
        .await
        .expect("resuming a running one is fine");
    assert_eq!(
        ssh_password(port, "bob", "life-pass-123", "echo back")
            .await
            .unwrap()
            .trim(),
        "back"
    );
    b.destroy(&name).await.unwrap();
    b.destroy(&name).await.expect("destroying twice is fine");
    assert!(b.inspect(&name).await.unwrap().is_none());
    assert!(matches!(
        b.stop(&name).await,
        Err(BackendError::NotFound(_))
    ));
    assert!(matches!(
        b.extend(&name, 1).await,
        Err(BackendError::NotFound(_))
    ));
    for hostile in ["../x", "a/b", "", "UP"] {
        assert!(b.inspect(hostile).await.unwrap().is_none());
        b.destroy(hostile).await.unwrap();
    }
    assert!(!dir.path().join("sandbox").join(&name).exists());
}

// ---------------------------------------------------------------------------------------------
// Rootless: the demo run by an ordinary user
// ---------------------------------------------------------------------------------------------

const TEST_USER: &str = "paygress-test";

/// uid and gid of the dedicated unprivileged test user, made the first time.
fn test_user() -> (u32, u32) {
    static MAKING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    let id = |flag: &str| -> Option<u32> {
        let out = std::process::Command::new("id")
            .arg(flag)
            .arg(TEST_USER)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let st = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(TEST_USER)
            .status()
            .expect("useradd");
        // 9: the name was taken meanwhile (another test binary made it).
        assert!(st.success() || st.code() == Some(9), "useradd: {st}");
    }
    let ids = (id("-u").expect("uid"), id("-g").expect("gid"));
    assert_ne!(ids.0, 0, "{TEST_USER} must not be root");
    ids
}

/// A directory the test user owns, outside `/tmp` and `/home` (so that the jail's own tmpfs
/// do not hide it by chance: hiding it is rootless mode's job), with `home/` and `tmp/` for
/// the demo's `$HOME` and `$TMPDIR`. Dropping it kills whatever inits the demo left (by the pids
/// its state records) and removes it.
struct UserWork {
    dir: tempfile::TempDir,
}

impl UserWork {
    fn new(uid: u32, gid: u32) -> UserWork {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        for sub in ["", "home", "tmp"] {
            let p = dir.path().join(sub);
            std::fs::create_dir_all(&p).unwrap();
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        }
        UserWork { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The demo's data directory (`$TMPDIR/paygress-demo-*/data`), once it exists.
    fn data_dir(&self) -> Option<PathBuf> {
        std::fs::read_dir(self.path().join("tmp"))
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("data"))
            .find(|p| p.is_dir())
    }

    /// Every workload directory of the demo's sandbox.
    fn workloads(&self) -> Vec<PathBuf> {
        let Some(data) = self.data_dir() else {
            return Vec::new();
        };
        std::fs::read_dir(data.join("sandbox"))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.join("meta.json").exists())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The init pid a workload's metadata records.
    fn init_pid(workload: &Path) -> Option<i32> {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(workload.join("meta.json")).ok()?).ok()?;
        meta["init_pid"].as_i64().map(|p| p as i32)
    }
}

impl Drop for UserWork {
    fn drop(&mut self) {
        for w in self.workloads() {
            if let Some(pid) = Self::init_pid(&w) {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if cmdline.starts_with(b"paygress-init") {
                    // SAFETY: plain syscall on the init the demo under test started.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

/// The server binary, where the test user can run it: as built if every directory on the way
/// lets others through, else a copy (it is self-contained) in `work`.
fn binary_for(work: &UserWork) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_paygress-mcp-server"));
    let others = |p: &Path, bits: u32| {
        std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & bits == bits)
    };
    if bin.ancestors().skip(1).all(|d| others(d, 0o001)) && others(&bin, 0o005) {
        return bin;
    }
    let copy = work.path().join("paygress-mcp-server");
    std::fs::copy(&bin, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// `setpriv` arguments that run a program as the test user with no supplementary groups.
fn as_user(uid: u32, gid: u32) -> Vec<String> {
    vec![
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--clear-groups".into(),
        "--".into(),
    ]
}

/// The demo as the test user, in a clean environment.
fn demo_as_user(work: &UserWork, uid: u32, gid: u32) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.args(as_user(uid, gid))
        .arg(binary_for(work))
        .args(["--demo", "--demo-backend", "sandbox"])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", work.path().join("home"))
        .env("TMPDIR", work.path().join("tmp"))
        .current_dir(work.path());
    cmd
}

/// Whether this machine lets an ordinary user make a user namespace and mount in it, asked of
/// util-linux's `unshare` (independently of the code under test).
fn userns_works_for(uid: u32, gid: u32) -> bool {
    std::process::Command::new("setpriv")
        .args(as_user(uid, gid))
        .args([
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "--pid",
            "--fork",
        ])
        .args([
            "sh",
            "-c",
            "mount -t tmpfs none /tmp && mount -t proc proc /proc",
        ])
        .current_dir("/")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What the demo says on stderr when it cannot start; panics if it starts.
async fn demo_failure(mut cmd: tokio::process::Command) -> String {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the demo ended in time")
        .expect("the demo ran");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the demo started: {stderr}");
    stderr
}

fn assert_precise_userns_error(stderr: &str, uid: u32) {
    assert!(
        stderr.contains(&format!(
            "the sandbox backend cannot run as an unprivileged user (uid {uid})"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("LXD"), "{stderr}");
}

/// An ordinary user runs `paygress-mcp-server --demo --demo-backend sandbox`: an MCP client
/// pays for a pod, and the real ssh client finds a rootless jail — the buyer's name, only the
/// workload's processes, the host and the provider's own files not writable (nor its secrets
/// readable), the home writable — running under the user's own uid in its own user namespace.
#[tokio::test]
async fn an_unprivileged_user_runs_the_demo_on_a_rootless_sandbox() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::TokioChildProcess;
    use rmcp::ServiceExt;
    use serde_json::{json, Value};
    use tokio::io::AsyncBufReadExt;

    let (uid, gid) = test_user();
    let work = UserWork::new(uid, gid);
    let cmd = demo_as_user(&work, uid, gid);
    if !userns_works_for(uid, gid) {
        let stderr = demo_failure(cmd).await;
        assert_precise_userns_error(&stderr, uid);
        eprintln!(
            "this machine cannot do unprivileged user namespaces: checked that the sandbox \
             says so precisely instead:\n{stderr}"
        );
        return;
    }

    let (transport, stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo as the test user");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let mut reader = tokio::io::BufReader::new(stderr.expect("stderr")).lines();
    tokio::spawn(async move {
        while let Ok(Some(l)) = reader.next_line().await {
            sink.lock().unwrap().push(l);
        }
    });
    let log = || lines.lock().unwrap().join("\n");
    let client = match tokio::time::timeout(Duration::from_secs(90), ().serve(transport)).await {
        Ok(Ok(c)) => c,
        other => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            panic!("the demo did not come up ({:?}):\n{}", other.is_ok(), log());
        }
    };
    let call = |name: &'static str, args: Value| {
        let client = &client;
        let log = &log;
        async move {
            let r = client
                .call_tool(
                    CallToolRequestParams::new(name)
                        .with_arguments(args.as_object().cloned().unwrap_or_default()),
                )
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}\n{}", log()));
            assert_ne!(
                r.is_error,
                Some(true),
                "{name}: {:?}\n{}",
                r.structured_content,
                log()
            );
            r.structured_content.expect("structured content")
        }
    };
    let token = call("get_demo_token", json!({"amount_sats": 10})).await["cashu_token"]
        .as_str()
        .expect("a token")
        .to_string();
    let pw = "rootless-pass-123";
    let pod = call(
        "spawn_pod",
        json!({"cashu_token": token, "pod_spec_id": "small", "ssh_username": "alice", "ssh_password": pw}),
    )
    .await;
    let port = pod["node_port"].as_u64().expect("a port") as u16;
    assert!(log().contains("rootless mode"), "{}", log());

    // Who and where.
    let out = ssh_password(port, "alice", pw, "whoami; id -u; echo $HOME; pwd")
        .await
        .unwrap_or_else(|e| panic!("login: {e}\n{}", log()));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["alice", "1000", "/home/alice", "/home/alice"],
        "{out}"
    );

    // Only the workload's own processes: its init, the session's shell, ps.
    let out = ssh_password(port, "alice", pw, "ps -e -o pid=,comm=")
        .await
        .unwrap();
    assert!(out.lines().count() <= 6, "ps shows the host:\n{out}");
    assert!(out.contains("ps"), "{out}");
    for host_only in ["paygress-mcp", "setpriv", "cargo", "sandbox-"] {
        assert!(
            !out.contains(host_only),
            "{host_only} visible inside:\n{out}"
        );
    }

    // The init really is rootless: the test user's uid on the host, in a user namespace of its
    // own.
    let workloads = work.workloads();
    assert_eq!(workloads.len(), 1, "{workloads:?}");
    let init = UserWork::init_pid(&workloads[0]).expect("the init's pid");
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let host_uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .expect("Uid line");
    assert_eq!(host_uid, uid.to_string(), "{status}");
    assert_ne!(
        std::fs::read_link(format!("/proc/{init}/ns/user")).unwrap(),
        std::fs::read_link("/proc/self/ns/user").unwrap()
    );

    // Writes outside the home fail — the host's directories and the ones the provider's user
    // owns on the host alike — and leave nothing behind.
    let data = work.data_dir().expect("the demo's data directory");
    let provider_home = work.path().join("home");
    let outside = [
        PathBuf::from("/usr/pg-x"),
        PathBuf::from("/etc/pg-x"),
        PathBuf::from("/var/tmp/pg-x"),
        PathBuf::from("/pg-x"),
        work.path().join("pg-x"),
        provider_home.join("pg-x"),
        data.join("pg-x"),
        workloads[0].join("home").join("pg-x"),
    ];
    for p in &outside {
        let cmd = format!(
            "touch '{}' 2>/dev/null && echo wrote || echo denied",
            p.display()
        );
        let out = ssh_password(port, "alice", pw, &cmd).await.unwrap();
        assert_eq!(out.trim(), "denied", "writing {} inside", p.display());
        assert!(!p.exists(), "{} was written on the host", p.display());
    }
    // The provider's secrets (SSH host key, metadata) and home are not even readable.
    let key = data.join("sandbox").join(HOST_KEY_FILE);
    assert!(key.exists());
    let cmd = format!(
        "cat '{}' >/dev/null 2>&1 && echo read-key; cat '{}' >/dev/null 2>&1 && echo read-meta; ls -A '{}' 2>/dev/null | wc -l",
        key.display(),
        workloads[0].join("meta.json").display(),
        provider_home.display()
    );
    let out = ssh_password(port, "alice", pw, &cmd).await.unwrap();
    assert_eq!(out.trim(), "0", "{out}");

    // The home is writable, survives sessions, and is the workload's home on the host.
    ssh_password(
        port,
        "alice",
        pw,
        "echo kept > ~/f; mkdir -p ~/d && touch ~/d/x",
    )
    .await
    .expect("the home is writable");
    assert_eq!(
        ssh_password(port, "alice", pw, "cat ~/f")
            .await
            .unwrap()
            .trim(),
        "kept"
    );
    let on_host = workloads[0].join("home").join("f");
    assert_eq!(std::fs::read_to_string(&on_host).unwrap().trim(), "kept");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&on_host).unwrap().uid(), uid);
    // /tmp inside is the workload's own.
    ssh_password(port, "alice", pw, "touch /tmp/scratch")
        .await
        .expect("/tmp is writable");

    // Exit status and stderr travel back from the session (a grandchild here, see the jail).
    let err = ssh_password(port, "alice", pw, "echo oops >&2; exit 7")
        .await
        .unwrap_err();
    assert!(
        err.contains("exit status: 7") && err.contains("oops"),
        "{err}"
    );
    // The tier's 256 MiB hold (a cgroup, or RLIMIT_AS per process without one).
    let out = ssh_password(
        port,
        "alice",
        pw,
        "head -c 600M /dev/zero | tail > /dev/null 2>&1; echo exit=$?",
    )
    .await
    .unwrap();
    assert!(
        out.trim().starts_with("exit=") && out.trim() != "exit=0",
        "600 MB in a 256 MiB pod: {out}"
    );

    // A wrong password is refused; an interactive terminal works.
    assert!(ssh_password(port, "alice", "wrong-password", "true")
        .await
        .is_err());
    let mut c = ssh_password_cmd(port, "alice", pw);
    c.arg("-tt");
    let out = run(c, Some("tty; exit\n")).await.expect("pty session");
    assert!(out.contains("/dev/pts/"), "{out}");

    // Isolation, rootless: the demo's own mint on the host's 127.0.0.1 does not answer inside;
    // only the workload's own terminals and the minimal /dev are there; host devices the test
    // user could open outside do not open inside.
    let mint_port: u16 = log()
        .lines()
        .find_map(|l| l.split("demo: mint ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|url| url.trim_end_matches('/').rsplit(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no mint URL in the demo's log:\n{}", log()));
    assert!(std::net::TcpStream::connect(("127.0.0.1", mint_port)).is_ok());
    let out = ssh_password(
        port,
        "alice",
        pw,
        &format!(
            "if timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/{mint_port}' 2>/dev/null; then echo open; else echo closed; fi; \
             ls -A /dev/pts; ls /dev | wc -l; for d in /dev/kvm /dev/fuse /dev/net/tun; do (exec 3<>$d) 2>/dev/null && echo opened $d; done; echo end"
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["closed", "ptmx", "13", "end"],
        "inside a rootless workload"
    );

    // Abstract unix sockets ignore mount namespaces, and their servers (X11, some D-Bus buses)
    // often trust any peer with their uid, which the buyer shares with the provider here: where
    // Landlock can scope them, the jail cannot reach the host's. Perl (in the host's read-only
    // /usr) makes the connection; the test user reaches the same socket outside the jail.
    if Path::new("/usr/bin/perl").exists() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("paygress-test-{:08x}", rand::random::<u32>());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        let script = format!(
            "socket(S, PF_UNIX, SOCK_STREAM, 0) or die; \
             print connect(S, pack_sockaddr_un(\"\\0{name}\")) ? \"connected\" : \"refused: $!\""
        );
        let outside = std::process::Command::new("setpriv")
            .args(as_user(uid, gid))
            .args(["/usr/bin/perl", "-MSocket", "-e", &script])
            .current_dir("/")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&outside.stdout), "connected");
        let inside = ssh_password(
            port,
            "alice",
            pw,
            &format!("/usr/bin/perl -MSocket -e '{script}'"),
        )
        .await
        .unwrap();
        if log().contains("Landlock cannot scope abstract unix sockets") {
            eprintln!("this kernel cannot scope abstract sockets: the jail reaches them");
            assert_eq!(inside, "connected");
        } else {
            assert!(inside.starts_with("refused"), "{inside}");
        }
    } else {
        eprintln!("no /usr/bin/perl: abstract socket check skipped");
    }

    // Closing stdin ends the demo, which destroys its pods: the init is killed and reaped (it is
    // the demo's own child), its state removed.
    let _ = client.cancel().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{init}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the init outlived the demo:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!workloads[0].exists(), "the workload's state is left");
}

/// Where unprivileged user namespaces are off, `open` fails at once with what is off, how to
/// switch it on, and the alternatives — checked for real: the demo runs as the test user inside
/// a user namespace whose `user.max_user_namespaces` is 0 (the limit is per user namespace, so
/// the host is untouched).
#[tokio::test]
async fn without_user_namespaces_an_unprivileged_open_says_what_to_do() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let (uid, gid) = test_user();
    if uid >= 65536 || gid >= 65536 {
        eprintln!("SKIPPED: {TEST_USER} has ids beyond the range this test maps");
        return;
    }
    let work = UserWork::new(uid, gid);
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(as_user(uid, gid))
        .arg(binary_for(&work))
        .args(["--demo", "--demo-backend", "sandbox"])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", work.path().join("home"))
        .env("TMPDIR", work.path().join("tmp"))
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // The child makes a user namespace; this process maps ids 0..65536 one to one into it; the
    // child (root in there) sets the namespace's user.max_user_namespaces to 0, then execs.
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    // SAFETY: the closure makes only plain syscalls on a socket and paths prepared before.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let pid = libc::getpid().to_le_bytes();
            let mut go = [0u8; 1];
            if libc::write(fd, pid.as_ptr().cast(), 4) != 4
                || libc::read(fd, go.as_mut_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            let f = libc::open(
                c"/proc/sys/user/max_user_namespaces".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if f < 0 || libc::write(f, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(f);
            Ok(())
        });
    }
    let mapper = std::thread::spawn(move || {
        let mut pid = [0u8; 4];
        ours.read_exact(&mut pid).unwrap();
        let pid = i32::from_le_bytes(pid);
        std::fs::write(format!("/proc/{pid}/uid_map"), "0 0 65536\n").unwrap();
        std::fs::write(format!("/proc/{pid}/gid_map"), "0 0 65536\n").unwrap();
        ours.write_all(b"1").unwrap();
    });
    let child = cmd.spawn().expect("the demo in a user namespace");
    drop(theirs);
    mapper.join().unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the demo started: {stderr}");
    assert_precise_userns_error(&stderr, uid);
    assert!(
        stderr.contains("user namespaces are disabled (sysctl user.max_user_namespaces = 0)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sudo sysctl -w user.max_user_namespaces="),
        "{stderr}"
    );
    assert!(work.workloads().is_empty());
}

/// A provider user with supplementary groups is refused in rootless mode (the groups would stay
/// with every buyer): the demo says which groups and what to do.
#[tokio::test]
async fn rootless_with_supplementary_groups_is_refused() {
    let (uid, gid) = test_user();
    let work = UserWork::new(uid, gid);
    if !userns_works_for(uid, gid) {
        eprintln!("SKIPPED: no unprivileged user namespaces here");
        return;
    }
    // `disk` where it exists (the kind of group that hands out the host), else gid 6.
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.args([
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--groups=6".into(),
        "--".into(),
    ])
    .arg(binary_for(&work))
    .args(["--demo", "--demo-backend", "sandbox"])
    .env_clear()
    .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    .env("HOME", work.path().join("home"))
    .env("TMPDIR", work.path().join("tmp"))
    .current_dir(work.path());
    let stderr = demo_failure(cmd).await;
    assert!(
        stderr.contains("refuses to run rootless with supplementary groups (")
            && stderr.contains("(6)"),
        "{stderr}"
    );
    assert!(stderr.contains("setpriv --clear-groups"), "{stderr}");
    assert!(work.workloads().is_empty());
}

/// Rootless workloads get outbound access too, through the same egress filter: the demo, run by
/// the test user, sells a pod that reaches a server in a network namespace the test made, while
/// the host's loopback services stay closed. slirp4netns needs `/dev/net/tun`, which this
/// machine keeps 0600: the demo runs in a private mount namespace where a 0666 node of the same
/// device is bound over it (the host's node is untouched).
#[tokio::test]
async fn a_rootless_workload_reaches_outbound_through_its_filter() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::TokioChildProcess;
    use rmcp::ServiceExt;
    use serde_json::{json, Value};

    let (uid, gid) = test_user();
    if !userns_works_for(uid, gid) {
        eprintln!("SKIPPED: no unprivileged user namespaces here");
        return;
    }
    let net = common::netns::TestNet::new();
    let work = UserWork::new(uid, gid);
    let node = work.path().join("tun");
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "n=$1; shift; mknod \"$n\" c 10 200 && chmod 666 \"$n\" && \
             mount --bind \"$n\" /dev/net/tun && exec \"$@\"",
        )
        .arg("sh")
        .arg(&node)
        .arg("setpriv")
        .args(as_user(uid, gid))
        .arg(binary_for(&work))
        .args(["--demo", "--demo-backend", "sandbox"])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", work.path().join("home"))
        .env("TMPDIR", work.path().join("tmp"))
        .current_dir(work.path());
    let (transport, _stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let client = tokio::time::timeout(Duration::from_secs(90), ().serve(transport))
        .await
        .expect("the demo came up in time")
        .expect("MCP session");
    let call = |name: &'static str, args: Value| {
        let client = &client;
        async move {
            let r = client
                .call_tool(
                    CallToolRequestParams::new(name)
                        .with_arguments(args.as_object().cloned().unwrap_or_default()),
                )
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_ne!(r.is_error, Some(true), "{name}: {:?}", r.structured_content);
            r.structured_content.expect("structured content")
        }
    };
    let token = call("get_demo_token", json!({"amount_sats": 10})).await["cashu_token"]
        .as_str()
        .expect("a token")
        .to_string();
    let pw = "rootless-net-123";
    let pod = call(
        "spawn_pod",
        json!({"cashu_token": token, "pod_spec_id": "small", "ssh_username": "alice", "ssh_password": pw}),
    )
    .await;
    let port = pod["node_port"].as_u64().expect("a port") as u16;
    let (host, sport) = (net.server.ip().to_string(), net.server.port());
    let out = ssh_password(
        port,
        "alice",
        pw,
        &format!("timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/{sport}; head -n1 <&3'"),
    )
    .await
    .unwrap();
    assert_eq!(out.trim(), "hello-from-testnet");
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lp = service.local_addr().unwrap().port();
    let out = ssh_password(
        port,
        "alice",
        pw,
        &format!(
            "if timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/{lp}' 2>/dev/null; then echo open; else echo closed; fi"
        ),
    )
    .await
    .unwrap();
    assert_eq!(out.trim(), "closed");
    let _ = client.cancel().await;
}
