//! The Nostr marketplace: how providers advertise and how buyers talk to them privately.
//!
//! Two things cross the relays, and this module is their one definition, shared by the provider
//! door ([`crate::doors::nostr_dm`]) and the buyer ([`buyer`]):
//!
//! - **Offers** are addressable events (kind 38383, `d` = `paygress-offer`, `t` = `paygress`)
//!   whose content is the same JSON `get_offers` returns. A provider republishes its offer every
//!   `heartbeat` seconds (the `heartbeat` tag says how often), so the event's `created_at` is a
//!   heartbeat: a buyer treats an offer older than three heartbeats as a provider that is gone.
//!   Each offer also carries a NIP-40 `expiration` so relays may drop it by themselves.
//! - **Requests and responses** are NIP-17 private messages: a kind 14 rumor, sealed and
//!   gift-wrapped (kind 1059) to the other side, so relays see neither the token nor who is
//!   buying. The rumor's content is a JSON envelope with a `type`, a `request_id` the buyer
//!   chooses, and the same fields as the MCP tools; the response echoes the `request_id`.

pub mod buyer;

use nostr_sdk::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::Offers;
use crate::error::{ErrorType, ProviderError};

/// Kind of the offer event (addressable: the relay keeps the latest per provider).
pub const OFFER_KIND: u16 = 38383;
/// The offer's `d` tag.
pub const OFFER_D: &str = "paygress-offer";
/// The topic tag buyers filter on.
pub const TOPIC: &str = "paygress";
/// Version of the private-message envelope.
pub const PROTOCOL: u64 = 1;
/// Heartbeats a buyer may miss before a provider counts as gone.
pub const MISSED_HEARTBEATS: u64 = 3;
/// Oldest request (by its rumor's timestamp) a provider still acts on. A buyer whose request was
/// lost and who gave up must not be charged hours later.
pub const REQUEST_MAX_AGE_SECS: u64 = 600;

/// Build the offer event for `offers`, republished every `heartbeat` seconds.
pub fn offer_event(offers: &Offers, heartbeat: u64, now: u64) -> Result<EventBuilder, String> {
    let content = serde_json::to_string(offers).map_err(|e| e.to_string())?;
    let expires = now.saturating_add(heartbeat.saturating_mul(MISSED_HEARTBEATS));
    Ok(EventBuilder::new(Kind::Custom(OFFER_KIND), content)
        .tags([
            Tag::identifier(OFFER_D),
            Tag::hashtag(TOPIC),
            Tag::custom(TagKind::custom("name"), [offers.provider.name.clone()]),
            Tag::custom(
                TagKind::custom("location"),
                [offers.provider.location.clone()],
            ),
            Tag::custom(TagKind::custom("backend"), [offers.backend.to_string()]),
            Tag::custom(TagKind::custom("isolation"), [offers.isolation.to_string()]),
            Tag::custom(TagKind::custom("heartbeat"), [heartbeat.to_string()]),
            Tag::expiration(Timestamp::from(expires)),
        ])
        .custom_created_at(Timestamp::from(now)))
}

/// An offer as a buyer sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ListedOffer {
    /// The provider's npub (the key that signed the offer; requests go to it).
    pub npub: String,
    /// When the offer was last published (Unix seconds).
    pub published_at: u64,
    /// How often the provider says it republishes.
    pub heartbeat_seconds: u64,
    pub offers: Offers,
}

impl ListedOffer {
    /// Read an offer event; `None` if it is not a well-formed Paygress offer.
    pub fn parse(event: &Event) -> Option<ListedOffer> {
        if event.kind != Kind::Custom(OFFER_KIND) || event.verify().is_err() {
            return None;
        }
        let has = |k: &str, v: &str| {
            event.tags.iter().any(|t| {
                let s = t.as_slice();
                s.len() >= 2 && s[0] == k && s[1] == v
            })
        };
        if !has("d", OFFER_D) || !has("t", TOPIC) {
            return None;
        }
        let heartbeat = event
            .tags
            .iter()
            .find_map(|t| {
                let s = t.as_slice();
                (s.len() >= 2 && s[0] == "heartbeat").then(|| s[1].parse::<u64>().ok())?
            })
            .unwrap_or(60)
            .clamp(1, 86_400);
        let offers: Offers = serde_json::from_str(&event.content).ok()?;
        Some(ListedOffer {
            npub: event.pubkey.to_bech32().ok()?,
            published_at: event.created_at.as_secs(),
            heartbeat_seconds: heartbeat,
            offers,
        })
    }

