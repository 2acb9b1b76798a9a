//! The jail: Linux namespaces around a workload's process tree, set up with raw syscalls.
//!
//! (This file is long — over 2k lines — on purpose: everything that runs between fork and exec
//! lives here, next to the plans it reads, so the one rule for that code — syscalls on data
//! prepared before the fork, nothing else — can be checked in one place.)
//!
//! Each workload has one long-lived **init** process, and every SSH session is started *inside the
//! init's namespaces*. The init is what makes a workload "running": while it lives, its
//! namespaces (and the mounts, hostname and process table in them) exist; killing it kills every
//! process of the workload at once, because when the init of a pid namespace dies the kernel
//! kills everything else in that namespace.
//!
//! # How the init is made
//!
//! The provider is a multi-threaded tokio program, and most namespace calls have rules about
//! threads, so the order matters:
//!
//! 1. A fresh, short-lived OS thread calls `unshare(CLONE_NEWPID)`. That only changes which pid
//!    namespace the thread's *children* get (allowed in a multi-threaded process), so the next
//!    process it forks is pid 1 of a new pid namespace — and still the provider's child, which
//!    tokio reaps.
//! 2. That thread forks the init through `Command::pre_exec`. In the (single-threaded) child, as
//!    host root and before exec:
//!    - it joins the workload's cgroups (writes `0` to each `cgroup.procs`), so nothing it will
//!      ever start runs outside the limits;
//!    - `unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET)`, brings up the new
//!      network namespace's loopback (outbound access is added later from outside, see
//!      [`super::network`]), makes every mount private, then makes the whole host tree
//!      **read-only, nosuid and nodev** in one call (`mount_setattr` with `AT_RECURSIVE`, Linux ≥
//!      5.12; older kernels get a remount of each mount point);
//!    - mounts what must be writable or private on top: tmpfs on `/tmp`, `/run` and `/home`
//!      (hiding the host's), a minimal `/dev` (a small tmpfs with six devices bound from the
//!      host's, a private devpts instance, `/dev/shm`; read-only once populated), the workload's home from the state directory bound at
//!      `/home/<user>`, generated `/etc/passwd`, `/etc/group`, `/etc/hosts` and `/etc/hostname`
//!      bound read-only over the host's, and a fresh `/proc` for the new pid namespace (so `ps`
//!      shows the workload's own processes only); sets the hostname to the workload name;
//!    - only then `unshare(CLONE_NEWUSER)`, and waits while a helper thread in the provider
//!      writes its uid/gid maps (inside `0..65536` → host `base..base+65536`, a range of host ids
//!      no one else uses);
//!    - becomes `nobody` inside, drops every capability, sets `no_new_privs`, installs the
//!      seccomp deny list ([`super::seccomp`]), and execs
//!      `/bin/sh` running a tiny reaper loop (a shell waiting on children reaps every orphan
//!      re-parented to pid 1).
//!
//! Creating the user namespace *last* means the mount, uts and ipc namespaces belong to the
//! host's user namespace: nobody inside the jail can ever hold a capability over them, even in
//! theory, so the read-only mounts cannot be undone from inside.
//!
//! # How a session joins
//!
//! Again a fresh thread: `setns(pidfd, CLONE_NEWPID)` on the init's pidfd, then a fork whose
//! `pre_exec` joins the cgroups, `setns` into the init's mount/uts/ipc namespaces (as host root),
//! then into its user namespace, switches to the buyer's uid/gid inside (1000), drops every
//! capability, sets `no_new_privs`, changes to the home directory, starts a new session (and takes
//! the PTY as controlling terminal) and execs the user's shell. The environment is built from
//! scratch by the caller.
//!
//! Everything the forked child touches is prepared before the fork (C strings, open file
//! descriptors), and the child makes only plain syscalls, as `pre_exec` requires.
//!
//! # Rootless mode (the provider is an ordinary user)
//!
//! Without root the order above is impossible: an unprivileged process may not make a pid, mount,
//! uts or ipc namespace, nor join one, unless it first makes (or joins) a *user* namespace in
//! which it holds capabilities. And a multi-threaded process may do neither (`unshare` and
//! `setns` of a user namespace need a single-threaded caller). So [`Privilege::Rootless`] works
//! with two forks instead (see [`super::rootless`] for how the mode is detected and why):
//!
//! - **Init.** The forked child (single-threaded) calls `unshare(CLONE_NEWUSER | CLONE_NEWNS |
//!   CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID)` — the user namespace first, the others owned by
//!   it — and writes its own id maps: `setgroups` = `deny`, then the provider's uid and gid mapped
//!   to 1000 inside, a single id each (the only mapping an unprivileged process may write; no
//!   `newuidmap`, no subordinate ids). Then it forks once more with `CLONE_PARENT`: the grandchild
//!   is pid 1 of the new pid namespace and a direct child of the provider (which reaps it, see
//!   [`Init::kill`]); the middle process reports the grandchild's host pid and exits. The
//!   grandchild builds the same filesystem view as in root mode, with two differences: bind
//!   mounts get their flags with `mount_setattr` on the detached clone (a remount of a mount
//!   copied from the host must repeat every flag the kernel locked), and the provider's own
//!   directories (data directory, `$HOME`) are covered with an empty read-only tmpfs, because the
//!   workload runs as the provider's host uid and could otherwise read them. It runs as uid 1000
//!   (the only mapped id; there is no `nobody`), drops every capability, sets `no_new_privs`,
//!   and, where Landlock can (ABI ≥ 6), confines itself so that abstract unix sockets of the host
//!   (X11, D-Bus) cannot be reached: they check the peer's uid, which is the provider's.
//! - **Sessions.** The forked child joins the init's user namespace and, with the capabilities
//!   that gives it, its mount, uts, ipc and pid namespaces in one `setns` on the pidfd; switches
//!   user, drops capabilities, and forks with `CLONE_PARENT` (joining a pid namespace only
//!   affects children). The grandchild execs the shell; [`SessionChild`] waits for it through
//!   its pidfd.
//!
//! The namespaces then belong to the workload's user namespace instead of the host's, so what
//! keeps the view read-only is the kernel's locking of mounts copied into a less privileged
//! namespace (they cannot be made writable again or unmounted to reveal what they cover), and
//! that nothing inside holds a capability after exec.
//!
//! Kernel requirements: Linux ≥ 5.8 (`pidfd_open`, `setns` on a pidfd, `open_tree`/`move_mount`
//! for bind mounts whose source a tmpfs is about to cover); `mount_setattr` (≥ 5.12) is used for
//! the read-only view when present, a remount of every mount point otherwise. Rootless mode
//! needs `mount_setattr` (there is no safe remount fallback there, see below).

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cgroup::Rlimits;
use super::seccomp::Filter;

/// The buyer's uid and gid inside the jail.
pub const INSIDE_UID: u32 = 1000;
/// What the init runs as inside the jail (`nobody`).
pub const INSIDE_NOBODY: u32 = 65534;
/// Size of the id range each workload maps.
pub const ID_RANGE: u32 = 65536;

/// The reaper the init execs: pid 1 of a pid namespace must reap orphans, and a shell waiting in
/// `wait` reaps every child it gets, known or not. No buyer input is in it.
const INIT_SCRIPT: &str =
    "trap '' HUP INT TERM QUIT USR1 USR2; while :; do sleep 2147483647 & wait; done";

/// Only one jail fork at a time in this process, so the pipes one fork hands its child are never
/// inherited (and held open) by another's.
static FORK_LOCK: Mutex<()> = Mutex::new(());

/// Why a jail could not be made or entered; `stage` names the step.
#[derive(Debug)]
pub struct JailError {
    pub stage: &'static str,
    pub source: io::Error,
}

impl std::fmt::Display for JailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sandbox setup failed at {}: {}", self.stage, self.source)
    }
}

impl std::error::Error for JailError {}

fn err(stage: &'static str, source: io::Error) -> JailError {
    JailError { stage, source }
}

/// Who makes the jails: see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Privilege {
    /// The provider is root.
    Root,
    /// The provider is an ordinary user.
    Rootless(Rootless),
}

impl Privilege {
    pub fn is_rootless(&self) -> bool {
        matches!(self, Privilege::Rootless(_))
    }
}

/// What rootless jails can do on this host (found by [`super::rootless::detect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootless {
    /// The provider's effective uid and gid: mapped to 1000 inside.
    pub uid: u32,
    pub gid: u32,
    /// A fresh `/proc` can be mounted. Where it cannot (a `/proc` partly masked, as in most
    /// containers) an empty read-only tmpfs covers the host's instead.
    pub own_proc: bool,
    /// Landlock can scope abstract unix sockets (ABI ≥ 6).
    pub scope_sockets: bool,
    /// Host directories to cover with an empty read-only tmpfs inside.
    pub hide: Vec<PathBuf>,
}

