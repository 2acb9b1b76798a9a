//! Recovery at open: bring the journal and the backend back in line after a crash (money rule
//! 5). Swaps with an unknown outcome are settled from what the mint signed for us, paid requests
//! that did not finish are refunded, live workloads re-adopted, orphans removed.

use super::*;

impl Provider {
    // ---- recovery ---------------------------------------------------------------------------

    /// Bring the journal and the backend back in line after a restart (money rule 5).
    pub async fn recover(&self) -> RecoveryReport {
        let mut rep = RecoveryReport::default();
        let now = now_secs();
        // Journal our swap attempts before cdk's saga recovery resolves (and deletes) them.
        let unsettled = self
            .store
            .payments_in_state(&[PaymentState::Swapping, PaymentState::Unknown])
            .unwrap_or_default();
        for p in &unsettled {
            if let (Some(token), Ok(mint)) = (&p.token, self.payments.mint(&p.mint_url)) {
                let attempts = self.payments.attempts_for(&mint, token).await;
                if !attempts.is_empty() {
                    if let Err(e) = self.store.mark_unknown(&p.key, &attempts, 0, now) {
                        tracing::error!("cannot journal swap attempts: {e}");
                    }
                }
            }
        }
        self.payments.recover().await;
        let pending = self
            .store
            .payments_in_state(&[
                PaymentState::Swapping,
                PaymentState::Unknown,
                PaymentState::Paid,
                PaymentState::RefundPending,
            ])
            .unwrap_or_else(|e| {
                tracing::error!("recovery cannot read the journal: {e}");
                Vec::new()
            });
        for p in pending {
            self.recover_payment(p, &mut rep).await;
        }
        self.adopt_workloads(&mut rep).await;
        rep
    }

    pub(super) async fn recover_payment(&self, p: PaymentRow, rep: &mut RecoveryReport) {
        let now = now_secs();
        let mint = match self.payments.mint(&p.mint_url) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("journalled payment at a mint no longer whitelisted: {e}");
                return;
            }
        };
        let mut received = p.received_msats;
        if matches!(p.state, PaymentState::Swapping | PaymentState::Unknown) {
            // Whether the swap happened is learned from what the mint signed for us, never from
            // "the token is spent" (someone else may have spent it).
            let Some(token) = p.token.clone() else {
                let _ = self.store.forget_payment(&p.key);
                return;
            };
            match self.settle_unknown(&p.key, &mint, &token).await {
                Ok(m) => {
                    received = Some(m);
                    let _ = self.store.mark_paid(&p.key, m, now);
                }
                Err(Unpaid::Refused(e)) => {
                    tracing::info!("interrupted swap settled without payment: {}", e.message);
                    let reserved = (p.kind == PaymentKind::Spawn)
                        .then_some(p.pod_id.as_deref())
                        .flatten();
                    let _ = self.swap_failed::<serde_json::Value>(&p.key, reserved, e);
                    rep.released += 1;
                    return;
                }
                Err(Unpaid::Unsettled(e)) => {
                    tracing::warn!("interrupted swap not settled yet: {}", e.message);
                    rep.unsettled += 1;
                    return;
                }
            }
        }
        let received = received.unwrap_or(0);
        // A paid spawn whose workload is actually up is finished, not refunded.
        if p.kind == PaymentKind::Spawn && p.state == PaymentState::Paid {
            if let Some(pod) = &p.pod_id {
                if let Ok(Some(mut w)) = self.store.workload(pod) {
                    let seen = match self.backend.inspect(&w.name).await {
                        Ok(Some(i)) if i.state == WorkloadState::Running => Some(i.endpoint),
                        _ => None,
                    };
                    if let Some(endpoint) = seen.filter(|_| w.expires_at > now) {
                        // Where the backend says SSH is; else where the core reserved it.
                        if let Some(e) = endpoint {
                            w.ssh_host = e.host;
                            w.ssh_port = Some(e.port);
                        } else if w.host_port > 0 {
                            w.ssh_port = Some(w.host_port);
                        }
                        if let Some(port) = w.ssh_port {
                            let _ =
                                self.store
                                    .set_workload_endpoint(pod, w.ssh_host.as_deref(), port);
                        }
                        let duration = w.expires_at.saturating_sub(w.created_at);
                        let r: Result<SpawnResult, ProviderError> =
                            Ok(self.spawn_result(&w, &w.tier, w.expires_at, duration, received));
                        let _ = self
                            .store
                            .set_workload_state(pod, WorkloadStatus::Running, now);
                        let _ = self.store.finish_payment(
                            &p.key,
                            PaymentState::Completed,
                            Some(pod),
                            None,
                            &to_stored(&r),
                            now,
                        );
                        rep.finished += 1;
                        return;
                    }
                    self.destroy_or_retry(pod, &w.name).await;
                }
            }
        }
        // A refund already under way keeps its reason; otherwise the restart is the reason.
        let err = super::settle::refund_reason(
            &p,
            "the provider restarted before this request finished; the payment is refunded",
        );
        let e = match p.kind {
            PaymentKind::Spawn => {
                self.refund_and_record::<SpawnResult>(
                    &p.key,
                    &mint,
                    received,
                    p.pod_id.as_deref(),
                    err,
                )
                .await
            }
            PaymentKind::TopUp => {
                self.refund_and_record::<TopUpResult>(
                    &p.key,
                    &mint,
                    received,
                    p.pod_id.as_deref(),
                    err,
                )
                .await
            }
        };
        if e.refund_token.is_some() {
            rep.refunded += 1;
        }
    }

    pub(super) async fn adopt_workloads(&self, rep: &mut RecoveryReport) {
        let on_backend = match self.backend.list(&self.provider_id).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!("cannot list backend workloads; adoption skipped: {e}");
                return;
            }
        };
        let live = self
            .store
            .workloads_in_state(&[
                WorkloadStatus::Provisioning,
                WorkloadStatus::Running,
                WorkloadStatus::Expired,
            ])
            .unwrap_or_default();
        let now = now_secs();
        // Reservations whose payment is still being settled stay reserved.
        let settling: Vec<String> = self
            .store
            .payments_in_state(&[PaymentState::Unknown])
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.pod_id)
            .collect();
        for w in &live {
            if w.state == WorkloadStatus::Provisioning && settling.contains(&w.id) {
                continue;
            }
            if w.state == WorkloadStatus::Provisioning {
                // No payment is pending for it any more (recovered above): it never completed.
                self.destroy_or_retry(&w.id, &w.name).await;
                continue;
            }
            if on_backend.iter().any(|b| b.name == w.name) {
                rep.adopted += 1;
            } else {
                tracing::warn!(pod = %w.id, "workload missing on the backend; marked deleted");
                let _ = self
                    .store
                    .set_workload_state(&w.id, WorkloadStatus::Deleted, now);
                rep.lost += 1;
            }
        }
        for b in &on_backend {
            let known = live
                .iter()
                .any(|w| w.name == b.name && w.state != WorkloadStatus::Provisioning);
            if !known {
                tracing::warn!(name = %b.name, "orphan workload on the backend; removing");
                if self.backend.destroy(&b.name).await.is_ok() {
                    rep.orphans_removed += 1;
                }
            }
        }
    }
}
