//! No secret reaches the logs: a full flow (spawn with a password, top-up, a failed spawn with a
//! refund, status, a restart) runs under a TRACE-level subscriber for every crate, and the
//! captured output is searched for every token, password, refund token and private key involved.

mod common;

use std::str::FromStr;
use std::sync::Arc;

use common::backend::{FakeBackend, Step};
use common::mint::TestMint;
use common::Capture;
use paygress::api::{SpawnRequest, StatusRequest, TopUpRequest};
use paygress::secret::Secret;
use paygress::{Caller, Provider};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_full_flow_at_trace_level_logs_no_secret() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), &[&mint.url], 100, common::free_port_block(5));
    let backend = Arc::new(FakeBackend::new());
    let provider = Provider::open(cfg.clone(), backend.clone()).await.unwrap();

    let mut secrets: Vec<String> = Vec::new();
    let t1 = mint.token(100).await;
    let password = "pass-Wr0ng-Horse-77";
    let r = provider
        .spawn(
            SpawnRequest {
                cashu_token: Secret::new(&t1),
                ssh_username: "alice".into(),
                ssh_password: Some(Secret::new(password)),
                ..Default::default()
            },
            Caller::Local,
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let t2 = mint.token(50).await;
    provider
        .top_up(TopUpRequest {
            pod_npub: r.pod_npub.clone(),
            cashu_token: Secret::new(&t2),
            request_id: None,
        })
        .await
        .unwrap();
    provider
        .status(
            StatusRequest {
                pod_npub: r.pod_npub.clone(),
            },
            &Caller::Local,
        )
        .await
        .unwrap();

    backend.fail(Step::Create);
    let t3 = mint.token(70).await;
    let err = provider
        .spawn(
            SpawnRequest {
                cashu_token: Secret::new(&t3),
                ssh_username: "bob".into(),
                ..Default::default()
            },
            Caller::Local,
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
    let refund = err.refund_token.clone().unwrap();
    // A generated password for a third, successful spawn.
    backend.heal(Step::Create);
    let t4 = mint.token(100).await;
    let r4 = provider
        .spawn(
            SpawnRequest {
                cashu_token: Secret::new(&t4),
                ssh_username: "carol".into(),
                ..Default::default()
            },
            Caller::Local,
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let _ = Provider::open(cfg, backend.clone()).await.unwrap();

    secrets.extend([
        t1.clone(),
        t2.clone(),
        t3.clone(),
        t4.clone(),
        refund.expose().to_string(),
    ]);
    secrets.push(password.to_string());
    secrets.push(r4.ssh_password.expose().to_string());
    // The proofs inside each token are as good as the token.
    for t in [&t1, &t2, &t3, &t4, &refund.expose().to_string()] {
        let token = cdk::nuts::Token::from_str(t).unwrap();
        secrets.extend(token.token_secrets().iter().map(|s| s.to_string()));
    }
    // The provider's Nostr key and wallet seed.
    let nsec = std::fs::read_to_string(dir.path().join("nostr.key")).unwrap();
    secrets.push(nsec.trim().to_string());
    secrets.push(provider.keys().secret_key().to_secret_hex());
    let seed = std::fs::read_to_string(dir.path().join("wallet.seed")).unwrap();
    secrets.push(seed.trim().to_string());

    let logs = capture.text();
    assert!(
        logs.lines().count() > 20,
        "the flow did log: {} lines",
        logs.lines().count()
    );
    assert!(
        logs.contains("workload running"),
        "our own events are captured"
    );
    for s in &secrets {
        assert!(!s.is_empty());
        assert!(
            !logs.contains(s.as_str()),
            "a secret reached the logs: {}…",
            &s[..8.min(s.len())]
        );
    }
}
