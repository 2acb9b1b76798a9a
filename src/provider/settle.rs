//! Taking the money and giving it back when the mint's answer is lost, late or odd: the swap
//! with immediate settlement, settling unknown outcomes (replays and the background pass), and
//! refunds journalled so a crash never mints one twice. See `crate::settlement` for how an
//! outcome is learned from the mint.

use super::*;

impl Provider {
    /// Swap, and if the outcome is unknown, settle it with the mint at once (most lost answers
    /// are settled by this first try).
    pub(super) async fn take_payment(
        &self,
        key: &str,
        mint: &cdk::mint_url::MintUrl,
        token: &Secret,
    ) -> Result<u64, Unpaid> {
        let info = self
            .payments
            .inspect(token.expose())
            .map_err(Unpaid::Refused)?;
        match self.payments.redeem(&info, token).await {
            Ok(m) => Ok(m),
            Err(RedeemError::Refused(e)) => Err(Unpaid::Refused(e)),
            Err(RedeemError::Unknown { error, attempts }) => {
                tracing::warn!(
                    "swap outcome unknown ({}); settling with the mint",
                    error.message
                );
                let now = now_secs();
                let in_flight_until =
                    now.saturating_add(2 * self.cfg.payments.mint_timeout_seconds);
                self.store
                    .mark_unknown(key, &attempts, in_flight_until, now)
                    .map_err(|e| Unpaid::Unsettled(e.into()))?;
                self.settle_bounded(key, mint, token).await
            }
        }
    }

    /// [`Provider::settle_unknown`] within one mint timeout, so a request answers in bounded
    /// time however the mint behaves; what is not settled by then is settled later.
    pub(super) async fn settle_bounded(
        &self,
        key: &str,
        mint: &cdk::mint_url::MintUrl,
        token: &Secret,
    ) -> Result<u64, Unpaid> {
        let budget = self.payments.timeout();
        match tokio::time::timeout(budget, self.settle_unknown(key, mint, token)).await {
            Ok(r) => r,
            Err(_) => Err(Unpaid::Unsettled(
                ProviderError::new(
                    ErrorType::PaymentFailed,
                    format!(
                        "the mint's answer to the payment was lost and the mint did not answer the settlement within {} s. Nothing is lost: the provider settles it in the background; repeat the same request (same token, same request_id) to get the pod or a full refund",
                        budget.as_secs()
                    ),
                )
                .with_details(serde_json::json!({
                    "swap_outcome": "unknown",
                    "retry_after_seconds": self.cfg.provider.reaper_interval_seconds.max(1),
                })),
            )),
        }
    }

    /// Ask the mint what became of a swap whose outcome is unknown (see `crate::settlement`).
    pub(super) async fn settle_unknown(
        &self,
        key: &str,
        mint: &cdk::mint_url::MintUrl,
        token: &Secret,
    ) -> Result<u64, Unpaid> {
        let now = now_secs();
        // Whatever cdk still tracks goes into the journal first: its recovery deletes it.
        let more = self.payments.attempts_for(mint, token).await;
        self.store
            .mark_unknown(key, &more, 0, now)
            .map_err(|e| Unpaid::Unsettled(e.into()))?;
        let row = self
            .store
            .payment(key)
            .map_err(|e| Unpaid::Unsettled(e.into()))?
            .ok_or_else(|| Unpaid::Unsettled(ProviderError::internal("journal row vanished")))?;
        let in_flight = row.in_flight_until > now;
        match self
            .payments
            .settle(mint, token, &row.attempts, in_flight)
            .await
        {
            Settlement::Received(m) => {
                tracing::info!(received_msats = m, "unknown swap settled: received");
                Ok(m)
            }
            Settlement::NotSwapped => {
                tracing::info!("unknown swap settled: the mint never took the token");
                Err(Unpaid::Refused(ProviderError::new(
                    ErrorType::PaymentFailed,
                    "the mint did not take the token (its answer was lost on the way); nothing was charged and the token is still yours: send the request again",
                )))
            }
            Settlement::SpentElsewhere => {
                tracing::info!("unknown swap settled: the token was spent elsewhere");
                Err(Unpaid::Refused(ProviderError::new(
                    ErrorType::TokenAlreadySpent,
                    "the mint reports this token as already spent, and not to this provider",
                )))
            }
            Settlement::Unknown(why) => {
                tracing::warn!("unknown swap not settled yet: {why}");
                Err(Unpaid::Unsettled(
                    ProviderError::new(
                        ErrorType::PaymentFailed,
                        format!(
                            "the mint's answer to the payment was lost and the mint cannot be asked yet ({why}). Nothing is lost: the provider settles it in the background; repeat the same request (same token, same request_id) to get the pod or a full refund"
                        ),
                    )
                    .with_details(serde_json::json!({
                        "swap_outcome": "unknown",
                        "retry_after_seconds": self.cfg.provider.reaper_interval_seconds.max(1),
                    })),
                ))
            }
        }
    }

