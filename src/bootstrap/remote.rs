//! The operator's SSH to a provider host: one russh session, host key checked, commands as root.
//!
//! Why it looks like this:
//! - A host key is never accepted blindly: it is pinned (`--host-key SHA256:…`), or found in a
//!   known_hosts file, or — on first contact only — shown and accepted by the operator (a tty
//!   question, or `--yes`), then learnt into that file. A changed key is refused, and a key a
//!   known_hosts file lists `@revoked` is refused whatever else says yes (a pin, `--yes`): see
//!   [`super::known_hosts`] for how lines are matched.
//! - Every command line sent is a constant of this crate (see [`super::plan`]): the remote shell
//!   never sees an operator- or buyer-supplied string. Values travel on the command's standard
//!   input. The sudo password, when one is needed, is the first line of that input (`sudo -S`
//!   reads it one byte at a time up to the newline and leaves the rest to the command); it is
//!   never on a command line, in a file or in output, and `-k` makes sudo ask for it every time.
//! - After the password comes a constant line, [`SENTINEL`], and every root command starts by
//!   reading one line and exiting 97 unless it is that line. When sudo does not read the
//!   password (a NOPASSWD rule for `/bin/bash`, PAM that authenticates without asking), the
//!   password is that first line: the wrapper exits and no program ever sees it on its input.
//!   How to become root is probed with this same command form, not with another command.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh::ChannelMsg;

use super::known_hosts::{judge, Known};
use crate::secret::Secret;

/// Why talking to the host failed. No variant carries a password.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot connect to {0}")]
    Connect(String),
    #[error("the host key of {host} is {seen}, not the pinned {pinned}; refusing to connect")]
    PinMismatch {
        host: String,
        seen: String,
        pinned: String,
    },
    #[error("the host key of {host} ({seen}) differs from the one in {file}; refusing to connect (the host was reinstalled or the connection is intercepted)")]
    KeyChanged {
        host: String,
        seen: String,
        file: String,
    },
    #[error("the host key of {host} ({seen}) is marked @revoked in {file}; refusing to connect, whatever --host-key or --yes say")]
    Revoked {
        host: String,
        seen: String,
        file: String,
    },
    #[error("{host} is not in {file} (key {seen}){note}; pass --host-key {seen} after checking it, or --yes to accept it")]
    UnknownHost {
        host: String,
        seen: String,
        file: String,
        /// Why matching `@cert-authority` lines did not count, when there are some.
        note: String,
    },
    #[error("{0}: cannot read the SSH key: {1}")]
    Key(String, String),
    #[error("the host refused the login of user {0}")]
    AuthRefused(String),
    #[error("user {0} cannot become root: sudo refused the password")]
    SudoRefused(String),
    #[error("ssh: {0}")]
    Protocol(String),
    #[error("the command did not finish within {0} s")]
    Timeout(u64),
}

/// How to log in.
pub enum Auth {
    /// A private key file (OpenSSH format, unencrypted).
    Key(PathBuf),
    /// The user's password (also used for sudo).
    Password(Secret),
}

/// How the host key is checked.
#[derive(Debug, Clone)]
pub struct HostKeyPolicy {
    /// `SHA256:…`: only this key is accepted (and nothing is learnt).
    pub pinned: Option<String>,
    /// The known_hosts file read, and written on a first contact that is accepted.
    pub known_hosts: PathBuf,
    /// Accept an unknown (never a changed) key without asking.
    pub accept_new: bool,
    /// Ask on the terminal about an unknown key (otherwise it is refused).
    pub ask: bool,
}

pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub auth: Auth,
    pub host_key: HostKeyPolicy,
    /// The sudo password when it differs from the login (or the login is by key).
    pub sudo_password: Option<Secret>,
}

struct Checker {
    host: String,
    port: u16,
    policy: HostKeyPolicy,
    verdict: Arc<Mutex<Option<RemoteError>>>,
    seen: Arc<Mutex<String>>,
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

impl russh::client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        let fp = fingerprint(key);
        if let Ok(mut s) = self.seen.lock() {
            *s = fp.clone();
        }
        let refuse = |e: RemoteError| {
            if let Ok(mut v) = self.verdict.lock() {
                *v = Some(e);
            }
            Ok(false)
        };
        let hostname = format!("{}:{}", self.host, self.port);
        let files = [
            self.policy.known_hosts.as_path(),
            Path::new(SYSTEM_KNOWN_HOSTS),
        ];
        // A revoked key is refused first: neither a pin nor --yes overrides it.
        let known = match judge(&self.host, self.port, key, &files) {
            Ok(k) => k,
            Err(e) => return refuse(RemoteError::Protocol(e)),
        };
        if let Known::Revoked(f) = known {
            return refuse(RemoteError::Revoked {
                host: hostname,
                seen: fp,
                file: f,
            });
        }
        if let Some(pin) = &self.policy.pinned {
            if pin.trim() == fp {
                return Ok(true);
            }
            return refuse(RemoteError::PinMismatch {
                host: hostname,
                seen: fp,
                pinned: pin.clone(),
            });
        }
        let file = self.policy.known_hosts.display().to_string();
        let note = match known {
            Known::Same => return Ok(true),
            Known::Other(f) => {
                return refuse(RemoteError::KeyChanged {
                    host: hostname,
                    seen: fp,
                    file: f,
                })
            }
            // (Revoked returned above.)
            Known::Revoked(_) | Known::Unknown { ca_lines: false } => String::new(),
            Known::Unknown { ca_lines: true } => " (@cert-authority lines match it, but they vouch for host certificates and bootstrap checks the plain host key: they do not make a key known)".to_string(),
        };
        let accepted = self.policy.accept_new
            || (self.policy.ask
                && super::tty::confirm(&format!(
                    "The host {hostname} is unknown; its key fingerprint is {fp}. Trust it? [y/N] "
                )));
        if !accepted {
            return refuse(RemoteError::UnknownHost {
                host: hostname,
                seen: fp,
                file,
                note,
            });
        }
        if let Err(e) = learn(&self.host, self.port, key, &self.policy.known_hosts) {
            return refuse(RemoteError::Protocol(format!("{file}: {e}")));
        }
        eprintln!("bootstrap: added {hostname} ({fp}) to {file}");
        Ok(true)
    }
}

