//! An embedded Cashu mint with a fake Lightning backend, served over HTTP on 127.0.0.1.
//!
//! The demo needs money that is real to the protocol and worthless in the world: a cdk mint
//! whose Lightning invoices are "paid" at once (cdk-fake-wallet). Tokens from it are real
//! Cashu tokens that the provider's ordinary payment path inspects, swaps and refunds exactly as
//! it would with a real mint, which is why the tests use this same mint.
//!
//! A funding wallet mints through the fake backend and hands out tokens (`token`).

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

/// Why the embedded mint failed.
#[derive(Debug, thiserror::Error)]
#[error("embedded mint: {0}")]
pub struct MintError(String);

fn err(what: &str) -> impl Fn(cdk::Error) -> MintError + '_ {
    move |e| MintError(format!("{what}: {e}"))
}

/// A running mint; stops serving when dropped.
pub struct DemoMint {
    pub url: String,
    funding: Wallet,
    lock: Mutex<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for DemoMint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// 64 random bytes, for mint and wallet seeds (a fixed seed re-derives secrets a persistent mint
/// has already signed).
pub fn random_seed() -> [u8; 64] {
    let mut s = [0u8; 64];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut s);
    s
}

/// A throwaway wallet (in-memory store, random seed) at `url`.
pub async fn fresh_wallet(url: &str) -> Result<Wallet, MintError> {
    let db = cdk_sqlite::wallet::memory::empty()
        .await
        .map_err(|e| MintError(format!("wallet store: {e}")))?;
    WalletBuilder::new()
        .mint_url(
            url.parse()
                .map_err(|e| MintError(format!("mint url: {e}")))?,
        )
        .unit(CurrencyUnit::Sat)
        .localstore(Arc::new(db))
        .seed(random_seed())
        .without_rate_limiting()
        .build()
        .map_err(err("wallet"))
}

impl DemoMint {
    /// Start a mint on 127.0.0.1 (a free port) with no fees.
    pub async fn start() -> Result<DemoMint, MintError> {
        Self::start_with_fee(0).await
    }

    /// A mint charging `input_fee_ppk` parts-per-thousand per input proof.
    pub async fn start_with_fee(input_fee_ppk: u64) -> Result<DemoMint, MintError> {
        let db = Arc::new(
            cdk_sqlite::mint::memory::empty()
                .await
                .map_err(|e| MintError(format!("mint store: {e}")))?,
        );
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
            .map_err(err("payment processor"))?;
        if input_fee_ppk > 0 {
            builder
                .set_unit_fee(&CurrencyUnit::Sat, input_fee_ppk)
                .map_err(err("fee"))?;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| MintError(format!("bind 127.0.0.1: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| MintError(format!("local address: {e}")))?
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let builder = builder
            .with_name("Paygress demo mint (fake Lightning: tokens are worthless)".into())
            .with_urls(vec![url.clone()]);
        let mint = Arc::new(
            builder
                .build_with_seed(db, &random_seed())
                .await
                .map_err(err("build"))?,
        );
        mint.start().await.map_err(err("start"))?;
        let router = cdk_axum::create_mint_router(mint.clone(), vec!["bolt11".into()])
            .await
            .map_err(|e| MintError(format!("router: {e}")))?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let funding = fresh_wallet(&url).await?;
        Ok(DemoMint {
            url,
            funding,
            lock: Mutex::new(()),
            server,
        })
    }

    /// Stop answering HTTP (the mint "goes down"); tokens already made stay valid in its database.
    pub fn stop_serving(&self) {
        self.server.abort();
    }

    /// A fresh, real token worth `sats`.
    pub async fn token(&self, sats: u64) -> Result<String, MintError> {
        let _g = self.lock.lock().await;
        let balance = u64::from(self.funding.total_balance().await.map_err(err("balance"))?);
        if balance < sats {
            let want = (sats - balance).max(100_000);
            let quote = self
                .funding
                .mint_quote(PaymentMethod::BOLT11, Some(Amount::from(want)), None, None)
                .await
                .map_err(err("mint quote"))?;
            self.funding
                .wait_and_mint_quote(quote, SplitTarget::default(), None, Duration::from_secs(30))
                .await
                .map_err(err("mint"))?;
        }
        let prepared = self
            .funding
            .prepare_send(Amount::from(sats), SendOptions::default())
            .await
            .map_err(err("prepare send"))?;
        Ok(prepared
            .confirm(None)
            .await
            .map_err(err("send"))?
            .to_string())
    }

    /// Receive `token` into a fresh wallet: the amount received, or the mint's refusal.
    pub async fn receive_fresh(&self, token: &str) -> Result<u64, cdk::Error> {
        let w = fresh_wallet(&self.url)
            .await
            .map_err(|e| cdk::Error::Custom(e.to_string()))?;
        w.receive(token, ReceiveOptions::default())
            .await
            .map(u64::from)
    }
}
