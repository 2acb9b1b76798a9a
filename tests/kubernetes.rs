//! The Kubernetes backend through the provider core, against the simulated API server
//! (tests/common/kubesim) whose kubelet runs each pod on the sandbox backend: real payments at
//! the in-process test mint, real `ssh` into the "pod" on node_address:nodePort, the tier's
//! limits enforced by the pod's cgroup, top-up, expiry, a late top-up that resumes, deletion
//! after the grace period; refunds when the API server refuses after payment (quota, 403,
//! 422) with nothing left behind; re-adoption and orphan removal after a restart; the
//! optional hard cap (`activeDeadlineSeconds`).
//!
//! Also the deployment side: the SSH image's entrypoint in the LXD base image over real ssh,
//! `kubectl apply` of provider/kubernetes/manifests and a paid life cycle with exactly their
//! Role, and the real binary's get_offers with a kubeconfig and with a pod's service account.
//!
//! Needs root (the kubelet's sandbox makes namespaces and cgroups; the in-pod test a mount
//! namespace). Around 1.2k lines: one scenario per test, each walking a whole life cycle.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::kubesim::{KubeSim, Rule, ADMIN_TOKEN};
use common::mint::TestMint;
use common::sandbox::Cleanup;
use common::ssh::ssh_password;
use paygress::api::{SpawnRequest, SpawnResult, StatusRequest, TopUpRequest};
use paygress::backend::kubernetes::KubernetesConfig;
use paygress::backend::sandbox::{SandboxBackend, SandboxConfig};
use paygress::backend::{Backend, BackendKind, WorkloadState};
use paygress::config::{BackendChoice, Config};
use paygress::secret::Secret;
use paygress::{Caller, ErrorType, Provider, ProviderError};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const NS: &str = "user-workloads";
/// msat/s of the first tier: 100 sats buy 1000 s.
const RATE: u64 = 100;

struct Env {
    /// First: kills what the kubelet's sandbox left, before `dir` goes.
    _guard: Cleanup,
    mint: TestMint,
    cfg: Config,
    backend: Arc<dyn Backend>,
    provider: Arc<Provider>,
    sim: KubeSim,
    kubelet_sandbox: Arc<SandboxBackend>,
    dir: tempfile::TempDir,
}

fn k8s_config(sim: &KubeSim, token: &str) -> KubernetesConfig {
    KubernetesConfig {
        kubeconfig: Some(sim.kubeconfig(token, "default")),
        namespace: Some(NS.into()),
        node_address: Some("127.0.0.1".into()),
        images: [(
            "paygress-debian-12".to_string(),
            "ghcr.io/example/paygress-ssh:1".to_string(),
        )]
        .into_iter()
        .collect(),
        ready_timeout_seconds: Some(60),
        ..Default::default()
    }
}

/// A provider on the Kubernetes backend whose config `tune` may change (token, runtime class,
/// caps), against a fresh simulator.
async fn env_with(tune: impl FnOnce(&KubeSim, &mut KubernetesConfig)) -> Env {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubelet_sandbox = Arc::new(
        SandboxBackend::open(SandboxConfig::default(), &dir.path().join("node"))
            .await
            .expect("the kubelet's sandbox"),
    );
    let guard = Cleanup {
        backend: Some(kubelet_sandbox.clone()),
    };
    let sim = KubeSim::start(&[NS], Some(kubelet_sandbox.clone())).await;
    let mut cfg = common::config(&dir.path().join("provider"), &[&mint.url], RATE, (1, 1));
    cfg.backend.kind = BackendChoice::Kubernetes;
    let mut k = k8s_config(&sim, ADMIN_TOKEN);
    tune(&sim, &mut k);
    cfg.backend.kubernetes = k;
    let backend = paygress::backend::from_config(&cfg)
        .await
        .expect("kubernetes backend");
    let provider = Provider::open(cfg.clone(), backend.clone())
        .await
        .expect("provider");
    Env {
        _guard: guard,
        mint,
        cfg,
        backend,
        provider,
        sim,
        kubelet_sandbox,
        dir,
    }
}

async fn spawn(e: &Env, sats: u64, password: &str) -> Result<SpawnResult, ProviderError> {
    let req = SpawnRequest {
        cashu_token: Secret::new(e.mint.token(sats).await),
        ssh_username: "alice".into(),
        ssh_password: Some(Secret::new(password)),
        ..Default::default()
    };
    e.provider
        .spawn(req, Caller::Local, None, CancellationToken::new())
        .await
}

