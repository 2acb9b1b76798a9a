//! The provider core against a real cdk mint (fake Lightning) on 127.0.0.1 and a backend double.
//! Every money test checks both sides: what the provider holds and what the buyer can still spend.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::backend::{FakeBackend, Step};
use common::mint::TestMint;
use paygress::api::{SpawnRequest, StatusRequest, TopUpRequest};
use paygress::backend::{WorkloadSpec, WorkloadState};
use paygress::config::Config;
use paygress::provider::now_secs;
use paygress::secret::Secret;
use paygress::store::{PaymentKind, PaymentRow, PaymentState};
use paygress::{Caller, ErrorType, Provider};
use tokio_util::sync::CancellationToken;

struct Env {
    mint: TestMint,
    backend: Arc<FakeBackend>,
    provider: Arc<Provider>,
    dir: tempfile::TempDir,
    cfg: Config,
}

async fn env_with(rate: u64, ports: u16) -> Env {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(
        dir.path(),
        &[&mint.url],
        rate,
        common::free_port_block(ports),
    );
    let backend = Arc::new(FakeBackend::new());
    let provider = Provider::open(cfg.clone(), backend.clone()).await.unwrap();
    Env {
        mint,
        backend,
        provider,
        dir,
        cfg,
    }
}

async fn env() -> Env {
    env_with(100, 20).await
}

impl Env {
    async fn reopen(&self) -> Arc<Provider> {
        Provider::open(self.cfg.clone(), self.backend.clone())
            .await
            .unwrap()
    }

    async fn earnings(&self, p: &Provider) -> u64 {
        p.payments()
            .balances()
            .await
            .unwrap()
            .iter()
            .map(|(_, b)| b)
            .sum()
    }
}

fn req(token: &str) -> SpawnRequest {
    SpawnRequest {
        cashu_token: Secret::new(token),
        ssh_username: "alice".into(),
        ..Default::default()
    }
}

async fn spawn(
    p: &Arc<Provider>,
    r: SpawnRequest,
) -> Result<paygress::api::SpawnResult, paygress::ProviderError> {
    p.spawn(r, Caller::Local, None, CancellationToken::new())
        .await
}

#[tokio::test]
async fn a_valid_token_buys_floor_msats_over_rate_seconds() {
    let e = env_with(7, 10).await;
    let token = e.mint.token(1000).await;
    let before = now_secs();
    let r = spawn(&e.provider, req(&token)).await.unwrap();
    assert_eq!(r.paid_msats, 1_000_000);
    assert_eq!(r.duration_seconds, 1_000_000 / 7);
    assert_eq!(r.ssh_username, "alice");
    assert!(
        r.ssh_password.expose().len() >= 16,
        "a password is generated"
    );
    assert!(r
        .instructions
        .iter()
        .any(|i| i.contains(&format!("ssh -p {} alice@127.0.0.1", r.node_port))));
    // Provider side: the money is in the earnings wallet, the workload on the backend.
    assert_eq!(e.earnings(&e.provider).await, 1000);
    assert_eq!(e.backend.count(), 1);
    let held = e
        .backend
        .workloads
        .lock()
        .unwrap()
        .values()
        .next()
        .cloned()
        .unwrap();
    assert_eq!(held.spec.host_port, Some(r.node_port));
    assert!(held.expires_at >= before + 142_857 && held.expires_at <= now_secs() + 142_857);
    // Buyer side: the token is spent.
    let again = e.mint.receive_fresh(&token).await;
    assert!(
        matches!(again, Err(cdk::Error::TokenAlreadySpent)),
        "{again:?}"
    );
}

#[tokio::test]
async fn the_price_comes_from_what_was_received_after_mint_fees() {
    let mint = TestMint::start_with_fee(1000).await; // 1 sat per input proof
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), &[&mint.url], 10, common::free_port_block(5));
    let backend = Arc::new(FakeBackend::new());
    let p = Provider::open(cfg, backend.clone()).await.unwrap();
    let token = mint.token(1000).await;
    let r = spawn(&p, req(&token)).await.unwrap();
    assert!(
        r.paid_msats < 1_000_000,
        "fees were taken: {}",
        r.paid_msats
    );
    assert_eq!(r.duration_seconds, r.paid_msats / 10);
}

#[tokio::test]
async fn a_second_use_of_the_same_token_is_token_already_spent_and_provisions_nothing() {
    let e = env().await;
    let token = e.mint.token(100).await;
    let first = spawn(&e.provider, req(&token)).await.unwrap();
    let mut other = req(&token);
    other.ssh_username = "bob".into();
    let err = spawn(&e.provider, other).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::TokenAlreadySpent);
    assert!(err.refund_token.is_none());
    assert_eq!(e.backend.count(), 1);
    assert_eq!(e.earnings(&e.provider).await, 100);
    // Using it for a top-up is a second use too.
    let err = e
        .provider
        .top_up(TopUpRequest {
            pod_npub: first.pod_npub.clone(),
            cashu_token: Secret::new(&token),
            request_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.error_type, ErrorType::TokenAlreadySpent);
    assert_eq!(e.earnings(&e.provider).await, 100);
}

#[tokio::test]
async fn a_token_spent_elsewhere_is_rejected_by_the_mint_and_nothing_is_provisioned() {
    let e = env().await;
    let token = e.mint.token(100).await;
    assert_eq!(e.mint.receive_fresh(&token).await.unwrap(), 100);
    let err = spawn(&e.provider, req(&token)).await.unwrap_err();
    assert_eq!(
        err.error_type,
        ErrorType::TokenAlreadySpent,
        "{}",
        err.message
    );
    assert_eq!(e.backend.count(), 0);
    assert_eq!(*e.backend.creates.lock().unwrap(), 0);
    assert_eq!(e.earnings(&e.provider).await, 0);
    assert_eq!(
        e.provider.offers().capacity.live_workloads,
        0,
        "the reserved port is released"
    );
}

