//! The Proxmox VE backend through the provider core, against fakepve: a protocol-faithful PVE
//! API server (PyPI `fakepve`, PVE 9's schema, errors, tasks and LXC/QEMU state) started by
//! `tools/e2e/fakepve_launch.py` on a free 127.0.0.1 port with an API token, templates and a
//! self-signed certificate whose fingerprint the backend pins.
//!
//! Payments are real (the in-process cdk mint); logins are real OpenSSH clients. fakepve's
//! guests do not run, so the harness ([`common::proxmox::StandIns`]) stands a real SSH server in
//! for each guest it reports running, on the guest's own 127.X.Y.Z address, with the credentials
//! the backend sent to PVE. Where fakepve is lenient (booleans, key validation), the tests read
//! its request log and assert the exact fields the backend sent.
//!
//! Needs root (the stand-in SSH servers are sandbox workloads; `nat` mode makes a network
//! namespace).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::mint::TestMint;
use common::proxmox::{
    form, loopback_block, ssh_key_at, ssh_password_at, Buyer, FakePve, StandIns,
};
use paygress::api::{SpawnRequest, SpawnResult, StatusRequest, TopUpRequest};
use paygress::backend::proxmox::{ProxmoxBackend, ProxmoxConfig};
use paygress::backend::{Backend, BackendKind, WorkloadState};
use paygress::config::{BackendChoice, Config};
use paygress::secret::Secret;
use paygress::{Caller, Provider, ProviderError};
use tokio_util::sync::CancellationToken;

/// msat/s of the first tier: 100 sats buy 1000 s.
const RATE: u64 = 100;
const PASSWORD: &str = "pve-pass-123";

struct Env {
    provider: Arc<Provider>,
    backend: Arc<ProxmoxBackend>,
    cfg: Config,
    mint: TestMint,
    pve: Arc<FakePve>,
    standins: StandIns,
    /// Guests' addresses: 127.A.B.10 … 127.A.B.20.
    block: (u8, u8),
    /// Where the guests' sshd listens.
    ssh_port: u16,
    dir: tempfile::TempDir,
}

fn proxmox_config(pve: &FakePve, kind: &str, network: &str) -> ProxmoxConfig {
    toml::from_str(&format!("{}\n{network}", pve.backend_toml(kind))).expect("proxmox config")
}

/// Static addresses from 127.A.B.10-20; the guests' sshd on `ssh_port` (a free port rather than
/// 22, which the machine's own sshd may hold on every address).
fn static_network(block: (u8, u8), ssh_port: u16) -> String {
    format!(
        "[network]\nmode = \"static\"\npool_start = \"127.{a}.{b}.10\"\npool_end = \"127.{a}.{b}.20\"\n\
         prefix_len = 32\ngateway = \"127.{a}.{b}.1\"\nssh_port = {ssh_port}\n",
        a = block.0,
        b = block.1
    )
}

/// A port free on every address right now, for the guests' sshd stand-ins.
fn guest_ssh_port() -> u16 {
    common::free_port_block(1).0
}

/// A provider on the Proxmox backend (`kind` lxc or qemu, static addresses on 127.A.B.0/24).
async fn env(kind: &str) -> Env {
    let pve = Arc::new(FakePve::start());
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let block = loopback_block();
    let mut cfg = common::config(dir.path(), &[&mint.url], RATE, common::free_port_block(4));
    cfg.tiers[0].cpu_millicores = 1500;
    cfg.tiers[0].disk_gb = Some(6);
    cfg.backend.kind = BackendChoice::Proxmox;
    let ssh_port = guest_ssh_port();
    cfg.backend.proxmox = proxmox_config(&pve, kind, &static_network(block, ssh_port));
    let backend = Arc::new(
        ProxmoxBackend::connect(cfg.backend.proxmox.clone())
            .await
            .expect("backend"),
    );
    let provider = Provider::open(cfg.clone(), backend.clone())
        .await
        .expect("provider");
    let standins = StandIns::start(
        pve.clone(),
        Buyer {
            password: PASSWORD.into(),
        },
        ssh_port,
        dir.path(),
    );
    Env {
        provider,
        backend,
        cfg,
        mint,
        pve,
        standins,
        block,
        ssh_port,
        dir,
    }
}

async fn spawn(
    e: &Env,
    sats: u64,
    image: Option<&str>,
    key: Option<String>,
) -> Result<SpawnResult, ProviderError> {
    let req = SpawnRequest {
        cashu_token: Secret::new(e.mint.token(sats).await),
        ssh_username: "alice".into(),
        ssh_password: Some(Secret::new(PASSWORD)),
        ssh_public_key: key,
        pod_image: image.map(str::to_string),
        ..Default::default()
    };
    e.provider
        .spawn(req, Caller::Local, None, CancellationToken::new())
        .await
}

async fn top_up(e: &Env, pod: &str, sats: u64) {
    e.provider
        .top_up(TopUpRequest {
            pod_npub: pod.to_string(),
            cashu_token: Secret::new(e.mint.token(sats).await),
            request_id: None,
        })
        .await
        .expect("top-up");
}

