//! The steps of `bootstrap` and of `system reset`, and the constant root scripts they run.
//!
//! Every script here is a compile-time constant sent single-quoted to `/bin/bash -c` (see
//! [`super::remote`]); nothing the operator typed is in it. What varies — the config file, the
//! unit, the binary and its checksum, the setup scripts — is the script's standard input. Paths
//! are the fixed ones of [`super::settings`].

use std::time::Duration;

use super::pve;
use super::settings::HostBackend;
use super::steps::Step;

/// The unit file, as shipped for manual installs.
pub const UNIT_FILE: &str = include_str!("../../provider/paygress-provider.service");
const LXD_SETUP: &str = include_str!("../../provider/lxd-setup.sh");
const BUILD_IMAGE: &str = include_str!("../../provider/build-base-image.sh");

/// Prints the machine, then the C library (`glibc 2.36`, or `other: ` and the first line of
/// `ldd --version`), and fails (exit 3) without systemd or apt.
pub const PREFLIGHT: &str = "uname -m; \
    v=$(getconf GNU_LIBC_VERSION 2>/dev/null) && [ -n \"$v\" ] && echo \"$v\" \
    || echo \"other: $(ldd --version 2>&1 | head -n 1)\"; \
    [ -d /run/systemd/system ] || { echo \"this host does not run systemd\" >&2; exit 3; }; \
    command -v apt-get >/dev/null || { echo \"this host has no apt-get (Debian or Ubuntu needed)\" >&2; exit 3; }";

const PKG_CHECK_SANDBOX: &str = "for p in nftables slirp4netns; do \
    dpkg-query -W -f=\\${Status} \"$p\" 2>/dev/null | grep -q \"ok installed\" || exit 1; done";
const PKG_ACTION_SANDBOX: &str = "export DEBIAN_FRONTEND=noninteractive; \
    apt-get install -y -q --no-install-recommends nftables slirp4netns </dev/null >/dev/null \
    || { apt-get update -q </dev/null >/dev/null \
         && apt-get install -y -q --no-install-recommends nftables slirp4netns </dev/null >/dev/null; }";

/// Runs the shell script on standard input (one of the project's own setup scripts) from a
/// private temporary file, with no input of its own.
const RUN_STDIN_SCRIPT: &str = "f=$(mktemp) || exit 1; cat >\"$f\"; bash \"$f\" </dev/null; \
    rc=$?; rm -f \"$f\"; exit $rc";
/// provider/lxd-setup.sh with its two bridge addresses: the first two lines of standard input
/// (checked as `a.b.c.d/n` by bootstrap; here only ever data in the environment, quoted), then
/// the script.
const RUN_LXD_SETUP: &str = "read -r addr || exit 1; read -r waddr || exit 1;     f=$(mktemp) || exit 1; cat >\"$f\";     PAYGRESS_LXD_BRIDGE_ADDR=\"$addr\" PAYGRESS_LXD_WORKLOAD_BRIDGE_ADDR=\"$waddr\" bash \"$f\" </dev/null;     rc=$?; rm -f \"$f\"; exit $rc";
const LXD_CHECK: &str = "command -v lxc >/dev/null && lxd waitready --timeout=5 >/dev/null 2>&1 \
    && lxc storage show default >/dev/null 2>&1 && lxc network show lxdbr0 >/dev/null 2>&1 \
    && lxc network show paygressbr0 >/dev/null 2>&1 \
    && lxc profile show default 2>/dev/null | grep -q \"^  eth0:\"";
const IMAGE_CHECK: &str = "lxc image info paygress-debian-12 >/dev/null 2>&1";

const USER_CHECK: &str = "id -u paygress >/dev/null 2>&1";
const USER_ACTION: &str = "id -u paygress >/dev/null 2>&1 || useradd --system --user-group \
    --home-dir /var/lib/paygress --no-create-home --shell /usr/sbin/nologin paygress";
const USER_CHECK_LXD: &str = "id -u paygress >/dev/null 2>&1 && id -nG paygress | grep -qw lxd";
const USER_ACTION_LXD: &str = "set -e; id -u paygress >/dev/null 2>&1 || useradd --system \
    --user-group --home-dir /var/lib/paygress --no-create-home --shell /usr/sbin/nologin paygress; \
    getent group lxd >/dev/null || groupadd --system lxd; usermod -aG lxd paygress";

