//! The buyer's config file: relays and spending caps.
//!
//! Caps live here and nowhere else — no tool argument, flag or environment variable can raise
//! them — so an agent talked into "spend more" by a prompt cannot. Spends are counted from the
//! [`Journal`](super::journal::Journal) net of refunds over the last 24 hours.
//!
//! ```toml
//! relays = ["wss://relay.example"]
//! [caps]
//! per_call_sats = 1000      # one spawn or top-up
//! per_day_sats = 5000       # all providers, last 24 h
//! per_provider_sats = 3000  # one provider, last 24 h
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::journal::{Journal, JournalError};

/// The owner's spending caps, in sats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Caps {
    /// Most one spawn or top-up may cost.
    #[serde(default = "default_per_call")]
    pub per_call_sats: u64,
    /// Most paid to all providers in 24 hours, net of refunds.
    #[serde(default = "default_per_day")]
    pub per_day_sats: u64,
    /// Most paid to one provider in 24 hours, net of refunds.
    #[serde(default = "default_per_day")]
    pub per_provider_sats: u64,
}

fn default_per_call() -> u64 {
    1_000
}
fn default_per_day() -> u64 {
    5_000
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            per_call_sats: default_per_call(),
            per_day_sats: default_per_day(),
            per_provider_sats: default_per_day(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuyerConfig {
    /// Relays to find providers on and talk to them through.
    #[serde(default)]
    pub relays: Vec<String>,
    /// The mint `wallet_fund` asks for an invoice (default: the wallet's first mint).
    #[serde(default)]
    pub mint: Option<String>,
    #[serde(default)]
    pub caps: Caps,
}

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("{path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path}: {err}")]
    Parse { path: String, err: String },
    #[error("{which} cap: {limit} sat; this payment of {sats} sat would make it {would_be} sat (caps are set in the buyer config file only)")]
    Exceeded {
        which: &'static str,
        limit: u64,
        sats: u64,
        would_be: u64,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl BuyerConfig {
    /// `~/.paygress/buyer.toml`.
    pub fn default_path() -> Option<PathBuf> {
        super::home_dir().map(|h| h.join("buyer.toml"))
    }

    /// Read `path`; a missing default file gives the defaults.
    pub fn load(path: &Path, must_exist: bool) -> Result<BuyerConfig, CapsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(BuyerConfig::default())
            }
            Err(err) => {
                return Err(CapsError::Read {
                    path: path.display().to_string(),
                    err,
                })
            }
        };
        toml::from_str(&text).map_err(|e| CapsError::Parse {
            path: path.display().to_string(),
            err: e.message().to_string(),
        })
    }
}

impl Caps {
    /// Refuse a payment of `sats` to `provider` that would pass a cap.
    pub fn check(
        &self,
        journal: &Journal,
        provider: &str,
        sats: u64,
        now: u64,
    ) -> Result<(), CapsError> {
        if sats > self.per_call_sats {
            return Err(CapsError::Exceeded {
                which: "per-call",
                limit: self.per_call_sats,
                sats,
                would_be: sats,
            });
        }
        let since = now.saturating_sub(24 * 3600);
        let day = journal.spent_since(since, None)?.saturating_add(sats);
        if day > self.per_day_sats {
            return Err(CapsError::Exceeded {
                which: "per-day",
                limit: self.per_day_sats,
                sats,
                would_be: day,
            });
        }
        let one = journal
            .spent_since(since, Some(provider))?
            .saturating_add(sats);
        if one > self.per_provider_sats {
            return Err(CapsError::Exceeded {
                which: "per-provider",
                limit: self.per_provider_sats,
                sats,
                would_be: one,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parse_and_refuse_past_each_limit() {
        let cfg: BuyerConfig = toml::from_str(
            "relays = [\"ws://127.0.0.1:1\"]\n[caps]\nper_call_sats = 100\nper_day_sats = 150\nper_provider_sats = 120\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::at(&dir.path().join("j"));
        let c = &cfg.caps;
        assert!(c.check(&j, "a", 100, 1_000_000).is_ok());
        assert!(matches!(
            c.check(&j, "a", 101, 1_000_000),
            Err(CapsError::Exceeded {
                which: "per-call",
                ..
            })
        ));
        let mut e = crate::buyer::wallet::entry(
            crate::buyer::journal::EntryKind::Spend,
            100,
            &"http://127.0.0.1:1".parse().unwrap(),
            None,
        );
        e.at = 1_000_000;
        e.provider = Some("a".into());
        j.append(&e).unwrap();
        assert!(matches!(
            c.check(&j, "a", 30, 1_000_000),
            Err(CapsError::Exceeded {
                which: "per-provider",
                ..
            })
        ));
        assert!(c.check(&j, "b", 50, 1_000_000).is_ok());
        assert!(matches!(
            c.check(&j, "b", 51, 1_000_000),
            Err(CapsError::Exceeded {
                which: "per-day",
                ..
            })
        ));
        // A day later the spend no longer counts.
        assert!(c.check(&j, "a", 100, 1_000_000 + 86_401).is_ok());
        assert!(toml::from_str::<BuyerConfig>("[caps]\nper_cal_sats = 1\n").is_err());
    }
}