#[tokio::test]
async fn an_exact_replay_returns_the_first_result() {
    let e = env().await;
    let token = e.mint.token(100).await;
    let mut r = req(&token);
    r.ssh_password = Some(Secret::new("correct horse battery"));
    let a = spawn(&e.provider, r.clone()).await.unwrap();
    let b = spawn(&e.provider, r).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(e.backend.count(), 1);
    assert_eq!(e.earnings(&e.provider).await, 100);
}

#[tokio::test]
async fn a_request_id_replay_returns_the_first_result_and_cannot_be_reused_with_another_token() {
    let e = env().await;
    let token = e.mint.token(100).await;
    let mut r = req(&token);
    r.request_id = Some("req-1".into());
    let a = spawn(&e.provider, r.clone()).await.unwrap();
    assert_eq!(spawn(&e.provider, r).await.unwrap(), a);
    let token2 = e.mint.token(100).await;
    let mut r2 = req(&token2);
    r2.request_id = Some("req-1".into());
    let err = spawn(&e.provider, r2).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::InvalidRequest);
    assert_eq!(
        e.mint.receive_fresh(&token2).await.unwrap(),
        100,
        "second token untouched"
    );
}

#[tokio::test]
async fn a_token_from_a_mint_not_whitelisted_is_refused_untouched() {
    let e = env().await;
    let foreign = TestMint::start().await;
    let token = foreign.token(500).await;
    let err = spawn(&e.provider, req(&token)).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::MintNotAllowed);
    assert!(err.details.unwrap().to_string().contains(&e.mint.url));
    assert_eq!(e.backend.count(), 0);
    assert_eq!(e.earnings(&e.provider).await, 0);
    // Still spendable: another wallet receives all of it.
    assert_eq!(foreign.receive_fresh(&token).await.unwrap(), 500);
}

#[tokio::test]
async fn too_little_value_is_refused_untouched() {
    let e = env().await; // 100 msat/s, 60 s minimum: 6 sat needed
    let token = e.mint.token(5).await;
    let err = spawn(&e.provider, req(&token)).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::InsufficientPayment);
    let d = err.details.unwrap();
    assert_eq!(d["required_msats"], 6000);
    assert_eq!(d["offered_msats"], 5000);
    assert_eq!(e.earnings(&e.provider).await, 0);
    assert_eq!(e.mint.receive_fresh(&token).await.unwrap(), 5);
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_swap() {
    let e = env().await;
    let token = e.mint.token(100).await;
    let cases: Vec<(SpawnRequest, ErrorType)> = vec![
        (
            SpawnRequest {
                pod_spec_id: Some("huge".into()),
                ..req(&token)
            },
            ErrorType::InvalidSpec,
        ),
        (
            SpawnRequest {
                pod_image: Some("windows-xp".into()),
                ..req(&token)
            },
            ErrorType::InvalidSpec,
        ),
        (
            SpawnRequest {
                ssh_username: "root".into(),
                ..req(&token)
            },
            ErrorType::InvalidRequest,
        ),
        (
            SpawnRequest {
                ssh_username: "a;reboot".into(),
                ..req(&token)
            },
            ErrorType::InvalidRequest,
        ),
        (
            SpawnRequest {
                ssh_password: Some(Secret::new("short")),
                ..req(&token)
            },
            ErrorType::InvalidRequest,
        ),
        (
            SpawnRequest {
                ssh_public_key: Some("not a key".into()),
                ..req(&token)
            },
            ErrorType::InvalidRequest,
        ),
        (
            SpawnRequest {
                request_id: Some(String::new()),
                ..req(&token)
            },
            ErrorType::InvalidRequest,
        ),
        (req("cashuBnotatoken"), ErrorType::InvalidToken),
        (req(""), ErrorType::InvalidToken),
        (req(&"cashuA".repeat(20_000)), ErrorType::InvalidToken),
    ];
    for (r, want) in cases {
        let err = spawn(&e.provider, r).await.unwrap_err();
        assert_eq!(err.error_type, want, "{}", err.message);
        assert!(err.refund_token.is_none());
        assert!(!err.message.contains(&token));
    }
    assert_eq!(e.backend.count(), 0);
    assert_eq!(*e.backend.creates.lock().unwrap(), 0);
    assert_eq!(e.earnings(&e.provider).await, 0);
    assert_eq!(e.provider.offers().capacity.live_workloads, 0);
    assert_eq!(
        e.mint.receive_fresh(&token).await.unwrap(),
        100,
        "the token was never touched"
    );
}

#[tokio::test]
async fn a_backend_failure_after_the_swap_returns_a_refund_for_the_full_amount() {
    let e = env().await;
    e.backend.fail(Step::Create);
    let token = e.mint.token(250).await;
    let err = spawn(&e.provider, req(&token)).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::PodCreationFailed);
    assert!(
        !format!("{err:?} {err}").contains("cashu"),
        "refund token kept out of Debug/Display"
    );
    let refund = err.refund_token.clone().expect("refund token");
    assert_eq!(e.backend.count(), 0);
    assert_eq!(e.provider.offers().capacity.live_workloads, 0);
    // The replay answers the same refund, without minting another.
    let again = spawn(&e.provider, req(&token)).await.unwrap_err();
    assert_eq!(again.refund_token, Some(refund.clone()));
    assert_eq!(e.earnings(&e.provider).await, 0, "provider keeps nothing");
    assert_eq!(e.mint.receive_fresh(refund.expose()).await.unwrap(), 250);
}