/// Input: `<sha256>  /usr/local/bin/paygress-cli`.
const BINARY_CHECK: &str = "sha256sum --status -c - 2>/dev/null";
/// Input: the checksum on the first line, then the binary. Verified on the host before it
/// replaces anything.
const BINARY_ACTION: &str = "set -e; read -r sum; mkdir -p /usr/local/bin; \
    t=$(mktemp /usr/local/bin/.paygress-cli.XXXXXX); cat >\"$t\"; \
    if ! echo \"$sum  $t\" | sha256sum --status -c -; then rm -f \"$t\"; \
      echo \"the uploaded binary does not match its checksum\" >&2; exit 1; fi; \
    chmod 0755 \"$t\"; mv -f \"$t\" /usr/local/bin/paygress-cli";

const DATADIR_CHECK: &str =
    "[ \"$(stat -c %U:%G:%a /var/lib/paygress 2>/dev/null)\" = paygress:paygress:700 ]";
const DATADIR_ACTION: &str = "install -d -o paygress -g paygress -m 0700 /var/lib/paygress";

/// Input: the config file.
const CONFIG_CHECK: &str = "cmp -s - /etc/paygress/paygress.toml \
    && [ \"$(stat -c %U:%a /etc/paygress/paygress.toml)\" = paygress:600 ]";
const CONFIG_ACTION: &str = "set -e; install -d -m 0755 /etc/paygress; \
    t=$(mktemp /etc/paygress/.paygress.toml.XXXXXX); cat >\"$t\"; \
    chown paygress:paygress \"$t\"; chmod 0600 \"$t\"; mv -f \"$t\" /etc/paygress/paygress.toml";

const IDENTITY_CHECK: &str =
    "[ \"$(stat -c %U:%a /var/lib/paygress/nostr.key 2>/dev/null)\" = paygress:600 ]";
/// Generates the key on the host, as the service's user; prints only the npub.
pub const IDENTITY: &str = "cd / && runuser -u paygress -- /usr/local/bin/paygress-cli \
    provider identity --config /etc/paygress/paygress.toml";

/// Input: the unit file.
const UNIT_CHECK: &str = "cmp -s - /etc/systemd/system/paygress-provider.service";
const UNIT_ACTION: &str = "set -e; t=$(mktemp /etc/systemd/system/.paygress-provider.XXXXXX); \
    cat >\"$t\"; chmod 0644 \"$t\"; mv -f \"$t\" /etc/systemd/system/paygress-provider.service; \
    systemctl daemon-reload";

/// Enabled, active, and no change waiting for a restart ([`super::steps::MARK_RESTART`]: a run
/// that changed the token, binary, config or unit and then failed before this step left it).
const SERVICE_CHECK: &str = "systemctl is-enabled --quiet paygress-provider \
    && systemctl is-active --quiet paygress-provider \
    && ! [ -e /run/paygress-restart-pending ]";
/// The mark goes only once the restarted service runs.
const SERVICE_ACTION: &str = "systemctl enable --quiet paygress-provider \
    && systemctl restart paygress-provider && sleep 2 \
    && systemctl is-active --quiet paygress-provider && rm -f /run/paygress-restart-pending \
    || { journalctl -u paygress-provider -n 20 --no-pager -o cat >&2; exit 1; }";

/// The LXD bridges' addresses (`a.b.c.d/n`), used only when LXD is first initialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LxdBridges {
    pub default: String,
    pub workloads: String,
}

impl Default for LxdBridges {
    fn default() -> Self {
        LxdBridges {
            default: "10.77.0.1/24".into(),
            workloads: "10.78.0.1/24".into(),
        }
    }
}

/// An IPv4 interface address with its prefix, `a.b.c.d/n`, as LXD's `ipv4.address` takes it.
pub fn parse_bridge_addr(s: &str) -> Result<String, String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or("expected a.b.c.d/n, e.g. 10.77.0.1/24")?;
    let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| "not an IPv4 address")?;
    let prefix: u8 = prefix.parse().map_err(|_| "the prefix is not a number")?;
    if !(8..=30).contains(&prefix) {
        return Err("the prefix must be 8 to 30".into());
    }
    Ok(format!("{ip}/{prefix}"))
}

