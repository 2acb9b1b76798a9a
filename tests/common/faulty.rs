//! Fault injection on the mint's network path: an HTTP proxy on 127.0.0.1 in front of the real
//! test mint.
//!
//! The faults that lose money on a real network are not "the mint says no" but "the mint did it
//! and the answer never arrived": a cut connection, a timeout, a 502 from a gateway after the
//! upstream processed the request. A proxy is the only honest way to produce those against a real
//! mint: the mint really performs the swap, and the provider really loses the answer. Per path
//! (`/v1/swap`, `/v1/checkstate`, `/v1/restore`, …) a rule says what to do with the next `n`
//! calls: cut the answer after forwarding, delay it, answer a 5xx with or without forwarding, or
//! close the connection without forwarding. `refuse(true)` closes the listening socket itself, so
//! new connections are refused by the kernel, and kills the open ones.
//!
//! [`FaultyMint`] bundles the mint, the proxy and a funding wallet that talks *through* the
//! proxy, so tokens name the proxy's URL (which is what the provider whitelists).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdk::amount::SplitTarget;
use cdk::nuts::PaymentMethod;
use cdk::wallet::{ReceiveOptions, SendOptions, Wallet};
use cdk::Amount;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::mint::{fresh_wallet, TestMint};

/// What to do with a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward it, let the mint act on it, then close the connection without answering.
    CutAfterForward,
    /// Hold it this long, then forward and answer normally.
    Delay(Duration),
    /// Forward it, hold the mint's answer this long, then answer.
    DelayAnswer(Duration),
    /// Answer this status without forwarding (a gateway that could not reach the mint).
    Status(u16),
    /// Forward it, let the mint act, then answer this status instead of the mint's answer.
    StatusAfterForward(u16),
    /// Close the connection without forwarding.
    Drop,
}

struct Rule {
    path: String,
    fault: Fault,
    remaining: usize,
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    /// Requests that reached the mint, per path.
    forwarded: Mutex<BTreeMap<String, usize>>,
    /// Faults applied, per path.
    applied: Mutex<BTreeMap<String, usize>>,
    refusing: AtomicBool,
    changed: Notify,
}

/// The proxy; stops when dropped.
pub struct FaultyProxy {
    pub url: String,
    shared: Arc<Shared>,
    refuse_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(128)
}

impl FaultyProxy {
    /// A proxy on a free port of 127.0.0.1 forwarding to `upstream` (`http://127.0.0.1:P`).
    pub async fn start(upstream: &str) -> FaultyProxy {
        let up: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream is http://127.0.0.1:PORT");
        let listener = bind("127.0.0.1:0".parse().unwrap()).expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let (refuse_tx, refuse_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, addr, up, shared.clone(), refuse_rx));
        FaultyProxy {
            url: format!("http://{addr}"),
            shared,
            refuse_tx,
            task,
        }
    }

    /// Apply `fault` to the next `times` requests whose path starts with `path`.
    pub fn inject(&self, path: &str, fault: Fault, times: usize) {
        self.shared.rules.lock().unwrap().push(Rule {
            path: path.to_string(),
            fault,
            remaining: times,
        });
    }

    /// Apply `fault` to every request under `path` until [`FaultyProxy::clear`].
    pub fn always(&self, path: &str, fault: Fault) {
        self.inject(path, fault, usize::MAX);
    }

    /// Remove every rule.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// While on, the listening socket is closed (connections are refused) and open connections
    /// are cut.
    pub fn refuse(&self, on: bool) {
        self.shared.refusing.store(on, Ordering::SeqCst);
        let _ = self.refuse_tx.send(on);
        self.shared.changed.notify_waiters();
    }

    /// How many requests under `path` reached the mint.
    pub fn forwarded(&self, path: &str) -> usize {
        self.shared
            .forwarded
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.starts_with(path))
            .map(|(_, n)| n)
            .sum()
    }

    /// How many faults were applied to requests under `path`.
    pub fn applied(&self, path: &str) -> usize {
        self.shared
            .applied
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.starts_with(path))
            .map(|(_, n)| n)
            .sum()
    }
}

