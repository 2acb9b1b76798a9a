//! Cashu payments: look at a token, take it by swapping at the mint, give money back.
//!
//! Decoding a token proves nothing: anyone can write a token for proofs that are already spent.
//! Only a successful swap at the mint (`Wallet::receive`) means the provider was paid and the
//! buyer can no longer spend those proofs. So this module splits the two:
//! [`Payments::inspect`] decodes and checks everything that can be checked offline (mint
//! whitelist, unit, face value, no spending conditions) and touches nothing; [`Payments::redeem`]
//! swaps. The provider core calls `redeem` only after every other check passed.
//!
//! The provider's earnings live in one persistent cdk wallet per whitelisted mint (SQLite files in
//! the data dir, one seed file written 0600). Refunds are minted from those wallets, so a refund
//! is a fresh token the buyer's wallet can receive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use cdk::amount::SplitTarget;
use cdk::mint_url::MintUrl;
use cdk::nuts::{CurrencyUnit, Token};
use cdk::wallet::{ReceiveOptions, SendMemo, SendOptions, Wallet, WalletBuilder};
use cdk::Amount;
use sha2::{Digest, Sha256};

use crate::error::{ErrorType, ProviderError};
use crate::fsutil::write_private;
use crate::secret::Secret;
use crate::settlement::{self, Settlement, SwapAttempt};

/// What can be learned from a token without asking the mint.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// Identity of the token's proofs (hex SHA-256 over its sorted secrets). The same proofs give
    /// the same key however the token is encoded, which is what replay detection needs.
    pub key: String,
    pub mint_url: MintUrl,
    /// Face value in millisatoshis (before mint fees).
    pub face_msats: u64,
}

/// The provider's wallets, one per whitelisted mint.
pub struct Payments {
    wallets: BTreeMap<MintUrl, Wallet>,
    /// Receives hold it shared; settling (cdk's saga recovery, which touches every pending
    /// receive of the wallet) holds it exclusively, so a recovery never replays a swap that is
    /// still in flight on another task.
    settling: BTreeMap<MintUrl, tokio::sync::RwLock<()>>,
    timeout: Duration,
}

/// Why a swap did not simply succeed.
#[derive(Debug)]
pub enum RedeemError {
    /// The mint refused without acting (cdk's own classification: a definitive failure). No money
    /// moved; the token is still the buyer's unless the error says it is invalid.
    Refused(ProviderError),
    /// The outcome is unknown: the answer was lost, late or odd, or the mint says "spent" (which
    /// may be our own earlier swap). `attempts` are our swap requests cdk still tracks for these
    /// proofs; journal them, then [`Payments::settle`].
    Unknown {
        error: ProviderError,
        attempts: Vec<SwapAttempt>,
    },
}

/// Largest token we bother decoding; real tokens are a few KB.
const MAX_TOKEN_LEN: usize = 64 * 1024;

impl Payments {
    /// Open (or create) the earnings wallets under `data_dir/wallets`.
    pub async fn open(
        data_dir: &Path,
        mints: &[String],
        timeout: Duration,
    ) -> Result<Payments, ProviderError> {
        let dir = data_dir.join("wallets");
        std::fs::create_dir_all(&dir).map_err(|e| {
            ProviderError::internal(format!("cannot create {}: {e}", dir.display()))
        })?;
        let seed = load_or_create_seed(&data_dir.join("wallet.seed"))?;
        let mut wallets = BTreeMap::new();
        let mut settling = BTreeMap::new();
        for m in mints {
            let url = MintUrl::from_str(m)
                .map_err(|e| ProviderError::internal(format!("bad mint url {m}: {e}")))?;
            let file: PathBuf = dir.join(format!("{}.sqlite", short_hash(&url.to_string())));
            let db = cdk_sqlite::WalletSqliteDatabase::new(file.clone())
                .await
                .map_err(|e| {
                    ProviderError::internal(format!("cannot open wallet {}: {e}", file.display()))
                })?;
            restrict_permissions(&file);
            let wallet = WalletBuilder::new()
                .mint_url(url.clone())
                .unit(CurrencyUnit::Sat)
                .localstore(Arc::new(db))
                .seed(seed)
                .without_rate_limiting()
                .build()
                .map_err(|e| ProviderError::internal(format!("cannot build wallet: {e}")))?;
            settling.insert(url.clone(), tokio::sync::RwLock::new(()));
            wallets.insert(url, wallet);
        }
        Ok(Payments {
            wallets,
            settling,
            timeout,
        })
    }