#[tokio::test]
async fn no_capacity_is_refused_before_any_swap() {
    let e = env_with(100, 1).await;
    let t1 = e.mint.token(100).await;
    spawn(&e.provider, req(&t1)).await.unwrap();
    let t2 = e.mint.token(100).await;
    let err = spawn(&e.provider, req(&t2)).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::ResourceUnavailable);
    assert_eq!(e.provider.offers().capacity.available_slots, 0);
    assert_eq!(e.mint.receive_fresh(&t2).await.unwrap(), 100);
}

#[tokio::test]
async fn top_up_extends_the_deadline_by_the_paid_time() {
    let e = env().await;
    let r = spawn(&e.provider, req(&e.mint.token(100).await))
        .await
        .unwrap();
    let name = e
        .backend
        .workloads
        .lock()
        .unwrap()
        .keys()
        .next()
        .cloned()
        .unwrap();
    let before = e.backend.get(&name).unwrap().expires_at;
    let t = e.mint.token(30).await;
    let up = e
        .provider
        .top_up(TopUpRequest {
            pod_npub: r.pod_npub.clone(),
            cashu_token: Secret::new(&t),
            request_id: None,
        })
        .await
        .unwrap();
    assert!(up.success);
    assert_eq!(up.extended_duration_seconds, 300);
    assert_eq!(e.backend.get(&name).unwrap().expires_at, before + 300);
    assert_eq!(up.new_expires_at, paygress::provider::rfc3339(before + 300));
    assert_eq!(e.earnings(&e.provider).await, 130);
    // Replay: same answer, no second extension.
    let again = e
        .provider
        .top_up(TopUpRequest {
            pod_npub: r.pod_npub.clone(),
            cashu_token: Secret::new(&t),
            request_id: None,
        })
        .await
        .unwrap();
    assert_eq!(again, up);
    assert_eq!(e.backend.get(&name).unwrap().expires_at, before + 300);
    // Unknown pod: refused before the swap.
    let t2 = e.mint.token(30).await;
    let err = e
        .provider
        .top_up(TopUpRequest {
            pod_npub: "npub1nothere".into(),
            cashu_token: Secret::new(&t2),
            request_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.error_type, ErrorType::PodNotFound);
    assert_eq!(e.mint.receive_fresh(&t2).await.unwrap(), 30);
}

#[tokio::test]
async fn a_top_up_the_backend_cannot_apply_is_refunded() {
    let e = env().await;
    let r = spawn(&e.provider, req(&e.mint.token(100).await))
        .await
        .unwrap();
    e.backend.fail(Step::Extend);
    let err = e
        .provider
        .top_up(TopUpRequest {
            pod_npub: r.pod_npub,
            cashu_token: Secret::new(e.mint.token(40).await),
            request_id: None,
        })
        .await
        .unwrap_err();
    let refund = err.refund_token.expect("refund");
    assert_eq!(e.mint.receive_fresh(refund.expose()).await.unwrap(), 40);
    assert_eq!(e.earnings(&e.provider).await, 100);
}

#[tokio::test]
async fn the_reaper_stops_expired_workloads_and_deletes_them_after_the_grace_period() {
    let e = env().await;
    let r = spawn(&e.provider, req(&e.mint.token(100).await))
        .await
        .unwrap();
    let name = e
        .backend
        .workloads
        .lock()
        .unwrap()
        .keys()
        .next()
        .cloned()
        .unwrap();
    let expires = e.backend.get(&name).unwrap().expires_at;
    assert!(e.provider.reap_at(expires - 1).await.stopped.is_empty());
    let rep = e.provider.reap_at(expires).await;
    assert_eq!(rep.stopped, vec![r.pod_npub.clone()]);
    assert_eq!(e.backend.get(&name).unwrap().state, WorkloadState::Stopped);
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
    assert_eq!(st.state, "expired");
    assert_eq!(st.seconds_remaining, 0);
    let rep = e.provider.reap_at(expires + 599).await;
    assert!(rep.deleted.is_empty());
    let rep = e.provider.reap_at(expires + 600).await;
    assert_eq!(rep.deleted, vec![r.pod_npub.clone()]);
    assert_eq!(e.backend.count(), 0);
    assert_eq!(e.provider.offers().capacity.live_workloads, 0);
}

#[tokio::test]
async fn a_late_top_up_within_the_grace_period_resumes_the_workload() {
    let e = env().await;
    let r = spawn(&e.provider, req(&e.mint.token(100).await))
        .await
        .unwrap();
    let name = e
        .backend
        .workloads
        .lock()
        .unwrap()
        .keys()
        .next()
        .cloned()
        .unwrap();
    let expires = e.backend.get(&name).unwrap().expires_at;
    e.provider.reap_at(expires).await;
    let up = e
        .provider
        .top_up(TopUpRequest {
            pod_npub: r.pod_npub.clone(),
            cashu_token: Secret::new(e.mint.token(20).await),
            request_id: None,
        })
        .await
        .unwrap();
    assert!(up.message.contains("resumed"));
    assert_eq!(e.backend.get(&name).unwrap().state, WorkloadState::Running);
    let st = e
        .provider
        .status(
            StatusRequest {
                pod_npub: r.pod_npub,
            },
            &Caller::Local,
        )
        .await
        .unwrap();
    assert_eq!(st.state, "running");
}

#[tokio::test]
async fn status_shows_access_only_to_the_owner() {
    let e = env().await;
    let alice = Caller::Nostr("a".repeat(64));
    let r = e
        .provider
        .spawn(
            req(&e.mint.token(100).await),
            alice.clone(),
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let mine = e
        .provider
        .status(
            StatusRequest {
                pod_npub: r.pod_npub.clone(),
            },
            &alice,
        )
        .await
        .unwrap();
    assert_eq!(mine.access.unwrap().ssh_password, r.ssh_password);
    let theirs = e
        .provider
        .status(
            StatusRequest {
                pod_npub: r.pod_npub.clone(),
            },
            &Caller::Nostr("b".repeat(64)),
        )
        .await
        .unwrap();
    assert!(theirs.access.is_none());
    assert_eq!(theirs.state, "running");
    let missing = e
        .provider
        .status(
            StatusRequest {
                pod_npub: "npub1zzz".into(),
            },
            &alice,
        )
        .await
        .unwrap_err();
    assert_eq!(missing.error_type, ErrorType::PodNotFound);
}

#[tokio::test]
async fn cancelling_a_spawn_rolls_it_back_and_refunds() {
    let e = env().await;
    e.backend.set_create_delay(Duration::from_millis(500));
    let token = e.mint.token(100).await;
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        c2.cancel();
    });
    let err = e
        .provider
        .spawn(req(&token), Caller::Local, None, cancel)
        .await
        .unwrap_err();
    assert_eq!(err.error_type, ErrorType::PodCreationFailed);
    assert!(err.message.contains("cancelled"));
    assert_eq!(e.backend.count(), 0, "the half-made workload was removed");
    let refund = err.refund_token.unwrap();
    assert_eq!(e.mint.receive_fresh(refund.expose()).await.unwrap(), 100);
}

