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
    pub backend: Arc<FakeBackend>,
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
    ready(prepare(encryption, announce).await).await
}

/// Serve the ContextVM door on `w` and wait until it answers through the relay.
pub async fn ready(w: World) -> World {
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
    prepare_with(encryption, announce, |_| {}).await
}

/// [`prepare`], with the config changed by `edit` first.
pub async fn prepare_with(
    encryption: Encryption,
    announce: bool,
    edit: impl FnOnce(&mut paygress::config::Config),
) -> World {
    let mint = TestMint::start().await;
    let relay = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = super::config(dir.path(), &[&mint.url], 100, super::free_port_block(5));
    cfg.nostr.relays = vec![relay.url()];
    cfg.nostr.encryption = encryption;
    cfg.nostr.announce = announce;
    edit(&mut cfg);
    let backend = Arc::new(FakeBackend::new());
    let provider = Provider::open(cfg, backend.clone()).await.unwrap();
    let tap = Tap::start(&relay.url()).await;
    World {
        mint,
        relay,
        provider,
        backend,
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

pub const CTXVM: Kind = Kind::Custom(25910);

/// A ContextVM client that writes its messages by hand, and the answers it got (by the id of
/// the request event they answer).
pub struct Raw {
    pub keys: Keys,
    server: PublicKey,
    client: Client,
    answers: Arc<Mutex<Vec<(EventId, Value)>>>,
}

impl Raw {
    pub async fn start(w: &World, keys: Keys) -> Raw {
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

    pub fn message(&self, content: &str) -> Event {
        EventBuilder::new(CTXVM, content)
            .tag(Tag::public_key(self.server))
            .sign_with_keys(&self.keys)
            .unwrap()
    }

    /// Leave `content` on the relay for the server, encrypted, dated 30 s ahead so that a
    /// subscription opened from now on returns it. Returns the id answers will name.
    pub async fn store_wrapped(&self, content: &str) -> EventId {
        let inner = self.message(content);
        let wrapper = Keys::generate();
        let sealed = nip44::encrypt(
            wrapper.secret_key(),
            &self.server,
            inner.as_json(),
            nip44::Version::V2,
        )
        .unwrap();
        let ahead = Timestamp::from(Timestamp::now().as_secs() + 30);
        let wrap = EventBuilder::new(Kind::GiftWrap, sealed)
            .tag(Tag::public_key(self.server))
            .custom_created_at(ahead)
            .sign_with_keys(&wrapper)
            .unwrap();
        self.client.send_event(&wrap).await.unwrap();
        inner.id
    }

    /// Send `content` in clear, once.
    pub async fn send(&self, content: &str) -> EventId {
        let e = self.message(content);
        self.client.send_event(&e).await.unwrap();
        e.id
    }

    pub fn answer(&self, id: EventId) -> Option<Value> {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .find(|(a, _)| *a == id)
            .map(|(_, v)| v.clone())
    }

    /// Send `content` in clear until an answer to one of the copies arrives (a server that is
    /// still subscribing misses ephemeral events); `None` after 30 s.
    pub async fn ask(&self, content: &str) -> Option<Value> {
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