async fn top_up(e: &Env, pod: &str, sats: u64) {
    e.provider
        .top_up(TopUpRequest {
            pod_npub: pod.into(),
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

/// Every object of the workload in the simulator: (pod, service, secret).
fn objects(sim: &KubeSim, name: &str) -> (Option<Value>, Option<Value>, Option<Value>) {
    (
        sim.object("pods", NS, name),
        sim.object("services", NS, name),
        sim.object("secrets", NS, &format!("{name}-login")),
    )
}

fn nothing_left(sim: &KubeSim) {
    let mine = |res: &str| {
        sim.objects(res, NS)
            .into_iter()
            .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "paygress")
            .count()
    };
    assert_eq!(
        (
            mine("pods"),
            mine("services"),
            mine("secrets"),
            mine("persistentvolumeclaims")
        ),
        (0, 0, 0, 0)
    );
}

async fn wait_gone(sim: &KubeSim, name: &str) {
    for _ in 0..100 {
        if sim.object("pods", NS, name).is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pod {name} still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_login_top_up_expiry_late_top_up_and_deletion_after_grace() {
    let e = env_with(|_, _| {}).await;
    let offers = e.provider.offers();
    assert_eq!(offers.backend, BackendKind::Kubernetes);
    assert_eq!(
        serde_json::to_value(&offers).unwrap()["backend"],
        "kubernetes"
    );
    let pw = "k8s-pass-123";
    let r = spawn(&e, 100, pw).await.expect("paid spawn");
    let (name, expires) = row(&e.provider, &r.pod_npub);

    // The objects: a Pod without hostNetwork with requests = limits from the tier, a NodePort
    // Service whose port the buyer got, the login only in the Secret.
    let (pod, svc, secret) = objects(&e.sim, &name);
    let (pod, svc, secret) = (pod.unwrap(), svc.unwrap(), secret.unwrap());
    let np = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert_eq!(svc["spec"]["type"], "NodePort");
    assert_eq!((r.host.as_str(), u64::from(r.node_port)), ("127.0.0.1", np));
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["image"], "ghcr.io/example/paygress-ssh:1");
    assert_eq!(c["resources"]["limits"]["cpu"], "1000m");
    assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(c["resources"]["requests"], c["resources"]["limits"]);
    assert_eq!(pod["status"]["qosClass"], "Guaranteed");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(
        pod["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(pod["spec"]["hostNetwork"] != true);
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert!(
        pod["spec"]["activeDeadlineSeconds"].is_null(),
        "no hard cap unless configured"
    );
    assert!(!pod.to_string().contains(pw) && !svc.to_string().contains(pw));
    assert!(secret["data"]["password"].is_string());
    // The spawn answer names the fingerprint of the host key in the Secret (the image's
    // entrypoint serves exactly that key: see the LXD entrypoint test; the simulator's sandbox
    // serves its own).
    use base64::Engine;
    let public = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["ssh_host_ed25519_key.pub"].as_str().unwrap())
        .unwrap();
    let fp = russh::keys::PublicKey::from_openssh(String::from_utf8(public).unwrap().trim())
        .unwrap()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    assert_eq!(r.ssh_host_key_fingerprints, vec![fp]);
    let np = e
        .sim
        .object(
            "networkpolicies.networking.k8s.io",
            NS,
            "paygress-workloads",
        )
        .expect("the workloads' NetworkPolicy");
    let except = np["spec"]["egress"][0]["to"][0]["ipBlock"]["except"].to_string();
    assert!(
        except.contains("10.0.0.0/8") && except.contains("169.254.0.0/16"),
        "{np}"
    );
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/managed-by"],
        "paygress"
    );
    // Readiness came from a watch on the pod, not from polling it.
    let reqs = e.sim.requests();
    assert!(
        reqs.iter()
            .any(|q| q.contains(&format!("/namespaces/{NS}/pods?"))
                && q.contains("watch=true")
                && q.contains(&format!("metadata.name%3D{name}"))),
        "{reqs:#?}"
    );
    assert!(
        !reqs
            .iter()
            .any(|q| q.starts_with(&format!("GET /api/v1/namespaces/{NS}/pods/{name}"))),
        "{reqs:#?}"
    );

    // Real ssh into the pod, with the tier's limits on its cgroup.
    let out = ssh_password(r.node_port, "alice", pw, "whoami; hostname")
        .await
        .expect("ssh into the pod");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["alice", name.as_str()]);
    if e.kubelet_sandbox.cgroup_mode().enforces_memory() {
        let dirs = e.kubelet_sandbox.cgroup_dirs(&name);
        let limits: Vec<String> = dirs
            .iter()
            .flat_map(|d| ["memory.max", "cpu.max", "memory.limit_in_bytes"].map(|f| d.join(f)))
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .map(|s| s.trim().to_string())
            .collect();
        assert!(
            limits.contains(&(512u64 * 1024 * 1024).to_string()),
            "{limits:?}"
        );
        // 1000 millicores: one CPU's worth of each CFS period (cgroup v2).
        if dirs.iter().any(|d| d.join("cpu.max").exists()) {
            assert!(limits.contains(&"100000 100000".to_string()), "{limits:?}");
        }
        // The buyer's processes run in that cgroup.
        ssh_password(
            r.node_port,
            "alice",
            pw,
            "nohup sleep 31337 >/dev/null 2>&1 &",
        )
        .await
        .unwrap();
        let in_cgroup = dirs.iter().any(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .any(|pid| {
                    std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("31337"))
                })
        });
        assert!(
            in_cgroup,
            "the buyer's sleep is not in the pod's cgroup {dirs:?}"
        );
    } else {
        eprintln!("SKIPPED the cgroup check: no writable cgroup hierarchy on this host");
    }

    // A top-up moves the deadline (the core's), recorded on the Service.
    top_up(&e, &r.pod_npub, 10).await;
    let (_, expires2) = row(&e.provider, &r.pod_npub);
    assert_eq!(expires2, expires + 100);
    let svc = e.sim.object("services", NS, &name).unwrap();
    assert_eq!(
        svc["metadata"]["annotations"]["paygress.io/expires-at"],
        expires2.to_string()
    );
    assert!(e.provider.reap_at(expires).await.stopped.is_empty());

    // Expiry: the pod goes, the Service (and its port) and the Secret stay.
    assert_eq!(
        e.provider.reap_at(expires2).await.stopped,
        vec![r.pod_npub.clone()]
    );
    let (pod, svc, secret) = objects(&e.sim, &name);
    assert!(pod.is_none() && svc.is_some() && secret.is_some());
    assert_eq!(
        e.backend.inspect(&name).await.unwrap().unwrap().state,
        WorkloadState::Stopped
    );
    assert!(ssh_password(r.node_port, "alice", pw, "true")
        .await
        .is_err());

    // A late top-up resumes it: a new pod behind the same endpoint.
    top_up(&e, &r.pod_npub, 10).await;
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
    assert_eq!(st.state, "running");
    assert_eq!(
        ssh_password(r.node_port, "alice", pw, "whoami")
            .await
            .unwrap()
            .trim(),
        "alice"
    );

    // Expires again, and after the grace period everything is deleted.
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
    assert_eq!(objects(&e.sim, &name), (None, None, None));
    nothing_left(&e.sim);
    let _ = e.dir.path();
}

