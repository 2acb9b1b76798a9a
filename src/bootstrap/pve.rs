//! `bootstrap --backend proxmox`: check a Proxmox VE host and give Paygress an API token with the
//! least privileges the backend needs, made with PVE's own `pveum` and `pveam` on the host.
//!
//! Why it looks like this:
//! - **One table of privileges.** [`LEAST_PRIVILEGES`] is the only place that says what the
//!   token may do, on which paths. The bootstrap steps make one role per entry and put it on
//!   that entry's path only (a single role on several paths would grant every privilege on every
//!   one of them); `tests/proxmox_privileges.rs` launches fakepve with exactly these grants, runs the
//!   backend's whole life cycle, then takes each privilege away in turn and sees it fail.
//! - **The secret never leaves the host.** `pveum user token add … --output-format json` prints
//!   the secret once; the action pipes that straight into a 0600 file owned by `paygress`
//!   ([`TOKEN_FILE`]). It is never on a command line, in the step's output or on the wire. A
//!   rerun that finds the token but not its file removes the token and makes a new one (the old
//!   secret cannot be had again).
//! - **Nothing changes on a host that is not PVE.** [`PREFLIGHT`] only reads: `pveversion`
//!   (`pve-manager/X.Y.Z/…`, major ≥ [`MIN_MAJOR`]), `pveum`, `pveam`, `pvesm`, `openssl`, and
//!   `tar`, `zstd`, `base64` for the template's repack, an active `pveproxy`;
//!   it also prints the node name and the certificate fingerprint the config pins.
//! - **Values on standard input.** The storage, bridge and template names are checked here
//!   against PVE's own formats (a bad one is a usage error before any connection) and reach the
//!   constant scripts as lines of input, where they are only ever quoted arguments.
//!
//! The command syntax is checked against the sources: pve-access-control's
//! `src/PVE/CLI/pveum.pm` (`$cmddef`: `role add|modify` → `PVE::API2::Role` `create_role` /
//! `update_role` (`POST /access/roles`, `PUT /access/roles/{roleid}`, `privs`); `user add` →
//! `create_user` (`POST /access/users`); `user token add|delete|list` → `generate_token` /
//! `remove_token` / `token_index` (`/access/users/{userid}/token/{tokenid}`, `privsep`); `acl
//! modify` → `PVE::API2::ACL` `update_acl` (`PUT /access/acl`, `path`, `roles`, `users`,
//! `tokens`)), `src/PVE/API2/Role.pm` (a role id may not start with `PVE`; `index` lists
//! `privs` sorted and joined by `,`), `src/PVE/API2/ACL.pm` (`read_acl` lists `path`, `type`,
//! `ugid`, `roleid`, `propagate`; the token must exist before an ACL names it), pve-common's
//! `PVE/CLIFormatter.pm` (JSON output is `canonical`, i.e. sorted keys; pretty or not, so the
//! scripts drop all white space before matching) and pve-manager's `PVE/CLI/pveam.pm` (`list
//! STORAGE` prints volids in the first column, `available --section system` prints
//! `system   NAME`, `download STORAGE NAME`). `tests/bootstrap_pve.rs` checks every call against
//! PVE's API schema and performs it on fakepve.

use std::time::Duration;

use super::steps::Step;

/// The PVE user the token belongs to (realm `pve`: no Unix account, no password).
pub const PVE_USER: &str = "paygress@pve";
/// The token's name under [`PVE_USER`].
pub const TOKEN_NAME: &str = "provider";
/// `USER@REALM!NAME`, as the config and the ACLs name it.
pub const TOKEN_ID: &str = "paygress@pve!provider";
/// Where the secret lives on the host (0600, owner paygress).
pub const TOKEN_FILE: &str = "/etc/paygress/proxmox-token";
/// The backend is written against PVE 8 and 9 (`SDN.Use` on bridges exists since 8).
pub const MIN_MAJOR: u32 = 8;
/// The API the service talks to: pveproxy on the host itself.
pub const API_URL: &str = "https://127.0.0.1:8006";