fn row(p: &Provider, pod: &str) -> (String, u64) {
    let w = p.store().workload(pod).unwrap().expect("workload row");
    (w.name, w.expires_at)
}

/// The fields of every request `method` to a path ending in `suffix`.
async fn sent(pve: &FakePve, method: &str, suffix: &str) -> Vec<Vec<(String, String)>> {
    pve.requests()
        .await
        .into_iter()
        .filter(|(m, p, _)| m == method && p.ends_with(suffix))
        .map(|(_, _, b)| form(&b))
        .collect()
}

fn field<'a>(f: &'a [(String, String)], k: &str) -> Option<&'a str> {
    f.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
}

/// SSH works at the endpoint the buyer got (with the key); who logged in.
async fn login(r: &SpawnResult, key: &std::path::Path) -> String {
    login_at(&r.host, r.node_port, key).await
}

async fn login_at(host: &str, port: u16, key: &std::path::Path) -> String {
    let mut last = String::new();
    // The stand-in (or sshd) appears within a moment of the guest starting.
    for _ in 0..50 {
        match ssh_key_at(host, port, "alice", key, "whoami").await {
            Ok(out) => return out.trim().to_string(),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no login at {host}:{port}: {last}");
}

// ---------------------------------------------------------------------------------------------

/// LXC: pay → the exact create request (tier limits, booleans as 1/0, `ssh-public-keys`, tags)
/// → real ssh at the guest's own address → top-up → expiry stop (SSH gone) → late top-up resume
/// → deletion after grace, with nothing left on the node.
#[tokio::test]
async fn lxc_life_cycle_through_the_core_with_real_payments_and_ssh() {
    let e = env("lxc").await;
    assert_eq!(e.provider.offers().backend, BackendKind::Proxmox);
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = common::ssh::keygen(keys.path());
    let r = spawn(&e, 100, None, Some(public.clone()))
        .await
        .expect("paid spawn");
    let addr = format!("127.{}.{}.10", e.block.0, e.block.1);
    assert_eq!(
        (r.host.as_str(), r.node_port),
        (addr.as_str(), e.ssh_port),
        "{r:?}"
    );
    assert!(
        r.instructions
            .iter()
            .any(|i| i.contains(&format!("ssh -p {} alice@{addr}", e.ssh_port))),
        "{:?}",
        r.instructions
    );
    assert_eq!(login(&r, &key).await, "alice");
    assert_eq!(
        ssh_password_at(&r.host, r.node_port, "alice", PASSWORD, "echo pw")
            .await
            .expect("password login")
            .trim(),
        "pw"
    );

    // Exactly what real PVE accepts (fakepve would take `true` or a bad key too).
    let creates = sent(&e.pve, "POST", "/nodes/pve/lxc").await;
    assert_eq!(creates.len(), 1);
    let c = &creates[0];
    let (name, expires) = row(&e.provider, &r.pod_npub);
    let id = e.provider.provider_id().to_string();
    for (k, v) in [
        ("vmid", "10000"),
        ("ostemplate", common::proxmox::LXC_TEMPLATE),
        ("hostname", name.as_str()),
        ("cores", "2"),
        ("cpulimit", "1.5"),
        ("memory", "512"),
        ("swap", "0"),
        ("rootfs", "local-lvm:6"),
        ("unprivileged", "1"),
        ("password", "***"),
    ] {
        assert_eq!(field(c, k), Some(v), "{k} in {c:?}");
    }
    // The marker line naming the login user for the template's script, then the buyer's key
    // without its comment (a comment is the buyer's free text; it must not name the account).
    let keys: Vec<&str> = field(c, "ssh-public-keys").unwrap().lines().collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys[0].starts_with("ssh-ed25519 ") && keys[0].ends_with(" paygress-user=alice"),
        "{keys:?}"
    );
    let bare: Vec<&str> = public.split_whitespace().take(2).collect();
    assert_eq!(keys[1], bare.join(" "));
    assert_eq!(
        field(c, "net0"),
        Some(
            format!(
                "name=eth0,bridge=vmbr0,ip={addr}/32,gw=127.{}.{}.1",
                e.block.0, e.block.1
            )
            .as_str()
        )
    );
    assert_eq!(
        field(c, "tags"),
        Some(format!("paygress;paygress-{id}").as_str())
    );
    for (k, v) in c {
        assert!(!k.contains('_'), "no underscore parameter names: {k}");
        assert!(v != "true" && v != "false", "booleans as 1/0: {k}={v}");
    }
    assert!(
        field(c, "start").is_none() && field(c, "features").is_none(),
        "{c:?}"
    );
    // No task was left unpolled: every UPID the node handed out was asked about.
    let polled = e
        .pve
        .requests()
        .await
        .iter()
        .filter(|(m, p, _)| m == "GET" && p.contains("/tasks/UPID:") && p.ends_with("/status"))
        .count();
    assert!(polled >= 2, "create and start were polled: {polled}");

    // Top-up before the deadline: the old deadline passes harmlessly.
    top_up(&e, &r.pod_npub, 10).await;
    let (_, expires2) = row(&e.provider, &r.pod_npub);
    assert_eq!(expires2, expires + 100);
    assert!(e.provider.reap_at(expires).await.stopped.is_empty());

    // The deadline: stopped on PVE, SSH gone.
    assert_eq!(
        e.provider.reap_at(expires2).await.stopped,
        vec![r.pod_npub.clone()]
    );
    assert_eq!(
        e.backend.inspect(&name).await.unwrap().unwrap().state,
        WorkloadState::Stopped
    );
    for _ in 0..50 {
        if e.standins.serving().await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ssh_key_at(&r.host, r.node_port, "alice", &key, "true")
        .await
        .is_err());

    // A late top-up resumes it at the same address.
    top_up(&e, &r.pod_npub, 10).await;
    assert_eq!(login(&r, &key).await, "alice");
    let st = e
        .provider
        .status(
            StatusRequest {
                pod_npub: r.pod_npub.clone(),
            },
            &Caller::Local,
        )
        .await
        .unwrap();
    assert_eq!(st.state, "running", "{st:?}");

    // Expires again; after the grace period the guest is destroyed with purge.
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
    assert!(
        e.pve.workloads().await.is_empty(),
        "nothing left on the node"
    );
    let deletes: Vec<String> = e
        .pve
        .requests()
        .await
        .into_iter()
        .filter(|(m, _, _)| m == "DELETE")
        .map(|(_, p, _)| p)
        .collect();
    assert_eq!(deletes, vec!["/api2/json/nodes/pve/lxc/10000".to_string()]);
    drop(e.dir);
}

/// QEMU: a linked clone of the cloud-init template, configured with `ciuser`, `cipassword`,
/// percent-encoded `sshkeys` and the tier's limits; login with the cloud-init user.
#[tokio::test]
async fn qemu_clone_gets_cloud_init_credentials_and_the_tier_limits() {
    let e = env("qemu").await;
    assert_eq!(
        e.provider.offers().isolation,
        paygress::backend::Isolation::Vm
    );
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = common::ssh::keygen(keys.path());
    let r = spawn(&e, 100, None, Some(public.clone()))
        .await
        .expect("spawn");
    assert_eq!(login(&r, &key).await, "alice");
    assert_eq!(
        ssh_password_at(&r.host, r.node_port, "alice", PASSWORD, "echo pw")
            .await
            .unwrap()
            .trim(),
        "pw"
    );
    let (name, expires) = row(&e.provider, &r.pod_npub);
    let clones = sent(&e.pve, "POST", "/nodes/pve/qemu/9000/clone").await;
    assert_eq!(
        clones,
        vec![vec![
            ("newid".to_string(), "10000".to_string()),
            ("name".into(), name.clone()),
            ("full".into(), "0".into()),
        ]]
    );
    let conf = &sent(&e.pve, "PUT", "/nodes/pve/qemu/10000/config").await[0];
    let encoded: String = public
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    for (k, v) in [
        ("cores", "2"),
        ("cpulimit", "1.5"),
        ("memory", "512"),
        ("ciuser", "alice"),
        ("cipassword", PASSWORD),
        ("sshkeys", encoded.as_str()),
    ] {
        assert_eq!(field(conf, k), Some(v), "{k} in {conf:?}");
    }
    let resize = &sent(&e.pve, "PUT", "/nodes/pve/qemu/10000/resize").await[0];
    assert_eq!(field(resize, "size"), Some("6G"));

    // Expiry stops it, a late top-up starts it again, grace deletes it.
    assert_eq!(
        e.provider.reap_at(expires).await.stopped,
        vec![r.pod_npub.clone()]
    );
    top_up(&e, &r.pod_npub, 10).await;
    assert_eq!(login(&r, &key).await, "alice");
    let (_, expires2) = row(&e.provider, &r.pod_npub);
    e.provider.reap_at(expires2 + 1).await;
    let grace = e.cfg.provider.expiry_grace_seconds;
    assert_eq!(
        e.provider.reap_at(expires2 + 1 + grace).await.deleted,
        vec![r.pod_npub.clone()]
    );
    assert!(
        e.pve.workloads().await.is_empty(),
        "nothing left on the node"
    );
}

/// A template that is not on the storage: PVE accepts the create and fails it inside the task;
/// the backend rolls back and the core refunds the whole payment.
#[tokio::test]
async fn a_task_that_fails_inside_is_rolled_back_and_refunded_in_full() {
    let e = env("lxc").await;
    let err = spawn(&e, 100, Some("alpine"), None).await.unwrap_err();
    assert_eq!(
        err.error_type,
        paygress::ErrorType::PodCreationFailed,
        "{err:?}"
    );
    assert!(err.message.contains("alpine"), "{err:?}");
    let refund = err.refund_token.clone().expect("a refund token");
    assert_eq!(
        e.mint.receive_fresh(refund.expose()).await.expect("refund"),
        100
    );
    assert!(e.pve.workloads().await.is_empty(), "nothing left");
    // The create was answered with a task that failed, and that task was polled.
    let tasks = e.pve.requests().await;
    assert!(tasks
        .iter()
        .any(|(m, p, _)| m == "GET" && p.contains("vzcreate")));
}

/// A create task that outlives `task_timeout_seconds`: the backend gives up, waits until PVE
/// releases the guest's lock, destroys it, and the buyer gets everything back.
#[tokio::test]
async fn a_task_that_times_out_is_rolled_back_once_pve_lets_go() {
    // Creates take 150 PVE seconds = 3 s here; the backend waits 1 s.
    let pve = Arc::new(FakePve::start_with(&["--create-secs", "150"]));
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), &[&mint.url], RATE, common::free_port_block(4));
    cfg.backend.kind = BackendChoice::Proxmox;
    cfg.backend.proxmox = proxmox_config(&pve, "lxc", &static_network(loopback_block(), 22));
    cfg.backend.proxmox.task_timeout_seconds = 1;
    let backend = Arc::new(
        ProxmoxBackend::connect(cfg.backend.proxmox.clone())
            .await
            .unwrap(),
    );
    let provider = Provider::open(cfg.clone(), backend).await.unwrap();
    let req = SpawnRequest {
        cashu_token: Secret::new(mint.token(100).await),
        ssh_username: "alice".into(),
        ..Default::default()
    };
    let err = provider
        .spawn(req, Caller::Local, None, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.message.contains("did not finish in time"), "{err:?}");
    let refund = err.refund_token.clone().expect("a refund token");
    assert_eq!(mint.receive_fresh(refund.expose()).await.unwrap(), 100);
    assert!(
        pve.workloads().await.is_empty(),
        "the late guest was removed"
    );
    // Refused while the create task held the lock, retried until PVE let go.
    assert!(sent(&pve, "DELETE", "/nodes/pve/lxc/10000").await.len() > 1);
}

