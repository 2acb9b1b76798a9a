//! SSH readiness: reading the SSH banner on the host port.
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
