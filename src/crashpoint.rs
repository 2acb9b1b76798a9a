//! Crash points: `kill -9` at a named step of the money path, for the crash tests.
//!
//! Recovery is only as good as the crash it was tested against, and the interesting crashes
//! sit between two journal writes. Each step of spawn, top-up and refund calls [`hit`] with its
//! name; when the environment variable `PAYGRESS_CRASH_AT` names that step, the process sends
//! itself SIGKILL there — the same as an operator's `kill -9` or a power cut: no destructors,
//! no flushing. Unset (always, outside the tests) it costs one environment lookup.

/// The steps, in the order a spawn (then a refund, then a top-up) passes them.
pub const STEPS: &[&str] = &[
    "spawn_journalled",
    "spawn_swapped",
    "spawn_paid",
    "spawn_created",
    "spawn_completed",
    "refund_prepared",
    "refund_minted",
    "topup_journalled",
    "topup_swapped",
    "topup_paid",
    "topup_extended",
];

/// Die here if `PAYGRESS_CRASH_AT` says so.
pub fn hit(step: &str) {
    if std::env::var_os("PAYGRESS_CRASH_AT").is_some_and(|v| v == step) {
        // SAFETY: plain syscalls on our own pid.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
