//! The ContextVM door serves every client through one MCP session, so a client whose first
//! message is not `initialize` (a notification, a response, a malformed `initialize`, an
//! unknown method, garbage, a batch) must not stop it for the others.
//!
//! Each case makes that message the very first one the server ever reads: it is stored on the
//! relay (a gift wrap dated a little ahead, so the server's `since now` subscription returns
//! it) before the door opens. Then the same client sends a plain request, a well-behaved client
//! runs a session, and the first client initialises properly; the door must still be serving.

mod common;

use std::time::Duration;

use common::cvm::{body, call, prepare, rust_client, serve, Raw};
use contextvm_sdk::EncryptionMode;
use nostr_sdk::prelude::*;
use paygress::config::Encryption;
use serde_json::{json, Value};

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