/// Which path an entry of [`LEAST_PRIVILEGES`] is granted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclPath {
    /// `/vms`: every guest (PVE has no ACL path for a vmid range; tags keep the backend to its
    /// own guests).
    Vms,
    /// `/storage/<storage>`: where root disks are allocated.
    Storage,
    /// `/storage/<template storage>`: where the ostemplate lives.
    TemplateStorage,
    /// `/sdn/zones/localnetwork/<bridge>`: the bridge guests' `net0` attaches to.
    Bridge,
}

/// One role on one path.
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    pub role: &'static str,
    pub path: AclPath,
    pub privileges: &'static [&'static str],
}

/// Exactly what the Proxmox backend's LXC life cycle (create, start, status, list, stop,
/// destroy; `static` or `dhcp` network) calls for, per path. Why each privilege, as PVE checks
/// it (pve-container `PVE/API2/LXC.pm` and `PVE/LXC.pm` `check_ct_modify_config_perm`,
/// pve-manager `PVE/API2/Cluster.pm` resources, pve-storage `check_volume_access`):
/// - `/vms`: `VM.Allocate` (create, destroy), `VM.Audit` (status/current, the guest lists
///   `/nodes/N/lxc` and `/cluster/resources` show only audited guests, `/interfaces` in DHCP
///   mode), `VM.PowerMgmt` (status/start, status/stop), `VM.Config.CPU` (`cores`, `cpulimit`),
///   `VM.Config.Memory` (`memory`, `swap`), `VM.Config.Disk` (`rootfs`), `VM.Config.Network`
///   (`net0`, `hostname`), `VM.Config.Options` (`tags`, `unprivileged` and the other options).
/// - `/storage/<storage>`: `Datastore.AllocateSpace` (the new root disk).
/// - `/storage/<template storage>`: `Datastore.Audit` (reading the ostemplate: PVE accepts
///   `Datastore.AllocateSpace` or `Datastore.Audit` for `vztmpl` volumes; Audit is the lesser).
/// - `/sdn/zones/localnetwork/<bridge>`: `SDN.Use` (attaching `net0` to the bridge, PVE ≥ 8).
///
/// Task status needs nothing: a token may read its own tasks. Role ids may not start with
/// `PVE` (Role.pm reserves that namespace).
pub const LEAST_PRIVILEGES: &[Grant] = &[
    Grant {
        role: "PaygressGuests",
        path: AclPath::Vms,
        privileges: &[
            "VM.Allocate",
            "VM.Audit",
            "VM.Config.CPU",
            "VM.Config.Disk",
            "VM.Config.Memory",
            "VM.Config.Network",
            "VM.Config.Options",
            "VM.PowerMgmt",
        ],
    },
    Grant {
        role: "PaygressDisks",
        path: AclPath::Storage,
        privileges: &["Datastore.AllocateSpace"],
    },
    Grant {
        role: "PaygressTemplates",
        path: AclPath::TemplateStorage,
        privileges: &["Datastore.Audit"],
    },
    Grant {
        role: "PaygressBridge",
        path: AclPath::Bridge,
        privileges: &["SDN.Use"],
    },
];

/// The names the ACL paths are made from (checked with [`check_storage`] and [`check_bridge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    pub storage: String,
    pub template_storage: String,
    pub bridge: String,
}

impl AclPath {
    pub fn resolve(self, t: &Targets) -> String {
        match self {
            AclPath::Vms => "/vms".into(),
            AclPath::Storage => format!("/storage/{}", t.storage),
            AclPath::TemplateStorage => format!("/storage/{}", t.template_storage),
            AclPath::Bridge => format!("/sdn/zones/localnetwork/{}", t.bridge),
        }
    }
}

