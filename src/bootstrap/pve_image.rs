//! `bootstrap --backend proxmox`, step `pve-image`: derive the Paygress LXC template from the
//! stock one `pveam` downloaded, on the host, as root.
//!
//! Why: PVE's API installs a new container's password and keys for root only. The Proxmox
//! backend's buyers log in as their own user because the template carries the first-boot login
//! (`provider/proxmox/paygress-login.sh`, run by `paygress-login.service` before sshd). A stock
//! `debian-12-standard` has neither, so a provider bootstrapped on it would sell guests nobody
//! can log in to. This step adds the two files to a copy of the stock template, and the config
//! names that copy.
//!
//! How, and why so:
//! - **Without `pct`.** Making a container and `vzdump`ing it needs a running PVE and cannot be
//!   tested here. The template is a tarball of a root file system; the step unpacks it with the
//!   flags PVE's own restore uses (`--numeric-owner -p --xattrs`, `user.*` and
//!   `security.capability`), adds the files and the enable symlinks exactly as `systemctl
//!   enable` makes them for the unit's `[Install]` section (`WantedBy=multi-user.target`,
//!   `RequiredBy=ssh.service`: absolute links to `/etc/systemd/system/paygress-login.service` in
//!   `multi-user.target.wants/` and `ssh.service.requires/`), and packs it as zstd.
//! - **A name per content.** The derived file is `paygress-<stock name>-<hash>.tar.zst`, the
//!   hash over the two files ([`image_name`]): a changed login script makes a new file, and the
//!   old one stays, so a create already running on it does not lose its template. The step's
//!   check is only "that file is there".
//! - **Constant scripts, values on standard input.** The storage and the stock file name are
//!   lines (checked by bootstrap against PVE's formats), the two files are one base64 line each
//!   (embedded with `include_str!`). `pvesm path STORAGE:vztmpl/NAME` (pve-storage
//!   `PVE/CLI/pvesm.pm`, method `path`: prints `PVE::Storage::path` of the volume) finds the
//!   stock file; the output goes next to it, under the same storage.
//! - **Nothing half-made.** The work happens in a private temporary directory in the output
//!   directory (same file system, so the final `mv` is an atomic rename), removed by a trap on
//!   every exit. A template without `/usr/sbin/sshd` is refused (exit 5), as is one whose
//!   directories on the way to the new files are symlinks (writing through them would write
//!   outside the tree).
//! - **One core, tested as is.** [`REPACK`] (source path, output directory, then the name and
//!   files) is the whole repack; the step's action only resolves the path and runs it.
//!   `tests/pve_image.rs` runs exactly [`REPACK`] on a real Debian 12 tree and boots the result
//!   in LXD.

use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};

use super::pve::Targets;
use super::steps::Step;

/// The first-boot login script, installed as `/usr/local/sbin/paygress-login` (0755).
pub const LOGIN_SCRIPT: &str = include_str!("../../provider/proxmox/paygress-login.sh");
/// Its unit, installed as `/etc/systemd/system/paygress-login.service` (0644) and enabled.
pub const LOGIN_UNIT: &str = include_str!("../../provider/proxmox/paygress-login.service");

