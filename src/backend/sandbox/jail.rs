//! The jail: Linux namespaces around a workload's process tree, set up with raw syscalls.
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
//!    - `unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC)`, makes every mount private, then
//!      makes the whole host tree **read-only and nosuid** in one call (`mount_setattr` with
//!      `AT_RECURSIVE`, Linux ≥ 5.12; older kernels get a remount of each mount point);
//!    - mounts what must be writable or private on top: tmpfs on `/tmp`, `/dev/shm`, `/run` and
//!      `/home` (hiding the host's), the workload's home from the state directory bound at
//!      `/home/<user>`, generated `/etc/passwd`, `/etc/group`, `/etc/hosts` and `/etc/hostname`
//!      bound read-only over the host's, and a fresh `/proc` for the new pid namespace (so `ps`
//!      shows the workload's own processes only); sets the hostname to the workload name;
//!    - only then `unshare(CLONE_NEWUSER)`, and waits while a helper thread in the provider
//!      writes its uid/gid maps (inside `0..65536` → host `base..base+65536`, a range of host ids
//!      no one else uses);
//!    - becomes `nobody` inside, drops every capability, sets `no_new_privs`, and execs
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
//! Kernel requirements: Linux ≥ 5.8 (`pidfd_open`, `setns` on a pidfd, `open_tree`/`move_mount`
//! for bind mounts whose source a tmpfs is about to cover); `mount_setattr` (≥ 5.12) is used for
//! the read-only view when present, a remount of every mount point otherwise.

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

/// What the init of one workload needs.
#[derive(Debug, Clone)]
pub struct JailSpec {
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
    }
}

/// Enough of an init to start sessions in its namespaces.
#[derive(Debug, Clone)]
pub struct InitHandle {
    pidfd: Arc<OwnedFd>,
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
const OPEN_TREE_CLONE: libc::c_uint = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
/// Most bind mounts one jail makes (home and four /etc files).
const MAX_BINDS: usize = 8;

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
    ready_w: OwnedFd,
    go_r: OwnedFd,
    err_w: OwnedFd,
    /// Parent-side ends the child must close so that EOF works both ways.
    ready_r: RawFd,
    go_w: RawFd,
}

fn tmpfs(target: &str, data: String, stage: &'static str) -> Result<MountStep, JailError> {
    Ok(MountStep {
        source: cstring("tmpfs", stage)?,
        target: cstring(target, stage)?,
        fstype: Some(cstring("tmpfs", stage)?),
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some(cstring(data, stage)?),
        remount: 0,
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
        parents: Vec::new(),
        make,
        optional,
        stage,
    })
}

fn plan_mounts(spec: &JailSpec) -> Result<Vec<MountStep>, JailError> {
    let tmp = format!("mode=1777,size={}m", spec.tmp_mb.max(1));
    let home = format!("/home/{}", spec.user);
    let ro = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    let mut m = vec![
        tmpfs("/tmp", tmp.clone(), "mounting tmpfs")?,
        tmpfs("/dev/shm", tmp, "mounting tmpfs")?,
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
    ];
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
    // Hosts with systemd-resolved point /etc/resolv.conf into /run, which the jail covers with
    // a tmpfs: put the real file back at its path there, or DNS would not work inside.
    if let Ok(real) = std::fs::canonicalize("/etc/resolv.conf") {
        if real.starts_with("/run/") && real.is_file() {
            let stage = "mounting /etc files";
            let mut step = bind(&real, "/", ro, Make::File, true, stage)?;
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
    }
    m.push(MountStep {
        source: cstring("proc", "mounting /proc")?,
        target: cstring("/proc", "mounting /proc")?,
        fstype: Some(cstring("proc", "mounting /proc")?),
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: None,
        remount: 0,
        parents: Vec::new(),
        make: Make::Nothing,
        optional: false,
        stage: "mounting /proc",
    });
    Ok(m)
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
            let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID;
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
        if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) != 0 {
            return Err(fail(e, "unsharing namespaces"));
        }
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
            attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
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
            if *libc::__errno_location() != libc::ENOSYS {
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
            let rc = match &m.fstype {
                Some(fstype) => libc::mount(
                    m.source.as_ptr(),
                    m.target.as_ptr(),
                    fstype.as_ptr(),
                    m.flags,
                    m.data
                        .as_ref()
                        .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
                ),
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
        mark_fds_cloexec();
    }
    Ok(())
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
        nproc: spec.nproc,
        hostname: cstring(&spec.name, "setting the hostname")?,
        mounts,
        remount_points: remount_points(),
        ready_w,
        go_r,
        err_w,
        ready_r: ready_r.as_raw_fd(),
        go_w: go_w.as_raw_fd(),
    });
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
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg0("paygress-init")
            .arg("-c")
            .arg(INIT_SCRIPT)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
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
        if set_rlimits(p.rlimits, p.nproc).is_err() {
            return Err(fail(e, "setting rlimits"));
        }
        // Mount, uts and ipc belong to the host's user namespace: join them as host root first,
        // then the workload's user namespace.
        if libc::setns(
            p.pidfd,
            libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC,
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
        mark_fds_cloexec();
    }
    Ok(())
}

/// Start `cmd` inside the namespaces and cgroups of a running init, as the buyer. Blocking: call
/// from a blocking task; `rt` is the runtime that will reap the process.
pub fn spawn_session(
    init: &InitHandle,
    cgroup_procs: &[PathBuf],
    rlimits: Option<Rlimits>,
    nproc: u32,
    cmd: SessionCmd,
    rt: &tokio::runtime::Handle,
) -> Result<tokio::process::Child, JailError> {
    let cgroup_fds = cgroup_procs
        .iter()
        .map(|p| open_write(p))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| err("joining the cgroup", e))?;
    let (err_r, err_w) = pipe().map_err(|e| err("creating pipes", e))?;
    let pidfd = Arc::clone(&init.pidfd);
    let plan = Arc::new(SessionPlan {
        pidfd: pidfd.as_raw_fd(),
        cgroup_fds,
        rlimits,
        nproc,
        cwd: cpath(&cmd.cwd, "changing directory")?,
        pty: cmd.pty,
        err_w,
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
    let rt = rt.clone();
    let _fork = FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
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
    spawned.map_err(|e| match read_stage(&err_r) {
        Some((stage, source)) => err(stage, source),
        None => err("joining the namespaces", e),
    })
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