    /// Finish or undo any wallet operation a crash interrupted (cdk's own saga recovery).
    pub async fn recover(&self) {
        for (url, w) in &self.wallets {
            let _exclusive = self.lock(url).write().await;
            match tokio::time::timeout(self.timeout * 3, Box::pin(w.recover_incomplete_sagas()))
                .await
            {
                Err(_) => tracing::warn!(mint = %url, "wallet recovery timed out"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(mint = %url, "wallet recovery could not finish: {e}"),
            }
        }
    }

    /// The whitelisted mints, normalised.
    pub fn mints(&self) -> impl Iterator<Item = &MintUrl> {
        self.wallets.keys()
    }

    /// Decode and check a token without touching its value.
    pub fn inspect(&self, encoded: &str) -> Result<TokenInfo, ProviderError> {
        let encoded = encoded.trim();
        if encoded.is_empty() {
            return Err(ProviderError::new(
                ErrorType::InvalidToken,
                "cashu_token is empty",
            ));
        }
        if encoded.len() > MAX_TOKEN_LEN {
            return Err(ProviderError::new(
                ErrorType::InvalidToken,
                "cashu_token is too long",
            ));
        }
        let token = Token::from_str(encoded).map_err(|_| {
            ProviderError::new(
                ErrorType::InvalidToken,
                "cashu_token is not a valid Cashu token (expected cashuA… or cashuB…)",
            )
        })?;
        if let Token::TokenV3(t) = &token {
            if t.is_multi_mint() {
                return Err(ProviderError::new(
                    ErrorType::InvalidToken,
                    "tokens spanning several mints are not accepted; send one mint's token",
                ));
            }
        }
        let mint_url = token.mint_url().map_err(|_| {
            ProviderError::new(ErrorType::InvalidToken, "cashu_token names no valid mint")
        })?;
        if !self.wallets.contains_key(&mint_url) {
            let allowed: Vec<String> = self.wallets.keys().map(|m| m.to_string()).collect();
            return Err(ProviderError::new(
                ErrorType::MintNotAllowed,
                format!("tokens from {mint_url} are not accepted here"),
            )
            .with_details(serde_json::json!({ "whitelisted_mints": allowed })));
        }
        let unit = token.unit().unwrap_or(CurrencyUnit::Sat);
        if unit != CurrencyUnit::Sat {
            return Err(ProviderError::new(
                ErrorType::InvalidToken,
                format!("token unit {unit} is not supported; send a sat token"),
            ));
        }
        match token.spending_conditions() {
            Ok(c) if c.is_empty() => {}
            _ => {
                return Err(ProviderError::new(
                    ErrorType::InvalidToken,
                    "locked tokens (P2PK/HTLC spending conditions) are not accepted",
                ))
            }
        }
        let value = token.value().map_err(|_| {
            ProviderError::new(ErrorType::InvalidToken, "token amounts do not add up")
        })?;
        let face_msats = u64::from(value).checked_mul(1000).ok_or_else(|| {
            ProviderError::new(ErrorType::InvalidToken, "token value is out of range")
        })?;
        if face_msats == 0 {
            return Err(ProviderError::new(
                ErrorType::InvalidToken,
                "token is worth nothing",
            ));
        }
        let mut secrets: Vec<String> = token
            .token_secrets()
            .iter()
            .map(|s| s.to_string())
            .collect();
        secrets.sort();
        let mut h = Sha256::new();
        for s in &secrets {
            h.update(s.as_bytes());
            h.update([0u8]);
        }
        Ok(TokenInfo {
            key: hex::encode(h.finalize()),
            mint_url,
            face_msats,
        })
    }

    /// Swap the token's proofs at its mint. Returns the millisatoshis actually received (after
    /// the mint's input fees). Waits at most the mint timeout.
    pub async fn redeem(&self, info: &TokenInfo, encoded: &Secret) -> Result<u64, RedeemError> {
        let wallet = self.wallet(&info.mint_url).map_err(RedeemError::Refused)?;
        let outcome = {
            let _shared = self.lock(&info.mint_url).read().await;
            tokio::time::timeout(
                self.timeout,
                Box::pin(wallet.receive(encoded.expose().trim(), ReceiveOptions::default())),
            )
            .await
        };
        let error = match outcome {
            Ok(Ok(received)) => {
                return u64::from(received).checked_mul(1000).ok_or_else(|| {
                    RedeemError::Refused(ProviderError::internal("received amount out of range"))
                })
            }
            Ok(Err(e)) if e.is_definitive_failure() => {
                return Err(RedeemError::Refused(map_receive_error(e)))
            }
            Ok(Err(e)) => map_receive_error(e),
            Err(_) => ProviderError::new(
                ErrorType::PaymentFailed,
                format!(
                    "the mint did not answer the swap within {} s",
                    self.timeout.as_secs()
                ),
            ),
        };
        let attempts = match Token::from_str(encoded.expose().trim()) {
            Ok(t) => settlement::attempts_for(wallet, &t).await,
            Err(_) => Vec::new(),
        };
        Err(RedeemError::Unknown { error, attempts })
    }

    /// Our swap attempts cdk still tracks for this token's proofs (local, no network).
    pub async fn attempts_for(&self, mint: &MintUrl, encoded: &Secret) -> Vec<SwapAttempt> {
        match (self.wallet(mint), Token::from_str(encoded.expose().trim())) {
            (Ok(w), Ok(t)) => settlement::attempts_for(w, &t).await,
            _ => Vec::new(),
        }
    }

    /// Learn from the mint what became of a swap with an unknown outcome (see
    /// [`crate::settlement`]). Waits for in-flight receives at this mint to end first.
    pub async fn settle(
        &self,
        mint: &MintUrl,
        encoded: &Secret,
        attempts: &[SwapAttempt],
        may_be_in_flight: bool,
    ) -> Settlement {
        let wallet = match self.wallet(mint) {
            Ok(w) => w,
            Err(e) => return Settlement::Unknown(e.message),
        };
        let Ok(token) = Token::from_str(encoded.expose().trim()) else {
            // Never a valid token: it was never swapped.
            return Settlement::NotSwapped;
        };
        let _exclusive = self.lock(mint).write().await;
        Box::pin(settlement::settle(
            wallet,
            &token,
            attempts,
            may_be_in_flight,
            self.timeout,
        ))
        .await
    }

    /// The mint timeout: the longest wait for one answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn lock(&self, mint: &MintUrl) -> &tokio::sync::RwLock<()> {
        // Every wallet has its lock (both maps are filled together in `open`).
        static FALLBACK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
        self.settling.get(mint).unwrap_or(&FALLBACK)
    }

