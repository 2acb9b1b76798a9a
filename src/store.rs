//! The state store: workloads, the payments journal, seen events (SQLite).
//!
//! Money rule 5 says every step is written down before and after it happens, so that a crash at
//! any point can be recovered: this is where. The journal row for a payment is created before the
//! swap (`swapping`), moved to `paid` after it, to `completed` or `refunded` at the end, and holds
//! the first response so a replay returns it verbatim. Host ports are derived from live workload
//! rows (a partial unique index makes a double allocation impossible), so the port allocator
//! survives restarts without a table of its own.
//!
//! rusqlite is synchronous; every statement here is short, so the connection sits behind a plain
//! mutex that is never held across an `.await`, and on a multi-threaded runtime each call runs
//! under `block_in_place` so a journal fsync never stalls other tasks on that worker.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::config::Tier;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("store lock poisoned")]
    Poisoned,
}

/// Where a payment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentState {
    /// Validated; the swap is about to happen or is under way.
    Swapping,
    /// The swap may or may not have happened (the mint's answer was lost, late or odd). Kept,
    /// with our swap outputs, until the mint tells what was received (`crate::settlement`).
    Unknown,
    /// The mint accepted the swap: the provider holds the money.
    Paid,
    /// Done: compute was delivered (workload created or extended).
    Completed,
    /// Failed after the swap; a refund token was minted and stored.
    Refunded,
    /// Failed after the swap and the refund could not be minted yet (mint unreachable).
    RefundPending,
    /// Refused by the mint (spent, invalid): no money moved.
    Rejected,
}

impl PaymentState {
    fn as_str(self) -> &'static str {
        match self {
            PaymentState::Swapping => "swapping",
            PaymentState::Unknown => "unknown",
            PaymentState::Paid => "paid",
            PaymentState::Completed => "completed",
            PaymentState::Refunded => "refunded",
            PaymentState::RefundPending => "refund_pending",
            PaymentState::Rejected => "rejected",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "swapping" => PaymentState::Swapping,
            "unknown" => PaymentState::Unknown,
            "paid" => PaymentState::Paid,
            "completed" => PaymentState::Completed,
            "refunded" => PaymentState::Refunded,
            "refund_pending" => PaymentState::RefundPending,
            "rejected" => PaymentState::Rejected,
            other => return Err(StoreError::Corrupt(format!("payment state {other:?}"))),
        })
    }
}

/// What a payment buys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentKind {
    Spawn,
    TopUp,
}

impl PaymentKind {
    fn as_str(self) -> &'static str {
        match self {
            PaymentKind::Spawn => "spawn",
            PaymentKind::TopUp => "topup",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "spawn" => Ok(PaymentKind::Spawn),
            "topup" => Ok(PaymentKind::TopUp),
            other => Err(StoreError::Corrupt(format!("payment kind {other:?}"))),
        }
    }
}

/// One row of the payments journal.
#[derive(Debug, Clone)]
pub struct PaymentRow {
    /// The token's proof identity ([`crate::payments::TokenInfo::key`]).
    pub key: String,
    pub kind: PaymentKind,
    /// Hash of the request without the token: tells a replay from a second use.
    pub fingerprint: String,
    pub request_id: Option<String>,
    pub pod_id: Option<String>,
    pub mint_url: String,
    pub face_msats: u64,
    pub received_msats: Option<u64>,
    pub state: PaymentState,
    /// The token, kept only while the swap is unsettled so a crash can be recovered.
    pub token: Option<Secret>,
    pub refund_token: Option<Secret>,
    /// The first response (JSON of `Result<_, ProviderError>`), replayed verbatim.
    pub response: Option<String>,
    pub created_at: u64,
    /// Our swap requests for this token (their blinded outputs), journalled when the outcome
    /// was unknown so the mint can be asked later what it signed.
    pub attempts: Vec<crate::settlement::SwapAttempt>,
    /// Until this time a swap request of ours may still be on its way to the mint.
    pub in_flight_until: u64,
    /// The wallet operation minting this payment's refund, journalled before the token is made.
    pub refund_op: Option<String>,
    /// Why this payment is being refunded (the error body without its token, JSON), journalled
    /// when the refund starts so a refund finished after a restart gives the buyer the same
    /// reason the first answer would have.
    pub refund_reason: Option<String>,
}