/// Another client takes the vmid between our look and our create: PVE says so in its own words
/// and the backend takes the next one.
#[tokio::test]
async fn a_vmid_race_is_retried_with_the_next_vmid() {
    let e = env("lxc").await;
    e.pve
        .fail(
            "POST",
            "/nodes/pve/lxc",
            500,
            "CT 10000 already exists on node 'pve'",
            1,
        )
        .await;
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = common::ssh::keygen(keys.path());
    let r = spawn(&e, 100, None, Some(public)).await.expect("spawn");
    let vmids: Vec<String> = sent(&e.pve, "POST", "/nodes/pve/lxc")
        .await
        .iter()
        .filter_map(|f| field(f, "vmid").map(str::to_string))
        .collect();
    assert_eq!(vmids, ["10000", "10001"]);
    assert_eq!(login(&r, &key).await, "alice");
    let g = e.pve.workloads().await;
    assert_eq!(g.len(), 1);
    assert_eq!(g[0]["vmid"], 10001);
}

/// A token without a privilege: PVE's 403 names it, the buyer is refunded, nothing is left.
#[tokio::test]
async fn a_missing_privilege_is_named_and_refunded() {
    let e = env("lxc").await;
    e.pve
        .fail(
            "POST",
            "/nodes/pve/lxc",
            403,
            "Permission check failed (/vms/10000, VM.Allocate)",
            1,
        )
        .await;
    let err = spawn(&e, 100, None, None).await.unwrap_err();
    assert!(err.message.contains("VM.Allocate"), "{err:?}");
    let refund = err.refund_token.clone().expect("a refund token");
    assert_eq!(e.mint.receive_fresh(refund.expose()).await.unwrap(), 100);
    assert!(e.pve.workloads().await.is_empty());
}

