//! The Kubernetes backend through the provider core, against the simulated API server
//! (tests/common/kubesim) whose kubelet runs each pod on the sandbox backend: real payments at
//! the in-process test mint, real `ssh` into the "pod" on node_address:nodePort, the tier's
//! limits enforced by the pod's cgroup, top-up, expiry, a late top-up that resumes, deletion
//! after the grace period; refunds when the API server refuses after payment (quota, 403,
//! 422) with nothing left behind; re-adoption and orphan removal after a restart; the
//! optional hard cap (`activeDeadlineSeconds`).
//!
//! The deployment side (the SSH image, the manifests, the binary) is in
//! tests/kubernetes_deploy.rs.
//!
//! Needs root (the kubelet's sandbox makes namespaces and cgroups).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::kube::{k8s_config, nothing_left, row, NS};
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

/// Every object of the workload in the simulator: (pod, service, secret).
fn objects(sim: &KubeSim, name: &str) -> (Option<Value>, Option<Value>, Option<Value>) {
    (
        sim.object("pods", NS, name),
        sim.object("services", NS, name),
        sim.object("secrets", NS, &format!("{name}-login")),
    )
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