impl PaymentRow {
    /// The journal row written just before a swap: the token is kept until the swap settles so
    /// a crash in between can be recovered.
    #[allow(clippy::too_many_arguments)]
    pub fn before_swap(
        info: &crate::payments::TokenInfo,
        kind: PaymentKind,
        fingerprint: String,
        request_id: Option<String>,
        pod_id: &str,
        token: &Secret,
        now: u64,
    ) -> PaymentRow {
        PaymentRow {
            key: info.key.clone(),
            kind,
            fingerprint,
            request_id,
            pod_id: Some(pod_id.to_string()),
            mint_url: info.mint_url.to_string(),
            face_msats: info.face_msats,
            received_msats: None,
            state: PaymentState::Swapping,
            token: Some(token.clone()),
            refund_token: None,
            response: None,
            created_at: now,
            attempts: Vec::new(),
            in_flight_until: 0,
            refund_op: None,
            refund_reason: None,
        }
    }
}

/// Where a workload is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadStatus {
    /// Paid, being created on the backend.
    Provisioning,
    Running,
    /// Paid time ran out; stopped, resumable by a top-up until the grace period ends.
    Expired,
    /// Removed from the backend.
    Deleted,
    /// Creation failed (the payment was refunded).
    Failed,
    /// Creation failed and the backend could not remove it yet: holds its port; the reaper
    /// retries the removal until it is gone (then `failed`).
    Destroying,
}

impl WorkloadStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadStatus::Provisioning => "provisioning",
            WorkloadStatus::Running => "running",
            WorkloadStatus::Expired => "expired",
            WorkloadStatus::Deleted => "deleted",
            WorkloadStatus::Failed => "failed",
            WorkloadStatus::Destroying => "destroying",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "provisioning" => WorkloadStatus::Provisioning,
            "running" => WorkloadStatus::Running,
            "expired" => WorkloadStatus::Expired,
            "deleted" => WorkloadStatus::Deleted,
            "failed" => WorkloadStatus::Failed,
            "destroying" => WorkloadStatus::Destroying,
            other => return Err(StoreError::Corrupt(format!("workload state {other:?}"))),
        })
    }
    /// Holds its host port.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            WorkloadStatus::Provisioning
                | WorkloadStatus::Running
                | WorkloadStatus::Expired
                | WorkloadStatus::Destroying
        )
    }
}

/// One workload.
#[derive(Debug, Clone)]
pub struct WorkloadRow {
    /// Public id (`pod_npub`).
    pub id: String,
    /// Backend name.
    pub name: String,
    pub tier: Tier,
    pub image: String,
    pub ssh_username: String,
    pub ssh_password: Secret,
    pub ssh_public_key: Option<String>,
    /// Host port the core reserved for the SSH forward; 0 when the backend chooses its own
    /// endpoint (see `Backend::host_port_from_core`).
    pub host_port: u16,
    /// Where buyers SSH to, as the backend answered; `None` until then, and for rows written
    /// before endpoints were stored (those are `provider.ssh_host:host_port`).
    pub ssh_host: Option<String>,
    pub ssh_port: Option<u16>,
    /// Who may see access details (a Nostr pubkey hex), `None` for the local operator/stdio.
    pub owner: Option<String>,
    pub state: WorkloadStatus,
    pub created_at: u64,
    pub expires_at: u64,
    pub stopped_at: Option<u64>,
    pub paid_msats: u64,
}

pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = r#"
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS payments (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    request_id TEXT UNIQUE,
    pod_id TEXT,
    mint_url TEXT NOT NULL,
    face_msats INTEGER NOT NULL,
    received_msats INTEGER,
    state TEXT NOT NULL,
    token TEXT,
    refund_token TEXT,
    response TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    attempts TEXT,
    in_flight_until INTEGER NOT NULL DEFAULT 0,
    refund_op TEXT,
    refund_reason TEXT
);
CREATE INDEX IF NOT EXISTS payments_state ON payments(state);
CREATE TABLE IF NOT EXISTS workloads (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    tier_json TEXT NOT NULL,
    image TEXT NOT NULL,
    ssh_username TEXT NOT NULL,
    ssh_password TEXT NOT NULL,
    ssh_public_key TEXT,
    host_port INTEGER NOT NULL,
    owner TEXT,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    stopped_at INTEGER,
    paid_msats INTEGER NOT NULL,
    ssh_host TEXT,
    ssh_port INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS workloads_live_port3 ON workloads(host_port)
    WHERE host_port > 0 AND state IN ('provisioning', 'running', 'expired', 'destroying');
CREATE INDEX IF NOT EXISTS workloads_state_expires ON workloads(state, expires_at);
CREATE INDEX IF NOT EXISTS workloads_state_stopped ON workloads(state, stopped_at);
CREATE TABLE IF NOT EXISTS seen_events (
    id TEXT PRIMARY KEY,
    response TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_events_created ON seen_events(created_at);
"#;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Open (creating) the store at `path`, file mode 0600.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let run = || {
            let mut guard = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
            f(&mut guard)
        };
        // A journal write waits for fsync. On the multi-threaded runtime the binaries use, tell
        // tokio this thread blocks, so other tasks move to other workers meanwhile; elsewhere
        // (a current-thread runtime, plain threads) just run it.
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi {
            tokio::task::block_in_place(run)
        } else {
            run()
        }
    }

    /// A value from the meta table, if it was ever set.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            Ok(c.query_row("SELECT v FROM meta WHERE k = ?1", [key], |r| {
                r.get::<_, String>(0)
            })
            .optional()?)
        })
    }

    /// A value from the meta table, created with `init` on first use.
    pub fn meta_or_init(
        &self,
        key: &str,
        init: impl FnOnce() -> String,
    ) -> Result<String, StoreError> {
        self.with(|c| {
            if let Some(v) = c
                .query_row("SELECT v FROM meta WHERE k = ?1", [key], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?
            {
                return Ok(v);
            }
            let v = init();
            c.execute("INSERT INTO meta (k, v) VALUES (?1, ?2)", params![key, v])?;
            Ok(v)
        })
    }

    // ---- payments journal -------------------------------------------------------------------

    /// Record a payment about to be swapped. Returns `false` (and writes nothing) when a row with
    /// this token key or request id exists already.
    pub fn insert_payment(&self, p: &PaymentRow, now: u64) -> Result<bool, StoreError> {
        self.with(|c| {
            let n = c.execute(
                "INSERT OR IGNORE INTO payments (key, kind, fingerprint, request_id, pod_id, mint_url,
                    face_msats, received_msats, state, token, refund_token, response, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8, ?9, NULL, NULL, ?10, ?10)",
                params![
                    p.key,
                    p.kind.as_str(),
                    p.fingerprint,
                    p.request_id,
                    p.pod_id,
                    p.mint_url,
                    to_i64(p.face_msats),
                    p.state.as_str(),
                    p.token.as_ref().map(|t| t.expose().to_string()),
                    to_i64(now),
                ],
            );
            match n {
                Ok(n) => Ok(n == 1),
                // A request id used before with another token.
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Ok(false)
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    pub fn payment(&self, key: &str) -> Result<Option<PaymentRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("{PAYMENT_SELECT} WHERE key = ?1"),
                [key],
                payment_from_row,
            )
            .optional()?
            .transpose()
        })
    }

    pub fn payment_by_request_id(&self, id: &str) -> Result<Option<PaymentRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("{PAYMENT_SELECT} WHERE request_id = ?1"),
                [id],
                payment_from_row,
            )
            .optional()?
            .transpose()
        })
    }

    pub fn payments_in_state(
        &self,
        states: &[PaymentState],
    ) -> Result<Vec<PaymentRow>, StoreError> {
        self.with(|c| {
            let mut out = Vec::new();
            let mut stmt = c.prepare(&format!("{PAYMENT_SELECT} WHERE state = ?1"))?;
            for s in states {
                for row in stmt.query_map([s.as_str()], payment_from_row)? {
                    out.push(row??);
                }
            }
            Ok(out)
        })
    }

    /// Remove a journal row whose swap never happened (the token is still the buyer's), so the
    /// same token can be tried again.
    pub fn forget_payment(&self, key: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM payments WHERE key = ?1 AND state IN ('swapping', 'unknown')",
                [key],
            )?;
            Ok(())
        })
    }

    /// The swap's outcome is unknown: keep the row (and the token) with our swap outputs, added
    /// to any journalled before.
    pub fn mark_unknown(
        &self,
        key: &str,
        attempts: &[crate::settlement::SwapAttempt],
        in_flight_until: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let old: Option<String> = tx
                .query_row("SELECT attempts FROM payments WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()?
                .flatten();
            let mut all: Vec<crate::settlement::SwapAttempt> = old
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok())
                .unwrap_or_default();
            for a in attempts {
                if !all.contains(a) {
                    all.push(a.clone());
                }
            }
            let json =
                serde_json::to_string(&all).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "UPDATE payments SET state = 'unknown', attempts = ?2,
                    in_flight_until = MAX(in_flight_until, ?3), updated_at = ?4
                 WHERE key = ?1 AND state IN ('swapping', 'unknown')",
                params![key, json, to_i64(in_flight_until), to_i64(now)],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The swap succeeded: the provider holds `received_msats`. The token is no longer needed.
    pub fn mark_paid(&self, key: &str, received_msats: u64, now: u64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE payments SET state = 'paid', received_msats = ?2, token = NULL, updated_at = ?3
                 WHERE key = ?1",
                params![key, to_i64(received_msats), to_i64(now)],
            )?;
            Ok(())
        })
    }

    /// A refund for this payment is being minted by wallet operation `op`.
    /// Journal why a payment is refunded; the first reason stays.
    pub fn set_refund_reason(&self, key: &str, reason: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE payments SET refund_reason = ?2 WHERE key = ?1 AND refund_reason IS NULL",
                params![key, reason],
            )?;
            Ok(())
        })
    }

    pub fn set_refund_op(&self, key: &str, op: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE payments SET refund_op = ?2 WHERE key = ?1",
                params![key, op],
            )?;
            Ok(())
        })
    }

    /// The final state of a payment and the response to replay.
    pub fn finish_payment(
        &self,
        key: &str,
        state: PaymentState,
        pod_id: Option<&str>,
        refund_token: Option<&Secret>,
        response: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE payments SET state = ?2, pod_id = COALESCE(?3, pod_id), refund_token = ?4,
                    response = ?5, token = CASE WHEN ?2 = 'rejected' THEN NULL ELSE token END,
                    updated_at = ?6
                 WHERE key = ?1",
                params![
                    key,
                    state.as_str(),
                    pod_id,
                    refund_token.map(|t| t.expose().to_string()),
                    response,
                    to_i64(now)
                ],
            )?;
            Ok(())
        })
    }

    /// The swap succeeded for a spawn: record the money and the priced deadline of its reserved
    /// workload in one transaction (one fsync on the hot path instead of two).
    pub fn mark_spawn_paid(
        &self,
        key: &str,
        received_msats: u64,
        pod_id: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE payments SET state = 'paid', received_msats = ?2, token = NULL, updated_at = ?3
                 WHERE key = ?1",
                params![key, to_i64(received_msats), to_i64(now)],
            )?;
            tx.execute(
                "UPDATE workloads SET expires_at = ?2, paid_msats = ?3 WHERE id = ?1",
                params![pod_id, to_i64(expires_at), to_i64(received_msats)],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// A top-up is done: the new deadline, the paid total and the completed payment with its
    /// answer commit together (a crash leaves either all of it or none).
    pub fn complete_top_up(
        &self,
        key: &str,
        pod_id: &str,
        expires_at: u64,
        add_msats: u64,
        response: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE workloads SET expires_at = ?2, paid_msats = paid_msats + ?3,
                    state = CASE WHEN state = 'expired' THEN 'running' ELSE state END,
                    stopped_at = NULL
                 WHERE id = ?1",
                params![pod_id, to_i64(expires_at), to_i64(add_msats)],
            )?;
            tx.execute(
                "UPDATE payments SET state = 'completed', pod_id = ?2, response = ?3, updated_at = ?4
                 WHERE key = ?1",
                params![key, pod_id, response, to_i64(now)],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// A spawn is done: the workload runs from `expires_at`'s start at the endpoint
    /// `(ssh_host, ssh_port)`, and the payment is completed with its answer, together.
    #[allow(clippy::too_many_arguments)]
    pub fn complete_spawn(
        &self,
        key: &str,
        pod_id: &str,
        expires_at: u64,
        endpoint: (Option<&str>, u16),
        response: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE workloads SET state = 'running', expires_at = ?2, ssh_host = ?3,
                    ssh_port = ?4 WHERE id = ?1",
                params![
                    pod_id,
                    to_i64(expires_at),
                    endpoint.0,
                    i64::from(endpoint.1)
                ],
            )?;
            tx.execute(
                "UPDATE payments SET state = 'completed', pod_id = ?2, response = ?3, updated_at = ?4
                 WHERE key = ?1",
                params![key, pod_id, response, to_i64(now)],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    // ---- workloads --------------------------------------------------------------------------

    /// Insert a workload in `provisioning`, choosing the lowest free host port in
    /// `start..=end` for which `port_ok` holds (with `start..=end` empty, none: the row gets
    /// port 0, for backends that choose their own endpoint). `None` when there is no room.
    pub fn insert_workload_with_port(
        &self,
        w: &WorkloadRow,
        ports: Option<(u16, u16)>,
        max_live: u32,
        port_ok: impl Fn(u16) -> bool,
    ) -> Result<Option<u16>, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let (live, used) = {
                let mut stmt = tx.prepare(
                    "SELECT host_port FROM workloads
                     WHERE state IN ('provisioning', 'running', 'expired', 'destroying')",
                )?;
                let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
                let mut live = 0usize;
                let mut set = std::collections::HashSet::new();
                for r in rows {
                    live += 1;
                    set.insert(u16::try_from(r?).unwrap_or(0));
                }
                (live, set)
            };
            if max_live > 0 && live >= max_live as usize {
                return Ok(None);
            }
            let port = match ports {
                Some((start, end)) => {
                    let Some(port) = (start..=end).find(|p| !used.contains(p) && port_ok(*p))
                    else {
                        return Ok(None);
                    };
                    port
                }
                None => 0,
            };
            tx.execute(
                "INSERT INTO workloads (id, name, tier_json, image, ssh_username, ssh_password,
                    ssh_public_key, host_port, owner, state, created_at, expires_at, stopped_at, paid_msats)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, NULL, ?13)",
                params![
                    w.id,
                    w.name,
                    serde_json::to_string(&w.tier).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    w.image,
                    w.ssh_username,
                    w.ssh_password.expose(),
                    w.ssh_public_key,
                    i64::from(port),
                    w.owner,
                    w.state.as_str(),
                    to_i64(w.created_at),
                    to_i64(w.expires_at),
                    to_i64(w.paid_msats),
                ],
            )?;
            tx.commit()?;
            Ok(Some(port))
        })
    }

    /// Record where buyers SSH to a workload (after a resume that may have moved it).
    pub fn set_workload_endpoint(
        &self,
        id: &str,
        host: Option<&str>,
        port: u16,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE workloads SET ssh_host = ?2, ssh_port = ?3 WHERE id = ?1",
                params![id, host, i64::from(port)],
            )?;
            Ok(())
        })
    }

    pub fn workload(&self, id: &str) -> Result<Option<WorkloadRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("{WORKLOAD_SELECT} WHERE id = ?1"),
                [id],
                workload_from_row,
            )
            .optional()?
            .transpose()
        })
    }

    pub fn workloads_in_state(
        &self,
        states: &[WorkloadStatus],
    ) -> Result<Vec<WorkloadRow>, StoreError> {
        self.with(|c| {
            let mut out = Vec::new();
            let mut stmt = c.prepare(&format!(
                "{WORKLOAD_SELECT} WHERE state = ?1 ORDER BY created_at"
            ))?;
            for s in states {
                for row in stmt.query_map([s.as_str()], workload_from_row)? {
                    out.push(row??);
                }
            }
            Ok(out)
        })
    }

    /// Workloads the reaper has work for at `now`: running past their deadline, expired past
    /// their grace, or waiting to be destroyed. Index-backed, so a pass costs what is due, not
    /// what the journal holds.
    pub fn workloads_due(&self, now: u64, grace: u64) -> Result<Vec<WorkloadRow>, StoreError> {
        self.with(|c| {
            let mut out = Vec::new();
            let mut stmt = c.prepare(&format!(
                "{WORKLOAD_SELECT} WHERE state = 'running' AND expires_at <= ?1
                 UNION ALL {WORKLOAD_SELECT} WHERE state = 'expired' AND stopped_at <= ?2
                 UNION ALL {WORKLOAD_SELECT} WHERE state = 'destroying'"
            ))?;
            let cutoff = now.saturating_sub(grace);
            for row in stmt.query_map(params![to_i64(now), to_i64(cutoff)], workload_from_row)? {
                out.push(row??);
            }
            Ok(out)
        })
    }

    pub fn set_workload_state(
        &self,
        id: &str,
        state: WorkloadStatus,
        now: u64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE workloads SET state = ?2,
                    stopped_at = CASE WHEN ?2 = 'expired' THEN ?3 ELSE stopped_at END
                 WHERE id = ?1",
                params![id, state.as_str(), to_i64(now)],
            )?;
            Ok(())
        })
    }

    /// Move the deadline and add to the paid total; a stopped workload is back to `running`.
    pub fn extend_workload(
        &self,
        id: &str,
        expires_at: u64,
        add_msats: u64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE workloads SET expires_at = ?2, paid_msats = paid_msats + ?3,
                    state = CASE WHEN state = 'expired' THEN 'running' ELSE state END,
                    stopped_at = NULL
                 WHERE id = ?1",
                params![id, to_i64(expires_at), to_i64(add_msats)],
            )?;
            Ok(())
        })
    }

    /// Number of workloads holding a port.
    pub fn live_count(&self) -> Result<u32, StoreError> {
        self.with(|c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM workloads WHERE state IN ('provisioning', 'running', 'expired', 'destroying')",
                [],
                |r| r.get(0),
            )?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
    }

    // ---- seen events (Nostr replays) --------------------------------------------------------

    /// Remember an event id; `Some(response)` when it was seen before (response may be empty
    /// while the first handling is still running).
    pub fn see_event(&self, id: &str, now: u64) -> Result<Option<Option<String>>, StoreError> {
        self.with(|c| {
            if let Some(resp) = c
                .query_row(
                    "SELECT response FROM seen_events WHERE id = ?1",
                    [id],
                    |r| r.get::<_, Option<String>>(0),
                )
                .optional()?
            {
                return Ok(Some(resp));
            }
            c.execute(
                "INSERT INTO seen_events (id, response, created_at) VALUES (?1, NULL, ?2)",
                params![id, to_i64(now)],
            )?;
            Ok(None)
        })
    }

    /// Forget event ids seen before `before` (Unix seconds). Requests older than the doors'
    /// freshness window are refused anyway, so their ids are no longer needed for replays.
    pub fn prune_seen_events(&self, before: u64) -> Result<usize, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM seen_events WHERE created_at < ?1",
                params![to_i64(before)],
            )?)
        })
    }

    pub fn set_event_response(&self, id: &str, response: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE seen_events SET response = ?2 WHERE id = ?1",
                params![id, response],
            )?;
            Ok(())
        })
    }
}

