//! The HTTP door: the core's operations as a small JSON API, paid per NUT-24 (HTTP 402).
//!
//! A thin adapter like the MCP and Nostr doors: it turns HTTP requests into core requests and
//! core results and typed errors back into status codes and JSON bodies. Pricing, validation and
//! the money path stay in [`crate::provider`].
//!
//! - Payment (NUT-24): a paid route asked without a token answers `402 Payment Required` with
//!   `X-Cashu: creqA…`, a NUT-18 payment request (cdk's own type) for the least the route can
//!   cost — the tier's minimum duration for a spawn, one second for a top-up — in sat, from the
//!   whitelisted mints. The client retries with `X-Cashu: cashuB…` (or `cashuA…`); a
//!   `cashu_token` in the JSON body is taken too, as the seeds sent it. A token from another
//!   mint, of another unit or worth too little gets `400` (NUT-24) and is left untouched.
//! - Errors are the core's typed body `{error_type, message, details?, refund_token?}` with a
//!   matching status; `refund_token` is there whenever money was taken and not used.
//! - Ownership: HTTP callers have no key, so a spawn answer carries an owner token. The core
//!   records only its hash as the owner; `Authorization: Bearer <owner_token>` shows login
//!   details (`GET /pods/{id}`) and lists the bearer's pods (`GET /pods`). A spawn sent with a
//!   bearer adds the pod to that owner. Without one, the owner token is derived from the
//!   payment with the provider's key (HMAC), so a replay of the same token returns the same
//!   first answer, owner token included, and no one without the token can compute it.
//! - The core's work runs in its own task: a client that hangs up does not cut a spawn short
//!   (its replay gets the answer). When the request time limit runs out, the spawn is cancelled
//!   through the core, which rolls back and refunds, and that answer is returned.
//! - Limits: body size, header and body read time, concurrent connections, requests per minute
//!   per client address. `X-Forwarded-For` is believed only from `http.trusted_proxies`; CORS
//!   headers only for `http.cors_origins`.
//! - `/openapi.json` (OpenAPI 3.1) is built from the same Rust types as the bodies.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::api::{
    Offers, PodStatus, SpawnRequest, SpawnResult, StatusRequest, TopUpRequest, TopUpResult,
};
use crate::config::HttpSection;
use crate::doors::mcp::schema_object;
use crate::error::{ErrorType, ProviderError};
use crate::provider::{Caller, Provider};
use crate::secret::Secret;

/// The NUT-24 header, both ways.
pub const X_CASHU: HeaderName = HeaderName::from_static("x-cashu");
/// Owner tokens: this prefix and 64 hex digits.
const OWNER_PREFIX: &str = "pgo_";
/// Headers (request line included) must arrive within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A body must arrive within this.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 512;
/// Client addresses the rate limiter remembers before it forgets the idle ones.
const RATE_TABLE_MAX: usize = 50_000;

/// How the door is run: the config's `[http]` section and the names of the other doors open.
#[derive(Clone)]
pub struct HttpOptions {
    pub section: HttpSection,
    /// Doors this process serves besides HTTP, for `/healthz`.
    pub other_doors: Vec<String>,
    /// Extra tools a mode adds (the demo's `get_demo_token`), served at `POST /tools/{name}`.
    pub extra_tools: Vec<Arc<dyn crate::doors::mcp::ExtraTool>>,
}

/// Why the door could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpDoorError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("http.cors_origins: {0:?} is not an origin like https://example.com")]
    BadOrigin(String),
}

// ---- wire types only this door has -----------------------------------------------------------

/// Buy a pod. Like the MCP tool's arguments, but the token may come in the `X-Cashu` header
/// instead (NUT-24); without either the answer is `402` with a payment request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSpawnRequest {
    /// Tier id from `GET /offers` → `pod_specs[].id`. Defaults to the first tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_spec_id: Option<String>,
    /// Image from `GET /offers` → `allowed_images`. Defaults to the provider's default image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_image: Option<String>,
    /// Login name to create inside the pod: 1-32 of a-z, 0-9, '_' or '-', starting with a letter.
    pub ssh_username: String,
    /// Password for that login (8-128 printable ASCII, no ':'); generated when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_password: Option<Secret>,
    /// An OpenSSH public key line to authorise besides the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<String>,
    /// Optional idempotency key: repeating it returns the first answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// A Cashu token, when not sent in the `X-Cashu` header (seed compatibility).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cashu_token: Option<Secret>,
}

