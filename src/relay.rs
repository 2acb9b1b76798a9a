//! An embedded Nostr relay, so the Nostr doors run on a machine with no internet.
//!
//! ContextVM and the marketplace need a relay between buyer and provider. For development,
//! demos and tests the provider can carry its own (nostr-relay-builder's `LocalRelay`, events in
//! memory). Two choices matter:
//! - Port 0 means "any free port": we find one by binding, release it and hand it to the relay,
//!   retrying if another process takes it in between.
//! - The relay's default rate limit (60 events a minute per connection) stalls a provider that
//!   answers more than one call a second; the embedded relay raises it, since everything on it
//!   is local.

use std::net::SocketAddr;

use nostr_relay_builder::prelude::{LocalRelay, RateLimit, RelayBuilder};

/// A running embedded relay; stops when dropped.
pub struct EmbeddedRelay {
    relay: LocalRelay,
    addr: SocketAddr,
}

impl EmbeddedRelay {
    /// Listen on `addr` (port 0 picks a free port) and serve the Nostr protocol there.
    pub async fn start(addr: SocketAddr) -> std::io::Result<EmbeddedRelay> {
        let mut last_err = None;
        for _ in 0..5 {
            let port = match addr.port() {
                0 => std::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))?
                    .local_addr()?
                    .port(),
                p => p,
            };
            let builder = RelayBuilder::default()
                .addr(addr.ip())
                .port(port)
                .rate_limit(RateLimit {
                    max_reqs: 1_000,
                    notes_per_minute: 100_000,
                });
            let relay = LocalRelay::new(builder);
            match relay.run().await {
                Ok(()) => {
                    return Ok(EmbeddedRelay {
                        relay,
                        addr: SocketAddr::new(addr.ip(), port),
                    })
                }
                Err(e) if addr.port() == 0 => last_err = Some(e.to_string()),
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
        }
        Err(std::io::Error::other(last_err.unwrap_or_default()))
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://HOST:PORT`, for clients.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

impl Drop for EmbeddedRelay {
    fn drop(&mut self) {
        self.relay.shutdown();
    }
}