/// The system-wide known_hosts, read after the operator's own.
const SYSTEM_KNOWN_HOSTS: &str = "/etc/ssh/ssh_known_hosts";

fn learn(host: &str, port: u16, key: &PublicKey, file: &Path) -> Result<(), String> {
    if let Some(dir) = file.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            crate::buyer::private_dir(dir).map_err(|e| e.to_string())?;
        }
    }
    russh::keys::known_hosts::learn_known_hosts_path(host, port, key, file)
        .map_err(|e| e.to_string())
}

/// What one command printed and its exit code.
#[derive(Debug, Default, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    /// `None`: killed by a signal, or no status sent.
    pub code: Option<u32>,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// How commands become root on the host.
#[derive(Clone)]
enum Become {
    /// The login is root.
    Root,
    /// `sudo -n` works without a password.
    SudoNoPassword,
    /// `sudo -k -S`: the password is the first line of standard input.
    SudoPassword(Secret),
}

/// A logged-in session on the host.
pub struct Remote {
    session: russh::client::Handle<Checker>,
    become_: Become,
    pub host_key: String,
}

const MAX_OUTPUT: usize = 1024 * 1024;

/// The line after the sudo password (or first, without one) that every root command checks.
pub const SENTINEL: &str = "paygress-root-stdin-v1";
/// What the root command runs before its script: read the sentinel or exit 97.
const CHECK_SENTINEL: &str = "read -r m; [ \"$m\" = paygress-root-stdin-v1 ] || exit 97; ";
/// The exit code of a root command that did not find the sentinel first.
const NO_SENTINEL: u32 = 97;

/// The root prefix of every command: constants only.
const SUDO_NOPASSWD: &str = "sudo -n -- /bin/bash -c ";
const SUDO_PASSWD: &str = "sudo -k -S -p '' -- /bin/bash -c ";
const AS_ROOT: &str = "/bin/bash -c ";

impl Remote {
    /// Connect, check the host key, log in, and find out how to become root.
    pub async fn connect(opts: ConnectOptions) -> Result<Remote, RemoteError> {
        let verdict = Arc::new(Mutex::new(None));
        let seen = Arc::new(Mutex::new(String::new()));
        let checker = Checker {
            host: opts.host.clone(),
            port: opts.port,
            policy: opts.host_key.clone(),
            verdict: verdict.clone(),
            seen: seen.clone(),
        };
        let config = Arc::new(russh::client::Config {
            inactivity_timeout: Some(Duration::from_secs(3600)),
            keepalive_interval: Some(Duration::from_secs(15)),
            ..Default::default()
        });
        let target = format!("{}:{}", opts.host, opts.port);
        let connect = tokio::time::timeout(
            Duration::from_secs(30),
            russh::client::connect(config, (opts.host.as_str(), opts.port), checker),
        )
        .await
        .map_err(|_| RemoteError::Connect(format!("{target} (timed out)")))?;
        let mut session = match connect {
            Ok(s) => s,
            Err(e) => {
                if let Some(v) = verdict.lock().ok().and_then(|mut v| v.take()) {
                    return Err(v);
                }
                return Err(RemoteError::Connect(format!("{target}: {e}")));
            }
        };
        let user = opts.user.clone();
        let auth = match &opts.auth {
            Auth::Key(path) => {
                let key = russh::keys::load_secret_key(path, None)
                    .map_err(|e| RemoteError::Key(path.display().to_string(), e.to_string()))?;
                let hash = session
                    .best_supported_rsa_hash()
                    .await
                    .map_err(|e| RemoteError::Protocol(e.to_string()))?
                    .flatten();
                session
                    .authenticate_publickey(
                        user.clone(),
                        PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                    )
                    .await
            }
            Auth::Password(p) => {
                session
                    .authenticate_password(user.clone(), p.expose().to_string())
                    .await
            }
        }
        .map_err(|e| RemoteError::Protocol(e.to_string()))?;
        if !auth.success() {
            return Err(RemoteError::AuthRefused(user));
        }
        let host_key = seen.lock().map(|s| s.clone()).unwrap_or_default();
        let mut remote = Remote {
            session,
            become_: Become::Root,
            host_key,
        };
        let sudo_password = opts.sudo_password.or(match opts.auth {
            Auth::Password(p) => Some(p),
            Auth::Key(_) => None,
        });
        remote.become_ = remote.find_become(&user, sudo_password).await?;
        Ok(remote)
    }

