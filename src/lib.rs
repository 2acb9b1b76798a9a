//! Paygress: sell SSH-ready compute for Cashu ecash.
//!
//! A buyer pays with a Cashu token; the provider swaps it at the mint, provisions a workload on
//! its backend for exactly the time paid, and tears it down when the time runs out unless it is
//! topped up. No accounts.
//!
//! Layout, from the money outward:
//! - [`provider`]: the core — offers, spawn, top-up, status, expiry, crash recovery. The money
//!   path lives there, in one file.
//! - [`payments`]: Cashu (inspect a token offline, swap it at the mint, refund, earnings wallets).
//! - [`store`]: SQLite journal of payments and workloads.
//! - [`backend`]: the one trait every compute backend implements, and the backends.
//! - [`config`], [`api`] (wire types), [`error`] (typed errors), [`validate`] (buyer input).
//! - Doors (MCP, ContextVM, Nostr, HTTP, CLI) are thin adapters over [`provider::Provider`];
//!   [`relay`] is the embedded Nostr relay for machines with no internet.

pub mod api;
pub mod app;
pub mod backend;
pub mod books;
pub mod bootstrap;
pub mod buyer;
pub mod config;
pub mod crashpoint;
pub mod datadir_lock;
#[cfg(feature = "demo")]
pub mod demo;
pub mod doors;
pub mod error;
pub mod failpoint;
pub mod fsutil;
pub mod identity;
pub mod market;
pub mod payments;
pub mod provider;
pub mod relay;
pub mod secret;
pub mod settlement;
pub mod status;
pub mod store;
pub mod tls_pin;
pub mod validate;

pub use error::{ErrorType, ProviderError};
pub use provider::{Caller, Provider};
