//! One provider process per data dir.
//!
//! Two providers on one data dir would each "recover" the other's in-flight spawns (refunding a
//! payment the other is still provisioning, destroying its workloads as orphans) and swap with
//! the same wallet seed. So the provider takes an exclusive lock on `data_dir/paygress.lock`
//! before it reads or writes anything there, and holds it for its lifetime; a second process is
//! refused with the other one's pid and command line.
//!
//! The lock is a POSIX record lock (`fcntl(F_SETLK)`): the kernel drops it when the process
//! ends, however it ends (kill -9 included), so a stale lock file never blocks a restart, and
//! `F_GETLK` names the holder. Record locks belong to the process, so one process may open the
//! same data dir again (the tests restart a provider in-process that way).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Held for the provider's lifetime; the lock goes with the file.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("data dir {dir} is in use by another paygress process (pid {pid}: {command}); stop it first or use another data_dir")]
    Busy {
        dir: String,
        pid: i32,
        command: String,
    },
    #[error("cannot lock data dir {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

fn flock_struct(kind: libc::c_short) -> libc::flock {
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    fl
}

impl DataDirLock {
    /// Take the lock on `dir` (which must exist), or say who holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let shown = dir.display().to_string();
        let io = |source| LockError::Io {
            dir: shown.clone(),
            source,
        };
        let path = dir.join("paygress.lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut fl = flock_struct(libc::F_WRLCK as libc::c_short);
        // SAFETY: the fd is open for the duration of the call and `fl` is a valid flock.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &mut fl) };
        if r == -1 {
            let err = std::io::Error::last_os_error();
            if !matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
                return Err(io(err));
            }
            let mut probe = flock_struct(libc::F_WRLCK as libc::c_short);
            // SAFETY: as above.
            let _ = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut probe) };
            let pid = probe.l_pid;
            let command = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    b.split(|c| *c == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_else(|_| "unknown command".into());
            return Err(LockError::Busy {
                dir: shown,
                pid,
                command,
            });
        }
        {
            use std::io::Write;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
            let _ = file.set_len(0);
            let _ = (&file).write_all(format!("{}\n", std::process::id()).as_bytes());
        }
        Ok(DataDirLock { _file: file })
    }
}