/// The repack, as a literal so that [`IMAGE_ACTION`] can contain it (`concat!`).
macro_rules! repack_script {
    () => {
        "set -o pipefail; umask 022; \
        read -r src || exit 1; read -r out || exit 1; read -r name || exit 1; \
        read -r login || exit 1; read -r unit || exit 1; \
        case \"$name\" in */*|.*) echo \"not a file name: $name\" >&2; exit 2;; paygress-*.tar.zst) ;; \
          *) echo \"not a derived template name: $name\" >&2; exit 2;; esac; \
        case \"$src\" in *.tar.zst) z=--zstd;; *.tar.xz) z=--xz;; *.tar.gz) z=--gzip;; \
          *) echo \"not a .tar.zst, .tar.xz or .tar.gz template: $src\" >&2; exit 2;; esac; \
        [ -f \"$src\" ] || { echo \"no template file at $src\" >&2; exit 4; }; \
        [ -d \"$out\" ] || { echo \"no directory $out\" >&2; exit 4; }; \
        if [ -s \"$out/$name\" ]; then echo \"$name is there already\"; exit 0; fi; \
        tmp=$(mktemp -d \"$out/.paygress-image.XXXXXX\") || exit 1; \
        cleanup() { rm -rf -- \"$tmp\"; }; trap cleanup EXIT; trap \"exit 1\" HUP INT TERM; \
        root=\"$tmp/root\"; mkdir -m 0755 \"$root\" || exit 1; \
        tar -x $z -f \"$src\" -C \"$root\" --numeric-owner -p --sparse --acls --xattrs \
          \"--xattrs-include=user.*\" \"--xattrs-include=security.capability\" \
          || { echo \"cannot unpack $src\" >&2; exit 1; }; \
        if ! [ -e \"$root/usr/sbin/sshd\" ]; then \
          echo \"the template $src has no /usr/sbin/sshd: buyers could not log in (choose one with openssh-server)\" >&2; exit 5; fi; \
        for d in usr usr/local usr/local/sbin etc etc/systemd etc/systemd/system \
          etc/systemd/system/multi-user.target.wants etc/systemd/system/ssh.service.requires; do \
          if [ -L \"$root/$d\" ] || { [ -e \"$root/$d\" ] && ! [ -d \"$root/$d\" ]; }; then \
            echo \"/$d in the template $src is not a directory; not writing through it\" >&2; exit 5; fi; \
          mkdir -p -m 0755 \"$root/$d\" || exit 1; done; \
        b=\"$root/usr/local/sbin/paygress-login\"; u=\"$root/etc/systemd/system/paygress-login.service\"; \
        rm -rf -- \"$b\" \"$u\" || exit 1; \
        printf %s \"$login\" | base64 -d >\"$b\" && [ -s \"$b\" ] || { echo \"the login script did not decode\" >&2; exit 1; }; \
        printf %s \"$unit\" | base64 -d >\"$u\" && [ -s \"$u\" ] || { echo \"the unit did not decode\" >&2; exit 1; }; \
        chown 0:0 \"$b\" \"$u\" && chmod 0755 \"$b\" && chmod 0644 \"$u\" || exit 1; \
        for w in multi-user.target.wants ssh.service.requires; do \
          rm -rf -- \"$root/etc/systemd/system/$w/paygress-login.service\" || exit 1; \
          ln -s /etc/systemd/system/paygress-login.service \"$root/etc/systemd/system/$w/paygress-login.service\" || exit 1; done; \
        tar -c --zstd -f \"$tmp/image.tar.zst\" -C \"$root\" --numeric-owner --sparse --acls --xattrs \
          \"--xattrs-include=user.*\" \"--xattrs-include=security.capability\" . \
          || { echo \"cannot pack the derived template\" >&2; exit 1; }; \
        chmod 0644 \"$tmp/image.tar.zst\" && sync \"$tmp/image.tar.zst\" || exit 1; \
        mv -f -- \"$tmp/image.tar.zst\" \"$out/$name\" || exit 1; \
        echo \"made $name\""
    };
}

/// The repack. Input lines: the stock template's path, the output directory, then what
/// [`files_input`] gives (the derived file's name, the login script and the unit, base64 each).
/// Exit 0 when the derived file is there already (nothing touched), 2 bad input, 4 a missing
/// file or directory, 5 a template that cannot carry the login.
pub const REPACK: &str = repack_script!();

/// Input: the storage, the stock file name, the derived file name (the rest is not read).
/// Passes when the derived file is on the storage.
pub const IMAGE_CHECK: &str = "read -r s || exit 1; read -r n || exit 1; read -r name || exit 1; \
    p=$(pvesm path \"$s:vztmpl/$name\" </dev/null 2>/dev/null) && [ -s \"$p\" ]";

/// Input: the storage, the stock file name, then [`files_input`]. Resolves the stock file with
/// `pvesm path` and runs [`REPACK`] on it, the output next to it.
pub const IMAGE_ACTION: &str = concat!(
    "repack() ( ",
    repack_script!(),
    "\n); \
    read -r s || exit 1; read -r n || exit 1; \
    p=$(pvesm path \"$s:vztmpl/$n\" </dev/null) || { echo \"pvesm path $s:vztmpl/$n failed\" >&2; exit 1; }; \
    [ -f \"$p\" ] || { echo \"pvesm path $s:vztmpl/$n gave $p, which is no file\" >&2; exit 1; }; \
    { printf \"%s\\n%s\\n\" \"$p\" \"${p%/*}\"; cat; } | repack"
);

/// The derived template's file name: `paygress-<stock name without .tar.*>-<12 hex>.tar.zst`,
/// the hash over the login script and the unit (a change to either makes a new file).
pub fn image_name(stock: &str) -> String {
    let stem = [".tar.zst", ".tar.xz", ".tar.gz"]
        .iter()
        .find_map(|s| stock.strip_suffix(s))
        .unwrap_or(stock);
    let mut h = Sha256::new();
    h.update(LOGIN_SCRIPT.as_bytes());
    h.update([0u8]);
    h.update(LOGIN_UNIT.as_bytes());
    let hash = hex::encode(h.finalize());
    format!("paygress-{stem}-{}.tar.zst", &hash[..12])
}

