//! The provider core: the money path.
//!
//! This file holds the requests (offers, spawn, top-up, status) and their shared validation and
//! replay logic, which read best side by side (hence a little over the usual file length);
//! `settle.rs` takes and returns money when the mint's answer is unclear, `expiry.rs` is the
//! reaper, `recovery.rs` the restart.
//!
//! Every door (MCP, ContextVM, Nostr DM, HTTP, CLI) calls these four operations — [`Provider::offers`],
//! [`Provider::spawn`], [`Provider::top_up`], [`Provider::status`] — and nothing else touches money.
//! The order inside `spawn` and `top_up` is the money rules of DESIGN.md, step by step:
//!
//! 1. Validate everything that can be validated while the token is untouched: request shape,
//!    tier, image, username, password, key, token encoding, mint whitelist, unit, face value
//!    against the minimum duration, and capacity (a host port is reserved before paying).
//! 2. Take the payment by swapping the proofs at the mint — the only proof of payment. Only a
//!    failure cdk calls definitive forgets the journal row; any other outcome is settled from
//!    what the mint signed for us (`crate::settlement`), then provisioned or refunded.
//! 3. Price from what was actually received: `floor(received_msats / rate_msats_per_sec)`.
//! 4. Any failure after the swap (backend error, cancellation) mints a refund token for the
//!    amount received and returns it in the error.
//! 5. Each step is journalled in the store before and after, so [`Provider::open`] can recover
//!    after a crash: a paid-but-unprovisioned request is finished or refunded, live workloads are
//!    re-adopted, orphans removed.
//! 6. Replays are harmless: the same token with the same request (or the same `request_id`)
//!    returns the first answer; the same token in a different request is `token_already_spent`.
//!
//! The part of a request that runs after the swap is moved onto its own task, so a door that
//! drops the future (a client hanging up) cannot strand money between "paid" and "done".

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nostr_sdk::prelude::Keys;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use crate::api::{
    Access, Capacity, Offers, PodStatus, ProviderInfo, SpawnRequest, SpawnResult, SpawnStage,
    StatusRequest, TopUpRequest, TopUpResult,
};
use crate::backend::{Backend, BackendError, WorkloadSpec, WorkloadState};
use crate::config::{Config, Tier};
use crate::error::{ErrorType, ProviderError};
use crate::identity;
use crate::payments::{Payments, RedeemError, TokenInfo};
use crate::secret::Secret;
use crate::settlement::Settlement;
use crate::store::{PaymentKind, PaymentRow, PaymentState, Store, WorkloadRow, WorkloadStatus};
use crate::validate;

mod expiry;
mod recovery;
mod settle;

/// Who is calling: the owner of a workload sees its access details in `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The local operator or a stdio MCP client: owns what it spawned with no identity.
    Local,
    /// A remote caller identified by a Nostr public key (hex).
    Nostr(String),
    /// A remote caller with no identity: may pay and top up, but owns nothing it can see later.
    Anonymous,
}

impl Caller {
    fn owner_key(&self) -> Option<String> {
        match self {
            Caller::Local => None,
            Caller::Nostr(pk) => Some(pk.clone()),
            // Recorded as an owner no caller can ever match.
            Caller::Anonymous => Some("anonymous".into()),
        }
    }
}

/// A progress callback: doors forward these to their clients.
pub type Progress = Arc<dyn Fn(SpawnStage) + Send + Sync>;

/// What the reaper did in one pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReapReport {
    pub stopped: Vec<String>,
    pub deleted: Vec<String>,
}

/// What recovery did at open.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Paid requests whose workload turned out to be up: finished.
    pub finished: usize,
    /// Paid requests that were refunded.
    pub refunded: usize,
    /// Swaps that never reached the mint: the token stays the buyer's.
    pub released: usize,
    /// Live workloads found on the backend and kept.
    pub adopted: usize,
    /// Workloads on the backend the store does not know as live: removed.
    pub orphans_removed: usize,
    /// Workloads the store thought live but the backend lost.
    pub lost: usize,
    /// Swaps whose outcome the mint could not tell yet: settled later in the background.
    pub unsettled: usize,
}

/// The response stored for replay: the first answer, success or error.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stored<T> {
    Ok(T),
    Err(ProviderError),
}

/// Why a payment was not taken.
enum Unpaid {
    /// Settled: no money of the buyer's is with us (refused, never swapped, spent elsewhere).
    Refused(ProviderError),
    /// Not settled yet: the journal row stays `unknown` and is settled later.
    Unsettled(ProviderError),
}

/// What a replay found in the journal.
enum Replayed<T> {
    /// The answer to give.
    Answer(Result<T, ProviderError>),
    /// The same request, whose swap outcome is still unknown: settle it now.
    Unknown(Box<PaymentRow>),
}

pub struct Provider {
    cfg: Config,
    keys: Keys,
    provider_id: String,
    store: Store,
    payments: Payments,
    backend: Arc<dyn Backend>,
    locks: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
    _dir_lock: crate::datadir_lock::DataDirLock,
    /// Spawns in flight per remote caller (bounded work per sender).
    in_flight: Arc<StdMutex<HashMap<String, u32>>>,
}

/// One remote caller's spawn in flight; gives its slot back when dropped.
struct SenderSlot {
    map: Arc<StdMutex<HashMap<String, u32>>>,
    who: String,
}

impl Drop for SenderSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.who);
            }
        }
    }
}

/// How long Nostr event ids are remembered for replay protection (the doors refuse requests
/// older than minutes, so a day is ample).
const SEEN_EVENTS_KEPT_SECONDS: u64 = 24 * 3600;