/// What the init of one workload needs.
#[derive(Debug, Clone)]
pub struct JailSpec {
    /// Root or rootless.
    pub privilege: Privilege,
    /// Workload name: the hostname inside.
    pub name: String,
    /// Login name inside (already validated).
    pub user: String,
    /// Host uid/gid that uid/gid 0 inside maps to.
    pub host_base: u32,
    /// Host path of the writable home directory.
    pub home: PathBuf,
    /// Host directory holding the generated `passwd`, `group`, `hosts`, `hostname`.
    pub etc: PathBuf,
    /// `cgroup.procs` files to join (empty in rlimit mode).
    pub cgroup_procs: Vec<PathBuf>,
    /// Per-process limits when there are no cgroups.
    pub rlimits: Option<Rlimits>,
    /// Size of the `/tmp` and `/dev/shm` tmpfs, MiB.
    pub tmp_mb: u32,
    /// Task limit in rlimit mode (`RLIMIT_NPROC`: the workload's host uids are its own).
    pub nproc: u32,
    /// Secret files and directories of the provider (keys, config) to cover inside, in root
    /// and rootless mode alike: directories with an empty tmpfs, files with `empty_file`.
    pub secrets: Vec<PathBuf>,
    /// An empty, read-only file of the provider's, bound over secret files.
    pub empty_file: PathBuf,
}

