//! Settling a swap whose outcome is unknown: learn from the mint what the provider received.
//!
//! A swap can happen at the mint while its answer never reaches the provider (a cut connection,
//! a timeout, a 502 from a gateway after the mint acted). The token's proofs are then spent and
//! the mint has signed outputs that only the provider's wallet can unblind; asking "is the token
//! spent?" cannot tell this apart from a token spent elsewhere. So the decision is made from what
//! the provider *received*, never from "the mint says spent":
//!
//! 1. Before anything else, the blinded outputs of every swap attempt of ours for these proofs
//!    are copied out of cdk's receive sagas into the payment journal ([`attempts_for`]); cdk
//!    deletes a saga once it resolves it, the journal keeps them.
//! 2. cdk's own saga recovery runs (`Wallet::recover_incomplete_sagas`): it replays the exact
//!    swap request, or restores its outputs (NUT-09), and puts the proofs in the wallet — or, if
//!    the inputs are unspent and the replay was refused, rolls the receive back.
//! 3. The mint is asked directly (NUT-09 restore) which of our journalled outputs it signed: the
//!    sum of those is what was received. Signed outputs are ours by construction (derived from
//!    the provider's seed), so this cannot mistake someone else's spend for a payment.
//! 4. Nothing signed: the proofs' state (NUT-07) says whether the token is still the buyer's
//!    (unspent: nothing was charged) or was spent elsewhere (nothing received, nothing owed).
//!
//! Any step the mint cannot answer leaves the outcome [`Settlement::Unknown`]; the caller keeps
//! the journal row and tries again later.

use std::collections::HashSet;
use std::time::Duration;

use cdk::nuts::{BlindedMessage, CheckStateRequest, RestoreRequest, State, Token};
use cdk::wallet::types::{OperationData, ReceiveSagaState, WalletSagaState};
use cdk::wallet::{HttpClient, MintConnector, Wallet};
use serde::{Deserialize, Serialize};

/// The outputs of one swap attempt of ours, as sent to the mint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapAttempt {
    pub outputs: Vec<BlindedMessage>,
}

/// What the mint says happened to a swap of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The mint signed our outputs: the provider holds this many millisatoshis.
    Received(u64),
    /// No output of ours was signed and every proof is unspent: the token is still the buyer's.
    NotSwapped,
    /// No output of ours was signed but the proofs are spent: someone else spent them.
    SpentElsewhere,
    /// The mint could not answer (or a request may still be in flight): try again later.
    Unknown(String),
}