#[tokio::test]
async fn fifty_concurrent_spawns_with_distinct_tokens_get_distinct_ports() {
    let e = env_with(100, 60).await;
    let mut tokens = Vec::new();
    for _ in 0..50 {
        tokens.push(e.mint.token(10).await);
    }
    let mut tasks = Vec::new();
    for t in tokens {
        let p = e.provider.clone();
        tasks.push(tokio::spawn(async move { spawn(&p, req(&t)).await }));
    }
    let mut ports = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap().expect("every spawn succeeds");
        assert!(
            ports.insert(r.node_port),
            "port {} handed out twice",
            r.node_port
        );
    }
    assert_eq!(ports.len(), 50);
    assert_eq!(e.backend.count(), 50);
    assert_eq!(e.earnings(&e.provider).await, 500);
}

#[tokio::test]
async fn twenty_concurrent_spawns_with_the_same_token_make_one_workload() {
    let e = env().await;
    let token = e.mint.token(100).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let p = e.provider.clone();
        let t = token.clone();
        tasks.push(tokio::spawn(async move { spawn(&p, req(&t)).await }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(
            t.await
                .unwrap()
                .expect("replays answer the first result")
                .pod_npub,
        );
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(e.backend.count(), 1);
    assert_eq!(*e.backend.creates.lock().unwrap(), 1);
    assert_eq!(e.earnings(&e.provider).await, 100);
}

#[tokio::test]
async fn a_restart_readopts_live_workloads_removes_orphans_and_keeps_the_earnings() {
    let e = env().await;
    let r = spawn(&e.provider, req(&e.mint.token(100).await))
        .await
        .unwrap();
    let orphan_of = e.provider.provider_id().to_string();
    drop(e.provider.clone());
    // A workload this provider made but never recorded (e.g. created just before a crash).
    e.backend.plant(WorkloadSpec {
        name: "pg-orphan".into(),
        provider_id: orphan_of,
        tier: e.cfg.tiers[0].clone(),
        image: "alpine".into(),
        ssh_username: "x".into(),
        ssh_password: Secret::new("x"),
        ssh_public_key: None,
        host_port: Some(1),
        expires_at: 0,
    });
    // Another provider's workload on the same host is left alone.
    e.backend.plant(WorkloadSpec {
        name: "someone-else".into(),
        provider_id: "other".into(),
        tier: e.cfg.tiers[0].clone(),
        image: "alpine".into(),
        ssh_username: "x".into(),
        ssh_password: Secret::new("x"),
        ssh_public_key: None,
        host_port: Some(2),
        expires_at: 0,
    });
    let p2 = e.reopen().await;
    let st = p2
        .status(
            StatusRequest {
                pod_npub: r.pod_npub.clone(),
            },
            &Caller::Local,
        )
        .await
        .unwrap();
    assert_eq!(st.state, "running");
    assert!(st.access.is_some());
    assert!(e.backend.get("pg-orphan").is_none(), "orphan removed");
    assert!(
        e.backend.get("someone-else").is_some(),
        "foreign workload untouched"
    );
    assert_eq!(e.backend.count(), 2);
    assert_eq!(e.earnings(&p2).await, 100);
    // The port stays allocated across the restart.
    let r2 = spawn(&p2, req(&e.mint.token(100).await)).await.unwrap();
    assert_ne!(r2.node_port, r.node_port);
}

#[test]
fn a_restart_refunds_a_request_that_was_paid_but_not_provisioned() {
    // Runtime A plays the provider that crashes; the test body runs on runtime B.
    let rt_b = tokio::runtime::Runtime::new().unwrap();
    let e = rt_b.block_on(env());
    let token = rt_b.block_on(e.mint.token(100));
    e.backend.set_create_delay(Duration::from_secs(600));
    let rt_a = tokio::runtime::Runtime::new().unwrap();
    let p_a = rt_b.block_on(e.reopen());
    drop(rt_b.block_on(async { e.provider.clone() }));
    let tok = token.clone();
    let pa = p_a.clone();
    rt_a.spawn(async move {
        let _ = pa
            .spawn(req(&tok), Caller::Local, None, CancellationToken::new())
            .await;
    });
    // Wait until the journal says paid, then "crash" runtime A mid-provisioning.
    let key = p_a.payments().inspect(&token).unwrap().key;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = p_a.store().payment(&key).unwrap();
        if matches!(row, Some(ref r) if r.state == PaymentState::Paid) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never reached paid");
        std::thread::sleep(Duration::from_millis(20));
    }
    rt_a.shutdown_background();
    e.backend.set_create_delay(Duration::ZERO);
    rt_b.block_on(async {
        let p2 = e.reopen().await;
        // The buyer repeats the request and collects the refund.
        let err = spawn(&p2, req(&token)).await.unwrap_err();
        assert_eq!(err.error_type, ErrorType::PodCreationFailed);
        let refund = err.refund_token.expect("refund");
        assert_eq!(e.mint.receive_fresh(refund.expose()).await.unwrap(), 100);
        assert_eq!(e.earnings(&p2).await, 0);
        assert_eq!(p2.offers().capacity.live_workloads, 0);
    });
}

/// A crash between writing the journal row and calling the mint: nothing of ours reached the
/// mint. Journal such a row by hand (the crash) for `token`.
fn journal_unsent_swap(p: &Provider, token: &str) -> String {
    let info = p.payments().inspect(token).unwrap();
    let mut row = PaymentRow::before_swap(
        &info,
        PaymentKind::Spawn,
        "x".into(),
        None,
        "npub1none",
        &Secret::new(token),
        now_secs(),
    );
    row.pod_id = None;
    assert!(p.store().insert_payment(&row, now_secs()).unwrap());
    info.key
}

#[tokio::test]
async fn a_restart_settles_a_swap_that_was_journalled_but_never_sent() {
    let e = env().await;
    let token = e.mint.token(100).await;
    let key = journal_unsent_swap(&e.provider, &token);
    let p2 = e.reopen().await;
    assert!(
        p2.store().payment(&key).unwrap().is_none(),
        "the mint never took the token: the journal forgets it"
    );
    assert_eq!(e.earnings(&p2).await, 0);
    // The token is still the buyer's, whole.
    assert_eq!(e.mint.receive_fresh(&token).await.unwrap(), 100);
}

#[tokio::test]
async fn a_journalled_token_spent_elsewhere_meanwhile_is_not_refunded_from_earnings() {
    let e = env().await;
    // The provider holds earnings a wrong refund could come from.
    let paid = e.mint.token(500).await;
    spawn(&e.provider, req(&paid)).await.unwrap();
    assert_eq!(e.earnings(&e.provider).await, 500);
    let token = e.mint.token(100).await;
    let key = journal_unsent_swap(&e.provider, &token);
    // The buyer spends the token somewhere else before the provider restarts.
    assert_eq!(e.mint.receive_fresh(&token).await.unwrap(), 100);
    let p2 = e.reopen().await;
    let row = p2.store().payment(&key).unwrap().unwrap();
    assert_eq!(
        row.state,
        PaymentState::Rejected,
        "settled: nothing received"
    );
    assert!(
        row.refund_token.is_none(),
        "no refund for what was never received"
    );
    assert_eq!(e.earnings(&p2).await, 500, "earnings untouched");
}

#[tokio::test]
async fn offers_describe_tiers_mints_and_capacity() {
    let e = env().await;
    let o = e.provider.offers();
    assert_eq!(o.pod_specs.len(), 2);
    assert_eq!(o.whitelisted_mints, vec![e.mint.url.clone()]);
    assert_eq!(o.minimum_duration_seconds, 60);
    assert_eq!(o.capacity.available_slots, 20);
    assert!(o.provider.npub.starts_with("npub1"));
    let _ = &e.dir;
}

#[tokio::test]
async fn key_and_state_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let e = env().await;
    for f in ["nostr.key", "wallet.seed", "paygress.sqlite3"] {
        let mode = std::fs::metadata(e.dir.path().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f} is {mode:o}");
    }
}