    /// Mint a token worth `msats` (rounded down to whole sats) from the earnings at `mint`.
    pub async fn refund(&self, mint: &MintUrl, msats: u64) -> Result<Secret, ProviderError> {
        self.refund_journalled(mint, msats, |_| Ok(())).await
    }

    /// [`Payments::refund`], calling `journal` with the send's operation id after the proofs are
    /// set aside and before the token is made: a crash after that leaves the token findable by
    /// [`Payments::refund_token_of`], so it is delivered instead of minting a second refund.
    pub async fn refund_journalled(
        &self,
        mint: &MintUrl,
        msats: u64,
        journal: impl FnOnce(&str) -> Result<(), ProviderError>,
    ) -> Result<Secret, ProviderError> {
        let sats = msats / 1000;
        if sats == 0 {
            return Err(ProviderError::internal("nothing to refund"));
        }
        let wallet = self.wallet(mint)?;
        let prepared = wallet
            .prepare_send(Amount::from(sats), send_options("paygress refund"))
            .await
            .map_err(|e| {
                ProviderError::new(
                    ErrorType::PaymentFailed,
                    format!("cannot prepare {sats} sat: {e}"),
                )
            })?;
        if let Err(e) = journal(&prepared.operation_id().to_string()) {
            let _ = prepared.cancel().await;
            return Err(e);
        }
        let token = prepared.confirm(None).await.map_err(|e| {
            ProviderError::new(
                ErrorType::PaymentFailed,
                format!("cannot create token: {e}"),
            )
        })?;
        Ok(Secret::new(token.to_string()))
    }

