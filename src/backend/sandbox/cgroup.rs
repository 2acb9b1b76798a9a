//! Resource limits for one workload: a cgroup where the host lets us make one, rlimits otherwise.
//!
//! Why cgroups: a memory limit must hold for the *whole* process tree of a workload (the init,
//! every SSH session, everything they fork), and only a cgroup counts memory per tree. When the
//! tree goes over `memory.max` (v2) or `memory.limit_in_bytes` (v1), the kernel's OOM killer
//! picks a victim inside the group and the host is untouched. The same group caps CPU time
//! (`cpu.max` / CFS quota) and the number of tasks (`pids.max`, a fork bomb stops there), and
//! gives a reliable "kill everything in it" at the end.
//!
//! Three layouts exist in the wild and all three are handled:
//! - cgroup v2 (`/sys/fs/cgroup/cgroup.controllers` exists): one group
//!   `/sys/fs/cgroup/paygress/<name>` with the memory, cpu and pids controllers enabled on the way
//!   down.
//! - cgroup v1 or hybrid: one group per controller hierarchy,
//!   `/sys/fs/cgroup/{memory,cpu,pids}/paygress/<name>`. Memory is required; cpu and pids are used
//!   when their hierarchies are mounted and writable.
//! - rootless (the provider is an ordinary user, see [`super::rootless`]): the v2 layout again,
//!   rooted at the provider's *own* cgroup when the user may write it — systemd delegates a user
//!   service's or `systemd-run --user --scope`'s cgroup to the user. A v2 cgroup with controllers
//!   enabled for its children may hold no processes itself, so the provider first moves itself
//!   into a leaf, `<own>/paygress-provider`; workloads live in `<own>/paygress/<name>`.
//! - neither writable (no root, a read-only cgroupfs in a container): per-process rlimits
//!   (`RLIMIT_AS` for memory). These are much weaker — they limit each process, not the tree — and
//!   the backend says so once in the log.
//!
//! A workload joins its groups by writing `0` ("me") to each `cgroup.procs` file from the forked
//! child *before* it execs, so nothing it starts can run outside the limits even for an instant.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Tier;

/// The directory under each hierarchy that holds every workload's group.
const PARENT: &str = "paygress";

/// Which way limits are applied on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Unified hierarchy rooted here (normally `/sys/fs/cgroup`).
    V2 { root: PathBuf },
    /// Legacy hierarchies: memory is required, cpu and pids optional.
    V1 {
        memory: PathBuf,
        cpu: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    /// No writable cgroups: rlimits only.
    Rlimits,
}

/// Per-process limits used when there is no cgroup (see [`Mode::Rlimits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimits {
    /// `RLIMIT_AS` in bytes.
    pub address_space: u64,
}

