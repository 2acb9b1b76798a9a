//! The embedded SSH server: one listener per workload, inside the provider process.
//!
//! Why embedded: a sandbox has no sshd of its own (the host's root filesystem is shared
//! read-only, and running a real sshd per workload would need host keys, config and privilege
//! separation per workload). `russh` (built with its `ring` crypto backend) speaks the protocol;
//! this module only decides *who* may log in and *what* runs:
//!
//! - **Auth**: `password` (checked against the salted hash, constant time) and `publickey` (only
//!   the buyer's key), for the workload's one user name. russh delays every rejection to a fixed
//!   time and caps attempts per connection; everything else (keyboard-interactive, host-based,
//!   `none`) is refused.
//! - **Channels**: `session` only (no port forwarding, no X11, no agent). `pty-req` and
//!   `window-change` drive a host PTY; `shell` starts a login shell, `exec` runs the command as
//!   `$SHELL -c <command>` — the command is argv, never spliced into another command line;
//!   `env` accepts `LANG`/`LC_*` only; `subsystem` is refused.
//! - **Processes** start inside the workload's namespaces and cgroups through [`super::jail`],
//!   with a clean environment. Output is pumped back as channel data (stderr as extended data),
//!   then `exit-status`, EOF and close are sent once the process exited *and* its output drained.
//!
//! # Who gets a connection
//!
//! A workload's port is public, so strangers can hold its connections. The server therefore
//! never lets unauthenticated connections crowd out the owner:
//!
//! - every connection must authenticate within [`LOGIN_GRACE`] (from accept, so a client that
//!   never sends its first line is closed too);
//! - at most [`MAX_PENDING_PER_SOURCE`] unauthenticated connections per source address and
//!   [`MAX_PENDING`] in all; a new connection over either cap is *admitted* and the least
//!   promising pending one is closed instead (first one that never sent a byte, then one that
//!   failed a password, then the oldest), so a flood of silent or guessing connections can never
//!   keep a newly arriving owner out, and authenticated sessions are never closed for it;
//! - a failed password costs its connection [`FAILED_PASSWORD_DELAY`] before the next try
//!   (on top of russh's fixed rejection time), and the hash is computed on the blocking pool,
//!   never on the async threads that serve everybody else.
//!
//! Closing a server (stop, expiry, destroy) cancels its token: the listener is dropped (the port
//! is free at once) and every open connection is disconnected. Nothing read from the network is
//! trusted: sizes are clamped, strings filtered, and no input can make the server panic.

use std::collections::HashMap;
use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use russh::keys::PublicKey;
use russh::server::{Auth, Handle, Msg, Session};
use russh::{Channel, ChannelId, CryptoVec, MethodKind, MethodSet, Pty};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::auth::{key_matches, PasswordHash};
use super::cgroup::Rlimits;
use super::jail::{self, InitHandle, SessionCmd};

/// Authenticated connections one workload's server holds at once.
const MAX_AUTHENTICATED: usize = 32;
/// Unauthenticated connections from one source address at once.
pub const MAX_PENDING_PER_SOURCE: usize = 8;
/// Unauthenticated connections in all at once.
pub const MAX_PENDING: usize = 24;
/// Time a connection has from accept to a successful login.
pub const LOGIN_GRACE: Duration = Duration::from_secs(20);
/// Extra wait after a wrong password, before the client may try again.
pub const FAILED_PASSWORD_DELAY: Duration = Duration::from_secs(2);
/// Session channels one connection may open.
const MAX_CHANNELS: usize = 10;
/// Environment variables a client may set (`env` requests), by exact name or `LC_` prefix.
const ENV_ALLOWED: &[&str] = &["LANG", "LANGUAGE", "TZ"];