/// Current Unix time in seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds as RFC 3339 UTC (`2026-11-21T06:04:05Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn generate_password() -> Secret {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    Secret::new(
        (0..20)
            .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
            .collect::<String>(),
    )
}

fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

fn check_request_id(id: &Option<String>) -> Result<(), ProviderError> {
    if let Some(id) = id {
        if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control()) {
            return Err(ProviderError::invalid_request(
                "request_id must be 1-128 printable characters",
            ));
        }
    }
    Ok(())
}

fn check_pod_id(id: &str) -> Result<(), ProviderError> {
    if id.is_empty() || id.len() > 100 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ProviderError::invalid_request(
            "pod_npub must be the npub returned by spawn_pod",
        ));
    }
    Ok(())
}

fn from_stored<T: for<'de> Deserialize<'de>>(json: &str) -> Result<T, ProviderError> {
    match serde_json::from_str::<Stored<T>>(json) {
        Ok(Stored::Ok(v)) => Ok(v),
        Ok(Stored::Err(e)) => Err(e),
        Err(e) => Err(ProviderError::internal(format!(
            "stored response unreadable: {e}"
        ))),
    }
}

fn to_stored<T: Serialize>(r: &Result<T, ProviderError>) -> String {
    let s = match r {
        Ok(v) => serde_json::to_value(v).map(|v| serde_json::json!({ "ok": v })),
        Err(e) => serde_json::to_value(e).map(|v| serde_json::json!({ "err": v })),
    };
    s.map(|v| v.to_string()).unwrap_or_default()
}

fn backend_error_message(e: &BackendError) -> String {
    format!("the workload could not be created: {e}")
}

impl Provider {
    /// Build the core from a config and a backend, open its state, and recover from any crash.
    pub async fn open(
        cfg: Config,
        backend: Arc<dyn Backend>,
    ) -> Result<Arc<Provider>, ProviderError> {
        let dir_lock = Self::lock_data_dir(&cfg)?;
        Self::open_locked(cfg, backend, dir_lock).await
    }

    /// Create the data dir and take its lock (one process per data dir): before anything in it
    /// is read or written, the backend's own state included.
    pub fn lock_data_dir(cfg: &Config) -> Result<crate::datadir_lock::DataDirLock, ProviderError> {
        let data_dir = &cfg.provider.data_dir;
        std::fs::create_dir_all(data_dir).map_err(|e| {
            ProviderError::internal(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        crate::datadir_lock::DataDirLock::acquire(data_dir)
            .map_err(|e| ProviderError::internal(e.to_string()))
    }

    /// [`Provider::open`] with the data dir's lock already held.
    pub async fn open_locked(
        cfg: Config,
        backend: Arc<dyn Backend>,
        dir_lock: crate::datadir_lock::DataDirLock,
    ) -> Result<Arc<Provider>, ProviderError> {
        cfg.validate()
            .map_err(|e| ProviderError::internal(e.to_string()))?;
        let data_dir = cfg.provider.data_dir.clone();
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700));
        }
        let keys = match &cfg.nostr.private_key {
            Some(k) => identity::parse_secret_key(k, "NOSTR_PRIVATE_KEY"),
            None => {
                let file = cfg
                    .nostr
                    .private_key_file
                    .clone()
                    .unwrap_or_else(|| "nostr.key".into());
                identity::load_or_create(&data_dir.join(file))
            }
        }
        .map_err(|e| ProviderError::internal(e.to_string()))?;
        let store = Store::open(&data_dir.join("paygress.sqlite3"))?;
        let provider_id = store.meta_or_init("provider_id", || {
            let b: [u8; 6] = rand::random();
            hex::encode(b)
        })?;
        let payments = Payments::open(
            &data_dir,
            &cfg.payments.whitelisted_mints,
            Duration::from_secs(cfg.payments.mint_timeout_seconds),
        )
        .await?;
        let provider = Arc::new(Provider {
            cfg,
            keys,
            provider_id,
            store,
            payments,
            backend,
            locks: StdMutex::new(HashMap::new()),
            _dir_lock: dir_lock,
            in_flight: Arc::new(StdMutex::new(HashMap::new())),
        });
        let report = Box::pin(provider.recover()).await;
        tracing::info!(?report, "provider state recovered");
        // Recovery has settled what was sold; what is left warm and unsold is the pool's.
        provider
            .backend
            .start_warm_pool(
                &provider.provider_id,
                &provider.cfg.tiers,
                &provider.cfg.images.allowed,
            )
            .await;
        Ok(provider)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The provider's Nostr keys (doors that speak Nostr sign with them).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn npub(&self) -> String {
        identity::npub(&self.keys)
    }

    /// Marks this provider's workloads on the backend.
    pub fn provider_id(&self) -> &str {
        &self.provider_id
    }