#[tokio::test]
async fn an_unreachable_mint_is_payment_failed_and_the_token_can_be_retried() {
    let e = env().await;
    let token = e.mint.token(100).await;
    e.mint.stop_serving();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = spawn(&e.provider, req(&token)).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::PaymentFailed, "{}", err.message);
    assert!(err.refund_token.is_none(), "nothing was taken");
    assert_eq!(e.backend.count(), 0);
    assert_eq!(e.provider.offers().capacity.live_workloads, 0);
    let key = e.provider.payments().inspect(&token).unwrap().key;
    assert!(
        e.provider.store().payment(&key).unwrap().is_none(),
        "the journal forgets it: a retry is possible"
    );
}

#[tokio::test]
async fn a_key_the_backend_cannot_install_is_refused_before_payment() {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), &[&mint.url], 100, common::free_port_block(4));
    // Like the sandbox: no RSA.
    let backend = Arc::new(FakeBackend::with_key_types(&["ssh-ed25519"]));
    let p = Provider::open(cfg, backend.clone()).await.unwrap();
    assert_eq!(p.offers().ssh_key_types, vec!["ssh-ed25519".to_string()]);
    let token = mint.token(100).await;
    let r = SpawnRequest {
        ssh_public_key: Some("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 alice@laptop".into()),
        ..req(&token)
    };
    let err = spawn(&p, r).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::InvalidRequest, "{}", err.message);
    assert!(err.message.contains("ssh-ed25519"), "{}", err.message);
    assert_eq!(*backend.creates.lock().unwrap(), 0);
    let key = p.payments().inspect(&token).unwrap().key;
    assert!(
        p.store().payment(&key).unwrap().is_none(),
        "nothing journalled"
    );
    assert_eq!(
        mint.receive_fresh(&token).await.unwrap(),
        100,
        "the token is untouched"
    );
}