    /// The first journal write after a swap: the money is in, so a failed write (a full disk,
    /// say) is retried for a while before giving up.
    pub(super) async fn write_after_swap(
        &self,
        op: impl Fn() -> Result<(), crate::store::StoreError>,
    ) -> Result<(), crate::store::StoreError> {
        let mut wait = Duration::from_millis(100);
        let mut last = None;
        for _ in 0..6 {
            match op() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::error!("journal write after a swap failed (retrying): {e}");
                    last = Some(e);
                    tokio::time::sleep(wait).await;
                    wait = wait.saturating_mul(2);
                }
            }
        }
        Err(last.unwrap_or(crate::store::StoreError::Poisoned))
    }

    /// The swap succeeded but the journal cannot record it: give the money back at once, so
    /// the buyer is never left without compute or refund. (The row stays `swapping`; a later
    /// settlement finds the token spent and no swap of ours outstanding, and refunds nothing
    /// twice.)
    pub(super) async fn refund_unjournalled(
        &self,
        mint: &cdk::mint_url::MintUrl,
        received: u64,
        e: crate::store::StoreError,
    ) -> ProviderError {
        let err = ProviderError::internal(format!(
            "the provider cannot write its journal ({e}); the payment is refunded"
        ));
        match self.payments.refund(mint, received).await {
            Ok(token) => err
                .with_refund(token)
                .with_details(serde_json::json!({ "refunded_msats": received - received % 1000 })),
            Err(r) => {
                tracing::error!("cannot refund an unjournalled payment of {received} msat: {r}");
                err
            }
        }
    }

    /// Retry a refund that could not be minted before (replays and the background loop).
    pub(super) async fn retry_refund<T: Serialize>(&self, row: &PaymentRow) -> ProviderError {
        let err = refund_reason(
            row,
            "this request failed after payment; the payment is refunded",
        );
        let mint = match self.payments.mint(&row.mint_url) {
            Ok(m) => m,
            Err(e) => return e,
        };
        self.refund_and_record::<T>(
            &row.key,
            &mint,
            row.received_msats.unwrap_or(0),
            row.pod_id.as_deref(),
            err,
        )
        .await
    }

    /// Settle, in the background, every swap whose outcome is unknown and retry every pending
    /// refund (called by the reaper loop each tick). Returns how many rows it looked at.
    pub async fn settle_pending(self: &Arc<Self>) -> usize {
        let rows = match self
            .store
            .payments_in_state(&[PaymentState::Unknown, PaymentState::RefundPending])
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot read the journal to settle payments: {e}");
                return 0;
            }
        };
        let n = rows.len();
        for r in rows {
            let _guard = self.lock(&format!("token:{}", r.key)).await;
            let Ok(Some(row)) = self.store.payment(&r.key) else {
                continue;
            };
            if !matches!(
                row.state,
                PaymentState::Unknown | PaymentState::RefundPending
            ) {
                continue;
            }
            let outcome = match row.kind {
                PaymentKind::Spawn => self
                    .resume_unknown_spawn(row, None, CancellationToken::new())
                    .await
                    .map(|_| ()),
                PaymentKind::TopUp => self.resume_unknown_top_up(row).await.map(|_| ()),
            };
            if let Err(e) = outcome {
                tracing::debug!("background settlement: {}", e.message);
            }
        }
        n
    }

    /// Mint the refund and store the final answer; on a mint failure keep it pending (recovery
    /// and replays retry it).
    pub(super) async fn refund_and_record<T: Serialize>(
        &self,
        key: &str,
        mint: &cdk::mint_url::MintUrl,
        received: u64,
        pod_id: Option<&str>,
        err: ProviderError,
    ) -> ProviderError {
        let now = now_secs();
        // The reason first, so a refund finished after a crash still says why.
        let reason = ProviderError {
            refund_token: None,
            ..err.clone()
        };
        if let Ok(json) = serde_json::to_string(&reason) {
            if let Err(e) = self.store.set_refund_reason(key, &json) {
                tracing::warn!("refund reason not journalled: {e}");
            }
        }
        // Cashu moves whole sats: what is under 1 sat cannot be returned. Say so.
        let refundable = received - received % 1000;
        let kept = received % 1000;
        if refundable == 0 {
            let err = ProviderError {
                message: format!(
                    "{} Nothing can be refunded: the {received} msat received (after the mint's fees) is below the mint's smallest unit of 1 sat.",
                    err.message
                ),
                ..err
            }
            .with_details(serde_json::json!({
                "refunded_msats": 0,
                "unrefundable_msats": received,
            }));
            let r: Result<T, ProviderError> = Err(err.clone());
            if let Err(e) = self.store.finish_payment(
                key,
                PaymentState::Refunded,
                pod_id,
                None,
                &to_stored(&r),
                now,
            ) {
                tracing::error!("refund outcome not journalled: {e}");
            }
            return err;
        }
        // A refund minted before a crash (its operation journalled) is delivered, not re-minted.
        let earlier = match self
            .store
            .payment(key)
            .ok()
            .flatten()
            .and_then(|r| r.refund_op)
        {
            Some(op) => self.payments.refund_token_of(mint, &op).await,
            None => None,
        };
        let minted = match earlier {
            Some(t) => Ok(t),
            None => {
                self.payments
                    .refund_journalled(mint, received, |op| {
                        self.store
                            .set_refund_op(key, op)
                            .map_err(ProviderError::from)?;
                        crate::crashpoint::hit("refund_prepared");
                        Ok(())
                    })
                    .await
            }
        };
        match minted {
            Ok(token) => {
                crate::crashpoint::hit("refund_minted");
                let mut details = serde_json::json!({ "refunded_msats": refundable });
                if kept > 0 {
                    details["unrefundable_msats"] = kept.into();
                }
                let err = err.with_refund(token.clone()).with_details(details);
                let r: Result<T, ProviderError> = Err(err.clone());
                if let Err(e) = self.store.finish_payment(
                    key,
                    PaymentState::Refunded,
                    pod_id,
                    Some(&token),
                    &to_stored(&r),
                    now,
                ) {
                    tracing::error!("refund minted but not journalled: {e}");
                }
                tracing::info!(pod = ?pod_id, refunded_msats = refundable, "payment refunded");
                err
            }
            Err(e) => {
                tracing::error!(pod = ?pod_id, "refund could not be minted yet: {e}");
                let every = self.cfg.provider.reaper_interval_seconds;
                let err = ProviderError {
                    message: format!(
                        "{} The refund of {refundable} msat could not be minted yet (the mint said: {}). It is kept for you: the provider retries every {every} s, and repeating the same request (same token, same request_id) returns the refund token as soon as the mint answers.",
                        err.message, e.message
                    ),
                    ..err
                }
                .with_details(serde_json::json!({
                    "refund_pending": true,
                    "refund_msats": refundable,
                    "retry_after_seconds": every,
                }));
                if let Err(e) = self.store.finish_payment(
                    key,
                    PaymentState::RefundPending,
                    pod_id,
                    None,
                    "",
                    now,
                ) {
                    tracing::error!("refund pending not journalled: {e}");
                }
                err
            }
        }
    }
}

/// Why `row` is refunded: the reason journalled when its refund started (see
/// `refund_and_record`), else `otherwise` as the kind's after-payment error.
pub(super) fn refund_reason(row: &PaymentRow, otherwise: &str) -> ProviderError {
    row.refund_reason
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| {
            ProviderError::new(
                if row.kind == PaymentKind::Spawn {
                    ErrorType::PodCreationFailed
                } else {
                    ErrorType::PaymentFailed
                },
                otherwise,
            )
        })
}
