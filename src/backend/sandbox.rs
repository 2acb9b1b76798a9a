//! The local sandbox backend: workloads as namespaced process trees on this very host.
//!
//! LXD, Proxmox and Kubernetes need a daemon; a provider that just wants to sell a slice of the
//! machine it runs on should not. The sandbox is the embedded default: every workload is a
//! process tree in its own user, pid, mount, uts, ipc and network namespaces (see [`jail`] for
//! how they are made), with
//!
//! - a private, writable home at `/home/<user>` (kept in `<state_dir>/<name>/home` across stops),
//!   private tmpfs on `/tmp` and `/run`, a minimal `/dev` of its own (a private devpts, null,
//!   zero, full, random, urandom, tty, shm), and a **read-only, nosuid, nodev view of the host's
//!   root filesystem** for everything else — the buyer runs the host's programs, not an image;
//! - outbound network only, through slirp4netns behind an egress filter (see [`network`]), and a
//!   seccomp deny list on every process (see [`seccomp`]);
//! - a generated `/etc/passwd` and `/etc/group`, so `whoami` is the buyer's name (uid 1000
//!   inside, a dedicated unprivileged host uid outside) and `$HOME` is right;
//! - its own `/proc`: `ps` shows the workload's processes only; the hostname is the workload name;
//! - CPU, memory and task limits from the tier through cgroups (v2, or v1/hybrid), or rlimits
//!   where no cgroup is writable (see [`cgroup`]);
//! - SSH served by an embedded server on the workload's host port, bound to `listen_address`
//!   (see [`ssh`]), password and public-key login, exec and interactive PTY sessions, each
//!   started inside the workload's namespaces and cgroups.
//!
//! # Root or rootless
//!
//! Run as root, the provider makes every namespace but the user namespace outside any user
//! namespace, and maps each workload to its own range of host ids. Run as anyone else — the
//! usual case for `paygress-mcp-server --demo` on a machine without LXD — it switches to
//! rootless mode by itself: a user namespace mapping the provider's own uid to 1000 inside, the
//! other namespaces made in it, limits through a delegated cgroup or rlimits, the same view of
//! the host as far as the kernel allows (see [`rootless`] for what differs and why). Where the
//! host forbids unprivileged user namespaces, [`SandboxBackend::open`] fails with what is off
//! and how to switch it on.
//!
//! # Lifecycle
//!
//! `create` makes the state directory (0700) with the home and the generated files, writes the
//! metadata ([`meta`]: the password only as a salted hash), makes the cgroups, starts the init,
//! starts the SSH listener on the port it bound *first* (a taken port fails before anything is
//! made, as `Capacity`), and returns once the port answers with an SSH banner. Any failure on the
//! way undoes everything. `stop` closes the listener and its sessions and kills the init — which
//! kills the whole tree — and keeps the home; `resume` starts init and listener again; `destroy`
//! removes everything; `extend` rewrites the deadline in the metadata.
//!
//! Inits are not children that die with the provider: a restarted provider's
//! [`SandboxBackend::open`] reads every metadata file, re-adopts workloads whose init still runs
//! (same pid *and* start time) and serves their ports again. A workload whose init is gone
//! without having been stopped (the host rebooted) is started again if its deadline is still
//! ahead, because the provider core treats it as running; one stopped on expiry stays stopped
//! until a top-up resumes it or the reaper destroys it.
//!
//! # Caveats (weaker than LXD)
//!
//! - The host's whole root filesystem is **readable** inside (read-only): whatever host files are
//!   world-readable, the buyer can read. Provider state is safe because the data directory is
//!   0700 root (rootless: because it is covered inside) and the provider's key and config files
//!   are covered ([`SandboxBackend::open_hiding`]); `/home` and `/run` of the host are hidden
//!   behind tmpfs.
//! - Outbound traffic leaves from the host (slirp4netns makes host sockets): what the egress
//!   filter does not refuse is reached with the host's address.
//! - The kernel is shared; `nproc` and `free` show the host's numbers (limits are enforced, not
//!   virtualised); host-owned files show up as `nobody`. There is no disk quota on the home.
//! - Rootless mode is weaker still: the buyer's processes are the provider's uid on the host, the
//!   namespaces belong to the workload's user namespace, and limits may be per process only
//!   (see [`rootless`]).
//!
//! Nothing from the network is trusted to `unwrap()`, and no error or log line carries the
//! password.

pub mod auth;
pub mod cgroup;
pub mod jail;
pub mod meta;
pub mod network;
pub mod rootless;
pub mod seccomp;
pub mod ssh;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