/// Extend a pod's paid time (`POST /pods/{id}/topup`); the token may be in `X-Cashu`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpTopUpRequest {
    /// A Cashu token, when not sent in the `X-Cashu` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cashu_token: Option<Secret>,
    /// Optional idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The seeds' `POST /top-up-pod` body: the pod id in the body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedTopUpRequest {
    /// The pod's id as returned by the spawn.
    pub pod_npub: String,
    /// A Cashu token, when not sent in the `X-Cashu` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cashu_token: Option<Secret>,
    /// Optional idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// A paid spawn over HTTP: the core's answer, the ssh command and the owner token.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct HttpSpawnResult {
    #[serde(flatten)]
    pub result: SpawnResult,
    /// Ready-to-paste ssh command.
    pub ssh_command: String,
    /// Keep it: `Authorization: Bearer <owner_token>` shows this pod's login details later
    /// (`GET /pods/{id}`) and lists your pods (`GET /pods`). It is not stored, only its hash.
    pub owner_token: Secret,
}

/// The bearer's pods.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PodList {
    pub pods: Vec<PodStatus>,
}

/// What `GET /healthz` reports.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// `ok` when the backend answers, else `degraded`.
    pub status: String,
    /// Doors this process serves (`http`, `stdio`, `contextvm`, `marketplace`).
    pub doors: Vec<String>,
    /// The backend kind.
    pub backend: String,
    /// Whether the backend answered just now.
    pub backend_up: bool,
    pub version: String,
}

// ---- state ---------------------------------------------------------------------------------

struct Door {
    provider: Arc<Provider>,
    section: HttpSection,
    doors: Vec<String>,
    limiter: RateLimiter,
    extra_tools: Vec<Arc<dyn crate::doors::mcp::ExtraTool>>,
    /// Key for owner tokens derived from a payment.
    owner_key: [u8; 32],
}

/// The router and its state, ready to serve (tests may serve it on their own listener).
pub fn router(provider: Arc<Provider>, opts: HttpOptions) -> Result<Router, HttpDoorError> {
    let mut key = Sha256::new();
    key.update(b"paygress http owner key\0");
    key.update(provider.keys().secret_key().as_secret_bytes());
    let mut doors = vec!["http".to_string()];
    doors.extend(opts.other_doors.iter().cloned());
    let door = Arc::new(Door {
        limiter: RateLimiter::new(opts.section.rate_limit_per_minute),
        section: opts.section.clone(),
        doors,
        extra_tools: opts.extra_tools.clone(),
        owner_key: key.finalize().into(),
        provider,
    });
    let mut r = Router::new()
        .route("/healthz", get(healthz))
        .route("/offers", get(offers))
        .route("/pods", post(spawn).get(list_pods))
        .route("/spawn-pod", post(spawn))
        .route("/pods/{id}", get(status))
        .route("/pods/{id}/topup", post(top_up))
        .route("/top-up-pod", post(seed_top_up))
        .route("/openapi.json", get(openapi_json))
        .route("/tools/{name}", post(extra_tool))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(door.clone(), limit_rate))
        .with_state(door);
    if !opts.section.cors_origins.is_empty() {
        let mut origins = Vec::new();
        for o in &opts.section.cors_origins {
            let ok = (o.starts_with("https://") || o.starts_with("http://"))
                && !o.ends_with('/')
                && !o.contains(char::is_whitespace);
            let v = HeaderValue::from_str(o)
                .ok()
                .filter(|_| ok)
                .ok_or_else(|| HttpDoorError::BadOrigin(o.clone()))?;
            origins.push(v);
        }
        r = r.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, X_CASHU])
                .expose_headers([X_CASHU]),
        );
    }
    Ok(r)
}

/// Bind `addr` and serve until `shutdown`. Returns the bound address (port 0 picks one) and the
/// serving task.
pub async fn start(
    provider: Arc<Provider>,
    addr: SocketAddr,
    opts: HttpOptions,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), HttpDoorError> {
    let app = router(provider, opts)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpDoorError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpDoorError::Bind { addr, source })?;
    let task = tokio::spawn(serve(listener, app, shutdown));
    Ok((bound, task))
}