fn user_step(backend: HostBackend) -> Step {
    let (user_check, user_action) = match backend {
        HostBackend::Lxd => (USER_CHECK_LXD, USER_ACTION_LXD),
        HostBackend::Sandbox | HostBackend::Proxmox => (USER_CHECK, USER_ACTION),
    };
    Step::new(
        "user",
        "create the system user paygress (no login, no home)",
    )
    .check(user_check, Vec::new())
    .action(user_action, Vec::new())
    .restarts()
}

/// `--backend proxmox`, before [`bootstrap_steps`]: the system user (the token file's owner),
/// then the template, roles, PVE user, token and ACLs of [`pve::steps`]. The config of the
/// later steps names the template these steps made sure of, so it is written after them.
pub fn pve_steps(targets: &pve::Targets, template: Option<&str>) -> Vec<Step> {
    let mut steps = vec![user_step(HostBackend::Proxmox)];
    steps.extend(pve::steps(targets, template));
    steps
}

/// The whole bootstrap, in order (for Proxmox: after [`pve_steps`]). `binary` is the file
/// uploaded, `sha256` its hex checksum.
pub fn bootstrap_steps(
    backend: HostBackend,
    bridges: &LxdBridges,
    config_toml: &str,
    binary: Vec<u8>,
    sha256: &str,
) -> Vec<Step> {
    let mut steps = Vec::new();
    match backend {
        HostBackend::Sandbox => steps.push(
            Step::new(
                "packages",
                "apt-get install nftables slirp4netns (the sandbox's network)",
            )
            .check(PKG_CHECK_SANDBOX, Vec::new())
            .action(PKG_ACTION_SANDBOX, Vec::new())
            .timeout(Duration::from_secs(600)),
        ),
        HostBackend::Lxd => {
            steps.push(
                Step::new(
                    "lxd",
                    "provider/lxd-setup.sh: install LXD, nftables, dnsmasq-base, lxcfs; storage pool, bridges, egress ACL",
                )
                .check(LXD_CHECK, Vec::new())
                .action(
                    RUN_LXD_SETUP,
                    format!("{}\n{}\n{LXD_SETUP}", bridges.default, bridges.workloads),
                )
                .timeout(Duration::from_secs(900)),
            );
            steps.push(
                Step::new(
                    "base-image",
                    "provider/build-base-image.sh: build and import paygress-debian-12",
                )
                .check(IMAGE_CHECK, Vec::new())
                .action(RUN_STDIN_SCRIPT, BUILD_IMAGE)
                .timeout(Duration::from_secs(1800)),
            );
        }
        // Nothing to install: PVE brings its own; pve_steps ran before.
        HostBackend::Proxmox => {}
    }
    // For Proxmox the user step ran first, in pve_steps (it owns the token's file).
    if backend != HostBackend::Proxmox {
        steps.push(user_step(backend));
    }
    let mut upload = format!("{sha256}\n").into_bytes();
    let size = binary.len();
    upload.extend(binary);
    steps.push(
        Step::new(
            "binary",
            match size {
                0 => "upload this paygress-cli to /usr/local/bin (sha256 checked on both ends)"
                    .into(),
                _ => format!(
                    "upload paygress-cli ({} MB, sha256 {}) to /usr/local/bin",
                    size / 1_000_000,
                    &sha256[..sha256.len().min(16)]
                ),
            },
        )
        .check(
            BINARY_CHECK,
            format!("{sha256}  /usr/local/bin/paygress-cli\n"),
        )
        .action(BINARY_ACTION, upload)
        .restarts()
        .timeout(Duration::from_secs(900)),
    );
    steps.push(
        Step::new("data-dir", "create /var/lib/paygress (0700, paygress)")
            .check(DATADIR_CHECK, Vec::new())
            .action(DATADIR_ACTION, Vec::new()),
    );
    steps.push(
        Step::new(
            "config",
            "write /etc/paygress/paygress.toml (0600, paygress)",
        )
        .check(CONFIG_CHECK, config_toml.as_bytes())
        .action(CONFIG_ACTION, config_toml.as_bytes())
        .restarts(),
    );
    steps.push(
        Step::new(
            "identity",
            "generate the Nostr key on the host (/var/lib/paygress/nostr.key, 0600)",
        )
        .check(IDENTITY_CHECK, Vec::new())
        .action(IDENTITY, Vec::new()),
    );
    steps.push(
        Step::new(
            "unit",
            "install /etc/systemd/system/paygress-provider.service",
        )
        .check(UNIT_CHECK, UNIT_FILE)
        .action(UNIT_ACTION, UNIT_FILE)
        .restarts(),
    );
    let mut service = Step::new("service", "enable and (re)start paygress-provider")
        .check(SERVICE_CHECK, Vec::new())
        .action(SERVICE_ACTION, Vec::new());
    service.restart_on_change = true;
    steps.push(service);
    steps
}

