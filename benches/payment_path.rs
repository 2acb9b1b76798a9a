//! Payment-path benchmark: the core's validate + swap (a full `Provider::spawn` against a backend
//! that does nothing) beside a bare cdk `Wallet::receive`, both against the same in-process test
//! mint, interleaved so machine noise hits both alike. Prints both medians and their ratio.
//!
//! Run: `cargo bench --bench payment_path -- [N]` (N tokens per side, default 40).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cdk::wallet::ReceiveOptions;
use common::backend::FakeBackend;
use common::mint::TestMint;
use paygress::api::SpawnRequest;
use paygress::secret::Secret;
use paygress::{Caller, Provider};
use tokio_util::sync::CancellationToken;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(40);
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = common::config(
        dir.path(),
        &[&mint.url],
        1,
        common::free_port_block(n as u16 + 5),
    );
    let provider = Provider::open(cfg, Arc::new(FakeBackend::new()))
        .await
        .expect("provider");
    // The baseline wallet persists to a SQLite file like the provider's earnings wallet does, so
    // the ratio shows the core's own overhead, not the cost of a durable wallet.
    let bare_db = cdk_sqlite::WalletSqliteDatabase::new(dir.path().join("bare.sqlite"))
        .await
        .expect("bare wallet db");
    let bare = cdk::wallet::WalletBuilder::new()
        .mint_url(mint.url.parse().expect("url"))
        .unit(cdk::nuts::CurrencyUnit::Sat)
        .localstore(Arc::new(bare_db))
        .seed(paygress::demo::mint::random_seed())
        .without_rate_limiting()
        .build()
        .expect("bare wallet");

    // Warm both paths (keyset fetches, connection setup).
    let w = mint.token(100).await;
    bare.receive(&w, ReceiveOptions::default())
        .await
        .expect("warm receive");
    let w = mint.token(100).await;
    spawn(&provider, &w).await;

    let mut base = Vec::with_capacity(n);
    let mut core = Vec::with_capacity(n);
    for _ in 0..n {
        let a = mint.token(100).await;
        let b = mint.token(100).await;
        let t = Instant::now();
        bare.receive(&a, ReceiveOptions::default())
            .await
            .expect("receive");
        base.push(t.elapsed());
        let t = Instant::now();
        spawn(&provider, &b).await;
        core.push(t.elapsed());
    }
    let (mb, mc) = (median(&mut base), median(&mut core));
    println!("payment path, {n} tokens per side, same mint, interleaved");
    println!("{:<44} {:>12}", "path", "median ms");
    println!(
        "{:<44} {:>12.2}",
        "bare cdk Wallet::receive, file store (baseline)",
        ms(mb)
    );
    println!(
        "{:<44} {:>12.2}",
        "Provider::spawn validate+swap+journal",
        ms(mc)
    );
    println!(
        "{:<44} {:>12.2}x",
        "ratio core / baseline (target <= 1.2x)",
        ms(mc) / ms(mb)
    );
}

async fn spawn(p: &Arc<Provider>, token: &str) {
    p.spawn(
        SpawnRequest {
            cashu_token: Secret::new(token),
            ssh_username: "bench".into(),
            ..Default::default()
        },
        Caller::Local,
        None,
        CancellationToken::new(),
    )
    .await
    .expect("spawn");
}