/// A running init process.
#[derive(Debug)]
pub struct Init {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`: tells this process from a later one with the same pid.
    pub start_time: u64,
    pidfd: Arc<OwnedFd>,
    /// Present when this provider process started it (tokio then reaps it).
    _child: Option<tokio::process::Child>,
    /// A rootless init is this process's child without tokio knowing: [`Init::kill`] reaps it.
    reap: bool,
}

impl Init {
    /// Find a running init again (after a provider restart) from its pid and start time.
    pub fn adopt(pid: i32, start_time: u64) -> Option<Init> {
        if pid <= 1 {
            return None;
        }
        let pidfd = pidfd_open(pid).ok()?;
        // Checked after opening the pidfd: if it still matches, the pidfd is that process.
        if process_start(pid)? != start_time {
            return None;
        }
        let init = Init {
            pid,
            start_time,
            pidfd: Arc::new(pidfd),
            _child: None,
            reap: false,
        };
        init.alive().then_some(init)
    }

    /// Whether the init still runs (not exited, not a zombie).
    pub fn alive(&self) -> bool {
        is_alive(self.pid, self.start_time)
    }

    /// A handle sessions use to join this init's namespaces.
    pub fn handle(&self) -> InitHandle {
        InitHandle {
            pid: self.pid,
            pidfd: Arc::clone(&self.pidfd),
        }
    }

    /// Kill the init, and with it every process in its pid namespace; wait until it is gone.
    pub fn kill(&self, timeout: Duration) {
        // SAFETY: plain syscall on a pidfd we own.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
        let deadline = Instant::now() + timeout;
        while self.alive() && Instant::now() < deadline {
            let mut pfd = libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd. A pidfd polls readable once the process has exited.
            unsafe {
                libc::poll(&mut pfd, 1, 50);
            }
        }
        if self.reap {
            reap_pidfd(&self.pidfd);
        }
    }
}

/// Reap an exited child through its pidfd (never another process that reuses the pid); a
/// child still running, or not ours, is left alone.
fn reap_pidfd(pidfd: &OwnedFd) {
    // SAFETY: siginfo_t is plain data; waitid writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall on a pidfd we own, with a valid siginfo buffer.
    unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        );
    }
}

/// Enough of an init to start sessions in its namespaces.
#[derive(Debug, Clone)]
pub struct InitHandle {
    pid: i32,
    pidfd: Arc<OwnedFd>,
}

impl InitHandle {
    /// The `ptmx` of the workload's own devpts, as the host reaches it: opening it makes a new
    /// terminal there, visible to this workload only.
    pub fn ptmx(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root/dev/pts/ptmx", self.pid))
    }
}

/// Whether `pid` runs and is the process that started at `start_time`.
pub fn is_alive(pid: i32, start_time: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    match parse_stat(&stat) {
        Some((state, start)) => start == start_time && state != 'Z' && state != 'X',
        None => false,
    }
}

/// Start time (field 22) of `pid`.
pub fn process_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, t)| t)
}

/// State and start time from a `/proc/<pid>/stat` line. The command name may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new fd we then own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn cstring(s: impl AsRef<[u8]>, stage: &'static str) -> Result<CString, JailError> {
    CString::new(s.as_ref().to_vec()).map_err(|_| {
        err(
            stage,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "NUL byte in a path or argument",
            ),
        )
    })
}

fn cpath(p: &Path, stage: &'static str) -> Result<CString, JailError> {
    cstring(p.as_os_str().as_bytes(), stage)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn open_write(p: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
        .map(OwnedFd::from)
}

// ---------------------------------------------------------------------------------------------
// Raw steps run in the forked child (no allocation, no locks: syscalls on prepared data only)
// ---------------------------------------------------------------------------------------------

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const OPEN_TREE_CLONE: libc::c_uint = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
/// Most bind mounts one jail makes (home, five /etc files, six devices, secret files).
const MAX_BINDS: usize = 24;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Stage codes the child reports through the error pipe.
const STAGES: &[&str] = &[
    "joining the cgroup",
    "setting rlimits",
    "finding the host pid",
    "unsharing namespaces",
    "making mounts private",
    "making the host read-only",
    "setting the hostname",
    "mounting tmpfs",
    "mounting the home directory",
    "mounting /etc files",
    "mounting /proc",
    "creating the user namespace",
    "waiting for the id maps",
    "switching user",
    "dropping capabilities",
    "changing directory",
    "joining the namespaces",
    "taking the terminal",
    "writing the id maps",
    "forking",
    "restricting abstract sockets",
    "hiding the provider's directories",
    "bringing up loopback",
    "mounting /dev",
    "installing the seccomp filter",
];

fn stage_name(code: u8) -> &'static str {
    STAGES.get(usize::from(code)).copied().unwrap_or("unknown")
}

fn stage_code(name: &str) -> u8 {
    STAGES.iter().position(|s| *s == name).unwrap_or(255) as u8
}

/// Report `stage` and errno on the error pipe and turn them into the pre_exec error.
fn fail(err_fd: RawFd, stage: &'static str) -> io::Error {
    let e = io::Error::last_os_error();
    let code = e.raw_os_error().unwrap_or(libc::EIO);
    let mut buf = [0u8; 5];
    buf[0] = stage_code(stage);
    buf[1..].copy_from_slice(&code.to_le_bytes());
    // SAFETY: writing 5 bytes from a stack buffer to a pipe we hold.
    unsafe {
        libc::write(err_fd, buf.as_ptr().cast(), buf.len());
    }
    io::Error::from_raw_os_error(code)
}

fn check(rc: libc::c_int) -> Result<(), ()> {
    if rc < 0 {
        Err(())
    } else {
        Ok(())
    }
}

/// Join cgroups by writing "0" (the writer itself) to each `cgroup.procs`.
fn join_cgroups(fds: &[RawFd]) -> Result<(), ()> {
    for fd in fds {
        // SAFETY: write of a 1-byte static buffer to an fd opened before the fork.
        if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(());
        }
    }
    Ok(())
}

fn set_rlimits(r: Option<Rlimits>, nproc: u32) -> Result<(), ()> {
    if let Some(r) = r {
        let as_lim = libc::rlimit {
            rlim_cur: r.address_space,
            rlim_max: r.address_space,
        };
        let np = libc::rlimit {
            rlim_cur: u64::from(nproc),
            rlim_max: u64::from(nproc),
        };
        // SAFETY: valid rlimit structs on the stack.
        unsafe {
            check(libc::setrlimit(libc::RLIMIT_AS, &as_lim))?;
            check(libc::setrlimit(libc::RLIMIT_NPROC, &np))?;
        }
    }
    Ok(())
}

/// Rootless rlimits: only `RLIMIT_AS`, never above the hard limit we already have (an ordinary
/// user may lower limits, not raise them). `RLIMIT_NPROC` is left alone: it counts every
/// process of the real uid — the provider's user, with all its other processes — so it would
/// limit the wrong thing.
fn set_rlimits_rootless(r: Option<Rlimits>) -> Result<(), ()> {
    if let Some(r) = r {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid rlimit structs on the stack.
        unsafe {
            check(libc::getrlimit(libc::RLIMIT_AS, &mut cur))?;
            let v = r.address_space.min(cur.rlim_max);
            let lim = libc::rlimit {
                rlim_cur: v,
                rlim_max: v,
            };
            check(libc::setrlimit(libc::RLIMIT_AS, &lim))?;
        }
    }
    Ok(())
}

/// Rootless: become uid/gid 1000 inside (the provider's ids, already ours through the map).
/// Supplementary groups cannot be changed once `setgroups` is denied; they stay as they were.
fn become_user_rootless() -> Result<(), ()> {
    // SAFETY: plain credential syscalls.
    unsafe {
        check(libc::setresgid(INSIDE_UID, INSIDE_UID, INSIDE_UID))?;
        check(libc::setresuid(INSIDE_UID, INSIDE_UID, INSIDE_UID))?;
    }
    Ok(())
}

/// Landlock ABI version, 0 where Landlock is missing or disabled.
pub fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the version query takes no ruleset and returns a number or -1.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    v.max(0)
}

/// Confine the calling process (and everything it starts) so that it cannot connect to abstract
/// unix sockets made outside its Landlock domain. Needs `no_new_privs` and Landlock ABI ≥ 6.
fn restrict_abstract_sockets() -> Result<(), ()> {
    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
        handled_access_net: u64,
        scoped: u64,
    }
    const LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1;
    let attr = RulesetAttr {
        handled_access_fs: 0,
        handled_access_net: 0,
        scoped: LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET,
    };
    // SAFETY: plain syscalls with a valid attribute struct; the ruleset fd is closed after use.
    unsafe {
        let fd = libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        );
        if fd < 0 {
            return Err(());
        }
        let rc = libc::syscall(libc::SYS_landlock_restrict_self, fd as libc::c_int, 0u32);
        libc::close(fd as libc::c_int);
        if rc != 0 {
            return Err(());
        }
    }
    Ok(())
}

/// `fork` as a raw `clone`, optionally with `CLONE_PARENT` (the child becomes our parent's
/// child). Returns the child's pid (in our pid namespace), 0 in the child, -1 on error.
fn raw_fork(parent: bool) -> libc::pid_t {
    let flags = libc::SIGCHLD as libc::c_ulong
        | if parent {
            libc::CLONE_PARENT as libc::c_ulong
        } else {
            0
        };
    // SAFETY: clone without CLONE_VM and without a new stack behaves like fork; every other
    // argument is unused for these flags.
    unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) as libc::pid_t }
}

/// Write `data` to the file at `path` (a prepared C string), all at once.
fn write_file(path: &std::ffi::CStr, data: &[u8]) -> Result<(), ()> {
    // SAFETY: open/write/close on a prepared path and buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let saved = *libc::__errno_location();
        libc::close(fd);
        *libc::__errno_location() = saved;
        if n != data.len() as isize {
            return Err(());
        }
    }
    Ok(())
}

/// Rootless: map the provider's uid and gid (the maps are prepared text) to 1000 inside the user
/// namespace this process just made. `setgroups` must be denied before an unprivileged process
/// may write a gid map.
fn write_own_maps(uid_map: &[u8], gid_map: &[u8]) -> Result<(), ()> {
    write_file(c"/proc/self/setgroups", b"deny")?;
    write_file(c"/proc/self/uid_map", uid_map)?;
    write_file(c"/proc/self/gid_map", gid_map)
}

/// Become `uid`/`gid` inside the user namespace just joined or made, with no capabilities left
/// and no way to gain any (`no_new_privs`; every mount is nosuid too).
fn become_user(uid: u32, gid: u32, groups: &[libc::gid_t]) -> Result<(), ()> {
    // SAFETY: plain credential syscalls with valid pointers.
    unsafe {
        check(libc::setgroups(groups.len(), groups.as_ptr()))?;
        check(libc::setresgid(gid, gid, gid))?;
        check(libc::setresuid(uid, uid, uid))?;
    }
    Ok(())
}

fn drop_capabilities() -> Result<(), ()> {
    // SAFETY: prctl/capset with valid arguments; a cap number past the last is EINVAL, ignored.
    unsafe {
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let data = [
            Data {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
            Data {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
        ];
        if libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) != 0 {
            return Err(());
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(())
}

fn mark_fds_cloexec() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags; failure (old kernel) is fine
    // because every fd this program opens is close-on-exec anyway.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
}

/// Wait up to `ms` for `fd` to be readable.
fn poll_in(fd: RawFd, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

// ---------------------------------------------------------------------------------------------
// Starting an init
// ---------------------------------------------------------------------------------------------

/// A mount the child makes, fully prepared.
struct MountStep {
    source: CString,
    target: CString,
    fstype: Option<CString>,
    flags: libc::c_ulong,
    data: Option<CString>,
    /// Flags of a bind remount right after (0: none).
    remount: libc::c_ulong,
    /// The same flags as `mount_setattr` attributes to set and clear (rootless binds).
    attr_set: u64,
    attr_clr: u64,
    /// Directories to create first, outermost first (inside a tmpfs made by an earlier step).
    parents: Vec<CString>,
    /// What to create as the mount point itself.
    make: Make,
    /// Skip quietly if the mount point does not exist on this host, or the mount fails.
    optional: bool,
    stage: &'static str,
}

/// A mount point a bind step creates before mounting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Make {
    Nothing,
    Dir,
    File,
}

/// Everything the init's child needs, prepared before the fork.
struct InitPlan {
    cgroup_fds: Vec<OwnedFd>,
    rlimits: Option<Rlimits>,
    nproc: u32,
    hostname: CString,
    mounts: Vec<MountStep>,
    /// Mount points for the remount fallback (kernels without `mount_setattr`).
    remount_points: Vec<(CString, libc::c_ulong)>,
    /// `(target, link)` symbolic links made in `/dev`.
    dev_links: Vec<(CString, CString)>,
    /// Installed last before exec.
    seccomp: Filter,
    ready_w: OwnedFd,
    go_r: OwnedFd,
    err_w: OwnedFd,
    /// Parent-side ends the child must close so that EOF works both ways.
    ready_r: RawFd,
    go_w: RawFd,
    /// Present in rootless mode.
    rootless: Option<RootlessPlan>,
}

/// The rootless part of an init's plan.
struct RootlessPlan {
    /// `/proc/self/uid_map` and `gid_map` text.
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    scope_sockets: bool,
}

impl RootlessPlan {
    fn new(r: &Rootless) -> RootlessPlan {
        RootlessPlan {
            uid_map: format!("{INSIDE_UID} {} 1\n", r.uid).into_bytes(),
            gid_map: format!("{INSIDE_UID} {} 1\n", r.gid).into_bytes(),
            scope_sockets: r.scope_sockets,
        }
    }
}

fn tmpfs(target: &str, data: String, stage: &'static str) -> Result<MountStep, JailError> {
    Ok(MountStep {
        source: cstring("tmpfs", stage)?,
        target: cstring(target, stage)?,
        fstype: Some(cstring("tmpfs", stage)?),
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some(cstring(data, stage)?),
        remount: 0,
        attr_set: 0,
        attr_clr: 0,
        parents: Vec::new(),
        make: Make::Nothing,
        optional: false,
        stage,
    })
}

/// A bind mount. The child clones the source with `open_tree` *before* any tmpfs is mounted
/// (the state directory may well live under `/tmp` or `/home`, which the tmpfs mounts cover),
/// and attaches the clone with `move_mount` afterwards.
fn bind(
    source: &Path,
    target: &str,
    remount: libc::c_ulong,
    make: Make,
    optional: bool,
    stage: &'static str,
) -> Result<MountStep, JailError> {
    Ok(MountStep {
        source: cpath(source, stage)?,
        target: cstring(target, stage)?,
        fstype: None,
        flags: libc::MS_BIND,
        data: None,
        remount: libc::MS_REMOUNT | libc::MS_BIND | remount,
        attr_set: mount_attrs(remount),
        attr_clr: (MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV) & !mount_attrs(remount),
        parents: Vec::new(),
        make,
        optional,
        stage,
    })
}

/// Devices a workload gets, bound from the host's `/dev` into its own (everything else the
/// host has there is absent, and device nodes elsewhere are dead: the host view is `nodev`).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Symbolic links in the workload's `/dev`.
const DEV_LINKS: &[(&str, &str)] = &[
    ("pts/ptmx", "/dev/ptmx"),
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];

/// A minimal `/dev`: a small tmpfs with the [`DEVICES`] bound in, a private devpts instance on
/// `/dev/pts` (the workload's terminals only; the provider opens its `ptmx` through
/// `/proc/<init>/root`), and `/dev/shm`. It is made read-only once populated.
fn dev_mounts(shm: String) -> Result<Vec<MountStep>, JailError> {
    let stage = "mounting /dev";
    let mut dev = tmpfs("/dev", "mode=755,size=64k".into(), stage)?;
    dev.flags |= libc::MS_NOEXEC;
    let mut m = vec![dev];
    for d in DEVICES {
        let host = format!("/dev/{d}");
        m.push(bind(
            Path::new(&host),
            &host,
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Make::File,
            false,
            stage,
        )?);
    }
    let mut pts = tmpfs(
        "/dev/pts",
        "newinstance,ptmxmode=0666,mode=0620".into(),
        stage,
    )?;
    pts.source = cstring("devpts", stage)?;
    pts.fstype = Some(cstring("devpts", stage)?);
    pts.flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    pts.make = Make::Dir;
    let mut shm = tmpfs("/dev/shm", shm, "mounting tmpfs")?;
    shm.make = Make::Dir;
    m.extend([pts, shm]);
    Ok(m)
}

fn plan_mounts(spec: &JailSpec) -> Result<Vec<MountStep>, JailError> {
    let tmp = format!("mode=1777,size={}m", spec.tmp_mb.max(1));
    let home = format!("/home/{}", spec.user);
    let ro = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    let mut m = vec![tmpfs("/tmp", tmp.clone(), "mounting tmpfs")?];
    m.extend(dev_mounts(tmp)?);
    m.extend([
        tmpfs("/run", "mode=755,size=4m".into(), "mounting tmpfs")?,
        tmpfs("/home", "mode=755,size=1m".into(), "mounting tmpfs")?,
        bind(
            &spec.home,
            &home,
            libc::MS_NOSUID | libc::MS_NODEV,
            Make::Dir,
            false,
            "mounting the home directory",
        )?,
    ]);
    for (file, optional) in [
        ("passwd", false),
        ("group", false),
        ("hosts", true),
        ("hostname", true),
    ] {
        m.push(bind(
            &spec.etc.join(file),
            &format!("/etc/{file}"),
            ro,
            Make::Nothing,
            optional,
            "mounting /etc files",
        )?);
    }
    // The workload's resolver is slirp4netns's forwarder (its own file, bound over the host's).
    // Hosts with systemd-resolved point /etc/resolv.conf into /run, which the jail covers with
    // a tmpfs: the file goes at that path there.
    let resolv = spec.etc.join("resolv.conf");
    match std::fs::canonicalize("/etc/resolv.conf") {
        Ok(real) if real.starts_with("/run/") && resolv.is_file() => {
            let stage = "mounting /etc files";
            let mut step = bind(&resolv, "/", ro, Make::File, true, stage)?;
            step.target = cpath(&real, stage)?;
            let mut dirs: Vec<&Path> = real.ancestors().skip(1).collect();
            dirs.retain(|d| d.starts_with("/run/") && *d != Path::new("/run"));
            dirs.reverse();
            step.parents = dirs
                .into_iter()
                .map(|d| cpath(d, stage))
                .collect::<Result<_, _>>()?;
            m.push(step);
        }
        _ if resolv.is_file() => m.push(bind(
            &resolv,
            "/etc/resolv.conf",
            ro,
            Make::Nothing,
            true,
            "mounting /etc files",
        )?),
        _ => {}
    }
    m.push(MountStep {
        source: cstring("proc", "mounting /proc")?,
        target: cstring("/proc", "mounting /proc")?,
        fstype: Some(cstring("proc", "mounting /proc")?),
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: None,
        remount: 0,
        attr_set: 0,
        attr_clr: 0,
        parents: Vec::new(),
        make: Make::Nothing,
        optional: false,
        stage: "mounting /proc",
    });
    if let Privilege::Rootless(r) = &spec.privilege {
        rootless_mounts(r, &mut m)?;
    }
    let stage = "hiding the provider's directories";
    let ro = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // Rootless mode has already covered the provider's own directories whole (above); a secret
    // inside one of them is hidden with it, and its path no longer exists to be covered again.
    let covered: &[PathBuf] = match &spec.privilege {
        Privilege::Rootless(r) => &r.hide,
        _ => &[],
    };
    for secret in uncovered(&spec.secrets, covered)
        .iter()
        .take(MAX_SECRET_FILES)
    {
        if secret.is_dir() {
            let mut step = tmpfs("/", "mode=000,size=4k".into(), stage)?;
            step.target = cpath(secret, stage)?;
            step.flags = ro;
            m.push(step);
        } else {
            let mut step = bind(&spec.empty_file, "/", ro, Make::Nothing, false, stage)?;
            step.target = cpath(secret, stage)?;
            m.push(step);
        }
    }
    Ok(m)
}

/// The secrets still to cover once the directories `covered` are hidden whole, as the real
/// paths the mounts must land on. Compared canonical: a secret that is a symlink inside a
/// hidden directory pointing elsewhere is not hidden with it (the file it names is not), and a
/// mount on the symlink's own path would no longer resolve once its directory is covered.
fn uncovered(secrets: &[PathBuf], covered: &[PathBuf]) -> Vec<PathBuf> {
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let covered: Vec<PathBuf> = covered.iter().map(|d| real(d)).collect();
    secrets
        .iter()
        .map(|s| real(s))
        .filter(|s| !covered.iter().any(|d| s.starts_with(d)))
        .collect()
}

/// Most secret paths one jail covers (each file is a bind mount).
const MAX_SECRET_FILES: usize = 8;

/// `MS_*` flags of a bind remount as `MOUNT_ATTR_*` bits.
fn mount_attrs(flags: libc::c_ulong) -> u64 {
    [
        (libc::MS_RDONLY, MOUNT_ATTR_RDONLY),
        (libc::MS_NOSUID, MOUNT_ATTR_NOSUID),
        (libc::MS_NODEV, MOUNT_ATTR_NODEV),
        (libc::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
    ]
    .into_iter()
    .filter(|(ms, _)| flags & ms != 0)
    .fold(0, |acc, (_, attr)| acc | attr)
}

/// Rootless changes to the plan: the provider's own directories are covered first (the
/// workload runs as the provider's uid), and where no fresh `/proc` may be mounted, an empty
/// one hides the host's (whose entries for the provider's own processes would be the
/// workload's to read and write).
fn rootless_mounts(r: &Rootless, m: &mut Vec<MountStep>) -> Result<(), JailError> {
    let ro = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mut hidden = Vec::new();
    for dir in &r.hide {
        let stage = "hiding the provider's directories";
        let mut step = tmpfs(&dir.to_string_lossy(), "mode=000,size=4k".into(), stage)?;
        step.target = cpath(dir, stage)?;
        step.flags = ro;
        hidden.push(step);
    }
    m.splice(0..0, hidden);
    if !r.own_proc {
        if let Some(step) = m.iter_mut().find(|s| s.stage == "mounting /proc") {
            step.source = cstring("tmpfs", "mounting /proc")?;
            step.fstype = Some(cstring("tmpfs", "mounting /proc")?);
            step.flags = ro;
            step.data = Some(cstring("mode=555,size=4k", "mounting /proc")?);
        }
    }
    Ok(())
}

/// Mount points of this (the provider's) mount namespace with the flags a read-only bind
/// remount must keep, for kernels without `mount_setattr`.
fn remount_points() -> Vec<(CString, libc::c_ulong)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let point = unescape_mountinfo(f.get(4)?);
            let mut flags = libc::MS_REMOUNT
                | libc::MS_BIND
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV;
            for o in f.get(5)?.split(',') {
                flags |= match o {
                    "nodev" => libc::MS_NODEV,
                    "noexec" => libc::MS_NOEXEC,
                    "noatime" => libc::MS_NOATIME,
                    "nodiratime" => libc::MS_NODIRATIME,
                    "relatime" => libc::MS_RELATIME,
                    _ => 0,
                };
            }
            Some((CString::new(point).ok()?, flags))
        })
        .collect()
}

fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The filesystem view and hostname, made in the init's fresh mount and uts namespaces: every
/// mount private, the host read-only and nosuid, then the planned mounts on top.
fn build_view(p: &InitPlan, e: RawFd) -> io::Result<()> {
    let rootless = p.rootless.is_some();
    // SAFETY (whole function): raw syscalls on data prepared before the fork; no allocation.
    unsafe {
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(fail(e, "making mounts private"));
        }
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let rc = libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        );
        if rc != 0 {
            // Rootless, a remount must repeat every flag the kernel locked, and a mount point it
            // misses would stay writable: no fallback there (Linux ≥ 5.12 is required).
            if rootless || *libc::__errno_location() != libc::ENOSYS {
                return Err(fail(e, "making the host read-only"));
            }
            // Old kernel: remount each mount point read-only, parents first. A point hidden by
            // a later mount fails harmlessly; "/" itself must succeed.
            for (i, (point, flags)) in p.remount_points.iter().enumerate() {
                let rc = libc::mount(
                    std::ptr::null(),
                    point.as_ptr(),
                    std::ptr::null(),
                    *flags,
                    std::ptr::null(),
                );
                if rc != 0 && i == 0 {
                    return Err(fail(e, "making the host read-only"));
                }
            }
        }
        if libc::sethostname(p.hostname.as_ptr(), p.hostname.as_bytes().len()) != 0 {
            return Err(fail(e, "setting the hostname"));
        }
        // Clone every bind source first, while its path is still visible.
        let mut trees: [RawFd; MAX_BINDS] = [-1; MAX_BINDS];
        for (i, m) in p.mounts.iter().filter(|m| m.fstype.is_none()).enumerate() {
            if i >= MAX_BINDS || (m.optional && libc::access(m.target.as_ptr(), libc::F_OK) != 0) {
                continue;
            }
            let fd = libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                m.source.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            );
            if fd < 0 {
                return Err(fail(e, m.stage));
            }
            trees[i] = fd as RawFd;
        }
        let mut bind_index = 0;
        for m in &p.mounts {
            // Rootless binds get their flags on the detached clone instead of by a remount.
            let mut flags_set = false;
            let rc = match &m.fstype {
                Some(fstype) => {
                    if m.make == Make::Dir {
                        libc::mkdir(m.target.as_ptr(), 0o755);
                    }
                    libc::mount(
                        m.source.as_ptr(),
                        m.target.as_ptr(),
                        fstype.as_ptr(),
                        m.flags,
                        m.data
                            .as_ref()
                            .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
                    )
                }
                None => {
                    let tree = trees.get(bind_index).copied().unwrap_or(-1);
                    bind_index += 1;
                    if tree < 0 {
                        continue; // an optional target this host does not have
                    }
                    for d in &m.parents {
                        libc::mkdir(d.as_ptr(), 0o755);
                    }
                    match m.make {
                        Make::Nothing => {}
                        Make::Dir => {
                            libc::mkdir(m.target.as_ptr(), 0o755);
                        }
                        Make::File => {
                            let fd = libc::open(
                                m.target.as_ptr(),
                                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                                0o644,
                            );
                            if fd >= 0 {
                                libc::close(fd);
                            }
                        }
                    }
                    if rootless && m.remount != 0 {
                        let attr = MountAttr {
                            attr_set: m.attr_set,
                            attr_clr: m.attr_clr,
                            propagation: 0,
                            userns_fd: 0,
                        };
                        let rc = libc::syscall(
                            libc::SYS_mount_setattr,
                            tree,
                            c"".as_ptr(),
                            libc::AT_EMPTY_PATH as libc::c_uint,
                            &attr as *const MountAttr,
                            std::mem::size_of::<MountAttr>(),
                        );
                        if rc != 0 {
                            let errno = *libc::__errno_location();
                            libc::close(tree);
                            if m.optional {
                                continue;
                            }
                            *libc::__errno_location() = errno;
                            return Err(fail(e, m.stage));
                        }
                        flags_set = true;
                    }
                    let rc = libc::syscall(
                        libc::SYS_move_mount,
                        tree,
                        c"".as_ptr(),
                        libc::AT_FDCWD,
                        m.target.as_ptr(),
                        MOVE_MOUNT_F_EMPTY_PATH,
                    ) as libc::c_int;
                    libc::close(tree);
                    rc
                }
            };
            if rc != 0 && m.optional {
                continue;
            }
            if rc != 0 {
                return Err(fail(e, m.stage));
            }
            if m.remount != 0
                && !flags_set
                && libc::mount(
                    std::ptr::null(),
                    m.target.as_ptr(),
                    std::ptr::null(),
                    m.remount,
                    std::ptr::null(),
                ) != 0
            {
                return Err(fail(e, m.stage));
            }
        }
        for (target, link) in &p.dev_links {
            if libc::symlink(target.as_ptr(), link.as_ptr()) != 0 {
                return Err(fail(e, "mounting /dev"));
            }
        }
        // Populated: /dev itself becomes read-only (its devices and tmpfs stay as they are).
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let rc = libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c"/dev".as_ptr(),
            0 as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        );
        if rc != 0
            && (rootless
                || libc::mount(
                    std::ptr::null(),
                    c"/dev".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT
                        | libc::MS_BIND
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    std::ptr::null(),
                ) != 0)
        {
            return Err(fail(e, "mounting /dev"));
        }
    }
    Ok(())
}

/// Bring up the loopback interface of the fresh network namespace this process is in.
fn loopback_up() -> Result<(), ()> {
    // SAFETY: a datagram socket and two interface ioctls on a zeroed ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let saved = *libc::__errno_location();
        libc::close(fd);
        *libc::__errno_location() = saved;
        check(rc)
    }
}

/// The init's side of the fork: runs in the child, between fork and exec.
fn init_child(p: &InitPlan) -> io::Result<()> {
    let e = p.err_w.as_raw_fd();
    // SAFETY (whole function): raw syscalls on data prepared before the fork; no allocation.
    unsafe {
        libc::close(p.ready_r);
        libc::close(p.go_w);
        let fds: [RawFd; 3] = [
            p.cgroup_fds.first().map_or(-1, |f| f.as_raw_fd()),
            p.cgroup_fds.get(1).map_or(-1, |f| f.as_raw_fd()),
            p.cgroup_fds.get(2).map_or(-1, |f| f.as_raw_fd()),
        ];
        let n = p.cgroup_fds.len().min(3);
        if join_cgroups(&fds[..n]).is_err() {
            return Err(fail(e, "joining the cgroup"));
        }
        if set_rlimits(p.rlimits, p.nproc).is_err() {
            return Err(fail(e, "setting rlimits"));
        }
        // The OOM killer must pick the buyer's hungry process, never the init (whose death
        // would end the whole workload). Best effort: needs CAP_SYS_RESOURCE, which we have.
        let oom = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if oom >= 0 {
            libc::write(oom, b"-1000".as_ptr().cast(), 5);
            libc::close(oom);
        }
        // Our pid as the host sees it: the host's /proc is still mounted, and its /proc/self
        // names us in the host's pid namespace (getpid() would say 1).
        let mut buf = [0u8; 24];
        let len = libc::readlink(c"/proc/self".as_ptr(), buf.as_mut_ptr().cast(), buf.len());
        if len <= 0 {
            return Err(fail(e, "finding the host pid"));
        }
        let mut host_pid: i32 = 0;
        for b in &buf[..len as usize] {
            if !b.is_ascii_digit() {
                *libc::__errno_location() = libc::EINVAL;
                return Err(fail(e, "finding the host pid"));
            }
            host_pid = host_pid
                .saturating_mul(10)
                .saturating_add(i32::from(b - b'0'));
        }
        if libc::unshare(
            libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET,
        ) != 0
        {
            return Err(fail(e, "unsharing namespaces"));
        }
        if loopback_up().is_err() {
            return Err(fail(e, "bringing up loopback"));
        }
        build_view(p, e)?;
        if libc::unshare(libc::CLONE_NEWUSER) != 0 {
            return Err(fail(e, "creating the user namespace"));
        }
        let pid_bytes = host_pid.to_le_bytes();
        if libc::write(p.ready_w.as_raw_fd(), pid_bytes.as_ptr().cast(), 4) != 4 {
            return Err(fail(e, "waiting for the id maps"));
        }
        let mut go = [0u8; 1];
        if !poll_in(p.go_r.as_raw_fd(), 20_000)
            || libc::read(p.go_r.as_raw_fd(), go.as_mut_ptr().cast(), 1) != 1
            || go[0] != b'1'
        {
            *libc::__errno_location() = libc::ETIMEDOUT;
            return Err(fail(e, "waiting for the id maps"));
        }
        if become_user(INSIDE_NOBODY, INSIDE_NOBODY, &[]).is_err() {
            return Err(fail(e, "switching user"));
        }
        if drop_capabilities().is_err() {
            return Err(fail(e, "dropping capabilities"));
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Err(fail(e, "changing directory"));
        }
        if p.seccomp.install().is_err() {
            return Err(fail(e, "installing the seccomp filter"));
        }
        mark_fds_cloexec();
    }
    Ok(())
}

/// The rootless init's side of the fork (see the module docs): the middle process makes the
/// namespaces and maps, forks the init with `CLONE_PARENT`, reports its pid and exits; the init
/// builds the view and drops everything before exec.
fn rootless_init_child(p: &InitPlan, r: &RootlessPlan) -> io::Result<()> {
    let e = p.err_w.as_raw_fd();
    // SAFETY (whole function): raw syscalls on data prepared before the fork; no allocation.
    unsafe {
        libc::close(p.ready_r);
        libc::close(p.go_w);
        let fds: [RawFd; 3] = [
            p.cgroup_fds.first().map_or(-1, |f| f.as_raw_fd()),
            p.cgroup_fds.get(1).map_or(-1, |f| f.as_raw_fd()),
            p.cgroup_fds.get(2).map_or(-1, |f| f.as_raw_fd()),
        ];
        if join_cgroups(&fds[..p.cgroup_fds.len().min(3)]).is_err() {
            return Err(fail(e, "joining the cgroup"));
        }
        if set_rlimits_rootless(p.rlimits).is_err() {
            return Err(fail(e, "setting rlimits"));
        }
        if libc::unshare(
            libc::CLONE_NEWUSER
                | libc::CLONE_NEWNS
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWNET,
        ) != 0
        {
            return Err(fail(e, "creating the user namespace"));
        }
        if write_own_maps(&r.uid_map, &r.gid_map).is_err() {
            return Err(fail(e, "writing the id maps"));
        }
        if loopback_up().is_err() {
            return Err(fail(e, "bringing up loopback"));
        }
        let pid = raw_fork(true);
        if pid < 0 {
            return Err(fail(e, "forking"));
        }
        if pid > 0 {
            // The middle process: report the init's host pid, and go.
            let bytes = pid.to_le_bytes();
            libc::write(p.ready_w.as_raw_fd(), bytes.as_ptr().cast(), 4);
            libc::_exit(0);
        }
        build_view(p, e)?;
        if become_user_rootless().is_err() {
            return Err(fail(e, "switching user"));
        }
        if drop_capabilities().is_err() {
            return Err(fail(e, "dropping capabilities"));
        }
        if r.scope_sockets && restrict_abstract_sockets().is_err() {
            return Err(fail(e, "restricting abstract sockets"));
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Err(fail(e, "changing directory"));
        }
        if p.seccomp.install().is_err() {
            return Err(fail(e, "installing the seccomp filter"));
        }
        mark_fds_cloexec();
    }
    Ok(())
}

/// Read a pid a forked child reported on `fd`, if it did.
fn read_pid(fd: &OwnedFd) -> Option<i32> {
    if !poll_in(fd.as_raw_fd(), 0) {
        return None;
    }
    let mut buf = [0u8; 4];
    // SAFETY: reading into a stack buffer from our pipe.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), 4) };
    (n == 4).then(|| i32::from_le_bytes(buf)).filter(|p| *p > 1)
}

/// Reap a child we know has exited or is about to (blocking).
fn reap_pid(pid: i32) {
    let mut status = 0;
    // SAFETY: plain syscall on our own child.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
    }
}

/// The parent's ends of an init's pipes, and the plan its child runs.
struct Prepared {
    plan: Arc<InitPlan>,
    ready_r: OwnedFd,
    go_w: OwnedFd,
    err_r: OwnedFd,
}

/// Everything an init needs, made before the fork (the child may only make syscalls).
fn prepare_init(
    spec: &JailSpec,
    nproc: u32,
    rootless: Option<RootlessPlan>,
) -> Result<Prepared, JailError> {
    let cgroup_fds = spec
        .cgroup_procs
        .iter()
        .map(|p| open_write(p))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| err("joining the cgroup", e))?;
    let (ready_r, ready_w) = pipe().map_err(|e| err("creating pipes", e))?;
    let (go_r, go_w) = pipe().map_err(|e| err("creating pipes", e))?;
    let (err_r, err_w) = pipe().map_err(|e| err("creating pipes", e))?;
    let mounts = plan_mounts(spec)?;
    let plan = Arc::new(InitPlan {
        cgroup_fds,
        rlimits: spec.rlimits,
        nproc,
        hostname: cstring(&spec.name, "setting the hostname")?,
        mounts,
        remount_points: remount_points(),
        dev_links: DEV_LINKS
            .iter()
            .map(|(t, l)| Ok((cstring(t, "mounting /dev")?, cstring(l, "mounting /dev")?)))
            .collect::<Result<_, JailError>>()?,
        seccomp: Filter::new(),
        ready_w,
        go_r,
        err_w,
        ready_r: ready_r.as_raw_fd(),
        go_w: go_w.as_raw_fd(),
        rootless,
    });
    Ok(Prepared {
        plan,
        ready_r,
        go_w,
        err_r,
    })
}

/// The init process: a constant script under `/bin/sh`, clean environment, no stdio.
fn init_command() -> std::process::Command {
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg0("paygress-init")
        .arg("-c")
        .arg(INIT_SCRIPT)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn start_init_rootless(spec: &JailSpec, r: &Rootless) -> Result<Init, JailError> {
    let Prepared {
        plan,
        ready_r,
        go_w,
        err_r,
    } = prepare_init(spec, 0, Some(RootlessPlan::new(r)))?;
    let mut cmd = init_command();
    let child_plan = Arc::clone(&plan);
    // SAFETY: rootless_init_child only makes syscalls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || match &child_plan.rootless {
            Some(r) => rootless_init_child(&child_plan, r),
            None => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        });
    }
    let _fork = FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    // spawn returns once the middle process is gone and the init has exec'd (or failed).
    let spawned = cmd.spawn();
    drop(cmd);
    drop(plan);
    drop(go_w);
    let pid = read_pid(&ready_r);
    let mut middle = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Some(pid) = pid {
                reap_pid(pid);
            }
            return Err(match read_stage(&err_r) {
                Some((stage, source)) => err(stage, source),
                None => err("forking", e),
            });
        }
    };
    let _ = middle.wait();
    let pid = pid.ok_or_else(|| err("forking", io::Error::from(io::ErrorKind::UnexpectedEof)))?;
    let finish = || -> Result<Init, JailError> {
        let pidfd = pidfd_open(pid).map_err(|e| err("opening a pidfd", e))?;
        let start_time = process_start(pid)
            .ok_or_else(|| err("reading the init", io::Error::from(io::ErrorKind::NotFound)))?;
        Ok(Init {
            pid,
            start_time,
            pidfd: Arc::new(pidfd),
            _child: None,
            reap: true,
        })
    };
    finish().inspect_err(|_| {
        // SAFETY: plain syscalls on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        reap_pid(pid);
    })
}

/// Read the child's stage report, if it wrote one.
fn read_stage(err_r: &OwnedFd) -> Option<(&'static str, io::Error)> {
    let mut buf = [0u8; 5];
    if !poll_in(err_r.as_raw_fd(), 0) {
        return None;
    }
    // SAFETY: reading into a stack buffer from our pipe.
    let n = unsafe { libc::read(err_r.as_raw_fd(), buf.as_mut_ptr().cast(), 5) };
    if n != 5 {
        return None;
    }
    let code = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
    Some((stage_name(buf[0]), io::Error::from_raw_os_error(code)))
}

/// The provider side of the id maps: wait for the child's host pid, write its maps, say go.
fn write_maps(ready_r: OwnedFd, go_w: OwnedFd, host_base: u32) -> Result<(), JailError> {
    let stage = "waiting for the id maps";
    if !poll_in(ready_r.as_raw_fd(), 20_000) {
        return Err(err(stage, io::Error::from(io::ErrorKind::TimedOut)));
    }
    let mut buf = [0u8; 4];
    // SAFETY: reading into a stack buffer from our pipe.
    let n = unsafe { libc::read(ready_r.as_raw_fd(), buf.as_mut_ptr().cast(), 4) };
    if n != 4 {
        return Err(err(stage, io::Error::from(io::ErrorKind::UnexpectedEof)));
    }
    let pid = i32::from_le_bytes(buf);
    let map = format!("0 {host_base} {ID_RANGE}\n");
    std::fs::write(format!("/proc/{pid}/uid_map"), &map).map_err(|e| err(stage, e))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), &map).map_err(|e| err(stage, e))?;
    // SAFETY: writing one byte from a static buffer to our pipe.
    if unsafe { libc::write(go_w.as_raw_fd(), b"1".as_ptr().cast(), 1) } != 1 {
        return Err(err(stage, io::Error::last_os_error()));
    }
    Ok(())
}

/// Make the namespaces and start the init of a workload. Blocking: call from a blocking task.
/// `rt` is the runtime that will reap the process.
pub fn start_init(spec: &JailSpec, rt: &tokio::runtime::Handle) -> Result<Init, JailError> {
    if let Privilege::Rootless(r) = &spec.privilege {
        return start_init_rootless(spec, r);
    }
    let Prepared {
        plan,
        ready_r,
        go_w,
        err_r,
    } = prepare_init(spec, spec.nproc, None)?;
    let base = spec.host_base;
    let _fork = FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let helper = std::thread::spawn(move || write_maps(ready_r, go_w, base));

    let child_plan = Arc::clone(&plan);
    let rt = rt.clone();
    let spawned = std::thread::spawn(move || -> io::Result<tokio::process::Child> {
        // This thread's children get a new pid namespace; the thread ends right after.
        // SAFETY: plain syscall; affects only this short-lived thread's future children.
        if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let _rt = rt.enter();
        let mut cmd = init_command();
        // SAFETY: init_child only makes syscalls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || init_child(&child_plan));
        }
        tokio::process::Command::from(cmd)
            .kill_on_drop(false)
            .spawn()
    })
    .join()
    .map_err(|_| err("forking", io::Error::other("spawn thread panicked")))?;
    // The child's copies are its own now; ours must go so the helper and we see EOF.
    drop(plan);
    let mapped = helper.join().map_err(|_| {
        err(
            "waiting for the id maps",
            io::Error::other("helper panicked"),
        )
    });
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return Err(match read_stage(&err_r) {
                Some((stage, source)) => err(stage, source),
                None => err("forking", e),
            })
        }
    };
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let finish = || -> Result<Init, JailError> {
        mapped??;
        let pidfd = pidfd_open(pid).map_err(|e| err("opening a pidfd", e))?;
        let start_time = process_start(pid)
            .ok_or_else(|| err("reading the init", io::Error::from(io::ErrorKind::NotFound)))?;
        Ok(Init {
            pid,
            start_time,
            pidfd: Arc::new(pidfd),
            _child: None,
            reap: false,
        })
    };
    match finish() {
        Ok(mut init) => {
            init._child = Some(child);
            Ok(init)
        }
        Err(e) => {
            // SAFETY: plain syscall on our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            drop(child);
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Starting a session inside a running init's namespaces
// ---------------------------------------------------------------------------------------------

/// A command to run inside a jail as the buyer.
#[derive(Debug)]
pub struct SessionCmd {
    pub program: PathBuf,
    /// `argv[0]` (`-bash` for a login shell).
    pub arg0: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    /// Working directory inside (the home); `/` if it cannot be entered.
    pub cwd: PathBuf,
    /// Take stdin as the controlling terminal (a PTY session).
    pub pty: bool,
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

struct SessionPlan {
    pidfd: RawFd,
    cgroup_fds: Vec<OwnedFd>,
    rlimits: Option<Rlimits>,
    nproc: u32,
    cwd: CString,
    pty: bool,
    err_w: OwnedFd,
    seccomp: Filter,
    /// Rootless: where the middle process reports the session's pid, and whether to scope
    /// abstract sockets.
    rootless: Option<(OwnedFd, bool)>,
}

fn session_child(p: &SessionPlan) -> io::Result<()> {
    let e = p.err_w.as_raw_fd();
    // SAFETY (whole function): raw syscalls on data prepared before the fork; no allocation.
    unsafe {
        let fds: [RawFd; 3] = [
            p.cgroup_fds.first().map_or(-1, |f| f.as_raw_fd()),
            p.cgroup_fds.get(1).map_or(-1, |f| f.as_raw_fd()),
            p.cgroup_fds.get(2).map_or(-1, |f| f.as_raw_fd()),
        ];
        if join_cgroups(&fds[..p.cgroup_fds.len().min(3)]).is_err() {
            return Err(fail(e, "joining the cgroup"));
        }
        if let Some((pid_w, scope_sockets)) = &p.rootless {
            return rootless_session_child(p, e, pid_w.as_raw_fd(), *scope_sockets);
        }
        if set_rlimits(p.rlimits, p.nproc).is_err() {
            return Err(fail(e, "setting rlimits"));
        }
        // Mount, uts and ipc belong to the host's user namespace: join them as host root first,
        // then the workload's user namespace.
        if libc::setns(
            p.pidfd,
            libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET,
        ) != 0
            || libc::setns(p.pidfd, libc::CLONE_NEWUSER) != 0
        {
            return Err(fail(e, "joining the namespaces"));
        }
        if become_user(INSIDE_UID, INSIDE_UID, &[INSIDE_UID]).is_err() {
            return Err(fail(e, "switching user"));
        }
        if drop_capabilities().is_err() {
            return Err(fail(e, "dropping capabilities"));
        }
        if libc::chdir(p.cwd.as_ptr()) != 0 && libc::chdir(c"/".as_ptr()) != 0 {
            return Err(fail(e, "changing directory"));
        }
        if libc::setsid() < 0 {
            return Err(fail(e, "taking the terminal"));
        }
        if p.pty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            return Err(fail(e, "taking the terminal"));
        }
        if p.seccomp.install().is_err() {
            return Err(fail(e, "installing the seccomp filter"));
        }
        mark_fds_cloexec();
    }
    Ok(())
}

/// Rootless session (see the module docs): join every namespace through the user namespace,
/// become the buyer, fork the session with `CLONE_PARENT` so it is born in the pid namespace,
/// report its pid from the middle process and exit there.
fn rootless_session_child(
    p: &SessionPlan,
    e: RawFd,
    pid_w: RawFd,
    scope_sockets: bool,
) -> io::Result<()> {
    // SAFETY (whole function): raw syscalls on data prepared before the fork; no allocation.
    unsafe {
        if set_rlimits_rootless(p.rlimits).is_err() {
            return Err(fail(e, "setting rlimits"));
        }
        if libc::setns(
            p.pidfd,
            libc::CLONE_NEWUSER
                | libc::CLONE_NEWNS
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWNET,
        ) != 0
        {
            return Err(fail(e, "joining the namespaces"));
        }
        if become_user_rootless().is_err() {
            return Err(fail(e, "switching user"));
        }
        if drop_capabilities().is_err() {
            return Err(fail(e, "dropping capabilities"));
        }
        if scope_sockets && restrict_abstract_sockets().is_err() {
            return Err(fail(e, "restricting abstract sockets"));
        }
        let pid = raw_fork(true);
        if pid < 0 {
            return Err(fail(e, "forking"));
        }
        if pid > 0 {
            let bytes = pid.to_le_bytes();
            libc::write(pid_w, bytes.as_ptr().cast(), 4);
            libc::_exit(0);
        }
        if libc::chdir(p.cwd.as_ptr()) != 0 && libc::chdir(c"/".as_ptr()) != 0 {
            return Err(fail(e, "changing directory"));
        }
        if libc::setsid() < 0 {
            return Err(fail(e, "taking the terminal"));
        }
        if p.pty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            return Err(fail(e, "taking the terminal"));
        }
        if p.seccomp.install().is_err() {
            return Err(fail(e, "installing the seccomp filter"));
        }
        mark_fds_cloexec();
    }
    Ok(())
}

/// A running session process, whichever way it was started.
#[derive(Debug)]
pub struct SessionChild {
    pub stdin: Option<tokio::process::ChildStdin>,
    pub stdout: Option<tokio::process::ChildStdout>,
    pub stderr: Option<tokio::process::ChildStderr>,
    proc: SessionProc,
}

#[derive(Debug)]
enum SessionProc {
    /// Root mode: the session is the spawned child itself.
    Direct(tokio::process::Child),
    /// Rootless: the spawned child only forked it (with `CLONE_PARENT`, so it is our child too,
    /// unknown to tokio) and exited; it was reaped at once.
    Forked(Forked),
}

#[derive(Debug)]
struct Forked {
    pid: i32,
    pidfd: Option<tokio::io::unix::AsyncFd<OwnedFd>>,
    status: Option<std::process::ExitStatus>,
}

/// Reap `pid` if it has exited.
fn try_reap(pid: i32) -> io::Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: plain syscall on our own child, which nobody else reaps.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match rc {
        0 => Ok(None),
        r if r == pid => Ok(Some(std::process::ExitStatus::from_raw(status))),
        _ => Err(io::Error::last_os_error()),
    }
}

impl Forked {
    async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        loop {
            if let Some(s) = self.status {
                return Ok(s);
            }
            if let Some(s) = try_reap(self.pid)? {
                self.status = Some(s);
                return Ok(s);
            }
            let fd = self
                .pidfd
                .as_ref()
                .ok_or_else(|| io::Error::other("no pidfd"))?;
            // A pidfd polls readable once its process has exited.
            let mut guard = fd.readable().await?;
            guard.clear_ready();
        }
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        // Still running (the connection went away): reap it whenever it ends.
        let pid = self.pid;
        let pidfd = self.pidfd.take();
        match (tokio::runtime::Handle::try_current(), pidfd) {
            (Ok(rt), Some(fd)) => {
                rt.spawn(async move {
                    loop {
                        match try_reap(pid) {
                            Ok(None) => {}
                            _ => return,
                        }
                        match fd.readable().await {
                            Ok(mut g) => g.clear_ready(),
                            Err(_) => return,
                        }
                    }
                });
            }
            _ => {
                std::thread::spawn(move || reap_pid(pid));
            }
        }
    }
}

impl SessionChild {
    fn direct(mut child: tokio::process::Child) -> SessionChild {
        SessionChild {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            proc: SessionProc::Direct(child),
        }
    }

    /// Wait for the session process to exit.
    pub async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        match &mut self.proc {
            SessionProc::Direct(c) => c.wait().await,
            SessionProc::Forked(f) => f.wait().await,
        }
    }

    /// Send SIGKILL to the session process.
    pub fn start_kill(&mut self) -> io::Result<()> {
        match &mut self.proc {
            SessionProc::Direct(c) => c.start_kill(),
            SessionProc::Forked(f) => match &f.pidfd {
                Some(fd) if f.status.is_none() => {
                    // SAFETY: plain syscall on a pidfd we own.
                    let rc = unsafe {
                        libc::syscall(
                            libc::SYS_pidfd_send_signal,
                            fd.get_ref().as_raw_fd(),
                            libc::SIGKILL,
                            std::ptr::null::<libc::siginfo_t>(),
                            0,
                        )
                    };
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                }
                _ => Ok(()),
            },
        }
    }
}

/// Start `cmd` inside the namespaces and cgroups of a running init, as the buyer. Blocking: call
/// from a blocking task; `rt` is the runtime that will reap the process.
pub fn spawn_session(
    init: &InitHandle,
    privilege: &Privilege,
    cgroup_procs: &[PathBuf],
    rlimits: Option<Rlimits>,
    nproc: u32,
    cmd: SessionCmd,
    rt: &tokio::runtime::Handle,
) -> Result<SessionChild, JailError> {
    let cgroup_fds = cgroup_procs
        .iter()
        .map(|p| open_write(p))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| err("joining the cgroup", e))?;
    let (err_r, err_w) = pipe().map_err(|e| err("creating pipes", e))?;
    let (pid_r, rootless) = match privilege {
        Privilege::Root => (None, None),
        Privilege::Rootless(r) => {
            let (pid_r, pid_w) = pipe().map_err(|e| err("creating pipes", e))?;
            (Some(pid_r), Some((pid_w, r.scope_sockets)))
        }
    };
    let pidfd = Arc::clone(&init.pidfd);
    let plan = Arc::new(SessionPlan {
        pidfd: pidfd.as_raw_fd(),
        cgroup_fds,
        rlimits,
        nproc,
        cwd: cpath(&cmd.cwd, "changing directory")?,
        pty: cmd.pty,
        err_w,
        seccomp: Filter::new(),
        rootless,
    });
    let mut c = std::process::Command::new(&cmd.program);
    c.arg0(&cmd.arg0)
        .args(&cmd.args)
        .env_clear()
        .envs(cmd.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(cmd.stdin)
        .stdout(cmd.stdout)
        .stderr(cmd.stderr);
    let child_plan = Arc::clone(&plan);
    // SAFETY: session_child only makes syscalls on data prepared before the fork.
    unsafe {
        c.pre_exec(move || session_child(&child_plan));
    }
    let stage_of = |e: io::Error| match read_stage(&err_r) {
        Some((stage, source)) => err(stage, source),
        None => err("joining the namespaces", e),
    };
    let _fork = FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(pid_r) = pid_r {
        // Rootless: no setns on this thread (an unprivileged process may not join a pid
        // namespace); the forked child does it all.
        let spawned = c.spawn();
        drop(c);
        drop(plan);
        let pid = read_pid(&pid_r);
        let mut middle = match spawned {
            Ok(m) => m,
            Err(e) => {
                if let Some(pid) = pid {
                    reap_pid(pid);
                }
                return Err(stage_of(e));
            }
        };
        // The middle process is gone (spawn returned once it closed its end of std's exec
        // pipe, which it only does by exiting): reap it now.
        let _ = middle.wait();
        let pid =
            pid.ok_or_else(|| err("forking", io::Error::from(io::ErrorKind::UnexpectedEof)))?;
        let _rt = rt.enter();
        let pidfd = pidfd_open(pid).and_then(|fd| {
            // SAFETY: `fd` is a pidfd we own; nothing else closes or replaces it while the
            // AsyncFd holds it.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            }
            .map_err(|e| io::Error::other(e.to_string()))
        });
        let pidfd = match pidfd {
            Ok(fd) => fd,
            Err(e) => {
                // SAFETY: plain syscalls on our own child, not reaped yet (so not reused).
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                reap_pid(pid);
                return Err(err("opening a pidfd", e));
            }
        };
        // The pipes the session inherited from the middle process, as tokio types (this
        // thread is in the runtime's context). One that cannot be registered is dropped, which
        // the session sees as a closed pipe.
        return Ok(SessionChild {
            stdin: middle
                .stdin
                .take()
                .and_then(|p| tokio::process::ChildStdin::from_std(p).ok()),
            stdout: middle
                .stdout
                .take()
                .and_then(|p| tokio::process::ChildStdout::from_std(p).ok()),
            stderr: middle
                .stderr
                .take()
                .and_then(|p| tokio::process::ChildStderr::from_std(p).ok()),
            proc: SessionProc::Forked(Forked {
                pid,
                pidfd: Some(pidfd),
                status: None,
            }),
        });
    }
    let rt = rt.clone();
    let spawned = std::thread::spawn(move || -> io::Result<tokio::process::Child> {
        // Children of this short-lived thread are born in the workload's pid namespace.
        // SAFETY: plain syscall on a pidfd kept alive by `pidfd` for the whole spawn.
        if unsafe { libc::setns(pidfd.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let _rt = rt.enter();
        tokio::process::Command::from(c).kill_on_drop(false).spawn()
    })
    .join()
    .map_err(|_| err("forking", io::Error::other("spawn thread panicked")))?;
    drop(plan);
    spawned.map(SessionChild::direct).map_err(stage_of)
}

// ---------------------------------------------------------------------------------------------
// Probing what an unprivileged user may do here
// ---------------------------------------------------------------------------------------------

struct ProbePlan {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    err_w: OwnedFd,
    report_w: OwnedFd,
}

/// The probe's child: every kind of step a rootless init takes, in a throwaway set of
/// namespaces. A fresh `/proc` is tried by a grandchild (it must be in the new pid namespace),
/// whose verdict is reported rather than failed: its absence is survivable.
fn probe_child(p: &ProbePlan) -> io::Result<()> {
    let e = p.err_w.as_raw_fd();
    // SAFETY (whole function): raw syscalls on data prepared before the fork; no allocation.
    unsafe {
        if libc::unshare(
            libc::CLONE_NEWUSER
                | libc::CLONE_NEWNS
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWNET,
        ) != 0
        {
            return Err(fail(e, "creating the user namespace"));
        }
        if write_own_maps(&p.uid_map, &p.gid_map).is_err() {
            return Err(fail(e, "writing the id maps"));
        }
        let none = std::ptr::null::<libc::c_char>();
        if libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(fail(e, "making mounts private"));
        }
        let ro = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        if libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &ro as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ) != 0
        {
            return Err(fail(e, "making the host read-only"));
        }
        if libc::sethostname(c"paygress-probe".as_ptr(), 14) != 0 {
            return Err(fail(e, "setting the hostname"));
        }
        if libc::mount(
            c"tmpfs".as_ptr(),
            c"/tmp".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=755,size=16k".as_ptr().cast(),
        ) != 0
        {
            return Err(fail(e, "mounting tmpfs"));
        }
        libc::mkdir(c"/tmp/a".as_ptr(), 0o755);
        libc::mkdir(c"/tmp/b".as_ptr(), 0o755);
        let tree = libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c"/tmp/a".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        );
        if tree < 0 {
            return Err(fail(e, "mounting the home directory"));
        }
        let rw = MountAttr {
            attr_set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            attr_clr: MOUNT_ATTR_RDONLY,
            propagation: 0,
            userns_fd: 0,
        };
        let rc = libc::syscall(
            libc::SYS_mount_setattr,
            tree as libc::c_int,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &rw as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        );
        if rc != 0 {
            return Err(fail(e, "mounting the home directory"));
        }
        if libc::syscall(
            libc::SYS_move_mount,
            tree as libc::c_int,
            c"".as_ptr(),
            libc::AT_FDCWD,
            c"/tmp/b".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        ) != 0
        {
            return Err(fail(e, "mounting the home directory"));
        }
        let pid = raw_fork(false);
        if pid < 0 {
            return Err(fail(e, "forking"));
        }
        if pid == 0 {
            let ok = libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ) == 0;
            libc::_exit(if ok { 0 } else { 1 });
        }
        let mut status = 0;
        let own_proc = libc::waitpid(pid, &mut status, 0) == pid
            && libc::WIFEXITED(status)
            && libc::WEXITSTATUS(status) == 0;
        let verdict = if own_proc { b"1" } else { b"0" };
        libc::write(p.report_w.as_raw_fd(), verdict.as_ptr().cast(), 1);
        mark_fds_cloexec();
    }
    Ok(())
}

/// Try, in a throwaway child, everything a rootless jail needs. `Ok(own_proc)` says whether a
/// fresh `/proc` can be mounted; an error names the step the kernel refused. Blocking.
pub fn probe_rootless(uid: u32, gid: u32) -> Result<bool, JailError> {
    let (err_r, err_w) = pipe().map_err(|e| err("creating pipes", e))?;
    let (report_r, report_w) = pipe().map_err(|e| err("creating pipes", e))?;
    let plan = Arc::new(ProbePlan {
        uid_map: format!("{INSIDE_UID} {uid} 1\n").into_bytes(),
        gid_map: format!("{INSIDE_UID} {gid} 1\n").into_bytes(),
        err_w,
        report_w,
    });
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg0("paygress-probe")
        .arg("-c")
        .arg(":")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child_plan = Arc::clone(&plan);
    // SAFETY: probe_child only makes syscalls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || probe_child(&child_plan));
    }
    let spawned = {
        let _fork = FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        cmd.spawn()
    };
    drop(cmd);
    drop(plan);
    match spawned {
        Ok(mut child) => {
            let _ = child.wait();
        }
        Err(e) => {
            return Err(match read_stage(&err_r) {
                Some((stage, source)) => err(stage, source),
                None => err("forking", e),
            })
        }
    }
    let mut verdict = [0u8; 1];
    // SAFETY: reading one byte into a stack buffer from our pipe (the writer has exited).
    let n = unsafe { libc::read(report_r.as_raw_fd(), verdict.as_mut_ptr().cast(), 1) };
    Ok(n == 1 && verdict[0] == b'1')
}

#[cfg(test)]
mod uncovered_tests {
    use super::*;

    #[test]
    fn a_secret_linked_from_a_hidden_dir_is_still_covered() {
        let d = tempfile::tempdir().unwrap();
        let hidden = d.path().join("hidden");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&hidden).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("key"), b"secret").unwrap();
        std::fs::write(hidden.join("plain"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.join("key"), hidden.join("link")).unwrap();
        let left = uncovered(
            &[hidden.join("plain"), hidden.join("link")],
            std::slice::from_ref(&hidden),
        );
        assert_eq!(
            left,
            vec![std::fs::canonicalize(outside.join("key")).unwrap()]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_command_names() {
        let line = "4242 (we ird) name)) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) Z"), None);
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), b"/mnt/a b".to_vec());
        assert_eq!(unescape_mountinfo("/plain"), b"/plain".to_vec());
        assert_eq!(unescape_mountinfo("/x\\04"), b"/x\\04".to_vec());
    }

    #[test]
    fn stage_codes_round_trip() {
        for s in STAGES {
            assert_eq!(stage_name(stage_code(s)), *s);
        }
        assert_eq!(stage_name(250), "unknown");
    }

    #[test]
    fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let start = process_start(me).unwrap();
        assert!(is_alive(me, start));
        assert!(!is_alive(me, start + 1));
        assert!(!is_alive(i32::MAX, 0));
    }
}