    pub fn payments(&self) -> &Payments {
        &self.payments
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    // ---- offers -----------------------------------------------------------------------------

    /// What is for sale, at what price, from whom, and how much room is left.
    pub fn offers(&self) -> Offers {
        let live = self.store.live_count().unwrap_or(0);
        let mut cap = self.cfg.port_capacity();
        if self.cfg.provider.max_workloads > 0 {
            cap = cap.min(self.cfg.provider.max_workloads);
        }
        Offers {
            provider: ProviderInfo {
                npub: self.npub(),
                name: self.cfg.provider.name.clone(),
                location: self.cfg.provider.location.clone(),
            },
            minimum_duration_seconds: self.cfg.provider.minimum_duration_seconds,
            maximum_duration_seconds: self.cfg.provider.maximum_duration_seconds,
            whitelisted_mints: self.payments.mints().map(|m| m.to_string()).collect(),
            pod_specs: self.cfg.tiers.clone(),
            allowed_images: self.cfg.images.allowed.clone(),
            default_image: self.cfg.images.default.clone(),
            backend: self.backend.kind(),
            isolation: self.backend.isolation(),
            capacity: Capacity {
                available_slots: cap.saturating_sub(live),
                live_workloads: live,
            },
            expiry_grace_seconds: self.cfg.provider.expiry_grace_seconds,
            ssh_key_types: self
                .backend
                .login_key_types()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    // ---- spawn ------------------------------------------------------------------------------

    /// Buy a workload. See the module docs for the order of steps.
    pub async fn spawn(
        self: &Arc<Self>,
        req: SpawnRequest,
        caller: Caller,
        progress: Option<Progress>,
        cancel: CancellationToken,
    ) -> Result<SpawnResult, ProviderError> {
        // Bounded work: a remote caller gets a few spawns in flight, not a thousand.
        let _slot = self.sender_slot(&caller)?;
        // 1. Everything checkable with the token untouched.
        let tier = match req.pod_spec_id.as_deref() {
            None => self
                .cfg
                .tiers
                .first()
                .cloned()
                .ok_or_else(|| ProviderError::internal("no tiers"))?,
            Some(id) => self.cfg.tier(id).cloned().ok_or_else(|| {
                let ids: Vec<&str> = self.cfg.tiers.iter().map(|t| t.id.as_str()).collect();
                ProviderError::invalid_spec(format!(
                    "no tier {:?}; offered: {}",
                    id.chars().take(64).collect::<String>(),
                    ids.join(", ")
                ))
            })?,
        };
        let image = req
            .pod_image
            .clone()
            .unwrap_or_else(|| self.cfg.images.default.clone());
        if !self.cfg.images.allowed.contains(&image) {
            return Err(ProviderError::invalid_spec(format!(
                "image {:?} is not offered; allowed: {}",
                image.chars().take(64).collect::<String>(),
                self.cfg.images.allowed.join(", ")
            )));
        }
        validate::check_username(&req.ssh_username).map_err(ProviderError::invalid_request)?;
        if let Some(pw) = &req.ssh_password {
            validate::check_password(pw.expose()).map_err(ProviderError::invalid_request)?;
        }
        let public_key = match &req.ssh_public_key {
            Some(k) if !k.trim().is_empty() => {
                validate::check_public_key(k).map_err(ProviderError::invalid_request)?;
                // Every check before the swap: a key the backend cannot install is refused now.
                let kind = k.split_whitespace().next().unwrap_or("");
                let accepted = self.backend.login_key_types();
                if !accepted.contains(&kind) {
                    return Err(ProviderError::invalid_request(format!(
                        "the {} backend cannot install {kind} keys; use one of: {}",
                        self.backend.kind(),
                        accepted.join(", ")
                    ))
                    .with_details(serde_json::json!({ "ssh_key_types": accepted })));
                }
                Some(k.trim().to_string())
            }
            _ => None,
        };
        check_request_id(&req.request_id)?;
        let info = self.payments.inspect(req.cashu_token.expose())?;
        self.check_face_value(&info, &tier, self.cfg.provider.minimum_duration_seconds)?;
        self.check_disk()?;

        let fp = fingerprint(&[
            "spawn",
            &tier.id,
            &image,
            &req.ssh_username,
            req.ssh_password.as_ref().map(|p| p.expose()).unwrap_or(""),
            public_key.as_deref().unwrap_or(""),
            &caller.owner_key().unwrap_or_default(),
        ]);

        // Serialise everything that concerns this token.
        let mut guard = self.lock(&format!("token:{}", info.key)).await;
        match self.replay::<SpawnResult>(&info, PaymentKind::Spawn, &fp, &req.request_id)? {
            None => {}
            Some(Replayed::Answer(answer)) => return answer,
            Some(Replayed::Unknown(row)) => {
                // Settle on a task of its own (a provisioning may follow), under the token lock.
                let this = Arc::clone(self);
                let (p, c) = (progress.clone(), cancel.clone());
                let task = tokio::spawn(async move {
                    let _guard: OwnedMutexGuard<()> = guard;
                    this.resume_unknown_spawn(*row, p, c).await
                });
                let r = task.await.unwrap_or_else(|e| {
                    Err(ProviderError::internal(format!("spawn task failed: {e}")))
                });
                // Settled as never taken (the row is gone): the token is still the buyer's,
                // so this request goes on as a new one.
                let released = matches!(&r, Err(e) if e.error_type == ErrorType::PaymentFailed)
                    && self.store.payment(&info.key)?.is_none();
                if !released {
                    return r;
                }
                guard = self.lock(&format!("token:{}", info.key)).await;
                if let Some(Replayed::Answer(answer)) =
                    self.replay::<SpawnResult>(&info, PaymentKind::Spawn, &fp, &req.request_id)?
                {
                    return answer;
                }
            }
        }

        // Reserve a host port (capacity) before paying.
        let pod_keys = Keys::generate();
        let pod_id = identity::npub(&pod_keys);
        let name = format!("pg-{}", &pod_keys.public_key().to_hex()[..12]);
        let password = req.ssh_password.clone().unwrap_or_else(generate_password);
        let now = now_secs();
        let row = WorkloadRow {
            id: pod_id.clone(),
            name: name.clone(),
            tier: tier.clone(),
            image: image.clone(),
            ssh_username: req.ssh_username.clone(),
            ssh_password: password.clone(),
            ssh_public_key: public_key.clone(),
            host_port: 0,
            ssh_host: None,
            ssh_port: None,
            owner: caller.owner_key(),
            state: WorkloadStatus::Provisioning,
            created_at: now,
            expires_at: now,
            stopped_at: None,
            paid_msats: 0,
        };
        let p = &self.cfg.provider;
        let ports = self
            .backend
            .host_port_from_core()
            .then_some((p.ssh_port_range_start, p.ssh_port_range_end));
        let mut port =
            self.store
                .insert_workload_with_port(&row, ports, p.max_workloads, port_is_free)?;
        // Grace is a courtesy, not a reservation: when a paying buyer finds no room, the pod
        // longest in its grace period (paid time over, stopped) is deleted to make it.
        if port.is_none() && self.evict_one_graced().await {
            port =
                self.store
                    .insert_workload_with_port(&row, ports, p.max_workloads, port_is_free)?;
        }
        let port = port.ok_or_else(|| {
                ProviderError::new(
                    ErrorType::ResourceUnavailable,
                    "no capacity left right now (all SSH ports or workload slots are in use); try later",
                )
            })?;
        let row = WorkloadRow {
            host_port: port,
            ..row
        };

        // Journal before the swap; the token is kept until the swap settles (crash recovery).
        let journal = PaymentRow::before_swap(
            &info,
            PaymentKind::Spawn,
            fp,
            req.request_id.clone(),
            &pod_id,
            &req.cashu_token,
            now,
        );
        if !self.store.insert_payment(&journal, now)? {
            self.store
                .set_workload_state(&pod_id, WorkloadStatus::Failed, now)?;
            return Err(ProviderError::invalid_request(
                "request_id was already used with a different token",
            ));
        }
        crate::crashpoint::hit("spawn_journalled");
        report(&progress, SpawnStage::Validated);

        // 2-5 on a task of their own, so the money path finishes even if the caller goes away.
        let this = Arc::clone(self);
        let token = req.cashu_token.clone();
        let task = tokio::spawn(async move {
            let _guard: OwnedMutexGuard<()> = guard;
            this.spawn_paid_part(info, token, tier, row, progress, cancel)
                .await
        });
        task.await
            .unwrap_or_else(|e| Err(ProviderError::internal(format!("spawn task failed: {e}"))))
    }

    async fn spawn_paid_part(
        self: &Arc<Self>,
        info: TokenInfo,
        token: Secret,
        tier: Tier,
        row: WorkloadRow,
        progress: Option<Progress>,
        cancel: CancellationToken,
    ) -> Result<SpawnResult, ProviderError> {
        // 2. Swap.
        let received = match self.take_payment(&info.key, &info.mint_url, &token).await {
            Ok(m) => m,
            Err(Unpaid::Refused(e)) => return self.swap_failed(&info.key, Some(&row.id), e),
            Err(Unpaid::Unsettled(e)) => return Err(e),
        };
        crate::crashpoint::hit("spawn_swapped");
        self.provision_paid(
            &info.key,
            &info.mint_url,
            received,
            tier,
            row,
            progress,
            cancel,
        )
        .await
    }

    /// A replay of a spawn whose swap outcome was unknown: settle it with the mint, then finish
    /// the request as if the swap had answered. `None` from the settlement (the token was never
    /// taken) releases the reservation and answers so the buyer can send the request again.
    async fn resume_unknown_spawn(
        self: &Arc<Self>,
        row: PaymentRow,
        progress: Option<Progress>,
        cancel: CancellationToken,
    ) -> Result<SpawnResult, ProviderError> {
        if row.state == PaymentState::RefundPending {
            return Err(self.retry_refund::<SpawnResult>(&row).await);
        }
        let mint = self.payments.mint(&row.mint_url)?;
        let Some(token) = row.token.clone() else {
            return Err(ProviderError::internal("unknown swap without its token"));
        };
        let pod_id = row.pod_id.clone().unwrap_or_default();
        let received = match self.settle_bounded(&row.key, &mint, &token).await {
            Ok(m) => m,
            Err(Unpaid::Refused(e)) => return self.swap_failed(&row.key, Some(&pod_id), e),
            Err(Unpaid::Unsettled(e)) => return Err(e),
        };
        let Some(w) = self.store.workload(&pod_id)? else {
            return Err(self
                .refund_and_record::<SpawnResult>(
                    &row.key,
                    &mint,
                    received,
                    None,
                    ProviderError::new(
                        ErrorType::PodCreationFailed,
                        "the reserved workload is gone; the payment is refunded",
                    ),
                )
                .await);
        };
        let tier = w.tier.clone();
        self.provision_paid(&row.key, &mint, received, tier, w, progress, cancel)
            .await
    }

    /// The part of a spawn after the money is in: price, provision, answer.
    #[allow(clippy::too_many_arguments)]
    async fn provision_paid(
        self: &Arc<Self>,
        key: &str,
        mint: &cdk::mint_url::MintUrl,
        received: u64,
        tier: Tier,
        row: WorkloadRow,
        progress: Option<Progress>,
        cancel: CancellationToken,
    ) -> Result<SpawnResult, ProviderError> {
        let now = now_secs();
        // 3. Price from what was received.
        let duration =
            (received / tier.rate_msats_per_sec).min(self.cfg.provider.maximum_duration_seconds);
        let expires_at = now.saturating_add(duration);
        if let Err(e) = self
            .write_after_swap(|| {
                crate::failpoint::fail("spawn_paid")?;
                self.store
                    .mark_spawn_paid(key, received, &row.id, expires_at, now)
            })
            .await
        {
            return Err(self.refund_unjournalled(mint, received, e).await);
        }
        tracing::info!(pod = %row.id, received_msats = received, "spawn paid");
        crate::crashpoint::hit("spawn_paid");
        report(&progress, SpawnStage::Paid);
        if duration < self.cfg.provider.minimum_duration_seconds {
            let e = ProviderError::new(
                ErrorType::InsufficientPayment,
                format!(
                    "after mint fees {received} msat buys {duration} s, below the minimum of {} s",
                    self.cfg.provider.minimum_duration_seconds
                ),
            );
            return self
                .fail_spawn_after_swap(key, mint, received, &row, e)
                .await;
        }

        // 4. Provision, honouring cancellation.
        report(&progress, SpawnStage::Provisioning);
        let spec = WorkloadSpec {
            name: row.name.clone(),
            provider_id: self.provider_id.clone(),
            tier: tier.clone(),
            image: row.image.clone(),
            ssh_username: row.ssh_username.clone(),
            ssh_password: row.ssh_password.clone(),
            ssh_public_key: row.ssh_public_key.clone(),
            host_port: ports_reserved(&row),
            expires_at,
        };
        let spec_expires_at = expires_at;
        let backend = Arc::clone(&self.backend);
        let mut create = tokio::spawn(async move { backend.create(&spec).await });
        let outcome = tokio::select! {
            r = &mut create => r.unwrap_or_else(|e| Err(BackendError::Api(format!("create task: {e}")))),
            _ = cancel.cancelled() => {
                // Let the backend finish its own request (it cannot be interrupted cleanly), then
                // undo it below.
                let _ = create.await;
                Err(BackendError::Api("the request was cancelled by the client".into()))
            }
        };
        let endpoint = match outcome {
            Ok(endpoint) => endpoint,
            Err(e) => {
                let cancelled = cancel.is_cancelled();
                tracing::warn!(pod = %row.id, "provisioning failed: {e}");
                let err = ProviderError::new(
                    ErrorType::PodCreationFailed,
                    if cancelled {
                        "the spawn was cancelled; the payment is refunded".to_string()
                    } else {
                        backend_error_message(&e)
                    },
                );
                return self
                    .fail_spawn_after_swap(key, mint, received, &row, err)
                    .await;
            }
        };
        let row = WorkloadRow {
            ssh_host: endpoint.host.clone(),
            ssh_port: Some(endpoint.port),
            ..row
        };

        crate::crashpoint::hit("spawn_created");
        // 5. Done. Paid time starts now that the workload is ready, not at the swap.
        let ready = now_secs();
        let expires_at = ready.saturating_add(duration);
        if expires_at != spec_expires_at {
            if let Err(e) = self.backend.extend(&row.name, expires_at).await {
                tracing::warn!(pod = %row.id, "cannot move the backend's deadline mark: {e}");
            }
        }
        let result: Result<SpawnResult, ProviderError> =
            Ok(self.spawn_result(&row, &tier, expires_at, duration, received));
        self.store.complete_spawn(
            key,
            &row.id,
            expires_at,
            (row.ssh_host.as_deref(), endpoint.port),
            &to_stored(&result),
            ready,
        )?;
        crate::crashpoint::hit("spawn_completed");
        report(&progress, SpawnStage::Ready);
        tracing::info!(pod = %row.id, port = endpoint.port, duration, "workload running");
        result
    }

    /// Where buyers SSH to `row`: the backend's answer, else the provider's own host and the
    /// port the core reserved.
    fn endpoint_of(&self, row: &WorkloadRow) -> (String, u16) {
        let host = row
            .ssh_host
            .clone()
            .unwrap_or_else(|| self.cfg.provider.ssh_host.clone());
        (host, row.ssh_port.unwrap_or(row.host_port))
    }

    fn spawn_result(
        &self,
        row: &WorkloadRow,
        tier: &Tier,
        expires_at: u64,
        duration: u64,
        paid: u64,
    ) -> SpawnResult {
        let (host, port) = self.endpoint_of(row);
        let ssh = format!("ssh -p {} {}@{}", port, row.ssh_username, host);
        SpawnResult {
            pod_npub: row.id.clone(),
            host: host.clone(),
            node_port: port,
            ssh_username: row.ssh_username.clone(),
            ssh_password: row.ssh_password.clone(),
            expires_at: rfc3339(expires_at),
            duration_seconds: duration,
            paid_msats: paid,
            cpu_millicores: tier.cpu_millicores,
            memory_mb: tier.memory_mb,
            pod_spec_id: tier.id.clone(),
            pod_spec_name: tier.name.clone(),
            pod_spec_description: tier.description.clone(),
            image: row.image.clone(),
            instructions: vec![
                format!("Log in: {ssh}"),
                format!(
                    "The pod runs until {} ({duration} s paid). Extend it with topup_pod {{pod_npub: \"{}\", cashu_token}} at {} msat/s.",
                    rfc3339(expires_at),
                    row.id,
                    tier.rate_msats_per_sec
                ),
                format!("Check it with get_pod_status {{pod_npub: \"{}\"}}.", row.id),
            ],
            ssh_host_key_fingerprints: self.backend.host_key_fingerprints(&row.name),
        }
    }

    /// The swap did not happen. If the mint says spent, remember the answer (replays get it);
    /// otherwise forget the journal row so the buyer can retry with the same token.
    /// `reserved` is a workload reserved for this payment (a spawn's), released here.
    fn swap_failed<T: Serialize>(
        &self,
        key: &str,
        reserved: Option<&str>,
        e: ProviderError,
    ) -> Result<T, ProviderError> {
        let now = now_secs();
        if let Some(pod_id) = reserved {
            self.store
                .set_workload_state(pod_id, WorkloadStatus::Failed, now)?;
        }
        if e.error_type == ErrorType::TokenAlreadySpent || e.error_type == ErrorType::InvalidToken {
            let r: Result<T, ProviderError> = Err(e.clone());
            self.store.finish_payment(
                key,
                PaymentState::Rejected,
                None,
                None,
                &to_stored(&r),
                now,
            )?;
        } else {
            self.store.forget_payment(key)?;
        }
        Err(e)
    }

    /// Undo a paid spawn: remove anything made, refund, record the answer.
    async fn fail_spawn_after_swap(
        &self,
        key: &str,
        mint: &cdk::mint_url::MintUrl,
        received: u64,
        row: &WorkloadRow,
        err: ProviderError,
    ) -> Result<SpawnResult, ProviderError> {
        self.destroy_or_retry(&row.id, &row.name).await;
        Err(self
            .refund_and_record::<SpawnResult>(key, mint, received, Some(&row.id), err)
            .await)
    }

    fn sender_slot(&self, caller: &Caller) -> Result<Option<SenderSlot>, ProviderError> {
        let Caller::Nostr(pk) = caller else {
            return Ok(None);
        };
        let cap = self.cfg.provider.max_concurrent_per_sender;
        let mut m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(pk.clone()).or_insert(0);
        if cap > 0 && *n >= cap {
            return Err(ProviderError::new(
                ErrorType::ResourceUnavailable,
                format!("{cap} of your spawns are still in progress; wait for them to finish (your token is untouched)"),
            ));
        }
        *n += 1;
        Ok(Some(SenderSlot {
            map: Arc::clone(&self.in_flight),
            who: pk.clone(),
        }))
    }

    /// Refuse a payment (untouched) when the journal may not be able to record it.
    fn check_disk(&self) -> Result<(), ProviderError> {
        let want = self
            .cfg
            .provider
            .min_free_disk_mb
            .saturating_mul(1024 * 1024);
        match crate::fsutil::free_bytes(&self.cfg.provider.data_dir) {
            Ok(free) if free < want => Err(ProviderError::new(
                ErrorType::ResourceUnavailable,
                "the provider is low on disk space and takes no payments right now; try later (your token is untouched)",
            )),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!("cannot read free disk space: {e}");
                Ok(())
            }
        }
    }

    fn check_face_value(
        &self,
        info: &TokenInfo,
        tier: &Tier,
        min_seconds: u64,
    ) -> Result<(), ProviderError> {
        let seconds = info.face_msats / tier.rate_msats_per_sec;
        // Nothing kept that buys nothing: a payment one purchase cannot use is refused untouched.
        let max = self.cfg.provider.maximum_duration_seconds;
        if seconds > max {
            let most = max.saturating_mul(tier.rate_msats_per_sec);
            return Err(ProviderError::invalid_request(format!(
                "the token is worth {} msat, which buys {seconds} s of {}; one payment buys at most {max} s ({} sat): send a smaller token",
                info.face_msats,
                tier.id,
                most / 1000
            ))
            .with_details(serde_json::json!({
                "offered_msats": info.face_msats,
                "maximum_msats": most,
                "maximum_duration_seconds": max,
            })));
        }
        if seconds < min_seconds {
            let needed = min_seconds.saturating_mul(tier.rate_msats_per_sec);
            return Err(ProviderError::new(
                ErrorType::InsufficientPayment,
                format!(
                    "the token is worth {} msat, which buys {seconds} s of {}; at least {min_seconds} s ({} sat) is needed",
                    info.face_msats,
                    tier.id,
                    needed.div_ceil(1000)
                ),
            )
            .with_details(serde_json::json!({
                "offered_msats": info.face_msats,
                "required_msats": needed,
                "rate_msats_per_sec": tier.rate_msats_per_sec,
                "minimum_duration_seconds": min_seconds,
            })));
        }
        Ok(())
    }

    /// Replay detection, under the token lock.
    fn replay<T: for<'de> Deserialize<'de>>(
        &self,
        info: &TokenInfo,
        kind: PaymentKind,
        fp: &str,
        request_id: &Option<String>,
    ) -> Result<Option<Replayed<T>>, ProviderError> {
        let answer = |r| Ok(Some(Replayed::Answer(r)));
        if let Some(id) = request_id {
            if let Some(row) = self.store.payment_by_request_id(id)? {
                if row.key != info.key {
                    return answer(Err(ProviderError::invalid_request(
                        "request_id was already used with a different token",
                    )));
                }
            }
        }
        let Some(row) = self.store.payment(&info.key)? else {
            return Ok(None);
        };
        if row.kind != kind || row.fingerprint != fp {
            return answer(Err(ProviderError::new(
                ErrorType::TokenAlreadySpent,
                "this token was already used for another request",
            )));
        }
        match (&row.state, &row.response) {
            (_, Some(resp)) if !resp.is_empty() => answer(from_stored(resp)),
            (PaymentState::Unknown | PaymentState::RefundPending, _) => {
                Ok(Some(Replayed::Unknown(Box::new(row))))
            }
            _ => answer(Err(ProviderError::new(
                ErrorType::PaymentFailed,
                "this payment is still being settled; repeat the same request shortly",
            ))),
        }
    }

    async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            // Drop entries nobody holds, so the map does not grow without bound.
            if locks.len() > 1024 {
                locks.retain(|_, v| Arc::strong_count(v) > 1);
            }
            Arc::clone(locks.entry(key.to_string()).or_default())
        };
        m.lock_owned().await
    }