use super::{
    Backend, BackendError, BackendKind, Endpoint, WorkloadInfo, WorkloadSpec, WorkloadState,
};
use auth::PasswordHash;
use meta::Meta;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// `[backend.sandbox]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Address the per-workload SSH listeners bind to. The default, `127.0.0.1`, only serves
    /// this machine (right for development); a provider selling to others sets `0.0.0.0`.
    #[serde(default = "default_listen")]
    pub listen_address: String,
    /// Where workloads live (metadata, homes, the SSH host key). Default `<data_dir>/sandbox`;
    /// a relative path is under the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Must be `true` for a `listen_address` other machines reach: the sandbox isolates less
    /// than LXD (shared kernel, the host's filesystem readable; see the README), so selling it
    /// to strangers is a choice the operator writes down, never a default.
    #[serde(default)]
    pub sell_to_strangers: bool,
    /// Login shell inside. Default `/bin/bash`, or `/bin/sh` where bash is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<PathBuf>,
    /// Most tasks (processes and threads) one workload may run.
    #[serde(default = "default_pids_max")]
    pub pids_max: u32,
    /// `outbound` (the default): each workload has its own network namespace with outbound
    /// access through slirp4netns and an egress filter (see [`network`]); `none`: its own
    /// namespace with loopback only.
    #[serde(default)]
    pub network: NetworkMode,
    /// More files or directories to cover inside every workload (besides the data directory,
    /// the provider's key files and its config file, which are covered anyway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hide: Vec<PathBuf>,
    /// Extra destinations (CIDRs) workloads may not reach, on top of the built-in deny list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_deny: Vec<String>,
    /// Destinations (CIDRs) workloads may reach although the built-in list denies them (a
    /// private service the provider offers its buyers on purpose).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_allow: Vec<String>,
}

fn default_listen() -> String {
    "127.0.0.1".into()
}
fn default_pids_max() -> u32 {
    512
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            listen_address: default_listen(),
            state_dir: None,
            sell_to_strangers: false,
            shell: None,
            pids_max: default_pids_max(),
            network: NetworkMode::default(),
            hide: Vec::new(),
            egress_deny: Vec::new(),
            egress_allow: Vec::new(),
        }
    }
}

/// `backend.sandbox.network`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Outbound,
    None,
}

/// Name of the SSH host key file in the state directory.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
/// An empty file in the state directory, bound over the provider's secret files inside.
const EMPTY_FILE: &str = "empty";

/// First host uid/gid of the ranges workloads map (each gets `jail::ID_RANGE` ids from here).
const HOST_ID_BASE: u32 = 0x4000_0000;
/// Number of id ranges (workload slots).
const SLOTS: u32 = 32_768;

