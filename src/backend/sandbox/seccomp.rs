//! The seccomp deny list every jailed process runs under.
//!
//! Namespaces decide what a workload can *see*; this filter takes away kernel interfaces a buyer
//! has no business using and that have a long history of privilege escalations, however the
//! namespaces are set up: kernel keyrings (`keyctl`, `add_key`, `request_key`: not namespaced),
//! `bpf`, `perf_event_open`, `userfaultfd`, `io_uring`, every way to mount or re-arrange
//! filesystems (`mount`, the new mount API, `pivot_root`, `umount2`), joining namespaces
//! (`setns`) and making **new user namespaces** (`unshare`/`clone` with `CLONE_NEWUSER`; `clone3`
//! answers `ENOSYS`, as its flags sit in memory a filter cannot read, and the C library falls
//! back to `clone`), modules, kexec, reboot, swap, quotas, the kernel log, clocks,
//! `open_by_handle_at`, and the x32 ABI and foreign architectures altogether. Denied calls fail
//! with `EPERM`; everything else is allowed (a deny list: the buyer's shell runs arbitrary
//! programs). `ptrace` stays allowed: the pid namespace already keeps every process outside the
//! workload out of reach, and debugging one's own programs is legitimate.
//!
//! The filter is a plain classic-BPF program, built once (before any fork) and installed with
//! `prctl(PR_SET_SECCOMP)` as the last step before exec, after `no_new_privs`.

/// One BPF instruction.
type Insn = libc::sock_filter;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Syscalls denied outright.
fn denied() -> Vec<libc::c_long> {
    let mut v = vec![
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_pivot_root,
        libc::SYS_setns,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_quotactl,
        libc::SYS_syslog,
        libc::SYS_acct,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_lookup_dcookie,
        libc::SYS_vhangup,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_uselib,
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_nfsservctl,
    ]);
    v
}

const fn stmt(code: u32, k: u32) -> Insn {
    Insn {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> Insn {
    Insn {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

const LD_W_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const JEQ: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
const JGE: u32 = libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K;
const JSET: u32 = libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K;
const RET: u32 = libc::BPF_RET | libc::BPF_K;
/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

/// The filter program (see the module docs).
#[derive(Debug, Clone)]
pub struct Filter(Vec<Insn>);

impl Filter {
    pub fn new() -> Filter {
        let mut p = vec![
            stmt(LD_W_ABS, ARCH),
            jump(JEQ, AUDIT_ARCH, 1, 0),
            stmt(RET, EPERM),
            stmt(LD_W_ABS, NR),
        ];
        #[cfg(target_arch = "x86_64")]
        p.extend([jump(JGE, 0x4000_0000, 0, 1), stmt(RET, EPERM)]);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = JGE;
        for nr in denied() {
            p.extend([jump(JEQ, nr as u32, 0, 1), stmt(RET, EPERM)]);
        }
        p.extend([jump(JEQ, libc::SYS_clone3 as u32, 0, 1), stmt(RET, ENOSYS)]);
        // clone and unshare: flags in the first argument (the low word holds CLONE_NEWUSER).
        for nr in [libc::SYS_clone, libc::SYS_unshare] {
            p.extend([
                jump(JEQ, nr as u32, 0, 4),
                stmt(LD_W_ABS, ARG0_LOW),
                jump(JSET, libc::CLONE_NEWUSER as u32, 0, 1),
                stmt(RET, EPERM),
                stmt(RET, ALLOW),
            ]);
        }
        p.push(stmt(RET, ALLOW));
        Filter(p)
    }

    /// Install the filter on the calling thread (and everything it starts). Needs
    /// `no_new_privs`. Only a syscall: safe between fork and exec.
    pub(super) fn install(&self) -> Result<(), ()> {
        let prog = libc::sock_fprog {
            len: self.0.len() as libc::c_ushort,
            filter: self.0.as_ptr() as *mut Insn,
        };
        // SAFETY: the program outlives the call; the kernel copies it.
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog,
                0,
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(())
        }
    }
}

impl Default for Filter {
    fn default() -> Self {
        Filter::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filter, installed in a forked child, denies what it should and allows the rest.
    #[test]
    fn a_filtered_child_cannot_make_user_namespaces_or_use_keyrings() {
        let f = Filter::new();
        assert!(f.0.len() < 255, "jump offsets must fit");
        // SAFETY: fork in a test; the child makes plain syscalls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain syscalls in the forked child, which exits with what it found.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if f.install().is_err() {
                    libc::_exit(10);
                }
                let errno = || *libc::__errno_location();
                if libc::unshare(libc::CLONE_NEWUSER) == 0 || errno() != libc::EPERM {
                    libc::_exit(11);
                }
                if libc::syscall(libc::SYS_keyctl, 0, 0, 0) == 0 || errno() != libc::EPERM {
                    libc::_exit(12);
                }
                if libc::syscall(libc::SYS_bpf, 0, 0, 0) == 0 || errno() != libc::EPERM {
                    libc::_exit(13);
                }
                if libc::getpid() <= 0 {
                    libc::_exit(14);
                }
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe {
            libc::waitpid(pid, &mut status, 0);
        }
        assert!(libc::WIFEXITED(status), "{status}");
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