fn secrets_of(token: &Token) -> HashSet<String> {
    token
        .token_secrets()
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The swap attempts of ours that cdk still tracks for the proofs of `token` (local only: no
/// request to the mint).
pub async fn attempts_for(wallet: &Wallet, token: &Token) -> Vec<SwapAttempt> {
    let want = secrets_of(token);
    let Ok(sagas) = wallet.localstore.get_incomplete_sagas().await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for saga in sagas {
        if saga.mint_url != wallet.mint_url {
            continue;
        }
        let (WalletSagaState::Receive(ReceiveSagaState::SwapRequested), OperationData::Receive(d)) =
            (&saga.state, &saga.data)
        else {
            continue;
        };
        let Some(outputs) = d.blinded_messages.clone().filter(|o| !o.is_empty()) else {
            continue;
        };
        let reserved = wallet
            .localstore
            .get_reserved_proofs(&saga.id)
            .await
            .unwrap_or_default();
        let by_proofs = !reserved.is_empty()
            && reserved
                .iter()
                .all(|p| want.contains(&p.proof.secret.to_string()));
        let by_token = d
            .token
            .as_deref()
            .and_then(|t| t.parse::<Token>().ok())
            .is_some_and(|t| secrets_of(&t) == want);
        if by_proofs || by_token {
            out.push(SwapAttempt { outputs });
        }
    }
    out
}

/// Settle the proofs of `token` at `wallet`'s mint given our journalled `attempts`.
/// `may_be_in_flight`: a request of ours might still reach the mint (the last attempt ended in
/// a timeout or a lost connection only moments ago), so "unspent" cannot be trusted yet.
pub async fn settle(
    wallet: &Wallet,
    token: &Token,
    attempts: &[SwapAttempt],
    may_be_in_flight: bool,
    timeout: Duration,
) -> Settlement {
    // 2. cdk's own recovery: replay or restore, proofs into the wallet.
    match tokio::time::timeout(timeout * 3, Box::pin(wallet.recover_incomplete_sagas())).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Settlement::Unknown(format!("wallet recovery: {e}")),
        Err(_) => return Settlement::Unknown("wallet recovery timed out".into()),
    }
    let client = HttpClient::new(wallet.mint_url.clone(), None);
    // 3. What the mint signed for us.
    let outputs: Vec<BlindedMessage> = attempts.iter().flat_map(|a| a.outputs.clone()).collect();
    if !outputs.is_empty() {
        let ours: HashSet<_> = outputs.iter().map(|o| o.blinded_secret).collect();
        let req = RestoreRequest { outputs };
        let resp = match tokio::time::timeout(timeout, client.post_restore(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Settlement::Unknown(format!("restore: {e}")),
            Err(_) => return Settlement::Unknown("restore timed out".into()),
        };
        let mut sats: u64 = 0;
        for (o, s) in resp.outputs.iter().zip(resp.signatures.iter()) {
            if ours.contains(&o.blinded_secret) {
                sats = sats.saturating_add(u64::from(s.amount));
            }
        }
        if sats > 0 {
            return Settlement::Received(sats.saturating_mul(1000));
        }
    }
    let mut ys = Vec::new();
    for s in token.token_secrets() {
        match cdk::dhke::hash_to_curve(s.as_bytes()) {
            Ok(y) => ys.push(y),
            Err(_) => return Settlement::SpentElsewhere,
        }
    }
    // 3b. No outputs journalled: the swap either never left or succeeded with its answer in
    // hand just before a crash (cdk then forgets the saga). In the latter case the wallet has
    // the proofs and records the receive as completed, with these inputs.
    if attempts.is_empty() {
        if let Some(sats) = completed_receive(wallet, &ys).await {
            return Settlement::Received(sats.saturating_mul(1000));
        }
    }
    // 4. Nothing of ours signed: whose are the proofs now?
    let states = match tokio::time::timeout(
        timeout,
        client.post_check_state(CheckStateRequest { ys }),
    )
    .await
    {
        Ok(Ok(r)) => r.states,
        // No swap request of ours for these proofs ever left (cdk journals a receive as
        // "swap requested" before sending it, and we journal those before it forgets them):
        // whatever the mint would say, nothing was received.
        _ if attempts.is_empty() => return Settlement::NotSwapped,
        Ok(Err(e)) => return Settlement::Unknown(format!("check state: {e}")),
        Err(_) => return Settlement::Unknown("check state timed out".into()),
    };
    if states.iter().any(|s| s.state == State::Pending) {
        return Settlement::Unknown("the mint holds these proofs in a pending transaction".into());
    }
    if states.iter().all(|s| s.state == State::Unspent) {
        if may_be_in_flight && !attempts.is_empty() {
            return Settlement::Unknown(
                "a swap request may still be on its way to the mint".into(),
            );
        }
        return Settlement::NotSwapped;
    }
    // cdk keeps a receive whose inputs someone else spent as "swap requested" for ever (its
    // restore finds nothing to complete it with); we asked the mint ourselves, so drop it.
    forget_sagas(wallet, token).await;
    Settlement::SpentElsewhere
}

/// What a completed receive of exactly these input proofs brought in, from the wallet's own
/// transaction history.
async fn completed_receive(wallet: &Wallet, ys: &[cdk::nuts::PublicKey]) -> Option<u64> {
    use cdk::wallet::types::{TransactionDirection, TransactionStatus};
    let want: HashSet<_> = ys.iter().collect();
    let txs = wallet
        .list_transactions(Some(TransactionDirection::Incoming))
        .await
        .ok()?;
    txs.into_iter()
        .find(|t| {
            t.status == TransactionStatus::Completed
                && t.ys.len() == want.len()
                && t.ys.iter().all(|y| want.contains(y))
        })
        .map(|t| u64::from(t.amount))
}

/// Remove cdk's records of receives of these proofs (the saga and its pending input proofs).
async fn forget_sagas(wallet: &Wallet, token: &Token) {
    let want = secrets_of(token);
    let Ok(sagas) = wallet.localstore.get_incomplete_sagas().await else {
        return;
    };
    for saga in sagas {
        if saga.mint_url != wallet.mint_url || !matches!(saga.state, WalletSagaState::Receive(_)) {
            continue;
        }
        let reserved = wallet
            .localstore
            .get_reserved_proofs(&saga.id)
            .await
            .unwrap_or_default();
        if reserved.is_empty()
            || !reserved
                .iter()
                .all(|p| want.contains(&p.proof.secret.to_string()))
        {
            continue;
        }
        let ys = reserved.iter().map(|p| p.y).collect();
        if wallet.localstore.update_proofs(vec![], ys).await.is_ok() {
            let _ = wallet.localstore.delete_saga(&saga.id).await;
        }
    }
}