/// Everything the server needs to know about the workload it serves.
#[derive(Debug)]
pub struct Workload {
    pub name: String,
    pub user: String,
    pub password: PasswordHash,
    pub public_key: Option<PublicKey>,
    pub init: InitHandle,
    pub cgroup_procs: Vec<PathBuf>,
    pub rlimits: Option<Rlimits>,
    pub nproc: u32,
    /// Login shell (a host path, the same inside: the host root is visible read-only).
    pub shell: PathBuf,
    /// Host uid/gid of the buyer, for the PTY's owner.
    pub host_uid: u32,
    /// Root or rootless jails.
    pub privilege: jail::Privilege,
}

impl Workload {
    fn home(&self) -> String {
        format!("/home/{}", self.user)
    }
}

/// The russh server configuration shared by every listener.
pub fn config(host_key: russh::keys::PrivateKey) -> russh::server::Config {
    russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-paygress_sandbox".into()),
        methods: MethodSet::from(&[MethodKind::Password, MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(500),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        max_auth_attempts: 6,
        // Idle interactive sessions are legitimate; dead peers are found by keepalives.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    }
}

/// A running listener. Dropping it closes it (and its connections) too.
pub struct Server {
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Server {
    /// Serve `workload` on an already bound listener.
    pub fn start(
        listener: std::net::TcpListener,
        workload: Arc<Workload>,
        config: Arc<russh::server::Config>,
    ) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, workload, config, cancel.clone()));
        Ok(Server {
            cancel,
            task: Some(task),
        })
    }

    /// Close the listener and every connection; return once they are gone (bounded).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// What the accept loop knows about one live connection.
#[derive(Debug)]
struct Slot {
    peer: IpAddr,
    started: Instant,
    /// The client sent at least one byte.
    progressed: AtomicBool,
    /// Wrong passwords so far.
    failures: AtomicU32,
    authenticated: AtomicBool,
    /// The connection task is over.
    done: AtomicBool,
    /// Cancelled to close the connection (evicted, or out of login time).
    kill: CancellationToken,
}

impl Slot {
    fn pending(&self) -> bool {
        !self.authenticated.load(Ordering::Relaxed) && !self.kill.is_cancelled()
    }

    /// Lower is a better victim: silent first, then those that failed a password, then oldest.
    fn victim_rank(&self) -> (bool, bool, Instant) {
        (
            self.progressed.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed) == 0,
            self.started,
        )
    }
}

/// Marks the slot done however the connection task ends.
struct DoneGuard(Arc<Slot>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.done.store(true, Ordering::Relaxed);
        self.0.kill.cancel();
    }
}

/// The live connections of one listener, and the admission rules (see the module docs).
#[derive(Default)]
struct Gate {
    slots: Vec<Arc<Slot>>,
}

impl Gate {
    /// A slot for a new connection from `peer`, closing a pending one if a cap is reached;
    /// `None` only when the owner already holds [`MAX_AUTHENTICATED`] sessions.
    fn admit(&mut self, peer: IpAddr) -> Option<Arc<Slot>> {
        self.slots.retain(|s| !s.done.load(Ordering::Relaxed));
        let authenticated = self
            .slots
            .iter()
            .filter(|s| s.authenticated.load(Ordering::Relaxed))
            .count();
        if authenticated >= MAX_AUTHENTICATED {
            return None;
        }
        let evict_one = |slots: &[Arc<Slot>], from: Option<IpAddr>, cap: usize| {
            let pending: Vec<&Arc<Slot>> = slots
                .iter()
                .filter(|s| s.pending() && from.is_none_or(|p| s.peer == p))
                .collect();
            if pending.len() >= cap {
                if let Some(v) = pending.into_iter().min_by_key(|s| s.victim_rank()) {
                    v.kill.cancel();
                }
            }
        };
        evict_one(&self.slots, Some(peer), MAX_PENDING_PER_SOURCE);
        evict_one(&self.slots, None, MAX_PENDING);
        let slot = Arc::new(Slot {
            peer,
            started: Instant::now(),
            progressed: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            authenticated: AtomicBool::new(false),
            done: AtomicBool::new(false),
            kill: CancellationToken::new(),
        });
        self.slots.push(Arc::clone(&slot));
        Some(slot)
    }
}