#[tokio::test]
async fn a_payment_above_what_the_maximum_duration_can_use_is_refused_untouched() {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), &[&mint.url], 100, common::free_port_block(4));
    cfg.provider.maximum_duration_seconds = 600; // 60 sat at 100 msat/s
    let backend = Arc::new(FakeBackend::new());
    let p = Provider::open(cfg, backend.clone()).await.unwrap();
    let big = mint.token(100).await;
    let err = spawn(&p, req(&big)).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::InvalidRequest, "{}", err.message);
    assert_eq!(err.details.unwrap()["maximum_msats"], 60_000);
    assert_eq!(mint.receive_fresh(&big).await.unwrap(), 100, "untouched");
    // A top-up too.
    let ok = mint.token(60).await;
    let pod = spawn(&p, req(&ok)).await.unwrap();
    let big = mint.token(100).await;
    let err = p
        .top_up(TopUpRequest {
            pod_npub: pod.pod_npub,
            cashu_token: Secret::new(&big),
            request_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.error_type, ErrorType::InvalidRequest);
    assert_eq!(mint.receive_fresh(&big).await.unwrap(), 100, "untouched");
}

#[tokio::test]
async fn a_top_up_of_a_pod_deleted_meanwhile_takes_nothing() {
    let e = env().await;
    let t1 = e.mint.token(100).await;
    let pod = spawn(&e.provider, req(&t1)).await.unwrap();
    // The reaper deleted the pod before the top-up arrived.
    let w = e.provider.store().workload(&pod.pod_npub).unwrap().unwrap();
    e.provider
        .store()
        .set_workload_state(&w.id, paygress::store::WorkloadStatus::Deleted, now_secs())
        .unwrap();
    let t2 = e.mint.token(100).await;
    let err = e
        .provider
        .top_up(TopUpRequest {
            pod_npub: pod.pod_npub,
            cashu_token: Secret::new(&t2),
            request_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.error_type, ErrorType::PodNotFound);
    assert_eq!(e.mint.receive_fresh(&t2).await.unwrap(), 100, "untouched");
    assert_eq!(e.earnings(&e.provider).await, 100);
}

#[tokio::test]
async fn paid_time_starts_when_the_workload_is_ready() {
    let e = env().await;
    e.backend.set_create_delay(Duration::from_secs(3));
    let token = e.mint.token(100).await; // 1000 s at 100 msat/s
    let before = now_secs();
    let pod = spawn(&e.provider, req(&token)).await.unwrap();
    let w = e.provider.store().workload(&pod.pod_npub).unwrap().unwrap();
    assert_eq!(pod.duration_seconds, 1000);
    assert!(
        w.expires_at >= before + 3 + 1000,
        "the 3 s of provisioning are not charged: expires {} vs started {before}",
        w.expires_at
    );
    assert_eq!(pod.expires_at, paygress::provider::rfc3339(w.expires_at));
    // The backend's deadline mark follows.
    let held = e.backend.get(&w.name).unwrap();
    assert_eq!(held.expires_at, w.expires_at);
}

#[tokio::test]
async fn a_failed_destroy_is_retried_by_the_reaper_until_the_workload_is_gone() {
    let e = env().await;
    e.backend.set_create_delay(Duration::from_secs(1));
    e.backend.fail(Step::Destroy);
    let token = e.mint.token(100).await;
    // Cancel mid-create: the workload is made, the spawn is rolled back, but the backend
    // cannot remove it.
    let cancel = CancellationToken::new();
    let p = e.provider.clone();
    let c = cancel.clone();
    let call = tokio::spawn(async move { p.spawn(req(&token), Caller::Local, None, c).await });
    while *e.backend.creates.lock().unwrap() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    let err = call.await.unwrap().unwrap_err();
    assert!(err.refund_token.is_some(), "refunded");
    assert_eq!(e.backend.count(), 1, "the backend still holds it");
    assert_eq!(
        e.provider.offers().capacity.live_workloads,
        1,
        "its port stays reserved while it exists"
    );
    // The reaper retries: still failing, then healed.
    e.provider.reap_at(now_secs()).await;
    assert_eq!(e.backend.count(), 1);
    e.backend.heal(Step::Destroy);
    e.provider.reap_at(now_secs()).await;
    assert_eq!(e.backend.count(), 0, "gone");
    assert_eq!(e.provider.offers().capacity.live_workloads, 0);
}

#[tokio::test]
async fn a_pod_in_its_grace_period_gives_its_slot_to_a_paying_buyer() {
    let e = env_with(100, 1).await;
    let t1 = e.mint.token(100).await;
    let a = spawn(&e.provider, req(&t1)).await.unwrap();
    // A's paid time runs out: stopped, in its grace period, holding the only port.
    let report = e.provider.reap_at(now_secs() + 2000).await;
    assert_eq!(report.stopped, vec![a.pod_npub.clone()]);
    let t2 = e.mint.token(100).await;
    let b = spawn(&e.provider, req(&t2)).await.unwrap();
    assert_eq!(b.node_port, a.node_port, "B got A's slot");
    let sa = e
        .provider
        .status(
            StatusRequest {
                pod_npub: a.pod_npub.clone(),
            },
            &Caller::Local,
        )
        .await
        .unwrap();
    assert_eq!(sa.state, "deleted");
    // A running pod is never evicted: a third buyer finds no room.
    let t3 = e.mint.token(100).await;
    let err = spawn(&e.provider, req(&t3)).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::ResourceUnavailable);
    assert_eq!(e.mint.receive_fresh(&t3).await.unwrap(), 100);
}

#[tokio::test]
async fn seen_event_ids_are_pruned_and_the_reaper_scans_only_what_is_due() {
    let e = env().await;
    let s = e.provider.store();
    let now = now_secs();
    assert!(s.see_event("old", now - 100_000).unwrap().is_none());
    assert!(s.see_event("new", now).unwrap().is_none());
    assert_eq!(s.prune_seen_events(now - 3600).unwrap(), 1);
    assert!(s.see_event("old", now).unwrap().is_none(), "forgotten");
    assert!(s.see_event("new", now).unwrap().is_some(), "kept");
    // The due scan: a fresh pod is not due; past its deadline it is; past its grace too.
    let t = e.mint.token(100).await;
    let pod = spawn(&e.provider, req(&t)).await.unwrap();
    let grace = e.cfg.provider.expiry_grace_seconds;
    assert!(s.workloads_due(now_secs(), grace).unwrap().is_empty());
    let due = s.workloads_due(now_secs() + 2000, grace).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, pod.pod_npub);
}