    /// The token a refund send (by operation id) made, if cdk still holds it unclaimed.
    pub async fn refund_token_of(&self, mint: &MintUrl, op: &str) -> Option<Secret> {
        use cdk::wallet::types::{OperationData, SendSagaState, WalletSagaState};
        let wallet = self.wallet(mint).ok()?;
        let id = op.parse().ok()?;
        let saga = wallet.localstore.get_saga(&id).await.ok()??;
        let (WalletSagaState::Send(SendSagaState::TokenCreated), OperationData::Send(d)) =
            (&saga.state, &saga.data)
        else {
            return None;
        };
        if let Some(t) = &d.token {
            return Some(Secret::new(t.clone()));
        }
        let proofs = d.proofs.clone()?;
        Some(Secret::new(
            Token::new(
                wallet.mint_url.clone(),
                proofs,
                d.memo.clone(),
                wallet.unit.clone(),
            )
            .to_string(),
        ))
    }

    /// Take `sats` out of the earnings at `mint` as a token (operator withdrawal).
    pub async fn withdraw(&self, mint: &MintUrl, sats: u64) -> Result<Secret, ProviderError> {
        self.send(mint, sats, "paygress withdrawal").await
    }

    /// Spendable balance per mint, in sats.
    pub async fn balances(&self) -> Result<Vec<(MintUrl, u64)>, ProviderError> {
        let mut out = Vec::new();
        for (url, w) in &self.wallets {
            let b = w
                .total_balance()
                .await
                .map_err(|e| ProviderError::internal(format!("wallet balance at {url}: {e}")))?;
            out.push((url.clone(), u64::from(b)));
        }
        Ok(out)
    }

    /// Resolve a mint string to the whitelisted mint it names.
    pub fn mint(&self, s: &str) -> Result<MintUrl, ProviderError> {
        let url = MintUrl::from_str(s)
            .map_err(|_| ProviderError::invalid_request(format!("not a mint URL: {s:?}")))?;
        self.wallet(&url)?;
        Ok(url)
    }

    async fn send(&self, mint: &MintUrl, sats: u64, memo: &str) -> Result<Secret, ProviderError> {
        let wallet = self.wallet(mint)?;
        let opts = send_options(memo);
        let prepared = wallet
            .prepare_send(Amount::from(sats), opts)
            .await
            .map_err(|e| {
                ProviderError::new(
                    ErrorType::PaymentFailed,
                    format!("cannot prepare {sats} sat: {e}"),
                )
            })?;
        let token = prepared.confirm(None).await.map_err(|e| {
            ProviderError::new(
                ErrorType::PaymentFailed,
                format!("cannot create token: {e}"),
            )
        })?;
        Ok(Secret::new(token.to_string()))
    }

    fn wallet(&self, mint: &MintUrl) -> Result<&Wallet, ProviderError> {
        self.wallets.get(mint).ok_or_else(|| {
            ProviderError::new(
                ErrorType::MintNotAllowed,
                format!("{mint} is not whitelisted"),
            )
        })
    }
}

/// Map a failed swap to the wire error. The mint's message is kept (it never holds the token).
fn map_receive_error(e: cdk::Error) -> ProviderError {
    match e {
        cdk::Error::TokenAlreadySpent => ProviderError::new(
            ErrorType::TokenAlreadySpent,
            "the mint reports this token as already spent",
        ),
        cdk::Error::TokenPending => ProviderError::new(
            ErrorType::TokenAlreadySpent,
            "the mint reports this token as pending in another transaction",
        ),
        cdk::Error::UnsupportedUnit | cdk::Error::IncorrectMint | cdk::Error::UnknownKeySet => {
            ProviderError::new(
                ErrorType::InvalidToken,
                format!("the mint refused the token: {e}"),
            )
        }
        other => ProviderError::new(
            ErrorType::PaymentFailed,
            format!("could not redeem the token at the mint: {other}"),
        ),
    }
}

fn send_options(memo: &str) -> SendOptions {
    SendOptions {
        memo: Some(SendMemo {
            memo: memo.to_string(),
            include_memo: true,
        }),
        amount_split_target: SplitTarget::default(),
        ..Default::default()
    }
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..8])
}

fn load_or_create_seed(path: &Path) -> Result<[u8; 64], ProviderError> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let bytes = hex::decode(text.trim())
            .map_err(|_| ProviderError::internal(format!("{} is not hex", path.display())))?;
        return bytes
            .try_into()
            .map_err(|_| ProviderError::internal(format!("{} is not 64 bytes", path.display())));
    }
    let mut seed = [0u8; 64];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut seed);
    write_private(path, hex::encode(seed).as_bytes())
        .map_err(|e| ProviderError::internal(format!("cannot write {}: {e}", path.display())))?;
    Ok(seed)
}

fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}
