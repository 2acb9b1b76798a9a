//! Talking to LXD: the two transports, LXD's REST envelope and operations, and the calls every
//! part of the backend makes (create, state changes, exec, the file API, removal).
//!
//! - The local unix socket (`/var/lib/lxd/unix.socket`) with a bare hyper HTTP/1 client over a
//!   tokio `UnixStream`: one short connection per request, nothing pooled, nothing to go stale.
//! - HTTPS with a client certificate for a remote LXD, with reqwest on rustls; LXD servers use
//!   self-signed certificates, so the server certificate is either pinned (the default, like
//!   `lxc remote add` does) or checked against a CA.
//!
//! Split from `lxd.rs` so that file holds the workload lifecycle only. Every request has a
//! timeout, and nothing read from the daemon is trusted enough to `unwrap()`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{is_already, LxdBackend, LxdConfig};
use crate::backend::BackendError;

/// What went wrong talking to LXD, before it is given a meaning as a [`BackendError`].
#[derive(Debug, Clone)]
pub(super) enum LxdError {
    /// The daemon could not be reached or did not answer in time.
    Transport(String),
    /// LXD answered with an error (HTTP-level or an operation that failed).
    Lxd { code: u16, message: String },
    /// LXD answered something this module does not understand.
    Protocol(String),
}

impl LxdError {
    pub(super) fn is_not_found(&self) -> bool {
        matches!(self, LxdError::Lxd { code: 404, .. })
    }
    pub(super) fn message(&self) -> &str {
        match self {
            LxdError::Transport(m) | LxdError::Protocol(m) => m,
            LxdError::Lxd { message, .. } => message,
        }
    }
    pub(super) fn contains(&self, needle: &str) -> bool {
        self.message().to_ascii_lowercase().contains(needle)
    }
    /// LXD refuses a state change while another one runs ("Instance is busy running a ...").
    pub(super) fn is_busy(&self) -> bool {
        self.contains("busy")
    }
    pub(super) fn api(&self, what: &str) -> BackendError {
        BackendError::Api(format!("LXD {what}: {}", self.message()))
    }
}

/// Largest response body read from LXD (a `recursion=1` listing of many instances fits easily).
pub(super) const MAX_BODY: usize = 32 * 1024 * 1024;

pub(super) enum Transport {
    Unix(PathBuf),
    Https {
        client: reqwest::Client,
        base: String,
    },
}

pub(super) struct Request<'a> {
    method: hyper::Method,
    /// Path and query, e.g. `/1.0/instances?recursion=1`.
    path: &'a str,
    headers: Vec<(&'static str, String)>,
    body: Option<(Vec<u8>, &'static str)>,
    timeout: Duration,
}

impl Transport {
    async fn send(&self, req: Request<'_>) -> Result<(u16, Bytes), LxdError> {
        let timeout = req.timeout;
        let what = format!("{} {}", req.method, strip_query(req.path));
        match tokio::time::timeout(timeout, self.send_inner(req)).await {
            Ok(r) => r,
            Err(_) => Err(LxdError::Transport(format!(
                "{what}: no answer within {}s",
                timeout.as_secs()
            ))),
        }
    }

    async fn send_inner(&self, req: Request<'_>) -> Result<(u16, Bytes), LxdError> {
        match self {
            Transport::Unix(socket) => {
                use http_body_util::{BodyExt, Full, Limited};
                let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
                    LxdError::Transport(format!("cannot connect to {}: {e}", socket.display()))
                })?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .map_err(|e| LxdError::Transport(format!("HTTP handshake: {e}")))?;
                let conn = tokio::spawn(async move {
                    let _ = conn.await;
                });
                let mut b = hyper::Request::builder()
                    .method(req.method)
                    .uri(req.path)
                    .header(hyper::header::HOST, "lxd");
                for (k, v) in &req.headers {
                    b = b.header(*k, v.as_str());
                }
                let body = match req.body {
                    Some((bytes, ctype)) => {
                        b = b.header(hyper::header::CONTENT_TYPE, ctype);
                        Full::new(Bytes::from(bytes))
                    }
                    None => Full::new(Bytes::new()),
                };
                let request = b
                    .body(body)
                    .map_err(|e| LxdError::Protocol(format!("building request: {e}")))?;
                let result = async {
                    let resp = sender
                        .send_request(request)
                        .await
                        .map_err(|e| LxdError::Transport(format!("request failed: {e}")))?;
                    let status = resp.status().as_u16();
                    let body = Limited::new(resp.into_body(), MAX_BODY)
                        .collect()
                        .await
                        .map_err(|e| LxdError::Transport(format!("reading response: {e}")))?
                        .to_bytes();
                    Ok((status, body))
                }
                .await;
                conn.abort();
                result
            }
            Transport::Https { client, base } => {
                let url = format!("{base}{}", req.path);
                let mut b = client.request(req.method, &url).timeout(req.timeout);
                for (k, v) in &req.headers {
                    b = b.header(*k, v.as_str());
                }
                if let Some((bytes, ctype)) = req.body {
                    b = b.header(reqwest::header::CONTENT_TYPE, ctype).body(bytes);
                }
                let resp = b.send().await.map_err(|e| {
                    LxdError::Transport(format!("{}: {}", strip_query(req.path), error_chain(&e)))
                })?;
                let status = resp.status().as_u16();
                if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
                    return Err(LxdError::Protocol("response too large".into()));
                }
                let body = resp.bytes().await.map_err(|e| {
                    LxdError::Transport(format!("reading response: {}", error_chain(&e)))
                })?;
                if body.len() > MAX_BODY {
                    return Err(LxdError::Protocol("response too large".into()));
                }
                Ok((status, body))
            }
        }
    }
}

