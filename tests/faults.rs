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
        assert_ne!(err.error_type, ErrorType::TokenAlreadySpent, "{}", err.message);
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