fn is_valid_name(s: &str) -> bool {
    let first_ok = s.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    first_ok
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_valid_user(u: &str) -> bool {
    let first_ok = u
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    first_ok
        && u.len() <= 32
        && u != "root"
        && u != "nobody"
        && u.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn api(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Api(format!("sandbox: {what}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------------------------------

/// A workload this backend instance serves right now.
struct Live {
    init: jail::Init,
    server: ssh::Server,
    /// Its outbound network (ends when dropped).
    _net: Option<network::Net>,
}

struct Inner {
    cfg: SandboxConfig,
    state_dir: PathBuf,
    shell: PathBuf,
    ssh_config: Arc<russh::server::Config>,
    cgroups: cgroup::Mode,
    /// Root or rootless jails (see [`rootless`]).
    privilege: jail::Privilege,
    /// How workloads get outbound access, when they do: the helpers and the egress ruleset.
    net: Option<(network::Tools, String)>,
    /// The provider's secret files and directories, covered inside every jail.
    secrets: Vec<PathBuf>,
    /// Live workloads; the lock also serialises every change of state.
    live: Mutex<HashMap<String, Live>>,
}

/// The sandbox backend. See the module docs.
#[derive(Clone)]
pub struct SandboxBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SandboxBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxBackend")
            .field("state_dir", &self.inner.state_dir)
            .field("listen_address", &self.inner.cfg.listen_address)
            .field("cgroups", &self.inner.cgroups)
            .field("privilege", &self.inner.privilege)
            .finish()
    }
}

/// Load the host key, or make one (ed25519, 0600) the first time.
fn host_key(path: &Path) -> Result<russh::keys::PrivateKey, BackendError> {
    if let Ok(text) = std::fs::read(path) {
        return russh::keys::PrivateKey::from_openssh(text)
            .map_err(|_| BackendError::Api(format!("unreadable SSH host key {}", path.display())));
    }
    let key =
        russh::keys::PrivateKey::random(&mut rand::rngs::OsRng, russh::keys::Algorithm::Ed25519)
            .map_err(|e| api("cannot generate an SSH host key", e))?;
    let pem = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| api("cannot encode the SSH host key", e))?;
    crate::fsutil::write_private(path, pem.as_bytes())
        .map_err(|e| api(&format!("cannot write {}", path.display()), e))?;
    Ok(key)
}

fn mkdir_private(p: &Path) -> io::Result<()> {
    std::fs::create_dir_all(p)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
}

/// Connect to the port and read the server's `SSH-` banner: proof that create is done.
async fn wait_for_banner(host: &str, port: u16, limit: Duration) -> Result<(), BackendError> {
    let deadline = Instant::now() + limit;
    loop {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect((host, port)).await.ok()?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.ok()?;
            (&buf == b"SSH-").then_some(())
        };
        if tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BackendError::NotReady(format!(
                "no SSH banner on {host}:{port} in time"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl SandboxBackend {
    /// Open the state directory, load or make the host key, find out how limits can be enforced,
    /// and re-adopt the workloads a previous provider process left running.
    ///
    /// As root, jails are made as described in [`jail`]; as any other user, in rootless mode
    /// (see [`rootless`]), which fails here, with what to do about it, where the host does not
    /// allow unprivileged user namespaces.
    pub async fn open(cfg: SandboxConfig, data_dir: &Path) -> Result<SandboxBackend, BackendError> {
        SandboxBackend::open_hiding(cfg, data_dir, &[]).await
    }

    /// [`SandboxBackend::open`], also covering `secrets` (the provider's key files, its config:
    /// whatever it holds outside the data directory) inside every workload, in root and
    /// rootless mode. Paths that do not exist are skipped.
    pub async fn open_hiding(
        cfg: SandboxConfig,
        data_dir: &Path,
        secrets: &[PathBuf],
    ) -> Result<SandboxBackend, BackendError> {
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        match cfg.listen_address.parse::<std::net::IpAddr>() {
            Err(_) => {
                return Err(BackendError::Api(format!(
                    "backend.sandbox.listen_address: not an IP address: {:?}",
                    cfg.listen_address
                )))
            }
            Ok(ip) if !ip.is_loopback() && !cfg.sell_to_strangers => {
                return Err(BackendError::Api(format!(
                    "backend.sandbox.listen_address = {:?} sells workloads to other machines, but \
                     the sandbox isolates less than LXD (a shared kernel, the host's filesystem \
                     readable inside): set backend.sandbox.sell_to_strangers = true to do so \
                     anyway, or use the LXD backend",
                    cfg.listen_address
                )))
            }
            Ok(_) => {}
        }
        let state_dir = match &cfg.state_dir {
            Some(p) => data_dir.join(p),
            None => data_dir.join("sandbox"),
        };
        let state_dir = std::path::absolute(&state_dir).map_err(|e| api("state_dir", e))?;
        mkdir_private(&state_dir)
            .map_err(|e| api(&format!("cannot create {}", state_dir.display()), e))?;
        let shell = match &cfg.shell {
            Some(s) => s.clone(),
            None if Path::new("/bin/bash").exists() => PathBuf::from("/bin/bash"),
            None => PathBuf::from("/bin/sh"),
        };
        if !shell.is_absolute() || !shell.exists() {
            return Err(BackendError::Api(format!(
                "backend.sandbox.shell: {} is not an absolute path to a program",
                shell.display()
            )));
        }
        let (privilege, cgroups) = if as_root {
            let cgroups = tokio::task::spawn_blocking(cgroup::Mode::detect)
                .await
                .map_err(|e| api("cgroup detection", e))?;
            if !cgroups.enforces_memory() {
                tracing::warn!(
                    "no writable cgroup hierarchy: sandbox limits fall back to per-process rlimits, \
                     which do not cap a workload's total memory"
                );
            }
            (jail::Privilege::Root, cgroups)
        } else {
            let groups = rootless::extra_groups();
            if !groups.is_empty() {
                return Err(BackendError::Api(rootless::GroupsKept(groups).to_string()));
            }
            let data_dir = std::path::absolute(data_dir).map_err(|e| api("data_dir", e))?;
            let own = state_dir.clone();
            let r = tokio::task::spawn_blocking(move || rootless::detect(&[&data_dir, &own]))
                .await
                .map_err(|e| api("rootless detection", e))?
                .map_err(|e| BackendError::Api(e.to_string()))?;
            let cgroups = tokio::task::spawn_blocking(cgroup::Mode::detect_delegated)
                .await
                .map_err(|e| api("cgroup detection", e))?;
            log_rootless(&r, &cgroups);
            (jail::Privilege::Rootless(r), cgroups)
        };
        let net = match cfg.network {
            NetworkMode::None => None,
            NetworkMode::Outbound => {
                let tools = network::Tools::find().map_err(BackendError::Api)?;
                let egress = network::Egress::new(&cfg.egress_deny, &cfg.egress_allow)
                    .map_err(BackendError::Api)?;
                if privilege.is_rootless() && !network::tun_usable() {
                    tracing::warn!(
                        "sandbox (rootless): this user may not open /dev/net/tun, so workloads                          get loopback only, no outbound network (make /dev/net/tun mode 0666,                          as most distributions ship it, or run as root)"
                    );
                    None
                } else {
                    Some((tools, egress.ruleset()))
                }
            }
        };
        let key = host_key(&state_dir.join(HOST_KEY_FILE))?;
        crate::fsutil::write_private(&state_dir.join(EMPTY_FILE), b"")
            .map_err(|e| api("cannot write the empty file", e))?;
        let secrets = secret_paths(secrets.iter().chain(&cfg.hide));
        let backend = SandboxBackend {
            inner: Arc::new(Inner {
                ssh_config: Arc::new(ssh::config(key)),
                cfg,
                state_dir,
                shell,
                cgroups,
                privilege,
                net,
                secrets,
                live: Mutex::new(HashMap::new()),
            }),
        };
        backend.recover().await;
        Ok(backend)
    }

    /// Whether jails are made rootless (the provider is not root).
    pub fn is_rootless(&self) -> bool {
        self.inner.privilege.is_rootless()
    }

    /// The state directory (workloads, host key).
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// How limits are enforced on this host.
    pub fn cgroup_mode(&self) -> &cgroup::Mode {
        &self.inner.cgroups
    }

    /// The cgroup directories workload `name` uses (whether or not they exist).
    pub fn cgroup_dirs(&self, name: &str) -> Vec<PathBuf> {
        self.inner.cgroups.dirs(name)
    }

    /// Host pid of the workload's init, if it runs.
    pub async fn init_pid(&self, name: &str) -> Option<i32> {
        let live = self.inner.live.lock().await;
        match live.get(name) {
            Some(l) if l.init.alive() => Some(l.init.pid),
            _ => None,
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.inner.state_dir.join(name)
    }

    fn check_host(&self) -> String {
        match self.inner.cfg.listen_address.as_str() {
            "0.0.0.0" => "127.0.0.1".into(),
            "::" => "::1".into(),
            other => other.to_string(),
        }
    }

    /// Bind the workload's port; a taken port is `Capacity`.
    fn bind(&self, port: u16) -> Result<std::net::TcpListener, BackendError> {
        let ip: std::net::IpAddr = self
            .inner
            .cfg
            .listen_address
            .parse()
            .map_err(|e| api("listen_address", e))?;
        std::net::TcpListener::bind((ip, port)).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                BackendError::Capacity(format!("host port {port} is already in use"))
            } else {
                api(&format!("cannot listen on port {port}"), e)
            }
        })
    }

    /// Bind, retrying for a while: a previous backend in this process may still be closing it.
    async fn bind_patiently(&self, port: u16) -> Result<std::net::TcpListener, BackendError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.bind(port) {
                Err(BackendError::Capacity(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => return other,
            }
        }
    }

    /// A workload slot (host id range) no other workload in the state directory uses. Slots are
    /// drawn at random so that two providers on one host (two state directories) almost never
    /// pick the same range.
    fn free_host_base(&self) -> Result<u32, BackendError> {
        let used: Vec<u32> = self.metas().into_iter().map(|m| m.host_base).collect();
        let start = rand::random::<u32>() % SLOTS;
        (0..SLOTS)
            .map(|i| HOST_ID_BASE + ((start + i) % SLOTS) * jail::ID_RANGE)
            .find(|b| !used.contains(b))
            .ok_or_else(|| BackendError::Capacity("no free sandbox id range".into()))
    }

    /// Every workload record in the state directory.
    fn metas(&self) -> Vec<Meta> {
        let Ok(entries) = std::fs::read_dir(&self.inner.state_dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| Meta::load(&e.path()))
            .filter(|m| is_valid_name(&m.name))
            .collect()
    }

    /// Write the generated files the jail binds over the host's.
    fn write_etc(dir: &Path, meta: &Meta, shell: &str, dns: bool) -> io::Result<()> {
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc)?;
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755))?;
        let uid = jail::INSIDE_UID;
        let user = &meta.user;
        let files = [
            ("passwd", format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\n{user}:x:{uid}:{uid}:{user}:/home/{user}:{shell}\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            )),
            ("group", format!("root:x:0:\n{user}:x:{uid}:\nnogroup:x:65534:\n")),
            ("hosts", format!(
                "127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
                name = meta.name
            )),
            ("hostname", format!("{}\n", meta.name)),
        ];
        let resolv = format!("nameserver {}\n", network::DNS);
        let files = files
            .into_iter()
            .chain(dns.then_some(("resolv.conf", resolv)));
        for (f, text) in files {
            let p = etc.join(f);
            std::fs::write(&p, text)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }

    /// The jail description of a workload.
    fn jail_spec(&self, meta: &Meta, groups: Vec<PathBuf>) -> jail::JailSpec {
        let dir = self.dir(&meta.name);
        jail::JailSpec {
            privilege: self.inner.privilege.clone(),
            name: meta.name.clone(),
            user: meta.user.clone(),
            host_base: meta.host_base,
            home: dir.join("home"),
            etc: dir.join("etc"),
            cgroup_procs: groups,
            rlimits: self.inner.cgroups.rlimits(&meta.tier),
            tmp_mb: meta.tier.memory_mb,
            nproc: self.inner.cfg.pids_max,
            secrets: self.inner.secrets.clone(),
            empty_file: self.inner.state_dir.join(EMPTY_FILE),
        }
    }

    fn procs_files(&self, name: &str) -> Vec<PathBuf> {
        self.inner
            .cgroups
            .dirs(name)
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Give a running init's network namespace its egress filter and outbound access (nothing
    /// with `network = "none"`).
    async fn connect_net(&self, init: &jail::Init) -> Result<Option<network::Net>, BackendError> {
        let Some((tools, rules)) = &self.inner.net else {
            return Ok(None);
        };
        let rootless = self.inner.privilege.is_rootless();
        network::load_filter(tools, init.pid, rootless, rules)
            .await
            .map_err(|e| api("network", e))?;
        network::attach(tools, init.pid, rootless)
            .await
            .map(Some)
            .map_err(|e| api("network", e))
    }

    /// Serve SSH for a workload whose init runs, on an already bound listener.
    fn serve(
        &self,
        meta: &Meta,
        init: &jail::Init,
        listener: std::net::TcpListener,
    ) -> Result<ssh::Server, BackendError> {
        let public_key = match &meta.public_key {
            Some(k) => Some(auth::parse_public_key(k).map_err(BackendError::Api)?),
            None => None,
        };
        let workload = Arc::new(ssh::Workload {
            name: meta.name.clone(),
            user: meta.user.clone(),
            password: meta.password.clone(),
            public_key,
            init: init.handle(),
            cgroup_procs: self.procs_files(&meta.name),
            rlimits: self.inner.cgroups.rlimits(&meta.tier),
            nproc: self.inner.cfg.pids_max,
            shell: self.inner.shell.clone(),
            host_uid: match &self.inner.privilege {
                jail::Privilege::Root => meta.host_base + jail::INSIDE_UID,
                jail::Privilege::Rootless(r) => r.uid,
            },
            privilege: self.inner.privilege.clone(),
        });
        ssh::Server::start(listener, workload, Arc::clone(&self.inner.ssh_config))
            .map_err(|e| api("cannot start the SSH listener", e))
    }

    /// Make cgroups, start the init and the SSH listener, and wait for the banner. On failure
    /// everything this started is undone (the state directory is left to the caller).
    async fn start(
        &self,
        meta: &mut Meta,
        listener: std::net::TcpListener,
    ) -> Result<Live, BackendError> {
        let name = meta.name.clone();
        if meta.rootless != self.inner.privilege.is_rootless() {
            return Err(BackendError::Api(format!(
                "workload {name} was made by a {} provider; this one runs {}",
                if meta.rootless { "rootless" } else { "root" },
                if meta.rootless { "as root" } else { "rootless" },
            )));
        }
        let cg = self.inner.cgroups.clone();
        let (tier, pids) = (meta.tier.clone(), self.inner.cfg.pids_max);
        let n = name.clone();
        let groups = tokio::task::spawn_blocking(move || {
            // Leftovers of a crash would make mkdir fail: clear them first.
            let _ = cg.remove(&n);
            cg.create(&n, &tier, pids)
        })
        .await
        .map_err(|e| api("cgroup", e))?
        .map_err(|e| api("cannot set up the cgroup", e))?;
        let spec = self.jail_spec(meta, groups);
        let rt = tokio::runtime::Handle::current();
        let started = tokio::task::spawn_blocking(move || jail::start_init(&spec, &rt))
            .await
            .map_err(|e| api("init", e))
            .and_then(|r| r.map_err(|e| api("cannot start the workload", e)));
        let undo_cgroup = |cg: cgroup::Mode, n: String| async move {
            let _ = tokio::task::spawn_blocking(move || cg.remove(&n)).await;
        };
        let init = match started {
            Ok(i) => i,
            Err(e) => {
                undo_cgroup(self.inner.cgroups.clone(), name).await;
                return Err(e);
            }
        };
        let ready = async {
            meta.init_pid = Some(init.pid);
            meta.init_start = Some(init.start_time);
            meta.stopped = false;
            meta.save(&self.dir(&name))
                .map_err(|e| api("cannot write the workload metadata", e))?;
            let net = self.connect_net(&init).await?;
            let server = self.serve(meta, &init, listener)?;
            match wait_for_banner(&self.check_host(), meta.host_port, Duration::from_secs(10)).await
            {
                Ok(()) => Ok((server, net)),
                Err(e) => {
                    server.shutdown().await;
                    Err(e)
                }
            }
        };
        match ready.await {
            Ok((server, _net)) => Ok(Live { init, server, _net }),
            Err(e) => {
                let i = init;
                let _ = tokio::task::spawn_blocking(move || i.kill(Duration::from_secs(5))).await;
                undo_cgroup(self.inner.cgroups.clone(), name).await;
                Err(e)
            }
        }
    }

    /// Kill a workload's processes (its live entry, or an adopted init from the metadata) and
    /// remove its cgroups.
    async fn kill(&self, live: Option<Live>, meta: Option<&Meta>) {
        let init = match live {
            Some(l) => {
                l.server.shutdown().await;
                Some(l.init)
            }
            None => meta.and_then(|m| jail::Init::adopt(m.init_pid?, m.init_start?)),
        };
        if let Some(init) = init {
            let _ = tokio::task::spawn_blocking(move || init.kill(Duration::from_secs(10))).await;
        }
        if let Some(m) = meta {
            let cg = self.inner.cgroups.clone();
            let n = m.name.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || cg.remove(&n)).await {
                tracing::warn!(workload = %m.name, "cannot remove the cgroup: {e}");
            }
        }
    }

    /// At open: serve workloads whose init still runs, restart those that died unexpectedly.
    async fn recover(&self) {
        let Ok(entries) = std::fs::read_dir(&self.inner.state_dir) else {
            return;
        };
        let now = crate::provider::now_secs();
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Some(mut meta) = Meta::load(&path) else {
                // A create that crashed before writing its record: nobody can own it.
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_valid_name(&name) {
                    tracing::warn!(workload = %name, "removing a half-made sandbox workload");
                    let _ = std::fs::remove_dir_all(&path);
                }
                continue;
            };
            if !is_valid_name(&meta.name) || path.file_name() != Some(meta.name.as_ref()) {
                continue;
            }
            let name = meta.name.clone();
            let adopted = meta
                .init_pid
                .zip(meta.init_start)
                .and_then(|(p, s)| jail::Init::adopt(p, s));
            let mut live = self.inner.live.lock().await;
            match adopted {
                Some(init) => {
                    let served = match self.bind_patiently(meta.host_port).await {
                        Ok(l) => match self.connect_net(&init).await {
                            Ok(net) => self.serve(&meta, &init, l).map(|s| (s, net)),
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    };
                    match served {
                        Ok((server, _net)) => {
                            tracing::info!(workload = %name, "sandbox workload re-adopted");
                            live.insert(name, Live { init, server, _net });
                        }
                        Err(e) => {
                            tracing::error!(workload = %name, "cannot serve a re-adopted workload: {e}")
                        }
                    }
                }
                None if !meta.stopped && meta.expires_at > now => {
                    let restarted = match self.bind_patiently(meta.host_port).await {
                        Ok(l) => self.start(&mut meta, l).await,
                        Err(e) => Err(e),
                    };
                    match restarted {
                        Ok(l) => {
                            tracing::info!(workload = %name, "sandbox workload restarted after its init was lost");
                            live.insert(name, l);
                        }
                        Err(e) => {
                            tracing::error!(workload = %name, "cannot restart a lost workload: {e}")
                        }
                    }
                }
                None => {
                    // Stopped: make sure nothing of it lingers.
                    drop(live);
                    self.kill(None, Some(&meta)).await;
                }
            }
        }
    }

    async fn make(
        &self,
        spec: &WorkloadSpec,
        listener: std::net::TcpListener,
    ) -> Result<Live, BackendError> {
        let dir = self.dir(&spec.name);
        let host_base = self.free_host_base()?;
        let mut meta = Meta {
            name: spec.name.clone(),
            provider_id: spec.provider_id.clone(),
            user: spec.ssh_username.clone(),
            host_port: spec.host_port.unwrap_or_default(),
            expires_at: spec.expires_at,
            tier: spec.tier.clone(),
            image: spec.image.clone(),
            password: PasswordHash::new(spec.ssh_password.expose()),
            public_key: spec.ssh_public_key.as_ref().map(|k| k.trim().to_string()),
            host_base,
            init_pid: None,
            init_start: None,
            stopped: false,
            rootless: self.inner.privilege.is_rootless(),
        };
        let home = dir.join("home");
        let owner = host_base + jail::INSIDE_UID;
        let rootless = meta.rootless;
        let shell = self.inner.shell.to_string_lossy().into_owned();
        let dns = self.inner.net.is_some();
        let prepared = (|| -> io::Result<()> {
            std::fs::create_dir(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            std::fs::create_dir(&home)?;
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755))?;
            // Rootless: the buyer is the provider's own uid, which owns it already.
            if !rootless {
                std::os::unix::fs::chown(&home, Some(owner), Some(owner))?;
            }
            Self::write_etc(&dir, &meta, &shell, dns)?;
            meta.save(&dir)
        })();
        prepared.map_err(|e| api("cannot prepare the workload directory", e))?;
        self.start(&mut meta, listener).await
    }
}

