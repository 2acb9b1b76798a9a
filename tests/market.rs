//! The Nostr marketplace end to end: a real provider process (`paygress-cli provider start`, LXD
//! backend, test mint) on a relay on 127.0.0.1, and the buyer's `paygress-cli market …` commands.
//! A raw client on the relay plays the attacker and the careless network: it replays a buyer's
//! gift wrap and sends malformed requests.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::mint::TestMint;
use nostr_sdk::prelude::*;
use paygress::market::{ResponseEnvelope, OFFER_D, OFFER_KIND, TOPIC};
use paygress::relay::EmbeddedRelay;
use serde_json::{json, Value};

const CLI: &str = env!("CARGO_BIN_EXE_paygress-cli");

struct Market {
    relay: EmbeddedRelay,
    provider_keys: Keys,
    mint: TestMint,
    home: tempfile::TempDir,
    provider: tokio::process::Child,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

async fn cli(m: &Market, args: &[&str]) -> Output {
    cli_in(m.home.path(), args).await
}

async fn cli_in(home: &Path, args: &[&str]) -> Output {
    tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(CLI)
            .args(args)
            .env("HOME", home)
            .env_remove("NOSTR_RELAYS")
            .env_remove("PAYGRESS_NOSTR_KEY")
            .output(),
    )
    .await
    .expect("cli finished in time")
    .unwrap()
}

/// Run the CLI with `input` on its standard input.
async fn cli_with_stdin(home: &Path, args: &[&str], input: &[u8]) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(CLI)
        .args(args)
        .env("HOME", home)
        .env_remove("NOSTR_RELAYS")
        .env_remove("PAYGRESS_NOSTR_KEY")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("cli finished in time")
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

async fn market() -> Market {
    let mint = TestMint::start().await;
    let relay = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), &[&mint.url], 100, common::free_port_block(4));
    cfg.nostr.relays = vec![relay.url()];
    cfg.nostr.contextvm = false;
    cfg.nostr.heartbeat_seconds = 5;
    let text = toml::to_string(&cfg)
        .unwrap()
        .replace("kind = \"sandbox\"", "kind = \"lxd\"");
    let file = dir.path().join("paygress.toml");
    std::fs::write(&file, text).unwrap();
    let provider_keys = Keys::generate();
    let child = start_provider(&file, &provider_keys);
    let m = Market {
        relay,
        provider_keys,
        mint,
        home: tempfile::tempdir().unwrap(),
        provider: child,
        file,
        _dir: dir,
    };
    m.wait_for_offer_since(0).await;
    m
}

