//! Failed writes: make the journal write right after a swap fail, for the fault tests only.
//!
//! The money is in once the mint accepted a swap, so the write that records it is the one that
//! must not be lost: a failure there is retried, and if it persists the payment is refunded at
//! once (`provider::settle`). A full disk is hard to produce on demand, so each such write calls
//! [`fail`] with its step name; when the environment variable `PAYGRESS_FAIL_WRITE_AT` is
//! `<step>:<count>` (say `spawn_paid:2`), the first `<count>` writes at that step fail as a
//! full disk would (`SQLITE_FULL`). Test-only: compiled in always, inert unless set, and unset
//! (always, outside the tests) it costs one environment lookup.

use std::sync::atomic::{AtomicU32, Ordering};

/// The steps that can be made to fail.
pub const STEPS: &[&str] = &["spawn_paid", "topup_paid"];

static FAILED: AtomicU32 = AtomicU32::new(0);

/// `Err` (a full disk) if `PAYGRESS_FAIL_WRITE_AT` says this write at `step` must fail.
pub fn fail(step: &str) -> Result<(), crate::store::StoreError> {
    let Some(v) = std::env::var_os("PAYGRESS_FAIL_WRITE_AT") else {
        return Ok(());
    };
    let v = v.to_string_lossy();
    let Some((at, count)) = v.split_once(':') else {
        return Ok(());
    };
    let count: u32 = count.parse().unwrap_or(0);
    if at != step || FAILED.fetch_add(1, Ordering::SeqCst) >= count {
        return Ok(());
    }
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
        Some(format!(
            "injected write failure at {step} (PAYGRESS_FAIL_WRITE_AT)"
        )),
    )
    .into())
}
