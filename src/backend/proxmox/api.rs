//! The Proxmox VE REST client: API-token auth, pinned TLS, PVE's error shapes and its tasks.
//!
//! Why a module of its own: everything here is about speaking PVE's wire faithfully, not about
//! workloads. PVE is strict in ways its test doubles are not, so the client sends only what PVE
//! accepts: form-urlencoded bodies whose booleans are `1`/`0` (callers build them with [`Form`]),
//! no parameter PVE does not define, and the token in PVE's own header. It reads leniently:
//! numbers that come as strings, a `message` field that older servers (before
//! libpve-http-server 5.2.0) leave out, so the error text falls back to the status line's reason
//! phrase, which PVE fills with the first line of the message.
//!
//! TLS: PVE hosts serve a certificate signed by the cluster's own CA. Proxmox's own clients pin
//! the SHA-256 fingerprint of the leaf certificate, so does this one (`fingerprint`), or it
//! verifies the chain and host name against a CA file (`ca_file`). There is no "accept
//! anything".
//!
//! Every mutation PVE runs as a task and answers with its UPID at once; [`Api::wait_task`] polls
//! the task's status with backoff until it has stopped and maps its `exitstatus`: `OK` and
//! `WARNINGS: N` are success, anything else is the error text.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::secret::Secret;

/// Characters left as they are in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What JavaScript's `encodeURIComponent` keeps, which is what PVE's `sshkeys` decoding expects
/// (a space is `%20`, never `+`).
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// Percent-encode a value the way PVE's cloud-init `sshkeys` expects it.
pub fn uri_component(text: &str) -> String {
    utf8_percent_encode(text, URI_COMPONENT).to_string()
}

/// A PVE API failure, already phrased for an operator. Never carries the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// 401: PVE refused the token (its body is empty on real servers).
    #[error("Proxmox refused the API token (401 {0}); check backend.proxmox.token_id and token_secret_file")]
    Unauthorized(String),
    /// 403: the token lacks a privilege; PVE names which (`/vms/100, VM.Allocate`).
    #[error("the Proxmox API token lacks a privilege: {0}")]
    Forbidden(String),
    /// Any other HTTP error: status and PVE's message.
    #[error("Proxmox answered {status}: {message}")]
    Status { status: u16, message: String },
    /// The server could not be reached, or TLS failed.
    #[error("cannot reach Proxmox: {0}")]
    Transport(String),
    /// A task stopped with an error exit status.
    #[error("Proxmox task failed: {0}")]
    TaskFailed(String),
    /// A task did not stop in time.
    #[error("Proxmox task {0} did not finish in time")]
    TaskTimeout(String),
    /// The answer was not what PVE sends.
    #[error("unexpected answer from Proxmox: {0}")]
    Protocol(String),
}

impl ApiError {
    /// The message PVE gave (for matching its wording), or the whole text.
    pub fn message(&self) -> String {
        match self {
            ApiError::Status { message, .. } => message.clone(),
            ApiError::TaskFailed(m) => m.clone(),
            other => other.to_string(),
        }
    }
}

/// A form body as PVE takes it. Values go through as given; booleans only as `1`/`0`.
#[derive(Default, Clone)]
pub struct Form(Vec<(String, String)>);

/// Keys only: a form carries passwords (`password`, `cipassword`).
impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Form {
    pub fn new() -> Form {
        Form::default()
    }
    pub fn set(mut self, key: &str, value: impl ToString) -> Form {
        self.0.push((key.to_string(), value.to_string()));
        self
    }
    pub fn flag(self, key: &str, on: bool) -> Form {
        self.set(key, if on { "1" } else { "0" })
    }
    pub fn encode(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.0 {
            s.append_pair(k, v);
        }
        s.finish()
    }
}

/// Encode one path segment (a UPID holds `:`, `@` and `!`).
pub fn segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// How the server certificate is trusted.
#[derive(Debug, Clone)]
pub enum Trust {
    /// SHA-256 of the leaf certificate (32 bytes).
    Fingerprint([u8; 32]),
    /// PEM CA certificate(s); chain and host name are verified.
    CaFile(std::path::PathBuf),
}

/// Parse `AB:CD:…` (or plain hex) into 32 bytes.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let hex_only: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(hex_only.trim())
        .map_err(|_| "fingerprint: not hex like AB:CD:…".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "fingerprint: must be the 32-byte SHA-256 of the certificate".to_string())
}

