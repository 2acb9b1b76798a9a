//! The ContextVM door serves every client through one MCP session, so a client whose first
//! message is not `initialize` (a notification, a response, a malformed `initialize`, an
//! unknown method, garbage, a batch) must not stop it for the others.
//!
//! Each case makes that message the very first one the server ever reads: it is stored on the
//! relay (a gift wrap dated a little ahead, so the server's `since now` subscription returns
//! it) before the door opens. Then the same client sends a plain request, a well-behaved client
//! runs a session, and the first client initialises properly; the door must still be serving.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cvm::{body, call, prepare, rust_client, serve, World};
use contextvm_sdk::EncryptionMode;
use nostr_sdk::prelude::*;
use paygress::config::Encryption;
use serde_json::{json, Value};

const CTXVM: Kind = Kind::Custom(25910);

/// A ContextVM client that writes its messages by hand, and the answers it got (by the id of
/// the request event they answer).
struct Raw {
    keys: Keys,
    server: PublicKey,
    client: Client,
    answers: Arc<Mutex<Vec<(EventId, Value)>>>,
}

impl Raw {
    async fn start(w: &World, keys: Keys) -> Raw {
        let client = Client::default();
        client.add_relay(w.relay.url()).await.unwrap();
        client.connect().await;
        let filter = Filter::new()
            .kinds([CTXVM, Kind::GiftWrap, Kind::Custom(21059)])
            .pubkey(keys.public_key());
        client.subscribe(filter, None).await.unwrap();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let sink = answers.clone();
        let secret = keys.secret_key().clone();
        let mut notes = client.notifications();
        tokio::spawn(async move {
            while let Ok(n) = notes.recv().await {
                let RelayPoolNotification::Event { event, .. } = n else {
                    continue;
                };
                // Encrypted answers are single-layer NIP-44 gift wraps of the signed event.
                let inner = if event.kind == CTXVM {
                    (*event).clone()
                } else {
                    let Ok(json) = nip44::decrypt(&secret, &event.pubkey, &event.content) else {
                        continue;
                    };
                    let Ok(inner) = Event::from_json(json) else {
                        continue;
                    };
                    inner
                };
                let answered = inner.tags.iter().find_map(|t| match t.as_standardized() {
                    Some(TagStandard::Event { event_id, .. }) => Some(*event_id),
                    _ => None,
                });
                if let (Some(id), Ok(v)) = (answered, serde_json::from_str(&inner.content)) {
                    sink.lock().unwrap().push((id, v));
                }
            }
        });
        Raw {
            keys,
            server: w.provider.keys().public_key(),
            client,
            answers,
        }
    }

    fn message(&self, content: &str) -> Event {
        EventBuilder::new(CTXVM, content)
            .tag(Tag::public_key(self.server))
            .sign_with_keys(&self.keys)
            .unwrap()
    }

    /// Leave `content` on the relay for the server, encrypted, dated 30 s ahead so that a
    /// subscription opened from now on returns it. Returns the id answers will name.
    async fn store_wrapped(&self, content: &str) -> EventId {
        let inner = self.message(content);
        let wrapper = Keys::generate();
        let sealed = nip44::encrypt(
            wrapper.secret_key(),
            &self.server,
            inner.as_json(),
            nip44::Version::V2,
        )
        .unwrap();
        let ahead = Timestamp::from(Timestamp::now().as_u64() + 30);
        let wrap = EventBuilder::new(Kind::GiftWrap, sealed)
            .tag(Tag::public_key(self.server))
            .custom_created_at(ahead)
            .sign_with_keys(&wrapper)
            .unwrap();
        self.client.send_event(&wrap).await.unwrap();
        inner.id
    }

    fn answer(&self, id: EventId) -> Option<Value> {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .find(|(a, _)| *a == id)
            .map(|(_, v)| v.clone())
    }

    /// Send `content` in clear until an answer to one of the copies arrives (a server that is
    /// still subscribing misses ephemeral events); `None` after 30 s.
    async fn ask(&self, content: &str) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut sent = Vec::new();
        while tokio::time::Instant::now() < deadline {
            let e = self.message(content);
            self.client.send_event(&e).await.unwrap();
            sent.push(e.id);
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Some(v) = sent.iter().find_map(|id| self.answer(*id)) {
                    return Some(v);
                }
            }
        }
        None
    }
}

/// `first` is the first message the server reads; `check` looks at its answer, if one came.
async fn first_message_does_not_stop_the_door(first: &str, check: impl Fn(Option<Value>)) {
    let w = prepare(Encryption::Optional, false).await;
    let bad = Raw::start(&w, Keys::generate()).await;
    let first_id = bad.store_wrapped(first).await;
    let door = serve(&w);

    // The same client, next: a plain request before any initialize (stateless ContextVM).
    let listed = bad
        .ask(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{}}"#)
        .await
        .expect("the door answers after the bad first message");
    assert_eq!(listed["id"], 2, "{listed}");
    assert_eq!(listed["result"]["tools"].as_array().unwrap().len(), 4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    check(bad.answer(first_id));

    // Another client, well behaved: a whole session.
    let good = rust_client(&w, Keys::generate(), EncryptionMode::Optional).await;
    assert_eq!(good.list_all_tools().await.unwrap().len(), 4);
    let offers = body(&call(&good, "get_offers", json!({})).await);
    assert_eq!(offers["whitelisted_mints"][0], w.mint.url);
    let _ = good.cancel().await;

    // The first client, now initialising properly.
    let fixed = rust_client(&w, bad.keys.clone(), EncryptionMode::Required).await;
    let offers = body(&call(&fixed, "get_offers", json!({})).await);
    assert_eq!(offers["pod_specs"][0]["id"], "basic");
    let _ = fixed.cancel().await;

    assert!(!door.is_finished(), "the door is still serving");
}

fn no_answer(a: Option<Value>) {
    assert!(a.is_none(), "nothing to answer: {a:?}");
}

#[tokio::test]
async fn a_notification_before_initialize() {
    first_message_does_not_stop_the_door(
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        no_answer,
    )
    .await;
}

#[tokio::test]
async fn a_response_before_initialize() {
    first_message_does_not_stop_the_door(r#"{"jsonrpc":"2.0","id":"x","result":{}}"#, no_answer)
        .await;
}

#[tokio::test]
async fn an_initialize_without_its_parameters() {
    first_message_does_not_stop_the_door(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
        |_| {},
    )
    .await;
}

#[tokio::test]
async fn an_unknown_method_gets_method_not_found() {
    first_message_does_not_stop_the_door(
        r#"{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{}}"#,
        |a| {
            let a = a.expect("an answer to the unknown method");
            assert_eq!(a["id"], 1, "{a}");
            assert_eq!(a["error"]["code"], -32601, "{a}");
        },
    )
    .await;
}

#[tokio::test]
async fn a_tool_call_before_initialize_is_answered() {
    first_message_does_not_stop_the_door(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_offers","arguments":{}}}"#,
        |a| {
            let a = a.expect("an answer to the call");
            assert_eq!(a["id"], 1, "{a}");
            assert!(a["result"]["structuredContent"]["pod_specs"].is_array(), "{a}");
        },
    )
    .await;
}

#[tokio::test]
async fn garbage_and_batches_are_dropped() {
    first_message_does_not_stop_the_door("this is not json", no_answer).await;
    first_message_does_not_stop_the_door(
        r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#,
        no_answer,
    )
    .await;
}