    // ---- top-up -----------------------------------------------------------------------------

    /// Add paid time to a workload. A top-up of an expired (stopped) workload within the grace
    /// period resumes it.
    pub async fn top_up(self: &Arc<Self>, req: TopUpRequest) -> Result<TopUpResult, ProviderError> {
        check_pod_id(&req.pod_npub)?;
        check_request_id(&req.request_id)?;
        let info = self.payments.inspect(req.cashu_token.expose())?;
        let fp = fingerprint(&["topup", &req.pod_npub]);

        let guard = self.lock(&format!("token:{}", info.key)).await;
        // A replay first: its answer (a refund, say) stands even if the pod is gone since.
        match self.replay::<TopUpResult>(&info, PaymentKind::TopUp, &fp, &req.request_id)? {
            None => {}
            Some(Replayed::Answer(answer)) => return answer,
            Some(Replayed::Unknown(row)) => {
                let this = Arc::clone(self);
                let task = tokio::spawn(async move {
                    let _guard = guard;
                    this.resume_unknown_top_up(*row).await
                });
                return task.await.unwrap_or_else(|e| {
                    Err(ProviderError::internal(format!("top-up task failed: {e}")))
                });
            }
        }
        let w = self
            .store
            .workload(&req.pod_npub)?
            .filter(|w| matches!(w.state, WorkloadStatus::Running | WorkloadStatus::Expired))
            .ok_or_else(|| ProviderError::not_found(&req.pod_npub))?;
        self.check_face_value(&info, &w.tier, 1)?;
        self.check_disk()?;
        let now = now_secs();
        let journal = PaymentRow::before_swap(
            &info,
            PaymentKind::TopUp,
            fp,
            req.request_id.clone(),
            &w.id,
            &req.cashu_token,
            now,
        );
        if !self.store.insert_payment(&journal, now)? {
            return Err(ProviderError::invalid_request(
                "request_id was already used with a different token",
            ));
        }
        crate::crashpoint::hit("topup_journalled");
        let this = Arc::clone(self);
        let token = req.cashu_token.clone();
        let task = tokio::spawn(async move {
            let _guard = guard;
            this.top_up_paid_part(info, token, w.id).await
        });
        task.await
            .unwrap_or_else(|e| Err(ProviderError::internal(format!("top-up task failed: {e}"))))
    }