/// The PVE REST client for one node.
pub struct Api {
    client: reqwest::Client,
    base: String,
    auth: Secret,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish()
    }
}

impl Api {
    /// A client for `url` (`https://host:8006`) with the token `token_id` / `secret`.
    pub fn new(url: &str, token_id: &str, secret: &Secret, trust: &Trust) -> Result<Api, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("url: {e}"))?;
        if parsed.scheme() != "https" || parsed.host_str().is_none() {
            return Err("url: must be https://HOST:PORT".into());
        }
        let base = format!("{}/api2/json", url.trim_end_matches('/'));
        Ok(Api {
            client: https_client(trust)?,
            base,
            auth: Secret::new(format!("PVEAPIToken={}={}", token_id, secret.expose())),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, form: &Form) -> Result<Value, ApiError> {
        self.call(reqwest::Method::POST, path, Some(form)).await
    }
    pub async fn put(&self, path: &str, form: &Form) -> Result<Value, ApiError> {
        self.call(reqwest::Method::PUT, path, Some(form)).await
    }
    pub async fn delete(&self, path_and_query: &str) -> Result<Value, ApiError> {
        self.call(reqwest::Method::DELETE, path_and_query, None)
            .await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        form: Option<&Form>,
    ) -> Result<Value, ApiError> {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .header(reqwest::header::AUTHORIZATION, self.auth.expose())
            .timeout(Duration::from_secs(60));
        if let Some(f) = form {
            req = req
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(f.encode());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ApiError::Transport(error_chain(&e)))?;
        let status = resp.status();
        // PVE puts the first line of its message in the status line; hyper keeps a reason
        // phrase that is not the standard one.
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
            .or_else(|| status.canonical_reason().map(str::to_string))
            .unwrap_or_default();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ApiError::Transport(error_chain(&e)))?;
        if status.is_success() {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Ok(body.get("data").cloned().unwrap_or(Value::Null));
        }
        Err(error_from(status.as_u16(), &reason, &bytes))
    }

    /// Poll the task `upid` on `node` until it stops (backoff 100 ms → 2 s) or `timeout`.
    pub async fn wait_task(
        &self,
        node: &str,
        upid: &str,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let path = format!("/nodes/{}/tasks/{}/status", segment(node), segment(upid));
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(100);
        loop {
            let st = self.get(&path).await?;
            if st.get("status").and_then(Value::as_str) == Some("stopped") {
                return exit_status(st.get("exitstatus").and_then(Value::as_str).unwrap_or(""));
            }
            if Instant::now() + delay > deadline {
                return Err(ApiError::TaskTimeout(upid.to_string()));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// The error for a failed answer: its status, the reason phrase of its status line (PVE puts the
/// first line of the message there) and its body, which may be empty (401), lack `message`
/// (servers before libpve-http-server 5.2.0) or carry per-parameter `errors` (400).
pub fn error_from(status: u16, reason: &str, body: &[u8]) -> ApiError {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut message = body
        .get("message")
        .and_then(Value::as_str)
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| reason.trim().to_string());
    if let Some(errs) = body.get("errors").and_then(Value::as_object) {
        let detail: Vec<String> = errs
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("").trim()))
            .collect();
        if !detail.is_empty() {
            message = format!("{message} ({})", detail.join("; "));
        }
    }
    match status {
        401 => ApiError::Unauthorized(reason.trim().to_string()),
        403 => ApiError::Forbidden(message),
        code => ApiError::Status {
            status: code,
            message,
        },
    }
}

/// A stopped task's `exitstatus`: `OK` and `WARNINGS: N` are success, anything else the error.
pub fn exit_status(exit: &str) -> Result<(), ApiError> {
    if exit == "OK" || exit.starts_with("WARNINGS") {
        Ok(())
    } else if exit.trim().is_empty() {
        Err(ApiError::TaskFailed(
            "task stopped without an exit status".into(),
        ))
    } else {
        Err(ApiError::TaskFailed(exit.to_string()))
    }
}

/// A UPID from a mutation's answer.
pub fn upid(v: &Value) -> Result<String, ApiError> {
    v.as_str()
        .filter(|s| s.starts_with("UPID:"))
        .map(str::to_string)
        .ok_or_else(|| ApiError::Protocol(format!("expected a task id, got {v}")))
}