async fn refused_after_payment(e: &Env, needle: &str) {
    let err = spawn(e, 100, "refused-pass-123").await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::PodCreationFailed, "{err:?}");
    assert!(err.message.contains(needle), "{err:?}");
    assert!(!err.message.contains("refused-pass-123"));
    let refund = err.refund_token.clone().expect("a refund token");
    assert_eq!(e.mint.receive_fresh(refund.expose()).await.unwrap(), 100);
    nothing_left(&e.sim);
}

/// Readiness rides out what real API servers do to long watches: the server ends each watch
/// after a second, and the history is compacted in between, so kube-runtime's watcher resumes
/// from a version that is gone, gets 410 Expired, relists, and still sees the pod become
/// Ready (after a 3 s "image pull").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_survives_ended_watches_and_410() {
    let e = env_with(|_, _| {}).await;
    e.sim.cap_watches(Some(1));
    e.sim.set_start_delay(3);
    let stop = CancellationToken::new();
    let churn = {
        let stop = stop.clone();
        let sim = e.sim.sim.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(300)).await;
                sim.churn_and_compact();
            }
        })
    };
    let r = spawn(&e, 100, "watch-pass-123").await;
    stop.cancel();
    let _ = churn.await;
    let r = r.expect("spawn through ended and expired watches");
    assert!(
        e.sim.expired_served() >= 1,
        "no watch was ever answered with 410"
    );
    assert_eq!(
        ssh_password(r.node_port, "alice", "watch-pass-123", "whoami")
            .await
            .unwrap()
            .trim(),
        "alice"
    );
}

/// A tier with a disk gets a PersistentVolumeClaim at /home: expiry deletes the pod but keeps
/// the claim, a late top-up's new pod finds the buyer's files, deletion removes the claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_with_a_disk_keeps_its_home_across_expiry() {
    let e = env_with(|_, k| k.storage_class = Some("fast".into())).await;
    let mut cfg = e.cfg.clone();
    cfg.tiers[0].disk_gb = Some(2);
    drop(e.provider.clone());
    let Env {
        provider,
        backend,
        sim,
        mint,
        _guard,
        kubelet_sandbox,
        dir,
        ..
    } = e;
    drop(provider);
    let provider = Provider::open(cfg.clone(), backend.clone()).await.unwrap();
    let e = Env {
        provider,
        backend,
        sim,
        mint,
        _guard,
        kubelet_sandbox,
        dir,
        cfg,
    };
    let pw = "disk-pass-123";
    let r = spawn(&e, 100, pw).await.expect("spawn");
    let (name, expires) = row(&e.provider, &r.pod_npub);
    let claim = format!("{name}-home");
    let pvc = e
        .sim
        .object("persistentvolumeclaims", NS, &claim)
        .expect("a claim");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "2Gi");
    assert_eq!(pvc["spec"]["storageClassName"], "fast");
    let pod = e.sim.object("pods", NS, &name).unwrap();
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["resources"]["limits"]["ephemeral-storage"], "2Gi");
    assert!(c["volumeMounts"].to_string().contains("\"/home\""), "{c}");
    ssh_password(r.node_port, "alice", pw, "echo kept > ~/f")
        .await
        .unwrap();

    assert_eq!(
        e.provider.reap_at(expires).await.stopped,
        vec![r.pod_npub.clone()]
    );
    assert!(e.sim.object("pods", NS, &name).is_none());
    assert!(e.sim.object("persistentvolumeclaims", NS, &claim).is_some());
    top_up(&e, &r.pod_npub, 10).await;
    assert_eq!(
        ssh_password(r.node_port, "alice", pw, "cat ~/f")
            .await
            .unwrap()
            .trim(),
        "kept"
    );

    let (_, expires2) = row(&e.provider, &r.pod_npub);
    let grace = e.cfg.provider.expiry_grace_seconds;
    e.provider.reap_at(expires2 + 1).await;
    assert_eq!(
        e.provider.reap_at(expires2 + 1 + grace).await.deleted,
        vec![r.pod_npub.clone()]
    );
    assert!(e.sim.object("persistentvolumeclaims", NS, &claim).is_none());
    nothing_left(&e.sim);
}

