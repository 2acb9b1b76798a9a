//! The HTTP door for real: the door served on a free 127.0.0.1 port over a provider on the
//! sandbox backend, paid with tokens from the in-process test mint, driven with reqwest, and the
//! pod logged into with the real `ssh` client. Needs root (the sandbox backend).
//!
//! Every route and error; the NUT-24 flow (402 with a NUT-18 request → pay → 201 → ssh);
//! replays; refused payments leave the token spendable; rate limit and X-Forwarded-For.

mod common;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use cdk::nuts::{CurrencyUnit, PaymentRequest};
use common::mint::{fresh_wallet, TestMint};
use paygress::backend::sandbox::{SandboxBackend, SandboxConfig};
use paygress::backend::Backend;
use paygress::config::HttpSection;
use paygress::doors::http::{self, HttpOptions};
use paygress::Provider;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// msat per second of the first tier: the 60 s minimum costs 6 sat.
const RATE: u64 = 100;

struct Env {
    mint: TestMint,
    provider: Arc<Provider>,
    backend: Arc<SandboxBackend>,
    base: String,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // The sandbox keeps its workloads when the provider goes: remove what this test sold.
        let (b, id) = (
            self.backend.clone(),
            self.provider.provider_id().to_string(),
        );
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                if let Ok(list) = b.list(&id).await {
                    for w in list {
                        let _ = b.destroy(&w.name).await;
                    }
                }
            });
        })
        .join();
    }
}

async fn env_with(section: HttpSection) -> Env {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), &[&mint.url], RATE, common::free_port_block(4));
    let backend = Arc::new(
        SandboxBackend::open(SandboxConfig::default(), dir.path())
            .await
            .expect("sandbox backend"),
    );
    let provider = Provider::open(cfg, backend.clone())
        .await
        .expect("provider");
    let shutdown = CancellationToken::new();
    let opts = HttpOptions {
        section,
        other_doors: vec![],
        extra_tools: vec![],
    };
    let (addr, _task) = http::start(
        provider.clone(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        opts,
        shutdown.clone(),
    )
    .await
    .expect("http door");
    Env {
        mint,
        provider,
        backend,
        base: format!("http://{addr}"),
        shutdown,
        _dir: dir,
    }
}

async fn env() -> Env {
    env_with(HttpSection {
        rate_limit_per_minute: 0,
        ..HttpSection::default()
    })
    .await
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().unwrap()
}

async fn json_of(r: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, headers, v)
}

/// The NUT-18 request in a response's X-Cashu header.
fn payment_request(h: &reqwest::header::HeaderMap) -> PaymentRequest {
    let v = h.get("x-cashu").expect("X-Cashu header").to_str().unwrap();
    assert!(v.starts_with("creqA"), "{v}");
    PaymentRequest::from_str(v).expect("a decodable NUT-18 request")
}