/// A number PVE may send as a number or a string.
pub fn lenient_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.trim().parse().ok())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn https_client(trust: &Trust) -> Result<reqwest::Client, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match trust {
        Trust::CaFile(path) => {
            let certs = read_pem(path)?;
            let mut roots = rustls::RootCertStore::empty();
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("ca_file: not a usable CA certificate: {e}"))?;
            }
            builder.with_root_certificates(roots)
        }
        Trust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls_pin::PinnedServer::new(
                crate::tls_pin::Pin::Sha256(*fp),
                "the Proxmox certificate does not match backend.proxmox.fingerprint (a renewed certificate, e.g. ACME, needs the new fingerprint: rerun bootstrap)",
                provider,
            ))),
    };
    let mut tls = builder.with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    return reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| format!("HTTPS client: {}", error_chain(&e)));

    fn read_pem(p: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_file_iter(p)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("ca_file: cannot read PEM from {}: {e}", p.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file: no certificate in {}", p.display()));
        }
        Ok(certs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_encode_as_pve_reads_them() {
        let f = Form::new()
            .set("ssh-public-keys", "ssh-ed25519 AAAA x@y")
            .flag("unprivileged", true)
            .flag("start", false)
            .set("net0", "name=eth0,bridge=vmbr0,ip=10.0.0.5/24");
        assert_eq!(
            f.encode(),
            "ssh-public-keys=ssh-ed25519+AAAA+x%40y&unprivileged=1&start=0&net0=name%3Deth0%2Cbridge%3Dvmbr0%2Cip%3D10.0.0.5%2F24"
        );
        assert_eq!(
            uri_component("ssh-ed25519 AA+/= c@d"),
            "ssh-ed25519%20AA%2B%2F%3D%20c%40d"
        );
        assert_eq!(
            segment("UPID:pve:000003E8:x:root@pam!t:"),
            "UPID%3Apve%3A000003E8%3Ax%3Aroot%40pam%21t%3A"
        );
    }

    #[test]
    fn errors_read_every_shape_pve_answers_with() {
        // 401: empty body, the reason in the status line.
        let e = error_from(401, "Authentication failed!", b"");
        assert!(matches!(e, ApiError::Unauthorized(_)), "{e}");
        assert!(e.to_string().contains("token_secret_file"), "{e}");
        // 403 names the permission.
        let e = error_from(
            403,
            "Permission check failed (/vms/100, VM.Allocate)",
            br#"{"data":null,"message":"Permission check failed (/vms/100, VM.Allocate)\n"}"#,
        );
        assert!(e.to_string().contains("VM.Allocate"), "{e}");
        // A 500 from an older server: no `message`, only the reason phrase.
        let e = error_from(
            500,
            "CT 100 already exists on node 'pve'",
            br#"{"data":null}"#,
        );
        assert_eq!(e.message(), "CT 100 already exists on node 'pve'");
        // 400 with per-parameter errors.
        let e = error_from(
            400,
            "Parameter verification failed.",
            br#"{"data":null,"message":"Parameter verification failed.\n","errors":{"ssh_public_keys":"property is not defined in schema"}}"#,
        );
        assert!(
            e.message()
                .contains("ssh_public_keys: property is not defined"),
            "{e}"
        );
    }

    #[test]
    fn task_exit_statuses_map_to_success_or_the_error_text() {
        assert!(exit_status("OK").is_ok());
        assert!(exit_status("WARNINGS: 2").is_ok());
        let e = exit_status("unable to create CT 100 - volume 'local:vztmpl/x' does not exist");
        assert!(e.unwrap_err().message().contains("does not exist"));
        assert!(exit_status("").is_err());
    }

    #[test]
    fn fingerprints_parse_in_proxmox_notation() {
        let fp = "99:D9:67:AA:6F:9E:AA:83:C3:38:01:ED:CF:75:6B:46:A5:D0:40:49:FA:E9:99:41:8B:B9:89:8B:68:8F:7A:14";
        assert_eq!(parse_fingerprint(fp).unwrap()[0], 0x99);
        assert!(parse_fingerprint("99:D9").is_err());
        assert!(parse_fingerprint("zz").is_err());
    }
}