/// A server whose certificate is not the pinned one is refused before any token is sent.
#[tokio::test]
async fn tls_with_a_wrong_fingerprint_is_refused() {
    let pve = FakePve::start();
    let block = loopback_block();
    let mut c = proxmox_config(&pve, "lxc", &static_network(block, 22));
    c.fingerprint = Some(
        "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF"
            .into(),
    );
    let err = ProxmoxBackend::connect(c.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("fingerprint"), "{err}");
    assert!(pve.requests().await.is_empty(), "no request got through");
    // A CA file that is not the server's: refused too.
    let other = tempfile::tempdir().unwrap();
    let ca = other.path().join("ca.pem");
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=other",
            "-days",
            "1",
            "-keyout",
        ])
        .arg(other.path().join("k.pem"))
        .arg("-out")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(st.status.success());
    c.fingerprint = None;
    c.ca_file = Some(ca);
    assert!(ProxmoxBackend::connect(c.clone()).await.is_err());
    // fakepve's own certificate as the CA works; so does the right fingerprint.
    c.ca_file = Some(pve.cert_file.clone());
    ProxmoxBackend::connect(c.clone())
        .await
        .expect("the right CA");
    // A wrong token: PVE's 401, phrased for the operator, the secret nowhere in it.
    let wrong = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong.path(), "not-the-secret").unwrap();
    c.token_secret_file = wrong.path().to_path_buf();
    let err = ProxmoxBackend::connect(c).await.unwrap_err().to_string();
    assert!(err.contains("401") && err.contains("token"), "{err}");
    // fakepve's status line reason, read from the status line (hyper keeps it).
    assert!(err.contains("authentication failure"), "{err}");
    assert!(!err.contains("not-the-secret"), "{err}");
}

