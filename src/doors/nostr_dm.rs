//! The marketplace door: the provider's offer on Nostr, and private requests answered privately.
//!
//! A thin adapter like the others: it publishes [`crate::market::offer_event`] every heartbeat,
//! unwraps NIP-17 gift wraps addressed to the provider, hands `spawn` / `topup` / `status` to
//! the core as the sender's pubkey, and gift-wraps the answer back with the request id.
//!
//! Rules that keep money safe on a medium where events can arrive twice or late:
//! - Every gift wrap's id is recorded in the store before anything is done (`seen_events`); a
//!   replayed wrap (the same event sent again) is answered once, and never charged twice. The
//!   core's own replay protection (same token, same `request_id`) stands behind this.
//! - A request whose rumor is older than [`REQUEST_MAX_AGE_SECS`] is refused without touching
//!   the token: its buyer has given up waiting and must not be charged now.
//! - A request that cannot be read gets an `invalid_request` answer, not silence; only a wrap
//!   that cannot be decrypted (so has no known sender) goes unanswered.
//! - A sender with `provider.max_concurrent_per_sender` requests in flight gets
//!   `resource_unavailable` for the next at once, token untouched ([`super::sender_cap`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nostr_sdk::prelude::*;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::api::{SpawnRequest, StatusRequest, TopUpRequest};
use crate::error::{ErrorType, ProviderError};
use crate::market::{self, RequestKind, ResponseEnvelope, REQUEST_MAX_AGE_SECS};
use crate::provider::{now_secs, Caller, Provider};

use super::sender_cap::SenderCap;

/// Gift wraps carry a randomised timestamp up to two days in the past (NIP-59), so the
/// subscription must look back that far; the seen-events table keeps old ones from being
/// handled again.
const GIFT_WRAP_LOOKBACK_SECS: u64 = 2 * 24 * 3600 + 600;

#[derive(Debug, thiserror::Error)]
pub enum MarketDoorError {
    #[error("the marketplace needs at least one relay: set nostr.relays (or NOSTR_RELAYS)")]
    NoRelays,
    #[error("relay: {0}")]
    Relay(String),
}

/// Run the marketplace door until `shutdown`.
pub async fn run(
    provider: Arc<Provider>,
    relays: Vec<String>,
    heartbeat: Duration,
    shutdown: CancellationToken,
) -> Result<(), MarketDoorError> {
    if relays.is_empty() {
        return Err(MarketDoorError::NoRelays);
    }
    let keys = provider.keys().clone();
    let client = Client::builder().signer(keys.clone()).build();
    for r in &relays {
        client
            .add_relay(r)
            .await
            .map_err(|e| MarketDoorError::Relay(format!("{r}: {e}")))?;
    }
    client.connect().await;
    client.wait_for_connection(Duration::from_secs(10)).await;

    let since = Timestamp::from(now_secs().saturating_sub(GIFT_WRAP_LOOKBACK_SECS));
    let filter = Filter::new()
        .kind(Kind::GiftWrap)
        .pubkey(keys.public_key())
        .since(since);
    let mut notes = client.notifications();
    client
        .subscribe(filter, None)
        .await
        .map_err(|e| MarketDoorError::Relay(e.to_string()))?;

    let heartbeat_secs = heartbeat.as_secs().max(1);
    let publisher = {
        let (client, provider, shutdown) = (client.clone(), provider.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                publish_offer(&client, &provider, heartbeat_secs).await;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(heartbeat_secs)) => {}
                }
            }
        })
    };
    tracing::info!(relays = %relays.join(", "), heartbeat = heartbeat_secs, "marketplace door open");
    crate::status::door_open("marketplace");

    let in_flight: Arc<Mutex<HashSet<EventId>>> = Arc::default();
    let senders = SenderCap::new(provider.config().provider.max_concurrent_per_sender);
    loop {
        let note = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = notes.recv() => n,
        };
        let event = match note {
            Ok(RelayPoolNotification::Event { event, .. }) => event,
            Ok(RelayPoolNotification::Shutdown) => break,
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("marketplace: {n} relay notifications dropped; they arrive again on resubscribe");
                continue;
            }
            Err(_) => break,
        };
        if event.kind != Kind::GiftWrap {
            continue;
        }
        if !claim(&provider, &in_flight, event.id) {
            continue;
        }
        let (client, provider, keys, in_flight, senders) = (
            client.clone(),
            provider.clone(),
            keys.clone(),
            in_flight.clone(),
            senders.clone(),
        );
        tokio::spawn(async move {
            handle(&client, &provider, &keys, &senders, &event).await;
            if let Ok(mut s) = in_flight.lock() {
                s.remove(&event.id);
            }
        });
    }
    publisher.abort();
    client.shutdown().await;
    Ok(())
}

