//! The buyer wallet: Cashu ecash the buyer's CLI and MCP server pay providers from.
//!
//! One cdk wallet store (`wallet.sqlite`) and one seed (`seed`, hex) in
//! `~/.paygress/wallet` (0700; files 0600), holding proofs from any number of mints. Money comes
//! in by Lightning — a NUT-04 mint quote whose BOLT11 invoice the owner pays, after which the
//! wallet mints — or by receiving a token (swapped at its mint, so a token someone else still
//! holds cannot be counted twice). It goes out as a token ([`BuyerWallet::send`]). Every movement
//! is written to the [`Journal`] beside the store.
//!
//! This is not the provider's earnings wallet ([`crate::payments`], under the provider's data
//! dir): the two never share a store or a seed.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use cdk::cdk_database::WalletDatabase;
use cdk::mint_url::MintUrl;
use cdk::nuts::{CurrencyUnit, PaymentMethod, Token};
use cdk::wallet::{MintQuote, ReceiveOptions, SendOptions, Wallet, WalletBuilder};
use cdk::Amount;

use super::journal::{Entry, EntryKind, Journal, JournalError};
use crate::fsutil::write_private;
use crate::provider::now_secs;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("HOME is not set: cannot find ~/.paygress/wallet")]
    NoHome,
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("not a mint URL: {0}")]
    BadMint(String),
    #[error("not a Cashu token")]
    InvalidToken,
    #[error("the mint refused: {0}")]
    Mint(String),
    #[error("the mint reports this token as already spent")]
    AlreadySpent,
    #[error("not enough in the wallet: {have} sat at {mint}, {need} sat needed")]
    Insufficient { mint: String, have: u64, need: u64 },
    #[error("no funds at any of these mints: {0}")]
    NoUsableMint(String),
    #[error(
        "the invoice was not paid within {0} s; if it is paid later, `wallet balance` mints it"
    )]
    NotPaid(u64),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl WalletError {
    fn mint(e: cdk::Error) -> WalletError {
        match e {
            cdk::Error::TokenAlreadySpent | cdk::Error::TokenPending => WalletError::AlreadySpent,
            other => WalletError::Mint(other.to_string()),
        }
    }
}

pub struct BuyerWallet {
    dir: PathBuf,
    db: Arc<cdk_sqlite::WalletSqliteDatabase>,
    seed: [u8; 64],
    journal: Journal,
    /// Held while minting paid invoices (see [`BuyerWallet::collect_paid_invoices`]).
    minting: tokio::sync::Mutex<()>,
}

/// A mint quote the owner is to pay.
#[derive(Debug, Clone)]
pub struct Invoice {
    pub mint: MintUrl,
    pub quote: MintQuote,
}

impl Invoice {
    /// The BOLT11 payment request.
    pub fn bolt11(&self) -> &str {
        &self.quote.request
    }
}

impl BuyerWallet {
    /// `~/.paygress/wallet`.
    pub fn default_dir() -> Result<PathBuf, WalletError> {
        super::home_dir()
            .map(|h| h.join("wallet"))
            .ok_or(WalletError::NoHome)
    }

