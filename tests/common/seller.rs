//! A real provider process (`paygress-cli provider start`, sandbox backend, the test mint) on a
//! relay on 127.0.0.1, for the buyer's tests: `market spawn --amount`, `paygress-cli mcp`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nostr_sdk::prelude::*;
use paygress::relay::EmbeddedRelay;

use super::mint::TestMint;

pub const CLI: &str = env!("CARGO_BIN_EXE_paygress-cli");

pub struct Seller {
    pub relay: EmbeddedRelay,
    pub keys: Keys,
    pub mint: TestMint,
    pub config: PathBuf,
    pub process: tokio::process::Child,
    pub ports: (u16, u16),
    /// Pods the test bought, removed at the end (the provider keeps workloads when it stops).
    pub pods: std::sync::Mutex<Vec<String>>,
    _dir: tempfile::TempDir,
}

impl Seller {
    /// A provider selling "basic" at 100 msat/s (and "large" at 400) on `ports`, its SSH
    /// listeners on `listen` (the sandbox's `listen_address`).
    pub async fn start(listen: &str, ports: (u16, u16)) -> Seller {
        let mint = TestMint::start().await;
        let relay = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = super::config(dir.path(), &[&mint.url], 100, ports);
        cfg.nostr.relays = vec![relay.url()];
        cfg.nostr.contextvm = false;
        cfg.nostr.heartbeat_seconds = 5;
        cfg.backend.sandbox.listen_address = listen.to_string();
        let file = dir.path().join("paygress.toml");
        std::fs::write(&file, toml::to_string(&cfg).unwrap()).unwrap();
        let keys = Keys::generate();
        let process = spawn(&file, &keys);
        let s = Seller {
            relay,
            keys,
            mint,
            config: file,
            process,
            ports,
            pods: Default::default(),
            _dir: dir,
        };
        s.wait_for_offer_since(0).await;
        s
    }

    pub fn npub(&self) -> String {
        self.keys.public_key().to_bech32().unwrap()
    }

    /// Wait until the provider's offer, published at or after `since`, is on the relay.
    pub async fn wait_for_offer_since(&self, since: u64) {
        let c = Client::builder().signer(Keys::generate()).build();
        c.add_relay(self.relay.url()).await.unwrap();
        c.connect().await;
        c.wait_for_connection(Duration::from_secs(5)).await;
        let filter = Filter::new()
            .kind(Kind::Custom(paygress::market::OFFER_KIND))
            .author(self.keys.public_key());
        for _ in 0..120 {
            let ev = c
                .fetch_events(filter.clone(), Duration::from_secs(2))
                .await
                .unwrap();
            if ev.iter().any(|e| e.created_at.as_secs() >= since) {
                c.shutdown().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("the provider's offer never appeared");
    }

    /// Stop the provider process and start it again on the same data dir.
    pub async fn restart(&mut self) {
        let _ = self.process.kill().await;
        let _ = self.process.wait().await;
        let t = paygress::provider::now_secs();
        self.process = spawn(&self.config, &self.keys);
        self.wait_for_offer_since(t).await;
    }

    pub fn bought(&self, pod: &str) {
        self.pods.lock().unwrap().push(pod.to_string());
    }
}

fn spawn(file: &Path, keys: &Keys) -> tokio::process::Child {
    tokio::process::Command::new(CLI)
        .args(["provider", "start", "--config"])
        .arg(file)
        .env("NOSTR_PRIVATE_KEY", keys.secret_key().to_secret_hex())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

impl Drop for Seller {
    fn drop(&mut self) {
        let _ = self.process.start_kill();
        let config = self.config.clone();
        let names: Vec<String> = self
            .pods
            .lock()
            .unwrap()
            .iter()
            .map(|p| super::lxd_instance_name(p))
            .collect();
        // Drop cannot await; the backend is async, so it gets a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let cfg = paygress::config::Config::load(&config).unwrap();
                let backend = paygress::backend::from_config(&cfg).await.unwrap();
                for n in names {
                    let _ = backend.destroy(&n).await;
                }
            })
        })
        .join();
    }
}