pub(super) fn strip_query(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// An error with its causes, for TLS failures whose top level says only "error sending request".
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Build the HTTPS client for a remote LXD: client certificate, server certificate pinned or
/// checked against a CA, ring as the crypto provider.
pub(super) fn https_client(cfg: &LxdConfig) -> Result<reqwest::Client, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    // The process may already have a provider (the lead binary installs one); that is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));

    let need = |p: &Option<PathBuf>, key: &str| {
        p.clone()
            .ok_or_else(|| format!("backend.lxd.{key}: required for a remote LXD"))
    };
    let cert_path = need(&cfg.client_cert, "client_cert")?;
    let key_path = need(&cfg.client_key, "client_key")?;
    let server_path = need(&cfg.server_cert, "server_cert")?;

    let read_certs = |p: &PathBuf, key: &str| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_file_iter(p)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                format!(
                    "backend.lxd.{key}: cannot read PEM certificates from {}: {e}",
                    p.display()
                )
            })?;
        if certs.is_empty() {
            return Err(format!(
                "backend.lxd.{key}: no certificate in {}",
                p.display()
            ));
        }
        Ok(certs)
    };
    let client_certs = read_certs(&cert_path, "client_cert")?;
    let server_certs = read_certs(&server_path, "server_cert")?;
    // The key's content never goes into a message, only the path.
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|_| {
        format!(
            "backend.lxd.client_key: cannot read a PEM private key from {}",
            key_path.display()
        )
    })?;

    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = if cfg.server_cert_is_ca {
        let mut roots = rustls::RootCertStore::empty();
        for c in server_certs {
            roots.add(c).map_err(|e| {
                format!("backend.lxd.server_cert: not a usable CA certificate: {e}")
            })?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls_pin::PinnedServer::new(
                crate::tls_pin::Pin::Certificates(server_certs),
                "LXD server certificate does not match the pinned server_cert",
                provider,
            )))
    };
    let mut tls = builder
        .with_client_auth_cert(client_certs, key)
        .map_err(|e| format!("backend.lxd.client_key: does not fit client_cert: {e}"))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| format!("HTTPS client: {}", error_chain(&e)))
}

// ---------------------------------------------------------------------------------------------
// LXD's REST envelope and operations
// ---------------------------------------------------------------------------------------------

/// Every LXD answer: `{type: sync|async|error, error_code, error, operation, metadata}`.
#[derive(Debug, Deserialize)]
pub(super) struct Envelope {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    error_code: u16,
    #[serde(default)]
    error: String,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    metadata: Value,
}

/// What a successful call returned: a result now, or an operation to wait for.
#[derive(Debug)]
pub(super) enum Answer {
    Sync(Value),
    Async(String),
}

pub(super) fn parse_envelope(status: u16, body: &[u8]) -> Result<Answer, LxdError> {
    let env: Envelope = serde_json::from_slice(body).map_err(|_| {
        let code = if status >= 400 { status } else { 502 };
        LxdError::Lxd {
            code,
            message: format!("unexpected answer (HTTP {status}, not LXD JSON)"),
        }
    })?;
    if env.kind == "error" || status >= 400 {
        let code = if env.error_code != 0 {
            env.error_code
        } else {
            status.max(400)
        };
        let message = if env.error.is_empty() {
            format!("HTTP {status}")
        } else {
            env.error
        };
        return Err(LxdError::Lxd { code, message });
    }
    match env.kind.as_str() {
        "async" => {
            if !is_valid_operation_path(&env.operation) {
                return Err(LxdError::Protocol(format!(
                    "bad operation path {:?}",
                    env.operation
                )));
            }
            Ok(Answer::Async(env.operation))
        }
        _ => Ok(Answer::Sync(env.metadata)),
    }
}