/// The secret paths that exist, canonical, not under what every jail covers anyway (`/home`,
/// `/tmp`, `/run`, `/dev`), each once, outermost first.
fn secret_paths<'a>(candidates: impl Iterator<Item = &'a PathBuf>) -> Vec<PathBuf> {
    const COVERED: &[&str] = &["/home", "/tmp", "/run", "/dev", "/proc"];
    let mut v: Vec<PathBuf> = candidates
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter(|p| p.parent().is_some())
        .filter(|p| !COVERED.iter().any(|c| p.starts_with(c)))
        .collect();
    v.sort();
    v.dedup();
    let all = v.clone();
    v.retain(|d| !all.iter().any(|o| o != d && d.starts_with(o)));
    v
}

/// One line per way rootless mode is weaker than root mode on this host.
fn log_rootless(r: &jail::Rootless, cgroups: &cgroup::Mode) {
    tracing::info!(
        uid = r.uid,
        "sandbox: rootless mode: workloads run in user namespaces as this user's uid; its data \
         directory and home are hidden inside"
    );
    match cgroups {
        cgroup::Mode::V2 { root } => tracing::info!(
            "sandbox: limits through the delegated cgroup {}",
            root.display()
        ),
        _ => tracing::warn!(
            "sandbox (rootless): no writable delegated cgroup v2 subtree (run the provider as a \
             systemd user service or under `systemd-run --user --scope`), so limits are weaker: \
             RLIMIT_AS per process only, no CPU limit (RLIMIT_CPU is not a rate) and no task \
             limit (RLIMIT_NPROC would count every process of this user)"
        ),
    }
    if !r.own_proc {
        tracing::warn!(
            "sandbox (rootless): the kernel refuses a fresh /proc here (a masked /proc, as in \
             containers): workloads get an empty /proc, so ps and similar tools do not work"
        );
    }
    if !r.scope_sockets {
        tracing::warn!(
            "sandbox (rootless): Landlock cannot scope abstract unix sockets on this kernel \
             (needs Linux 6.12): workloads can reach this user's abstract sockets (X11, some \
             D-Bus buses), which may trust them by uid"
        );
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Listeners close (their `Server`s cancel on drop); inits keep running, so a new backend
        // on the same state directory re-adopts them.
        tracing::debug!(state_dir = %self.state_dir.display(), "sandbox backend closed");
    }
}