/// Accept connections until `shutdown`. hyper directly (not `axum::serve`) for the header read
/// timeout, which needs a timer.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, shutdown: CancellationToken) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("http: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let app = app.clone();
                async move {
                    use tower_service::Service;
                    let mut app = app;
                    app.call(req.map(Body::new)).await
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

// ---- errors --------------------------------------------------------------------------------

/// The HTTP status for a core error. NUT-24: a token from another mint, of another unit or worth
/// too little is `400`.
pub fn status_for(t: ErrorType) -> StatusCode {
    match t {
        ErrorType::InvalidRequest | ErrorType::InvalidSpec => StatusCode::BAD_REQUEST,
        ErrorType::InvalidToken | ErrorType::MintNotAllowed | ErrorType::InsufficientPayment => {
            StatusCode::BAD_REQUEST
        }
        ErrorType::TokenAlreadySpent => StatusCode::CONFLICT,
        ErrorType::PodNotFound => StatusCode::NOT_FOUND,
        ErrorType::ResourceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorType::PaymentFailed => StatusCode::BAD_GATEWAY,
        ErrorType::PodCreationFailed | ErrorType::InternalError => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

#[derive(Debug)]
struct HttpError {
    status: StatusCode,
    body: ProviderError,
    /// A payment request to attach (`402`, and NUT-24 `400`s).
    payment_request: Option<String>,
}

impl HttpError {
    fn new(status: StatusCode, body: ProviderError) -> Self {
        HttpError {
            status,
            body,
            payment_request: None,
        }
    }
    fn core(body: ProviderError) -> Self {
        HttpError::new(status_for(body.error_type), body)
    }
    fn invalid(m: impl Into<String>) -> Self {
        HttpError::new(StatusCode::BAD_REQUEST, ProviderError::invalid_request(m))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(&self.body)).into_response();
        if let Some(pr) = self
            .payment_request
            .and_then(|p| HeaderValue::from_str(&p).ok())
        {
            r.headers_mut().insert(X_CASHU, pr);
        }
        r
    }
}

async fn not_found() -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        ProviderError::invalid_request("no such route; see /openapi.json"),
    )
}

async fn method_not_allowed() -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ProviderError::invalid_request("method not allowed on this route; see /openapi.json"),
    )
}

// ---- limits --------------------------------------------------------------------------------

/// A token bucket per client address: `per_minute` requests, refilled continuously.
struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    fn new(per_minute: u32) -> Self {
        RateLimiter {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request from `ip`'s bucket; `Err(seconds)` until the next one is allowed.
    fn check(&self, ip: IpAddr) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let cap = f64::from(self.per_minute);
        let per_sec = cap / 60.0;
        let now = Instant::now();
        let mut m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= RATE_TABLE_MAX {
            // Forget the addresses whose buckets are full again anyway.
            m.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < cap
            });
        }
        let (tokens, at) = m.entry(ip).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(cap);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the last address in
/// `X-Forwarded-For` that is not a trusted proxy.
fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let peer = canon(peer);
    if !trusted.contains(&peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(s) = v.to_str() else { return peer };
        for part in s.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(canon(ip)),
                // A hop we cannot read: trust nothing to its left.
                Err(_) => hops.clear(),
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer)
}

/// The client address a request came from, as the limiter and logs see it.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

async fn limit_rate(State(door): State<Arc<Door>>, mut req: Request<Body>, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let ip = client_ip(peer, req.headers(), &door.section.trusted_proxies);
    req.extensions_mut().insert(ClientIp(ip));
    if let Err(wait) = door.limiter.check(ip) {
        let mut r = HttpError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ProviderError::new(
                ErrorType::ResourceUnavailable,
                format!("too many requests from your address; retry in {wait} s"),
            ),
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    tracing::debug!(client = %ip, method = %req.method(), path = %req.uri().path(), "http request");
    next.run(req).await
}

/// Read a JSON body of at most `max` bytes within the body timeout. An empty body is `{}`.
async fn read_json<T: serde::de::DeserializeOwned>(
    body: Body,
    headers: &HeaderMap,
    max: usize,
) -> Result<T, HttpError> {
    let too_big = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ProviderError::invalid_request(format!("the body is larger than {max} bytes")),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max as u64 {
            return Err(too_big());
        }
    }
    let bytes: Bytes =
        match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, max)).await {
            Err(_) => {
                return Err(HttpError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    ProviderError::invalid_request("the body did not arrive in time"),
                ))
            }
            Ok(Err(_)) => return Err(too_big()),
            Ok(Ok(b)) => b,
        };
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        HttpError::invalid(format!(
            "the body is not the JSON this route takes: {}",
            crate::error::sanitize_serde(&e)
        ))
    })
}