/// Every (path, role, privileges) the token and its user get.
pub fn acls(t: &Targets) -> Vec<(String, &'static str, &'static [&'static str])> {
    LEAST_PRIVILEGES
        .iter()
        .map(|g| (g.path.resolve(t), g.role, g.privileges))
        .collect()
}

/// PVE's `pve-node` format (pve-common `PVE/JSONSchema.pm` `pve_verify_node_name`).
pub fn check_node(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-');
    match ok {
        true => Ok(s.to_string()),
        false => Err("not a PVE node name (letters, digits and inner hyphens)".into()),
    }
}

/// PVE's `pve-storage-id` format (pve-common `PVE/JSONSchema.pm` `parse_storage_id`:
/// `^[a-z][a-z0-9\-\_\.]*[a-z0-9]$` case-insensitive).
pub fn check_storage(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let ok = b.len() >= 2
        && b.len() <= 64
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    match ok {
        true => Ok(s.to_string()),
        false => Err("not a PVE storage id (a letter, then letters, digits, - _ .; at least 2, ending in a letter or digit)".into()),
    }
}

/// PVE's `pve-bridge-id` format (pve-common `PVE/JSONSchema.pm`: `^[-_.\w\d]+$`), kept to a
/// Linux interface name (at most 15 bytes) starting with a letter or digit.
pub fn check_bridge(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 15
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    match ok {
        true => Ok(s.to_string()),
        false => Err("not a bridge name (letters, digits, - _ .; at most 15, starting with a letter or digit)".into()),
    }
}

/// A template file name as `pveam` lists it under `vztmpl/` (no path, no white space).
pub fn check_template_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 200
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'+'))
        && (s.ends_with(".tar.zst") || s.ends_with(".tar.gz") || s.ends_with(".tar.xz"));
    match ok {
        true => Ok(s.to_string()),
        false => Err(
            "not a container template file name (e.g. debian-12-standard_12.7-1_amd64.tar.zst)"
                .into(),
        ),
    }
}

/// Read-only. Input: the template storage on the first line, then the template file name or
/// an empty line (then: the newest `debian-12-standard` present there), then the root disks'
/// storage and the bridge: both storages must be defined in `/etc/pve/storage.cfg` (its
/// `TYPE: ID` section heads) and the bridge must be a Linux bridge on the host, or the first
/// paid create would fail after bootstrap reported success. Exits 3 on a host
/// that is not PVE ≥ 8, naming what is missing. Prints `version=`, `node=`, `fingerprint=`
/// (of the certificate pveproxy serves: `pveproxy-ssl.pem` when present, else `pve-ssl.pem`)
/// and `template=` (the volid when the template is on the storage, else empty).
pub const PREFLIGHT: &str = "read -r tstore || exit 1; read -r tname; read -r dstore; read -r bridge; \
    command -v pveversion >/dev/null || { echo \"not a Proxmox VE host: pveversion is missing\" >&2; exit 3; }; \
    v=$(pveversion 2>/dev/null | head -n 1); \
    case \"$v\" in pve-manager/[0-9]*) ;; *) echo \"not a Proxmox VE host: pveversion printed no pve-manager/X.Y version\" >&2; exit 3;; esac; \
    m=${v#pve-manager/}; m=${m%%.*}; \
    case \"$m\" in \"\"|*[!0-9]*) echo \"cannot read the major version from: $v\" >&2; exit 3;; esac; \
    [ \"$m\" -ge 8 ] || { echo \"Proxmox VE $m is too old: 8 or newer is needed ($v)\" >&2; exit 3; }; \
    for c in pveum pveam pvesm openssl tar zstd base64; do command -v \"$c\" >/dev/null || { echo \"not a usable Proxmox VE host: $c is missing\" >&2; exit 3; }; done; \
    systemctl is-active --quiet pveproxy || { echo \"pveproxy is not active: the API on port 8006 is down\" >&2; exit 3; }; \
    for st in \"$dstore\" \"$tstore\"; do [ -z \"$st\" ] || awk -v s=\"$st\" \"\\$1 ~ /:\\$/ && \\$2 == s { f = 1 } END { exit !f }\" /etc/pve/storage.cfg 2>/dev/null \
      || { echo \"no storage $st in /etc/pve/storage.cfg (pvesm status lists the storages)\" >&2; exit 3; }; done; \
    [ -z \"$bridge\" ] || [ -d \"/sys/class/net/$bridge/bridge\" ] || { echo \"no bridge $bridge on this host\" >&2; exit 3; }; \
    c=/etc/pve/local/pveproxy-ssl.pem; [ -f \"$c\" ] || c=/etc/pve/local/pve-ssl.pem; \
    [ -f \"$c\" ] || { echo \"no node certificate (/etc/pve/local/pve-ssl.pem)\" >&2; exit 3; }; \
    fp=$(openssl x509 -in \"$c\" -noout -fingerprint -sha256) || { echo \"cannot read $c\" >&2; exit 3; }; \
    n=$(uname -n); n=${n%%.*}; \
    t=$(pveam list \"$tstore\" 2>/dev/null | awk -v s=\"$tstore:vztmpl/\" -v w=\"$tname\" \
      \"NR > 1 && index(\\$1, s) == 1 && ((w != \\\"\\\" && \\$1 == s w) || (w == \\\"\\\" && index(\\$1, s \\\"debian-12-standard_\\\") == 1)) { print \\$1 }\" \
      | sort -V | tail -n 1); \
    echo \"version=$v\"; echo \"node=$n\"; echo \"fingerprint=${fp#*=}\"; echo \"template=$t\"";