/// An image the node cannot pull fails the create as soon as the kubelet says so, with the
/// kubelet's reason (a ready timeout would say "was not Ready within"): refunded, nothing
/// left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_is_refunded_at_once() {
    let e = env_with(|sim, _| sim.missing_image("ghcr.io/example/paygress-ssh:1")).await;
    refused_after_payment(&e, "cannot start: ErrImagePull: Failed to pull image").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_refusal_after_payment_is_refunded_and_leaves_nothing() {
    let e = env_with(|_, _| {}).await;
    e.sim.set_pod_quota(Some(0));
    refused_after_payment(&e, "exceeded quota").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_after_payment_is_refunded_and_leaves_nothing() {
    // This token may do everything but create pods (a Role missing a rule).
    let e = env_with(|sim, k| {
        let all = [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ];
        sim.add_token(
            "no-pods",
            "system:serviceaccount:paygress:paygress",
            vec![
                Rule::new(&all, &["services", "secrets", "networkpolicies"], &[NS]),
                Rule::new(&["get", "list", "watch", "delete"], &["pods"], &[NS]),
            ],
        );
        *k = KubernetesConfig {
            kubeconfig: Some(sim.kubeconfig("no-pods", NS)),
            ..k.clone()
        };
    })
    .await;
    refused_after_payment(&e, "403").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_422_after_payment_is_refunded_and_leaves_nothing() {
    // An operator's typo in the runtime class: the API server rejects the pod.
    let e = env_with(|_, k| k.runtime_class = Some("Bad_Class".into())).await;
    refused_after_payment(&e, "spec.runtimeClassName").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_the_api_server_refuses_stop_the_start() {
    let sim = KubeSim::start(&[NS], None).await;
    let mut k = k8s_config(&sim, "wrong-token");
    let err = paygress::backend::kubernetes::KubernetesBackend::connect(k.clone(), NS.into())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    k.kubeconfig = Some(sim.kubeconfig(ADMIN_TOKEN, NS));
    let err =
        paygress::backend::kubernetes::KubernetesBackend::connect(k.clone(), "no-such-ns".into())
            .await
            .unwrap_err();
    assert!(
        err.to_string()
            .contains("namespaces \"no-such-ns\" not found")
            || err.to_string().contains("no-such-ns"),
        "{err}"
    );
    k.node_address = None;
    let err = paygress::backend::kubernetes::KubernetesBackend::connect(k, NS.into())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("node_address"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_provider_readopts_its_pod_and_removes_orphans() {
    let e = env_with(|_, _| {}).await;
    let pw = "readopt-pass-123";
    let r = spawn(&e, 100, pw).await.expect("spawn");
    let (name, _) = row(&e.provider, &r.pod_npub);
    let uid = e.sim.object("pods", NS, &name).unwrap()["metadata"]["uid"].clone();
    // An orphan: a workload of this provider that its store does not know (a crash between
    // create and the journal).
    let orphan_spec = paygress::backend::WorkloadSpec {
        name: "pg-orphan0001".into(),
        provider_id: e.provider.provider_id().into(),
        tier: e.cfg.tiers[0].clone(),
        image: "paygress-debian-12".into(),
        ssh_username: "bob".into(),
        ssh_password: Secret::new("orphan-pass-123"),
        ssh_public_key: None,
        host_port: None,
        expires_at: paygress::provider::now_secs() + 600,
    };
    e.backend.create(&orphan_spec).await.expect("orphan");

    let Env {
        provider,
        backend,
        cfg,
        sim,
        mint,
        _guard,
        kubelet_sandbox,
        dir,
    } = e;
    drop(provider);
    drop(backend);
    let backend = paygress::backend::from_config(&cfg)
        .await
        .expect("backend again");
    let reopened = Provider::open(cfg.clone(), backend.clone())
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
        .unwrap();
    assert_eq!(st.state, "running");
    assert_eq!(
        sim.object("pods", NS, &name).unwrap()["metadata"]["uid"],
        uid,
        "the same pod"
    );
    assert_eq!(
        ssh_password(r.node_port, "alice", pw, "whoami")
            .await
            .unwrap()
            .trim(),
        "alice"
    );
    wait_gone(&sim, "pg-orphan0001").await;
    assert_eq!(objects(&sim, "pg-orphan0001"), (None, None, None));
    let listed = backend.list(reopened.provider_id()).await.unwrap();
    assert_eq!(
        listed.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        [name.as_str()]
    );
    backend.destroy(&name).await.unwrap();
    nothing_left(&sim);
    drop((mint, kubelet_sandbox, dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_optional_hard_cap_ends_the_pod_with_deadline_exceeded() {
    let e = env_with(|_, k| k.max_pod_lifetime_seconds = Some(3)).await;
    let pw = "cap-pass-123";
    let r = spawn(&e, 100, pw).await.expect("spawn");
    let (name, _) = row(&e.provider, &r.pod_npub);
    let pod = e.sim.object("pods", NS, &name).unwrap();
    assert_eq!(pod["spec"]["activeDeadlineSeconds"], 3);
    let mut phase = Value::Null;
    for _ in 0..100 {
        let p = e.sim.object("pods", NS, &name).unwrap();
        if p["status"]["phase"] == "Failed" {
            phase = p["status"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(phase["reason"], "DeadlineExceeded", "{phase}");
    assert_eq!(
        e.backend.inspect(&name).await.unwrap().unwrap().state,
        WorkloadState::Stopped
    );
    assert!(ssh_password(r.node_port, "alice", pw, "true")
        .await
        .is_err());
    // A top-up does not depend on the cap: the paid time moves and resume makes a new pod.
    e.backend
        .resume(&name)
        .await
        .expect("resume replaces the ended pod");
    assert_eq!(
        ssh_password(r.node_port, "alice", pw, "whoami")
            .await
            .unwrap()
            .trim(),
        "alice"
    );
    e.backend.destroy(&name).await.unwrap();
    nothing_left(&e.sim);
}

fn manifests_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("provider/kubernetes/manifests")
}

async fn kubectl(kc: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("kubectl")
        .env("KUBECONFIG", kc)
        .args(args)
        .arg("--request-timeout=20s")
        .output()
        .await
        .expect("kubectl (tools/test.sh)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `kubectl apply` of provider/kubernetes/manifests to the simulator; every object read back
/// parses as its k8s-openapi type; the ConfigMap's paygress.toml is a valid Kubernetes-backend
/// config; a second apply changes nothing; and the Role the manifests bind to the provider's
/// service account is enough for a paid workload's whole life and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_apply_parse_and_their_role_is_enough() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{
        ConfigMap, Namespace, PersistentVolumeClaim, Service, ServiceAccount,
    };
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubelet_sandbox = Arc::new(
        SandboxBackend::open(SandboxConfig::default(), &dir.path().join("node"))
            .await
            .unwrap(),
    );
    let _guard = Cleanup {
        backend: Some(kubelet_sandbox.clone()),
    };
    let sim = KubeSim::start(&[], Some(kubelet_sandbox.clone())).await;
    let admin = sim.kubeconfig(ADMIN_TOKEN, "default");
    let m = manifests_dir();
    let (good, out) = kubectl(
        &admin,
        &["apply", "--validate=false", "-f", m.to_str().unwrap()],
    )
    .await;
    assert!(good, "{out}");
    for made in [
        "namespace/paygress created",
        "namespace/user-workloads created",
        "serviceaccount/paygress created",
        "role.rbac.authorization.k8s.io/paygress-workloads created",
        "rolebinding.rbac.authorization.k8s.io/paygress-workloads created",
        "configmap/paygress-config created",
        "persistentvolumeclaim/paygress-data created",
        "deployment.apps/paygress created",
        "service/paygress-http created",
    ] {
        assert!(out.contains(made), "{made}: {out}");
    }
    let (good, out) = kubectl(
        &admin,
        &["apply", "--validate=false", "-f", m.to_str().unwrap()],
    )
    .await;
    assert!(
        good && out.contains("deployment.apps/paygress unchanged"),
        "{out}"
    );

    // Read back as the typed objects.
    let get = |res: &str, ns: &str, name: &str| {
        sim.object(res, ns, name)
            .unwrap_or_else(|| panic!("{res} {name}"))
    };
    let _: Namespace = serde_json::from_value(get("namespaces", "", "user-workloads")).unwrap();
    let _: ServiceAccount =
        serde_json::from_value(get("serviceaccounts", "paygress", "paygress")).unwrap();
    let role: Role = serde_json::from_value(get(
        "roles.rbac.authorization.k8s.io",
        "user-workloads",
        "paygress-workloads",
    ))
    .unwrap();
    let _: RoleBinding = serde_json::from_value(get(
        "rolebindings.rbac.authorization.k8s.io",
        "user-workloads",
        "paygress-workloads",
    ))
    .unwrap();
    let _: PersistentVolumeClaim =
        serde_json::from_value(get("persistentvolumeclaims", "paygress", "paygress-data")).unwrap();
    let _: Service = serde_json::from_value(get("services", "paygress", "paygress-http")).unwrap();
    let deploy: Deployment =
        serde_json::from_value(get("deployments.apps", "paygress", "paygress")).unwrap();
    let pod = deploy.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("paygress"));
    // The key file is readable by the provider's user (through fsGroup), by no one else.
    let uid_gid = pod.security_context.as_ref().and_then(|s| s.fs_group);
    let keys = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "keys")
        .unwrap();
    assert_eq!(keys.secret.as_ref().unwrap().default_mode, Some(0o440));
    assert_eq!(
        uid_gid,
        pod.security_context.as_ref().and_then(|s| s.run_as_user)
    );
    assert_eq!(
        pod.containers[0].args.as_ref().unwrap()[..2],
        ["provider".to_string(), "start".to_string()]
    );
    let rules = role.rules.unwrap();
    assert!(
        rules.iter().all(|r| !r.verbs.iter().any(|v| v == "*")),
        "no wildcards"
    );
    let cm: ConfigMap =
        serde_json::from_value(get("configmaps", "paygress", "paygress-config")).unwrap();
    let toml = cm.data.unwrap()["paygress.toml"].clone();
    let cfg =
        Config::from_toml_with_env(&toml, &Default::default()).expect("the ConfigMap's config");
    assert_eq!(cfg.backend.kind, BackendChoice::Kubernetes);
    assert_eq!(
        cfg.backend.kubernetes.namespace.as_deref(),
        Some("user-workloads")
    );
    assert!(cfg.backend.kubernetes.kubeconfig.is_none(), "in-cluster");

    // The service account's rights, exactly as bound: a paid workload's whole life works.
    sim.service_account_token("sa-token", "paygress", "paygress");
    let sa = sim.kubeconfig("sa-token", "user-workloads");
    let mut pcfg = common::config(&dir.path().join("provider"), &[&mint.url], RATE, (1, 1));
    pcfg.backend.kind = BackendChoice::Kubernetes;
    pcfg.backend.kubernetes = KubernetesConfig {
        kubeconfig: Some(sa.clone()),
        ..cfg.backend.kubernetes.clone()
    };
    pcfg.backend.kubernetes.node_address = Some("127.0.0.1".into());
    pcfg.backend.kubernetes.images.clear();
    // A tier with a disk, so the claim rights are exercised too.
    pcfg.tiers[0].disk_gb = Some(1);
    let backend = paygress::backend::from_config(&pcfg)
        .await
        .expect("connect as the service account");
    let provider = Provider::open(pcfg.clone(), backend.clone()).await.unwrap();
    let r = provider
        .spawn(
            SpawnRequest {
                cashu_token: Secret::new(mint.token(100).await),
                ssh_username: "alice".into(),
                ssh_password: Some(Secret::new("sa-pass-123")),
                ..Default::default()
            },
            Caller::Local,
            None,
            CancellationToken::new(),
        )
        .await
        .expect("spawn with the manifests' Role");
    assert_eq!(
        ssh_password(r.node_port, "alice", "sa-pass-123", "whoami")
            .await
            .unwrap()
            .trim(),
        "alice"
    );
    let (name, expires) = row(&provider, &r.pod_npub);
    provider
        .top_up(TopUpRequest {
            pod_npub: r.pod_npub.clone(),
            cashu_token: Secret::new(mint.token(10).await),
            request_id: None,
        })
        .await
        .expect("top-up with the manifests' Role");
    assert_eq!(
        provider.reap_at(expires + 100).await.stopped,
        vec![r.pod_npub.clone()]
    );
    provider
        .top_up(TopUpRequest {
            pod_npub: r.pod_npub.clone(),
            cashu_token: Secret::new(mint.token(10).await),
            request_id: None,
        })
        .await
        .expect("resume with the manifests' Role");
    assert!(backend
        .list(provider.provider_id())
        .await
        .unwrap()
        .iter()
        .any(|w| w.name == name));
    backend
        .destroy(&name)
        .await
        .expect("destroy with the manifests' Role");
    nothing_left(&sim);
    // And no more than that: nothing outside the workload namespace, no reading secrets.
    for args in [
        ["get", "secrets", "-n", "paygress"],
        ["get", "pods", "-n", "default"],
        ["get", "secrets", "-n", "user-workloads"],
        ["get", "configmaps", "-n", "user-workloads"],
    ] {
        let (good, out) = kubectl(&sa, &args).await;
        assert!(!good && out.contains("Forbidden"), "{args:?}: {out}");
    }
}

/// Removes the test's LXD container however the test ends.
struct Instance(String);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::process::Command::new("lxc")
            .args(["delete", "--force", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

async fn lxc(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("lxc")
        .args(args)
        .output()
        .await
        .expect("lxc (tools/test.sh installs LXD)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The SSH image's entrypoint (provider/kubernetes/entrypoint.sh), for real: inside the LXD
/// base image (which has sshd), with the Secret's files where the pod mounts them, run as the
/// container's process; the buyer logs in over real ssh with the password (shell
/// metacharacters and all, never run) and the key; root cannot log in; usernames the core
/// would refuse stop the entrypoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssh_image_entrypoint_logs_the_secret_user_in_over_real_ssh() {
    let name = format!("pgk-entry-{:08x}", rand::random::<u32>());
    let _cleanup = Instance(name.clone());
    let (good, out) = lxc(&["launch", "paygress-debian-12", &name]).await;
    assert!(good, "{out}");
    let entry =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("provider/kubernetes/entrypoint.sh");
    let (good, out) = lxc(&[
        "file",
        "push",
        "--mode",
        "0755",
        entry.to_str().unwrap(),
        &format!("{name}/usr/local/sbin/paygress-entrypoint"),
    ])
    .await;
    assert!(good, "{out}");

    // The Secret's files, as the backend writes them (no trailing newline on the password).
    let password = "it's $(touch /tmp/pwned); `id` \"x\" \\ ok";
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = common::ssh::keygen(keys.path());
    let login = tempfile::tempdir().unwrap();
    let put = |dir: &std::path::Path, files: &[(&str, String)]| {
        for (f, text) in files {
            std::fs::write(dir.join(f), text).unwrap();
        }
    };
    // The host key, as the backend makes it (OpenSSH format).
    let host_key =
        russh::keys::PrivateKey::random(&mut rand::rngs::OsRng, russh::keys::Algorithm::Ed25519)
            .unwrap();
    let host_fp = host_key
        .public_key()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    put(
        login.path(),
        &[
            ("username", "alice".into()),
            ("password", password.into()),
            ("authorized_keys", format!("{public}\n")),
            (
                "ssh_host_ed25519_key",
                host_key
                    .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                    .unwrap()
                    .to_string(),
            ),
        ],
    );
    for f in [
        "username",
        "password",
        "authorized_keys",
        "ssh_host_ed25519_key",
    ] {
        let (good, out) = lxc(&[
            "file",
            "push",
            "--create-dirs",
            "--mode",
            "0400",
            "--uid",
            "0",
            "--gid",
            "0",
            login.path().join(f).to_str().unwrap(),
            &format!("{name}/etc/paygress/login/{f}"),
        ])
        .await;
        assert!(good, "{out}");
    }
    // sshd of the image keeps port 22; the entrypoint's sshd listens on 2222, reached through
    // a proxy device on 127.0.0.1 (as a NodePort would reach the pod's port).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (good, out) = lxc(&[
        "config",
        "device",
        "add",
        &name,
        "pgk-ssh",
        "proxy",
        &format!("listen=tcp:127.0.0.1:{port}"),
        "connect=tcp:127.0.0.1:2222",
    ])
    .await;
    assert!(good, "{out}");
    let mut entrypoint = tokio::process::Command::new("lxc")
        .args([
            "exec",
            &name,
            "--",
            "/usr/local/sbin/paygress-entrypoint",
            "-p",
            "2222",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut who = Err(String::new());
    for _ in 0..60 {
        who = ssh_password(
            port,
            "alice",
            password,
            "whoami; echo $HOME; test -e /tmp/pwned && echo PWNED || echo clean",
        )
        .await;
        if who.is_ok() {
            break;
        }
        if let Ok(Some(st)) = entrypoint.try_wait() {
            let mut err = String::new();
            use tokio::io::AsyncReadExt;
            let _ = entrypoint
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .await;
            panic!("the entrypoint ended ({st}): {err}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let who = who.expect("password login through the entrypoint's sshd");
    assert_eq!(
        who.lines().collect::<Vec<_>>(),
        ["alice", "/home/alice", "clean"]
    );
    assert_eq!(
        common::ssh::ssh_key(port, "alice", &key, "echo by-key")
            .await
            .unwrap()
            .trim(),
        "by-key"
    );
    // sshd offers exactly the host key from the Secret: what a buyer pins from the answer.
    let scan = tokio::process::Command::new("ssh-keyscan")
        .args(["-p", &port.to_string(), "127.0.0.1"])
        .output()
        .await
        .unwrap();
    let scanned: Vec<String> = String::from_utf8_lossy(&scan.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' ').map(|(_, k)| k.to_string()))
        .collect();
    assert_eq!(scanned.len(), 1, "{scanned:?}");
    let seen = russh::keys::PublicKey::from_openssh(&scanned[0])
        .unwrap()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    assert_eq!(seen, host_fp);
    assert!(ssh_password(port, "root", password, "true").await.is_err());
    assert!(ssh_password(port, "alice", "wrong-password", "true")
        .await
        .is_err());
    let (_, out) = lxc(&[
        "exec",
        &name,
        "--",
        "stat",
        "-c",
        "%a %U",
        "/home/alice/.ssh/authorized_keys",
    ])
    .await;
    assert_eq!(out.trim(), "600 alice");

    // Usernames the core refuses stop the entrypoint before anything is made.
    for bad in ["root", "Alice", "a;b", "-o", "x$(id)", ""] {
        let dir = tempfile::tempdir().unwrap();
        put(
            dir.path(),
            &[("username", bad.into()), ("password", "pw-123456".into())],
        );
        for f in ["username", "password"] {
            let (good, out) = lxc(&[
                "file",
                "push",
                "--create-dirs",
                "--mode",
                "0400",
                dir.path().join(f).to_str().unwrap(),
                &format!("{name}/etc/paygress/bad/{f}"),
            ])
            .await;
            assert!(good, "{out}");
        }
        let (good, out) = lxc(&[
            "exec",
            &name,
            "--env",
            "LOGIN_DIR=/etc/paygress/bad",
            "--",
            "/usr/local/sbin/paygress-entrypoint",
            "-p",
            "2223",
        ])
        .await;
        assert!(!good, "{bad:?} was accepted: {out}");
        assert!(out.contains("paygress-entrypoint:"), "{out}");
    }
    let _ = entrypoint.kill().await;
}

/// The real `paygress-mcp-server` binary with `backend.kind = "kubernetes"` in its config file
/// connects to the API server named in its kubeconfig, and the official MCP Inspector CLI's
/// `get_offers` says `kubernetes` (isolation `container`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_get_offers_for_the_kubernetes_backend() {
    let inspector = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools/e2e/node_modules/.bin/mcp-inspector");
    assert!(
        inspector.exists(),
        "the MCP Inspector is not installed: run tools/test.sh"
    );
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = KubeSim::start(&[NS], None).await;
    let mut cfg = common::config(&dir.path().join("provider"), &[&mint.url], RATE, (1, 1));
    cfg.backend.kind = BackendChoice::Kubernetes;
    cfg.backend.kubernetes = k8s_config(&sim, ADMIN_TOKEN);
    let file = dir.path().join("paygress.toml");
    std::fs::write(&file, toml::to_string(&cfg).expect("config as TOML")).unwrap();
    let out = tokio::process::Command::new(&inspector)
        .arg("--cli")
        .arg(env!("CARGO_BIN_EXE_paygress-mcp-server"))
        .arg("-e")
        .arg(format!("PAYGRESS_CONFIG={}", file.display()))
        .args(["--method", "tools/call", "--tool-name", "get_offers"])
        .env("MCP_CATALOG_PATH", dir.path().join("catalog.json"))
        .env("HOME", dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "inspector: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let offers = &v["structuredContent"];
    assert_eq!(offers["backend"], "kubernetes", "{v}");
    assert_eq!(offers["isolation"], "container", "{v}");
    // It really asked the API server (the start-up check lists pods in the namespace).
    assert!(sim
        .requests()
        .iter()
        .any(|r| r.starts_with(&format!("GET /api/v1/namespaces/{NS}/pods?"))));
}

/// 404 and 409 from the API server, through the trait: stop/resume of a missing workload is
/// `NotFound`; a create whose pod name is held (an old pod still there) says so and leaves
/// none of its own objects behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_a_held_name_are_clear_errors() {
    let e = env_with(|_, _| {}).await;
    let b = &e.backend;
    assert!(matches!(
        b.stop("pg-missing").await,
        Err(paygress::backend::BackendError::NotFound(_))
    ));
    assert!(matches!(
        b.resume("pg-missing").await,
        Err(paygress::backend::BackendError::NotFound(_))
    ));
    b.destroy("pg-missing")
        .await
        .expect("destroying what is gone is fine");
    assert!(b.inspect("pg-missing").await.unwrap().is_none());
    // A pod of that name already exists.
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&e.sim.ca_pem).unwrap()])
        .build()
        .unwrap();
    let r = http
        .post(format!("{}/api/v1/namespaces/{NS}/pods", e.sim.url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "pg-held0001"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let spec = paygress::backend::WorkloadSpec {
        name: "pg-held0001".into(),
        provider_id: e.provider.provider_id().into(),
        tier: e.cfg.tiers[0].clone(),
        image: "paygress-debian-12".into(),
        ssh_username: "bob".into(),
        ssh_password: Secret::new("held-pass-123"),
        ssh_public_key: None,
        host_port: None,
        expires_at: paygress::provider::now_secs() + 600,
    };
    let err = b.create(&spec).await.unwrap_err().to_string();
    assert!(
        err.contains("pods \"pg-held0001\" already exists") && err.contains("still terminating"),
        "{err}"
    );
    assert!(!err.contains("held-pass-123"));
    assert!(e.sim.object("services", NS, "pg-held0001").is_none());
    assert!(e.sim.object("secrets", NS, "pg-held0001-login").is_none());
}

/// In a pod there is no kubeconfig: the binary, with no `backend.kubernetes.kubeconfig` and no
/// kubeconfig in its HOME, uses the service account the way a pod gets it
/// (`KUBERNETES_SERVICE_HOST`/`_PORT`, token and CA under
/// /var/run/secrets/kubernetes.io/serviceaccount). The test gives it those files in a private
/// mount namespace (a tmpfs on /run, so the host's /run is untouched), with a token the
/// simulator knows only as the manifests' service account, and asks get_offers through the
/// official MCP Inspector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_pod_the_service_account_is_used() {
    let inspector = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools/e2e/node_modules/.bin/mcp-inspector");
    assert!(
        inspector.exists(),
        "the MCP Inspector is not installed: run tools/test.sh"
    );
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = KubeSim::start(&[NS], None).await;
    sim.add_token(
        "in-cluster-token",
        "system:serviceaccount:paygress:paygress",
        vec![Rule::new(
            &[
                "get", "list", "watch", "create", "update", "delete", "patch",
            ],
            &["*"],
            &[NS],
        )],
    );
    // What the kubelet projects into a pod.
    let sa = dir.path().join("sa");
    std::fs::create_dir(&sa).unwrap();
    std::fs::write(sa.join("token"), "in-cluster-token").unwrap();
    std::fs::write(sa.join("ca.crt"), &sim.ca_pem).unwrap();
    std::fs::write(sa.join("namespace"), "paygress").unwrap();
    let mut cfg = common::config(&dir.path().join("provider"), &[&mint.url], RATE, (1, 1));
    cfg.backend.kind = BackendChoice::Kubernetes;
    cfg.backend.kubernetes = KubernetesConfig {
        namespace: Some(NS.into()),
        node_address: Some("127.0.0.1".into()),
        ..Default::default()
    };
    let file = dir.path().join("paygress.toml");
    std::fs::write(&file, toml::to_string(&cfg).unwrap()).unwrap();
    // The launcher: only paths this test made go into the script, as positional arguments.
    let script = "mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io && \
                  cp -r \"$1\" /run/secrets/kubernetes.io/serviceaccount && shift && exec \"$@\"";
    let out = tokio::process::Command::new(&inspector)
        .arg("--cli")
        .arg("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "launcher",
        ])
        .arg(&sa)
        .arg(env!("CARGO_BIN_EXE_paygress-mcp-server"))
        .arg("-e")
        .arg(format!("PAYGRESS_CONFIG={}", file.display()))
        .arg("-e")
        .arg("KUBERNETES_SERVICE_HOST=127.0.0.1")
        .arg("-e")
        .arg(format!("KUBERNETES_SERVICE_PORT={}", sim.port))
        .arg("-e")
        .arg(format!("HOME={}", dir.path().display()))
        .args(["--method", "tools/call", "--tool-name", "get_offers"])
        .env("MCP_CATALOG_PATH", dir.path().join("catalog.json"))
        .env("HOME", dir.path())
        .env_remove("KUBECONFIG")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "inspector: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["structuredContent"]["backend"], "kubernetes", "{v}");
    // The start-up check reached the simulator with the service account's token (the only
    // credential it had: a failed check stops the start, and get_offers would not answer).
    assert!(sim
        .requests()
        .iter()
        .any(|r| r.starts_with(&format!("GET /api/v1/namespaces/{NS}/pods?"))));
}
