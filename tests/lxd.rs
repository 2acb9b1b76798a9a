//! The LXD backend on the real LXD daemon, with the locally built base image.
//!
//! Needs `provider/lxd-setup.sh` and `provider/build-base-image.sh` to have run (CI does both);
//! these tests are not skipped when LXD is missing — they fail, because an LXD backend that was
//! never run against LXD is not tested. Every test makes its own instances (random names, free
//! ports) and removes them at the end, even when it fails (a drop guard), so the tests are
//! independent and can run in parallel.
//!
//! Logins are checked with the real OpenSSH client (`ssh`, with `sshpass` for passwords) on
//! 127.0.0.1:PORT, and what the buyer sees inside (`nproc`, `free -m`) must match the tier.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paygress::backend::lxd::{LxdBackend, LxdConfig, KEY_EXPIRES_AT, KEY_PROVIDER};
use paygress::backend::{Backend, BackendError, Endpoint, WorkloadSpec, WorkloadState};
use paygress::config::Tier;
use paygress::secret::Secret;

const IMAGE: &str = "paygress-debian-12";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn backend() -> Arc<LxdBackend> {
    Arc::new(LxdBackend::new(LxdConfig::default()).expect("LXD backend"))
}

fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A name for this test's instance: `pgt-<what>-<random>`.
fn name(what: &str) -> String {
    format!("pgt-{what}-{}", suffix())
}

/// A host port nobody listens on right now.
fn free_port() -> u16 {
    for _ in 0..100 {
        let p: u16 = 40_000 + (rand::random::<u16>() % 20_000);
        if std::net::TcpListener::bind(("0.0.0.0", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port");
}

fn tier(cpu_millicores: u32, memory_mb: u32) -> Tier {
    Tier {
        id: format!("t{cpu_millicores}-{memory_mb}"),
        name: "test".into(),
        description: String::new(),
        cpu_millicores,
        memory_mb,
        disk_gb: Some(2),
        rate_msats_per_sec: 1,
    }
}

fn spec(
    name: &str,
    provider_id: &str,
    tier: Tier,
    password: &str,
    key: Option<String>,
) -> WorkloadSpec {
    WorkloadSpec {
        name: name.into(),
        provider_id: provider_id.into(),
        tier,
        image: IMAGE.into(),
        ssh_username: "alice".into(),
        ssh_password: Secret::new(password),
        ssh_public_key: key,
        host_port: Some(free_port()),
        expires_at: paygress::provider::now_secs() + 3600,
    }
}

fn random_password() -> String {
    format!("Pw-{}-{}", suffix(), suffix())
}

/// Removes the named instances when dropped, whatever happened in the test.
struct Cleanup(Vec<String>);

impl Cleanup {
    fn new(names: &[&str]) -> Cleanup {
        Cleanup(names.iter().map(|s| s.to_string()).collect())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        // Drop cannot await, and may run inside the test's runtime: use a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let b = LxdBackend::new(LxdConfig::default()).expect("backend");
                for n in names {
                    if let Err(e) = b.destroy(&n).await {
                        eprintln!("cleanup of {n} failed: {e}");
                    }
                }
            })
        })
        .join();
    }
}

/// Run a command over SSH with a password (real OpenSSH client, password through sshpass's
/// environment, never on a command line).
async fn ssh_password(port: u16, user: &str, password: &str, cmd: &str) -> Result<String, String> {
    let mut c = tokio::process::Command::new("sshpass");
    c.arg("-e")
        .arg("ssh")
        .args(common::SSH_OPTS)
        .args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ])
        .arg("-p")
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg(cmd)
        .env("SSHPASS", password);
    run(c).await
}