/// What [`PREFLIGHT`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub version: String,
    pub node: String,
    /// `AB:CD:…` (32 bytes).
    pub fingerprint: String,
    /// The ostemplate volid when present.
    pub template: Option<String>,
}

/// Why a host is not one bootstrap can prepare for Proxmox.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PveHostError {
    #[error("the host is not a Proxmox VE host bootstrap can use: {0}; nothing was changed")]
    NotPve(String),
    #[error("the host's preflight answer is incomplete ({0} missing)")]
    Incomplete(&'static str),
    #[error("the host's node name {0:?} is not a PVE node name; pass --pve-node")]
    BadNode(String),
    #[error("the node certificate's fingerprint {0:?} is not a SHA-256 fingerprint")]
    BadFingerprint(String),
}

/// Parse [`PREFLIGHT`]'s output. `node` is the operator's `--pve-node`: when given, it is the
/// node (already checked) and the host's own name is not checked.
pub fn parse_facts(stdout: &str, node: Option<&str>) -> Result<Facts, PveHostError> {
    let get = |k: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .map(|v| v.trim().to_string())
    };
    let version = get("version").ok_or(PveHostError::Incomplete("version"))?;
    let node = match node {
        Some(n) => n.to_string(),
        None => get("node").ok_or(PveHostError::Incomplete("node"))?,
    };
    let fingerprint = get("fingerprint").ok_or(PveHostError::Incomplete("fingerprint"))?;
    let template = get("template").ok_or(PveHostError::Incomplete("template"))?;
    if check_node(&node).is_err() {
        return Err(PveHostError::BadNode(node));
    }
    let fp = fingerprint.to_ascii_uppercase();
    let parts: Vec<&str> = fp.split(':').collect();
    if parts.len() != 32
        || !parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(PveHostError::BadFingerprint(fingerprint));
    }
    Ok(Facts {
        version,
        node,
        fingerprint: fp,
        template: (!template.is_empty()).then_some(template),
    })
}

/// Input: one line per role, `ROLE PRIV,PRIV,…` (sorted, as `pveum role list` prints them).
const ROLES_CHECK: &str = "set -o pipefail; \
    have=$(pveum role list --output-format json | tr -d \"[:space:]\") || exit 1; \
    while read -r r p; do [ -n \"$r\" ] || continue; \
      case \"$have\" in *\"\\\"privs\\\":\\\"$p\\\",\\\"roleid\\\":\\\"$r\\\"\"*) ;; *) echo \"role $r differs\" >&2; exit 1;; esac; \
    done";
/// Same input: `role add` for a missing role, `role modify` (replacing the list) for one that
/// differs.
const ROLES_ACTION: &str = "set -o pipefail; \
    have=$(pveum role list --output-format json | tr -d \"[:space:]\") || exit 1; \
    while read -r r p; do [ -n \"$r\" ] || continue; \
      case \"$have\" in \
        *\"\\\"roleid\\\":\\\"$r\\\"\"*) pveum role modify \"$r\" --privs \"$p\" </dev/null || exit 1;; \
        *) pveum role add \"$r\" --privs \"$p\" </dev/null || exit 1;; esac; \
    done";