const PAYMENT_SELECT: &str =
    "SELECT key, kind, fingerprint, request_id, pod_id, mint_url, face_msats,
    received_msats, state, token, refund_token, response, created_at, attempts, in_flight_until,
    refund_op, refund_reason FROM payments";

/// Bring a journal written by an older version up to the current schema.
fn migrate(c: &Connection) -> Result<(), StoreError> {
    let mut cols = Vec::new();
    {
        let mut stmt = c.prepare("PRAGMA table_info(payments)")?;
        for name in stmt.query_map([], |r| r.get::<_, String>(1))? {
            cols.push(name?);
        }
    }
    // The live-port indexes before `destroying` existed, and before backends chose endpoints.
    c.execute_batch(
        "DROP INDEX IF EXISTS workloads_live_port; DROP INDEX IF EXISTS workloads_live_port2",
    )?;
    let mut wcols = Vec::new();
    {
        let mut stmt = c.prepare("PRAGMA table_info(workloads)")?;
        for name in stmt.query_map([], |r| r.get::<_, String>(1))? {
            wcols.push(name?);
        }
    }
    if !wcols.iter().any(|n| n == "ssh_host") {
        c.execute_batch(
            "ALTER TABLE workloads ADD COLUMN ssh_host TEXT;
             ALTER TABLE workloads ADD COLUMN ssh_port INTEGER;",
        )?;
    }
    if !cols.iter().any(|n| n == "attempts") {
        c.execute_batch("ALTER TABLE payments ADD COLUMN attempts TEXT")?;
    }
    if !cols.iter().any(|n| n == "refund_op") {
        c.execute_batch("ALTER TABLE payments ADD COLUMN refund_op TEXT")?;
    }
    if !cols.iter().any(|n| n == "refund_reason") {
        c.execute_batch("ALTER TABLE payments ADD COLUMN refund_reason TEXT")?;
    }
    if !cols.iter().any(|n| n == "in_flight_until") {
        c.execute_batch(
            "ALTER TABLE payments ADD COLUMN in_flight_until INTEGER NOT NULL DEFAULT 0",
        )?;
    }
    Ok(())
}