fn start_provider(file: &Path, keys: &Keys) -> tokio::process::Child {
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

impl Market {
    /// Wait until the provider's offer, published at or after `since`, is on the relay.
    async fn wait_for_offer_since(&self, since: u64) {
        let npub = self.npub();
        for _ in 0..60 {
            let o = cli(
                self,
                &[
                    "market",
                    "list",
                    "--relay",
                    &self.relay.url(),
                    "--json",
                    "--timeout",
                    "2",
                ],
            )
            .await;
            if let Ok(Value::Array(list)) = serde_json::from_str::<Value>(&stdout(&o)) {
                if list.iter().any(|x| {
                    x["npub"] == npub.as_str() && x["published_at"].as_u64().unwrap_or(0) >= since
                }) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("the provider's offer never appeared");
    }

    /// Stop the provider process and start it again on the same data dir.
    async fn restart_provider(&mut self) {
        let _ = self.provider.kill().await;
        let t = paygress::provider::now_secs();
        self.provider = start_provider(&self.file, &self.provider_keys);
        self.wait_for_offer_since(t).await;
    }

    fn npub(&self) -> String {
        self.provider_keys.public_key().to_bech32().unwrap()
    }

    /// A raw Nostr client on the relay.
    async fn raw(&self, keys: Keys) -> Client {
        let c = Client::builder().signer(keys).build();
        c.add_relay(self.relay.url()).await.unwrap();
        c.connect().await;
        c.wait_for_connection(Duration::from_secs(5)).await;
        c
    }

    /// Gift wraps on the relay addressed to `to`.
    async fn wraps_to(&self, to: PublicKey) -> Vec<Event> {
        let c = self.raw(Keys::generate()).await;
        let ev = c
            .fetch_events(
                Filter::new().kind(Kind::GiftWrap).pubkey(to),
                Duration::from_secs(3),
            )
            .await
            .unwrap();
        c.shutdown().await;
        ev.into_iter().collect()
    }
}

/// Answers from the provider to `keys`, decrypted.
async fn answers(m: &Market, keys: &Keys) -> Vec<ResponseEnvelope> {
    let mut out = Vec::new();
    for w in m.wraps_to(keys.public_key()).await {
        if let Ok(g) = UnwrappedGift::from_gift_wrap(keys, &w).await {
            if g.sender == m.provider_keys.public_key() {
                out.push(serde_json::from_str(&g.rumor.content).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn list_shows_live_providers_with_prices_and_hides_stale_ones() {
    let m = market().await;
    // A provider that stopped heartbeating 20 minutes ago.
    let stale = Keys::generate();
    let mut offers: Value = serde_json::from_str(&stdout(
        &cli(&m, &["market", "list", "--relay", &m.relay.url(), "--json"]).await,
    ))
    .unwrap();
    let mut old = offers[0]["offers"].clone();
    old["provider"]["name"] = json!("Gone provider");
    let then = paygress::provider::now_secs() - 1200;
    let ev = EventBuilder::new(Kind::Custom(OFFER_KIND), old.to_string())
        .tags([
            Tag::identifier(OFFER_D),
            Tag::hashtag(TOPIC),
            Tag::custom(TagKind::custom("heartbeat"), ["60"]),
        ])
        .custom_created_at(Timestamp::from(then))
        .sign_with_keys(&stale)
        .unwrap();
    let raw = m.raw(stale.clone()).await;
    raw.send_event(&ev).await.unwrap();

    let out = cli(&m, &["market", "list", "--relay", &m.relay.url(), "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    offers = serde_json::from_str(&stdout(&out)).unwrap();
    let listed: Vec<&str> = offers
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["npub"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [m.npub().as_str()], "only the live provider");
    let o = &offers[0]["offers"];
    assert_eq!(o["pod_specs"][0]["id"], "basic");
    assert_eq!(o["pod_specs"][0]["rate_msats_per_sec"], 100);
    assert_eq!(o["pod_specs"][1]["rate_msats_per_sec"], 400);
    assert_eq!(o["whitelisted_mints"][0], m.mint.url);
    assert_eq!(o["backend"], "lxd");

    // The stale one is still on the relay: a generous --max-age shows it, so the filter is
    // what hid it.
    let out = cli(
        &m,
        &[
            "market",
            "list",
            "--relay",
            &m.relay.url(),
            "--json",
            "--max-age",
            "100000",
            "--sort",
            "name",
        ],
    )
    .await;
    let all: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[0]["offers"]["provider"]["name"], "Gone provider");

    // Capability filter and the human table.
    let out = cli(
        &m,
        &[
            "market",
            "list",
            "--relay",
            &m.relay.url(),
            "--capability",
            "kubernetes",
            "--json",
        ],
    )
    .await;
    assert_eq!(stdout(&out).trim(), "[]");
    let out = cli(&m, &["market", "list", "--relay", &m.relay.url()]).await;
    let table = stdout(&out);
    assert!(
        table.contains("Test provider") && table.contains(&m.npub()),
        "{table}"
    );
    assert!(
        table.contains("basic") && table.contains("360"),
        "sat/hour column: {table}"
    );
}

#[tokio::test]
async fn spawn_topup_status_over_private_messages() {
    let m = market().await;
    let url = m.relay.url();
    let npub = m.npub();
    let token = m.mint.token(100).await;
    // No --nostr-key: the buyer identity is created in ~/.paygress/identity.
    let out = cli(
        &m,
        &[
            "market",
            "spawn",
            "--relay",
            &url,
            "--provider",
            &npub,
            "--tier",
            "basic",
            "--token",
            &token,
            "--user",
            "alice",
            "--password",
            "market-pass-1",
            "--json",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "spawn failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let r: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let pod = r["pod_npub"].as_str().unwrap().to_string();
    let _cleanup = common::LxdCleanup::for_pod(&pod);
    assert_eq!(r["duration_seconds"], 1000);
    assert_eq!(r["ssh_username"], "alice");
    let port = r["node_port"].as_u64().unwrap() as u16;
    let mut banner = [0u8; 7];
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::io::AsyncReadExt::read_exact(&mut c, &mut banner)
        .await
        .unwrap();
    assert_eq!(&banner, b"SSH-2.0", "working SSH access");
    // The answer names the container's own host keys: what OpenSSH's ssh-keyscan sees on the
    // port is among them.
    let scan = std::process::Command::new("ssh-keyscan")
        .args(["-p", &port.to_string(), "-t", "ed25519", "127.0.0.1"])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&scan.stdout).to_string();
    let key = line
        .lines()
        .find_map(|l| l.split_once(' ').map(|(_, k)| k.to_string()))
        .unwrap_or_else(|| panic!("ssh-keyscan saw no key: {line}"));
    let seen = russh::keys::PublicKey::from_openssh(&key)
        .unwrap()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    let pinned = r["ssh_host_key_fingerprints"].as_array().unwrap();
    assert!(pinned.iter().any(|f| f == &json!(seen)), "{seen} in {r}");

    let id_file = m.home.path().join(".paygress/identity");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&id_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Status as the owner (same identity), human output: the ssh command and password.
    let out = cli(
        &m,
        &[
            "market",
            "status",
            "--relay",
            &url,
            "--provider",
            &npub,
            "--pod",
            &pod,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("running"), "{text}");
    assert!(
        text.contains(&format!("ssh -p {port} alice@127.0.0.1")),
        "{text}"
    );
    assert!(text.contains("market-pass-1"), "{text}");

    // Another buyer: may top up (token from stdin), sees no credentials.
    let other = Keys::generate().secret_key().to_bech32().unwrap();
    let top = m.mint.token(10).await;
    let out = cli_with_stdin(
        m.home.path(),
        &[
            "market",
            "topup",
            "--relay",
            &url,
            "--provider",
            &npub,
            "--pod",
            &pod,
            "--token",
            "-",
            "--nostr-key",
            &other,
            "--json",
        ],
        top.as_bytes(),
    )
    .await;
    assert!(out.status.success(), "topup failed: {}", stderr(&out));
    let t: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(t["extended_duration_seconds"], 100);
    let out = cli(
        &m,
        &[
            "market",
            "status",
            "--relay",
            &url,
            "--provider",
            &npub,
            "--pod",
            &pod,
            "--nostr-key",
            &other,
            "--json",
        ],
    )
    .await;
    let s: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(s["state"], "running");
    assert!(
        s["access"].is_null(),
        "credentials hidden from another key: {s}"
    );

    // The same token again: refused as spent, payment exit code, nothing printed as a refund.
    let out = cli(
        &m,
        &[
            "market",
            "spawn",
            "--relay",
            &url,
            "--provider",
            &npub,
            "--tier",
            "basic",
            "--token",
            &token,
            "--user",
            "bob",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("token_already_spent"),
        "{}",
        stderr(&out)
    );

    // A token from another mint: refused before any swap, still spendable.
    let foreign_mint = TestMint::start().await;
    let foreign = foreign_mint.token(50).await;
    let out = cli(
        &m,
        &[
            "market",
            "spawn",
            "--relay",
            &url,
            "--provider",
            &npub,
            "--tier",
            "basic",
            "--token",
            &foreign,
            "--user",
            "bob",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    let e: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(e["error_type"], "mint_not_allowed");
    assert_eq!(foreign_mint.receive_fresh(&foreign).await.unwrap(), 50);
}

#[tokio::test]
async fn a_replayed_gift_wrap_is_answered_once_and_bad_requests_get_errors() {
    let mut m = market().await;
    let buyer = Keys::generate();
    let raw = m.raw(buyer.clone()).await;
    let provider_pk = m.provider_keys.public_key();

    // A well-formed spawn, sent as a gift wrap by hand so the test holds the exact event.
    let token = m.mint.token(100).await;
    let req = json!({"type": "spawn", "request_id": "replay-1", "cashu_token": token, "pod_spec_id": "basic", "ssh_username": "carol"});
    let wrap = EventBuilder::private_msg(&buyer, provider_pk, req.to_string(), [])
        .await
        .unwrap();
    raw.send_event(&wrap).await.unwrap();
    let mut first = Vec::new();
    for _ in 0..120 {
        first = answers(&m, &buyer).await;
        if !first.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(first.len(), 1, "one answer");
    assert_eq!(first[0].request_id.as_deref(), Some("replay-1"));
    assert!(first[0].error.is_none(), "{:?}", first[0].error);
    let pod = first[0].result.as_ref().unwrap()["pod_npub"]
        .as_str()
        .unwrap()
        .to_string();
    let _cleanup = common::LxdCleanup::for_pod(&pod);

    // The very same event again, sent by someone replaying it (the relay drops a duplicate it
    // already has), then the case that matters: a restarted provider, whose subscription gets
    // every stored gift wrap from the relay again.
    raw.send_event(&wrap).await.unwrap();
    m.restart_provider().await;
    // A request that is not JSON, and one with a missing field: both answered with errors.
    let junk = EventBuilder::private_msg(&buyer, provider_pk, "hello provider", [])
        .await
        .unwrap();
    raw.send_event(&junk).await.unwrap();
    let partial = EventBuilder::private_msg(
        &buyer,
        provider_pk,
        json!({"type": "spawn", "request_id": "bad-2", "pod_spec_id": "basic"}).to_string(),
        [],
    )
    .await
    .unwrap();
    raw.send_event(&partial).await.unwrap();

    // A request written 20 minutes ago (its buyer gave up long since): refused, token untouched.
    let late_token = m.mint.token(100).await;
    let rumor = EventBuilder::private_msg_rumor(
        provider_pk,
        json!({"type": "spawn", "request_id": "old-1", "cashu_token": late_token, "ssh_username": "dave"}).to_string(),
    )
    .custom_created_at(Timestamp::from(paygress::provider::now_secs() - 1200))
    .build(buyer.public_key());
    let late = EventBuilder::gift_wrap(&buyer, &provider_pk, rumor, [])
        .await
        .unwrap();
    raw.send_event(&late).await.unwrap();

    let mut all;
    for _ in 0..60 {
        all = answers(&m, &buyer).await;
        if all.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Give a second answer to the replay time to (not) arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    all = answers(&m, &buyer).await;
    let ids: Vec<Option<&str>> = all.iter().map(|a| a.request_id.as_deref()).collect();
    assert_eq!(
        ids.iter().filter(|i| **i == Some("replay-1")).count(),
        1,
        "the replay was not answered again: {ids:?}"
    );
    let junk_answer = all
        .iter()
        .find(|a| a.request_id.is_none())
        .expect("an answer to the junk");
    assert_eq!(
        junk_answer.error.as_ref().unwrap().error_type,
        paygress::ErrorType::InvalidRequest
    );
    let partial_answer = all
        .iter()
        .find(|a| a.request_id.as_deref() == Some("bad-2"))
        .expect("an answer to the partial request");
    let e = partial_answer.error.as_ref().unwrap();
    assert_eq!(e.error_type, paygress::ErrorType::InvalidRequest);
    assert!(e.message.contains("cashu_token"), "{}", e.message);
    let late_answer = all
        .iter()
        .find(|a| a.request_id.as_deref() == Some("old-1"))
        .expect("an answer to the late request");
    assert_eq!(
        late_answer.error.as_ref().unwrap().error_type,
        paygress::ErrorType::InvalidRequest
    );
    assert_eq!(
        m.mint.receive_fresh(&late_token).await.unwrap(),
        100,
        "late token untouched"
    );
    // Only one pod exists for this provider: the replay provisioned nothing.
    let lxc = std::process::Command::new("lxc")
        .args(["list", "--format", "csv", "-c", "n"])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&lxc.stdout).to_string();
    assert_eq!(
        names
            .lines()
            .filter(|l| l.trim() == common::lxd_instance_name(&pod))
            .count(),
        1
    );
}

#[tokio::test]
async fn identity_commands_keep_one_key_in_home() {
    let home = tempfile::tempdir().unwrap();
    let out = cli_in(home.path(), &["identity", "show"]).await;
    assert!(out.status.success());
    let npub = stdout(&out).trim().to_string();
    assert!(npub.starts_with("npub1"), "{npub}");
    let again = cli_in(home.path(), &["identity", "show", "--json"]).await;
    let v: Value = serde_json::from_str(&stdout(&again)).unwrap();
    assert_eq!(v["npub"], npub);
    assert!(v.get("nsec").is_none(), "no secret unless asked");
    let out = cli_in(home.path(), &["identity", "new"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "refuses to replace without --force"
    );
    assert!(stderr(&out).contains("--force"));
    let out = cli_in(home.path(), &["identity", "new", "--force"]).await;
    assert!(out.status.success());
    assert_ne!(stdout(&out).trim(), npub);

    // Import from stdin.
    let keys = Keys::generate();
    let nsec = keys.secret_key().to_bech32().unwrap();
    let out = cli_with_stdin(
        home.path(),
        &["identity", "import", "--force"],
        nsec.as_bytes(),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), keys.public_key().to_bech32().unwrap());
    assert!(!stdout(&out).contains(&nsec) && !stderr(&out).contains(&nsec));
    let path: PathBuf = home.path().join(".paygress/identity");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    // A bad key is refused and changes nothing.
    let out = cli_with_stdin(
        home.path(),
        &["identity", "import", "--force"],
        b"nsec1notakey",
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !stderr(&out).contains("nsec1notakey"),
        "the bad value is not echoed"
    );
    let show = cli_in(home.path(), &["identity", "show"]).await;
    assert_eq!(stdout(&show).trim(), keys.public_key().to_bech32().unwrap());
}

#[tokio::test]
async fn every_subcommand_has_help_and_usage_errors_exit_2() {
    let home = tempfile::tempdir().unwrap();
    for (args, words) in [
        (
            vec!["--help"],
            vec!["market", "identity", "provider", "wallet"],
        ),
        (
            vec!["market", "--help"],
            vec!["list", "spawn", "topup", "status"],
        ),
        (
            vec!["market", "list", "--help"],
            vec!["--sort", "--capability", "--json", "NOSTR_RELAYS"],
        ),
        (
            vec!["market", "spawn", "--help"],
            vec![
                "--provider",
                "--tier",
                "--token",
                "--image",
                "--ssh-key",
                "--nostr-key",
                "--request-id",
            ],
        ),
        (vec!["market", "topup", "--help"], vec!["--pod", "--token"]),
        (
            vec!["market", "status", "--help"],
            vec!["--pod", "--provider"],
        ),
        (vec!["identity", "--help"], vec!["show", "new", "import"]),
        (vec!["identity", "show", "--help"], vec!["--secret"]),
        (vec!["identity", "new", "--help"], vec!["--force"]),
        (vec!["identity", "import", "--help"], vec!["standard input"]),
        (
            vec!["provider", "start", "--help"],
            vec!["--config", "--embedded-relay"],
        ),
        (vec!["wallet", "balance", "--help"], vec!["--config"]),
        (vec!["wallet", "withdraw", "--help"], vec!["--amount"]),
    ] {
        let out = cli_in(home.path(), &args).await;
        assert!(out.status.success(), "{args:?}");
        let text = stdout(&out);
        for w in words {
            assert!(text.contains(w), "{args:?} help lacks {w}: {text}");
        }
    }
    for args in [
        vec![
            "market",
            "spawn",
            "--relay",
            "ws://127.0.0.1:1",
            "--tier",
            "basic",
            "--token",
            "x",
        ],
        vec!["market", "list"],
        vec![
            "market",
            "list",
            "--relay",
            "ws://127.0.0.1:1",
            "--sort",
            "colour",
        ],
        vec![
            "market",
            "list",
            "--relay",
            "ws://127.0.0.1:1",
            "--capability",
            "mainframe",
        ],
        vec![
            "market",
            "status",
            "--relay",
            "ws://127.0.0.1:1",
            "--provider",
            "npub1nothing",
            "--pod",
            "x",
        ],
        vec![
            "market",
            "spawn",
            "--relay",
            "ws://127.0.0.1:1",
            "--provider",
            "npub1x",
            "--tier",
            "b",
            "--token",
            "t",
            "--nostr-key",
            "nsec1bad",
        ],
        vec![
            "provider",
            "start",
            "--config",
            "/nonexistent/paygress.toml",
        ],
        vec!["identity", "frobnicate"],
        vec!["wallet", "withdraw", "--amount", "0"],
    ] {
        let out = cli_in(home.path(), &args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty(), "{args:?} explains itself");
    }
}

/// Send `req` from `from` to `to` as a NIP-17 gift wrap.
async fn send_private(c: &Client, from: &Keys, to: PublicKey, req: Value) {
    let wrap = EventBuilder::private_msg(from, to, req.to_string(), [])
        .await
        .unwrap();
    c.send_event(&wrap).await.unwrap();
}

/// Wait for `keys`' answer to `request_id` from `provider` on the relay.
async fn answer_to(c: &Client, keys: &Keys, provider: PublicKey, id: &str) -> ResponseEnvelope {
    for _ in 0..240 {
        let wraps = c
            .fetch_events(
                Filter::new().kind(Kind::GiftWrap).pubkey(keys.public_key()),
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        for w in wraps {
            if let Ok(g) = UnwrappedGift::from_gift_wrap(keys, &w).await {
                if g.sender == provider {
                    let r: ResponseEnvelope = serde_json::from_str(&g.rumor.content).unwrap();
                    if r.request_id.as_deref() == Some(id) {
                        return r;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no answer to {id}");
}

/// The marketplace door, in process on a backend whose create is slow: a sender with
/// `max_concurrent_per_sender` spawns in flight gets its next request (a top-up) refused with
/// `resource_unavailable`, its token still spendable, while another sender is served.
#[tokio::test]
async fn a_sender_over_the_cap_is_refused_and_others_are_served() {
    let w = common::cvm::prepare_with(paygress::config::Encryption::Required, false, |c| {
        c.provider.max_concurrent_per_sender = 2;
    })
    .await;
    let door = tokio::spawn(paygress::doors::nostr_dm::run(
        w.provider.clone(),
        vec![w.relay.url()],
        Duration::from_secs(60),
        w.shutdown.clone(),
    ));
    let provider = w.provider.keys().public_key();
    let (a, b) = (Keys::generate(), Keys::generate());
    let ca = Client::builder().signer(a.clone()).build();
    ca.add_relay(w.relay.url()).await.unwrap();
    ca.connect().await;
    ca.wait_for_connection(Duration::from_secs(5)).await;
    let spawn = |id: &str, t: String| json!({"type": "spawn", "request_id": id, "cashu_token": t, "ssh_username": "alice"});
    send_private(&ca, &a, provider, spawn("p0", w.mint.token(100).await)).await;
    let first = answer_to(&ca, &a, provider, "p0").await;
    let pod = first.result.expect("a pod")["pod_npub"]
        .as_str()
        .unwrap()
        .to_string();

    w.backend.set_create_delay(Duration::from_secs(3));
    send_private(&ca, &a, provider, spawn("p1", w.mint.token(100).await)).await;
    send_private(&ca, &a, provider, spawn("p2", w.mint.token(100).await)).await;
    for _ in 0..600 {
        if *w.backend.creates.lock().unwrap() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        *w.backend.creates.lock().unwrap() >= 3,
        "both spawns in flight"
    );
    let t = w.mint.token(50).await;
    send_private(
        &ca,
        &a,
        provider,
        json!({"type": "topup", "request_id": "t1", "pod_npub": pod, "cashu_token": t}),
    )
    .await;
    let cb = Client::builder().signer(b.clone()).build();
    cb.add_relay(w.relay.url()).await.unwrap();
    cb.connect().await;
    cb.wait_for_connection(Duration::from_secs(5)).await;
    let bob = json!({"type": "spawn", "request_id": "b1", "cashu_token": w.mint.token(100).await, "ssh_username": "bob"});
    send_private(&cb, &b, provider, bob).await;

    let refused = answer_to(&ca, &a, provider, "t1").await;
    let e = refused.error.expect("refused");
    assert_eq!(
        e.error_type,
        paygress::error::ErrorType::ResourceUnavailable,
        "{e:?}"
    );
    assert!(e.refund_token.is_none(), "nothing was taken");
    assert_eq!(w.mint.receive_fresh(&t).await.expect("untouched"), 50);
    assert!(
        answer_to(&cb, &b, provider, "b1").await.result.is_some(),
        "another sender is served"
    );
    for id in ["p1", "p2"] {
        let r = answer_to(&ca, &a, provider, id).await;
        assert!(r.result.is_some(), "{id}: {:?}", r.error);
    }
    w.shutdown.cancel();
    door.await.unwrap().unwrap();
}