const PVE_USER_CHECK: &str = "set -o pipefail; \
    have=$(pveum user list --output-format json | tr -d \"[:space:]\") || exit 1; \
    case \"$have\" in *\"\\\"userid\\\":\\\"paygress@pve\\\"\"*) ;; *) exit 1;; esac";
const PVE_USER_ACTION: &str = "pveum user add paygress@pve \
    --comment \"Paygress provider (made by paygress-cli bootstrap)\" </dev/null";

/// Token listed with privilege separation (`privsep` 1: a token without it would hold all of
/// its user's rights; keys are sorted, so `privsep` comes right before `tokenid`) and its secret
/// file in place (owner paygress, 0600, not empty). A token that fails this is made again by
/// [`TOKEN_ACTION`]. The list is read whole before it is matched (no `grep -q` closing a pipe
/// early under `pipefail`).
const TOKEN_CHECK: &str = "set -o pipefail; \
    have=$(pveum user token list paygress@pve --output-format json | tr -d \"[:space:]\" \
      | sed \"s/\\\"privsep\\\":\\\"1\\\"/\\\"privsep\\\":1/g\") || exit 1; \
    case \"$have\" in *\"\\\"privsep\\\":1,\\\"tokenid\\\":\\\"provider\\\"\"*) ;; *) exit 1;; esac; \
    [ \"$(stat -c %U:%a /etc/paygress/proxmox-token 2>/dev/null)\" = paygress:600 ] \
    && [ -s /etc/paygress/proxmox-token ]";
/// A token whose secret file is gone is removed first (its secret cannot be read again). The
/// secret goes from pveum's standard output through `tr` and `sed` into a private file and is
/// moved in place; nothing of it is printed.
const TOKEN_ACTION: &str = "set -o pipefail; umask 077; \
    have=$(pveum user token list paygress@pve --output-format json | tr -d \"[:space:]\") || exit 1; \
    case \"$have\" in *\"\\\"tokenid\\\":\\\"provider\\\"\"*) \
      pveum user token remove paygress@pve provider </dev/null >/dev/null || exit 1;; esac; \
    install -d -m 0755 /etc/paygress || exit 1; \
    t=$(mktemp /etc/paygress/.proxmox-token.XXXXXX) || exit 1; \
    if ! pveum user token add paygress@pve provider --privsep 1 \
      --comment \"Paygress provider (made by paygress-cli bootstrap)\" --output-format json </dev/null \
      | tr -d \"[:space:]\" | sed -n \"s/.*\\\"value\\\":\\\"\\([^\\\"]*\\)\\\".*/\\1/p\" >\"$t\" \
      || ! [ -s \"$t\" ]; then rm -f \"$t\"; echo \"pveum made no token secret\" >&2; exit 1; fi; \
    chown paygress:paygress \"$t\" && chmod 0600 \"$t\" && mv -f \"$t\" /etc/paygress/proxmox-token \
    || { rm -f \"$t\"; exit 1; }";

/// Input: one line per ACL, `PATH ROLE`. Both the user and the token (privilege separation:
/// the token gets the intersection of its own and its user's rights).
const ACL_CHECK: &str = "set -o pipefail; \
    have=$(pveum acl list --output-format json | tr -d \"[:space:]\" \
      | sed \"s/\\\"propagate\\\":\\\"1\\\"/\\\"propagate\\\":1/g\") || exit 1; \
    while read -r p r; do [ -n \"$p\" ] || continue; \
      for who in \"token\\\",\\\"ugid\\\":\\\"paygress@pve!provider\" \"user\\\",\\\"ugid\\\":\\\"paygress@pve\"; do \
        case \"$have\" in *\"{\\\"path\\\":\\\"$p\\\",\\\"propagate\\\":1,\\\"roleid\\\":\\\"$r\\\",\\\"type\\\":\\\"$who\\\"}\"*) ;; \
          *) echo \"no ACL $p $r\" >&2; exit 1;; esac; done; \
    done";
