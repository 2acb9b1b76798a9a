//! The provider's books as the data dir holds them, whatever the config says now.
//!
//! Why: `system reset` deletes the data dir, so before it does, everything that is money must be
//! counted from what is on disk, not from what the current config names. A rerun of bootstrap
//! with other `--mints` (or a mint URL written differently) leaves wallets the config no longer
//! lists; a swap or refund killed half-way leaves proofs `Reserved` or `Pending`; a payment whose
//! swap outcome is unknown is a journal row, not a balance. So this reads every
//! `wallets/*.sqlite` (any mint), sums every proof that is not spent, and counts the journal's
//! unsettled rows. A wallets directory that exists but cannot be read is an error, never zero.
//!
//! Withdrawn tokens are also kept here ([`PENDING_TOKENS`]) until the operator's side confirms it
//! wrote them: between the host's withdrawal and the operator's fsync, the host's file is the
//! only copy.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use cdk::cdk_database::WalletDatabase;
use cdk::nuts::State;
use serde::{Deserialize, Serialize};

use crate::store::{PaymentState, Store};

/// Tokens withdrawn on the host and not yet confirmed written by the operator's side (0600,
/// fsynced, one token a line), relative to the data dir.
pub const PENDING_TOKENS: &str = "withdrawn.tokens";

/// One wallet file's proofs by state, in sats.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WalletBooks {
    pub file: String,
    pub mints: Vec<String>,
    pub unspent_sats: u64,
    pub reserved_sats: u64,
    pub pending_sats: u64,
    /// Sent as tokens and not yet claimed by their receiver (withdrawals, refunds): no longer
    /// the provider's.
    pub pending_spent_sats: u64,
}

impl WalletBooks {
    pub fn held(&self) -> u64 {
        self.unspent_sats + self.reserved_sats + self.pending_sats
    }
}

/// Everything money in a data dir.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Books {
    pub wallets: Vec<WalletBooks>,
    /// Sum of unspent, reserved and pending proofs over every wallet.
    pub total_sats: u64,
    /// Only the unspent part (what a withdrawal can take now).
    pub unspent_sats: u64,
    /// Journal rows whose money is not settled (swapping, unknown, paid, refund_pending).
    pub unsettled_payments: usize,
    /// Withdrawn tokens waiting for the operator's confirmation ([`PENDING_TOKENS`]).
    pub pending_tokens_file: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BooksError {
    #[error("cannot read {0}: {1}")]
    Io(String, String),
    #[error("cannot read the wallet {0}: {1}")]
    Wallet(String, String),
    #[error("cannot read the payments journal: {0}")]
    Journal(String),
}

/// Read the books of `data_dir`. A missing data dir or wallets dir holds nothing; one that is
/// there and unreadable is an error.
pub async fn read(data_dir: &Path) -> Result<Books, BooksError> {
    let mut books = Books {
        pending_tokens_file: data_dir.join(PENDING_TOKENS).exists(),
        ..Books::default()
    };
    let dir = data_dir.join("wallets");
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(BooksError::Io(dir.display().to_string(), e.to_string())),
        Ok(_) => {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| BooksError::Io(dir.display().to_string(), e.to_string()))?;
            let mut files = Vec::new();
            for e in entries {
                let e = e.map_err(|e| BooksError::Io(dir.display().to_string(), e.to_string()))?;
                let p = e.path();
                if p.extension().and_then(|x| x.to_str()) == Some("sqlite") {
                    files.push(p);
                }
            }
            files.sort();
            for f in files {
                let w = wallet(&f).await?;
                books.total_sats += w.held();
                books.unspent_sats += w.unspent_sats;
                books.wallets.push(w);
            }
        }
    }
    let journal = data_dir.join("paygress.sqlite3");
    if journal.exists() {
        let store = Store::open(&journal).map_err(|e| BooksError::Journal(e.to_string()))?;
        let rows = store
            .payments_in_state(&[
                PaymentState::Swapping,
                PaymentState::Unknown,
                PaymentState::Paid,
                PaymentState::RefundPending,
            ])
            .map_err(|e| BooksError::Journal(e.to_string()))?;
        books.unsettled_payments = rows.len();
    }
    Ok(books)
}

async fn wallet(file: &Path) -> Result<WalletBooks, BooksError> {
    let shown = file.display().to_string();
    let err = |e: String| BooksError::Wallet(shown.clone(), e);
    let db = cdk_sqlite::WalletSqliteDatabase::new(file.to_path_buf())
        .await
        .map_err(|e| err(e.to_string()))?;
    let proofs = db
        .get_proofs(None, None, None, None)
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut w = WalletBooks {
        file: shown.clone(),
        ..WalletBooks::default()
    };
    let mut mints = BTreeMap::new();
    for p in proofs {
        let sats = u64::from(p.proof.amount);
        let slot = match p.state {
            State::Unspent => &mut w.unspent_sats,
            State::Reserved => &mut w.reserved_sats,
            State::Pending => &mut w.pending_sats,
            State::PendingSpent => &mut w.pending_spent_sats,
            State::Spent => continue,
        };
        *slot = slot.saturating_add(sats);
        mints.insert(p.mint_url.to_string(), ());
    }
    w.mints = mints.into_keys().collect();
    Ok(w)
}

/// Append `tokens` to the data dir's [`PENDING_TOKENS`] (created 0600), fsync it and the dir.
pub fn keep_pending(data_dir: &Path, tokens: &[String]) -> std::io::Result<()> {
    let path = data_dir.join(PENDING_TOKENS);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)?;
    for t in tokens {
        writeln!(f, "{t}")?;
    }
    f.sync_all()?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// The tokens kept and not yet confirmed, one a line.
pub fn pending(data_dir: &Path) -> std::io::Result<Vec<String>> {
    match std::fs::read_to_string(data_dir.join(PENDING_TOKENS)) {
        Ok(s) => Ok(s
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_empty_or_missing_dir_holds_nothing_and_an_unreadable_one_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let b = read(&d.path().join("nope")).await.unwrap();
        assert_eq!(b.total_sats, 0);
        let b = read(d.path()).await.unwrap();
        assert_eq!(b, Books::default());
        // wallets/ is a file: not a directory that can be listed.
        std::fs::write(d.path().join("wallets"), b"x").unwrap();
        assert!(read(d.path()).await.is_err());
    }

    #[test]
    fn pending_tokens_are_appended_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        keep_pending(d.path(), &["cashuA1".into()]).unwrap();
        keep_pending(d.path(), &["cashuB2".into()]).unwrap();
        assert_eq!(pending(d.path()).unwrap(), vec!["cashuA1", "cashuB2"]);
        let mode = std::fs::metadata(d.path().join(PENDING_TOKENS))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
