//! Pay a provider from the buyer wallet, over the marketplace's private messages.
//!
//! One function, [`pay_and_request`], for `paygress-cli market spawn|topup --amount/--duration`
//! and the buyer's MCP tools, so both keep the same money rules:
//!
//! 1. The price is worked out from the provider's live offer (`--duration`: the exact sats for
//!    the seconds at the tier's rate, rounded up) and checked against the caps *before* anything
//!    leaves the wallet. A refused payment costs nothing.
//! 2. The spend is journalled, then the token is made and sent.
//! 3. A refund token in the provider's answer goes straight back into the wallet (journalled as
//!    a refund). An error without one, or no answer at all, means the provider may not have
//!    swapped the token: the wallet swaps it back itself. The mint lets exactly one of the two
//!    swaps win, so the money is either back or was taken by the provider (whose answer the same
//!    request id fetches later) — never both, never neither.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::caps::{Caps, CapsError};
use super::journal::EntryKind;
use super::wallet::{entry, BuyerWallet, WalletError};
use crate::api::Offers;
use crate::config::Tier;
use crate::market::buyer::{new_request_id, Buyer, BuyerError};
use crate::market::{RequestKind, ResponseEnvelope};
use crate::provider::now_secs;

/// How much to pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pay {
    Sats(u64),
    /// Exactly enough for this many seconds at the tier's rate.
    Seconds(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum PurchaseError {
    #[error(transparent)]
    Market(#[from] BuyerError),
    #[error(transparent)]
    Wallet(#[from] WalletError),
    #[error(transparent)]
    Cap(#[from] CapsError),
    #[error("provider {0} has no live offer on these relays")]
    NoOffer(String),
    #[error("provider has no tier {0:?}")]
    NoTier(String),
    #[error("{0}")]
    Price(String),
    #[error("no answer from the provider within {secs} s, and it took the payment ({sats} sat): repeat with request id {request_id} to get its answer")]
    TakenNoAnswer {
        secs: u64,
        sats: u64,
        request_id: String,
    },
}

/// The answer to a paid request.
#[derive(Debug)]
pub struct Outcome {
    /// The provider's answer, with any refund token taken out (it is in the wallet now).
    pub response: ResponseEnvelope,
    pub request_id: String,
    pub paid_sats: u64,
    pub mint: String,
    /// Sats that came back into the wallet (a refund token, or the token reclaimed unspent).
    pub refunded_sats: u64,
}

/// The sats that buy `seconds` at `tier`'s rate (rounded up to whole sats).
pub fn sats_for(tier: &Tier, seconds: u64) -> Result<u64, PurchaseError> {
    let msats = seconds
        .checked_mul(tier.rate_msats_per_sec)
        .ok_or_else(|| PurchaseError::Price("the duration is too long".into()))?;
    Ok(msats.div_ceil(1000))
}

/// The live offer of `provider` (npub or hex) on the relays.
pub async fn offer_of(
    buyer: &Buyer,
    provider: &str,
    timeout: Duration,
) -> Result<Offers, PurchaseError> {
    let want = crate::market::buyer::parse_pubkey(provider)?;
    let now = now_secs();
    buyer
        .offers(timeout)
        .await?
        .into_iter()
        .filter(|o| o.is_live(now, None))
        .find(|o| crate::market::buyer::parse_pubkey(&o.npub).is_ok_and(|k| k == want))
        .map(|o| o.offers)
        .ok_or_else(|| PurchaseError::NoOffer(provider.chars().take(80).collect()))
}

/// What a paid request is for.
pub struct Order<'a> {
    pub provider: &'a str,
    pub kind: RequestKind,
    /// Spawn: the tier; top-up: the pod's tier (looked up by the caller).
    pub tier_id: &'a str,
    pub pay: Pay,
    /// The request's fields, without the token.
    pub fields: Map<String, Value>,
    pub request_id: Option<String>,
    pub pod: Option<String>,
}

/// Pay for `order` from `wallet` and send it; see the module docs for the money rules.
pub async fn pay_and_request(
    buyer: &Buyer,
    wallet: &BuyerWallet,
    caps: Option<&Caps>,
    order: Order<'_>,
    timeout: Duration,
) -> Result<Outcome, PurchaseError> {
    let offers = offer_of(buyer, order.provider, Duration::from_secs(10)).await?;
    let tier = offers
        .pod_specs
        .iter()
        .find(|t| t.id == order.tier_id)
        .ok_or_else(|| PurchaseError::NoTier(order.tier_id.chars().take(64).collect()))?;
    let sats = match order.pay {
        Pay::Sats(s) => s,
        Pay::Seconds(secs) => {
            if order.kind == RequestKind::Spawn && secs < offers.minimum_duration_seconds {
                return Err(PurchaseError::Price(format!(
                    "the provider sells at least {} s",
                    offers.minimum_duration_seconds
                )));
            }
            sats_for(tier, secs)?
        }
    };
    if sats == 0 {
        return Err(PurchaseError::Price("nothing to pay".into()));
    }
    if let Some(c) = caps {
        c.check(wallet.journal(), order.provider, sats, now_secs())?;
    }
    let mint = wallet.pick_mint(&offers.whitelisted_mints, sats).await?;
    let request_id = order.request_id.unwrap_or_else(new_request_id);
    let mut e = entry(EntryKind::Spend, sats, &mint, None);
    e.provider = Some(order.provider.to_string());
    e.pod = order.pod.clone();
    e.request_id = Some(request_id.clone());
    e.note = Some(format!("{:?} {}", order.kind, tier.id).to_lowercase());
    let token = wallet.send_journalled(&mint, sats, e).await?;

    let mut fields = order.fields;
    fields.insert("cashu_token".into(), json!(token.expose()));
    let answer = buyer
        .request(
            order.provider,
            order.kind,
            Some(request_id.clone()),
            fields,
            timeout,
        )
        .await;
    let (token_ref, rid, provider) = (&token, request_id.as_str(), order.provider);
    let reclaim = |why: &'static str| async move {
        match wallet
            .receive_as(token_ref, EntryKind::Refund, Some(provider), Some(rid))
            .await
        {
            Ok((_, s)) => {
                tracing::info!(sats = s, "payment reclaimed: {why}");
                Ok(s)
            }
            Err(WalletError::AlreadySpent) => Ok(0),
            Err(e) => Err(e),
        }
    };
    let mut response = match answer {
        Ok(r) => r,
        Err(BuyerError::Timeout(secs)) => {
            let back = reclaim("no answer").await?;
            if back == 0 {
                return Err(PurchaseError::TakenNoAnswer {
                    secs,
                    sats,
                    request_id: request_id.clone(),
                });
            }
            return Err(BuyerError::Timeout(secs).into());
        }
        Err(other) => {
            reclaim("the request did not go out").await?;
            return Err(other.into());
        }
    };
    let mut refunded = 0;
    if let Some(err) = response.error.as_mut() {
        match err.refund_token.take() {
            Some(refund) => {
                match wallet
                    .receive_as(
                        &refund,
                        EntryKind::Refund,
                        Some(order.provider),
                        Some(&request_id),
                    )
                    .await
                {
                    Ok((_, s)) => refunded = s,
                    // The mint is unreachable: the refund token stays in the answer for the
                    // caller to keep (it is the only copy).
                    Err(e) => {
                        tracing::warn!("could not take the refund into the wallet: {e}");
                        err.refund_token = Some(refund);
                    }
                }
            }
            None => refunded = reclaim("refused before payment").await?,
        }
    }
    Ok(Outcome {
        response,
        request_id,
        paid_sats: sats,
        mint: mint.to_string(),
        refunded_sats: refunded,
    })
}