/// Decide whether this wrap is ours to handle now: not answered before, not being handled.
/// A wrap seen but never answered (the provider stopped mid-request) is handled again; the
/// core's token and request-id replay protection makes that safe.
fn claim(provider: &Provider, in_flight: &Mutex<HashSet<EventId>>, id: EventId) -> bool {
    let Ok(mut set) = in_flight.lock() else {
        return false;
    };
    if set.contains(&id) {
        return false;
    }
    match provider.store().see_event(&id.to_hex(), now_secs()) {
        Ok(Some(Some(_answered))) => false,
        Ok(_) => {
            set.insert(id);
            true
        }
        Err(e) => {
            tracing::error!("marketplace: cannot record event: {e}");
            false
        }
    }
}

async fn publish_offer(client: &Client, provider: &Provider, heartbeat: u64) {
    let builder = match market::offer_event(&provider.offers(), heartbeat, now_secs()) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("marketplace: cannot build the offer: {e}");
            return;
        }
    };
    let accepted = match client.send_event_builder(builder).await {
        Ok(out) if !out.success.is_empty() => {
            tracing::debug!("offer published");
            true
        }
        Ok(out) => {
            tracing::warn!(failed = ?out.failed, "no relay accepted the offer");
            false
        }
        Err(e) => {
            tracing::warn!("marketplace: offer not published: {e}");
            false
        }
    };
    let mut relays: Vec<crate::status::RelayState> = client
        .relays()
        .await
        .iter()
        .map(|(url, r)| crate::status::RelayState {
            url: url.to_string(),
            connected: r.is_connected(),
        })
        .collect();
    relays.sort_by(|a, b| a.url.cmp(&b.url));
    let live = provider.store().live_count().unwrap_or(0);
    crate::status::update(|s| {
        s.relays = relays;
        s.live_workloads = live;
        if accepted {
            s.last_heartbeat_at = Some(now_secs());
        }
    });
}

async fn handle(
    client: &Client,
    provider: &Arc<Provider>,
    keys: &Keys,
    senders: &SenderCap,
    wrap: &Event,
) {
    let gift = match UnwrappedGift::from_gift_wrap(keys, wrap).await {
        Ok(g) => g,
        Err(e) => {
            // No sender we can trust, so nobody to answer.
            tracing::debug!("marketplace: gift wrap {} not readable: {e}", wrap.id);
            let _ = provider
                .store()
                .set_event_response(&wrap.id.to_hex(), "unreadable");
            return;
        }
    };
    let sender = gift.sender;
    let response = if gift.rumor.pubkey != sender {
        ResponseEnvelope::err(
            None,
            ProviderError::new(
                ErrorType::InvalidRequest,
                "the seal and the message disagree on the sender",
            ),
        )
    } else if gift.rumor.kind != Kind::PrivateDirectMessage {
        ResponseEnvelope::err(
            None,
            ProviderError::new(
                ErrorType::InvalidRequest,
                "expected a NIP-17 private message (kind 14)",
            ),
        )
    } else {
        answer(provider, senders, &sender, &gift.rumor).await
    };
    let json = match serde_json::to_string(&response) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!("marketplace: cannot encode a response: {e}");
            return;
        }
    };
    match EventBuilder::private_msg(keys, sender, json.clone(), []).await {
        Ok(reply) => {
            if let Err(e) = client.send_event(&reply).await {
                tracing::warn!("marketplace: response not delivered: {e}");
                return;
            }
        }
        Err(e) => {
            tracing::error!("marketplace: cannot wrap a response: {e}");
            return;
        }
    }
    if let Err(e) = provider
        .store()
        .set_event_response(&wrap.id.to_hex(), &json)
    {
        tracing::error!("marketplace: cannot record the answer: {e}");
    }
}