#[tokio::test]
async fn a_provider_low_on_disk_takes_no_payment() {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), &[&mint.url], 100, common::free_port_block(4));
    // More free space than any test machine has: the real statvfs of the data dir says no.
    cfg.provider.min_free_disk_mb = u64::MAX / (1024 * 1024 * 2);
    let backend = Arc::new(FakeBackend::new());
    let p = Provider::open(cfg, backend.clone()).await.unwrap();
    let token = mint.token(100).await;
    let err = spawn(&p, req(&token)).await.unwrap_err();
    assert_eq!(
        err.error_type,
        ErrorType::ResourceUnavailable,
        "{}",
        err.message
    );
    assert!(err.message.contains("disk"), "{}", err.message);
    assert_eq!(*backend.creates.lock().unwrap(), 0);
    assert_eq!(p.offers().capacity.live_workloads, 0);
    assert_eq!(mint.receive_fresh(&token).await.unwrap(), 100, "untouched");
}

#[tokio::test]
async fn a_crash_between_minting_a_refund_and_journalling_it_delivers_the_same_refund() {
    let e = env().await;
    e.backend.fail(Step::Create);
    let paid = e.mint.token(500).await;
    spawn(&e.provider, {
        let mut r = req(&paid);
        r.ssh_username = "bob".into();
        r
    })
    .await
    .unwrap_err();
    // Earnings that a second refund could come from.
    e.backend.heal(Step::Create);
    let other = e.mint.token(500).await;
    spawn(&e.provider, req(&other)).await.unwrap();
    e.backend.fail(Step::Create);
    let token = e.mint.token(100).await;
    let first = spawn(&e.provider, req(&token)).await.unwrap_err();
    let refund = first.refund_token.clone().unwrap();
    let before = e.earnings(&e.provider).await;
    // The crash: the refund was minted, its final journal write never happened.
    let key = e.provider.payments().inspect(&token).unwrap().key;
    let db = rusqlite::Connection::open(e.dir.path().join("paygress.sqlite3")).unwrap();
    db.execute(
        "UPDATE payments SET state = 'paid', refund_token = NULL, response = NULL WHERE key = ?1",
        [&key],
    )
    .unwrap();
    drop(db);
    let p2 = e.reopen().await;
    let again = spawn(&p2, req(&token)).await.unwrap_err();
    let again = again.refund_token.expect("a refund");
    assert_eq!(
        e.earnings(&p2).await,
        before,
        "no second refund was minted from the earnings"
    );
    let a = p2.payments().inspect(refund.expose()).unwrap().key;
    let b = p2.payments().inspect(again.expose()).unwrap().key;
    assert_eq!(a, b, "the same proofs are delivered");
    assert_eq!(e.mint.receive_fresh(again.expose()).await.unwrap(), 100);
    assert!(
        e.mint.receive_fresh(refund.expose()).await.is_err(),
        "only once"
    );
}

#[tokio::test]
async fn a_remote_sender_gets_a_bounded_number_of_spawns_in_flight() {
    let e = env().await;
    e.backend.set_create_delay(Duration::from_millis(1500));
    let cap = e.cfg.provider.max_concurrent_per_sender as usize;
    let alice = Caller::Nostr("a".repeat(64));
    let mut calls = Vec::new();
    for _ in 0..cap {
        let t = e.mint.token(100).await;
        let (p, c) = (e.provider.clone(), alice.clone());
        calls.push(tokio::spawn(async move {
            p.spawn(req(&t), c, None, CancellationToken::new()).await
        }));
    }
    while *e.backend.creates.lock().unwrap() < cap as u32 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let extra = e.mint.token(100).await;
    let err = e
        .provider
        .spawn(req(&extra), alice.clone(), None, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(
        err.error_type,
        ErrorType::ResourceUnavailable,
        "{}",
        err.message
    );
    assert_eq!(
        e.mint.receive_fresh(&extra).await.unwrap(),
        100,
        "untouched"
    );
    // Another sender is not held up.
    let bob_token = e.mint.token(100).await;
    let bob = e
        .provider
        .spawn(
            req(&bob_token),
            Caller::Nostr("b".repeat(64)),
            None,
            CancellationToken::new(),
        )
        .await;
    assert!(bob.is_ok());
    for c in calls {
        c.await.unwrap().unwrap();
    }
    // Done: the slots are back.
    let again = e.mint.token(100).await;
    assert!(e
        .provider
        .spawn(req(&again), alice, None, CancellationToken::new())
        .await
        .is_ok());
}

#[tokio::test]
async fn a_token_the_fees_eat_whole_is_refused_and_nothing_is_kept() {
    // 1 sat buys 100 s at face value; the mint's 1 sat input fee leaves nothing, and cdk
    // refuses a swap with nothing out (a definitive failure): nothing moves.
    let mint = TestMint::start_with_fee(1000).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), &[&mint.url], 10, common::free_port_block(4));
    let p = Provider::open(cfg, Arc::new(FakeBackend::new()))
        .await
        .unwrap();
    let token = mint.token(1).await;
    let err = spawn(&p, req(&token)).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::PaymentFailed, "{}", err.message);
    assert!(err.refund_token.is_none());
    assert_eq!(p.offers().capacity.live_workloads, 0);
    let key = p.payments().inspect(&token).unwrap().key;
    assert!(
        p.store().payment(&key).unwrap().is_none(),
        "nothing journalled"
    );
    assert_eq!(
        p.payments().balances().await.unwrap()[0].1,
        0,
        "nothing kept"
    );
}

