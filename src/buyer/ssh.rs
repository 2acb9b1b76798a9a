//! The buyer's SSH: one kept key for the agent, pinned host keys, and `run_command`.
//!
//! The agent never types a password and never sees a private key: `paygress-cli mcp` generates
//! one Ed25519 key (`~/.paygress/ssh/id_ed25519`, 0600) the first time, authorises its public
//! half on every pod it buys, and logs in with it through russh's client.
//!
//! Host keys are never accepted blindly (no `StrictHostKeyChecking=no`): each pod's
//! fingerprints are pinned in `~/.paygress/pods.json` — those the provider's spawn answer
//! carries (`ssh_host_key_fingerprints`) when it does, otherwise the key the pod presents on the
//! first connection, made right after the purchase — and a later connection whose key is not a
//! pinned one is refused before any authentication or command.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::ChannelMsg;

use crate::fsutil::write_private;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("cannot connect to {0}")]
    Connect(String),
    #[error("the pod's SSH host key changed: it presented {seen}, pinned {pinned:?}; refusing to connect (the pod may have been replaced or the connection intercepted)")]
    HostKeyMismatch { seen: String, pinned: Vec<String> },
    #[error("the pod refused the agent's key for user {0}")]
    AuthRefused(String),
    #[error("ssh: {0}")]
    Protocol(String),
    #[error("the command did not finish within {0} s")]
    Timeout(u64),
}

/// The agent's key pair, created once.
pub fn load_or_create_key(path: &Path) -> Result<PrivateKey, SshError> {
    let io = |err| SshError::Io {
        path: path.display().to_string(),
        err,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => PrivateKey::from_openssh(text.trim())
            .map_err(|e| io(std::io::Error::other(format!("not an OpenSSH key: {e}")))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                super::private_dir(dir).map_err(io)?;
            }
            let key = PrivateKey::random(&mut rand::rngs::OsRng, russh::keys::Algorithm::Ed25519)
                .map_err(|e| io(std::io::Error::other(e.to_string())))?;
            let text = key
                .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .map_err(|e| io(std::io::Error::other(e.to_string())))?;
            write_private(path, text.as_bytes()).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// `~/.paygress/ssh/id_ed25519`.
pub fn default_key_path() -> Option<PathBuf> {
    super::home_dir().map(|h| h.join("ssh").join("id_ed25519"))
}

/// The OpenSSH public line of `key` (what `ssh_public_key` authorises).
pub fn public_line(key: &PrivateKey) -> String {
    key.public_key().to_openssh().unwrap_or_default()
}

/// SHA-256 fingerprint, as OpenSSH prints it (`SHA256:…`).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

struct Verifier {
    pinned: Vec<String>,
    seen: Arc<Mutex<Option<String>>>,
}

impl russh::client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        let fp = fingerprint(key);
        let ok = self.pinned.is_empty() || self.pinned.contains(&fp);
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(fp);
        }
        Ok(ok)
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    pub stdout: String,
    pub stderr: String,
    /// `None` when the server reported no exit status (killed by a signal).
    pub exit_code: Option<u32>,
    /// The host key the pod presented.
    pub host_key: String,
}

/// Most bytes kept of each output stream.
pub const MAX_OUTPUT: usize = 256 * 1024;

/// The client's settings. `nodelay`: russh leaves Nagle's algorithm on by default, and an SSH
/// login is a handful of small writes in a row (NEWKEYS then the service request; the channel
/// open, then `env` and `exec`). With Nagle each second write waits for the peer's delayed ACK,
/// ~40 ms on Linux, twice per login: measured with sshd's own debug timestamps in a pool member,
/// a login spent ~80 of its ~150 ms waiting on exactly those two ACKs (`benches/lxd_spawn.rs`
/// prints the login with this client beside OpenSSH's).
fn client_config(timeout: Duration) -> russh::client::Config {
    russh::client::Config {
        inactivity_timeout: Some(timeout + Duration::from_secs(5)),
        nodelay: true,
        ..Default::default()
    }
}