/// What an earlier bootstrap left running, as its own `provider status --json` says (its backend,
/// live workloads, earnings per wallet); `none` on a host without Paygress.
pub const PRIOR: &str =
    "if [ -f /etc/paygress/paygress.toml ] && [ -x /usr/local/bin/paygress-cli ] \
    && [ -d /var/lib/paygress ] && id -u paygress >/dev/null 2>&1; then \
      cd / && runuser -u paygress -- /usr/local/bin/paygress-cli provider status \
      --config /etc/paygress/paygress.toml --json; \
    else echo none; fi";
/// Prints `none` when there is no data dir, else the books as `wallet books` prints them (JSON,
/// every wallet file of the data dir, under its lock). A data dir holding wallets, a journal or
/// withdrawn tokens that cannot be read (binary or config gone) fails (exit 4): never read as 0.
pub const BOOKS: &str = "if ! [ -e /var/lib/paygress ]; then echo none; \
    elif [ -x /usr/local/bin/paygress-cli ] && [ -f /etc/paygress/paygress.toml ]; then \
      cd / && runuser -u paygress -- /usr/local/bin/paygress-cli wallet books \
      --config /etc/paygress/paygress.toml; \
    elif [ -e /var/lib/paygress/wallets ] || [ -e /var/lib/paygress/paygress.sqlite3 ] \
      || [ -e /var/lib/paygress/withdrawn.tokens ]; then \
      echo \"/var/lib/paygress holds wallets or a journal but the binary or the config is gone: cannot count them (rerun bootstrap first)\" >&2; exit 4; \
    else echo none; fi";
/// Every earnings balance out as tokens, one a line, each kept in
/// /var/lib/paygress/withdrawn.tokens (0600, fsynced) before it is printed (the service must
/// be stopped: it holds the data directory's lock).
pub const WITHDRAW_ALL: &str = "cd / && runuser -u paygress -- /usr/local/bin/paygress-cli \
    wallet withdraw --config /etc/paygress/paygress.toml --all";
/// Input: the sha256 of the tokens file the operator's side wrote and fsynced. Removes the
/// host's copy only when it is the same bytes.
pub const CONFIRM_TOKENS: &str = "read -r sum || exit 1; f=/var/lib/paygress/withdrawn.tokens; \
    [ -e \"$f\" ] || exit 0; \
    echo \"$sum  $f\" | sha256sum --status -c - \
    || { echo \"the withdrawn tokens written locally differ from $f; it is kept\" >&2; exit 1; }; \
    rm -f \"$f\" && sync /var/lib/paygress";
/// When the running service became active, in Unix seconds (host clock); fails when it is not
/// active.
pub const SERVICE_STARTED: &str = "systemctl is-active --quiet paygress-provider || exit 1; \
    t=$(systemctl show -p ActiveEnterTimestamp --value paygress-provider) && [ -n \"$t\" ] \
    && date -d \"$t\" +%s";
/// Whether the service runs now (to start it again when reset refuses).
pub const IS_ACTIVE: &str = "systemctl is-active --quiet paygress-provider";
/// Start the service again after a refused reset.
pub const START_ACTION: &str = "systemctl enable --now --quiet paygress-provider";

const STOPPED_CHECK: &str = "! systemctl is-active --quiet paygress-provider \
    && ! systemctl is-enabled --quiet paygress-provider 2>/dev/null";
pub const STOP_ACTION: &str = "systemctl disable --now --quiet paygress-provider 2>/dev/null; \
    ! systemctl is-active --quiet paygress-provider";