    /// A replay of a top-up whose swap outcome was unknown (or whose refund is pending).
    async fn resume_unknown_top_up(
        self: &Arc<Self>,
        row: PaymentRow,
    ) -> Result<TopUpResult, ProviderError> {
        if row.state == PaymentState::RefundPending {
            return Err(self.retry_refund::<TopUpResult>(&row).await);
        }
        let mint = self.payments.mint(&row.mint_url)?;
        let Some(token) = row.token.clone() else {
            return Err(ProviderError::internal("unknown swap without its token"));
        };
        let pod_id = row.pod_id.clone().unwrap_or_default();
        let _pod = self.lock(&format!("pod:{pod_id}")).await;
        let received = match self.settle_bounded(&row.key, &mint, &token).await {
            Ok(m) => m,
            Err(Unpaid::Refused(e)) => return self.swap_failed(&row.key, None, e),
            Err(Unpaid::Unsettled(e)) => return Err(e),
        };
        self.extend_paid(&row.key, &mint, received, &pod_id).await
    }

    async fn top_up_paid_part(
        self: &Arc<Self>,
        info: TokenInfo,
        token: Secret,
        pod_id: String,
    ) -> Result<TopUpResult, ProviderError> {
        // The reaper takes the same lock: a workload is never stopped halfway through a top-up.
        let _pod = self.lock(&format!("pod:{pod_id}")).await;
        // Re-check under the lock, before the swap: the reaper may have deleted it meanwhile.
        let alive = matches!(
            self.store.workload(&pod_id)?,
            Some(w) if matches!(w.state, WorkloadStatus::Running | WorkloadStatus::Expired)
        );
        if !alive {
            self.store.forget_payment(&info.key)?;
            return Err(ProviderError::not_found(&pod_id));
        }
        let received = match self.take_payment(&info.key, &info.mint_url, &token).await {
            Ok(m) => m,
            Err(Unpaid::Refused(e)) => return self.swap_failed(&info.key, None, e),
            Err(Unpaid::Unsettled(e)) => return Err(e),
        };
        crate::crashpoint::hit("topup_swapped");
        self.extend_paid(&info.key, &info.mint_url, received, &pod_id)
            .await
    }

