//! What the buyer's MCP tools do, without the MCP: find providers, buy, top up, check, run
//! commands, and look after the wallet — within the owner's caps.
//!
//! [`Agent`] holds the buyer wallet, the caps (from the config file only), the buyer's Nostr
//! identity, the kept SSH key and the pods it bought (`~/.paygress/pods.json`: provider, address,
//! login name and pinned host keys — no secret). The MCP door ([`super::mcp`]) only translates.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nostr_sdk::prelude::Keys;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::caps::BuyerConfig;
use super::purchase::{self, Order, Pay};
use super::ssh::{self, SshError};
pub use super::tools::*;
use super::wallet::BuyerWallet;
use crate::api::PodStatus;
use crate::fsutil::write_private;
use crate::market::buyer::Buyer;
use crate::market::{RequestKind, ResponseEnvelope};
use crate::provider::now_secs;

/// A pod this agent bought.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub provider: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub host_keys: Vec<String>,
}

/// Spawn steps for progress notifications.
pub const SPAWN_STEPS: u32 = 3;

pub type StepFn = Arc<dyn Fn(u32, &str) + Send + Sync>;

pub struct Agent {
    pub wallet: BuyerWallet,
    pub config: BuyerConfig,
    keys: Keys,
    ssh_key: russh::keys::PrivateKey,
    pods_file: PathBuf,
    pods: tokio::sync::Mutex<BTreeMap<String, PodRecord>>,
    /// One payment at a time: the caps are checked against the journal, so two concurrent
    /// calls must not both pass the check before either spend is written.
    spend_lock: tokio::sync::Mutex<()>,
    timeout: Duration,
}

/// Login name on pods the agent buys.
pub const AGENT_USER: &str = "agent";

