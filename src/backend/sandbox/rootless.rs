//! Rootless mode: the sandbox for a provider that is not root.
//!
//! `paygress-mcp-server --demo` falls back to the sandbox on any machine without LXD, and most
//! people run it as themselves. Root mode needs root twice over: to map a range of 65536 host
//! ids into each workload, and to make the mount, pid, uts and ipc namespaces outside any user
//! namespace. An ordinary user can do neither, but since Linux 3.8 it can make a *user*
//! namespace of its own, with exactly one id mapped (its own uid and gid, no `newuidmap`, no
//! `/etc/subuid`), and hold every capability inside it — enough to make the other namespaces
//! there, mount tmpfs and bind mounts, a fresh `/proc` and set a hostname (see
//! [`super::jail`]). That is what rootless mode does, automatically when the effective uid is
//! not 0.
//!
//! # What differs from root mode
//!
//! - **One id.** The buyer is uid/gid 1000 inside and *the provider's own uid* outside. So the
//!   jail hides what that uid owns: the provider's data directory (keys, wallet, other
//!   workloads), the sandbox state directory and `$HOME` are covered with an empty read-only
//!   tmpfs, on top of the `/home`, `/tmp` and `/run` tmpfs of root mode. Other files the
//!   provider's user can read stay readable (read-only) — run the provider as a dedicated user.
//!   Supplementary groups cannot be dropped without privilege (`setgroups` is denied so that the
//!   gid map may be written), so they would stay in effect inside: `open` refuses to start with
//!   any ([`GroupsKept`]).
//! - **Abstract unix sockets** (X11's `@/tmp/.X11-unix/X0`, some D-Bus buses) ignore mount
//!   namespaces, and their servers often trust any client with the right uid — which the buyer
//!   now has. Where Landlock can scope them (ABI ≥ 6, Linux 6.12), every jail is confined so it
//!   cannot connect to sockets made outside it; elsewhere this is logged as a weakness.
//! - **Limits.** Cgroups are used when this process sits in a cgroup v2 subtree it may write (a
//!   systemd user service or `systemd-run --user --scope`, which delegate to the user); see
//!   [`super::cgroup::Mode::detect_delegated`]. Otherwise only `RLIMIT_AS` per process:
//!   `RLIMIT_NPROC` counts every process of the provider's user, not the workload's, and
//!   `RLIMIT_CPU` is total CPU seconds, not a rate, so neither is set. This is logged once.
//! - **`/proc`.** Where the kernel refuses a fresh `/proc` (a partly masked one, as in most
//!   containers), an empty read-only one is mounted instead: never the host's, whose entries for
//!   the provider's processes the buyer could read and write. This is logged once.
//!
//! What never degrades: the host stays read-only and writes outside the home fail. If the kernel
//! refuses any step of that, [`detect`] fails and so does `open`.
//!
//! # When user namespaces are not available
//!
//! Distributions switch unprivileged user namespaces off in several ways; [`detect`] checks the
//! known switches, then tries every step once in a throwaway child, and turns a refusal into an
//! [`Unavailable`] error that says what is off, how to switch it on, and that root or the LXD
//! backend are the alternatives — at `open`, not at the first spawn.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::jail::{self, Rootless};

/// `kernel.unprivileged_userns_clone` (Debian and older Ubuntu kernels).
const USERNS_CLONE: &str = "/proc/sys/kernel/unprivileged_userns_clone";
/// `user.max_user_namespaces`.
const MAX_USERNS: &str = "/proc/sys/user/max_user_namespaces";
/// `kernel.apparmor_restrict_unprivileged_userns` (Ubuntu ≥ 23.10).
const APPARMOR_USERNS: &str = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns";

/// The first Landlock ABI that can scope abstract unix sockets.
const LANDLOCK_SCOPE_ABI: i64 = 6;

/// Why the sandbox cannot run for this (unprivileged) user.
#[derive(Debug, thiserror::Error)]
#[error(
    "the sandbox backend cannot run as an unprivileged user (uid {uid}) on this host: {reason} \
     Otherwise run the provider as root, or use the LXD backend ([backend] kind = \"lxd\"; \
     `--demo-backend lxd` for the demo)."
)]
pub struct Unavailable {
    pub uid: u32,
    pub reason: Reason,
}