    /// Live: published within `max_age` seconds (default three of its own heartbeats).
    pub fn is_live(&self, now: u64, max_age: Option<u64>) -> bool {
        let max_age =
            max_age.unwrap_or_else(|| self.heartbeat_seconds.saturating_mul(MISSED_HEARTBEATS));
        now.saturating_sub(self.published_at) <= max_age
    }

    /// The cheapest tier's rate, for sorting.
    pub fn cheapest_rate(&self) -> u64 {
        self.offers
            .pod_specs
            .iter()
            .map(|t| t.rate_msats_per_sec)
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// What a buyer asks, as the rumor's JSON content: `{"type": "spawn" | "topup" | "status",
/// "request_id": "...", ...the MCP tool's fields}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestEnvelope {
    #[serde(rename = "type")]
    pub kind: RequestKind,
    pub request_id: String,
    #[serde(default = "protocol")]
    pub paygress: u64,
    /// The tool's fields (`SpawnRequest`, `TopUpRequest` or `StatusRequest`).
    #[serde(flatten)]
    pub fields: serde_json::Map<String, Value>,
}

fn protocol() -> u64 {
    PROTOCOL
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    Spawn,
    Topup,
    Status,
}

/// The provider's answer: `{"type": "spawn_result" | "topup_result" | "status_result" |
/// "error", "request_id": ..., "result" | "error": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    #[serde(rename = "type")]
    pub kind: String,
    /// The request's id; `null` only when the request was not even readable JSON.
    pub request_id: Option<String>,
    #[serde(default = "protocol")]
    pub paygress: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ProviderError>,
}

impl ResponseEnvelope {
    pub fn ok(kind: RequestKind, request_id: &str, result: Value) -> ResponseEnvelope {
        let kind = match kind {
            RequestKind::Spawn => "spawn_result",
            RequestKind::Topup => "topup_result",
            RequestKind::Status => "status_result",
        };
        ResponseEnvelope {
            kind: kind.into(),
            request_id: Some(request_id.to_string()),
            paygress: PROTOCOL,
            result: Some(result),
            error: None,
        }
    }

    pub fn err(request_id: Option<String>, error: ProviderError) -> ResponseEnvelope {
        ResponseEnvelope {
            kind: "error".into(),
            request_id,
            paygress: PROTOCOL,
            result: None,
            error: Some(error),
        }
    }
}

/// Parse a request's content; a bad one becomes the error to send back, with the request id
/// when it could be read.
pub fn parse_request(content: &str) -> Result<RequestEnvelope, (Option<String>, ProviderError)> {
    let v: Value = serde_json::from_str(content).map_err(|_| {
        (
            None,
            ProviderError::new(
                ErrorType::InvalidRequest,
                "the message is not a JSON object; expected {\"type\": \"spawn\"|\"topup\"|\"status\", \"request_id\": \"...\", ...}",
            ),
        )
    })?;
    let id = v
        .get("request_id")
        .and_then(Value::as_str)
        .map(|s| s.chars().take(128).collect::<String>());
    serde_json::from_value::<RequestEnvelope>(v).map_err(|e| {
        (
            id,
            ProviderError::new(
                ErrorType::InvalidRequest,
                format!("bad request envelope: {}", crate::error::sanitize_serde(&e)),
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_keep_their_id() {
        let r = parse_request(
            r#"{"type":"spawn","request_id":"r1","cashu_token":"x","ssh_username":"a"}"#,
        )
        .unwrap();
        assert_eq!(r.kind, RequestKind::Spawn);
        assert_eq!(r.fields["ssh_username"], "a");
        let (id, e) = parse_request(r#"{"type":"reboot","request_id":"r2"}"#).unwrap_err();
        assert_eq!(id.as_deref(), Some("r2"));
        assert_eq!(e.error_type, ErrorType::InvalidRequest);
        let (id, _) = parse_request("not json").unwrap_err();
        assert_eq!(id, None);
        let (id, _) = parse_request(r#"{"type":"status"}"#).unwrap_err();
        assert_eq!(id, None);
    }
}