#[async_trait]
impl Backend for SandboxBackend {
    fn host_key_fingerprints(&self, _name: &str) -> Vec<String> {
        // One host key serves every workload of this backend (see `HOST_KEY_FILE`).
        self.inner
            .ssh_config
            .keys
            .iter()
            .map(|k| {
                k.public_key()
                    .fingerprint(russh::keys::HashAlg::Sha256)
                    .to_string()
            })
            .collect()
    }

    fn login_key_types(&self) -> &'static [&'static str] {
        // The embedded SSH server is built without RSA (see `auth::parse_public_key`).
        &[
            "ssh-ed25519",
            "ecdsa-sha2-nistp256",
            "ecdsa-sha2-nistp384",
            "ecdsa-sha2-nistp521",
        ]
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Sandbox
    }

    async fn create(&self, spec: &WorkloadSpec) -> Result<Endpoint, BackendError> {
        let t0 = Instant::now();
        let Some(port) = spec.host_port else {
            return Err(BackendError::Api(
                "the sandbox needs a host port reserved by the core".into(),
            ));
        };
        if !is_valid_name(&spec.name) {
            return Err(BackendError::Api(format!(
                "invalid workload name {:?}",
                spec.name
            )));
        }
        if !is_valid_user(&spec.ssh_username) {
            return Err(BackendError::Api("invalid SSH username".into()));
        }
        if spec.ssh_password.expose().chars().any(|c| c.is_control()) {
            return Err(BackendError::Api(
                "the SSH password holds characters the backend cannot set".into(),
            ));
        }
        if let Some(k) = &spec.ssh_public_key {
            auth::parse_public_key(k).map_err(BackendError::Api)?;
        }
        // The port first: a taken one fails before anything is made, and holding it means no
        // one can take it between here and the SSH server.
        let listener = self.bind(port)?;
        let mut live = self.inner.live.lock().await;
        let dir = self.dir(&spec.name);
        if dir.exists() {
            return Err(BackendError::Api(format!(
                "workload {} already exists",
                spec.name
            )));
        }
        match self.make(spec, listener).await {
            Ok(l) => {
                live.insert(spec.name.clone(), l);
                tracing::info!(
                    name = %spec.name,
                    port,
                    ms = t0.elapsed().as_millis() as u64,
                    "sandbox workload ready for SSH"
                );
                Ok(Endpoint::on_provider_host(port))
            }
            Err(e) => {
                tracing::warn!(name = %spec.name, "sandbox create failed, rolling back: {e}");
                let meta = Meta::load(&dir);
                self.kill(None, meta.as_ref()).await;
                let cg = self.inner.cgroups.clone();
                let n = spec.name.clone();
                let _ = tokio::task::spawn_blocking(move || cg.remove(&n)).await;
                if let Err(re) = std::fs::remove_dir_all(&dir) {
                    if re.kind() != io::ErrorKind::NotFound {
                        tracing::error!(name = %spec.name, "sandbox rollback left {}: {re}", dir.display());
                    }
                }
                Err(e)
            }
        }
    }

    async fn extend(&self, name: &str, expires_at: u64) -> Result<(), BackendError> {
        if !is_valid_name(name) {
            return Err(BackendError::NotFound(name.to_string()));
        }
        let _live = self.inner.live.lock().await;
        let dir = self.dir(name);
        let mut meta = Meta::load(&dir).ok_or_else(|| BackendError::NotFound(name.to_string()))?;
        meta.expires_at = expires_at;
        meta.save(&dir)
            .map_err(|e| api("cannot write the workload metadata", e))
    }

    async fn stop(&self, name: &str) -> Result<(), BackendError> {
        if !is_valid_name(name) {
            return Err(BackendError::NotFound(name.to_string()));
        }
        let mut live = self.inner.live.lock().await;
        let dir = self.dir(name);
        let mut meta = Meta::load(&dir).ok_or_else(|| BackendError::NotFound(name.to_string()))?;
        self.kill(live.remove(name), Some(&meta)).await;
        meta.stopped = true;
        meta.init_pid = None;
        meta.init_start = None;
        meta.save(&dir)
            .map_err(|e| api("cannot write the workload metadata", e))?;
        tracing::info!(workload = %name, "sandbox workload stopped");
        Ok(())
    }

    async fn resume(&self, name: &str) -> Result<Endpoint, BackendError> {
        if !is_valid_name(name) {
            return Err(BackendError::NotFound(name.to_string()));
        }
        let mut live = self.inner.live.lock().await;
        let dir = self.dir(name);
        let mut meta = Meta::load(&dir).ok_or_else(|| BackendError::NotFound(name.to_string()))?;
        if live.get(name).is_some_and(|l| l.init.alive()) {
            return Ok(Endpoint::on_provider_host(meta.host_port));
        }
        // Whatever is left of a previous run (a half-dead tree) goes first.
        self.kill(live.remove(name), Some(&meta)).await;
        let listener = self.bind(meta.host_port)?;
        let l = self.start(&mut meta, listener).await?;
        live.insert(name.to_string(), l);
        tracing::info!(workload = %name, "sandbox workload resumed");
        Ok(Endpoint::on_provider_host(meta.host_port))
    }

    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        if !is_valid_name(name) {
            return Ok(());
        }
        let mut live = self.inner.live.lock().await;
        let dir = self.dir(name);
        let meta = Meta::load(&dir);
        self.kill(live.remove(name), meta.as_ref()).await;
        let cg = self.inner.cgroups.clone();
        let n = name.to_string();
        tokio::task::spawn_blocking(move || cg.remove(&n))
            .await
            .map_err(|e| api("cgroup", e))?
            .map_err(|e| api("cannot remove the cgroup", e))?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(api(&format!("cannot remove {}", dir.display()), e)),
        }
    }

    async fn inspect(&self, name: &str) -> Result<Option<WorkloadInfo>, BackendError> {
        if !is_valid_name(name) {
            return Ok(None);
        }
        let live = self.inner.live.lock().await;
        let Some(meta) = Meta::load(&self.dir(name)) else {
            return Ok(None);
        };
        Ok(Some(self.info(&live, &meta)))
    }

    async fn list(&self, provider_id: &str) -> Result<Vec<WorkloadInfo>, BackendError> {
        let live = self.inner.live.lock().await;
        let mut out: Vec<WorkloadInfo> = self
            .metas()
            .iter()
            .filter(|m| m.provider_id == provider_id)
            .map(|m| self.info(&live, m))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

impl SandboxBackend {
    fn info(&self, live: &HashMap<String, Live>, meta: &Meta) -> WorkloadInfo {
        let running = match live.get(&meta.name) {
            Some(l) => l.init.alive(),
            None => meta
                .init_pid
                .zip(meta.init_start)
                .is_some_and(|(p, s)| jail::is_alive(p, s)),
        };
        WorkloadInfo {
            name: meta.name.clone(),
            state: if running {
                WorkloadState::Running
            } else {
                WorkloadState::Stopped
            },
            endpoint: Some(Endpoint::on_provider_host(meta.host_port)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_users_are_checked() {
        assert!(is_valid_name("pg-0123abcd"));
        assert!(!is_valid_name("../x"));
        assert!(!is_valid_name("Upper"));
        assert!(!is_valid_name(""));
        assert!(is_valid_user("alice"));
        assert!(is_valid_user("_svc-1"));
        assert!(!is_valid_user("root"));
        assert!(!is_valid_user("a b"));
        assert!(!is_valid_user("x:0:0"));
    }

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c: SandboxConfig = toml::from_str("").unwrap();
        assert_eq!(c, SandboxConfig::default());
        assert_eq!(c.listen_address, "127.0.0.1");
        assert_eq!(c.pids_max, 512);
        assert!(toml::from_str::<SandboxConfig>("listen = \"0.0.0.0\"").is_err());
    }

    #[test]
    fn host_id_ranges_fit_in_a_uid() {
        let last = u64::from(HOST_ID_BASE) + u64::from(SLOTS) * u64::from(jail::ID_RANGE);
        assert!(last < u64::from(u32::MAX));
    }
}
