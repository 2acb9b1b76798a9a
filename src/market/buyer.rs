//! The buyer's side of the marketplace: find live offers, send a private request, wait for the
//! answer that carries the same request id.
//!
//! Used by `paygress-cli market …`. The buyer subscribes for answers before it sends, so an
//! answer cannot slip past, and matches answers on both the request id and the provider's key,
//! so nobody else can answer in the provider's name.

use std::time::Duration;

use nostr_sdk::prelude::*;
use rand::RngCore;

use super::{
    ListedOffer, RequestEnvelope, RequestKind, ResponseEnvelope, OFFER_D, OFFER_KIND, TOPIC,
};

#[derive(Debug, thiserror::Error)]
pub enum BuyerError {
    #[error("no relays: pass --relay URL (or set NOSTR_RELAYS)")]
    NoRelays,
    #[error("relay: {0}")]
    Relay(String),
    #[error("no answer from the provider within {0} s (the request may still be processed; repeat it with the same --request-id to get its answer without paying twice)")]
    Timeout(u64),
    #[error("not a provider key (npub or hex): {0}")]
    BadProvider(String),
}

pub struct Buyer {
    client: Client,
    keys: Keys,
}

impl Buyer {
    /// Connect to `relays` as `keys`.
    pub async fn connect(keys: Keys, relays: &[String]) -> Result<Buyer, BuyerError> {
        if relays.is_empty() {
            return Err(BuyerError::NoRelays);
        }
        let client = Client::builder().signer(keys.clone()).build();
        for r in relays {
            client
                .add_relay(r.as_str())
                .await
                .map_err(|e| BuyerError::Relay(format!("{r}: {e}")))?;
        }
        client.connect().await;
        client.wait_for_connection(Duration::from_secs(10)).await;
        Ok(Buyer { client, keys })
    }

    /// Every Paygress offer on the relays (live or not; see [`ListedOffer::is_live`]), one per
    /// provider, newest first.
    pub async fn offers(&self, timeout: Duration) -> Result<Vec<ListedOffer>, BuyerError> {
        let filter = Filter::new()
            .kind(Kind::Custom(OFFER_KIND))
            .identifier(OFFER_D)
            .hashtag(TOPIC);
        let events = self
            .client
            .fetch_events(filter, timeout)
            .await
            .map_err(|e| BuyerError::Relay(e.to_string()))?;
        let mut newest: std::collections::BTreeMap<String, ListedOffer> = Default::default();
        for e in events.iter() {
            if let Some(o) = ListedOffer::parse(e) {
                match newest.get(&o.npub) {
                    Some(old) if old.published_at >= o.published_at => {}
                    _ => {
                        newest.insert(o.npub.clone(), o);
                    }
                }
            }
        }
        let mut v: Vec<ListedOffer> = newest.into_values().collect();
        v.sort_by_key(|o| std::cmp::Reverse(o.published_at));
        Ok(v)
    }

    /// Send one request to `provider` and wait up to `timeout` for its answer.
    pub async fn request(
        &self,
        provider: &str,
        kind: RequestKind,
        request_id: Option<String>,
        fields: serde_json::Map<String, serde_json::Value>,
        timeout: Duration,
    ) -> Result<ResponseEnvelope, BuyerError> {
        let provider = parse_pubkey(provider)?;
        let request_id = request_id.unwrap_or_else(new_request_id);
        let envelope = RequestEnvelope {
            kind,
            request_id: request_id.clone(),
            paygress: super::PROTOCOL,
            fields,
        };
        let content = serde_json::to_string(&envelope)
            .map_err(|e| BuyerError::Relay(format!("cannot encode the request: {e}")))?;

        // Listen first. Gift wraps are back-dated up to two days (NIP-59).
        let since = Timestamp::now() - Duration::from_secs(2 * 24 * 3600 + 600);
        let filter = Filter::new()
            .kind(Kind::GiftWrap)
            .pubkey(self.keys.public_key())
            .since(since);
        let mut notes = self.client.notifications();
        let sub = self
            .client
            .subscribe(filter, None)
            .await
            .map_err(|e| BuyerError::Relay(e.to_string()))?;

        let wrap = EventBuilder::private_msg(&self.keys, provider, content, [])
            .await
            .map_err(|e| BuyerError::Relay(format!("cannot wrap the request: {e}")))?;
        let out = self
            .client
            .send_event(&wrap)
            .await
            .map_err(|e| BuyerError::Relay(e.to_string()))?;
        if out.success.is_empty() {
            return Err(BuyerError::Relay(format!(
                "no relay accepted the request: {:?}",
                out.failed
            )));
        }

        let wait = async {
            loop {
                let event = match notes.recv().await {
                    Ok(RelayPoolNotification::Event { event, .. }) => event,
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return None,
                };
                if event.kind != Kind::GiftWrap {
                    continue;
                }
                let Ok(gift) = UnwrappedGift::from_gift_wrap(&self.keys, &event).await else {
                    continue;
                };
                if gift.sender != provider || gift.rumor.pubkey != provider {
                    continue;
                }
                let Ok(resp) = serde_json::from_str::<ResponseEnvelope>(&gift.rumor.content) else {
                    continue;
                };
                if resp.request_id.as_deref() == Some(request_id.as_str()) {
                    return Some(resp);
                }
            }
        };
        let r = tokio::time::timeout(timeout, wait).await;
        self.client.unsubscribe(&sub.val).await;
        match r {
            Ok(Some(resp)) => Ok(resp),
            Ok(None) => Err(BuyerError::Relay("relay connection closed".into())),
            Err(_) => Err(BuyerError::Timeout(timeout.as_secs())),
        }
    }

    pub async fn close(self) {
        self.client.shutdown().await;
    }
}

/// A fresh request id: 16 random bytes, hex.
pub fn new_request_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// An npub or 64-hex public key.
pub fn parse_pubkey(s: &str) -> Result<PublicKey, BuyerError> {
    let s = s.trim();
    let pk = if s.starts_with("npub1") {
        PublicKey::from_bech32(s).ok()
    } else {
        PublicKey::from_hex(s).ok()
    };
    pk.ok_or_else(|| BuyerError::BadProvider(s.chars().take(80).collect()))
}