/// The TCP stream as russh sees it: notes the client's first byte, and fails every read and
/// write once the slot is killed (which also wakes a read that waits forever).
struct Tracked {
    inner: tokio::net::TcpStream,
    slot: Arc<Slot>,
    killed: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl Tracked {
    fn new(inner: tokio::net::TcpStream, slot: Arc<Slot>) -> Tracked {
        let killed = Box::pin(slot.kill.clone().cancelled_owned());
        Tracked {
            inner,
            slot,
            killed,
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::from(io::ErrorKind::ConnectionAborted)),
            Poll::Pending => Ok(()),
        }
    }
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.slot.progressed.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    workload: Arc<Workload>,
    config: Arc<russh::server::Config>,
    cancel: CancellationToken,
) {
    let mut conns = JoinSet::new();
    let mut gate = Gate::default();
    loop {
        while conns.try_join_next().is_some() {}
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let Some(slot) = gate.admit(peer.ip().to_canonical()) else {
                        continue; // dropped: the owner holds every session there may be
                    };
                    conns.spawn(connection(socket, slot, Arc::clone(&workload), Arc::clone(&config), cancel.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(workload = %workload.name, "SSH accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
}

async fn connection(
    socket: tokio::net::TcpStream,
    slot: Arc<Slot>,
    workload: Arc<Workload>,
    config: Arc<russh::server::Config>,
    cancel: CancellationToken,
) {
    let _done = DoneGuard(Arc::clone(&slot));
    let handler = Conn {
        workload,
        channels: HashMap::new(),
        cancel: cancel.child_token(),
        slot: Arc::clone(&slot),
    };
    let conn_cancel = handler.cancel.clone();
    // Out of login time: closed, unless authenticated by then.
    let grace_slot = Arc::clone(&slot);
    let grace = tokio::spawn(async move {
        tokio::time::sleep(LOGIN_GRACE).await;
        if !grace_slot.authenticated.load(Ordering::Relaxed) {
            grace_slot.kill.cancel();
        }
    });
    let stream = Tracked::new(socket, Arc::clone(&slot));
    let session = tokio::select! {
        _ = cancel.cancelled() => return,
        _ = slot.kill.cancelled() => return,
        s = russh::server::run_stream(config, stream, handler) => match s {
            Ok(s) => s,
            Err(_) => return,
        },
    };
    let handle = session.handle();
    let mut session = session;
    tokio::select! {
        _ = cancel.cancelled() => {
            conn_cancel.cancel();
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                handle.disconnect(
                    russh::Disconnect::ByApplication,
                    "the workload was stopped".into(),
                    String::new(),
                ),
            )
            .await;
            // Let the session send the message before the stream is closed under it.
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut session).await;
        }
        _ = &mut session => {}
    }
    grace.abort();
    conn_cancel.cancel();
}

/// One client connection.
struct Conn {
    workload: Arc<Workload>,
    channels: HashMap<ChannelId, Chan>,
    /// Cancelled when the connection ends: stops this connection's pumps.
    cancel: CancellationToken,
    /// This connection in its listener's gate.
    slot: Arc<Slot>,
}

/// One session channel.
struct Chan {
    term: Option<String>,
    size: libc::winsize,
    env: Vec<(String, String)>,
    started: bool,
    input: Option<Input>,
    /// Cancelled when the client closes the channel.
    closed: CancellationToken,
}

enum Input {
    Pipe(tokio::process::ChildStdin),
    Pty(Arc<AsyncFd<OwnedFd>>),
}

fn winsize(cols: u32, rows: u32, px_w: u32, px_h: u32) -> libc::winsize {
    let clamp = |v: u32| v.min(u32::from(u16::MAX)) as u16;
    libc::winsize {
        ws_row: clamp(rows),
        ws_col: clamp(cols),
        ws_xpixel: clamp(px_w),
        ws_ypixel: clamp(px_h),
    }
}

/// A terminal name as the client sent it, if it is a plausible one.
fn clean_term(term: &str) -> Option<String> {
    let ok = !term.is_empty()
        && term.len() <= 64
        && term
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'));
    ok.then(|| term.to_string())
}

fn env_allowed(name: &str, value: &str) -> bool {
    let name_ok = ENV_ALLOWED.contains(&name)
        || (name.starts_with("LC_")
            && name.len() <= 32
            && name[3..]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_'));
    name_ok && value.len() <= 256 && !value.chars().any(|c| c.is_control())
}

fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(
            &[MethodKind::Password, MethodKind::PublicKey][..],
        )),
        partial_success: false,
    }
}

