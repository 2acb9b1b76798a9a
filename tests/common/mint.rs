//! The test mint is the demo's embedded mint: a real cdk mint with the fake Lightning backend on
//! 127.0.0.1 (`paygress::demo::mint`). This wrapper only turns its errors into test failures.

use std::ops::Deref;

use cdk::wallet::Wallet;
use paygress::demo::mint::DemoMint;

pub struct TestMint(DemoMint);

impl Deref for TestMint {
    type Target = DemoMint;
    fn deref(&self) -> &DemoMint {
        &self.0
    }
}

/// A throwaway wallet (in-memory store, random seed) at `url`.
pub async fn fresh_wallet(url: &str) -> Wallet {
    paygress::demo::mint::fresh_wallet(url)
        .await
        .expect("wallet")
}

impl TestMint {
    pub async fn start() -> TestMint {
        TestMint(DemoMint::start().await.expect("test mint"))
    }

    /// A mint charging `input_fee_ppk` parts-per-thousand per input proof.
    pub async fn start_with_fee(input_fee_ppk: u64) -> TestMint {
        TestMint(
            DemoMint::start_with_fee(input_fee_ppk)
                .await
                .expect("test mint"),
        )
    }

    /// A fresh, real token worth `sats`.
    pub async fn token(&self, sats: u64) -> String {
        self.0.token(sats).await.expect("token")
    }
}
