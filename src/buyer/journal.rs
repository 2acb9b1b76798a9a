//! The buyer's spending journal: one JSON object per line in `~/.paygress/wallet/journal.jsonl`
//! (0600), appended and synced before the money moves.
//!
//! Why a plain append-only file: the owner reads it (`paygress-cli wallet history`, or any
//! text tool) to see what the agent spent, and the caps are sums over it. A spend is written
//! *before* the token is made and handed to a provider, so a crash can over-count a spend (the
//! cap errs on the safe side) but never hide one. Entries never hold a token.

use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What happened to the wallet's money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Minted from a paid Lightning invoice.
    Fund,
    /// A token received into the wallet.
    Receive,
    /// A token taken out by the owner (`wallet send`).
    Send,
    /// Paid to a provider.
    Spend,
    /// Came back from a provider (a refund token) or was reclaimed unspent.
    Refund,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix seconds.
    pub at: u64,
    pub kind: EntryKind,
    pub sats: u64,
    pub mint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("journal {path}: {err}")]
pub struct JournalError {
    pub path: String,
    pub err: std::io::Error,
}

#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn at(path: &Path) -> Journal {
        Journal {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, err: std::io::Error) -> JournalError {
        JournalError {
            path: self.path.display().to_string(),
            err,
        }
    }

    /// Append `entry` and sync it to disk.
    pub fn append(&self, entry: &Entry) -> Result<(), JournalError> {
        let mut line = serde_json::to_string(entry)
            .map_err(|e| self.io(std::io::Error::other(e.to_string())))?;
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        f.write_all(line.as_bytes()).map_err(|e| self.io(e))?;
        f.sync_data().map_err(|e| self.io(e))
    }

    /// Every entry, oldest first. Lines that do not parse (a torn last write) are skipped.
    pub fn entries(&self) -> Result<Vec<Entry>, JournalError> {
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut out = Vec::new();
        for line in std::io::BufReader::new(f).lines() {
            let line = line.map_err(|e| self.io(e))?;
            if let Ok(e) = serde_json::from_str::<Entry>(&line) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Net sats paid to providers since `since` (spends less refunds), optionally to one
    /// provider only.
    pub fn spent_since(&self, since: u64, provider: Option<&str>) -> Result<u64, JournalError> {
        let mut spent: u64 = 0;
        let mut back: u64 = 0;
        for e in self.entries()? {
            if e.at < since || provider.is_some_and(|p| e.provider.as_deref() != Some(p)) {
                continue;
            }
            match e.kind {
                EntryKind::Spend => spent = spent.saturating_add(e.sats),
                EntryKind::Refund if e.provider.is_some() => back = back.saturating_add(e.sats),
                _ => {}
            }
        }
        Ok(spent.saturating_sub(back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: EntryKind, sats: u64, provider: Option<&str>, at: u64) -> Entry {
        Entry {
            at,
            kind,
            sats,
            mint: "http://m".into(),
            provider: provider.map(str::to_string),
            pod: None,
            request_id: None,
            note: None,
        }
    }

    #[test]
    fn spending_is_net_of_refunds_per_window_and_provider() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::at(&dir.path().join("j.jsonl"));
        assert_eq!(j.spent_since(0, None).unwrap(), 0);
        j.append(&entry(EntryKind::Fund, 1000, None, 10)).unwrap();
        j.append(&entry(EntryKind::Spend, 100, Some("a"), 10))
            .unwrap();
        j.append(&entry(EntryKind::Spend, 50, Some("b"), 20))
            .unwrap();
        j.append(&entry(EntryKind::Refund, 50, Some("b"), 21))
            .unwrap();
        j.append(&entry(EntryKind::Spend, 7, Some("a"), 30))
            .unwrap();
        assert_eq!(j.spent_since(0, None).unwrap(), 107);
        assert_eq!(j.spent_since(0, Some("a")).unwrap(), 107);
        assert_eq!(j.spent_since(0, Some("b")).unwrap(), 0);
        assert_eq!(j.spent_since(25, None).unwrap(), 7);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(j.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(j.entries().unwrap().len(), 5);
    }
}