fn set_winsize(fd: &AsyncFd<OwnedFd>, size: &libc::winsize) {
    // SAFETY: TIOCSWINSZ with a valid winsize on a PTY master we own.
    unsafe {
        libc::ioctl(fd.get_ref().as_raw_fd(), libc::TIOCSWINSZ, size as *const _);
    }
}

/// A new PTY pair in the workload's own devpts (`ptmx`, see [`InitHandle::ptmx`]) with the given
/// size, the slave owned by the buyer's host uid.
fn open_pty(
    ptmx: &std::path::Path,
    size: &libc::winsize,
    host_uid: u32,
) -> io::Result<(OwnedFd, OwnedFd)> {
    use std::os::unix::fs::OpenOptionsExt;
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(ptmx)?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: PTY ioctls on the master we own, with valid arguments; TIOCGPTPEER returns a new fd
    // (the slave, found without a path lookup) that we then own.
    let slave = unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0
            || libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, size as *const _) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    // SAFETY: fchown/fchmod on the slave we own.
    unsafe {
        // Like sshd: the terminal belongs to the user who logs in on it.
        libc::fchown(slave.as_raw_fd(), host_uid, host_uid);
        libc::fchmod(slave.as_raw_fd(), 0o620);
    }
    Ok((master, slave))
}

/// Write all of `data` to a non-blocking PTY master.
async fn write_pty(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        // SAFETY: writing from a valid slice to an fd we own.
        let n = unsafe { libc::write(fd.get_ref().as_raw_fd(), data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Copy a PTY master's output to the channel until the terminal is gone (EIO) or `stop`.
async fn pump_pty(
    fd: Arc<AsyncFd<OwnedFd>>,
    handle: Handle,
    channel: ChannelId,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut guard = tokio::select! {
            _ = stop.cancelled() => return,
            g = fd.readable() => match g { Ok(g) => g, Err(_) => return },
        };
        // SAFETY: reading into a valid buffer from an fd we own.
        let n = unsafe { libc::read(fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            if handle
                .data(channel, CryptoVec::from_slice(&buf[..n as usize]))
                .await
                .is_err()
            {
                return;
            }
        } else if n == 0 {
            return;
        } else {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
            } else {
                return; // EIO: every slave end is closed
            }
        }
    }
}

/// Copy a pipe to the channel (stdout as data, stderr as extended data 1) until EOF.
async fn pump_pipe<R: tokio::io::AsyncRead + Unpin>(
    mut r: R,
    handle: Handle,
    channel: ChannelId,
    ext: Option<u32>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let data = CryptoVec::from_slice(&buf[..n]);
        let sent = match ext {
            None => handle.data(channel, data).await.is_ok(),
            Some(code) => handle.extended_data(channel, code, data).await.is_ok(),
        };
        if !sent {
            return;
        }
    }
}

fn exit_code(status: io::Result<std::process::ExitStatus>) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => c as u32,
            (None, Some(sig)) => 128 + sig as u32,
            _ => 255,
        },
        Err(_) => 255,
    }
}

impl Conn {
    fn user_ok(&self, user: &str) -> bool {
        user == self.workload.user
    }

