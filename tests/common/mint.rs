//! A real cdk mint with the fake Lightning backend, served over HTTP on 127.0.0.1.
//!
//! Tokens come from a funding wallet that mints through the fake backend (quotes are paid at
//! once), so every token in the tests is a real token that a real mint swaps or refuses.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cdk::amount::SplitTarget;
use cdk::mint::{MintBuilder, MintMeltLimits};
use cdk::nuts::{CurrencyUnit, PaymentMethod};
use cdk::types::FeeReserve;
use cdk::wallet::{ReceiveOptions, SendOptions, Wallet, WalletBuilder};
use cdk::Amount;
use tokio::sync::Mutex;

pub struct TestMint {
    pub url: String,
    funding: Wallet,
    lock: Mutex<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestMint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub fn random_seed() -> [u8; 64] {
    let mut s = [0u8; 64];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut s);
    s
}

/// A throwaway wallet (in-memory store, random seed) at `url`.
pub async fn fresh_wallet(url: &str) -> Wallet {
    let db = cdk_sqlite::wallet::memory::empty()
        .await
        .expect("memory wallet db");
    WalletBuilder::new()
        .mint_url(url.parse().expect("mint url"))
        .unit(CurrencyUnit::Sat)
        .localstore(Arc::new(db))
        .seed(random_seed())
        .without_rate_limiting()
        .build()
        .expect("wallet")
}

impl TestMint {
    pub async fn start() -> TestMint {
        Self::start_with_fee(0).await
    }

    /// A mint charging `input_fee_ppk` parts-per-thousand per input proof.
    pub async fn start_with_fee(input_fee_ppk: u64) -> TestMint {
        let db = Arc::new(cdk_sqlite::mint::memory::empty().await.expect("mint db"));
        let mut builder = MintBuilder::new(db.clone());
        let fake = cdk_fake_wallet::FakeWallet::new(
            FeeReserve {
                min_fee_reserve: 1.into(),
                percent_fee_reserve: 1.0,
            },
            HashMap::default(),
            HashSet::default(),
            0,
            CurrencyUnit::Sat,
        );
        builder
            .add_payment_processor(
                CurrencyUnit::Sat,
                PaymentMethod::BOLT11,
                MintMeltLimits::new(1, 10_000_000),
                Arc::new(fake),
            )
            .await
            .expect("payment processor");
        if input_fee_ppk > 0 {
            builder
                .set_unit_fee(&CurrencyUnit::Sat, input_fee_ppk)
                .expect("fee");
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        );
        let builder = builder
            .with_name("paygress test mint".into())
            .with_urls(vec![url.clone()]);
        let seed = random_seed();
        let mint = Arc::new(
            builder
                .build_with_seed(db, &seed)
                .await
                .expect("build mint"),
        );
        mint.start().await.expect("start mint");
        let router = cdk_axum::create_mint_router(mint.clone(), vec!["bolt11".into()])
            .await
            .expect("router");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let funding = fresh_wallet(&url).await;
        TestMint {
            url,
            funding,
            lock: Mutex::new(()),
            server,
        }
    }

    /// Stop answering HTTP (the mint "goes down"); tokens already made stay valid in its database.
    pub fn stop_serving(&self) {
        self.server.abort();
    }

    /// A fresh, real token worth `sats`.
    pub async fn token(&self, sats: u64) -> String {
        let _g = self.lock.lock().await;
        let balance = u64::from(self.funding.total_balance().await.expect("balance"));
        if balance < sats {
            let want = (sats - balance).max(100_000);
            let quote = self
                .funding
                .mint_quote(PaymentMethod::BOLT11, Some(Amount::from(want)), None, None)
                .await
                .expect("mint quote");
            self.funding
                .wait_and_mint_quote(quote, SplitTarget::default(), None, Duration::from_secs(30))
                .await
                .expect("mint proofs");
        }
        let prepared = self
            .funding
            .prepare_send(Amount::from(sats), SendOptions::default())
            .await
            .expect("prepare send");
        prepared
            .confirm(None)
            .await
            .expect("confirm send")
            .to_string()
    }

    /// Receive `token` into a fresh wallet; the amount received, or the mint's refusal.
    pub async fn receive_fresh(&self, token: &str) -> Result<u64, cdk::Error> {
        let w = fresh_wallet(&self.url).await;
        w.receive(token, ReceiveOptions::default())
            .await
            .map(u64::from)
    }
}