/// The derived file's name, then the two files, one base64 line each.
pub fn files_input(name: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD;
    format!(
        "{name}\n{}\n{}\n",
        b.encode(LOGIN_SCRIPT),
        b.encode(LOGIN_UNIT)
    )
}

/// [`REPACK`]'s whole input, as [`IMAGE_ACTION`] hands it on.
pub fn repack_input(src: &str, out_dir: &str, name: &str) -> Vec<u8> {
    format!("{src}\n{out_dir}\n{}", files_input(name)).into_bytes()
}

/// The step, for the stock template `stock` (a file name on the template storage).
pub fn image_step(t: &Targets, stock: &str) -> Step {
    let name = image_name(stock);
    let head = format!("{}\n{stock}\n{name}\n", t.template_storage);
    Step::new(
        "pve-image",
        format!(
            "derive {}:vztmpl/{name} from {stock}: add the Paygress first-boot login (paygress-login.sh and its unit, enabled), repack (no pct)",
            t.template_storage
        ),
    )
    .check(IMAGE_CHECK, head.clone())
    .action(
        IMAGE_ACTION,
        format!("{}\n{stock}\n{}", t.template_storage, files_input(&name)),
    )
    .timeout(Duration::from_secs(900))
}

/// The volid the config names: `STORAGE:vztmpl/<derived name>`.
pub fn image_volid(t: &Targets, stock: &str) -> String {
    format!("{}:vztmpl/{}", t.template_storage, image_name(stock))
}

/// The stock file name of a volid `STORAGE:vztmpl/NAME` on `storage`.
pub fn stock_name<'a>(storage: &str, volid: &'a str) -> Option<&'a str> {
    volid
        .strip_prefix(storage)?
        .strip_prefix(":vztmpl/")
        .filter(|n| !n.is_empty() && !n.contains('/'))
}

/// Every constant script of this module.
pub const SCRIPTS: &[&str] = &[REPACK, IMAGE_CHECK, IMAGE_ACTION];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_stock_name_and_the_files_hash() {
        let n = image_name("debian-12-standard_12.7-1_amd64.tar.zst");
        assert!(
            n.starts_with("paygress-debian-12-standard_12.7-1_amd64-") && n.ends_with(".tar.zst"),
            "{n}"
        );
        assert_eq!(
            n.len(),
            "paygress-debian-12-standard_12.7-1_amd64-".len() + 12 + 8
        );
        assert!(super::super::pve::check_template_name(&n).is_ok());
        assert_eq!(
            image_name("debian-12-standard_12.7-1_amd64.tar.gz"),
            n,
            "the suffix is not part of the name"
        );
        assert_eq!(
            stock_name("local", "local:vztmpl/a.tar.zst"),
            Some("a.tar.zst")
        );
        assert_eq!(stock_name("local", "other:vztmpl/a.tar.zst"), None);
        assert_eq!(stock_name("local", "local:iso/a.iso"), None);
    }

    /// Every constant script of the Proxmox steps parses (`bash -n`).
    #[test]
    fn every_proxmox_script_parses() {
        for s in SCRIPTS.iter().chain(super::super::pve::SCRIPTS) {
            let o = std::process::Command::new("bash")
                .args(["-n", "-c", s])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{s}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }

    #[test]
    fn scripts_are_constants_and_values_stay_on_stdin() {
        for s in SCRIPTS {
            assert!(!s.contains('\''), "{s}");
        }
        let t = Targets {
            storage: "local-lvm".into(),
            template_storage: "local".into(),
            bridge: "vmbr0".into(),
        };
        let s = image_step(&t, "debian-12-standard_12.7-1_amd64.tar.zst");
        assert_eq!(s.action, IMAGE_ACTION);
        assert!(IMAGE_ACTION.contains(REPACK));
        let input = String::from_utf8(s.action_input).unwrap();
        let lines: Vec<&str> = input.lines().collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], "local");
        assert_eq!(
            lines[2],
            image_name("debian-12-standard_12.7-1_amd64.tar.zst")
        );
        let b = base64::engine::general_purpose::STANDARD;
        assert_eq!(b.decode(lines[3]).unwrap(), LOGIN_SCRIPT.as_bytes());
        assert_eq!(b.decode(lines[4]).unwrap(), LOGIN_UNIT.as_bytes());
    }
}