/// Connect to `host:port`, verify the host key against `pinned` (empty: learn it — only right
/// after a purchase), log in as `user` with `key`, run `command`.
pub async fn run(
    host: &str,
    port: u16,
    user: &str,
    key: &PrivateKey,
    pinned: &[String],
    command: &str,
    timeout: Duration,
) -> Result<CommandOutput, SshError> {
    run_with_input(host, port, user, key, pinned, command, None, timeout).await
}

/// [`run`], with `input` on the command's standard input (data reaches a command this way,
/// never inside its command line).
#[allow(clippy::too_many_arguments)]
pub async fn run_with_input(
    host: &str,
    port: u16,
    user: &str,
    key: &PrivateKey,
    pinned: &[String],
    command: &str,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<CommandOutput, SshError> {
    let seen = Arc::new(Mutex::new(None));
    let verifier = Verifier {
        pinned: pinned.to_vec(),
        seen: seen.clone(),
    };
    let config = Arc::new(client_config(timeout));
    let seen_key = || seen.lock().ok().and_then(|s| s.clone()).unwrap_or_default();
    let connect = tokio::time::timeout(
        Duration::from_secs(15),
        russh::client::connect(config, (host, port), verifier),
    )
    .await
    .map_err(|_| SshError::Connect(format!("{host}:{port} (timed out)")))?;
    let session = match connect {
        Ok(s) => s,
        Err(russh::Error::UnknownKey) => {
            return Err(SshError::HostKeyMismatch {
                seen: seen_key(),
                pinned: pinned.to_vec(),
            })
        }
        Err(e) => return Err(SshError::Connect(format!("{host}:{port}: {e}"))),
    };
    let mut session = session;
    let hash = session
        .best_supported_rsa_hash()
        .await
        .map_err(|e| SshError::Protocol(e.to_string()))?
        .flatten();
    let auth = session
        .authenticate_publickey(
            user,
            PrivateKeyWithHashAlg::new(Arc::new(key.clone()), hash),
        )
        .await
        .map_err(|e| SshError::Protocol(e.to_string()))?;
    if !matches!(auth, russh::client::AuthResult::Success) {
        return Err(SshError::AuthRefused(user.chars().take(64).collect()));
    }
    let mut channel = session
        .channel_open_session()
        .await
        .map_err(|e| SshError::Protocol(e.to_string()))?;
    channel
        .exec(true, command.as_bytes())
        .await
        .map_err(|e| SshError::Protocol(e.to_string()))?;
    if let Some(data) = input {
        channel
            .data(data)
            .await
            .map_err(|e| SshError::Protocol(e.to_string()))?;
    }
    channel
        .eof()
        .await
        .map_err(|e| SshError::Protocol(e.to_string()))?;
    let mut out = CommandOutput {
        host_key: seen_key(),
        ..Default::default()
    };
    let (mut so, mut se) = (Vec::new(), Vec::new());
    let collect = async {
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => keep(&mut so, &data),
                ChannelMsg::ExtendedData { data, ext: 1 } => keep(&mut se, &data),
                ChannelMsg::ExitStatus { exit_status } => out.exit_code = Some(exit_status),
                _ => {}
            }
        }
    };
    let finished = tokio::time::timeout(timeout, collect).await.is_ok();
    let _ = session
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    if !finished {
        return Err(SshError::Timeout(timeout.as_secs()));
    }
    out.stdout = String::from_utf8_lossy(&so).into_owned();
    out.stderr = String::from_utf8_lossy(&se).into_owned();
    Ok(out)
}

fn keep(buf: &mut Vec<u8>, data: &[u8]) {
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small writes go out at once: no login waits for a delayed ACK.
    #[test]
    fn the_client_sends_without_nagle() {
        let c = client_config(Duration::from_secs(10));
        assert!(c.nodelay);
        assert_eq!(c.inactivity_timeout, Some(Duration::from_secs(15)));
    }
}
