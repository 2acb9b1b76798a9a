//! Expiry: the reaper stops workloads whose paid time ran out, deletes them after the grace
//! period, retries removals a backend refused, and frees the slot of a graced pod when a paying
//! buyer needs it. Split from `provider.rs` to keep each file about one part of the core.

use super::*;

impl Provider {
    // ---- expiry -----------------------------------------------------------------------------

    /// One reaper pass at time `now`: stop workloads whose paid time ran out, delete those whose
    /// grace period ended. Public so operators and tests can run a pass at a chosen time.
    pub async fn reap_at(&self, now: u64) -> ReapReport {
        let mut report = ReapReport::default();
        let grace = self.cfg.provider.expiry_grace_seconds;
        let due = match self.store.workloads_due(now, grace) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!("reaper cannot read the store: {e}");
                return report;
            }
        };
        let (destroying, due): (Vec<_>, Vec<_>) = due
            .into_iter()
            .partition(|w| w.state == WorkloadStatus::Destroying);
        // Failed spawns whose removal failed: retried every pass until gone.
        for w in destroying {
            let _pod = self.lock(&format!("pod:{}", w.id)).await;
            match self.backend.destroy(&w.name).await {
                Ok(()) | Err(BackendError::NotFound(_)) => {
                    if self
                        .store
                        .set_workload_state(&w.id, WorkloadStatus::Failed, now)
                        .is_ok()
                    {
                        report.deleted.push(w.id.clone());
                    }
                }
                Err(e) => tracing::warn!(pod = %w.id, "still cannot remove the workload: {e}"),
            }
        }
        for w in due {
            let stop_due = w.state == WorkloadStatus::Running && w.expires_at <= now;
            let delete_due = |stopped_at: u64| stopped_at.saturating_add(grace) <= now;
            let delete_now =
                w.state == WorkloadStatus::Expired && delete_due(w.stopped_at.unwrap_or(0));
            if !(stop_due || delete_now) {
                continue;
            }
            let _pod = self.lock(&format!("pod:{}", w.id)).await;
            // Re-read under the lock: a top-up may have just moved the deadline.
            let Ok(Some(w)) = self.store.workload(&w.id) else {
                continue;
            };
            let mut state = w.state;
            let mut stopped_at = w.stopped_at;
            if state == WorkloadStatus::Running && w.expires_at <= now {
                match self.backend.stop(&w.name).await {
                    Ok(()) | Err(BackendError::NotFound(_)) => {
                        if let Err(e) =
                            self.store
                                .set_workload_state(&w.id, WorkloadStatus::Expired, now)
                        {
                            tracing::error!(pod = %w.id, "cannot record expiry: {e}");
                            continue;
                        }
                        tracing::info!(pod = %w.id, "paid time ran out: workload stopped");
                        report.stopped.push(w.id.clone());
                        state = WorkloadStatus::Expired;
                        stopped_at = Some(now);
                    }
                    Err(e) => {
                        tracing::warn!(pod = %w.id, "cannot stop expired workload (retrying next pass): {e}");
                        continue;
                    }
                }
            }
            if state == WorkloadStatus::Expired && delete_due(stopped_at.unwrap_or(0)) {
                match self.backend.destroy(&w.name).await {
                    Ok(()) => {
                        if let Err(e) =
                            self.store
                                .set_workload_state(&w.id, WorkloadStatus::Deleted, now)
                        {
                            tracing::error!(pod = %w.id, "cannot record deletion: {e}");
                            continue;
                        }
                        tracing::info!(pod = %w.id, "grace period over: workload deleted");
                        report.deleted.push(w.id.clone());
                    }
                    Err(e) => {
                        tracing::warn!(pod = %w.id, "cannot delete workload (retrying next pass): {e}")
                    }
                }
            }
        }
        report
    }

    /// Delete the expired workload that has been in its grace period longest, to free its slot.
    /// `true` when one was removed.
    pub(super) async fn evict_one_graced(&self) -> bool {
        let Ok(graced) = self.store.workloads_in_state(&[WorkloadStatus::Expired]) else {
            return false;
        };
        let mut graced = graced;
        graced.sort_by_key(|w| w.stopped_at.unwrap_or(0));
        for w in graced {
            let _pod = self.lock(&format!("pod:{}", w.id)).await;
            // Re-read under the lock: a top-up may have just resumed it.
            let Ok(Some(w)) = self.store.workload(&w.id) else {
                continue;
            };
            if w.state != WorkloadStatus::Expired {
                continue;
            }
            match self.backend.destroy(&w.name).await {
                Ok(()) | Err(BackendError::NotFound(_)) => {
                    if self
                        .store
                        .set_workload_state(&w.id, WorkloadStatus::Deleted, now_secs())
                        .is_ok()
                    {
                        tracing::info!(pod = %w.id, "graced workload deleted early: its slot went to a paying buyer");
                        return true;
                    }
                }
                Err(e) => tracing::warn!(pod = %w.id, "cannot delete a graced workload: {e}"),
            }
        }
        false
    }

    /// Remove a workload that will not be used (its spawn failed). If the backend cannot remove
    /// it now, it is kept as `destroying` (holding its port) and the reaper retries until gone.
    pub(super) async fn destroy_or_retry(&self, id: &str, name: &str) {
        let now = now_secs();
        let state = match self.backend.destroy(name).await {
            Ok(()) | Err(BackendError::NotFound(_)) => WorkloadStatus::Failed,
            Err(e) => {
                tracing::warn!(pod = %id, "cannot remove the workload yet (the reaper retries): {e}");
                WorkloadStatus::Destroying
            }
        };
        if let Err(e) = self.store.set_workload_state(id, state, now) {
            tracing::error!(pod = %id, "cannot record the workload's removal: {e}");
        }
    }

    /// Run the reaper every `reaper_interval_seconds` until `shutdown` fires.
    pub fn start_reaper(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        let every = Duration::from_secs(this.cfg.provider.reaper_interval_seconds);
        tokio::spawn(async move {
            // Settling talks to the mint and may wait on it; it gets its own loop so a mint
            // outage never delays expiry.
            let settler = {
                let this = Arc::clone(&this);
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tick.tick() => { this.settle_pending().await; }
                        }
                    }
                })
            };
            let _stop_settler = AbortOnDrop(settler);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        this.reap_at(now_secs()).await;
                        // Replay protection needs event ids only while requests are fresh.
                        let _ = this.store.prune_seen_events(now_secs().saturating_sub(SEEN_EVENTS_KEPT_SECONDS));
                    }
                }
            }
            // The reaper runs as long as the provider serves: when it ends, so does the warm pool.
            this.backend.stop_warm_pool().await;
        })
    }
}

/// Stops the settling loop with the reaper (also when the reaper's task is aborted).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
