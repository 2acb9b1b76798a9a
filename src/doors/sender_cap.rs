//! A cap on the requests one Nostr sender has in flight at a door.
//!
//! On Nostr anyone can make a fresh key, but one key should still not be able to tie up the
//! provider: each request it sends holds a task, a journal row and, for a spawn, a backend
//! slot until it is answered. So the Nostr doors (the NIP-17 marketplace and ContextVM) count,
//! per sender, the spawn, top-up and status requests being handled, and refuse one over
//! `provider.max_concurrent_per_sender` at once with `resource_unavailable`, before the core
//! sees it: nothing is paid and the token is untouched. Other senders are not affected. (The
//! core caps spawns per sender too; this cap covers every request kind, at the door.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{ErrorType, ProviderError};

/// The per-sender counts of one door. Cheap to clone; clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct SenderCap {
    cap: u32,
    counts: Arc<Mutex<HashMap<String, u32>>>,
}

/// One admitted request; dropping it frees the sender's slot.
#[derive(Debug)]
pub struct Admitted {
    counts: Arc<Mutex<HashMap<String, u32>>>,
    who: String,
}

impl SenderCap {
    /// At most `cap` requests per sender at once; 0 means no cap.
    pub fn new(cap: u32) -> SenderCap {
        SenderCap {
            cap,
            counts: Arc::default(),
        }
    }

    /// Admit one request from `sender`, or refuse it (token untouched) when it has `cap` open.
    pub fn admit(&self, sender: &str) -> Result<Admitted, ProviderError> {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(sender.to_string()).or_insert(0);
        if self.cap > 0 && *n >= self.cap {
            return Err(ProviderError::new(
                ErrorType::ResourceUnavailable,
                format!(
                    "{} of your requests are still in progress; wait for one to finish and send this again (nothing was paid, your token is untouched)",
                    self.cap
                ),
            ));
        }
        *n += 1;
        Ok(Admitted {
            counts: Arc::clone(&self.counts),
            who: sender.to_string(),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.who);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_over_the_cap_is_refused_others_are_not_and_slots_come_back() {
        let cap = SenderCap::new(2);
        let a1 = cap.admit("a").unwrap();
        let _a2 = cap.admit("a").unwrap();
        let e = cap.admit("a").unwrap_err();
        assert_eq!(e.error_type, ErrorType::ResourceUnavailable);
        let _b = cap.admit("b").unwrap();
        drop(a1);
        assert!(cap.admit("a").is_ok());
    }
}