// ---- payment -------------------------------------------------------------------------------

/// The token from `X-Cashu` or the body; both present must agree.
fn payment_token(headers: &HeaderMap, body: Option<Secret>) -> Result<Option<Secret>, HttpError> {
    let header = match headers.get(&X_CASHU) {
        None => None,
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| HttpError::invalid("X-Cashu must be a cashuA… or cashuB… token"))?
                .trim();
            (!s.is_empty()).then(|| Secret::new(s))
        }
    };
    let body = body.filter(|t| !t.expose().trim().is_empty());
    match (header, body) {
        (Some(h), Some(b)) if h.expose() != b.expose().trim() => Err(HttpError::invalid(
            "two different tokens: send it in X-Cashu or in cashu_token, not both",
        )),
        (Some(h), _) => Ok(Some(h)),
        (None, b) => Ok(b),
    }
}

/// A NUT-18 payment request (`creqA…`) for `msats`, rounded up to whole sat.
fn payment_request(p: &Provider, msats: u64, description: &str) -> String {
    use cdk::nuts::{CurrencyUnit, PaymentRequest};
    let sats = msats.div_ceil(1000).max(1);
    PaymentRequest::builder()
        .amount(sats)
        .unit(CurrencyUnit::Sat)
        .mints(p.payments().mints().cloned().collect())
        .single_use(true)
        .description(description)
        .build()
        .to_string()
}

fn payment_required(p: &Provider, msats: u64, what: &str) -> HttpError {
    let sats = msats.div_ceil(1000).max(1);
    let body = ProviderError::new(
        ErrorType::InsufficientPayment,
        format!(
            "payment required: retry with X-Cashu: <a cashuB token of at least {sats} sat from one of the whitelisted mints> ({what})"
        ),
    )
    .with_details(serde_json::json!({ "amount_sats": sats, "unit": "sat" }));
    let mut e = HttpError::new(StatusCode::PAYMENT_REQUIRED, body);
    e.payment_request = Some(payment_request(p, msats, what));
    e
}

// ---- ownership -----------------------------------------------------------------------------

/// The bearer's owner token, if any; a malformed one is an error, not "no owner".
fn bearer(headers: &HeaderMap) -> Result<Option<String>, HttpError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        HttpError::new(
            StatusCode::UNAUTHORIZED,
            ProviderError::invalid_request(
                "Authorization must be `Bearer <owner_token>` with the owner_token a spawn returned",
            ),
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    let t = s.strip_prefix("Bearer ").ok_or_else(bad)?.trim();
    let hex = t.strip_prefix(OWNER_PREFIX).ok_or_else(bad)?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(Some(t.to_ascii_lowercase()))
}

/// The core's caller for an owner token: its hash, which is all the store keeps.
fn owner_caller(owner_token: &str) -> Caller {
    let mut h = Sha256::new();
    h.update(b"paygress http owner\0");
    h.update(owner_token.as_bytes());
    Caller::Nostr(format!("http-{}", hex::encode(h.finalize())))
}

/// An owner token derived from the payment, so a replay gets the same one. It is derived from
/// the payment's proofs (the core's payment key), not the token's text: the same proofs
/// re-encoded (cashuA, cashuB) are the same payment and get the same first answer.
fn derived_owner_token(key: &[u8; 32], provider: &Provider, token: &Secret) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        // HMAC takes keys of any length; kept total all the same.
        return format!("{OWNER_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
    };
    match provider.payments().inspect(token.expose()) {
        Ok(info) => mac.update(info.key.as_bytes()),
        // The core refuses this token with its own typed error; the owner token is never seen.
        Err(_) => mac.update(token.expose().trim().as_bytes()),
    }
    format!("{OWNER_PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
}

