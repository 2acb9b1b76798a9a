//! A provider served over ContextVM in process: embedded relay, test mint, backend double, a
//! raw tap on the relay, and contextvm-sdk's Rust client.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::backend::FakeBackend;
use super::mint::TestMint;
use contextvm_sdk::transport::client::{NostrClientTransport, NostrClientTransportConfig};
use contextvm_sdk::{EncryptionMode, GiftWrapMode};
use nostr_sdk::prelude::*;
use paygress::config::Encryption;
use paygress::doors::contextvm::{self, ContextVmOptions};
use paygress::doors::mcp::McpDoor;
use paygress::relay::EmbeddedRelay;
use paygress::Provider;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Every ContextVM event (plain 25910, gift wraps 1059 and 21059) the relay carries.
pub struct Tap {
    events: Arc<Mutex<Vec<Event>>>,
    _client: Client,
}

impl Tap {
    async fn start(url: &str) -> Tap {
        let client = Client::default();
        client.add_relay(url).await.unwrap();
        client.connect().await;
        let filter =
            Filter::new().kinds([Kind::Custom(25910), Kind::GiftWrap, Kind::Custom(21059)]);
        client.subscribe(filter, None).await.unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let mut notes = client.notifications();
        tokio::spawn(async move {
            while let Ok(n) = notes.recv().await {
                if let RelayPoolNotification::Event { event, .. } = n {
                    sink.lock().unwrap().push((*event).clone());
                }
            }
        });
        Tap {
            events,
            _client: client,
        }
    }

    pub fn snapshot(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

pub struct World {
    pub mint: TestMint,
    pub relay: EmbeddedRelay,
    pub provider: Arc<Provider>,
    pub tap: Tap,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn world(encryption: Encryption) -> World {
    world_with(encryption, false).await
}

pub async fn world_with(encryption: Encryption, announce: bool) -> World {
    let w = prepare(encryption, announce).await;
    serve(&w);
    let opts = ContextVmOptions::from_config(w.provider.config());
    contextvm::self_check(
        w.provider.keys().public_key(),
        &opts,
        Duration::from_secs(30),
    )
    .await
    .expect("server reachable through the relay");
    w
}

/// Everything but the ContextVM door: mint, relay, provider, tap.
pub async fn prepare(encryption: Encryption, announce: bool) -> World {
    let mint = TestMint::start().await;
    let relay = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = super::config(dir.path(), &[&mint.url], 100, super::free_port_block(5));
    cfg.nostr.relays = vec![relay.url()];
    cfg.nostr.encryption = encryption;
    cfg.nostr.announce = announce;
    let provider = Provider::open(cfg, Arc::new(FakeBackend::new()))
        .await
        .unwrap();
    let tap = Tap::start(&relay.url()).await;
    World {
        mint,
        relay,
        provider,
        tap,
        shutdown: CancellationToken::new(),
        dir,
    }
}

/// Open the ContextVM door on a prepared world, with no readiness check: nothing has talked to
/// it yet. The task ends only if the door stops.
pub fn serve(w: &World) -> tokio::task::JoinHandle<Result<(), contextvm::ContextVmError>> {
    let provider = w.provider.clone();
    let shutdown = w.shutdown.clone();
    tokio::spawn(async move {
        let opts = ContextVmOptions::from_config(provider.config());
        let transport = contextvm::transport(&provider, &opts).await?;
        let door =
            McpDoor::local(provider.clone()).identified_by(contextvm::identify_by_client_pubkey());
        contextvm::serve(door, transport, shutdown).await
    })
}

pub async fn rust_client(
    w: &World,
    keys: Keys,
    mode: EncryptionMode,
) -> RunningService<RoleClient, ()> {
    let transport = NostrClientTransport::new(
        keys,
        NostrClientTransportConfig::default()
            .with_relay_urls(vec![w.relay.url()])
            .with_discovery_relay_urls(vec![w.relay.url()])
            .with_server_pubkey(w.provider.keys().public_key().to_hex())
            .with_encryption_mode(mode)
            .with_gift_wrap_mode(GiftWrapMode::Optional),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), ().serve(transport))
        .await
        .expect("initialize over the relay in time")
        .unwrap()
}

pub async fn call(c: &RunningService<RoleClient, ()>, name: &str, args: Value) -> CallToolResult {
    tokio::time::timeout(
        Duration::from_secs(60),
        c.call_tool(
            CallToolRequestParams::new(name.to_string())
                .with_arguments(args.as_object().unwrap().clone()),
        ),
    )
    .await
    .expect("answer in time")
    .unwrap()
}

pub fn body(r: &CallToolResult) -> Value {
    r.structured_content.clone().expect("structured content")
}