/// `/1.0/operations/<uuid>`: anything else is not used to build a URL.
pub(super) fn is_valid_operation_path(p: &str) -> bool {
    match p.strip_prefix("/1.0/operations/") {
        Some(id) => {
            !id.is_empty()
                && id.len() <= 64
                && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        }
        None => false,
    }
}

/// Check a finished operation (the metadata of `GET /1.0/operations/{id}/wait`).
pub(super) fn operation_result(op: &Value) -> Result<Value, LxdError> {
    let status = op.get("status").and_then(Value::as_str).unwrap_or("");
    let code = op.get("status_code").and_then(Value::as_u64).unwrap_or(0);
    match status {
        "Success" => Ok(op.get("metadata").cloned().unwrap_or(Value::Null)),
        "Failure" | "Cancelled" => {
            let err = op.get("err").and_then(Value::as_str).unwrap_or("");
            let message = if err.is_empty() {
                format!("operation {}", status.to_lowercase())
            } else {
                err.to_string()
            };
            Err(LxdError::Lxd {
                code: u16::try_from(code).unwrap_or(400).max(400),
                message,
            })
        }
        other => Err(LxdError::Transport(format!(
            "operation still {:?} when the wait ended",
            other
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// The calls
// ---------------------------------------------------------------------------------------------

impl LxdBackend {
    pub(super) fn timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.request_timeout_seconds)
    }

    pub(super) fn ready_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.ready_timeout_seconds)
    }

    /// Add the project to a path, when it is not the default one.
    pub(super) fn path(&self, path: &str) -> String {
        if self.cfg.project == "default" {
            path.to_string()
        } else {
            let sep = if path.contains('?') { '&' } else { '?' };
            format!("{path}{sep}project={}", self.cfg.project)
        }
    }

    pub(super) async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, LxdError> {
        let path = self.path(path);
        let body = match body {
            Some(v) => Some((
                serde_json::to_vec(v)
                    .map_err(|e| LxdError::Protocol(format!("encoding request: {e}")))?,
                "application/json",
            )),
            None => None,
        };
        let (status, bytes) = self
            .transport
            .send(Request {
                method,
                path: &path,
                headers: Vec::new(),
                body,
                timeout: self.timeout(),
            })
            .await?;
        parse_envelope(status, &bytes)
    }

    pub(super) async fn get(&self, path: &str) -> Result<Value, LxdError> {
        match self.call(hyper::Method::GET, path, None).await? {
            Answer::Sync(v) => Ok(v),
            Answer::Async(_) => Err(LxdError::Protocol(format!(
                "GET {path} answered with an operation"
            ))),
        }
    }

    /// Wait for an operation to end, at most `limit`; its metadata on success.
    pub(super) async fn wait_operation(
        &self,
        op: &str,
        limit: Duration,
    ) -> Result<Value, LxdError> {
        let secs = limit.as_secs().max(1);
        // Operation paths come from LXD and were checked by `parse_envelope`; no project suffix.
        let path = format!("{op}/wait?timeout={secs}");
        let (status, bytes) = self
            .transport
            .send(Request {
                method: hyper::Method::GET,
                path: &path,
                headers: Vec::new(),
                body: None,
                timeout: Duration::from_secs(secs) + self.timeout(),
            })
            .await?;
        match parse_envelope(status, &bytes)? {
            Answer::Sync(op) => operation_result(&op),
            Answer::Async(_) => Err(LxdError::Protocol(
                "operation wait answered with an operation".into(),
            )),
        }
    }

    /// Make a call and, if LXD answers with an operation, wait for it.
    pub(super) async fn call_wait(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&Value>,
        limit: Duration,
    ) -> Result<Value, LxdError> {
        match self.call(method, path, body).await? {
            Answer::Sync(v) => Ok(v),
            Answer::Async(op) => self.wait_operation(&op, limit).await,
        }
    }

    /// The instance object, or `None` when it does not exist.
    pub(super) async fn instance(&self, name: &str) -> Result<Option<Value>, LxdError> {
        match self.get(&format!("/1.0/instances/{name}")).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ask LXD to change the power state; the operation path, or `None` when there was nothing
    /// to do (already in that state).
    pub(super) async fn state_change(
        &self,
        name: &str,
        body: Value,
    ) -> Result<Option<String>, LxdError> {
        match self
            .call(
                hyper::Method::PUT,
                &format!("/1.0/instances/{name}/state"),
                Some(&body),
            )
            .await
        {
            Ok(Answer::Async(op)) => Ok(Some(op)),
            Ok(Answer::Sync(_)) => Ok(None),
            Err(e) if is_already(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Change the power state and wait for it; "already in that state" is success.
    pub(super) async fn change_state(
        &self,
        name: &str,
        body: Value,
        limit: Duration,
    ) -> Result<(), LxdError> {
        let Some(op) = self.state_change(name, body).await? else {
            return Ok(());
        };
        match self.wait_operation(&op, limit).await {
            Ok(_) => Ok(()),
            Err(e) if is_already(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Run `body` (an exec request) once the container runs; its exit code.
    pub(super) async fn exec_when_running(
        &self,
        name: &str,
        body: &Value,
        deadline: Instant,
    ) -> Result<i64, LxdError> {
        let path = format!("/1.0/instances/{name}/exec");
        loop {
            match self.call(hyper::Method::POST, &path, Some(body)).await {
                Ok(Answer::Async(op)) => {
                    let meta = self.wait_operation(&op, self.timeout()).await?;
                    return meta.get("return").and_then(Value::as_i64).ok_or_else(|| {
                        LxdError::Protocol("exec finished without an exit code".into())
                    });
                }
                Ok(Answer::Sync(_)) => {
                    return Err(LxdError::Protocol(
                        "exec answered without an operation".into(),
                    ))
                }
                Err(e) if e.contains("not running") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The fingerprints of the container's SSH host keys, read through the file API (the base
    /// image makes them on first boot; create returns after sshd answers, so they exist).
    /// The three are read at once (each is a round trip to LXD's file server in the instance).
    pub(super) async fn read_host_keys(&self, name: &str) -> Vec<String> {
        let read = |t: &'static str| async move {
            let full = self.path(&format!(
                "/1.0/instances/{name}/files?path=/etc/ssh/ssh_host_{t}_key.pub"
            ));
            let r = self
                .transport
                .send(Request {
                    method: hyper::Method::GET,
                    path: &full,
                    headers: Vec::new(),
                    body: None,
                    timeout: self.timeout(),
                })
                .await;
            let Ok((200, bytes)) = r else { return None };
            let text = String::from_utf8_lossy(&bytes);
            russh::keys::PublicKey::from_openssh(text.trim())
                .ok()
                .map(|k| k.fingerprint(russh::keys::HashAlg::Sha256).to_string())
        };
        let (a, b, c) = tokio::join!(read("ed25519"), read("ecdsa"), read("rsa"));
        [a, b, c].into_iter().flatten().collect()
    }

    /// Write a file into the instance through the file API (no shell involved).
    pub(super) async fn push_file(
        &self,
        name: &str,
        path: &str,
        content: &[u8],
        mode: &str,
    ) -> Result<(), LxdError> {
        let full = self.path(&format!("/1.0/instances/{name}/files?path={path}"));
        let (status, bytes) = self
            .transport
            .send(Request {
                method: hyper::Method::POST,
                path: &full,
                headers: vec![
                    ("X-LXD-uid", "0".into()),
                    ("X-LXD-gid", "0".into()),
                    ("X-LXD-mode", mode.into()),
                    ("X-LXD-type", "file".into()),
                    ("X-LXD-write", "overwrite".into()),
                ],
                body: Some((content.to_vec(), "application/octet-stream")),
                timeout: self.timeout(),
            })
            .await?;
        match parse_envelope(status, &bytes)? {
            Answer::Sync(_) => Ok(()),
            Answer::Async(op) => self.wait_operation(&op, self.timeout()).await.map(|_| ()),
        }
    }

    /// Force-stop and delete; missing is fine. Retries while LXD is busy with another state
    /// change (e.g. the start operation create does not wait for).
    pub(super) async fn remove(&self, name: &str) -> Result<(), LxdError> {
        let deadline = Instant::now() + self.timeout() + Duration::from_secs(15);
        let path = format!("/1.0/instances/{name}");
        loop {
            let attempt = async {
                self.change_state(
                    name,
                    json!({"action": "stop", "force": true}),
                    self.timeout(),
                )
                .await?;
                self.call_wait(hyper::Method::DELETE, &path, None, self.timeout())
                    .await
                    .map(|_| ())
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) if Instant::now() < deadline && (e.is_busy() || e.contains("running")) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