    async fn find_become(
        &self,
        user: &str,
        password: Option<Secret>,
    ) -> Result<Become, RemoteError> {
        let id = self.exec_raw("id -u", &[], Duration::from_secs(30)).await?;
        if id.stdout.trim() == "0" {
            return Ok(Become::Root);
        }
        // -k: cached credentials do not count; only a NOPASSWD rule for the very command form
        // every root command uses passes.
        let nopasswd = self
            .exec_root_with(
                &Become::SudoNoPassword,
                "id -u",
                &[],
                Duration::from_secs(30),
            )
            .await?;
        if nopasswd.ok() && nopasswd.stdout.trim() == "0" {
            return Ok(Become::SudoNoPassword);
        }
        let password = match password {
            Some(p) => p,
            None => match super::tty::ask_secret(&format!("[sudo] password for {user}: ")) {
                Some(p) => p,
                None => return Err(RemoteError::SudoRefused(user.to_string())),
            },
        };
        let b = Become::SudoPassword(password);
        let probe = self
            .exec_root_with(&b, "id -u", &[], Duration::from_secs(30))
            .await?;
        if probe.code == Some(NO_SENTINEL) {
            return Err(RemoteError::Protocol(format!(
                "sudo for {user} ran the command without reading the password; refusing to send it (give {user} a NOPASSWD rule for /bin/bash, or none)"
            )));
        }
        if probe.stdout.trim() != "0" {
            return Err(RemoteError::SudoRefused(user.to_string()));
        }
        Ok(b)
    }

    /// Run the constant `script` as root with `input` on its standard input.
    pub async fn root(
        &self,
        script: &'static str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<Output, RemoteError> {
        self.exec_root_with(&self.become_, script, input, timeout)
            .await
    }

    async fn exec_root_with(
        &self,
        b: &Become,
        script: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<Output, RemoteError> {
        debug_assert!(!script.contains('\''), "scripts are single-quoted");
        let (prefix, password) = match b {
            Become::Root => (AS_ROOT, None),
            Become::SudoNoPassword => (SUDO_NOPASSWD, None),
            Become::SudoPassword(p) => (SUDO_PASSWD, Some(p)),
        };
        let command = format!("{prefix}'{CHECK_SENTINEL}{script}'");
        let mut data = Vec::with_capacity(64 + input.len());
        if let Some(p) = password {
            data.extend_from_slice(p.expose().as_bytes());
            data.push(b'\n');
        }
        data.extend_from_slice(SENTINEL.as_bytes());
        data.push(b'\n');
        data.extend_from_slice(input);
        self.exec_raw(&command, &data, timeout).await
    }

    /// One exec channel: `command` (a constant, or a constant script in single quotes), `input`
    /// on its standard input, then EOF.
    async fn exec_raw(
        &self,
        command: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<Output, RemoteError> {
        let proto = |e: russh::Error| RemoteError::Protocol(e.to_string());
        let run = async {
            let mut channel = self.session.channel_open_session().await.map_err(proto)?;
            channel
                .exec(true, command.as_bytes())
                .await
                .map_err(proto)?;
            let (mut so, mut se) = (Vec::new(), Vec::new());
            let mut code = None;
            let writer = channel.make_writer();
            let send = async move {
                use tokio::io::AsyncWriteExt;
                let mut w = writer;
                // A command that exits without reading its input closes the channel; that is
                // not an error of ours.
                let _ = w.write_all(input).await;
                let _ = w.flush().await;
                let _ = w.shutdown().await;
            };
            let recv = async {
                while let Some(msg) = channel.wait().await {
                    match msg {
                        ChannelMsg::Data { data } => keep(&mut so, &data),
                        ChannelMsg::ExtendedData { data, ext: 1 } => keep(&mut se, &data),
                        ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                        _ => {}
                    }
                }
            };
            tokio::join!(send, recv);
            Ok::<_, RemoteError>(Output {
                stdout: String::from_utf8_lossy(&so).into_owned(),
                stderr: String::from_utf8_lossy(&se).into_owned(),
                code,
            })
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| RemoteError::Timeout(timeout.as_secs()))?
    }

    pub async fn close(self) {
        let _ = self
            .session
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

fn keep(buf: &mut Vec<u8>, data: &[u8]) {
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_root_command_checks_the_sentinel_it_is_sent() {
        assert!(CHECK_SENTINEL.contains(&format!("= {SENTINEL} ]")));
        assert!(CHECK_SENTINEL.contains(&format!("exit {NO_SENTINEL}")));
        assert!(!CHECK_SENTINEL.contains('\''));
    }
}
