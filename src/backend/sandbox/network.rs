//! The workload's network: its own network namespace, outbound traffic only.
//!
//! Every jail gets a fresh network namespace (see [`super::jail`]) with nothing but a loopback
//! of its own, so the host's `127.0.0.1` services (the provider's mint, relay, MCP and HTTP
//! doors), other tenants' private services and the host's abstract-free TCP ports are simply
//! not there. Outbound access is then added back from outside, in two steps, before the buyer
//! can log in:
//!
//! 1. **An egress filter** (nftables, loaded by `nft` started inside the namespace, with
//!    `CAP_NET_ADMIN` kept as an ambient capability in rootless mode): only loopback and allowed destinations pass; private ranges (RFC 1918,
//!    carrier-grade NAT), loopback, link-local (the cloud metadata address 169.254.169.254),
//!    multicast/reserved, every address of the host itself and whatever the config adds to
//!    `egress_deny` are refused at once (TCP reset / ICMP administratively prohibited), IPv6
//!    other than loopback too. Nobody inside holds `CAP_NET_ADMIN` over the namespace (root
//!    mode: it belongs to the host's user namespace; rootless: every capability is dropped before
//!    exec), so the rules cannot be changed from inside.
//! 2. **User-mode networking** by [`slirp4netns`](https://github.com/rootless-containers/slirp4netns)
//!    (Debian package `slirp4netns`): a tap device in the namespace whose traffic a host process
//!    turns into ordinary sockets, so no bridge, veth, NAT rule or routing change is made on the
//!    host. It runs with `--disable-host-loopback` (its gateway never leads to the host's
//!    loopback), its own sandbox (rootless: its seccomp filter instead, since its sandbox needs
//!    root inside the user namespace), and exits when the provider closes its exit pipe (stop,
//!    destroy, or the provider ending; a restarted provider attaches a new one to re-adopted
//!    workloads). DNS inside goes to slirp4netns's forwarder, `10.0.2.3`, which asks the host's
//!    resolvers.
//!
//! Why slirp4netns and not pasta: Debian 12's pasta (`passt` 2023-03) could not attach to an
//! existing namespace as root (it drops to `nobody` first and then may not open
//! `/proc/PID/ns/*`), while slirp4netns attaches in root and rootless mode alike. Both need
//! `/dev/net/tun`; where the provider's user may not open it (mode 0600, as on some hosts),
//! rootless workloads keep loopback only and the server says so.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// Destinations refused by default (besides the host's own addresses).
pub const DENY: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "224.0.0.0/3",
];

/// slirp4netns's DNS forwarder inside the namespace.
pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

/// An IPv4 network `a.b.c.d/n`, parsed (never passed on as the text it came in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 address or a.b.c.d/n network"))?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|n| *n <= 32)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to 32"))?;
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        Ok(Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }
}

