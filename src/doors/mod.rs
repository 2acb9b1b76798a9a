//! Doors: the ways in. Each is a thin adapter from a wire format to [`crate::provider::Provider`].

pub mod contextvm;
pub mod http;
pub mod mcp;
pub mod nostr_dm;
pub mod sender_cap;
pub mod stateless;
pub mod stdio;
