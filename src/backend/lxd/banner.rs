//! SSH readiness and identity on the host port: the banner, and the host keys sshd presents.
//!
//! The proxy accepts TCP connections before sshd inside is up, so a bare connect is no proof of
//! readiness; a line starting `SSH-` is. The banner carries the instance's nonce (see the module
//! docs of `lxd.rs`) when it comes from this very container through its own proxy device.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::backend::BackendError;

/// What the SSH banner on the host port said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Banner {
    /// `SSH-…` with this instance's nonce: our container, through our proxy.
    Ours,
    /// `SSH-…` without the nonce: an image without the banner template, or another listener.
    Anonymous,
}

/// Read the first line starting with `SSH-` from `host:port`; `None` if the connection closed or
/// stalled first (the proxy accepts and drops connections until sshd inside listens).
pub(super) async fn read_banner(host: &str, port: u16) -> Option<String> {
    let addr = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::lookup_host((host, port)),
    )
    .await
    .ok()?
    .ok()?
    .next()?;
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
    let mut buf = Vec::with_capacity(256);
    let read = async {
        let mut chunk = [0u8; 256];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            // RFC 4253: the server may send other lines before the version line.
            if let Some(end) = buf.iter().rposition(|b| *b == b'\n') {
                if let Some(line) = buf[..end]
                    .split(|b| *b == b'\n')
                    .find(|l| l.starts_with(b"SSH-"))
                {
                    return Some(String::from_utf8_lossy(line).trim_end().to_string());
                }
            }
            if buf.len() > 8192 {
                return None;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .ok()?
}

/// Poll until an SSH banner is read on `host:port`, or `deadline`.
pub(super) async fn wait_for_ssh(
    host: &str,
    port: u16,
    nonce: Option<&str>,
    deadline: Instant,
) -> Result<Banner, BackendError> {
    loop {
        if let Some(line) = read_banner(host, port).await {
            let ours = nonce.is_some_and(|n| line.split_whitespace().any(|w| w == n));
            return Ok(if ours {
                Banner::Ours
            } else {
                Banner::Anonymous
            });
        }
        if Instant::now() >= deadline {
            return Err(BackendError::NotReady(format!(
                "no SSH banner on {host}:{port} in time"
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Records the host key the server presented, then ends the connection.
struct KeyCapture(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl russh::client::Handler for KeyCapture {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKey,
    ) -> Result<bool, Self::Error> {
        if let Ok(mut seen) = self.0.lock() {
            *seen = Some(key.fingerprint(russh::keys::HashAlg::Sha256).to_string());
        }
        Ok(false)
    }
}

/// What one key exchange said about a host key type.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    /// The server presented this key (its SHA-256 fingerprint).
    Key(String),
    /// The server has no key of that type: no common host-key algorithm.
    Absent,
    /// Anything else (a timeout, a dropped connection): nothing is known.
    Unknown,
}

/// Ask `host:port` for its `alg` host key.
async fn presented_key(host: &str, port: u16, alg: russh::keys::Algorithm) -> Probe {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let config = std::sync::Arc::new(russh::client::Config {
        preferred: russh::Preferred {
            key: std::borrow::Cow::Owned(vec![alg]),
            ..russh::Preferred::DEFAULT
        },
        nodelay: true,
        ..Default::default()
    });
    let handler = KeyCapture(seen.clone());
    // Ends at the host key check (refused on purpose) or when the server has no key of `alg`.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        russh::client::connect(config, (host, port), handler),
    )
    .await;
    if let Some(fp) = seen.lock().ok().and_then(|s| s.clone()) {
        return Probe::Key(fp);
    }
    match r {
        Ok(Err(russh::Error::NoCommonAlgo { .. })) => Probe::Absent,
        _ => Probe::Unknown,
    }
}

/// The SHA-256 fingerprints of the SSH host keys `host:port` presents: one key exchange per key
/// type (Ed25519, ECDSA P-256, RSA), all at once, each ended at the host key check, before any
/// authentication. Called once the banner proved the port leads to the instance's own sshd.
/// `None` unless every type was either presented or refused as absent: a probe that timed out
/// or was dropped (sshd's `MaxStartups`, say) would leave a key out that buyers then cannot
/// pin, so the caller reads the key files instead.
///
/// Why not read `/etc/ssh/ssh_host_*_key.pub` through LXD's file API first: right after a cold
/// start those reads took ~0.55 s (LXD answers them only once the proxy device's fixed
/// one-second poll is over), while three key exchanges take a few milliseconds. It is also
/// exactly what buyers' clients will see on that port.
pub(super) async fn presented_host_keys(host: &str, port: u16) -> Option<Vec<String>> {
    use russh::keys::{Algorithm, EcdsaCurve, HashAlg};
    let (a, b, c) = tokio::join!(
        presented_key(host, port, Algorithm::Ed25519),
        presented_key(
            host,
            port,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256
            }
        ),
        presented_key(
            host,
            port,
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512)
            }
        ),
    );
    complete_key_set([a, b, c])
}

/// The fingerprints, if every probe gave a definite answer and at least one key was seen.
fn complete_key_set(probes: [Probe; 3]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for p in probes {
        match p {
            Probe::Key(fp) => out.push(fp),
            Probe::Absent => {}
            Probe::Unknown => return None,
        }
    }
    out.dedup();
    Some(out).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe that said nothing (a timeout, a dropped connection) makes the set unknown, so
    /// the caller reads the key files rather than report a set missing a key sshd serves.
    #[test]
    fn only_a_complete_probe_set_counts() {
        let k = |s: &str| Probe::Key(s.into());
        assert_eq!(
            complete_key_set([k("SHA256:a"), k("SHA256:b"), Probe::Absent]),
            Some(vec!["SHA256:a".to_string(), "SHA256:b".to_string()])
        );
        assert_eq!(
            complete_key_set([k("SHA256:a"), Probe::Unknown, Probe::Absent]),
            None
        );
        assert_eq!(
            complete_key_set([Probe::Absent, Probe::Absent, Probe::Absent]),
            None
        );
    }
}