    fn key_ok(&self, user: &str, key: &PublicKey) -> bool {
        self.user_ok(user)
            && self
                .workload
                .public_key
                .as_ref()
                .is_some_and(|k| key_matches(k, key))
    }

    /// Start the shell (`command == None`) or a command on `channel`.
    async fn start(
        &mut self,
        channel: ChannelId,
        command: Option<&[u8]>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let w = Arc::clone(&self.workload);
        let Some(chan) = self.channels.get_mut(&channel) else {
            return session.channel_failure(channel);
        };
        if chan.started || command.is_some_and(|c| c.contains(&0) || c.len() > 256 * 1024) {
            return session.channel_failure(channel);
        }
        chan.started = true;
        let shell_name = w
            .shell
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| OsString::from("sh"));
        let (arg0, args) = match command {
            None => {
                // argv[0] starting with '-' makes it a login shell.
                let mut a = OsString::from("-");
                a.push(&shell_name);
                (a, Vec::new())
            }
            Some(cmd) => (
                shell_name,
                vec![
                    OsString::from("-c"),
                    std::ffi::OsStr::from_bytes(cmd).to_os_string(),
                ],
            ),
        };
        let home = w.home();
        let mut env = vec![
            ("HOME".to_string(), home.clone()),
            ("USER".to_string(), w.user.clone()),
            ("LOGNAME".to_string(), w.user.clone()),
            ("SHELL".to_string(), w.shell.to_string_lossy().into_owned()),
            (
                "PATH".to_string(),
                "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games".to_string(),
            ),
            ("LANG".to_string(), "C.UTF-8".to_string()),
        ];
        if let Some(term) = &chan.term {
            env.push(("TERM".to_string(), term.clone()));
        }
        for (k, v) in &chan.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let pty = chan.term.is_some();
        let (master, stdio) = if pty {
            let (master, slave) = match open_pty(&w.init.ptmx(), &chan.size, w.host_uid) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(workload = %w.name, "cannot open a PTY: {e}");
                    return session.channel_failure(channel);
                }
            };
            let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
            let stdio = match (dup(&slave), dup(&slave)) {
                (Ok(a), Ok(b)) => (Stdio::from(slave), a, b),
                _ => return session.channel_failure(channel),
            };
            (Some(master), stdio)
        } else {
            (None, (Stdio::piped(), Stdio::piped(), Stdio::piped()))
        };
        let cmd = SessionCmd {
            program: w.shell.clone(),
            arg0,
            args,
            env,
            cwd: PathBuf::from(home),
            pty,
            stdin: stdio.0,
            stdout: stdio.1,
            stderr: stdio.2,
        };
        let rt = tokio::runtime::Handle::current();
        let w2 = Arc::clone(&w);
        let spawned = tokio::task::spawn_blocking(move || {
            jail::spawn_session(
                &w2.init,
                &w2.privilege,
                &w2.cgroup_procs,
                w2.rlimits,
                w2.nproc,
                cmd,
                &rt,
            )
        })
        .await;
        let mut child = match spawned {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(workload = %w.name, "cannot start an SSH session: {e}");
                return session.channel_failure(channel);
            }
            Err(_) => return session.channel_failure(channel),
        };
        let handle = session.handle();
        let closed = chan.closed.clone();
        let conn_gone = self.cancel.clone();
        match master {
            Some(master) => {
                // SAFETY: `master` is an owned, valid fd that nothing else closes or replaces
                // while the AsyncFd owns it.
                let fd = match unsafe { AsyncFd::register(master) } {
                    Ok(fd) => Arc::new(fd),
                    Err(_) => {
                        let _ = child.start_kill();
                        return session.channel_failure(channel);
                    }
                };
                chan.input = Some(Input::Pty(Arc::clone(&fd)));
                let stop = CancellationToken::new();
                let reader = tokio::spawn(pump_pty(
                    Arc::clone(&fd),
                    handle.clone(),
                    channel,
                    stop.clone(),
                ));
                drop(fd);
                tokio::spawn(async move {
                    let status = tokio::select! {
                        s = child.wait() => Some(s),
                        _ = closed.cancelled() => None,
                        _ = conn_gone.cancelled() => None,
                    };
                    // Let the terminal drain, but background jobs holding it must not keep the
                    // session open (sshd closes on shell exit too).
                    let mut reader = reader;
                    if tokio::time::timeout(Duration::from_millis(500), &mut reader)
                        .await
                        .is_err()
                    {
                        stop.cancel();
                        let _ = reader.await;
                    }
                    if let Some(status) = status {
                        let _ = handle.exit_status_request(channel, exit_code(status)).await;
                        let _ = handle.eof(channel).await;
                        let _ = handle.close(channel).await;
                    }
                });
            }
            None => {
                if let Some(stdin) = child.stdin.take() {
                    chan.input = Some(Input::Pipe(stdin));
                }
                let out = child
                    .stdout
                    .take()
                    .map(|o| tokio::spawn(pump_pipe(o, handle.clone(), channel, None)));
                let err = child
                    .stderr
                    .take()
                    .map(|e| tokio::spawn(pump_pipe(e, handle.clone(), channel, Some(1))));
                tokio::spawn(async move {
                    let status = tokio::select! {
                        s = child.wait() => s,
                        _ = conn_gone.cancelled() => return,
                    };
                    for pump in [out, err].into_iter().flatten() {
                        tokio::select! {
                            _ = pump => {}
                            _ = closed.cancelled() => return,
                            _ = conn_gone.cancelled() => return,
                        }
                    }
                    let _ = handle.exit_status_request(channel, exit_code(status)).await;
                    let _ = handle.eof(channel).await;
                    let _ = handle.close(channel).await;
                });
            }
        }
        session.channel_success(channel)
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(reject())
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        // Hash even for a wrong user name, so timing does not tell names apart; on the blocking
        // pool, so a stream of guesses cannot stall the async threads.
        let hash = self.workload.password.clone();
        let guess = crate::secret::Secret::new(password);
        let ok = tokio::task::spawn_blocking(move || hash.verify(guess.expose()))
            .await
            .unwrap_or(false);
        if ok && self.user_ok(user) {
            self.slot.authenticated.store(true, Ordering::Relaxed);
            return Ok(Auth::Accept);
        }
        self.slot.failures.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(FAILED_PASSWORD_DELAY).await;
        Ok(reject())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        key: &PublicKey,
    ) -> Result<Auth, Self::Error> {
        // Only an offer: the signature proving the key comes with `auth_publickey`.
        Ok(if self.key_ok(user, key) {
            Auth::Accept
        } else {
            reject()
        })
    }

    async fn auth_publickey(&mut self, user: &str, key: &PublicKey) -> Result<Auth, Self::Error> {
        if self.key_ok(user, key) {
            self.slot.authenticated.store(true, Ordering::Relaxed);
            Ok(Auth::Accept)
        } else {
            Ok(reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if self.channels.len() >= MAX_CHANNELS {
            return Ok(false);
        }
        self.channels.insert(
            channel.id(),
            Chan {
                term: None,
                size: winsize(80, 24, 0, 0),
                env: Vec::new(),
                started: false,
                input: None,
                closed: self.cancel.child_token(),
            },
        );
        Ok(true)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(chan) if !chan.started => {
                chan.term = Some(clean_term(term).unwrap_or_else(|| "xterm".into()));
                chan.size = winsize(col_width, row_height, pix_width, pix_height);
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(chan) = self.channels.get_mut(&channel) {
            chan.size = winsize(col_width, row_height, pix_width, pix_height);
            if let Some(Input::Pty(fd)) = &chan.input {
                set_winsize(fd, &chan.size);
            }
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(chan) if !chan.started && env_allowed(name, value) && chan.env.len() < 32 => {
                chan.env.push((name.to_string(), value.to_string()));
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, None, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, Some(data), session).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(chan) = self.channels.get_mut(&channel) else {
            return Ok(());
        };
        let failed = match &mut chan.input {
            Some(Input::Pipe(stdin)) => stdin.write_all(data).await.is_err(),
            Some(Input::Pty(fd)) => write_pty(fd, data).await.is_err(),
            None => false,
        };
        if failed {
            // The process stopped reading: drop further input, like a closed pipe.
            chan.input = None;
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(chan) = self.channels.get_mut(&channel) {
            // A pipe's EOF is closing it; a terminal has no half-close (sshd ignores it too).
            if matches!(chan.input, Some(Input::Pipe(_))) {
                chan.input = None;
            }
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(chan) = self.channels.remove(&channel) {
            chan.closed.cancel();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_names_and_env_are_filtered() {
        assert_eq!(
            clean_term("xterm-256color").as_deref(),
            Some("xterm-256color")
        );
        assert_eq!(clean_term("x;rm -rf /"), None);
        assert_eq!(clean_term(""), None);
        assert!(env_allowed("LANG", "en_US.UTF-8"));
        assert!(env_allowed("LC_ALL", "C"));
        assert!(!env_allowed("LD_PRELOAD", "/tmp/x.so"));
        assert!(!env_allowed("LC_x", "C"));
        assert!(!env_allowed("LANG", "a\nb"));
    }

    #[test]
    fn the_gate_evicts_silent_then_failed_then_oldest_and_never_the_authenticated() {
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "198.51.100.9".parse().unwrap();
        let mut gate = Gate::default();
        let owner = gate.admit(a).unwrap();
        owner.progressed.store(true, Ordering::Relaxed);
        owner.authenticated.store(true, Ordering::Relaxed);
        let talker = gate.admit(a).unwrap();
        talker.progressed.store(true, Ordering::Relaxed);
        let guesser = gate.admit(a).unwrap();
        guesser.progressed.store(true, Ordering::Relaxed);
        guesser.failures.store(1, Ordering::Relaxed);
        let silent: Vec<_> = (0..MAX_PENDING_PER_SOURCE - 2)
            .map(|_| gate.admit(a).unwrap())
            .collect();
        // The source is at its cap: each newcomer closes a silent one first, oldest first.
        let newcomer = gate.admit(a).unwrap();
        assert!(silent[0].kill.is_cancelled());
        assert!(silent[1..].iter().all(|s| !s.kill.is_cancelled()));
        for s in &silent {
            s.done.store(true, Ordering::Relaxed);
        }
        newcomer.progressed.store(true, Ordering::Relaxed);
        for _ in 0..MAX_PENDING_PER_SOURCE - 3 {
            gate.admit(a)
                .unwrap()
                .progressed
                .store(true, Ordering::Relaxed);
        }
        // Now no silent one is left from `a`: the one that failed a password goes.
        gate.admit(a).unwrap();
        assert!(guesser.kill.is_cancelled());
        assert!(!talker.kill.is_cancelled() && !owner.kill.is_cancelled());
        // Another source is counted apart.
        let other = gate.admit(b).unwrap();
        assert!(!other.kill.is_cancelled());
        // The owner is never a victim, however many come.
        for _ in 0..200 {
            gate.admit(a).unwrap();
        }
        assert!(!owner.kill.is_cancelled());
    }

    #[test]
    fn window_sizes_are_clamped() {
        let w = winsize(u32::MAX, 40, 0, 1 << 20);
        assert_eq!((w.ws_col, w.ws_row, w.ws_ypixel), (u16::MAX, 40, u16::MAX));
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(Ok(std::process::ExitStatus::from_raw(3 << 8))), 3);
        assert_eq!(exit_code(Ok(std::process::ExitStatus::from_raw(9))), 137);
        assert_eq!(exit_code(Err(io::Error::other("x"))), 255);
    }
}