/// What exactly is off.
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    #[error(
        "unprivileged user namespaces are disabled (sysctl kernel.unprivileged_userns_clone = 0). \
         Enable them with `sudo sysctl -w kernel.unprivileged_userns_clone=1` (and \
         `kernel.unprivileged_userns_clone = 1` in /etc/sysctl.d/60-userns.conf to keep it)."
    )]
    CloneDisabled,
    #[error(
        "user namespaces are disabled (sysctl user.max_user_namespaces = 0). Enable them with \
         `sudo sysctl -w user.max_user_namespaces=15000` (and `user.max_user_namespaces = 15000` \
         in /etc/sysctl.d/60-userns.conf to keep it)."
    )]
    MaxZero,
    #[error(
        "no more user namespaces may be made (the limit user.max_user_namespaces = {limit} is \
         reached). Raise it with `sudo sysctl -w user.max_user_namespaces=<more>`."
    )]
    Exhausted { limit: String },
    #[error(
        "AppArmor restricts unprivileged user namespaces (sysctl \
         kernel.apparmor_restrict_unprivileged_userns = 1): the kernel refused {stage} \
         ({source}). Lift the restriction with `sudo sysctl -w \
         kernel.apparmor_restrict_unprivileged_userns=0` (and the same line in \
         /etc/sysctl.d/60-userns.conf to keep it), or give this program an AppArmor profile \
         with the `userns,` rule."
    )]
    AppArmor {
        stage: &'static str,
        source: io::Error,
    },
    #[error(
        "creating a user namespace was refused ({source}) although no sysctl forbids it: a \
         seccomp filter or security module blocks it, as inside most containers (Docker's \
         default seccomp profile). Run the provider outside the container, or allow \
         unshare/clone with CLONE_NEWUSER in its seccomp profile."
    )]
    Blocked { source: io::Error },
    #[error("this kernel has no user namespaces (built without CONFIG_USER_NS).")]
    NoKernelSupport,
    #[error(
        "the kernel refused {stage} inside an unprivileged user namespace ({source}). The \
         sandbox needs user, mount and pid namespaces with tmpfs, bind mounts and read-only \
         mounts there (Linux 5.12 or later)."
    )]
    Refused {
        stage: &'static str,
        source: io::Error,
    },
}

fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The effective uid and gid of this process.
pub fn ids() -> (u32, u32) {
    // SAFETY: geteuid/getegid have no preconditions.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Find out whether and how rootless jails work here. Blocking (it forks a probe).
///
/// `own_dirs` are the provider's directories (data and state directory); with `$HOME` they are
/// hidden inside every jail.
pub fn detect(own_dirs: &[&Path]) -> Result<Rootless, Unavailable> {
    let (uid, gid) = ids();
    let fail = |reason| Unavailable { uid, reason };
    if sysctl(USERNS_CLONE).as_deref() == Some("0") {
        return Err(fail(Reason::CloneDisabled));
    }
    let max = sysctl(MAX_USERNS);
    if max.as_deref() == Some("0") {
        return Err(fail(Reason::MaxZero));
    }
    let apparmor = sysctl(APPARMOR_USERNS).as_deref() == Some("1");
    let own_proc = jail::probe_rootless(uid, gid).map_err(|e| {
        let errno = e.source.raw_os_error();
        let denied = matches!(errno, Some(libc::EPERM) | Some(libc::EACCES));
        let reason = match (e.stage, errno) {
            ("creating the user namespace", Some(libc::ENOSPC)) => Reason::Exhausted {
                limit: max.clone().unwrap_or_else(|| "?".into()),
            },
            ("creating the user namespace", Some(libc::EINVAL)) => Reason::NoKernelSupport,
            _ if denied && apparmor => Reason::AppArmor {
                stage: e.stage,
                source: e.source,
            },
            ("creating the user namespace", _) if denied => Reason::Blocked { source: e.source },
            (stage, _) => Reason::Refused {
                stage,
                source: e.source,
            },
        };
        fail(reason)
    })?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut candidates: Vec<&Path> = own_dirs.to_vec();
    if let Some(h) = &home {
        candidates.push(h);
    }
    Ok(Rootless {
        uid,
        gid,
        own_proc,
        scope_sockets: jail::landlock_abi() >= LANDLOCK_SCOPE_ABI,
        hide: hide_list(&candidates, uid),
    })
}

/// The directories to cover inside: those of `candidates` that exist, belong to `uid`, are not
/// `/`, and are not already covered (by another one, or by the jail's `/home`, `/tmp`, `/run`
/// and `/dev` tmpfs).
fn hide_list(candidates: &[&Path], uid: u32) -> Vec<PathBuf> {
    const COVERED: &[&str] = &["/home", "/tmp", "/run", "/dev"];
    let mut dirs: Vec<PathBuf> = candidates
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter(|p| p.parent().is_some())
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == uid))
        .filter(|p| !COVERED.iter().any(|c| p.starts_with(c)))
        .collect();
    dirs.sort();
    dirs.dedup();
    let all = dirs.clone();
    dirs.retain(|d| !all.iter().any(|o| o != d && d.starts_with(o)));
    dirs
}