async fn answer(
    provider: &Arc<Provider>,
    senders: &SenderCap,
    sender: &PublicKey,
    rumor: &UnsignedEvent,
) -> ResponseEnvelope {
    let req = match market::parse_request(&rumor.content) {
        Ok(r) => r,
        Err((id, e)) => return ResponseEnvelope::err(id, e),
    };
    let id = req.request_id.clone();
    if id.is_empty() || id.len() > 128 {
        return ResponseEnvelope::err(
            None,
            ProviderError::new(
                ErrorType::InvalidRequest,
                "request_id must be 1-128 characters",
            ),
        );
    }
    let now = now_secs();
    let at = rumor.created_at.as_secs();
    if at.saturating_add(REQUEST_MAX_AGE_SECS) < now || at > now.saturating_add(300) {
        return ResponseEnvelope::err(
            Some(id),
            ProviderError::new(
                ErrorType::InvalidRequest,
                format!("the request is dated {at}, more than {REQUEST_MAX_AGE_SECS} s from now ({now}); send it again"),
            ),
        );
    }
    let _admitted = match senders.admit(&sender.to_hex()) {
        Ok(a) => a,
        Err(e) => return ResponseEnvelope::err(Some(id), e),
    };
    let caller = Caller::Nostr(sender.to_hex());
    let fields = serde_json::Value::Object(req.fields);
    let result = match req.kind {
        RequestKind::Spawn => match parse::<SpawnRequest>(fields) {
            Ok(mut r) => {
                r.request_id = Some(scoped_request_id(sender, r.request_id.as_deref(), &id));
                to_value(
                    provider
                        .spawn(r, caller, None, CancellationToken::new())
                        .await,
                )
            }
            Err(e) => Err(e),
        },
        RequestKind::Topup => match parse::<TopUpRequest>(fields) {
            Ok(mut r) => {
                r.request_id = Some(scoped_request_id(sender, r.request_id.as_deref(), &id));
                to_value(provider.top_up(r).await)
            }
            Err(e) => Err(e),
        },
        RequestKind::Status => match parse::<StatusRequest>(fields) {
            Ok(r) => to_value(provider.status(r, &caller).await),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(v) => ResponseEnvelope::ok(req.kind, &id, v),
        Err(e) => ResponseEnvelope::err(Some(id), e),
    }
}

/// The core's idempotency key for a marketplace request: the buyer's id (the tool field if
/// given, else the envelope's), scoped to the sender, so two buyers who pick the same id never
/// collide and nobody can reach another buyer's stored answer by guessing an id.
fn scoped_request_id(sender: &PublicKey, field: Option<&str>, envelope: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(sender.to_hex().as_bytes());
    h.update(b":");
    h.update(field.unwrap_or(envelope).as_bytes());
    format!("nostr:{}", hex::encode(h.finalize()))
}

fn parse<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, ProviderError> {
    serde_json::from_value(v).map_err(|e| {
        ProviderError::new(
            ErrorType::InvalidRequest,
            format!("bad request fields: {}", crate::error::sanitize_serde(&e)),
        )
    })
}

fn to_value<T: serde::Serialize>(
    r: Result<T, ProviderError>,
) -> Result<serde_json::Value, ProviderError> {
    r.and_then(|v| {
        serde_json::to_value(v).map_err(|e| {
            ProviderError::new(
                ErrorType::InternalError,
                format!("cannot encode the result: {e}"),
            )
        })
    })
}