/// A restart re-adopts the live guest by its tags (SSH still works) and removes an orphan that
/// carries this provider's tag but that the store never recorded; another provider's guest and
/// a stranger's are left alone.
#[tokio::test]
async fn a_restart_readopts_tagged_guests_and_removes_orphans() {
    let e = env("lxc").await;
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = common::ssh::keygen(keys.path());
    let r = spawn(&e, 100, None, Some(public)).await.expect("spawn");
    let (name, _) = row(&e.provider, &r.pod_npub);
    let id = e.provider.provider_id().to_string();
    e.pve
        .add_ct(
            10050,
            "pg-orphan",
            "running",
            serde_json::json!({
            "tags": format!("paygress;paygress-{id}"), "hostname": "pg-orphan",
            "net0": format!("name=eth0,bridge=vmbr0,ip=127.{}.{}.19/32", e.block.0, e.block.1)}),
        )
        .await;
    e.pve
        .add_ct(
            10051,
            "pg-other",
            "running",
            serde_json::json!({
            "tags": "paygress;paygress-0123456789ab", "hostname": "pg-other"}),
        )
        .await;
    e.pve
        .add_ct(
            10052,
            "web",
            "running",
            serde_json::json!({"hostname": "web"}),
        )
        .await;

    let Env {
        provider,
        cfg,
        mint,
        pve,
        standins,
        dir,
        block: _,
        backend: _,
        ssh_port: _,
    } = e;
    drop(provider);
    let fresh = Arc::new(
        ProxmoxBackend::connect(cfg.backend.proxmox.clone())
            .await
            .unwrap(),
    );
    let reopened = Provider::open(cfg.clone(), fresh.clone())
        .await
        .expect("reopen");
    let st = reopened
        .status(
            StatusRequest {
                pod_npub: r.pod_npub.clone(),
            },
            &Caller::Local,
        )
        .await
        .expect("status after restart");
    assert_eq!(st.state, "running", "{st:?}");
    assert_eq!(login(&r, &key).await, "alice");
    let left: Vec<u64> = pve
        .workloads()
        .await
        .iter()
        .filter_map(|g| g["vmid"].as_u64())
        .collect();
    assert_eq!(left, vec![10000, 10051, 10052], "only the orphan went");
    let listed: Vec<String> = fresh
        .list(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(listed, vec![name]);
    drop((standins, mint, dir));
}

/// A network namespace of the test's own: its loopback up, carrying the provider's address
/// (198.18.N.1) and the guests' (198.18.N.10-20). Removed on drop.
struct OwnNetns {
    name: String,
    n: u8,
}

impl OwnNetns {
    fn new() -> OwnNetns {
        let ns = OwnNetns {
            name: format!("pgpve{:08x}", rand::random::<u32>()),
            n: rand::random::<u8>() % 200 + 20,
        };
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &ns.name]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        for host in std::iter::once(1).chain(10..=20) {
            let a = format!("198.18.{}.{host}/32", ns.n);
            ip(&["-n", &ns.name, "addr", "add", &a, "dev", "lo"]);
        }
        ns
    }

    /// Run `f` on a thread (and a runtime whose threads are all) inside the namespace.
    fn run<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        use std::os::fd::AsRawFd;
        let path = format!("/run/netns/{}", self.name);
        let t = std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with a namespace fd we hold; threads it starts
            // inherit the namespace.
            assert_eq!(
                unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(f);
        });
        if let Err(p) = t.join() {
            std::panic::resume_unwind(p);
        }
    }

    /// The ruleset of the `ip paygress` table (empty when there is none), run from inside the
    /// namespace (`run`).
    fn paygress_table() -> String {
        let out = std::process::Command::new("nft")
            .args(["list", "table", "ip", "paygress"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for OwnNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `nat` mode, all inside a network namespace the test makes (the provider, its nft, fakepve,
/// the mint and the stand-in sshd run on threads and processes inside it): the core reserves a host port,
/// the backend writes a DNAT rule from it to the guest's SSH in its own nftables table, a real
/// ssh to provider-address:port gets through it, the rule comes back after the table is lost
/// and the provider restarts, and it goes when the guest is deleted.
#[test]
fn nat_mode_forwards_a_host_port_with_dnat_rules_added_and_removed() {
    let ns = OwnNetns::new();
    let n = ns.n;
    ns.run(async move {
        let pve = Arc::new(FakePve::start());
        let mint = TestMint::start().await;
        let dir = tempfile::tempdir().unwrap();
        let provider_addr = format!("198.18.{n}.1");
        let mut cfg = common::config(dir.path(), &[&mint.url], RATE, common::free_port_block(4));
        cfg.provider.ssh_host = provider_addr.clone();
        cfg.backend.kind = BackendChoice::Proxmox;
        cfg.backend.proxmox = proxmox_config(
            &pve,
            "lxc",
            &format!(
                "[network]\nmode = \"nat\"\npool_start = \"198.18.{n}.10\"\npool_end = \"198.18.{n}.20\"\n\
                 prefix_len = 24\ngateway = \"198.18.{n}.1\"\n\
                 nft_command = [\"nft\"]\n"
            ),
        );
        let backend: Arc<dyn Backend> = paygress::backend::from_config(&cfg).await.expect("backend");
        assert!(backend.host_port_from_core());
        let provider = Provider::open(cfg.clone(), backend).await.expect("provider");
        let _standins = StandIns::start(
            pve.clone(),
            Buyer { password: PASSWORD.into() },
            22,
            dir.path(),
        );
        let keys = tempfile::tempdir().unwrap();
        let (key, public) = common::ssh::keygen(keys.path());
        let req = SpawnRequest {
            cashu_token: Secret::new(mint.token(100).await),
            ssh_username: "alice".into(),
            ssh_password: Some(Secret::new(PASSWORD)),
            ssh_public_key: Some(public),
            ..Default::default()
        };
        let r = provider
            .spawn(req, Caller::Local, None, CancellationToken::new())
            .await
            .expect("spawn");
        let port = r.node_port;
        assert_eq!(r.host, provider_addr);
        assert!((cfg.provider.ssh_port_range_start..=cfg.provider.ssh_port_range_end).contains(&port));
        let rule = format!("tcp dport {port} dnat to 198.18.{n}.10:22");
        let table = OwnNetns::paygress_table();
        assert_eq!(table.matches(&rule).count(), 2, "prerouting and output: {table}");
        // The buyer's command works: through the DNAT rule to the guest's sshd.
        assert_eq!(login(&r, &key).await, "alice");
        let create = &sent(&pve, "POST", "/nodes/pve/lxc").await[0];
        assert_eq!(field(create, "tags"), Some(format!("paygress;paygress-{};paygress-port-{port}", provider.provider_id()).as_str()));

        // The table is lost (a host reboot); a restarted provider writes it again from its tags.
        let st = std::process::Command::new("nft")
            .args(["delete", "table", "ip", "paygress"])
            .status()
            .unwrap();
        assert!(st.success());
        assert!(!OwnNetns::paygress_table().contains(&rule));
        drop(provider);
        let backend = paygress::backend::from_config(&cfg).await.expect("backend");
        let provider = Provider::open(cfg.clone(), backend).await.expect("reopen");
        assert!(OwnNetns::paygress_table().contains(&rule), "rebuilt on re-adoption");
        assert_eq!(login(&r, &key).await, "alice");

        // Deleted after grace: the rule goes with the guest.
        let (_, expires) = row(&provider, &r.pod_npub);
        provider.reap_at(expires + 1).await;
        let grace = cfg.provider.expiry_grace_seconds;
        assert_eq!(provider.reap_at(expires + 1 + grace).await.deleted, vec![r.pod_npub.clone()]);
        let table = OwnNetns::paygress_table();
        assert!(!table.contains("dnat"), "{table}");
        assert!(pve.workloads().await.is_empty());
    });
}

fn lxc(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut c = std::process::Command::new("lxc")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lxc");
    let mut input = c.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "lxc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The LXC template's first-boot script (`provider/proxmox/paygress-login.sh`) in a real Debian
/// container (the real LXD daemon and the project's base image stand in for a PVE template), on
/// exactly the `ssh-public-keys` the backend sent and a root password set as PVE sets it: the
/// buyer's user exists, logs in over real ssh with the buyer's key and password, and root is
/// locked. The buyer's key comes with a hostile comment naming another account
/// (`paygress-user=mallory`): the account made is still the one the buyer paid for.
#[tokio::test]
async fn the_lxc_template_script_makes_the_buyers_login_from_what_the_backend_sent() {
    let e = env("lxc").await;
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = common::ssh::keygen(keys.path());
    let mut fields = public.split_whitespace();
    let hostile = format!(
        "{} {} paygress-user=mallory",
        fields.next().unwrap(),
        fields.next().unwrap()
    );
    spawn(&e, 100, None, Some(hostile)).await.expect("spawn");
    let creates = sent(&e.pve, "POST", "/nodes/pve/lxc").await;
    let sent_keys = field(&creates[0], "ssh-public-keys").unwrap().to_string();

    let name = format!("pgpve-login-{:08x}", rand::random::<u32>());
    let _guard = common::LxdCleanup(name.clone());
    lxc(&["launch", "paygress-debian-12", &name], None);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/provider/proxmox/paygress-login.sh"
    );
    lxc(
        &[
            "file",
            "push",
            "--mode",
            "0755",
            script,
            &format!("{name}/usr/local/sbin/paygress-login"),
        ],
        None,
    );
    let file = keys.path().join("authorized_keys");
    std::fs::write(&file, format!("{sent_keys}\n")).unwrap();
    lxc(
        &[
            "file",
            "push",
            "-p",
            "--mode",
            "0600",
            file.to_str().unwrap(),
            &format!("{name}/root/.ssh/authorized_keys"),
        ],
        None,
    );
    lxc(
        &["exec", &name, "--", "chpasswd"],
        Some(&format!("root:{PASSWORD}\n")),
    );
    lxc(
        &["exec", &name, "--", "/usr/local/sbin/paygress-login"],
        None,
    );
    // A second boot changes nothing.
    lxc(
        &["exec", &name, "--", "/usr/local/sbin/paygress-login"],
        None,
    );
    assert_eq!(
        lxc(&["exec", &name, "--", "id", "-un", "alice"], None).trim(),
        "alice"
    );
    assert!(
        !std::process::Command::new("lxc")
            .args(["exec", &name, "--", "id", "-u", "mallory"])
            .output()
            .unwrap()
            .status
            .success(),
        "the key's comment named an account"
    );
    let status = lxc(&["exec", &name, "--", "passwd", "--status", "root"], None);
    assert_eq!(
        status.split_whitespace().nth(1),
        Some("L"),
        "root locked: {status}"
    );

    let port = common::free_port_block(1).0;
    lxc(
        &[
            "config",
            "device",
            "add",
            &name,
            "ssh",
            "proxy",
            &format!("listen=tcp:127.0.0.1:{port}"),
            "connect=tcp:127.0.0.1:22",
        ],
        None,
    );
    assert_eq!(login_at("127.0.0.1", port, &key).await, "alice");
    assert_eq!(
        ssh_password_at("127.0.0.1", port, "alice", PASSWORD, "echo pw")
            .await
            .unwrap()
            .trim(),
        "pw"
    );
    assert!(ssh_password_at("127.0.0.1", port, "root", PASSWORD, "true")
        .await
        .is_err());
}

/// `[backend.proxmox]` in a config file: loaded, checked at load time (trust, templates for
/// every offered image), and `from_config` builds the backend that offers `proxmox`.
#[tokio::test]
async fn a_config_file_with_backend_proxmox_loads_and_is_checked() {
    let pve = FakePve::start();
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[provider]\ndata_dir = {dir:?}\n[payments]\nwhitelisted_mints = [{mint:?}]\n\
         [images]\nallowed = [\"paygress-debian-12\", \"alpine\"]\n\
         [[tiers]]\nid = \"basic\"\nname = \"Basic\"\ncpu_millicores = 500\nmemory_mb = 256\n\
         rate_msats_per_sec = 10\n[backend]\nkind = \"proxmox\"\n",
        dir = dir.path().display().to_string(),
        mint = mint.url,
    );
    let section = pve
        .backend_toml("lxc")
        .replace("[templates]", "[backend.proxmox.templates]");
    let full =
        format!("{text}[backend.proxmox]\n{section}[backend.proxmox.network]\nmode = \"dhcp\"\n");
    let env = std::collections::BTreeMap::new();
    let cfg = Config::from_toml_with_env(&full, &env).expect("config");
    let backend = paygress::backend::from_config(&cfg).await.expect("backend");
    assert_eq!(backend.kind(), BackendKind::Proxmox);
    assert!(
        !backend.host_port_from_core(),
        "dhcp: the guest's own address"
    );
    let provider = Provider::open(cfg, backend).await.unwrap();
    let offers = provider.offers();
    assert_eq!(offers.backend, BackendKind::Proxmox);
    assert_eq!(serde_json::to_value(&offers).unwrap()["backend"], "proxmox");

    let e = Config::from_toml_with_env(&full.replace("\"alpine\" = ", "\"other\" = "), &env)
        .unwrap_err();
    assert_eq!(e.key, "backend.proxmox.templates", "{e}");
    let no_pin = full
        .lines()
        .filter(|l| !l.starts_with("fingerprint"))
        .collect::<Vec<_>>()
        .join("\n");
    let e = Config::from_toml_with_env(&no_pin, &env).unwrap_err();
    assert_eq!(e.key, "backend.proxmox.fingerprint", "{e}");
}

/// `dhcp` mode: the guest takes an address by DHCP (here the harness plays the DHCP server), the
/// backend reads it from `/lxc/{vmid}/interfaces` (LXC) or the QEMU guest agent, and the buyer's
/// ssh goes there.
#[tokio::test]
async fn dhcp_mode_reads_the_guest_address_from_the_api() {
    for kind in ["lxc", "qemu"] {
        dhcp_round(kind).await;
    }
}

async fn dhcp_round(kind: &str) {
    let pve = Arc::new(FakePve::start());
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let block = loopback_block();
    let ssh_port = guest_ssh_port();
    let mut cfg = common::config(dir.path(), &[&mint.url], RATE, common::free_port_block(4));
    cfg.backend.kind = BackendChoice::Proxmox;
    cfg.backend.proxmox = proxmox_config(
        &pve,
        kind,
        &format!("[network]\nmode = \"dhcp\"\nssh_port = {ssh_port}\n"),
    );
    let backend = Arc::new(
        ProxmoxBackend::connect(cfg.backend.proxmox.clone())
            .await
            .unwrap(),
    );
    assert!(!backend.host_port_from_core());
    let provider = Provider::open(cfg.clone(), backend).await.unwrap();
    let _standins = StandIns::start(
        pve.clone(),
        Buyer {
            password: PASSWORD.into(),
        },
        ssh_port,
        dir.path(),
    );
    // The DHCP server: every running guest asking for DHCP gets 127.A.B.(40 + n).
    let leases = pve.clone();
    let dhcp = tokio::spawn(async move {
        loop {
            for g in leases.workloads().await {
                let net = g["config"]["net0"].as_str().unwrap_or_default().to_string()
                    + g["config"]["ipconfig0"].as_str().unwrap_or_default();
                if g["status"] == "running" && net.contains("ip=dhcp") && g["agent_ipv4"].is_null()
                {
                    let vmid = g["vmid"].as_u64().unwrap();
                    let ip =
                        std::net::Ipv4Addr::new(127, block.0, block.1, 40 + (vmid % 100) as u8);
                    leases.lease(vmid, ip).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = common::ssh::keygen(keys.path());
    let req = SpawnRequest {
        cashu_token: Secret::new(mint.token(100).await),
        ssh_username: "alice".into(),
        ssh_password: Some(Secret::new(PASSWORD)),
        ssh_public_key: Some(public),
        ..Default::default()
    };
    let r = provider
        .spawn(req, Caller::Local, None, CancellationToken::new())
        .await
        .expect("spawn");
    assert_eq!(
        (r.host.clone(), r.node_port),
        (format!("127.{}.{}.40", block.0, block.1), ssh_port)
    );
    if kind == "lxc" {
        let c = &sent(&pve, "POST", "/nodes/pve/lxc").await[0];
        assert_eq!(field(c, "net0"), Some("name=eth0,bridge=vmbr0,ip=dhcp"));
    } else {
        let c = &sent(&pve, "PUT", "/nodes/pve/qemu/10000/config").await[0];
        assert_eq!(field(c, "ipconfig0"), Some("ip=dhcp"));
    }
    assert_eq!(login(&r, &key).await, "alice");
    assert!(pve.requests().await.iter().any(|(m, p, _)| m == "GET"
        && (p.ends_with("/lxc/10000/interfaces")
            || p.ends_with("/qemu/10000/agent/network-get-interfaces"))));
    dhcp.abort();
}

/// Nothing secret in the logs at trace level, through a spawn, a failed spawn and a destroy: not
/// the API token's secret, not the buyer's password.
#[tokio::test(flavor = "current_thread")]
async fn no_token_secret_or_password_reaches_the_logs() {
    let cap = common::Capture::default();
    let writer = cap.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(sub);
    let e = env("lxc").await;
    let secret = std::fs::read_to_string(&e.pve.token_file).unwrap();
    let r = spawn(&e, 100, None, None).await.expect("spawn");
    let _ = spawn(&e, 100, Some("alpine"), None).await.unwrap_err();
    let (_, expires) = row(&e.provider, &r.pod_npub);
    e.provider
        .reap_at(expires + 1 + e.cfg.provider.expiry_grace_seconds)
        .await;
    let text = cap.text();
    assert!(text.contains("proxmox guest ready"), "the capture works");
    assert!(!text.contains(secret.trim()), "the token secret was logged");
    assert!(!text.contains(PASSWORD), "the password was logged");
}

/// Three buyers at once: each gets a vmid and an address of its own, and each logs in.
#[tokio::test]
async fn concurrent_spawns_get_their_own_vmids_and_addresses() {
    let e = Arc::new(env("lxc").await);
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = common::ssh::keygen(keys.path());
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (e, public) = (e.clone(), public.clone());
        tasks.push(tokio::spawn(async move {
            spawn(&e, 100, None, Some(public)).await.expect("spawn")
        }));
    }
    let mut hosts = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(login(&r, &key).await, "alice");
        hosts.push(r.host);
    }
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 3, "{hosts:?}");
    let mut vmids: Vec<u64> = e
        .pve
        .workloads()
        .await
        .iter()
        .filter_map(|g| g["vmid"].as_u64())
        .collect();
    vmids.sort();
    assert_eq!(vmids, vec![10000, 10001, 10002]);
}

/// A QEMU clone the provider never got to configure (it stopped between the clone and the
/// config, so the clone has no tags) is still found by name within the backend's vmid range and
/// removed; a VM of the same name outside the range is not the backend's and stays.
#[tokio::test]
async fn an_untagged_clone_in_the_vmid_range_is_still_removed() {
    let pve = FakePve::start();
    let c = proxmox_config(&pve, "qemu", &static_network(loopback_block(), 22));
    let b = ProxmoxBackend::connect(c).await.unwrap();
    pve.add_vm(10007, "pg-abandoned", "stopped", serde_json::json!({}))
        .await;
    pve.add_vm(500, "pg-elsewhere", "running", serde_json::json!({}))
        .await;
    assert!(b.inspect("pg-abandoned").await.unwrap().is_some());
    b.destroy("pg-abandoned").await.unwrap();
    b.destroy("pg-elsewhere").await.unwrap();
    let left: Vec<u64> = pve
        .workloads()
        .await
        .iter()
        .filter_map(|g| g["vmid"].as_u64())
        .collect();
    assert_eq!(left, vec![500]);
}
