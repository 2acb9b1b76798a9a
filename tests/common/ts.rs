//! The official TypeScript ContextVM parts (`@contextvm/sdk` from `tools/e2e`, installed by
//! `tools/test.sh`), run with node: the client (`contextvm-client.mjs`) and the gateway
//! (`contextvm-gateway.mjs`, the SDK's `NostrMCPGateway` in front of a stdio MCP server).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nostr_sdk::prelude::*;
use serde_json::Value;

/// A script in `tools/e2e`, after checking that the SDK is installed beside it.
pub fn e2e_script(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/e2e");
    assert!(
        dir.join("node_modules/@contextvm/sdk").exists(),
        "@contextvm/sdk is not installed: run `npm install --prefix tools/e2e` (tools/test.sh does)"
    );
    dir.join(name)
}

/// One session of the official TypeScript ContextVM client with `server` (npub or hex) on
/// `relay_url`: it lists the tools, then makes `calls` (a JSON array of `{name, arguments}`) in
/// order. Returns its steps: `{"step":"tools",...}` then one `{"step":"call",...}` per call.
pub async fn contextvm_client(
    relay_url: &str,
    server: &str,
    key: &Keys,
    encryption: &str,
    calls: Value,
) -> Vec<Value> {
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("node")
            .arg(e2e_script("contextvm-client.mjs"))
            .args(["--relay", relay_url, "--server", server, "--key"])
            .arg(key.secret_key().to_secret_hex())
            .args(["--encryption", encryption])
            .arg(calls.to_string())
            .output(),
    )
    .await
    .expect("node client finished in time")
    .unwrap();
    assert!(
        out.status.success(),
        "TypeScript client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