/// Refusal to run rootless with supplementary groups: they cannot be dropped without privilege
/// (`setgroups` is denied so that the gid map may be written), so every buyer would hold them,
/// and a group such as `lxd`, `docker`, `disk` or `kvm` hands buyers the host.
#[derive(Debug, thiserror::Error)]
#[error(
    "the sandbox refuses to run rootless with supplementary groups ({}): every workload would \
     keep them (an unprivileged process cannot drop them), and groups such as lxd, docker, disk \
     or kvm give buyers the host. Run the provider as a user without supplementary groups (a \
     dedicated system user, or `setpriv --clear-groups`), or as root.",
    group_names(.0)
)]
pub struct GroupsKept(pub Vec<u32>);

/// `name (gid)` for each group, from /etc/group where it names them.
fn group_names(gids: &[u32]) -> String {
    let table = std::fs::read_to_string("/etc/group").unwrap_or_default();
    gids.iter()
        .map(|g| {
            let name = table.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.get(2) == Some(&g.to_string().as_str())).then(|| f[0].to_string())
            });
            match name {
                Some(n) => format!("{n} ({g})"),
                None => g.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Supplementary groups of this process other than its effective gid (they would stay in
/// effect inside a rootless jail).
pub fn extra_groups() -> Vec<u32> {
    let (_, gid) = ids();
    let mut buf = vec![0 as libc::gid_t; 256];
    // SAFETY: getgroups writes at most buf.len() entries into buf.
    let n = unsafe { libc::getgroups(buf.len() as libc::c_int, buf.as_mut_ptr()) };
    if n < 0 {
        return Vec::new();
    }
    buf.truncate(n as usize);
    buf.retain(|g| *g != gid);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_dirs_are_ours_uncovered_and_outermost() {
        let base = tempfile::tempdir_in("/var/tmp").unwrap();
        let uid = std::fs::metadata(base.path()).unwrap().uid();
        let data = base.path().join("data");
        let state = data.join("sandbox");
        std::fs::create_dir_all(&state).unwrap();
        let missing = base.path().join("missing");
        let got = hide_list(
            &[&state, &data, &missing, Path::new("/"), Path::new("/tmp")],
            uid,
        );
        assert_eq!(got, vec![std::fs::canonicalize(&data).unwrap()]);
        // Not ours: left alone.
        assert!(hide_list(&[&data], uid + 1).is_empty());
    }

    #[test]
    fn error_messages_say_what_is_off_and_what_to_do() {
        let e = Unavailable {
            uid: 1234,
            reason: Reason::MaxZero,
        };
        let text = e.to_string();
        assert!(text.contains("uid 1234"), "{text}");
        assert!(text.contains("user.max_user_namespaces = 0"), "{text}");
        assert!(text.contains("sudo sysctl -w"), "{text}");
        assert!(text.contains("LXD"), "{text}");
        let e = Unavailable {
            uid: 1,
            reason: Reason::AppArmor {
                stage: "mounting tmpfs",
                source: io::Error::from_raw_os_error(libc::EPERM),
            },
        };
        assert!(e
            .to_string()
            .contains("kernel.apparmor_restrict_unprivileged_userns"));
    }
}