/// Nothing to remove: the provider never started (no journal, so no provider id and nothing
/// made), or its backend lists none of its workloads. A journal without the binary or config
/// to read it fails (its workloads could not be found).
const WORKLOADS_CHECK: &str = "if ! [ -e /var/lib/paygress/paygress.sqlite3 ]; then exit 0; fi; \
    [ -x /usr/local/bin/paygress-cli ] && [ -f /etc/paygress/paygress.toml ] || exit 1; \
    cd / && runuser -u paygress -- /usr/local/bin/paygress-cli provider remove-workloads \
    --config /etc/paygress/paygress.toml --check";
const WORKLOADS_ACTION: &str = "cd / && runuser -u paygress -- /usr/local/bin/paygress-cli \
    provider remove-workloads --config /etc/paygress/paygress.toml";
const FILES_CHECK: &str = "! [ -e /etc/systemd/system/paygress-provider.service ] \
    && ! [ -e /etc/paygress ] && ! [ -e /var/lib/paygress ] \
    && ! [ -e /usr/local/bin/paygress-cli ] && ! id -u paygress >/dev/null 2>&1";
const FILES_ACTION: &str = "if [ -e /var/lib/paygress/withdrawn.tokens ]; then \
      echo \"/var/lib/paygress/withdrawn.tokens holds withdrawn tokens the operator never confirmed; not deleting (run reset --withdraw-to FILE again)\" >&2; exit 1; fi; \
    rm -f /etc/systemd/system/paygress-provider.service; \
    systemctl daemon-reload; systemctl reset-failed paygress-provider 2>/dev/null; \
    pkill -KILL -u paygress 2>/dev/null; sleep 0.5; \
    rm -rf /etc/paygress /var/lib/paygress; rm -f /usr/local/bin/paygress-cli /run/paygress-restart-pending; \
    if id -u paygress >/dev/null 2>&1; then userdel paygress; fi; \
    if getent group paygress >/dev/null; then groupdel paygress; fi";
const BACKEND_CHECK_LXD: &str =
    "! dpkg-query -W -f=\\${Status} lxd 2>/dev/null | grep -q \"ok installed\"";
/// The names of LXD's instances without a Paygress mark (a workload's provider, or a warm
/// pool's), one a line; nothing when LXD is not there.
pub const FOREIGN_INSTANCES: &str = "command -v lxc >/dev/null || exit 0; \
    lxd waitready --timeout=10 >/dev/null 2>&1 || exit 0; \
    names=$(lxc list --format csv -c n) || exit 1; \
    for i in $names; do \
      p=$(lxc config get \"$i\" user.paygress.provider 2>/dev/null); \
      q=$(lxc config get \"$i\" user.paygress.pool 2>/dev/null); \
      [ -n \"$p$q\" ] || echo \"$i\"; done";
/// Purges only while no instance is left at all (ours were removed by the workloads step; any
/// other one is not ours to destroy).
const BACKEND_ACTION_LXD: &str = "export DEBIAN_FRONTEND=noninteractive; \
    if command -v lxc >/dev/null && lxd waitready --timeout=10 >/dev/null 2>&1; then \
      left=$(lxc list --format csv -c n) || exit 1; \
      if [ -n \"$left\" ]; then echo \"LXD still has instances: $left; not purging\" >&2; exit 1; fi; fi; \
    systemctl stop lxd.service lxd.socket 2>/dev/null; \
    apt-get purge -y -q lxd lxd-client lxcfs </dev/null >/dev/null && rm -rf /var/lib/lxd";
const BACKEND_CHECK_SANDBOX: &str =
    "! dpkg-query -W -f=\\${Status} slirp4netns 2>/dev/null | grep -q \"ok installed\"";
const BACKEND_ACTION_SANDBOX: &str = "export DEBIAN_FRONTEND=noninteractive; \
    apt-get purge -y -q slirp4netns </dev/null >/dev/null";

