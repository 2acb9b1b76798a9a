//! The money path under network faults between the provider and a real mint: a fault proxy
//! (tests/common/faulty.rs) cuts, delays or fails the mint's answers. Every test ends with the
//! books: what the buyer paid is in the provider's earnings, in a refund a fresh wallet can
//! receive, or still spendable, to the sat.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::backend::FakeBackend;
use common::faulty::{Fault, FaultyMint};
use paygress::api::{SpawnRequest, SpawnResult};
use paygress::config::Config;
use paygress::secret::Secret;
use paygress::{Caller, ErrorType, Provider, ProviderError};
use tokio_util::sync::CancellationToken;

struct Env {
    mint: FaultyMint,
    backend: Arc<FakeBackend>,
    provider: Arc<Provider>,
    _dir: tempfile::TempDir,
    cfg: Config,
}

async fn env() -> Env {
    env_with(FaultyMint::start().await).await
}

async fn env_with(mint: FaultyMint) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), &[&mint.url], 100, common::free_port_block(10));
    cfg.payments.mint_timeout_seconds = 2;
    let backend = Arc::new(FakeBackend::new());
    let provider = Provider::open(cfg.clone(), backend.clone()).await.unwrap();
    Env {
        mint,
        backend,
        provider,
        _dir: dir,
        cfg,
    }
}

impl Env {
    async fn earnings(&self, p: &Provider) -> u64 {
        p.payments()
            .balances()
            .await
            .unwrap()
            .iter()
            .map(|(_, b)| b)
            .sum()
    }

    async fn reopen(&self) -> Arc<Provider> {
        Provider::open(self.cfg.clone(), self.backend.clone())
            .await
            .unwrap()
    }
}

fn req(token: &str, id: &str) -> SpawnRequest {
    SpawnRequest {
        cashu_token: Secret::new(token),
        ssh_username: "alice".into(),
        request_id: Some(id.into()),
        ..Default::default()
    }
}

async fn spawn(p: &Arc<Provider>, r: SpawnRequest) -> Result<SpawnResult, ProviderError> {
    p.spawn(r, Caller::Local, None, CancellationToken::new())
        .await
}