fn payment_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<PaymentRow, StoreError>> {
    let kind: String = r.get(1)?;
    let state: String = r.get(8)?;
    let (kind, state) = match (PaymentKind::parse(&kind), PaymentState::parse(&state)) {
        (Ok(k), Ok(s)) => (k, s),
        (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
    };
    Ok(Ok(PaymentRow {
        key: r.get(0)?,
        kind,
        fingerprint: r.get(2)?,
        request_id: r.get(3)?,
        pod_id: r.get(4)?,
        mint_url: r.get(5)?,
        face_msats: to_u64(r.get(6)?),
        received_msats: r.get::<_, Option<i64>>(7)?.map(to_u64),
        state,
        token: r.get::<_, Option<String>>(9)?.map(Secret::new),
        refund_token: r.get::<_, Option<String>>(10)?.map(Secret::new),
        response: r.get(11)?,
        created_at: to_u64(r.get(12)?),
        attempts: r
            .get::<_, Option<String>>(13)?
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default(),
        in_flight_until: to_u64(r.get(14)?),
        refund_op: r.get(15)?,
        refund_reason: r.get(16)?,
    }))
}

const WORKLOAD_SELECT: &str = "SELECT id, name, tier_json, image, ssh_username, ssh_password,
    ssh_public_key, host_port, owner, state, created_at, expires_at, stopped_at, paid_msats,
    ssh_host, ssh_port FROM workloads";

fn workload_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<WorkloadRow, StoreError>> {
    let tier_json: String = r.get(2)?;
    let tier: Tier = match serde_json::from_str(&tier_json) {
        Ok(t) => t,
        Err(e) => return Ok(Err(StoreError::Corrupt(format!("tier: {e}")))),
    };
    let state: String = r.get(9)?;
    let state = match WorkloadStatus::parse(&state) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let port: i64 = r.get(7)?;
    Ok(Ok(WorkloadRow {
        id: r.get(0)?,
        name: r.get(1)?,
        tier,
        image: r.get(3)?,
        ssh_username: r.get(4)?,
        ssh_password: Secret::new(r.get::<_, String>(5)?),
        ssh_public_key: r.get(6)?,
        host_port: u16::try_from(port).unwrap_or(0),
        ssh_host: r.get(14)?,
        ssh_port: r
            .get::<_, Option<i64>>(15)?
            .and_then(|p| u16::try_from(p).ok()),
        owner: r.get(8)?,
        state,
        created_at: to_u64(r.get(10)?),
        expires_at: to_u64(r.get(11)?),
        stopped_at: r.get::<_, Option<i64>>(12)?.map(to_u64),
        paid_msats: to_u64(r.get(13)?),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data dir written before backends chose endpoints opens, keeps its rows, and lets
    /// several live workloads share host port 0 (no reservation).
    #[test]
    fn a_journal_without_endpoints_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paygress.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE workloads (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                    tier_json TEXT NOT NULL, image TEXT NOT NULL, ssh_username TEXT NOT NULL,
                    ssh_password TEXT NOT NULL, ssh_public_key TEXT, host_port INTEGER NOT NULL,
                    owner TEXT, state TEXT NOT NULL, created_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL, stopped_at INTEGER, paid_msats INTEGER NOT NULL);
                 CREATE UNIQUE INDEX workloads_live_port2 ON workloads(host_port)
                    WHERE state IN ('provisioning', 'running', 'expired', 'destroying');
                 INSERT INTO workloads VALUES ('old', 'pg-old', '{\"id\":\"t\",\"name\":\"T\",
                    \"cpu_millicores\":500,\"memory_mb\":256,\"rate_msats_per_sec\":1}',
                    'img', 'alice', 'pw', NULL, 30001, NULL, 'running', 1, 2, NULL, 3);",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let old = s.workload("old").unwrap().unwrap();
        assert_eq!(
            (old.host_port, old.ssh_host.as_deref(), old.ssh_port),
            (30001, None, None)
        );
        for i in 0..2 {
            let row = WorkloadRow {
                id: format!("new{i}"),
                name: format!("pg-new{i}"),
                ssh_host: None,
                ssh_port: None,
                host_port: 0,
                state: WorkloadStatus::Provisioning,
                ..old.clone()
            };
            assert_eq!(
                s.insert_workload_with_port(&row, None, 0, |_| true)
                    .unwrap(),
                Some(0)
            );
            s.set_workload_endpoint(&row.id, Some("node"), 31000 + i)
                .unwrap();
        }
        let n = s.workload("new1").unwrap().unwrap();
        assert_eq!(
            (n.ssh_host.as_deref(), n.ssh_port),
            (Some("node"), Some(31001))
        );
    }
}