/// The binaries run on tokio's multi-threaded runtime, where journal calls run under
/// `block_in_place`: the whole money path works there too, concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_money_path_runs_on_the_multi_threaded_runtime() {
    let e = env().await;
    let mut calls = Vec::new();
    for i in 0..8 {
        let t = e.mint.token(100).await;
        let p = e.provider.clone();
        calls.push(tokio::spawn(async move {
            let mut r = req(&t);
            r.request_id = Some(format!("mt-{i}"));
            p.spawn(r, Caller::Local, None, CancellationToken::new())
                .await
        }));
    }
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(e.backend.count(), 8);
    assert_eq!(e.earnings(&e.provider).await, 800);
}

#[tokio::test]
async fn with_mint_fees_a_refund_never_exceeds_what_was_received() {
    let mint = TestMint::start_with_fee(1000).await; // 1 sat per input proof
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), &[&mint.url], 100, common::free_port_block(4));
    let backend = Arc::new(FakeBackend::new());
    backend.fail(Step::Create);
    let p = Provider::open(cfg, backend.clone()).await.unwrap();
    let token = mint.token(100).await; // 100 = 64 + 32 + 4: 3 proofs, 3 sat of fees
    let err = spawn(&p, req(&token)).await.unwrap_err();
    let refunded = err.details.clone().unwrap()["refunded_msats"]
        .as_u64()
        .unwrap();
    assert_eq!(refunded, 97_000, "what was received, not the face value");
    let refund = err.refund_token.unwrap();
    assert!(p.payments().inspect(refund.expose()).unwrap().face_msats <= 97_000);
}

#[tokio::test]
async fn a_top_up_that_buys_no_time_after_fees_is_refunded() {
    let mint = TestMint::start_with_fee(1000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), &[&mint.url], 2000, common::free_port_block(4));
    cfg.provider.minimum_duration_seconds = 1;
    let p = Provider::open(cfg, Arc::new(FakeBackend::new()))
        .await
        .unwrap();
    let t1 = mint.token(100).await;
    let pod = spawn(&p, req(&t1)).await.unwrap();
    // 2 sat buys 1 s at 2000 msat/s at face value; after the 1 sat fee it buys 0 s.
    let t2 = mint.token(2).await;
    let err = p
        .top_up(TopUpRequest {
            pod_npub: pod.pod_npub.clone(),
            cashu_token: Secret::new(&t2),
            request_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.error_type,
        ErrorType::InsufficientPayment,
        "{}",
        err.message
    );
    let refund = err.refund_token.expect("refunded");
    assert_eq!(
        p.payments().inspect(refund.expose()).unwrap().face_msats,
        1000
    );
    let w = p.store().workload(&pod.pod_npub).unwrap().unwrap();
    assert_eq!(w.paid_msats, pod.paid_msats, "nothing added");
}

/// Kubernetes and Proxmox choose where SSH lives (a NodePort, a guest address): the core
/// reserves no host port for them, still counts workload slots, and tells buyers exactly the
/// endpoint the backend answered, also after a resume moved it and after a restart.
#[tokio::test]
async fn a_backend_that_chooses_its_endpoint_is_what_buyers_are_told() {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    // One port in the core's range: were the core reserving ports, the second spawn would fail.
    let mut cfg = common::config(dir.path(), &[&mint.url], 100, common::free_port_block(1));
    cfg.provider.max_workloads = 3;
    let backend = Arc::new(FakeBackend::with_own_endpoints("127.0.0.9"));
    let provider = Provider::open(cfg.clone(), backend.clone()).await.unwrap();
    let mut pods = Vec::new();
    for _ in 0..3 {
        let r = spawn(&provider, req(&mint.token(100).await)).await.unwrap();
        assert_eq!(r.host, "127.0.0.9");
        assert!(r.node_port > 40_000, "{}", r.node_port);
        let ssh = format!("ssh -p {} alice@127.0.0.9", r.node_port);
        assert!(r.instructions.iter().any(|i| i.contains(&ssh)), "{r:?}");
        pods.push(r);
    }
    assert!(backend
        .workloads
        .lock()
        .unwrap()
        .values()
        .all(|h| h.spec.host_port.is_none()));
    // Slots still count: the fourth buyer is refused before paying.
    let t4 = mint.token(100).await;
    let err = spawn(&provider, req(&t4)).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::ResourceUnavailable);
    assert_eq!(mint.receive_fresh(&t4).await.unwrap(), 100);

    // Expiry, then a late top-up: the backend resumes it elsewhere, and status says where.
    let first = &pods[0];
    let name = backend
        .workloads
        .lock()
        .unwrap()
        .iter()
        .find(|(_, h)| h.endpoint.port == first.node_port)
        .map(|(n, _)| n.clone())
        .unwrap();
    let expires = backend.get(&name).unwrap().expires_at;
    provider.reap_at(expires).await;
    provider
        .top_up(TopUpRequest {
            pod_npub: first.pod_npub.clone(),
            cashu_token: Secret::new(mint.token(20).await),
            request_id: None,
        })
        .await
        .unwrap();
    let moved = first.node_port + 1000;
    let status = |p: Arc<Provider>| {
        let id = first.pod_npub.clone();
        async move {
            p.status(StatusRequest { pod_npub: id }, &Caller::Local)
                .await
                .unwrap()
                .access
                .unwrap()
        }
    };
    let a = status(provider.clone()).await;
    assert_eq!((a.host.as_str(), a.node_port), ("127.0.0.9", moved));
    assert_eq!(a.ssh_command, format!("ssh -p {moved} alice@127.0.0.9"));
    drop(provider);
    let again = Provider::open(cfg, backend.clone()).await.unwrap();
    let a = status(again).await;
    assert_eq!((a.host.as_str(), a.node_port), ("127.0.0.9", moved));
}