/// Repeat the same request (as the error's instructions say) until it settles: a pod or a
/// refund. Bounded: the provider must settle within a few tries in the same process.
async fn settle(p: &Arc<Provider>, r: &SpawnRequest) -> Result<SpawnResult, ProviderError> {
    let mut last = None;
    for _ in 0..20 {
        match spawn(p, r.clone()).await {
            Ok(pod) => return Ok(pod),
            Err(e) if e.refund_token.is_some() => return Err(e),
            Err(e) => {
                assert_ne!(
                    e.error_type,
                    ErrorType::TokenAlreadySpent,
                    "a replay of the same request is never token_already_spent: {}",
                    e.message
                );
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    panic!("the request never settled: {:?}", last.map(|e| e.message));
}

/// The finding of the issue, exactly: the swap reaches the mint, its answer is cut once, the
/// buyer repeats the same request. It ends with a pod or a full refund, in the same process.
#[tokio::test]
async fn a_swap_whose_answer_is_cut_ends_with_a_pod_or_a_full_refund_in_the_same_process() {
    let e = env().await;
    let token = e.mint.token(1000).await;
    e.mint.proxy.inject("/v1/swap", Fault::CutAfterForward, 1);
    let r = req(&token, "cut-once");
    let first = spawn(&e.provider, r.clone()).await;
    assert_eq!(e.mint.proxy.applied("/v1/swap"), 1, "the fault was applied");
    if let Err(err) = &first {
        assert_ne!(
            err.error_type,
            ErrorType::TokenAlreadySpent,
            "{}",
            err.message
        );
    }
    let end = match first {
        Ok(pod) => Ok(pod),
        Err(_) => settle(&e.provider, &r).await,
    };
    let mut refunds = vec![];
    match &end {
        Ok(pod) => {
            assert_eq!(pod.paid_msats, 1_000_000);
            assert_eq!(e.backend.count(), 1, "the pod exists");
            // A later replay returns the same pod.
            let again = spawn(&e.provider, r.clone()).await.unwrap();
            assert_eq!(again.pod_npub, pod.pod_npub);
        }
        Err(err) => {
            refunds.push(err.refund_token.clone().unwrap().expose().to_string());
            assert_eq!(e.backend.count(), 0);
        }
    }
    let earnings = e.earnings(&e.provider).await;
    e.mint
        .assert_books(1000, earnings, &refunds, std::slice::from_ref(&token))
        .await;
    // And after a restart the answer is the same.
    if let Ok(pod) = end {
        drop(e.provider.clone());
        let p2 = e.reopen().await;
        let again = spawn(&p2, r).await.unwrap();
        assert_eq!(again.pod_npub, pod.pod_npub);
    }
}

/// One spawn through one fault on `/v1/swap`; the same request repeated until it settles.
async fn one_fault(fault: Fault) {
    let e = env().await;
    let token = e.mint.token(1000).await;
    e.mint.proxy.inject("/v1/swap", fault, 1);
    let r = req(&token, "one-fault");
    let end = match spawn(&e.provider, r.clone()).await {
        Ok(pod) => Ok(pod),
        Err(err) => {
            assert_ne!(
                err.error_type,
                ErrorType::TokenAlreadySpent,
                "{fault:?}: {}",
                err.message
            );
            if err.refund_token.is_some() {
                Err(err)
            } else {
                settle(&e.provider, &r).await
            }
        }
    };
    assert_eq!(e.mint.proxy.applied("/v1/swap"), 1, "{fault:?} was applied");
    let refunds: Vec<String> = end
        .as_ref()
        .err()
        .and_then(|e| e.refund_token.clone())
        .map(|t| t.expose().to_string())
        .into_iter()
        .collect();
    if let Ok(pod) = &end {
        assert_eq!(pod.paid_msats, 1_000_000, "{fault:?}");
        assert_eq!(e.backend.count(), 1, "{fault:?}");
    }
    let earnings = e.earnings(&e.provider).await;
    e.mint
        .assert_books(1000, earnings, &refunds, std::slice::from_ref(&token))
        .await;
}

#[tokio::test]
async fn a_502_after_the_mint_swapped_settles() {
    one_fault(Fault::StatusAfterForward(502)).await;
}

#[tokio::test]
async fn a_502_before_the_mint_saw_the_swap_settles() {
    one_fault(Fault::Status(502)).await;
}

#[tokio::test]
async fn a_connection_dropped_before_forwarding_settles() {
    one_fault(Fault::Drop).await;
}

#[tokio::test]
async fn an_answer_later_than_the_mint_timeout_settles() {
    // The provider gives up after 2 s; the mint's answer comes after 3 s.
    one_fault(Fault::DelayAnswer(Duration::from_secs(3))).await;
}

#[tokio::test]
async fn a_request_held_past_the_mint_timeout_settles() {
    one_fault(Fault::Delay(Duration::from_secs(3))).await;
}

/// The answer is cut and the mint then stays unreachable: the first answer says the outcome is
/// unknown (never token_already_spent, never a lost payment); when the mint is back, the same
/// request gets the pod, in the same process.
#[tokio::test]
async fn a_cut_answer_while_the_mint_stays_down_settles_when_it_is_back() {
    let e = env().await;
    let token = e.mint.token(1000).await;
    e.mint.proxy.inject("/v1/swap", Fault::CutAfterForward, 1);
    e.mint.proxy.always("/v1/restore", Fault::Status(503));
    e.mint.proxy.always("/v1/checkstate", Fault::Status(503));
    let r = req(&token, "down");
    let err = spawn(&e.provider, r.clone()).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::PaymentFailed, "{}", err.message);
    assert!(err.refund_token.is_none());
    let details = err.details.clone().unwrap_or_default();
    assert_eq!(details["swap_outcome"], "unknown", "{details}");
    assert!(
        err.message.contains("repeat the same request"),
        "{}",
        err.message
    );
    // Still down: a replay says the same, and the reservation holds.
    let again = spawn(&e.provider, r.clone()).await.unwrap_err();
    assert_eq!(again.error_type, ErrorType::PaymentFailed);
    assert_eq!(e.provider.offers().capacity.live_workloads, 1);
    // The mint is back: the same request gets the pod.
    e.mint.proxy.clear();
    let pod = settle(&e.provider, &r).await.unwrap();
    assert_eq!(pod.paid_msats, 1_000_000);
    let earnings = e.earnings(&e.provider).await;
    assert_eq!(earnings, 1000);
    e.mint
        .assert_books(1000, earnings, &[], std::slice::from_ref(&token))
        .await;
}

/// Nobody repeats the request: the background pass settles it and provisions; a later replay
/// returns that pod.
#[tokio::test]
async fn the_background_pass_settles_an_unknown_swap_without_a_replay() {
    let e = env().await;
    let token = e.mint.token(1000).await;
    e.mint.proxy.inject("/v1/swap", Fault::CutAfterForward, 1);
    e.mint.proxy.always("/v1/restore", Fault::Status(503));
    let r = req(&token, "background");
    let err = spawn(&e.provider, r.clone()).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::PaymentFailed);
    e.mint.proxy.clear();
    e.provider.settle_pending().await;
    assert_eq!(e.backend.count(), 1, "provisioned by the background pass");
    let pod = spawn(&e.provider, r).await.unwrap();
    assert_eq!(pod.paid_msats, 1_000_000);
    let earnings = e.earnings(&e.provider).await;
    e.mint
        .assert_books(1000, earnings, &[], std::slice::from_ref(&token))
        .await;
}

/// The provider restarts while the outcome is unknown: recovery settles it from what the mint
/// signed for us and refunds (the request did not finish before the restart).
#[tokio::test]
async fn a_restart_with_an_unknown_swap_refunds_what_was_received() {
    let e = env().await;
    let token = e.mint.token(1000).await;
    e.mint.proxy.inject("/v1/swap", Fault::CutAfterForward, 1);
    e.mint.proxy.always("/v1/restore", Fault::Status(503));
    let r = req(&token, "restart");
    spawn(&e.provider, r.clone()).await.unwrap_err();
    e.mint.proxy.clear();
    let p2 = e.reopen().await;
    let err = spawn(&p2, r).await.unwrap_err();
    let refund = err.refund_token.clone().expect("a refund");
    assert_eq!(e.backend.count(), 0);
    let earnings = e.earnings(&p2).await;
    e.mint
        .assert_books(
            1000,
            earnings,
            &[refund.expose().to_string()],
            std::slice::from_ref(&token),
        )
        .await;
}

/// A top-up whose swap answer is cut: the same top-up repeated extends the pod once.
#[tokio::test]
async fn a_top_up_whose_answer_is_cut_extends_once() {
    use paygress::api::TopUpRequest;
    let e = env().await;
    let t1 = e.mint.token(1000).await;
    let t2 = e.mint.token(500).await;
    let pod = spawn(&e.provider, req(&t1, "spawn")).await.unwrap();
    e.mint.proxy.inject("/v1/swap", Fault::CutAfterForward, 1);
    e.mint.proxy.always("/v1/restore", Fault::Status(503));
    let top = TopUpRequest {
        pod_npub: pod.pod_npub.clone(),
        cashu_token: Secret::new(&t2),
        request_id: Some("top".into()),
    };
    let first = e.provider.top_up(top.clone()).await;
    assert!(first.is_err(), "the outcome is not known yet");
    e.mint.proxy.clear();
    let done = e.provider.top_up(top.clone()).await.unwrap();
    assert_eq!(done.extended_duration_seconds, 5000);
    let again = e.provider.top_up(top).await.unwrap();
    assert_eq!(again.new_expires_at, done.new_expires_at, "extended once");
    let earnings = e.earnings(&e.provider).await;
    e.mint.assert_books(1500, earnings, &[], &[t1, t2]).await;
}

/// The backend fails after the swap and the refund cannot be minted right then (the earnings
/// were withdrawn meanwhile; with exact proofs in the wallet cdk mints a refund offline, so the
/// mint being down cannot be forced here): the buyer is told the refund is kept and how to
/// collect it; the background pass mints it once it can, and a replay returns it.
#[tokio::test]
async fn a_refund_that_cannot_be_minted_yet_is_kept_and_collected_later() {
    use common::backend::Step;
    let e = env().await;
    let token = e.mint.token(1000).await;
    e.backend.fail(Step::Create);
    e.backend.set_create_delay(Duration::from_millis(500));
    let r = req(&token, "pending-refund");
    let swaps = e.mint.proxy.forwarded("/v1/swap");
    let p = e.provider.clone();
    let call = tokio::spawn({
        let r = r.clone();
        async move { spawn(&p, r).await }
    });
    while e.mint.proxy.forwarded("/v1/swap") <= swaps {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The operator withdraws everything while the workload is being created.
    let mint = e.provider.payments().mint(&e.mint.url).unwrap();
    let withdrawn = e.provider.payments().withdraw(&mint, 1000).await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    e.backend.heal(Step::Create);
    assert!(err.refund_token.is_none(), "no refund can be minted yet");
    let d = err.details.clone().unwrap_or_default();
    assert_eq!(d["refund_pending"], true, "{d}: {}", err.message);
    assert_eq!(d["refund_msats"], 1_000_000);
    assert!(
        err.message.contains("repeating the same request"),
        "{}",
        err.message
    );
    let again = spawn(&e.provider, r.clone()).await.unwrap_err();
    assert!(again.refund_token.is_none(), "still not mintable");
    // Money comes in again (another buyer); the background pass mints the kept refund.
    let other = e.mint.token(1000).await;
    spawn(&e.provider, {
        let mut o = req(&other, "other");
        o.ssh_username = "bob".into();
        o
    })
    .await
    .unwrap();
    e.provider.settle_pending().await;
    let got = spawn(&e.provider, r).await.unwrap_err();
    let refund = got.refund_token.clone().expect("the kept refund");
    assert_eq!(got.details.clone().unwrap()["refunded_msats"], 1_000_000);
    let earnings = e.earnings(&e.provider).await;
    e.mint
        .assert_books(
            2000,
            earnings,
            &[refund.expose().to_string(), withdrawn.expose().to_string()],
            &[token, other],
        )
        .await;
}

/// The swap never reaches the mint and neither does cdk's replay of it: nothing was charged.
/// While a request might still be on its way the outcome stays unknown; after that, the same
/// request goes through as a new one and gets the pod.
#[tokio::test]
async fn a_swap_that_never_reached_the_mint_is_released_and_the_same_request_then_succeeds() {
    let e = env().await;
    let token = e.mint.token(1000).await;
    let before = e.mint.proxy.forwarded("/v1/swap");
    e.mint.proxy.inject("/v1/swap", Fault::Drop, 2);
    let r = req(&token, "never-sent");
    let err = spawn(&e.provider, r.clone()).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::PaymentFailed, "{}", err.message);
    assert_eq!(
        e.mint.proxy.applied("/v1/swap"),
        2,
        "the swap and its replay were dropped"
    );
    assert_eq!(
        e.mint.proxy.forwarded("/v1/swap"),
        before,
        "nothing reached the mint"
    );
    // Past the in-flight window (2 x the 2 s mint timeout).
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let pod = spawn(&e.provider, r).await.unwrap();
    assert_eq!(pod.paid_msats, 1_000_000);
    let earnings = e.earnings(&e.provider).await;
    e.mint
        .assert_books(1000, earnings, &[], std::slice::from_ref(&token))
        .await;
}