/// What `system reset` removes, in order (the earnings are dealt with before these run).
pub fn reset_steps(uninstall_backend: Option<HostBackend>) -> Vec<Step> {
    let mut steps = vec![
        Step::new("service", "stop and disable paygress-provider")
            .check(STOPPED_CHECK, Vec::new())
            .action(STOP_ACTION, Vec::new()),
        Step::new(
            "workloads",
            "remove every workload this provider made (its own labels only)",
        )
        .check(WORKLOADS_CHECK, Vec::new())
        .action(WORKLOADS_ACTION, Vec::new())
        .timeout(Duration::from_secs(600)),
        Step::new(
            "files",
            "remove the unit, /etc/paygress, /var/lib/paygress, the binary and the paygress user",
        )
        .check(FILES_CHECK, Vec::new())
        .action(FILES_ACTION, Vec::new()),
    ];
    match uninstall_backend {
        Some(HostBackend::Lxd) => steps.push(
            Step::new("backend", "purge lxd, lxd-client, lxcfs and /var/lib/lxd")
                .check(BACKEND_CHECK_LXD, Vec::new())
                .action(BACKEND_ACTION_LXD, Vec::new())
                .timeout(Duration::from_secs(600)),
        ),
        Some(HostBackend::Sandbox) => steps.push(
            Step::new("backend", "purge slirp4netns")
                .check(BACKEND_CHECK_SANDBOX, Vec::new())
                .action(BACKEND_ACTION_SANDBOX, Vec::new())
                .timeout(Duration::from_secs(600)),
        ),
        // `system reset` refuses --uninstall-backend proxmox before it gets here: bootstrap
        // does not undo what it made in PVE (see system.rs).
        Some(HostBackend::Proxmox) | None => {}
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_is_a_constant_without_single_quotes() {
        let b = LxdBridges::default();
        let steps = bootstrap_steps(HostBackend::Lxd, &b, "x = 1\n", vec![1, 2, 3], "ab")
            .into_iter()
            .chain(bootstrap_steps(
                HostBackend::Sandbox,
                &b,
                "x = 1\n",
                vec![],
                "ab",
            ))
            .chain(bootstrap_steps(
                HostBackend::Proxmox,
                &b,
                "x = 1\n",
                vec![],
                "ab",
            ))
            .chain(pve_steps(
                &pve::Targets {
                    storage: "local-lvm".into(),
                    template_storage: "local".into(),
                    bridge: "vmbr0".into(),
                },
                Some("debian-12-standard_12.7-1_amd64.tar.zst"),
            ))
            .chain(reset_steps(Some(HostBackend::Lxd)))
            .chain(reset_steps(Some(HostBackend::Sandbox)));
        for s in steps {
            assert!(!s.check.contains('\''), "{}", s.name);
            assert!(!s.action.contains('\''), "{}", s.name);
        }
        for s in [
            PREFLIGHT,
            SERVICE_STARTED,
            IDENTITY,
            BOOKS,
            WITHDRAW_ALL,
            CONFIRM_TOKENS,
            IS_ACTIVE,
            START_ACTION,
            STOP_ACTION,
            FOREIGN_INSTANCES,
            PRIOR,
        ]
        .iter()
        .chain(pve::SCRIPTS)
        .chain(super::super::pve_image::SCRIPTS)
        {
            assert!(!s.contains('\''));
        }
    }

    /// The preflight's first two lines, as this machine prints them (the script is run here by
    /// bash; without systemd it then exits 3, after printing them).
    #[test]
    fn the_preflight_prints_the_machine_and_its_libc() {
        let o = std::process::Command::new("bash")
            .arg("-c")
            .arg(PREFLIGHT)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some(std::env::consts::ARCH), "{out}");
        let libc = super::super::libc::parse_host_libc(lines.next().unwrap_or(""));
        if cfg!(target_env = "gnu") {
            assert!(
                matches!(libc, super::super::libc::HostLibc::Glibc(_)),
                "{libc:?}"
            );
        }
    }

    #[test]
    fn bridge_addresses_are_checked() {
        assert_eq!(parse_bridge_addr("10.99.0.1/24").unwrap(), "10.99.0.1/24");
        for bad in [
            "10.99.0.1",
            "10.99.0.1/33",
            "x/24",
            "10.99.0.1/24\nrm",
            "$(id)/24",
            "",
        ] {
            assert!(parse_bridge_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_unit_is_hardened() {
        for line in [
            "User=paygress",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/paygress",
            "PrivateTmp=yes",
            "ProtectHome=yes",
            "Restart=on-failure",
        ] {
            assert!(UNIT_FILE.lines().any(|l| l == line), "{line}");
        }
    }
}