    /// The part of a top-up after the money is in (the caller holds the pod lock).
    async fn extend_paid(
        self: &Arc<Self>,
        key: &str,
        mint: &cdk::mint_url::MintUrl,
        received: u64,
        pod_id: &str,
    ) -> Result<TopUpResult, ProviderError> {
        let info = TokenInfo {
            key: key.to_string(),
            mint_url: mint.clone(),
            face_msats: 0,
        };
        let pod_id = pod_id.to_string();
        let now = now_secs();
        if let Err(e) = self
            .write_after_swap(|| {
                crate::failpoint::fail("topup_paid")?;
                self.store.mark_paid(&info.key, received, now)
            })
            .await
        {
            return Err(self.refund_unjournalled(mint, received, e).await);
        }
        // Re-read: the reaper may have moved it while we were paying.
        let w = match self.store.workload(&pod_id)? {
            Some(w) if matches!(w.state, WorkloadStatus::Running | WorkloadStatus::Expired) => w,
            _ => {
                let e = ProviderError::not_found(&pod_id);
                return Err(self
                    .refund_and_record::<TopUpResult>(
                        &info.key,
                        &info.mint_url,
                        received,
                        Some(&pod_id),
                        e,
                    )
                    .await);
            }
        };
        let added =
            (received / w.tier.rate_msats_per_sec).min(self.cfg.provider.maximum_duration_seconds);
        if added == 0 {
            let e = ProviderError::new(
                ErrorType::InsufficientPayment,
                format!(
                    "after mint fees {received} msat buys no time at {} msat/s; the payment is refunded",
                    w.tier.rate_msats_per_sec
                ),
            );
            return Err(self
                .refund_and_record::<TopUpResult>(
                    &info.key,
                    &info.mint_url,
                    received,
                    Some(&w.id),
                    e,
                )
                .await);
        }
        crate::crashpoint::hit("topup_paid");
        let new_expires = w.expires_at.max(now).saturating_add(added);
        let mut result = self.backend.extend(&w.name, new_expires).await;
        if result.is_ok() && w.state == WorkloadStatus::Expired {
            result = match self.backend.resume(&w.name).await {
                Ok(endpoint) => self
                    .store
                    .set_workload_endpoint(&w.id, endpoint.host.as_deref(), endpoint.port)
                    .map_err(|e| BackendError::Api(format!("recording the endpoint: {e}"))),
                Err(e) => Err(e),
            };
        }
        if result.is_ok() {
            crate::crashpoint::hit("topup_extended");
        }
        if let Err(e) = result {
            tracing::warn!(pod = %w.id, "top-up could not extend the workload: {e}");
            let err = ProviderError::new(
                ErrorType::PodCreationFailed,
                format!("the workload could not be extended: {e}"),
            );
            return Err(self
                .refund_and_record::<TopUpResult>(
                    &info.key,
                    &info.mint_url,
                    received,
                    Some(&w.id),
                    err,
                )
                .await);
        }
        let result: Result<TopUpResult, ProviderError> = Ok(TopUpResult {
            success: true,
            pod_npub: w.id.clone(),
            extended_duration_seconds: added,
            new_expires_at: rfc3339(new_expires),
            paid_msats: received,
            message: if w.state == WorkloadStatus::Expired {
                format!(
                    "pod resumed and extended by {added} s until {}",
                    rfc3339(new_expires)
                )
            } else {
                format!("pod extended by {added} s until {}", rfc3339(new_expires))
            },
        });
        // The new deadline and the finished payment commit together.
        self.store.complete_top_up(
            &info.key,
            &w.id,
            new_expires,
            received,
            &to_stored(&result),
            now_secs(),
        )?;
        tracing::info!(pod = %w.id, added, "workload topped up");
        result
    }