impl Agent {
    /// Open the agent's state under `~/.paygress`.
    pub async fn open(config: BuyerConfig, timeout: Duration) -> Result<Agent, AgentError> {
        let home = super::home_dir()
            .ok_or_else(|| AgentError::new(AgentErrorType::InternalError, "HOME is not set"))?;
        super::private_dir(&home)
            .map_err(|e| AgentError::new(AgentErrorType::InternalError, e.to_string()))?;
        let wallet = BuyerWallet::open(&home.join("wallet")).await?;
        let keys = crate::identity::load_or_create(&home.join("identity"))
            .map_err(|e| AgentError::new(AgentErrorType::InternalError, e.to_string()))?;
        let ssh_key = ssh::load_or_create_key(&home.join("ssh").join("id_ed25519"))?;
        let pods_file = home.join("pods.json");
        let pods = match std::fs::read_to_string(&pods_file) {
            Ok(t) => serde_json::from_str(&t).unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        Ok(Agent {
            wallet,
            config,
            keys,
            ssh_key,
            pods_file,
            pods: tokio::sync::Mutex::new(pods),
            spend_lock: tokio::sync::Mutex::new(()),
            timeout,
        })
    }

    async fn connect(&self) -> Result<Buyer, AgentError> {
        Ok(Buyer::connect(self.keys.clone(), &self.config.relays).await?)
    }

    pub async fn list_providers(
        &self,
        a: ListProvidersArgs,
    ) -> Result<ProvidersResult, AgentError> {
        let buyer = self.connect().await?;
        let r = buyer.offers(Duration::from_secs(5)).await;
        buyer.close().await;
        let now = now_secs();
        let want = a.capability.map(|c| c.trim().to_lowercase());
        let mut out: Vec<ListedProvider> = r?
            .into_iter()
            .filter(|o| o.is_live(now, None))
            .filter(|o| {
                want.as_deref()
                    .is_none_or(|w| o.offers.backend.to_string() == w)
            })
            .filter_map(|mut o| {
                o.offers.pod_specs.retain(|t| {
                    a.max_rate_msats_per_sec
                        .is_none_or(|m| t.rate_msats_per_sec <= m)
                        && a.min_memory_mb.is_none_or(|m| t.memory_mb >= m)
                });
                (!o.offers.pod_specs.is_empty()).then(|| ListedProvider {
                    npub: o.npub.clone(),
                    seen_seconds_ago: now.saturating_sub(o.published_at),
                    offers: o.offers,
                })
            })
            .collect();
        match a.sort.unwrap_or_default() {
            SortBy::Price => out.sort_by_key(|p| {
                p.offers
                    .pod_specs
                    .iter()
                    .map(|t| t.rate_msats_per_sec)
                    .min()
                    .unwrap_or(u64::MAX)
            }),
            SortBy::Name => out.sort_by(|x, y| {
                x.offers
                    .provider
                    .name
                    .to_lowercase()
                    .cmp(&y.offers.provider.name.to_lowercase())
            }),
        }
        Ok(ProvidersResult { providers: out })
    }

    pub async fn spawn(&self, a: SpawnArgs, step: StepFn) -> Result<SpawnOutcome, AgentError> {
        if a.duration_seconds == 0 {
            return Err(AgentError::invalid("duration_seconds must be at least 1"));
        }
        // An extra key is checked here, before paying, and installed once the pod is up.
        let extra_key = a
            .ssh_public_key
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| crate::validate::check_public_key(k).map(|_| k.to_string()))
            .transpose()
            .map_err(AgentError::invalid)?;
        let mut f = Map::new();
        f.insert("pod_spec_id".into(), json!(a.pod_spec_id));
        f.insert("ssh_username".into(), json!(AGENT_USER));
        f.insert(
            "ssh_public_key".into(),
            json!(ssh::public_line(&self.ssh_key)),
        );
        if let Some(i) = &a.image {
            f.insert("pod_image".into(), json!(i));
        }
        step(1, "paying from the wallet");
        let buyer = self.connect().await?;
        let spending = self.spend_lock.lock().await;
        let r = purchase::pay_and_request(
            &buyer,
            &self.wallet,
            Some(&self.config.caps),
            Order {
                provider: &a.provider,
                kind: RequestKind::Spawn,
                tier_id: &a.pod_spec_id,
                pay: Pay::Seconds(a.duration_seconds),
                fields: f,
                request_id: None,
                pod: None,
            },
            self.timeout,
        )
        .await;
        drop(spending);
        buyer.close().await;
        let o = r?;
        let result = answer(&o.response, o.refunded_sats)?;
        step(2, "the provider answered; pinning the pod's SSH host key");
        let s = |k: &str| result[k].as_str().unwrap_or("").to_string();
        let pod = s("pod_npub");
        let host = s("host");
        let port = result["node_port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0);
        let mut pinned: Vec<String> = result["ssh_host_key_fingerprints"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        // No fingerprints from the provider: learn the key the pod presents now, right after
        // the purchase, and hold every later connection to it.
        // The same connection installs an extra key the caller gave, fed on stdin to a constant
        // command (the key never becomes part of a command line).
        let (command, input) = match &extra_key {
            Some(k) => (
                "umask 077 && mkdir -p ~/.ssh && cat >> ~/.ssh/authorized_keys",
                Some(format!("{k}\n")),
            ),
            None => ("true", None),
        };
        let mut last = None;
        for _ in 0..10 {
            match ssh::run_with_input(
                &host,
                port,
                AGENT_USER,
                &self.ssh_key,
                &pinned,
                command,
                input.as_deref().map(str::as_bytes),
                Duration::from_secs(20),
            )
            .await
            {
                Ok(out) => {
                    if out.exit_code != Some(0) {
                        tracing::warn!(
                            "installing the extra ssh_public_key exited with {:?}",
                            out.exit_code
                        );
                    }
                    if pinned.is_empty() {
                        pinned.push(out.host_key);
                    }
                    last = None;
                    break;
                }
                Err(e @ SshError::HostKeyMismatch { .. }) => return Err(e.into()),
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        let record = PodRecord {
            provider: a.provider.clone(),
            host: host.clone(),
            port,
            user: AGENT_USER.into(),
            host_keys: pinned.clone(),
        };
        self.remember(&pod, record).await;
        if let Some(e) = last {
            tracing::warn!("the pod was bought but SSH did not answer yet: {e}");
        }
        step(3, "ready");
        Ok(SpawnOutcome {
            pod_npub: pod,
            provider: a.provider,
            host,
            node_port: port,
            ssh_username: AGENT_USER.into(),
            expires_at: s("expires_at"),
            duration_seconds: result["duration_seconds"].as_u64().unwrap_or(0),
            paid_sats: o.paid_sats,
            ssh_host_key_fingerprints: pinned,
            wallet_balance_sats: self.wallet.total().await.unwrap_or(0),
        })
    }

    async fn remember(&self, pod: &str, record: PodRecord) {
        let mut pods = self.pods.lock().await;
        pods.insert(pod.to_string(), record);
        if let Ok(text) = serde_json::to_string_pretty(&*pods) {
            if let Err(e) = write_private(&self.pods_file, text.as_bytes()) {
                tracing::warn!("cannot save {}: {e}", self.pods_file.display());
            }
        }
    }

    async fn status_value(&self, provider: &str, pod: &str) -> Result<Value, AgentError> {
        let buyer = self.connect().await?;
        let mut f = Map::new();
        f.insert("pod_npub".into(), json!(pod));
        let r = buyer
            .request(provider, RequestKind::Status, None, f, self.timeout)
            .await;
        buyer.close().await;
        answer(&r?, 0)
    }

    pub async fn status(&self, a: StatusArgs) -> Result<PodStatus, AgentError> {
        let v = self.status_value(&a.provider, &a.pod_npub).await?;
        serde_json::from_value(v).map_err(|e| {
            AgentError::new(
                AgentErrorType::InternalError,
                format!("the provider's status answer is malformed: {e}"),
            )
        })
    }

    pub async fn top_up(&self, a: TopUpArgs) -> Result<TopUpOutcome, AgentError> {
        if a.duration_seconds == 0 {
            return Err(AgentError::invalid("duration_seconds must be at least 1"));
        }
        let st = self.status_value(&a.provider, &a.pod_npub).await?;
        let tier = st["pod_spec"]["id"].as_str().unwrap_or("").to_string();
        let mut f = Map::new();
        f.insert("pod_npub".into(), json!(a.pod_npub));
        let buyer = self.connect().await?;
        let spending = self.spend_lock.lock().await;
        let r = purchase::pay_and_request(
            &buyer,
            &self.wallet,
            Some(&self.config.caps),
            Order {
                provider: &a.provider,
                kind: RequestKind::Topup,
                tier_id: &tier,
                pay: Pay::Seconds(a.duration_seconds),
                fields: f,
                request_id: None,
                pod: Some(a.pod_npub.clone()),
            },
            self.timeout,
        )
        .await;
        drop(spending);
        buyer.close().await;
        let o = r?;
        let v = answer(&o.response, o.refunded_sats)?;
        Ok(TopUpOutcome {
            pod_npub: a.pod_npub,
            extended_duration_seconds: v["extended_duration_seconds"].as_u64().unwrap_or(0),
            new_expires_at: v["new_expires_at"].as_str().unwrap_or("").to_string(),
            paid_sats: o.paid_sats,
            wallet_balance_sats: self.wallet.total().await.unwrap_or(0),
        })
    }

    pub async fn run_command(&self, a: RunArgs) -> Result<RunOutcome, AgentError> {
        let rec = self
            .pods
            .lock()
            .await
            .get(&a.pod_npub)
            .cloned()
            .ok_or_else(|| {
                AgentError::new(
                    AgentErrorType::PodNotFound,
                    "not a pod this agent bought (spawn_pod first)",
                )
            })?;
        if rec.host_keys.is_empty() {
            return Err(AgentError::new(
                AgentErrorType::HostKeyMismatch,
                "no host key is pinned for this pod; refusing to trust one now",
            ));
        }
        if a.command.trim().is_empty() {
            return Err(AgentError::invalid("command is empty"));
        }
        let timeout = a.timeout_seconds.unwrap_or(60).clamp(1, 3600);
        let out = ssh::run(
            &rec.host,
            rec.port,
            &rec.user,
            &self.ssh_key,
            &rec.host_keys,
            &a.command,
            Duration::from_secs(timeout),
        )
        .await?;
        Ok(RunOutcome {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
            host_key_fingerprint: out.host_key,
        })
    }

    pub async fn balance(&self) -> Result<BalanceOutcome, AgentError> {
        // An invoice paid after its wallet_fund task ended (e.g. the server restarted).
        if let Err(e) = self.wallet.collect_paid_invoices().await {
            tracing::warn!("could not check earlier invoices: {e}");
        }
        let b = self.wallet.balances().await?;
        let spent = self
            .wallet
            .journal()
            .spent_since(now_secs().saturating_sub(86_400), None)
            .map_err(|e| AgentError::new(AgentErrorType::InternalError, e.to_string()))?;
        Ok(BalanceOutcome {
            total_sats: b.iter().map(|(_, s)| s).sum(),
            balances: b
                .into_iter()
                .map(|(m, s)| MintBalance {
                    mint: m.to_string(),
                    sats: s,
                })
                .collect(),
            spent_last_24h_sats: spent,
            caps: self.config.caps.clone(),
        })
    }

    /// Ask for an invoice; a background task mints once it is paid.
    pub async fn fund(self: &Arc<Self>, a: FundArgs) -> Result<FundOutcome, AgentError> {
        if a.amount_sats == 0 {
            return Err(AgentError::invalid("amount_sats must be at least 1"));
        }
        let mint = match &self.config.mint {
            Some(m) => BuyerWallet::parse_mint(m)?,
            None => self
                .wallet
                .mints()
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    AgentError::invalid(
                    "no mint to fund at: set `mint` in the buyer config, or receive a token first",
                )
                })?,
        };
        let invoice = self.wallet.fund_quote(&mint, a.amount_sats).await?;
        let me = Arc::clone(self);
        let inv = invoice.clone();
        tokio::spawn(async move {
            match me
                .wallet
                .wait_and_mint(&inv, Duration::from_secs(3600))
                .await
            {
                Ok(s) => tracing::info!(sats = s, "funded over Lightning"),
                Err(e) => tracing::warn!("funding did not complete: {e}"),
            }
        });
        Ok(FundOutcome {
            invoice: invoice.bolt11().to_string(),
            mint: mint.to_string(),
            amount_sats: a.amount_sats,
            expires_at: invoice.quote.expiry,
        })
    }

    pub async fn receive(&self, a: ReceiveArgs) -> Result<ReceiveOutcome, AgentError> {
        let (mint, sats) = self.wallet.receive(&a.token).await?;
        Ok(ReceiveOutcome {
            mint: mint.to_string(),
            received_sats: sats,
            wallet_balance_sats: self.wallet.total().await.unwrap_or(0),
        })
    }
}

/// The result of a provider's answer, or its error as the agent's.
fn answer(r: &ResponseEnvelope, refunded: u64) -> Result<Value, AgentError> {
    if let Some(e) = &r.error {
        let mut err = AgentError::from_provider(e, refunded);
        if e.refund_token.is_some() {
            // Only when the wallet could not take it (the mint was unreachable): the token is
            // the only copy, so it is handed on rather than lost.
            err.details = Some(
                json!({"refund_token": e.refund_token.as_ref().map(|t| t.expose().to_string())}),
            );
        }
        return Err(err);
    }
    r.result
        .clone()
        .ok_or_else(|| AgentError::new(AgentErrorType::InternalError, "empty answer"))
}