async fn ssh_key(port: u16, user: &str, key: &Path, cmd: &str) -> Result<String, String> {
    let mut c = tokio::process::Command::new("ssh");
    c.args(common::SSH_OPTS)
        .args([
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
        .arg(cmd);
    run(c).await
}

async fn run(mut c: tokio::process::Command) -> Result<String, String> {
    c.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .map_err(|_| "ssh timed out".to_string())?
        .map_err(|e| format!("cannot run ssh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ssh exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `nproc` and the `Mem:` total of `free -m` inside the workload.
fn parse_limits(out: &str) -> (u32, u32) {
    let mut lines = out.lines();
    let nproc = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("nproc output");
    let mem = out
        .lines()
        .find(|l| l.starts_with("Mem:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("free -m output");
    (nproc, mem)
}

const LIMITS_CMD: &str = "nproc; free -m";

/// How many instances LXD has whose name starts with `prefix` (seen through `list` on every
/// provider id is not possible, so this asks LXD directly via inspect of the known name).
async fn exists(b: &LxdBackend, name: &str) -> bool {
    b.inspect(name).await.expect("inspect").is_some()
}

// ---------------------------------------------------------------------------------------------
// Backend-level tests (through the trait, no payment)
// ---------------------------------------------------------------------------------------------

/// Spawn → SSH with a password → the tier's limits inside → extend → stop → resume → destroy.
#[tokio::test]
async fn a_workload_lives_its_whole_life_on_real_lxd() {
    let b = backend();
    let n = name("life");
    let _guard = Cleanup::new(&[&n]);
    let provider_id = format!("prov-{}", suffix());
    let pw = random_password();
    let s = spec(&n, &provider_id, tier(1000, 512), &pw, None);

    let t = Instant::now();
    b.create(&s).await.expect("create");
    eprintln!("create → SSH ready: {:?}", t.elapsed());

    // Ready means ready: the very first login works.
    let out = ssh_password(s.host_port.unwrap(), "alice", &pw, LIMITS_CMD)
        .await
        .expect("password login");
    let (nproc, mem) = parse_limits(&out);
    assert_eq!(nproc, 1, "nproc inside: {out}");
    assert!(
        (500..=512).contains(&mem),
        "free -m total {mem} MiB for a 512 MiB tier: {out}"
    );
    // The buyer is not root, and a wrong password is refused.
    assert_eq!(
        ssh_password(s.host_port.unwrap(), "alice", &pw, "id -un")
            .await
            .unwrap()
            .trim(),
        "alice"
    );
    assert!(
        ssh_password(s.host_port.unwrap(), "alice", "wrong-password", "true")
            .await
            .is_err()
    );

    // Inspect and list see it, with its port; another provider id sees nothing.
    let info = b.inspect(&n).await.unwrap().expect("exists");
    assert_eq!(info.state, WorkloadState::Running);
    assert_eq!(
        info.endpoint,
        Some(Endpoint::on_provider_host(s.host_port.unwrap()))
    );
    let mine = b.list(&provider_id).await.unwrap();
    assert_eq!(
        mine.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        vec![n.as_str()]
    );
    assert!(b
        .list("someone-else")
        .await
        .unwrap()
        .iter()
        .all(|w| w.name != n));

    // The marks are on the instance.
    let cfg = b.instance_config(&n).await.unwrap().expect("config");
    assert_eq!(
        cfg.get(KEY_PROVIDER).map(String::as_str),
        Some(provider_id.as_str())
    );
    assert_eq!(cfg.get(KEY_EXPIRES_AT), Some(&s.expires_at.to_string()));
    assert_eq!(
        cfg.get("security.privileged").map(String::as_str),
        Some("false")
    );
    assert!(!cfg.contains_key("security.nesting"));
    assert!(
        cfg.values().all(|v| !v.contains(&pw)),
        "the password is stored nowhere in the config"
    );

    // Extend moves the deadline mark.
    b.extend(&n, s.expires_at + 600).await.unwrap();
    let cfg = b.instance_config(&n).await.unwrap().unwrap();
    assert_eq!(
        cfg.get(KEY_EXPIRES_AT),
        Some(&(s.expires_at + 600).to_string())
    );

    // Stop keeps the disk; resume brings SSH back with the same user.
    let t = Instant::now();
    b.stop(&n).await.unwrap();
    eprintln!("stop: {:?}", t.elapsed());
    assert_eq!(
        b.inspect(&n).await.unwrap().unwrap().state,
        WorkloadState::Stopped
    );
    b.stop(&n)
        .await
        .expect("stopping a stopped workload is fine");
    let t = Instant::now();
    b.resume(&n).await.unwrap();
    eprintln!("resume → SSH ready: {:?}", t.elapsed());
    assert_eq!(
        ssh_password(s.host_port.unwrap(), "alice", &pw, "echo back")
            .await
            .unwrap()
            .trim(),
        "back"
    );

    // Destroy removes it; destroying again, or extending it, says so properly.
    let t = Instant::now();
    b.destroy(&n).await.unwrap();
    eprintln!("destroy: {:?}", t.elapsed());
    assert!(b.inspect(&n).await.unwrap().is_none());
    b.destroy(&n)
        .await
        .expect("destroying a missing workload is not an error");
    assert!(matches!(
        b.extend(&n, 1).await,
        Err(BackendError::NotFound(_))
    ));
    assert!(matches!(b.stop(&n).await, Err(BackendError::NotFound(_))));
    assert!(b.list(&provider_id).await.unwrap().is_empty());
}

/// A public key works on its own; a bigger tier shows bigger limits.
#[tokio::test]
async fn key_login_and_a_two_cpu_tier() {
    let b = backend();
    let n = name("key");
    let _guard = Cleanup::new(&[&n]);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "paygress-test", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let s = spec(
        &n,
        "prov-key",
        tier(2000, 1024),
        &random_password(),
        Some(public.trim().to_string()),
    );

    b.create(&s).await.expect("create");
    // The host keys create reports (read while the login was being made) are the container's
    // own: the buyer's client, pinned to exactly them, logs in.
    let pinned = b.host_key_fingerprints(&n);
    assert!(
        !pinned.is_empty(),
        "create reported no host key fingerprints"
    );
    let agent_key = paygress::buyer::ssh::load_or_create_key(&key).expect("key");
    let seen = paygress::buyer::ssh::run(
        "127.0.0.1",
        s.host_port.unwrap(),
        "alice",
        &agent_key,
        &pinned,
        "id -un",
        Duration::from_secs(20),
    )
    .await
    .expect("a login pinned to the reported host keys");
    assert_eq!(seen.stdout.trim(), "alice");
    assert!(pinned.contains(&seen.host_key), "{seen:?} vs {pinned:?}");
    // And they are all of them: what OpenSSH's own ssh-keyscan finds on the port.
    let scan = std::process::Command::new("sh")
        .arg("-c")
        .arg("ssh-keyscan -p \"$1\" 127.0.0.1 2>/dev/null | ssh-keygen -lf - | awk '{print $2}' | sort -u")
        .arg("sh")
        .arg(s.host_port.unwrap().to_string())
        .output()
        .expect("ssh-keyscan");
    let mut scanned: Vec<String> = String::from_utf8_lossy(&scan.stdout)
        .lines()
        .map(String::from)
        .collect();
    let mut reported = pinned.clone();
    scanned.sort();
    reported.sort();
    assert_eq!(reported, scanned, "reported host keys vs ssh-keyscan");
    let out = ssh_key(s.host_port.unwrap(), "alice", &key, LIMITS_CMD)
        .await
        .expect("key login");
    let (nproc, mem) = parse_limits(&out);
    let host_cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    assert_eq!(nproc, 2.min(host_cpus), "nproc inside: {out}");
    assert!(
        (1000..=1024).contains(&mem),
        "free -m total {mem} MiB for a 1024 MiB tier: {out}"
    );
    // The key file is the user's, private, and the staging copy is gone.
    let perms = ssh_key(
        s.host_port.unwrap(),
        "alice",
        &key,
        "stat -c '%U %a' ~/.ssh ~/.ssh/authorized_keys",
    )
    .await
    .unwrap();
    assert_eq!(
        perms.split_whitespace().collect::<Vec<_>>(),
        ["alice", "700", "alice", "600"]
    );
    b.destroy(&n).await.unwrap();
}

/// An image alias LXD does not have: ImageMissing, and nothing is left behind.
#[tokio::test]
async fn a_missing_image_is_image_missing_and_leaves_nothing() {
    let b = backend();
    let n = name("noimg");
    let _guard = Cleanup::new(&[&n]);
    let mut s = spec(&n, "prov-noimg", tier(1000, 256), "secret-pw-noimg", None);
    s.image = format!("no-such-image-{}", suffix());
    let err = b.create(&s).await.unwrap_err();
    assert!(matches!(err, BackendError::ImageMissing(_)), "{err:?}");
    assert!(!err.to_string().contains("secret-pw-noimg"));
    assert!(!exists(&b, &n).await);
}

/// The host port is taken by a listener this test holds: Capacity, nothing left behind, and the
/// listener is untouched.
#[tokio::test]
async fn a_taken_port_is_capacity_and_leaves_nothing() {
    let b = backend();
    let n = name("port");
    let _guard = Cleanup::new(&[&n]);
    let s = spec(&n, "prov-port", tier(1000, 256), "secret-pw-port", None);
    let listener = std::net::TcpListener::bind(("127.0.0.1", s.host_port.unwrap())).unwrap();
    let err = b.create(&s).await.unwrap_err();
    assert!(
        matches!(err, BackendError::Capacity(ref m) if m.contains(&s.host_port.unwrap().to_string())),
        "{err:?}"
    );
    assert!(!exists(&b, &n).await);
    assert!(listener.local_addr().is_ok());
}

/// A failure after the instance was made (the user cannot be created: `root` exists already)
/// removes the instance before the error comes back, and the error carries no password.
#[tokio::test]
async fn a_failure_after_create_rolls_back() {
    let b = backend();
    let n = name("rollback");
    let _guard = Cleanup::new(&[&n]);
    let pw = "secret-pw-rollback";
    let mut s = spec(&n, "prov-rollback", tier(1000, 256), pw, None);
    s.ssh_username = "root".into();
    let err = b.create(&s).await.unwrap_err();
    assert!(matches!(err, BackendError::Api(_)), "{err:?}");
    assert!(!err.to_string().contains(pw));
    assert!(!exists(&b, &n).await, "the instance was removed");
}

/// Names the backend must never turn into URLs are refused or treated as missing, not sent.
#[tokio::test]
async fn hostile_names_are_never_sent_to_lxd() {
    let b = backend();
    for bad in ["../1.0", "a/b", "x?recursion=1", "", "UPPER"] {
        assert!(b.inspect(bad).await.unwrap().is_none());
        b.destroy(bad).await.unwrap();
        assert!(matches!(
            b.extend(bad, 1).await,
            Err(BackendError::NotFound(_))
        ));
    }
    let mut s = spec("../evil", "p", tier(1000, 256), "pw-pw-pw-pw", None);
    assert!(b.create(&s).await.is_err());
    s.name = name("evilpw");
    s.ssh_password = Secret::new("line1\nroot:owned");
    assert!(b.create(&s).await.is_err());
    assert!(!exists(&b, &s.name).await);
}

/// The daemon answers, trusts us (unix socket), and speaks the extensions the backend uses.
#[tokio::test]
async fn connect_checks_the_daemon() {
    let b = LxdBackend::connect(LxdConfig::default())
        .await
        .expect("connect");
    assert_eq!(b.ssh_check_host(), "127.0.0.1");
    let missing = LxdConfig {
        socket: "/nonexistent/lxd.socket".into(),
        ..LxdConfig::default()
    };
    let err = LxdBackend::connect(missing).await.unwrap_err();
    assert!(
        matches!(err, BackendError::Api(ref m) if m.contains("/nonexistent/lxd.socket")),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The HTTPS transport, against the same daemon on 127.0.0.1
// ---------------------------------------------------------------------------------------------

/// A raw LXD call over the local socket with `lxc query` (installed with LXD), to set the daemon
/// up for the HTTPS test independently of the code under test. LXD's JSON envelope, or an
/// `{"type": "error"}` one carrying the CLI's message.
fn lxd_raw(method: &str, path: &str, body: Option<&serde_json::Value>) -> serde_json::Value {
    let mut c = std::process::Command::new("lxc");
    c.args(["query", "--force-local", "--raw", "-X", method]);
    if let Some(b) = body {
        c.arg("--data").arg(b.to_string());
    }
    let out = c.arg(path).output().expect("lxc query");
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return serde_json::json!({ "type": "error", "error": msg });
    }
    if out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
        return serde_json::json!({ "type": "sync", "error": "" });
    }
    serde_json::from_slice(&out.stdout).expect("LXD JSON")
}

/// Undoes the HTTPS test's daemon changes: the trusted test certificate, and the listener if the
/// test turned it on.
struct HttpsSetup {
    fingerprint: Option<String>,
    restore_address: Option<String>,
}

impl Drop for HttpsSetup {
    fn drop(&mut self) {
        if let Some(fp) = &self.fingerprint {
            lxd_raw("DELETE", &format!("/1.0/certificates/{fp}"), None);
        }
        if let Some(addr) = &self.restore_address {
            lxd_raw(
                "PATCH",
                "/1.0",
                Some(&serde_json::json!({"config": {"core.https_address": addr}})),
            );
        }
    }
}

fn openssl_cert(dir: &Path, stem: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=paygress-test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success());
    (cert, key)
}

/// A remote LXD over HTTPS with a client certificate and a pinned server certificate: the whole
/// create → SSH → destroy path works over it; a wrong pin and an untrusted client are refused.
#[tokio::test]
async fn the_https_transport_with_client_certificate_and_pinned_server() {
    let server = lxd_raw("GET", "/1.0", None);
    let current = server["metadata"]["config"]["core.https_address"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let mut setup = HttpsSetup {
        fingerprint: None,
        restore_address: None,
    };
    let address = if current.is_empty() {
        let addr = format!("127.0.0.1:{}", free_port());
        lxd_raw(
            "PATCH",
            "/1.0",
            Some(&serde_json::json!({"config": {"core.https_address": addr}})),
        );
        setup.restore_address = Some(String::new());
        addr
    } else {
        current
            .replace("0.0.0.0", "127.0.0.1")
            .replace("[::]", "127.0.0.1")
    };

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openssl_cert(dir.path(), "client");
    // LXD wants the base64 body of the PEM, without the armour lines.
    let pem: String = std::fs::read_to_string(&cert)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let cert_name = format!("paygress-test-{}", suffix());
    let r = lxd_raw(
        "POST",
        "/1.0/certificates",
        Some(&serde_json::json!({"type": "client", "name": cert_name, "certificate": pem})),
    );
    assert!(
        r["error"].as_str().unwrap_or("").is_empty(),
        "trust add: {r}"
    );
    let certs = lxd_raw("GET", "/1.0/certificates?recursion=1", None);
    setup.fingerprint = certs["metadata"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == cert_name.as_str()))
        .and_then(|c| c["fingerprint"].as_str())
        .map(String::from);
    assert!(setup.fingerprint.is_some());

    let remote = LxdConfig {
        url: Some(format!("https://{address}")),
        client_cert: Some(cert.clone()),
        client_key: Some(key.clone()),
        server_cert: Some("/var/lib/lxd/server.crt".into()),
        ..LxdConfig::default()
    };
    let b = LxdBackend::connect(remote.clone())
        .await
        .expect("connect over HTTPS");
    assert_eq!(b.ssh_check_host(), "127.0.0.1");

    let n = name("https");
    let _guard = Cleanup::new(&[&n]);
    let pw = random_password();
    let s = spec(&n, "prov-https", tier(1000, 256), &pw, None);
    let t = Instant::now();
    b.create(&s).await.expect("create over HTTPS");
    eprintln!("create → SSH ready over HTTPS: {:?}", t.elapsed());
    assert_eq!(
        ssh_password(s.host_port.unwrap(), "alice", &pw, "id -un")
            .await
            .unwrap()
            .trim(),
        "alice"
    );
    assert_eq!(b.list("prov-https").await.unwrap().len(), 1);
    b.destroy(&n).await.unwrap();
    assert!(b.inspect(&n).await.unwrap().is_none());

    // A server certificate that is not the pinned one is refused.
    let (other, _) = openssl_cert(dir.path(), "other");
    let wrong_pin = LxdConfig {
        server_cert: Some(other),
        ..remote.clone()
    };
    let err = LxdBackend::connect(wrong_pin).await.unwrap_err();
    assert!(err.to_string().contains("pinned"), "{err}");

    // A client the daemon does not trust is told so.
    let (stranger, stranger_key) = openssl_cert(dir.path(), "stranger");
    let untrusted = LxdConfig {
        client_cert: Some(stranger),
        client_key: Some(stranger_key),
        ..remote
    };
    let err = LxdBackend::connect(untrusted).await.unwrap_err();
    assert!(err.to_string().contains("trust"), "{err}");
    drop(setup);
}

// ---------------------------------------------------------------------------------------------
// Through the provider core: real payments from the test mint, real LXD
// ---------------------------------------------------------------------------------------------

mod core {
    use super::*;
    use common::mint::TestMint;
    use paygress::api::{SpawnRequest, SpawnResult, StatusRequest, TopUpRequest};
    use paygress::backend::{BackendKind, WorkloadInfo};
    use paygress::config::Config;
    use paygress::{Caller, Provider, ProviderError};
    use std::sync::Mutex;
    use tokio_util::sync::CancellationToken;

    /// Rate of the first ("basic": 1 vCPU, 512 MiB) tier in msat/s: 100 sats buy 1000 s.
    const RATE: u64 = 100;

    struct Env {
        mint: TestMint,
        cfg: Config,
        backend: Arc<LxdBackend>,
        provider: Arc<Provider>,
        _dir: tempfile::TempDir,
        _guard: ProviderCleanup,
    }

    /// Removes every instance marked with the provider's id at the end of the test.
    struct ProviderCleanup(String);

    impl Drop for ProviderCleanup {
        fn drop(&mut self) {
            let id = self.0.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let b = LxdBackend::new(LxdConfig::default()).expect("backend");
                    for w in b.list(&id).await.unwrap_or_default() {
                        let _ = b.destroy(&w.name).await;
                    }
                })
            })
            .join();
        }
    }

    async fn env_with(backend: Arc<dyn Backend>, lxd: Arc<LxdBackend>) -> Env {
        let mint = TestMint::start().await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = common::config(dir.path(), &[&mint.url], RATE, common::free_port_block(4));
        let provider = Provider::open(cfg.clone(), backend)
            .await
            .expect("provider");
        let guard = ProviderCleanup(provider.provider_id().to_string());
        Env {
            mint,
            cfg,
            backend: lxd,
            provider,
            _dir: dir,
            _guard: guard,
        }
    }

    async fn env() -> Env {
        let b = backend();
        env_with(b.clone(), b).await
    }

    async fn spawn(
        p: &Arc<Provider>,
        token: &str,
        password: Option<&str>,
    ) -> Result<SpawnResult, ProviderError> {
        let req = SpawnRequest {
            cashu_token: Secret::new(token),
            ssh_username: "alice".into(),
            ssh_password: password.map(Secret::new),
            ..Default::default()
        };
        p.spawn(req, Caller::Local, None, CancellationToken::new())
            .await
    }

    /// The instance name and deadline the core recorded for a pod.
    fn row(p: &Provider, pod: &str) -> (String, u64) {
        let w = p.store().workload(pod).unwrap().expect("workload row");
        (w.name, w.expires_at)
    }

    async fn lxd_deadline(b: &LxdBackend, name: &str) -> Option<u64> {
        b.instance_config(name)
            .await
            .unwrap()?
            .get(KEY_EXPIRES_AT)?
            .parse()
            .ok()
    }

    /// Pay → SSH in with the real client → limits match the tier → top-up moves the deadline on
    /// LXD too → expiry stops the container → a late top-up resumes it → expiry again, and after
    /// the grace period the container is deleted.
    #[tokio::test]
    async fn paid_spawn_topup_expiry_and_deletion_on_real_lxd() {
        let e = env().await;
        assert_eq!(e.provider.offers().backend, BackendKind::Lxd);
        let token = e.mint.token(100).await;
        let t = Instant::now();
        let r = spawn(&e.provider, &token, None).await.expect("paid spawn");
        eprintln!("paid spawn → SSH ready: {:?}", t.elapsed());
        assert_eq!(r.duration_seconds, 100_000 / RATE);
        assert_eq!(r.host, "127.0.0.1");

        // A real login, right away, with the generated password.
        let out = ssh_password(r.node_port, "alice", r.ssh_password.expose(), LIMITS_CMD)
            .await
            .expect("login");
        let (nproc, mem) = parse_limits(&out);
        assert_eq!((nproc, r.cpu_millicores), (1, 1000), "{out}");
        assert!(
            (500..=r.memory_mb).contains(&mem),
            "free -m {mem} for {} MiB: {out}",
            r.memory_mb
        );

        // The deadline on LXD is the core's.
        let (name, expires) = row(&e.provider, &r.pod_npub);
        assert_eq!(lxd_deadline(&e.backend, &name).await, Some(expires));
        let info = e.backend.inspect(&name).await.unwrap().unwrap();
        assert_eq!(
            (info.state, info.endpoint),
            (
                WorkloadState::Running,
                Some(Endpoint::on_provider_host(r.node_port))
            )
        );

        // Top-up: +50 sats = +500 s, on the core and on the instance.
        let top = e
            .provider
            .top_up(TopUpRequest {
                pod_npub: r.pod_npub.clone(),
                cashu_token: Secret::new(e.mint.token(50).await),
                request_id: None,
            })
            .await
            .expect("top-up");
        assert_eq!(top.extended_duration_seconds, 500);
        let (_, expires2) = row(&e.provider, &r.pod_npub);
        assert_eq!(expires2, expires + 500);
        assert_eq!(lxd_deadline(&e.backend, &name).await, Some(expires2));

        // Expiry: the reaper stops the container (disk kept).
        let rep = e.provider.reap_at(expires2).await;
        assert_eq!(rep.stopped, vec![r.pod_npub.clone()]);
        assert_eq!(
            e.backend.inspect(&name).await.unwrap().unwrap().state,
            WorkloadState::Stopped
        );
        assert!(
            ssh_password(r.node_port, "alice", r.ssh_password.expose(), "true")
                .await
                .is_err()
        );

        // A late top-up within the grace period resumes it, with the same login.
        let t = Instant::now();
        e.provider
            .top_up(TopUpRequest {
                pod_npub: r.pod_npub.clone(),
                cashu_token: Secret::new(e.mint.token(10).await),
                request_id: None,
            })
            .await
            .expect("late top-up");
        eprintln!("late top-up → resumed: {:?}", t.elapsed());
        assert_eq!(
            e.backend.inspect(&name).await.unwrap().unwrap().state,
            WorkloadState::Running
        );
        assert_eq!(
            ssh_password(r.node_port, "alice", r.ssh_password.expose(), "echo hi")
                .await
                .unwrap()
                .trim(),
            "hi"
        );
        let (_, expires3) = row(&e.provider, &r.pod_npub);
        assert_eq!(lxd_deadline(&e.backend, &name).await, Some(expires3));

        // Expires again; after the grace period it is deleted.
        let grace = e.cfg.provider.expiry_grace_seconds;
        let rep = e.provider.reap_at(expires3 + 1).await;
        assert_eq!(rep.stopped, vec![r.pod_npub.clone()]);
        let rep = e.provider.reap_at(expires3 + 1 + grace).await;
        assert_eq!(rep.deleted, vec![r.pod_npub.clone()]);
        assert!(
            e.backend.inspect(&name).await.unwrap().is_none(),
            "the container is gone"
        );
    }

    /// The image is allowed by the config but LXD has no such alias: the buyer paid, provisioning
    /// failed, the refund token gives the money back, and no container is left.
    #[tokio::test]
    async fn a_missing_image_after_payment_is_refunded_and_leaves_nothing() {
        let e = env().await;
        let token = e.mint.token(100).await;
        let req = SpawnRequest {
            cashu_token: Secret::new(&token),
            ssh_username: "alice".into(),
            pod_image: Some("alpine".into()), // allowed in the test config, absent on LXD
            ..Default::default()
        };
        let err = e
            .provider
            .spawn(req, Caller::Local, None, CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(
            err.error_type,
            paygress::ErrorType::PodCreationFailed,
            "{err:?}"
        );
        let refund = err.refund_token.clone().expect("a refund token");
        assert_eq!(
            e.mint
                .receive_fresh(refund.expose())
                .await
                .expect("refund is spendable"),
            100
        );
        assert!(e
            .backend
            .list(e.provider.provider_id())
            .await
            .unwrap()
            .is_empty());
    }

    /// A backend wrapper that takes the host port (a listener of its own) right after the core
    /// reserved it and was paid, then lets LXD try: the port is taken on the host.
    struct PortThief {
        inner: Arc<LxdBackend>,
        held: Mutex<Vec<std::net::TcpListener>>,
        names: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Backend for PortThief {
        fn kind(&self) -> BackendKind {
            BackendKind::Lxd
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

    #[tokio::test]
    async fn a_port_taken_after_payment_is_refunded_and_leaves_nothing() {
        let lxd = backend();
        let thief = Arc::new(PortThief {
            inner: lxd.clone(),
            held: Mutex::new(Vec::new()),
            names: Mutex::new(Vec::new()),
        });
        let e = env_with(thief.clone(), lxd).await;
        let token = e.mint.token(100).await;
        let err = spawn(&e.provider, &token, None).await.unwrap_err();
        assert!(err.refund_token.is_some(), "{err:?}");
        assert!(err.message.contains("port"), "{err:?}");
        assert_eq!(
            e.mint
                .receive_fresh(err.refund_token.unwrap().expose())
                .await
                .unwrap(),
            100
        );
        let names = thief.names.lock().unwrap().clone();
        assert_eq!(names.len(), 1);
        assert!(
            e.backend.inspect(&names[0]).await.unwrap().is_none(),
            "no container left"
        );
    }

    /// A provider that restarts finds its live container, keeps it (SSH still works, the store
    /// still knows it), and removes an orphan it marked but never recorded.
    #[tokio::test]
    async fn a_restarted_provider_readopts_its_live_container_and_removes_orphans() {
        let e = env().await;
        let r = spawn(
            &e.provider,
            &e.mint.token(100).await,
            Some("restart-pass-123"),
        )
        .await
        .expect("spawn");
        let (name, _) = row(&e.provider, &r.pod_npub);
        let provider_id = e.provider.provider_id().to_string();

        // An orphan: marked as this provider's on LXD, unknown to its store.
        let orphan = super::name("orphan");
        let _orphan_guard = Cleanup::new(&[&orphan]);
        let s = spec(
            &orphan,
            &provider_id,
            tier(1000, 256),
            "orphan-pass-123",
            None,
        );
        e.backend.create(&s).await.expect("orphan");

        // Restart: a new core on the same data directory and a new backend client.
        let Env {
            provider,
            cfg,
            mint,
            backend: lxd,
            _dir,
            _guard,
        } = e;
        drop(provider);
        let fresh = backend();
        let reopened = Provider::open(cfg.clone(), fresh.clone())
            .await
            .expect("reopen");
        assert_eq!(reopened.provider_id(), provider_id);
        let status = reopened
            .status(
                StatusRequest {
                    pod_npub: r.pod_npub.clone(),
                },
                &Caller::Local,
            )
            .await
            .expect("status after restart");
        assert_eq!(status.state, "running", "{status:?}");
        assert!(
            status.access.is_some(),
            "the owner still sees the access details"
        );
        let info = lxd.inspect(&name).await.unwrap().expect("still there");
        assert_eq!(info.state, WorkloadState::Running);
        assert_eq!(
            ssh_password(r.node_port, "alice", "restart-pass-123", "echo still")
                .await
                .unwrap()
                .trim(),
            "still"
        );
        assert!(
            lxd.inspect(&orphan).await.unwrap().is_none(),
            "the orphan was removed"
        );
        let listed: Vec<String> = fresh
            .list(&provider_id)
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.name)
            .collect();
        assert_eq!(listed, vec![name]);
        drop(mint);
    }
}

/// Every host process's command line, read from /proc (what `ps` shows any host user).
fn host_command_lines() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
            out.push(String::from_utf8_lossy(&raw).replace('\0', " "));
        }
    }
    out
}

/// The buyer's password never reaches a host command line while the login is made (LXD puts an
/// exec's environment on its `forkexec` helper's argv, so it must not travel there), and the
/// staged copy is gone from the container once the login works. A watcher reads every host
/// process's command line every millisecond through the whole create.
#[tokio::test]
async fn the_password_never_reaches_a_host_command_line() {
    let b = backend();
    let n = name("argv");
    let _guard = Cleanup::new(&[&n]);
    let pw = random_password();
    let s = spec(
        &n,
        &format!("prov-{}", suffix()),
        tier(1000, 256),
        &pw,
        None,
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, pw) = (stop.clone(), pw.clone());
        std::thread::spawn(move || {
            let (mut seen, mut scans) = (Vec::new(), 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                scans += 1;
                seen.extend(host_command_lines().into_iter().filter(|l| l.contains(&pw)));
                std::thread::sleep(Duration::from_millis(1));
            }
            (seen, scans)
        })
    };
    b.create(&s).await.expect("create");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (seen, scans) = watcher.join().unwrap();
    assert!(scans > 10, "the watcher ran ({scans} scans)");
    assert!(
        seen.is_empty(),
        "the password on a host command line: {seen:?}"
    );
    let out = ssh_password(
        s.host_port.unwrap(),
        "alice",
        &pw,
        "test -e /root/.paygress-password && echo staged || echo gone; id -un",
    )
    .await
    .expect("password login");
    assert!(out.contains("alice"), "{out}");
    let inside = tokio::process::Command::new("lxc")
        .args(["exec", &n, "--", "ls", "-a", "/root"])
        .output()
        .await
        .unwrap();
    let listing = String::from_utf8_lossy(&inside.stdout);
    assert!(
        !listing.contains(".paygress-password"),
        "staged password left: {listing}"
    );
}