    // ---- status -----------------------------------------------------------------------------

    /// Describe a workload. Access details only for its owner.
    pub async fn status(
        &self,
        req: StatusRequest,
        caller: &Caller,
    ) -> Result<PodStatus, ProviderError> {
        check_pod_id(&req.pod_npub)?;
        let w = self
            .store
            .workload(&req.pod_npub)?
            .ok_or_else(|| ProviderError::not_found(&req.pod_npub))?;
        let now = now_secs();
        let owner = *caller != Caller::Anonymous && w.owner == caller.owner_key();
        let live = matches!(
            w.state,
            WorkloadStatus::Running | WorkloadStatus::Expired | WorkloadStatus::Provisioning
        );
        let (host, port) = self.endpoint_of(&w);
        Ok(PodStatus {
            pod_npub: w.id.clone(),
            state: w.state.as_str().to_string(),
            expires_at: rfc3339(w.expires_at),
            seconds_remaining: if w.state == WorkloadStatus::Running {
                w.expires_at.saturating_sub(now)
            } else {
                0
            },
            delete_after: (w.state == WorkloadStatus::Expired).then(|| {
                rfc3339(
                    w.stopped_at
                        .unwrap_or(now)
                        .saturating_add(self.cfg.provider.expiry_grace_seconds),
                )
            }),
            pod_spec: w.tier.clone(),
            image: w.image.clone(),
            paid_msats: w.paid_msats,
            access: (owner && live).then(|| Access {
                ssh_command: format!("ssh -p {} {}@{}", port, w.ssh_username, host),
                host,
                node_port: port,
                ssh_username: w.ssh_username.clone(),
                ssh_password: w.ssh_password.clone(),
            }),
        })
    }
}

fn report(progress: &Option<Progress>, stage: SpawnStage) {
    if let Some(p) = progress {
        p(stage);
    }
}

/// The host port the core reserved for a workload's SSH forward, if it reserved one.
fn ports_reserved(row: &WorkloadRow) -> Option<u16> {
    (row.host_port > 0).then_some(row.host_port)
}

/// A host port is usable if nothing on the host listens on it right now.
fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_327_445), "2026-11-22T06:04:05Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn stored_roundtrip() {
        let e: Result<u32, ProviderError> = Err(ProviderError::not_found("x"));
        let back: Result<u32, ProviderError> = from_stored(&to_stored(&e));
        assert_eq!(back.unwrap_err().error_type, ErrorType::PodNotFound);
        let ok: Result<u32, ProviderError> = Ok(7);
        assert_eq!(from_stored::<u32>(&to_stored(&ok)).unwrap(), 7);
    }
}