impl Mode {
    /// Find out what this host allows, by trying to make the `paygress` parent group.
    pub fn detect() -> Mode {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    fn detect_at(base: &Path) -> Mode {
        if base.join("cgroup.controllers").exists() {
            let parent = base.join(PARENT);
            if ensure_dir(&parent).is_ok() && enable_controllers(base, &parent).is_ok() {
                return Mode::V2 {
                    root: base.to_path_buf(),
                };
            }
            return Mode::Rlimits;
        }
        let writable = |ctrl: &str| {
            let h = base.join(ctrl);
            (h.join("cgroup.procs").exists() && ensure_dir(&h.join(PARENT)).is_ok()).then_some(h)
        };
        match writable("memory") {
            Some(memory) => Mode::V1 {
                memory,
                cpu: writable("cpu"),
                pids: writable("pids"),
            },
            None => Mode::Rlimits,
        }
    }

    /// Rootless: the provider's own cgroup v2 directory as the root of the v2 layout, if this
    /// user may write it (see the module docs); rlimits otherwise.
    pub fn detect_delegated() -> Mode {
        match fs::read_to_string("/proc/self/cgroup") {
            Ok(text) => Self::detect_delegated_at(Path::new("/sys/fs/cgroup"), &text),
            Err(_) => Mode::Rlimits,
        }
    }

    fn detect_delegated_at(base: &Path, self_cgroup: &str) -> Mode {
        // Only a pure v2 host: on hybrid ones the controllers live in the v1 hierarchies.
        if !base.join("cgroup.controllers").exists() {
            return Mode::Rlimits;
        }
        let Some(rel) = self_cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| p.trim().trim_start_matches('/'))
        else {
            return Mode::Rlimits;
        };
        let rel = Path::new(rel);
        let plain = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if rel.as_os_str().is_empty() || !plain {
            return Mode::Rlimits; // the root cgroup is never delegated
        }
        let own = base.join(rel);
        let writable = ["", "cgroup.procs", "cgroup.subtree_control"]
            .iter()
            .all(|f| may_write(&own.join(f)));
        let has_memory = fs::read_to_string(own.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"));
        if !writable || !has_memory {
            return Mode::Rlimits;
        }
        // No internal processes: move this process into a leaf before enabling controllers.
        let leaf = own.join("paygress-provider");
        let moved = match fs::create_dir(&leaf) {
            Ok(()) => true,
            Err(e) => e.kind() == io::ErrorKind::AlreadyExists,
        } && write(&leaf, "cgroup.procs", "0").is_ok();
        let parent = own.join(PARENT);
        if moved && ensure_dir(&parent).is_ok() && enable_controllers(&own, &parent).is_ok() {
            return Mode::V2 { root: own };
        }
        // Not possible after all (other processes in our cgroup, say): leave things as found.
        if moved {
            let _ = write(&own, "cgroup.procs", "0");
        }
        let _ = fs::remove_dir(&leaf);
        Mode::Rlimits
    }

    /// Whether memory is enforced for the whole tree (false in rlimit mode).
    pub fn enforces_memory(&self) -> bool {
        !matches!(self, Mode::Rlimits)
    }

    /// The group directories of workload `name` (one per hierarchy; empty in rlimit mode).
    pub fn dirs(&self, name: &str) -> Vec<PathBuf> {
        match self {
            Mode::V2 { root } => vec![root.join(PARENT).join(name)],
            Mode::V1 { memory, cpu, pids } => [Some(memory), cpu.as_ref(), pids.as_ref()]
                .into_iter()
                .flatten()
                .map(|h| h.join(PARENT).join(name))
                .collect(),
            Mode::Rlimits => Vec::new(),
        }
    }

    /// Make the groups of `name` with the tier's limits and return the `cgroup.procs` files a
    /// process writes `0` to in order to join. Any failure removes what was made.
    pub fn create(&self, name: &str, tier: &Tier, pids_max: u32) -> io::Result<Vec<PathBuf>> {
        let made = self.create_inner(name, tier, pids_max);
        if made.is_err() {
            let _ = self.remove(name);
        }
        made
    }

    fn create_inner(&self, name: &str, tier: &Tier, pids_max: u32) -> io::Result<Vec<PathBuf>> {
        let bytes = u64::from(tier.memory_mb) * 1024 * 1024;
        // CFS: quota per 100 ms period; 1000 millicores = one full CPU = 100 ms per period.
        let period: u64 = 100_000;
        let quota = (u64::from(tier.cpu_millicores) * period / 1000).max(1000);
        match self {
            Mode::V2 { root } => {
                let dir = root.join(PARENT).join(name);
                fs::create_dir(&dir)?;
                write(&dir, "memory.max", &bytes.to_string())?;
                // Not every kernel has swap accounting; without it there is no swap to limit.
                let _ = write(&dir, "memory.swap.max", "0");
                let _ = write(&dir, "cpu.max", &format!("{quota} {period}"));
                let _ = write(&dir, "pids.max", &pids_max.to_string());
                Ok(vec![dir.join("cgroup.procs")])
            }
            Mode::V1 { memory, cpu, pids } => {
                let mut procs = Vec::new();
                let mem = memory.join(PARENT).join(name);
                fs::create_dir(&mem)?;
                write(&mem, "memory.limit_in_bytes", &bytes.to_string())?;
                // memsw is memory + swap; equal to the memory limit means no swap at all.
                if mem.join("memory.memsw.limit_in_bytes").exists() {
                    write(&mem, "memory.memsw.limit_in_bytes", &bytes.to_string())?;
                }
                let _ = write(&mem, "memory.swappiness", "0");
                procs.push(mem.join("cgroup.procs"));
                if let Some(cpu) = cpu {
                    let dir = cpu.join(PARENT).join(name);
                    fs::create_dir(&dir)?;
                    write(&dir, "cpu.cfs_period_us", &period.to_string())?;
                    write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
                    procs.push(dir.join("cgroup.procs"));
                }
                if let Some(pids) = pids {
                    let dir = pids.join(PARENT).join(name);
                    fs::create_dir(&dir)?;
                    write(&dir, "pids.max", &pids_max.to_string())?;
                    procs.push(dir.join("cgroup.procs"));
                }
                Ok(procs)
            }
            Mode::Rlimits => Ok(Vec::new()),
        }
    }

    /// The rlimits a workload's processes get in rlimit mode (`None` when cgroups do the job).
    pub fn rlimits(&self, tier: &Tier) -> Option<Rlimits> {
        match self {
            Mode::Rlimits => Some(Rlimits {
                address_space: u64::from(tier.memory_mb) * 1024 * 1024,
            }),
            _ => None,
        }
    }

    /// Every process still in the groups of `name` (host pids).
    pub fn procs(&self, name: &str) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs(name)
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Kill everything in the groups of `name` and remove them. Missing groups are fine.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let dirs = self.dirs(name);
        if dirs.iter().all(|d| !d.exists()) {
            return Ok(());
        }
        if let Mode::V2 { .. } = self {
            // cgroup.kill (Linux 5.14) kills the whole subtree atomically.
            for d in &dirs {
                let _ = write(d, "cgroup.kill", "1");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for pid in self.procs(name) {
                // SAFETY: plain syscall; the pid was read from the workload's own cgroup.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            let mut last_err = None;
            for d in &dirs {
                match fs::remove_dir(d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => last_err = Some(e),
                }
            }
            match last_err {
                None => return Ok(()),
                // EBUSY until the last killed task is reaped.
                Some(e) if Instant::now() >= deadline => return Err(e),
                Some(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

fn ensure_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Exists, but is it ours to write into? Probe with a throwaway child group.
            let probe = dir.join(format!(".probe-{}", std::process::id()));
            fs::create_dir(&probe)?;
            fs::remove_dir(&probe)
        }
        Err(e) => Err(e),
    }
}

/// v2: a controller is usable in a group only if every ancestor enabled it for its children.
fn enable_controllers(root: &Path, parent: &Path) -> io::Result<()> {
    let available = fs::read_to_string(root.join("cgroup.controllers"))?;
    let wanted: Vec<&str> = ["memory", "cpu", "pids"]
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect();
    if !wanted.contains(&"memory") {
        return Err(io::Error::other("the memory controller is not available"));
    }
    for dir in [root, parent] {
        for c in &wanted {
            write(dir, "cgroup.subtree_control", &format!("+{c}"))?;
        }
    }
    Ok(())
}

/// Whether this process may write `p` (by its real ids, which an ordinary user's are).
fn may_write(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access on a valid C string.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    fs::write(dir.join(file), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier() -> Tier {
        Tier {
            id: "t".into(),
            name: "t".into(),
            description: String::new(),
            cpu_millicores: 500,
            memory_mb: 64,
            disk_gb: None,
            rate_msats_per_sec: 1,
        }
    }

    #[test]
    fn a_fake_v1_tree_gets_limits_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        for c in ["memory", "cpu", "pids"] {
            fs::create_dir(dir.path().join(c)).unwrap();
            fs::write(dir.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        let mode = Mode::detect_at(dir.path());
        assert!(matches!(
            mode,
            Mode::V1 {
                cpu: Some(_),
                pids: Some(_),
                ..
            }
        ));
        // A fake tree has no kernel behind it: create the groups' files by hand after mkdir.
        let procs = mode.create("w1", &tier(), 64);
        // mkdir works but the limit files do not exist until written; writing creates them here.
        let procs = procs.unwrap();
        assert_eq!(procs.len(), 3);
        let mem = dir.path().join("memory/paygress/w1");
        assert_eq!(
            fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("cpu/paygress/w1/cpu.cfs_quota_us")).unwrap(),
            "50000"
        );
        assert!(mode.rlimits(&tier()).is_none());
    }

    /// A fake delegated v2 subtree: the provider's own cgroup becomes the root of the layout,
    /// with the provider moved into a leaf first.
    #[test]
    fn a_delegated_v2_subtree_is_used_rootless() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        fs::write(base.join("cgroup.controllers"), "cpu memory pids").unwrap();
        let own = base.join("user.slice/user@1000.service/app.slice/paygress.service");
        fs::create_dir_all(&own).unwrap();
        for f in ["cgroup.procs", "cgroup.subtree_control"] {
            fs::write(own.join(f), "").unwrap();
        }
        fs::write(own.join("cgroup.controllers"), "memory pids").unwrap();
        let me = "0::/user.slice/user@1000.service/app.slice/paygress.service\n";
        let mode = Mode::detect_delegated_at(base, me);
        assert_eq!(mode, Mode::V2 { root: own.clone() });
        assert_eq!(
            fs::read_to_string(own.join("paygress-provider/cgroup.procs")).unwrap(),
            "0"
        );
        assert_eq!(
            mode.dirs("w"),
            vec![own.join("paygress").join("w")],
            "workloads under the provider's own cgroup"
        );
        // Without the memory controller delegated, or outside v2, or at the root: rlimits.
        fs::write(own.join("cgroup.controllers"), "pids").unwrap();
        assert_eq!(Mode::detect_delegated_at(base, me), Mode::Rlimits);
        assert_eq!(Mode::detect_delegated_at(base, "0::/\n"), Mode::Rlimits);
        assert_eq!(Mode::detect_delegated_at(base, "0::/../x\n"), Mode::Rlimits);
        assert_eq!(
            Mode::detect_delegated_at(&base.join("missing"), me),
            Mode::Rlimits
        );
    }

    #[test]
    fn nothing_writable_means_rlimits() {
        let dir = tempfile::tempdir().unwrap();
        let mode = Mode::detect_at(&dir.path().join("missing"));
        assert_eq!(mode, Mode::Rlimits);
        assert_eq!(
            mode.rlimits(&tier()),
            Some(Rlimits {
                address_space: 64 << 20
            })
        );
        assert!(mode.create("w", &tier(), 1).unwrap().is_empty());
        mode.remove("w").unwrap();
    }
}