    /// Open (or create) the wallet in `dir`.
    pub async fn open(dir: &Path) -> Result<BuyerWallet, WalletError> {
        let io = |err| WalletError::Io {
            path: dir.display().to_string(),
            err,
        };
        if let Some(parent) = dir.parent() {
            if !parent.as_os_str().is_empty() && !parent.exists() {
                super::private_dir(parent).map_err(io)?;
            }
        }
        super::private_dir(dir).map_err(io)?;
        let seed = load_or_create_seed(&dir.join("seed"))?;
        let file = dir.join("wallet.sqlite");
        let db = cdk_sqlite::WalletSqliteDatabase::new(file.clone())
            .await
            .map_err(|e| WalletError::Io {
                path: file.display().to_string(),
                err: std::io::Error::other(e.to_string()),
            })?;
        restrict(dir);
        Ok(BuyerWallet {
            dir: dir.to_path_buf(),
            db: Arc::new(db),
            seed,
            journal: Journal::at(&dir.join("journal.jsonl")),
            minting: tokio::sync::Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The cdk wallet for one mint (all share the store and the seed).
    pub fn wallet(&self, mint: &MintUrl) -> Result<Wallet, WalletError> {
        WalletBuilder::new()
            .mint_url(mint.clone())
            .unit(CurrencyUnit::Sat)
            .localstore(self.db.clone())
            .seed(self.seed)
            .without_rate_limiting()
            .build()
            .map_err(WalletError::mint)
    }

    pub fn parse_mint(s: &str) -> Result<MintUrl, WalletError> {
        MintUrl::from_str(s.trim()).map_err(|_| WalletError::BadMint(s.chars().take(200).collect()))
    }

    /// The mints the wallet has used.
    pub async fn mints(&self) -> Result<Vec<MintUrl>, WalletError> {
        let mut v: Vec<MintUrl> = self
            .db
            .get_mints()
            .await
            .map_err(|e| WalletError::Mint(e.to_string()))?
            .into_keys()
            .collect();
        v.sort_by_key(|m| m.to_string());
        Ok(v)
    }

    /// Spendable sats per mint.
    pub async fn balances(&self) -> Result<Vec<(MintUrl, u64)>, WalletError> {
        let mut out = Vec::new();
        for m in self.mints().await? {
            let b = self
                .wallet(&m)?
                .total_balance()
                .await
                .map_err(WalletError::mint)?;
            out.push((m, u64::from(b)));
        }
        Ok(out)
    }

    pub async fn balance_at(&self, mint: &MintUrl) -> Result<u64, WalletError> {
        Ok(u64::from(
            self.wallet(mint)?
                .total_balance()
                .await
                .map_err(WalletError::mint)?,
        ))
    }

    pub async fn total(&self) -> Result<u64, WalletError> {
        Ok(self.balances().await?.iter().map(|(_, s)| s).sum())
    }

    /// Ask `mint` for a Lightning invoice of `sats` (NUT-04).
    pub async fn fund_quote(&self, mint: &MintUrl, sats: u64) -> Result<Invoice, WalletError> {
        let w = self.wallet(mint)?;
        w.fetch_mint_info().await.map_err(WalletError::mint)?;
        let quote = w
            .mint_quote(PaymentMethod::BOLT11, Some(Amount::from(sats)), None, None)
            .await
            .map_err(WalletError::mint)?;
        Ok(Invoice {
            mint: mint.clone(),
            quote,
        })
    }

    /// Wait up to `timeout` for the invoice to be paid, then mint: the sats minted.
    pub async fn wait_and_mint(
        &self,
        invoice: &Invoice,
        timeout: Duration,
    ) -> Result<u64, WalletError> {
        let w = self.wallet(&invoice.mint)?;
        w.wait_for_payment(&invoice.quote, timeout)
            .await
            .map_err(|e| match e {
                cdk::Error::Timeout => WalletError::NotPaid(timeout.as_secs()),
                other => WalletError::mint(other),
            })?;
        // Minting goes through the one path that journals it, under the lock, so a balance
        // check minting the same paid invoice at the same moment cannot count it twice or not
        // at all.
        self.collect_paid_invoices().await
    }

    /// Mint every paid invoice not minted yet — the one just paid, or one paid after its
    /// `wallet fund` stopped waiting (timed out, interrupted, or the MCP server ended first):
    /// the sats minted.
    pub async fn collect_paid_invoices(&self) -> Result<u64, WalletError> {
        let _minting = self.minting.lock().await;
        let mut first_error = None;
        for m in self.mints().await? {
            if let Err(e) = self.wallet(&m)?.mint_unissued_quotes().await {
                first_error.get_or_insert(WalletError::mint(e));
            }
        }
        // Journal by what each quote says it issued, not by what this call minted: cdk may
        // finish a mint that was interrupted or raced (its saga recovery) outside this call,
        // and every issued quote is journalled exactly once, by its id.
        let journalled: std::collections::HashSet<String> = self
            .journal
            .entries()?
            .into_iter()
            .filter(|e| e.kind == EntryKind::Fund)
            .filter_map(|e| e.note?.strip_prefix(QUOTE_NOTE).map(str::to_string))
            .collect();
        let quotes = self
            .db
            .get_mint_quotes()
            .await
            .map_err(|e| WalletError::Mint(e.to_string()))?;
        let mut total = 0;
        for q in quotes {
            let issued = u64::from(q.amount_issued);
            if issued == 0 || journalled.contains(&q.id) {
                continue;
            }
            self.journal.append(&entry(
                EntryKind::Fund,
                issued,
                &q.mint_url,
                Some(format!("{QUOTE_NOTE}{}", q.id)),
            ))?;
            total += issued;
        }
        match first_error {
            Some(e) if total == 0 => Err(e),
            _ => Ok(total),
        }
    }

    /// Swap `token` into the wallet: its mint and the sats received (after the mint's fees).
    pub async fn receive(&self, token: &Secret) -> Result<(MintUrl, u64), WalletError> {
        self.receive_as(token, EntryKind::Receive, None, None).await
    }

    /// [`BuyerWallet::receive`], journalled as `kind` (a refund names its provider and request).
    pub async fn receive_as(
        &self,
        token: &Secret,
        kind: EntryKind,
        provider: Option<&str>,
        request_id: Option<&str>,
    ) -> Result<(MintUrl, u64), WalletError> {
        let raw = token.expose().trim();
        let parsed = Token::from_str(raw).map_err(|_| WalletError::InvalidToken)?;
        let mint = parsed.mint_url().map_err(|_| WalletError::InvalidToken)?;
        let w = self.wallet(&mint)?;
        w.fetch_mint_info().await.map_err(WalletError::mint)?;
        let got = w
            .receive(raw, ReceiveOptions::default())
            .await
            .map_err(WalletError::mint)?;
        let sats = u64::from(got);
        let mut e = entry(kind, sats, &mint, None);
        e.provider = provider.map(str::to_string);
        e.request_id = request_id.map(str::to_string);
        self.journal.append(&e)?;
        Ok((mint, sats))
    }

    /// A mint to pay `sats` from: the first of `accepted` (or of the wallet's own mints when
    /// `accepted` is empty) holding enough.
    pub async fn pick_mint(&self, accepted: &[String], sats: u64) -> Result<MintUrl, WalletError> {
        let balances = self.balances().await?;
        let ok: Vec<MintUrl> = accepted
            .iter()
            .filter_map(|m| MintUrl::from_str(m).ok())
            .collect();
        let mut best: Option<(MintUrl, u64)> = None;
        for (m, have) in balances {
            if !ok.is_empty() && !ok.contains(&m) {
                continue;
            }
            if have >= sats {
                return Ok(m);
            }
            if best.as_ref().is_none_or(|(_, b)| have > *b) {
                best = Some((m, have));
            }
        }
        match best {
            Some((m, have)) => Err(WalletError::Insufficient {
                mint: m.to_string(),
                have,
                need: sats,
            }),
            None => Err(WalletError::NoUsableMint(if accepted.is_empty() {
                "(the wallet is empty)".into()
            } else {
                accepted.join(", ")
            })),
        }
    }

    /// Take `sats` out of the wallet at `mint` as a token, journalled as `entry` (written before
    /// the token is made: a crash over-counts a spend, never hides one).
    pub async fn send_journalled(
        &self,
        mint: &MintUrl,
        sats: u64,
        entry: Entry,
    ) -> Result<Secret, WalletError> {
        let w = self.wallet(mint)?;
        let have = u64::from(w.total_balance().await.map_err(WalletError::mint)?);
        if have < sats {
            return Err(WalletError::Insufficient {
                mint: mint.to_string(),
                have,
                need: sats,
            });
        }
        let prepared = w
            .prepare_send(Amount::from(sats), SendOptions::default())
            .await
            .map_err(WalletError::mint)?;
        if let Err(e) = self.journal.append(&entry) {
            let _ = prepared.cancel().await;
            return Err(e.into());
        }
        let token = prepared.confirm(None).await.map_err(WalletError::mint)?;
        Ok(Secret::new(token.to_string()))
    }

    /// The owner takes `sats` out as a token.
    pub async fn send(&self, mint: Option<&str>, sats: u64) -> Result<Secret, WalletError> {
        let mint = match mint {
            Some(m) => Self::parse_mint(m)?,
            None => self.pick_mint(&[], sats).await?,
        };
        let e = entry(EntryKind::Send, sats, &mint, None);
        self.send_journalled(&mint, sats, e).await
    }
}

/// How a Lightning funding names its quote in the journal.
const QUOTE_NOTE: &str = "lightning quote ";

/// A journal entry of now.
pub fn entry(kind: EntryKind, sats: u64, mint: &MintUrl, note: Option<String>) -> Entry {
    Entry {
        at: now_secs(),
        kind,
        sats,
        mint: mint.to_string(),
        provider: None,
        pod: None,
        request_id: None,
        note,
    }
}

fn load_or_create_seed(path: &Path) -> Result<[u8; 64], WalletError> {
    let io = |err| WalletError::Io {
        path: path.display().to_string(),
        err,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim())
                .map_err(|_| io(std::io::Error::other("the seed file is not hex")))?;
            bytes
                .try_into()
                .map_err(|_| io(std::io::Error::other("the seed file is not 64 bytes")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 64];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut seed);
            write_private(path, hex::encode(seed).as_bytes()).map_err(io)?;
            Ok(seed)
        }
        Err(e) => Err(io(e)),
    }
}

/// Every file in the wallet directory 0600 (SQLite makes its -wal and -shm files with the
/// umask's mode).
pub fn restrict(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o600));
            }
        }
    }
}