/// The token is still the buyer's: a fresh wallet at its mint receives it whole.
async fn still_spendable(mint_url: &str, token: &str, sats: u64) {
    let w = fresh_wallet(mint_url).await;
    let got = w
        .receive(token, cdk::wallet::ReceiveOptions::default())
        .await
        .expect("the refused token is still spendable");
    assert_eq!(u64::from(got), sats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_402_flow_pays_spawns_logs_in_and_replays_the_first_answer() {
    let e = env().await;
    let c = client();
    let body =
        json!({"ssh_username": "alice", "ssh_password": "correct-horse-9", "pod_spec_id": "basic"});

    // No token: 402 with a NUT-18 request for the minimum, in sat, from the whitelisted mint.
    let (st, h, err) = json_of(
        c.post(format!("{}/pods", e.base))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::PAYMENT_REQUIRED, "{err}");
    let pr = payment_request(&h);
    assert_eq!(pr.amount.map(u64::from), Some(60 * RATE / 1000));
    assert_eq!(pr.unit, Some(CurrencyUnit::Sat));
    let mints: Vec<String> = pr.mints.iter().map(|m| m.to_string()).collect();
    assert_eq!(
        mints,
        vec![e.mint.url.trim_end_matches('/').to_string()],
        "{pr:?}"
    );
    assert_eq!(err["details"]["amount_sats"], 6);

    // Pay as the request says (X-Cashu): 201 with the ssh command and an owner token.
    let token = e.mint.token(10).await;
    let (st, _, first) = json_of(
        c.post(format!("{}/pods", e.base))
            .header("X-Cashu", &token)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{first}");
    let port = first["node_port"].as_u64().unwrap() as u16;
    assert_eq!(
        first["ssh_command"],
        format!("ssh -p {port} alice@127.0.0.1")
    );
    assert_eq!(first["duration_seconds"], 100);
    let owner = first["owner_token"].as_str().unwrap().to_string();
    assert!(owner.starts_with("pgo_"), "{owner}");

    // A real login with what the answer says.
    let out = common::ssh::ssh_password(port, "alice", "correct-horse-9", "id -un")
        .await
        .expect("ssh login");
    assert_eq!(out.trim(), "alice");

    // The same token again: the first answer, owner token included, nothing charged twice.
    let (st, _, again) = json_of(
        c.post(format!("{}/pods", e.base))
            .header("X-Cashu", &token)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(again, first);
    // The same proofs in the other encoding (cashuA, as older wallets send): the same proofs,
    // so the same payment and the same first answer, owner token included.
    let v3 = cdk::nuts::Token::from_str(&token).unwrap().to_v3_string();
    assert!(v3.starts_with("cashuA") && token.starts_with("cashuB"));
    let (st, _, reencoded) = json_of(
        c.post(format!("{}/pods", e.base))
            .header("X-Cashu", &v3)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{reencoded}");
    assert_eq!(reencoded, first);
    // The same token for a different request is a replay conflict: 409, nothing new.
    let (st, _, conflict) = json_of(
        c.post(format!("{}/pods", e.base))
            .header("X-Cashu", &token)
            .json(&json!({"ssh_username": "mallory", "pod_spec_id": "basic"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["error_type"], "token_already_spent");
    assert!(conflict.get("refund_token").is_none());

    // Status: login details only with the owner token.
    let pod = first["pod_npub"].as_str().unwrap();
    let (st, _, anon) = json_of(
        c.get(format!("{}/pods/{pod}", e.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(anon["state"], "running");
    assert!(anon.get("access").is_none(), "{anon}");
    let (st, _, mine) = json_of(
        c.get(format!("{}/pods/{pod}", e.base))
            .bearer_auth(&owner)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(mine["access"]["ssh_password"], "correct-horse-9");
    let other = format!("pgo_{}", "0".repeat(64));
    let (_, _, theirs) = json_of(
        c.get(format!("{}/pods/{pod}", e.base))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(theirs.get("access").is_none());
    // The seeds' name for the same route.
    let (st, _, list) = json_of(
        c.get(format!("{}/pods", e.base))
            .bearer_auth(&owner)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["pods"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["pods"][0]["pod_npub"], pod);
    let (_, _, none) = json_of(
        c.get(format!("{}/pods", e.base))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(none["pods"], json!([]));

    // Top-up: 402 first (one second's price), then paid through the header and through the
    // seeds' body form.
    let (st, h, _) = json_of(
        c.post(format!("{}/pods/{pod}/topup", e.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(payment_request(&h).amount.map(u64::from), Some(1));
    let (st, _, up) = json_of(
        c.post(format!("{}/pods/{pod}/topup", e.base))
            .header("X-Cashu", e.mint.token(5).await)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{up}");
    assert_eq!(up["extended_duration_seconds"], 50);
    let (st, _, up) = json_of(
        c.post(format!("{}/top-up-pod", e.base))
            .json(&json!({"pod_npub": pod, "cashu_token": e.mint.token(2).await}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{up}");
    assert_eq!(up["extended_duration_seconds"], 20);

    // The seeds' spawn route with the token in the body; a second pod for the same owner.
    let (st, _, second) = json_of(
        c.post(format!("{}/spawn-pod", e.base))
            .bearer_auth(&owner)
            .json(&json!({"ssh_username": "bob", "cashu_token": e.mint.token(6).await}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{second}");
    assert_eq!(second["owner_token"], owner.as_str());
    let (_, _, list) = json_of(
        c.get(format!("{}/pods", e.base))
            .bearer_auth(&owner)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["pods"].as_array().unwrap().len(), 2, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_payments_are_nut24_errors_and_the_token_stays_spendable() {
    let e = env().await;
    let c = client();
    let body = json!({"ssh_username": "alice"});

    // Another mint's token: 400 mint_not_allowed, a payment request to pay properly.
    let other = TestMint::start().await;
    let foreign = other.token(10).await;
    let (st, h, err) = json_of(
        c.post(format!("{}/pods", e.base))
            .header("X-Cashu", &foreign)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error_type"], "mint_not_allowed");
    assert!(err.get("refund_token").is_none());
    let _ = h;
    still_spendable(&other.url, &foreign, 10).await;

    // Too little for the minimum: 400 insufficient_payment.
    let small = e.mint.token(5).await;
    let (st, _, err) = json_of(
        c.post(format!("{}/pods", e.base))
            .header("X-Cashu", &small)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error_type"], "insufficient_payment");
    still_spendable(&e.mint.url, &small, 5).await;

    // Garbage: 400 invalid_token.
    let (st, _, err) = json_of(
        c.post(format!("{}/pods", e.base))
            .header("X-Cashu", "cashuBnotatoken")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(err["error_type"], "invalid_token");

    // Spent elsewhere before it got here: 409.
    let spent = e.mint.token(10).await;
    still_spendable(&e.mint.url, &spent, 10).await;
    let (st, _, err) = json_of(
        c.post(format!("{}/pods", e.base))
            .header("X-Cashu", &spent)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error_type"], "token_already_spent");

    // Two different tokens at once: refused before either is looked at.
    let a = e.mint.token(10).await;
    let (st, _, err) = json_of(
        c.post(format!("{}/pods", e.base))
            .header("X-Cashu", &a)
            .json(&json!({"ssh_username": "alice", "cashu_token": e.mint.token(10).await}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(err["error_type"], "invalid_request");
    still_spendable(&e.mint.url, &a, 10).await;

    // A bad username with a good token: 400, the token untouched.
    let t = e.mint.token(10).await;
    let (st, _, err) = json_of(
        c.post(format!("{}/pods", e.base))
            .header("X-Cashu", &t)
            .json(&json!({"ssh_username": "root"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{err}");
    still_spendable(&e.mint.url, &t, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_answers_and_every_error_has_its_code() {
    let e = env_with(HttpSection {
        rate_limit_per_minute: 0,
        max_body_bytes: 2048,
        ..HttpSection::default()
    })
    .await;
    let c = client();
    let get = |p: &str| c.get(format!("{}{p}", e.base));
    let post = |p: &str| c.post(format!("{}{p}", e.base));

    let (st, _, h) = json_of(get("/healthz").send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (
            h["status"].clone(),
            h["backend"].clone(),
            h["doors"].clone()
        ),
        (json!("ok"), json!("sandbox"), json!(["http"]))
    );
    let (st, _, o) = json_of(get("/offers").send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(o, serde_json::to_value(e.provider.offers()).unwrap());
    let (st, _, doc) = json_of(get("/openapi.json").send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");

    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (get("/nowhere"), StatusCode::NOT_FOUND, "invalid_request"),
        (
            c.delete(format!("{}/pods", e.base)),
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
        ),
        (
            get("/pods/not-an-npub!"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            get("/pods/%FF%FE"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            post("/pods/%FF/topup"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            get(&format!("/pods/npub1{}", "q".repeat(58))),
            StatusCode::NOT_FOUND,
            "pod_not_found",
        ),
        (
            post(&format!("/pods/npub1{}/topup", "q".repeat(58))),
            StatusCode::NOT_FOUND,
            "pod_not_found",
        ),
        (get("/pods"), StatusCode::UNAUTHORIZED, "invalid_request"),
        (
            get("/pods").header("authorization", "Bearer nope"),
            StatusCode::UNAUTHORIZED,
            "invalid_request",
        ),
        (
            post("/pods").body("{not json"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            post("/pods").json(&json!({"ssh_username": "a", "surprise": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            post("/pods").json(&json!({})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            post("/pods").json(&json!({"ssh_username": "alice", "pod_spec_id": "huge"})),
            StatusCode::BAD_REQUEST,
            "invalid_spec",
        ),
        (
            post("/pods").body(format!("{{\"ssh_username\": \"{}\"}}", "a".repeat(4000))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
        ),
        (
            post("/pods").json(&json!({"ssh_username": "alice"})),
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_payment",
        ),
        (
            post("/top-up-pod").json(&json!({})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            post("/tools/get_demo_token").json(&json!({})),
            StatusCode::NOT_FOUND,
            "invalid_request",
        ),
    ];
    for (i, (req, want, kind)) in cases.into_iter().enumerate() {
        let (st, _, body) = json_of(req.send().await.unwrap()).await;
        assert_eq!((i, st), (i, want), "case {i}: {body}");
        assert_eq!(body["error_type"], kind, "case {i}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // No CORS unless configured.
    let r = get("/offers")
        .header("origin", "https://example.com")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_per_address_and_forwarded_for_only_from_trusted_proxies() {
    let c = client();
    // Untrusted peer: X-Forwarded-For is ignored, so varying it does not escape the limit.
    let e = env_with(HttpSection {
        rate_limit_per_minute: 3,
        ..HttpSection::default()
    })
    .await;
    for i in 0..3 {
        let r = c
            .get(format!("{}/offers", e.base))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = c
        .get(format!("{}/offers", e.base))
        .header("x-forwarded-for", "203.0.113.77")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_some());
    let (_, _, body) = json_of(r).await;
    assert_eq!(body["error_type"], "resource_unavailable");
    drop(e);

    // From a trusted proxy each forwarded client has its own bucket.
    let e = env_with(HttpSection {
        rate_limit_per_minute: 3,
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..HttpSection::default()
    })
    .await;
    for i in 0..6 {
        let r = c
            .get(format!("{}/offers", e.base))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "client {i}");
    }
    for _ in 0..3 {
        let r = c
            .get(format!("{}/offers", e.base))
            .header("x-forwarded-for", "198.51.100.1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = c
        .get(format!("{}/offers", e.base))
        .header("x-forwarded-for", "198.51.100.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cors_only_for_configured_origins() {
    let e = env_with(HttpSection {
        cors_origins: vec!["https://app.example".into()],
        ..HttpSection::default()
    })
    .await;
    let c = client();
    let r = c
        .get(format!("{}/offers", e.base))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers().get("access-control-allow-origin").unwrap(),
        "https://app.example"
    );
    let r = c
        .get(format!("{}/offers", e.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

/// A client over TLS to nginx, from the local address `from`.
fn tls_client(cert_pem: &[u8], from: [u8; 4]) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem).unwrap()])
        .local_address(std::net::IpAddr::from(from))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_a_real_nginx_terminating_tls_the_paid_flow_works_and_clients_are_told_apart() {
    let e = env_with(HttpSection {
        rate_limit_per_minute: 8,
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..HttpSection::default()
    })
    .await;
    let upstream = e.base.trim_start_matches("http://").to_string();
    let nginx = common::nginx::Nginx::start(&upstream);
    let base = format!("https://127.0.0.1:{}", nginx.port);

    // The paid flow through the proxy, from 127.0.0.4.
    let c = tls_client(&nginx.cert_pem, [127, 0, 0, 4]);
    let body = json!({"ssh_username": "carol", "ssh_password": "through-nginx-1"});
    let (st, h, _) = json_of(
        c.post(format!("{base}/pods"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::PAYMENT_REQUIRED);
    let pr = payment_request(&h);
    let token = e.mint.token(pr.amount.map(u64::from).unwrap()).await;
    let (st, _, spawned) = json_of(
        c.post(format!("{base}/pods"))
            .header("X-Cashu", &token)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{spawned}");
    let port = spawned["node_port"].as_u64().unwrap() as u16;
    let out = common::ssh::ssh_password(port, "carol", "through-nginx-1", "echo ok")
        .await
        .expect("ssh login");
    assert_eq!(out.trim(), "ok");
    let (st, _, status) = json_of(
        c.get(format!(
            "{base}/pods/{}",
            spawned["pod_npub"].as_str().unwrap()
        ))
        .bearer_auth(spawned["owner_token"].as_str().unwrap())
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(status["access"]["ssh_username"], "carol");
    assert!(
        nginx.access_log().contains("127.0.0.4"),
        "{}",
        nginx.access_log()
    );

    // The door sees each client's own address (nginx appends it to X-Forwarded-For): 127.0.0.2
    // uses up its requests, whatever X-Forwarded-For it forges, while 127.0.0.3 still has its.
    let a = tls_client(&nginx.cert_pem, [127, 0, 0, 2]);
    let b = tls_client(&nginx.cert_pem, [127, 0, 0, 3]);
    for i in 0..8 {
        let r = a
            .get(format!("{base}/offers"))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "request {i}");
    }
    let r = a
        .get(format!("{base}/offers"))
        .header("x-forwarded-for", "203.0.113.200")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = b.get(format!("{base}/offers")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn money_taken_then_a_failed_provisioning_answers_500_with_a_refund_token() {
    use common::backend::{FakeBackend, Step};
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), &[&mint.url], RATE, common::free_port_block(4));
    let backend = Arc::new(FakeBackend::new());
    backend.fail(Step::Create);
    let provider = Provider::open(cfg, backend.clone())
        .await
        .expect("provider");
    let shutdown = CancellationToken::new();
    let (addr, _task) = http::start(
        provider.clone(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        HttpOptions {
            section: HttpSection::default(),
            other_doors: vec![],
            extra_tools: vec![],
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let (st, _, err) = json_of(
        client()
            .post(format!("http://{addr}/pods"))
            .header("X-Cashu", mint.token(10).await)
            .json(&json!({"ssh_username": "alice"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR, "{err}");
    assert_eq!(err["error_type"], "pod_creation_failed");
    let refund = err["refund_token"].as_str().expect("a refund token");
    still_spendable(&mint.url, refund, 10).await;
    assert_eq!(backend.count(), 0);
    shutdown.cancel();
}

/// A provider on the backend double (whose create takes `delay`) behind the door.
async fn slow_door(
    delay: std::time::Duration,
    section: HttpSection,
) -> (TestMint, String, CancellationToken, tempfile::TempDir) {
    use common::backend::FakeBackend;
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), &[&mint.url], RATE, common::free_port_block(4));
    let backend = Arc::new(FakeBackend::new());
    backend.set_create_delay(delay);
    let provider = Provider::open(cfg, backend).await.expect("provider");
    let shutdown = CancellationToken::new();
    let (addr, _task) = http::start(
        provider,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        HttpOptions {
            section,
            other_doors: vec![],
            extra_tools: vec![],
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    (mint, format!("http://{addr}"), shutdown, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_hangs_up_does_not_cut_the_spawn_short_and_its_replay_gets_the_pod() {
    let (mint, base, shutdown, _dir) =
        slow_door(std::time::Duration::from_secs(2), HttpSection::default()).await;
    let token = mint.token(10).await;
    let body = json!({"ssh_username": "alice", "ssh_password": "hang-up-pass-1"});
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let r = impatient
        .post(format!("{base}/pods"))
        .header("X-Cashu", &token)
        .json(&body)
        .send()
        .await;
    assert!(r.is_err(), "the client gave up first");
    // The replay waits for the same spawn (under its token lock) and gets its answer.
    let (st, _, pod) = json_of(
        client()
            .post(format!("{base}/pods"))
            .header("X-Cashu", &token)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{pod}");
    assert_eq!(pod["ssh_password"], "hang-up-pass-1");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spawn_past_the_time_limit_is_rolled_back_and_refunded() {
    // The core cancels between steps: a create of 3 s runs out, then is rolled back.
    let (mint, base, shutdown, _dir) = slow_door(
        std::time::Duration::from_secs(3),
        HttpSection {
            request_timeout_seconds: 1,
            ..HttpSection::default()
        },
    )
    .await;
    let (st, _, err) = json_of(
        client()
            .post(format!("{base}/pods"))
            .header("X-Cashu", mint.token(10).await)
            .json(&json!({"ssh_username": "alice"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(st.is_server_error() || st.is_client_error(), "{st} {err}");
    let refund = err["refund_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{err}"));
    still_spendable(&mint.url, refund, 10).await;
    shutdown.cancel();
}

/// A client that never finishes its headers is cut off (hyper's header read timeout, 10 s),
/// instead of holding a connection for ever. The 30 s bound is for liveness only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = env().await;
    let addr = e.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /offers HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection is still open after 30 s");
    // Closed, with at most an error answer; never the offers.
    assert!(!String::from_utf8_lossy(&buf).contains("pod_specs"));
}