const ACL_ACTION: &str = "while read -r p r; do [ -n \"$p\" ] || continue; \
      pveum acl modify \"$p\" --roles \"$r\" --users paygress@pve --tokens paygress@pve!provider \
        --propagate 1 </dev/null || exit 1; \
    done";

/// Input: the template storage, then the template file name or an empty line. Present when
/// `pveam list` shows it (or, without a name, any `debian-12-standard`).
const TEMPLATE_CHECK: &str = "read -r s || exit 1; read -r n; \
    pveam list \"$s\" | awk -v v=\"$s:vztmpl/\" -v w=\"$n\" \
      \"NR > 1 && ((w != \\\"\\\" && \\$1 == v w) || (w == \\\"\\\" && index(\\$1, v \\\"debian-12-standard_\\\") == 1)) { f = 1 } END { exit !f }\"";
/// `pveam update`, then download the named template, or the newest `debian-12-standard` the
/// index offers. `pveam update` exits 0 when it fails (pveam.pm prints `update failed - see
/// /var/log/pveam.log …` to standard error and returns), so its error output is read.
const TEMPLATE_ACTION: &str = "set -o pipefail; read -r s || exit 1; read -r n; \
    e=$(pveam update </dev/null 2>&1 >/dev/null) && case \"$e\" in *\"update failed\"*) false;; esac \
      || { echo \"pveam update failed (see /var/log/pveam.log)\" >&2; exit 1; }; \
    if [ -z \"$n\" ]; then n=$(pveam available --section system \
      | awk \"index(\\$2, \\\"debian-12-standard_\\\") == 1 { print \\$2 }\" | sort -V | tail -n 1); fi; \
    [ -n \"$n\" ] || { echo \"pveam offers no debian-12-standard template\" >&2; exit 1; }; \
    pveam download \"$s\" \"$n\" </dev/null >/dev/null";

