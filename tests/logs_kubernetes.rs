//! No secret reaches the logs on the Kubernetes backend: a paid spawn with a password and a
//! public key, a top-up, an expiry and a resume against the simulated API server
//! (tests/common/kubesim) run under a TRACE-level subscriber for every crate (kube, hyper,
//! rustls included), and the captured output is searched for the tokens and the password. The
//! password travels to the API server only inside the Secret's body.

mod common;

use std::sync::Arc;

use common::kubesim::{KubeSim, ADMIN_TOKEN};
use common::mint::TestMint;
use common::sandbox::Cleanup;
use common::Capture;
use paygress::api::{SpawnRequest, TopUpRequest};
use paygress::backend::kubernetes::KubernetesConfig;
use paygress::backend::sandbox::{SandboxBackend, SandboxConfig};
use paygress::config::BackendChoice;
use paygress::secret::Secret;
use paygress::{Caller, Provider};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_flow_at_trace_level_logs_no_secret() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = Arc::new(
        SandboxBackend::open(SandboxConfig::default(), &dir.path().join("node"))
            .await
            .unwrap(),
    );
    let _guard = Cleanup {
        backend: Some(node.clone()),
    };
    let sim = KubeSim::start(&["user-workloads"], Some(node)).await;
    let mut cfg = common::config(&dir.path().join("provider"), &[&mint.url], 100, (1, 1));
    cfg.backend.kind = BackendChoice::Kubernetes;
    cfg.backend.kubernetes = KubernetesConfig {
        kubeconfig: Some(sim.kubeconfig(ADMIN_TOKEN, "user-workloads")),
        node_address: Some("127.0.0.1".into()),
        ready_timeout_seconds: Some(60),
        ..Default::default()
    };
    let backend = paygress::backend::from_config(&cfg).await.unwrap();
    let provider = Provider::open(cfg.clone(), backend.clone()).await.unwrap();

    let keys = tempfile::tempdir().unwrap();
    let (_, public) = common::ssh::keygen(keys.path());
    let password = "k8s-Tr4ce-Horse-91";
    let t1 = mint.token(100).await;
    let r = provider
        .spawn(
            SpawnRequest {
                cashu_token: Secret::new(&t1),
                ssh_username: "alice".into(),
                ssh_password: Some(Secret::new(password)),
                ssh_public_key: Some(public),
                ..Default::default()
            },
            Caller::Local,
            None,
            CancellationToken::new(),
        )
        .await
        .expect("spawn");
    let w = provider.store().workload(&r.pod_npub).unwrap().unwrap();
    let t2 = mint.token(10).await;
    provider
        .top_up(TopUpRequest {
            pod_npub: r.pod_npub.clone(),
            cashu_token: Secret::new(&t2),
            request_id: None,
        })
        .await
        .unwrap();
    provider.reap_at(w.expires_at + 100).await;
    let t3 = mint.token(10).await;
    provider
        .top_up(TopUpRequest {
            pod_npub: r.pod_npub.clone(),
            cashu_token: Secret::new(&t3),
            request_id: None,
        })
        .await
        .expect("resume");
    let secret = sim
        .object("secrets", "user-workloads", &format!("{}-login", w.name))
        .expect("the login secret");
    backend.destroy(&w.name).await.unwrap();

    let text = capture.text();
    assert!(
        text.contains("kubernetes pod ready for SSH"),
        "the flow was logged"
    );
    assert!(text.len() > 10_000, "TRACE output from the HTTP stack too");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(password);
    // The pod's private host key: its body lines.
    let host_key = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["ssh_host_ed25519_key"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    for line in host_key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "the pod's host key is in the logs");
    }
    for (what, secret) in [
        ("password", password),
        ("password (base64)", b64.as_str()),
        ("spawn token", t1.as_str()),
        ("top-up token", t2.as_str()),
        ("resume token", t3.as_str()),
        ("API token", ADMIN_TOKEN),
    ] {
        assert!(!text.contains(secret), "the {what} is in the logs");
    }
}