async fn accept_loop(
    mut listener: tokio::net::TcpListener,
    addr: SocketAddr,
    up: SocketAddr,
    shared: Arc<Shared>,
    mut refuse: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let shared = shared.clone();
                conns.spawn(serve(stream, up, shared));
            }
            _ = refuse.changed() => {
                if *refuse.borrow() {
                    conns.abort_all();
                    drop(listener);
                    while *refuse.borrow() {
                        if refuse.changed().await.is_err() {
                            return;
                        }
                    }
                    listener = loop {
                        match bind(addr) {
                            Ok(l) => break l,
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    };
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One client connection. A fault that closes the connection ends this task (dropping the
/// connection without an answer).
async fn serve(stream: TcpStream, up: SocketAddr, shared: Arc<Shared>) {
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let kill_tx = Arc::new(Mutex::new(Some(kill_tx)));
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let kill = kill_tx.clone();
        async move { handle(req, up, shared, kill).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = kill_rx => {}
    }
}

type Kill = Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>;

fn take_fault(shared: &Shared, path: &str) -> Option<Fault> {
    let mut rules = shared.rules.lock().unwrap();
    let rule = rules
        .iter_mut()
        .find(|r| r.remaining > 0 && path.starts_with(&r.path))?;
    if rule.remaining != usize::MAX {
        rule.remaining -= 1;
    }
    let f = rule.fault;
    rules.retain(|r| r.remaining > 0);
    *shared
        .applied
        .lock()
        .unwrap()
        .entry(path.to_string())
        .or_default() += 1;
    Some(f)
}

async fn handle(
    req: Request<Incoming>,
    up: SocketAddr,
    shared: Arc<Shared>,
    kill: Kill,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let path = req.uri().path().to_string();
    let fault = take_fault(&shared, &path);
    let cut = |kill: &Kill| {
        if let Some(k) = kill.lock().unwrap().take() {
            let _ = k.send(());
        }
    };
    match fault {
        Some(Fault::Drop) => {
            cut(&kill);
            return std::future::pending().await;
        }
        Some(Fault::Status(code)) => return Ok(status(code)),
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        _ => {}
    }
    let answer = forward(req, up).await;
    *shared.forwarded.lock().unwrap().entry(path).or_default() += 1;
    match fault {
        Some(Fault::CutAfterForward) => {
            cut(&kill);
            std::future::pending().await
        }
        Some(Fault::StatusAfterForward(code)) => Ok(status(code)),
        Some(Fault::DelayAnswer(d)) => {
            tokio::time::sleep(d).await;
            answer
        }
        _ => answer,
    }
}

fn status(code: u16) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"injected fault")));
    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
    r
}

async fn forward(
    req: Request<Incoming>,
    up: SocketAddr,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let io_err = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(|e| io_err(&e))?.to_bytes();
    let stream = TcpStream::connect(up).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| io_err(&e))?;
    tokio::spawn(conn);
    let mut out = Request::from_parts(parts, Full::new(body));
    out.headers_mut()
        .insert(hyper::header::HOST, up.to_string().parse().unwrap());
    let resp = sender.send_request(out).await.map_err(|e| io_err(&e))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| io_err(&e))?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}

/// The real test mint behind a fault proxy, and a funding wallet that talks through the proxy.
pub struct FaultyMint {
    pub mint: TestMint,
    pub proxy: FaultyProxy,
    /// The URL tokens name and providers whitelist: the proxy's.
    pub url: String,
    funding: Wallet,
    lock: tokio::sync::Mutex<()>,
}

impl FaultyMint {
    pub async fn start() -> FaultyMint {
        Self::with(TestMint::start().await).await
    }

    pub async fn start_with_fee(ppk: u64) -> FaultyMint {
        Self::with(TestMint::start_with_fee(ppk).await).await
    }

    async fn with(mint: TestMint) -> FaultyMint {
        let proxy = FaultyProxy::start(&mint.url).await;
        let url = proxy.url.clone();
        let funding = fresh_wallet(&url).await;
        FaultyMint {
            mint,
            proxy,
            url,
            funding,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// A fresh token worth `sats` naming the proxy's URL. Call before arming faults.
    pub async fn token(&self, sats: u64) -> String {
        let _g = self.lock.lock().await;
        let balance = u64::from(self.funding.total_balance().await.unwrap());
        if balance < sats {
            let want = (sats - balance).max(100_000);
            let quote = self
                .funding
                .mint_quote(PaymentMethod::BOLT11, Some(Amount::from(want)), None, None)
                .await
                .unwrap();
            self.funding
                .wait_and_mint_quote(quote, SplitTarget::default(), None, Duration::from_secs(30))
                .await
                .unwrap();
        }
        let prepared = self
            .funding
            .prepare_send(Amount::from(sats), SendOptions::default())
            .await
            .unwrap();
        prepared.confirm(None).await.unwrap().to_string()
    }

    /// Receive `token` into a fresh wallet (through the proxy): what it was worth, or the mint's
    /// refusal.
    pub async fn receive_fresh(&self, token: &str) -> Result<u64, cdk::Error> {
        let w = fresh_wallet(&self.url).await;
        w.receive(token, ReceiveOptions::default())
            .await
            .map(u64::from)
    }

    /// The books of a test, to the sat: everything the buyer paid is either in the provider's
    /// earnings, in a refund a fresh wallet can receive, or still spendable in the buyer's own
    /// tokens. Receives the refunds and the tokens (so call it last), with every fault cleared.
    pub async fn assert_books(
        &self,
        paid: u64,
        earnings: u64,
        refunds: &[String],
        tokens: &[String],
    ) {
        self.proxy.clear();
        self.proxy.refuse(false);
        let mut refunded = 0;
        for r in refunds {
            refunded += self.receive_fresh(r).await.expect("a refund is receivable");
        }
        let mut spendable = 0;
        for t in tokens {
            spendable += self.receive_fresh(t).await.unwrap_or(0);
        }
        assert_eq!(
            paid,
            earnings + refunded + spendable,
            "books: paid {paid} sat, earnings {earnings} + refunds {refunded} + still spendable {spendable}"
        );
    }
}