/// The Proxmox steps, before the common ones. `template` is the file name the operator named,
/// if any.
pub fn steps(t: &Targets, template: Option<&str>) -> Vec<Step> {
    let roles: String = LEAST_PRIVILEGES
        .iter()
        .map(|g| {
            let mut p: Vec<&str> = g.privileges.to_vec();
            p.sort_unstable();
            format!("{} {}\n", g.role, p.join(","))
        })
        .collect();
    let acl_lines: String = acls(t)
        .iter()
        .map(|(path, role, _)| format!("{path} {role}\n"))
        .collect();
    let template_input = format!("{}\n{}\n", t.template_storage, template.unwrap_or(""));
    let role_names: Vec<&str> = LEAST_PRIVILEGES.iter().map(|g| g.role).collect();
    vec![
        Step::new(
            "pve-template",
            format!(
                "pveam: make sure {} is on storage {} (else pveam update and download it)",
                template.unwrap_or("the newest debian-12-standard"),
                t.template_storage
            ),
        )
        .check(TEMPLATE_CHECK, template_input.clone())
        .action(TEMPLATE_ACTION, template_input)
        .timeout(Duration::from_secs(900)),
        Step::new(
            "pve-roles",
            format!(
                "pveum role add/modify {} (the least privileges, one role per path)",
                role_names.join(", ")
            ),
        )
        .check(ROLES_CHECK, roles.clone())
        .action(ROLES_ACTION, roles),
        Step::new(
            "pve-user",
            format!("pveum user add {PVE_USER} (no password: it logs in only by its token)"),
        )
        .check(PVE_USER_CHECK, Vec::new())
        .action(PVE_USER_ACTION, Vec::new()),
        Step::new(
            "pve-token",
            format!("pveum user token add {PVE_USER} {TOKEN_NAME} --privsep 1; the secret straight into {TOKEN_FILE} (0600, paygress) on the host"),
        )
        .check(TOKEN_CHECK, Vec::new())
        .action(TOKEN_ACTION, Vec::new())
        .restarts(),
        Step::new(
            "pve-acl",
            format!(
                "pveum acl modify for {PVE_USER} and {TOKEN_ID}: {}",
                acls(t)
                    .iter()
                    .map(|(p, r, _)| format!("{p} {r}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .check(ACL_CHECK, acl_lines.clone())
        .action(ACL_ACTION, acl_lines),
    ]
}

/// One `pveum`/`pveam` subcommand the scripts run, and the API method it maps to, as the
/// CLI's command table (`$cmddef`) says: pveum.pm for pveum, pve-manager's `PVE/CLI/pveam.pm`
/// for pveam. `path` is `None` for pveam's own local methods (`list`, `update`, `available`),
/// which are not API calls. Positional arguments fill the named parameters in order; options
/// are `--NAME VALUE` with NAME a parameter of the method (or `output-format`, the CLI's
/// standard output option, where the command table gives it).
#[derive(Debug, Clone, Copy)]
pub struct CliCall {
    pub cli: &'static str,
    pub method: &'static str,
    pub path: Option<&'static str>,
    pub positional: &'static [&'static str],
    pub options: &'static [&'static str],
    pub output_format: bool,
}

/// Every subcommand the scripts of this module run (a test checks the scripts use no other,
/// and each against PVE's API schema).
pub const CLI_CALLS: &[CliCall] = &[
    CliCall {
        cli: "pveum role list",
        method: "GET",
        path: Some("/access/roles"),
        positional: &[],
        options: &[],
        output_format: true,
    },
    CliCall {
        cli: "pveum role add",
        method: "POST",
        path: Some("/access/roles"),
        positional: &["roleid"],
        options: &["privs"],
        output_format: false,
    },
    CliCall {
        cli: "pveum role modify",
        method: "PUT",
        path: Some("/access/roles/{roleid}"),
        positional: &["roleid"],
        options: &["privs"],
        output_format: false,
    },
    CliCall {
        cli: "pveum user list",
        method: "GET",
        path: Some("/access/users"),
        positional: &[],
        options: &[],
        output_format: true,
    },
    CliCall {
        cli: "pveum user add",
        method: "POST",
        path: Some("/access/users"),
        positional: &["userid"],
        options: &["comment"],
        output_format: false,
    },
    CliCall {
        cli: "pveum user token list",
        method: "GET",
        path: Some("/access/users/{userid}/token"),
        positional: &["userid"],
        options: &[],
        output_format: true,
    },
    CliCall {
        cli: "pveum user token add",
        method: "POST",
        path: Some("/access/users/{userid}/token/{tokenid}"),
        positional: &["userid", "tokenid"],
        options: &["privsep", "comment"],
        output_format: true,
    },
    // `remove` is pveum's alias of `delete` (`remove => { alias => 'delete' }`).
    CliCall {
        cli: "pveum user token remove",
        method: "DELETE",
        path: Some("/access/users/{userid}/token/{tokenid}"),
        positional: &["userid", "tokenid"],
        options: &[],
        output_format: true,
    },
    CliCall {
        cli: "pveum acl list",
        method: "GET",
        path: Some("/access/acl"),
        positional: &[],
        options: &[],
        output_format: true,
    },
    CliCall {
        cli: "pveum acl modify",
        method: "PUT",
        path: Some("/access/acl"),
        positional: &["path"],
        options: &["roles", "users", "tokens", "propagate"],
        output_format: false,
    },
    CliCall {
        cli: "pveam list",
        method: "GET",
        path: None,
        positional: &["storage"],
        options: &[],
        output_format: false,
    },
    CliCall {
        cli: "pveam update",
        method: "PUT",
        path: None,
        positional: &[],
        options: &[],
        output_format: false,
    },
    CliCall {
        cli: "pveam available",
        method: "GET",
        path: None,
        positional: &[],
        options: &["section"],
        output_format: false,
    },
    // `download => ['PVE::API2::Nodes::Nodeinfo', 'apl_download', ['storage', 'template'],
    // { node => $nodename }]`.
    CliCall {
        cli: "pveam download",
        method: "POST",
        path: Some("/nodes/{node}/aplinfo"),
        positional: &["storage", "template"],
        options: &[],
        output_format: false,
    },
];

/// Every constant script of this module (for the tests that read them).
pub const SCRIPTS: &[&str] = &[
    PREFLIGHT,
    ROLES_CHECK,
    ROLES_ACTION,
    PVE_USER_CHECK,
    PVE_USER_ACTION,
    TOKEN_CHECK,
    TOKEN_ACTION,
    ACL_CHECK,
    ACL_ACTION,
    TEMPLATE_CHECK,
    TEMPLATE_ACTION,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Targets {
        Targets {
            storage: "local-lvm".into(),
            template_storage: "local".into(),
            bridge: "vmbr0".into(),
        }
    }

    #[test]
    fn scripts_are_constants_without_single_quotes() {
        for s in SCRIPTS {
            assert!(!s.contains('\''), "{s}");
        }
        for s in steps(&targets(), None) {
            assert!(
                !s.check.contains('\'') && !s.action.contains('\''),
                "{}",
                s.name
            );
        }
    }

    #[test]
    fn names_follow_pves_formats() {
        for ok in ["pve", "node-1", "PVE01", "a"] {
            assert!(check_node(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-pve", "pve-", "pve.example", "pve 1", "$(id)", "p\nx"] {
            assert!(check_node(bad).is_err(), "{bad:?}");
        }
        for ok in ["local-lvm", "local", "ceph_pool.2", "Zfs1"] {
            assert!(check_storage(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "l", "1local", "local-", "loc al", "local/x", "-x", "a;b",
        ] {
            assert!(check_storage(bad).is_err(), "{bad:?}");
        }
        for ok in ["vmbr0", "vmbr0.100", "br_lan", "v-1"] {
            assert!(check_bridge(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-vmbr0",
            "vmbr 0",
            "vmbr0/x",
            "averyveryverylongbridge",
            "a\nb",
        ] {
            assert!(check_bridge(bad).is_err(), "{bad:?}");
        }
        assert!(check_template_name("debian-12-standard_12.7-1_amd64.tar.zst").is_ok());
        for bad in ["", "../x.tar.zst", "x y.tar.zst", "debian.iso", "-x.tar.gz"] {
            assert!(check_template_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_table_is_one_role_per_path_and_names_real_paths() {
        let a = acls(&targets());
        let paths: Vec<&str> = a.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/vms",
                "/storage/local-lvm",
                "/storage/local",
                "/sdn/zones/localnetwork/vmbr0"
            ]
        );
        let mut roles: Vec<&str> = LEAST_PRIVILEGES.iter().map(|g| g.role).collect();
        roles.dedup();
        assert_eq!(roles.len(), LEAST_PRIVILEGES.len());
        assert!(roles
            .iter()
            .all(|r| !r.to_ascii_uppercase().starts_with("PVE")));
    }

    #[test]
    fn facts_are_parsed_and_checked() {
        let fp = vec!["AB"; 32].join(":");
        let out = format!(
            "version=pve-manager/8.2.4/faa83925c9641325\nnode=pve\nfingerprint={fp}\ntemplate=local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst\n"
        );
        let f = parse_facts(&out, None).unwrap();
        assert_eq!(f.node, "pve");
        assert_eq!(f.fingerprint, fp);
        assert_eq!(
            f.template.as_deref(),
            Some("local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst")
        );
        let none = out.replace(
            "template=local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
            "template=",
        );
        assert_eq!(parse_facts(&none, None).unwrap().template, None);
        assert!(matches!(
            parse_facts(&out.replace("node=pve", "node=bad.name"), None),
            Err(PveHostError::BadNode(_))
        ));
        assert!(matches!(
            parse_facts(&out.replace(&fp, "AB:CD"), None),
            Err(PveHostError::BadFingerprint(_))
        ));
        // --pve-node given: the host's own name is not the node, and not checked.
        assert_eq!(
            parse_facts(&out.replace("node=pve", "node=bad.name"), Some("pve2"))
                .unwrap()
                .node,
            "pve2"
        );
        assert_eq!(
            parse_facts("node=pve\n", None),
            Err(PveHostError::Incomplete("version"))
        );
    }
}