impl Cidr {
    /// One address.
    pub fn host(addr: Ipv4Addr) -> Cidr {
        Cidr { addr, len: 32 }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What workloads may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    pub deny: Vec<Cidr>,
    pub allow: Vec<Cidr>,
}

impl Egress {
    /// The default deny list, the host's own addresses and the config's additions.
    pub fn new(extra_deny: &[String], allow: &[String]) -> Result<Egress, String> {
        let parse = |v: &[String], key: &str| {
            v.iter()
                .map(|s| {
                    s.parse::<Cidr>()
                        .map_err(|e| format!("backend.sandbox.{key}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut deny: Vec<Cidr> = DENY.iter().filter_map(|s| s.parse().ok()).collect();
        deny.extend(
            host_addresses()
                .into_iter()
                .map(|a| Cidr { addr: a, len: 32 }),
        );
        deny.extend(parse(extra_deny, "egress_deny")?);
        Ok(Egress {
            deny,
            allow: parse(allow, "egress_allow")?,
        })
    }

    /// The nftables ruleset loaded into each workload's namespace.
    pub fn ruleset(&self) -> String {
        let list = |v: &[Cidr]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let allow = if self.allow.is_empty() {
            String::new()
        } else {
            format!("    ip daddr {{ {} }} accept\n", list(&self.allow))
        };
        format!(
            "table inet paygress\n\
             delete table inet paygress\n\
             table inet paygress {{\n\
             \x20 set deny {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {deny} }} }}\n\
             \x20 chain out {{\n\
             \x20   type filter hook output priority 0; policy accept;\n\
             \x20   oifname \"lo\" accept\n\
             \x20   meta nfproto ipv6 reject\n\
             \x20   ip daddr {dns} udp dport 53 accept\n\
             \x20   ip daddr {dns} tcp dport 53 accept\n\
             {allow}\
             \x20   ip daddr @deny meta l4proto tcp reject with tcp reset\n\
             \x20   ip daddr @deny reject with icmp type admin-prohibited\n\
             \x20 }}\n\
             }}\n",
            deny = list(&self.deny),
            dns = DNS,
        )
    }
}

/// The host's own IPv4 addresses (every interface): a workload must not reach the provider's
/// ports through them.
pub fn host_addresses() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; we only read it in between.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out.sort();
    out.dedup();
    out
}

/// The helper programs, found in the usual system directories (not `$PATH`, which the
/// provider's caller controls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub slirp4netns: PathBuf,
    pub nft: PathBuf,
}

fn find(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

impl Tools {
    /// Find every helper, or say which are missing and what to install.
    pub fn find() -> Result<Tools, String> {
        let (s, n) = (find("slirp4netns"), find("nft"));
        match (s, n) {
            (Some(slirp4netns), Some(nft)) => Ok(Tools { slirp4netns, nft }),
            (s, n) => {
                let missing: Vec<&str> = [
                    (s.is_none(), "slirp4netns"),
                    (n.is_none(), "nft (package nftables)"),
                ]
                .into_iter()
                .filter_map(|(m, what)| m.then_some(what))
                .collect();
                Err(format!(
                    "the sandbox gives each workload its own network and needs {}: install it \
                     (`apt-get install slirp4netns nftables`), or set backend.sandbox.network = \
                     \"none\" for workloads with loopback only",
                    missing.join(", ")
                ))
            }
        }
    }
}

/// Whether this process may open `/dev/net/tun` (slirp4netns needs it).
pub fn tun_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .is_ok()
}

/// A running slirp4netns for one workload. Dropping it ends it (its exit pipe closes, and the
/// process is killed).
#[derive(Debug)]
pub struct Net {
    _child: tokio::process::Child,
    _exit_w: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot load the egress filter: {0}")]
    Filter(String),
    #[error("cannot start slirp4netns: {0}")]
    Slirp(String),
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: both fds were just created and are ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `CAP_NET_ADMIN`.
const CAP_NET_ADMIN: u32 = 12;

/// In `nft`'s forked child, before exec: join the workload's user namespace (rootless) and
/// network namespace, and keep `CAP_NET_ADMIN` across exec. An unprivileged uid loses every
/// capability at exec, so rootless `nft` gets it as an *ambient* capability (inheritable, then
/// raised ambient), which is why this is not `nsenter --preserve-credentials`. Plain syscalls on
/// descriptors opened before the fork.
fn enter_for_nft(user: Option<i32>, net: i32) -> io::Result<()> {
    let os = io::Error::last_os_error;
    // SAFETY (whole function): raw syscalls with valid arguments between fork and exec.
    unsafe {
        if let Some(u) = user {
            if libc::setns(u, libc::CLONE_NEWUSER) != 0 {
                return Err(os());
            }
        }
        if libc::setns(net, libc::CLONE_NEWNET) != 0 {
            return Err(os());
        }
        if user.is_some() {
            #[repr(C)]
            struct Header {
                version: u32,
                pid: i32,
            }
            #[repr(C)]
            #[derive(Clone, Copy)]
            struct Data {
                effective: u32,
                permitted: u32,
                inheritable: u32,
            }
            let mut header = Header {
                version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
                pid: 0,
            };
            let mut data = [Data {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            }; 2];
            if libc::syscall(
                libc::SYS_capget,
                &mut header as *mut Header,
                data.as_mut_ptr(),
            ) != 0
            {
                return Err(os());
            }
            data[0].inheritable |= 1 << CAP_NET_ADMIN;
            if libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) != 0 {
                return Err(os());
            }
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                CAP_NET_ADMIN as libc::c_ulong,
                0,
                0,
            ) != 0
            {
                return Err(os());
            }
        }
    }
    Ok(())
}

/// Load the egress filter into the network namespace of `pid` (the workload's init).
pub async fn load_filter(
    tools: &Tools,
    pid: i32,
    rootless: bool,
    ruleset: &str,
) -> Result<(), NetError> {
    let filter = |e: io::Error| NetError::Filter(e.to_string());
    let open = |what: &str| {
        std::fs::File::open(format!("/proc/{pid}/ns/{what}"))
            .map(OwnedFd::from)
            .map_err(filter)
    };
    let net = open("net")?;
    let user = if rootless { Some(open("user")?) } else { None };
    let (net_fd, user_fd) = (net.as_raw_fd(), user.as_ref().map(|u| u.as_raw_fd()));
    let mut c = std::process::Command::new(&tools.nft);
    c.args(["-f", "-"])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: enter_for_nft makes only syscalls on descriptors that stay open until spawn returns.
    unsafe {
        c.pre_exec(move || enter_for_nft(user_fd, net_fd));
    }
    let mut child = tokio::process::Command::from(c)
        .kill_on_drop(true)
        .spawn()
        .map_err(filter)?;
    drop((net, user));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ruleset.as_bytes()).await.map_err(filter)?;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| NetError::Filter("nft did not finish in 10 s".into()))?
        .map_err(filter)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Filter(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Start slirp4netns on the network namespace of `pid`; return once the tap is configured.
pub async fn attach(tools: &Tools, pid: i32, rootless: bool) -> Result<Net, NetError> {
    let slirp = |e: io::Error| NetError::Slirp(e.to_string());
    let (ready_r, ready_w) = pipe().map_err(slirp)?;
    let (exit_r, exit_w) = pipe().map_err(slirp)?;
    let mut c = std::process::Command::new(&tools.slirp4netns);
    // Its own sandbox (a mount namespace, capabilities dropped) needs root in the user namespace
    // it joins, which a rootless workload's (one id mapped) has not: there its seccomp filter.
    c.args(["--configure", "--mtu=65520", "--disable-host-loopback"])
        .arg(if rootless {
            "--enable-seccomp"
        } else {
            "--enable-sandbox"
        })
        .arg(format!("--ready-fd={}", ready_w.as_raw_fd()))
        .arg(format!("--exit-fd={}", exit_r.as_raw_fd()));
    if rootless {
        c.arg(format!("--userns-path=/proc/{pid}/ns/user"));
    }
    c.args(["--netns-type=path"])
        .arg(format!("/proc/{pid}/ns/net"))
        .arg("tap0")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let (rw, er) = (ready_w.as_raw_fd(), exit_r.as_raw_fd());
    // SAFETY: fcntl on two descriptors that stay open across the fork; nothing else runs.
    unsafe {
        c.pre_exec(move || {
            for fd in [rw, er] {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(c)
        .kill_on_drop(true)
        .spawn()
        .map_err(slirp)?;
    drop(ready_w);
    drop(exit_r);
    let ready = tokio::task::spawn_blocking(move || {
        let mut pfd = libc::pollfd {
            fd: ready_r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, then a one-byte read into a stack buffer from our pipe.
        unsafe {
            if libc::poll(&mut pfd, 1, 10_000) <= 0 {
                return false;
            }
            let mut b = [0u8; 1];
            libc::read(ready_r.as_raw_fd(), b.as_mut_ptr().cast(), 1) == 1 && b[0] == b'1'
        }
    })
    .await
    .unwrap_or(false);
    if !ready {
        let _ = child.start_kill();
        return Err(NetError::Slirp(
            "it did not configure the namespace in 10 s".into(),
        ));
    }
    Ok(Net {
        _child: child,
        _exit_w: exit_w,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_normalise_and_refuse_junk() {
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "198.18.0.7".parse::<Cidr>().unwrap().to_string(),
            "198.18.0.7/32"
        );
        for bad in ["10.0.0.0/33", "x", "1.2.3.4/8; flush ruleset", "::1", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_ruleset_denies_private_link_local_and_host_addresses() {
        let e = Egress::new(&["198.18.5.0/24".into()], &["10.9.0.0/16".into()]).unwrap();
        let r = e.ruleset();
        for want in [
            "10.0.0.0/8",
            "169.254.0.0/16",
            "127.0.0.0/8",
            "198.18.5.0/24",
            "ip daddr { 10.9.0.0/16 } accept",
            "oifname \"lo\" accept",
        ] {
            assert!(r.contains(want), "{want} missing:\n{r}");
        }
        assert!(r.find("10.9.0.0/16 } accept").unwrap() < r.find("@deny").unwrap());
        assert!(Egress::new(&["nope".into()], &[]).is_err());
    }
}