// ---- handlers ------------------------------------------------------------------------------

/// A path segment, or the typed `400` (a segment that is not UTF-8 once decoded).
fn path_param(p: Result<Path<String>, PathRejection>) -> Result<String, HttpError> {
    p.map(|Path(v)| v)
        .map_err(|_| HttpError::invalid("the path is not a valid pod id or name"))
}

async fn healthz(State(door): State<Arc<Door>>) -> Json<Health> {
    let b = door.provider.backend();
    let up = matches!(
        tokio::time::timeout(Duration::from_secs(5), b.list(door.provider.provider_id())).await,
        Ok(Ok(_))
    );
    Json(Health {
        status: if up { "ok" } else { "degraded" }.into(),
        doors: door.doors.clone(),
        backend: b.kind().to_string(),
        backend_up: up,
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn offers(State(door): State<Arc<Door>>) -> Json<Offers> {
    Json(door.provider.offers())
}

/// Run a core call in its own task, so a client hanging up does not cut it short; at the time
/// limit, cancel it through the core (which rolls back and refunds) and return what it says.
async fn run_core<T, F>(
    timeout: Duration,
    f: impl FnOnce(CancellationToken) -> F,
) -> Result<T, ProviderError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, ProviderError>> + Send + 'static,
{
    let cancel = CancellationToken::new();
    let mut task = tokio::spawn(f(cancel.clone()));
    let joined = match tokio::time::timeout(timeout, &mut task).await {
        Ok(j) => j,
        Err(_) => {
            cancel.cancel();
            task.await
        }
    };
    joined.unwrap_or_else(|_| Err(ProviderError::internal("the request's task failed")))
}

async fn spawn(
    State(door): State<Arc<Door>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let req: HttpSpawnRequest = read_json(body, &headers, door.section.max_body_bytes).await?;
    let owner = bearer(&headers)?;
    let p = &door.provider;
    let Some(token) = payment_token(&headers, req.cashu_token.clone())? else {
        // Name the tier's price, or say which tier does not exist, before asking for money.
        let cfg = p.config();
        let tier = match req.pod_spec_id.as_deref() {
            None => cfg.tiers.first(),
            Some(id) => cfg.tier(id),
        }
        .ok_or_else(|| {
            HttpError::core(ProviderError::invalid_spec(
                "no such tier; see GET /offers → pod_specs",
            ))
        })?;
        let msats = tier
            .rate_msats_per_sec
            .saturating_mul(cfg.provider.minimum_duration_seconds);
        return Err(payment_required(
            p,
            msats,
            &format!(
                "{} for the minimum of {} s",
                tier.id, cfg.provider.minimum_duration_seconds
            ),
        ));
    };
    let owner_token = owner.unwrap_or_else(|| derived_owner_token(&door.owner_key, p, &token));
    let caller = owner_caller(&owner_token);
    let core_req = SpawnRequest {
        cashu_token: token,
        pod_spec_id: req.pod_spec_id,
        pod_image: req.pod_image,
        ssh_username: req.ssh_username,
        ssh_password: req.ssh_password,
        ssh_public_key: req.ssh_public_key,
        request_id: req.request_id,
    };
    let provider = p.clone();
    let timeout = Duration::from_secs(door.section.request_timeout_seconds.max(1));
    let result = run_core(timeout, move |cancel| async move {
        provider.spawn(core_req, caller, None, cancel).await
    })
    .await
    .map_err(HttpError::core)?;
    let ssh_command = format!(
        "ssh -p {} {}@{}",
        result.node_port, result.ssh_username, result.host
    );
    let answer = HttpSpawnResult {
        result,
        ssh_command,
        owner_token: Secret::new(owner_token),
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

async fn do_top_up(
    door: &Door,
    headers: &HeaderMap,
    pod_npub: String,
    token: Option<Secret>,
    request_id: Option<String>,
) -> Result<Json<TopUpResult>, HttpError> {
    let p = &door.provider;
    let Some(token) = payment_token(headers, token)? else {
        // The pod must exist before money is asked for it.
        let st = p
            .status(
                StatusRequest {
                    pod_npub: pod_npub.clone(),
                },
                &Caller::Anonymous,
            )
            .await
            .map_err(HttpError::core)?;
        return Err(payment_required(
            p,
            st.pod_spec.rate_msats_per_sec,
            &format!("top-up of {pod_npub}, per second of {}", st.pod_spec.id),
        ));
    };
    let req = TopUpRequest {
        pod_npub,
        cashu_token: token,
        request_id,
    };
    let provider = p.clone();
    let timeout = Duration::from_secs(door.section.request_timeout_seconds.max(1));
    run_core(timeout, move |_| async move { provider.top_up(req).await })
        .await
        .map(Json)
        .map_err(HttpError::core)
}

async fn top_up(
    State(door): State<Arc<Door>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<TopUpResult>, HttpError> {
    let id = path_param(id)?;
    let req: HttpTopUpRequest = read_json(body, &headers, door.section.max_body_bytes).await?;
    do_top_up(&door, &headers, id, req.cashu_token, req.request_id).await
}

async fn seed_top_up(
    State(door): State<Arc<Door>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<TopUpResult>, HttpError> {
    let req: SeedTopUpRequest = read_json(body, &headers, door.section.max_body_bytes).await?;
    do_top_up(
        &door,
        &headers,
        req.pod_npub,
        req.cashu_token,
        req.request_id,
    )
    .await
}

async fn status(
    State(door): State<Arc<Door>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<PodStatus>, HttpError> {
    let id = path_param(id)?;
    let caller = match bearer(&headers)? {
        Some(t) => owner_caller(&t),
        None => Caller::Anonymous,
    };
    door.provider
        .status(StatusRequest { pod_npub: id }, &caller)
        .await
        .map(Json)
        .map_err(HttpError::core)
}

async fn list_pods(
    State(door): State<Arc<Door>>,
    headers: HeaderMap,
) -> Result<Json<PodList>, HttpError> {
    let Some(t) = bearer(&headers)? else {
        return Err(HttpError::new(
            StatusCode::UNAUTHORIZED,
            ProviderError::invalid_request(
                "GET /pods lists your pods: send Authorization: Bearer <owner_token>",
            ),
        ));
    };
    let caller = owner_caller(&t);
    let Caller::Nostr(key) = &caller else {
        return Ok(Json(PodList { pods: Vec::new() }));
    };
    use crate::store::WorkloadStatus;
    let store = door.provider.store();
    let mut pods = Vec::new();
    let rows = store
        .workloads_in_state(&[
            WorkloadStatus::Provisioning,
            WorkloadStatus::Running,
            WorkloadStatus::Expired,
        ])
        .map_err(|e| HttpError::core(e.into()))?;
    for w in rows.into_iter().filter(|w| w.owner.as_deref() == Some(key)) {
        if let Ok(s) = door
            .provider
            .status(StatusRequest { pod_npub: w.id }, &caller)
            .await
        {
            pods.push(s);
        }
    }
    Ok(Json(PodList { pods }))
}

async fn openapi_json(State(door): State<Arc<Door>>) -> Response {
    let tools: Vec<rmcp::model::Tool> = door.extra_tools.iter().map(|t| t.tool()).collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi(&tools).to_string(),
    )
        .into_response()
}

async fn extra_tool(
    State(door): State<Arc<Door>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, HttpError> {
    let name = path_param(name)?;
    let Some(t) = door.extra_tools.iter().find(|t| t.tool().name == name) else {
        return Err(not_found().await);
    };
    let args: serde_json::Map<String, serde_json::Value> =
        read_json(body, &headers, door.section.max_body_bytes).await?;
    t.call(args).await.map(Json).map_err(HttpError::core)
}

// ---- OpenAPI -------------------------------------------------------------------------------

/// The OpenAPI 3.1 document, from the same types as the bodies.
pub fn openapi(extra_tools: &[rmcp::model::Tool]) -> serde_json::Value {
    use serde_json::{json, Value};
    fn schema<T: JsonSchema>() -> Value {
        Value::Object(schema_object::<T>())
    }
    let err = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let ok = |d: &str, name: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}}});
    let with_x_cashu = |d: &str| {
        let mut e = err(d);
        e["headers"] = json!({"X-Cashu": {"description": "A NUT-18 payment request (creqA…)", "schema": {"type": "string"}}});
        e
    };
    let rate = err("Too many requests from this address (Retry-After says when to retry).");
    let common = |mut m: serde_json::Map<String, Value>| {
        m.insert("404".into(), err("No such route or pod."));
        m.insert("405".into(), err("Method not allowed."));
        m.insert("429".into(), rate.clone());
        Value::Object(m)
    };
    let paid_errors = |m: &mut serde_json::Map<String, Value>| {
        m.insert("400".into(), with_x_cashu("Invalid request, or (NUT-24) a token from another mint, of another unit, unreadable or worth too little: nothing was spent."));
        m.insert("402".into(), with_x_cashu("Payment required: retry with X-Cashu: cashuB… for the request in the X-Cashu header."));
        m.insert("408".into(), err("The body did not arrive in time."));
        m.insert(
            "409".into(),
            err("The token was already spent (elsewhere, or in a different request here)."),
        );
        m.insert("413".into(), err("The body is too large."));
        m.insert(
            "500".into(),
            err("Provisioning or the provider failed; refund_token returns what was paid."),
        );
        m.insert(
            "502".into(),
            err("The mint could not be reached or refused the swap."),
        );
        m.insert(
            "503".into(),
            err("No capacity right now; the token is untouched."),
        );
    };
    let x_cashu_param = json!({"name": "X-Cashu", "in": "header", "required": false,
        "description": "The payment: a Cashu token (cashuB… or cashuA…, unit sat) from a whitelisted mint.",
        "schema": {"type": "string"}});
    let auth_param = json!({"name": "Authorization", "in": "header", "required": false,
        "description": "`Bearer <owner_token>` from the spawn answer.",
        "schema": {"type": "string"}});
    let id_param = json!({"name": "id", "in": "path", "required": true,
        "description": "The pod's id (pod_npub).", "schema": {"type": "string"}});
    let body = |name: &str, required: bool| json!({"required": required, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}}});
    let spawn_op = |op_id: &str| {
        let mut r = serde_json::Map::new();
        r.insert(
            "201".into(),
            ok(
                "The pod: ssh command, password, expiry and owner_token.",
                "SpawnResult",
            ),
        );
        paid_errors(&mut r);
        r.insert("401".into(), err("A malformed Authorization header."));
        json!({"operationId": op_id, "summary": "Buy a pod (NUT-24: without a token, 402 with a payment request)",
               "parameters": [x_cashu_param, auth_param],
               "requestBody": body("SpawnRequest", true), "responses": common(r)})
    };
    let topup_responses = || {
        let mut r = serde_json::Map::new();
        r.insert("200".into(), ok("Time added.", "TopUpResult"));
        paid_errors(&mut r);
        common(r)
    };
    let mut status_r = serde_json::Map::new();
    status_r.insert(
        "200".into(),
        ok("The pod; `access` only for its owner.", "PodStatus"),
    );
    status_r.insert("400".into(), err("A malformed pod id."));
    status_r.insert("401".into(), err("A malformed Authorization header."));
    let mut list_r = serde_json::Map::new();
    list_r.insert("200".into(), ok("The bearer's live pods.", "PodList"));
    list_r.insert("401".into(), err("No or a malformed Authorization header."));
    list_r.insert("500".into(), err("The state store failed."));
    list_r.insert("413".into(), err("The body is too large."));
    let pods_path = json!({
        "post": spawn_op("spawnPod"),
        "get": {"operationId": "listPods", "summary": "The bearer's pods", "parameters": [auth_param], "responses": common(list_r)},
    });
    let plain = |d: &str, name: &str| {
        let m = serde_json::Map::from_iter([("200".to_string(), ok(d, name))]);
        common(m)
    };
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "Paygress HTTP door", "version": env!("CARGO_PKG_VERSION"),
                 "description": "SSH-ready compute for Cashu ecash, paid per NUT-24 (HTTP 402 with a NUT-18 payment request in X-Cashu)."},
        "paths": {
            "/healthz": {"get": {"operationId": "healthz", "summary": "Doors and backend up", "responses": plain("Health", "Health")}},
            "/offers": {"get": {"operationId": "getOffers", "summary": "What is for sale", "responses": plain("Offers", "Offers")}},
            "/pods": pods_path,
            "/spawn-pod": {"post": spawn_op("spawnPodSeed")},
            "/pods/{id}": {"get": {"operationId": "getPodStatus", "summary": "A pod's state; login details for its owner",
                                    "parameters": [id_param, auth_param], "responses": common(status_r)}},
            "/pods/{id}/topup": {"post": {"operationId": "topUpPod", "summary": "Extend a pod's paid time (NUT-24)",
                                          "parameters": [id_param, x_cashu_param],
                                          "requestBody": body("TopUpRequest", false), "responses": topup_responses()}},
            "/top-up-pod": {"post": {"operationId": "topUpPodSeed", "summary": "Extend a pod's paid time, pod id in the body",
                                     "parameters": [x_cashu_param],
                                     "requestBody": body("SeedTopUpRequest", true), "responses": topup_responses()}},
            "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}},
                                                    "429": rate}}},
        },
        "components": {"schemas": {
            "Error": schema::<ProviderError>(),
            "Health": schema::<Health>(),
            "Offers": schema::<Offers>(),
            "SpawnRequest": schema::<HttpSpawnRequest>(),
            "SpawnResult": schema::<HttpSpawnResult>(),
            "TopUpRequest": schema::<HttpTopUpRequest>(),
            "SeedTopUpRequest": schema::<SeedTopUpRequest>(),
            "TopUpResult": schema::<TopUpResult>(),
            "PodStatus": schema::<PodStatus>(),
            "PodList": schema::<PodList>(),
        }},
    });
    for t in extra_tools {
        let mut r = serde_json::Map::new();
        r.insert("200".into(), json!({"description": "The tool's result.", "content": {"application/json": {"schema": Value::Object((*t.output_schema.clone().unwrap_or_default()).clone())}}}));
        r.insert("400".into(), err("Invalid arguments."));
        r.insert("413".into(), err("The body is too large."));
        r.insert("408".into(), err("The body did not arrive in time."));
        r.insert("500".into(), err("The tool failed."));
        doc["paths"][format!("/tools/{}", t.name)] = json!({"post": {
            "operationId": format!("tool_{}", t.name),
            "summary": t.description.clone().unwrap_or_default(),
            "requestBody": {"required": true, "content": {"application/json": {"schema": Value::Object((*t.input_schema).clone())}}},
            "responses": common(r)}});
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7".parse().unwrap(),
        );
        // Not trusted: the peer.
        assert_eq!(client_ip(proxy, &h, &[]), proxy);
        // Trusted: the last hop that is not a proxy.
        assert_eq!(
            client_ip(proxy, &h, &[proxy]),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // A garbled hop: nothing left of it is believed.
        h.insert("x-forwarded-for", "203.0.113.9, garbage".parse().unwrap());
        assert_eq!(client_ip(proxy, &h, &[proxy]), proxy);
    }

    #[test]
    fn rate_limiter_refuses_after_the_bucket_is_empty() {
        let l = RateLimiter::new(3);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert!((0..3).all(|_| l.check(ip).is_ok()));
        assert!(l.check(ip).is_err());
        assert!(l.check("127.0.0.10".parse().unwrap()).is_ok());
        assert!(RateLimiter::new(0).check(ip).is_ok());
    }

    #[test]
    fn bearer_tokens_are_checked_and_hashed() {
        let mut h = HeaderMap::new();
        assert!(bearer(&h).unwrap().is_none());
        h.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert!(bearer(&h).is_err());
        let t = format!("{OWNER_PREFIX}{}", "ab".repeat(32));
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        assert_eq!(bearer(&h).unwrap().as_deref(), Some(t.as_str()));
        let Caller::Nostr(k) = owner_caller(&t) else {
            panic!()
        };
        assert!(!k.contains(&t));
    }

    #[test]
    fn openapi_is_3_1_with_every_route() {
        let d = openapi(&[]);
        assert_eq!(d["openapi"], "3.1.0");
        for p in [
            "/healthz",
            "/offers",
            "/pods",
            "/spawn-pod",
            "/pods/{id}",
            "/pods/{id}/topup",
            "/top-up-pod",
            "/openapi.json",
        ] {
            assert!(d["paths"][p].is_object(), "{p}");
        }
        let s = &d["components"]["schemas"]["SpawnResult"];
        assert!(s["properties"]["owner_token"].is_object(), "{s}");
        assert!(s["properties"]["pod_npub"].is_object(), "{s}");
    }
}
