//! Bootstrap's `pve-image` step derives the Paygress LXC template from a stock one. There is no
//! PVE host here (no `pvesm`, no `pct`), so the repack it runs on the host
//! ([`pve_image::REPACK`], exactly the constant, with the input bootstrap hands it) runs on a
//! real Debian 12 root file system: the LXD base image's cached tree, compressed with zstd to
//! look like a `vztmpl` `.tar.zst`. The result is imported into the real LXD and booted; root's
//! keys are put in as the Proxmox backend sends them and a root password set; the container is
//! restarted so that the unit runs at boot on its own; the buyer logs in over real ssh with the
//! key and the password, and root is locked.
//!
//! What this does not show: `pvesm path` and PVE's own restore of the file (the tar flags are
//! those of PVE's restore, read from its sources, not run).
//!
//! Needs root, the LXD daemon and /var/cache/paygress/paygress-debian-12.{rootfs.tar,meta.tar.gz}
//! (provider/build-base-image.sh).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::proxmox::{ssh_key_at, ssh_password_at};
use paygress::backend::proxmox::lxc_keys;
use paygress::backend::WorkloadSpec;
use paygress::bootstrap::pve_image;
use paygress::config::Tier;
use paygress::secret::Secret;

const ROOTFS: &str = "/var/cache/paygress/paygress-debian-12.rootfs.tar";
const META: &str = "/var/cache/paygress/paygress-debian-12.meta.tar.gz";
const STOCK: &str = "debian-12-standard_12.7-1_amd64.tar.zst";
const PASSWORD: &str = "pve-image-pass-1";

/// Run a command; its stdout, or a panic with its stderr.
fn run(cmd: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
    let o = output(cmd, args, stdin);
    assert!(o.0 == Some(0), "{cmd} {args:?}: exit {:?}: {}", o.0, o.2);
    o.1
}

/// (exit code, stdout, stderr).
fn output(cmd: &str, args: &[&str], stdin: Option<&[u8]>) -> (Option<i32>, String, String) {
    use std::io::Write;
    let mut c = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let mut input = c.stdin.take().unwrap();
    if let Some(b) = stdin {
        input.write_all(b).unwrap();
    }
    drop(input);
    let o = c.wait_with_output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Exactly the repack constant, with the input bootstrap hands it.
fn repack(src: &Path, out: &Path, name: &str) -> (Option<i32>, String, String) {
    let input = pve_image::repack_input(src.to_str().unwrap(), out.to_str().unwrap(), name);
    output("bash", &["-c", pve_image::REPACK], Some(&input))
}

/// The directory's entries, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

struct ImageCleanup(String);

impl Drop for ImageCleanup {
    fn drop(&mut self) {
        let _ = Command::new("lxc")
            .args(["image", "delete", &self.0])
            .output();
    }
}

fn spec(public: &str) -> WorkloadSpec {
    WorkloadSpec {
        name: "pgpve-buyer".into(),
        provider_id: "test".into(),
        tier: Tier {
            id: "basic".into(),
            name: "Basic".into(),
            description: String::new(),
            cpu_millicores: 500,
            memory_mb: 256,
            disk_gb: None,
            rate_msats_per_sec: 10,
        },
        image: "paygress-debian-12".into(),
        ssh_username: "alice".into(),
        ssh_password: Secret::new(PASSWORD),
        ssh_public_key: Some(public.to_string()),
        host_port: None,
        expires_at: 0,
    }
}

async fn login(port: u16, key: &Path) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        match ssh_key_at("127.0.0.1", port, "alice", key, "whoami").await {
            Ok(out) => return out.trim().to_string(),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no login at 127.0.0.1:{port}: {last}");
}

/// The stock template as `pveam` would have put it: the Debian 12 tree, zstd-compressed.
fn stock(dir: &Path) -> PathBuf {
    let src = dir.join(STOCK);
    run(
        "zstd",
        &["-q", "-T0", "-o", src.to_str().unwrap(), ROOTFS],
        None,
    );
    src
}

#[tokio::test]
async fn the_derived_template_boots_into_the_buyers_login_and_a_rerun_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = stock(dir.path());
    let name = pve_image::image_name(STOCK);
    let (code, out, err) = repack(&src, dir.path(), &name);
    assert_eq!(code, Some(0), "repack: {out} {err}");
    // Only the stock file and the derived one: no temporary directory left behind.
    assert_eq!(entries(dir.path()), [STOCK.to_string(), name.clone()]);
    let made = dir.path().join(&name);
    let meta = std::fs::metadata(&made).unwrap();

    // What it holds, as tar lists it (numeric owners).
    let list = run(
        "tar",
        &["--zstd", "-tvf", made.to_str().unwrap(), "--numeric-owner"],
        None,
    );
    let line = |path: &str| {
        list.lines()
            .find(|l| l.ends_with(path) || l.contains(&format!("{path} -> ")))
            .unwrap_or_else(|| panic!("{path} not in the derived template"))
            .to_string()
    };
    let b = line("./usr/local/sbin/paygress-login");
    assert!(b.starts_with("-rwxr-xr-x 0/0 "), "{b}");
    let u = line("./etc/systemd/system/paygress-login.service");
    assert!(u.starts_with("-rw-r--r-- 0/0 "), "{u}");
    for w in ["multi-user.target.wants", "ssh.service.requires"] {
        let l = line(&format!("./etc/systemd/system/{w}/paygress-login.service"));
        assert!(
            l.starts_with("lrwxrwxrwx 0/0 ")
                && l.ends_with(" -> /etc/systemd/system/paygress-login.service"),
            "{l}"
        );
    }
    assert!(list.lines().any(|l| l.ends_with("./usr/sbin/sshd")));

    // A second run is a no-op: the same file, untouched.
    let (code, out, err) = repack(&src, dir.path(), &name);
    assert_eq!(code, Some(0), "rerun: {out} {err}");
    assert!(out.contains("there already"), "{out}");
    let again = std::fs::metadata(&made).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.ino(), meta.mtime(), meta.mtime_nsec()),
        (again.ino(), again.mtime(), again.mtime_nsec())
    );
    assert_eq!(entries(dir.path()), [STOCK.to_string(), name.clone()]);

    // Into the real LXD (it takes a plain tar), launched; the first boot has no keys, so the
    // unit's condition keeps it off.
    std::fs::remove_file(&src).unwrap();
    let rootfs = dir.path().join("rootfs.tar");
    run(
        "zstd",
        &[
            "-q",
            "-d",
            "-o",
            rootfs.to_str().unwrap(),
            made.to_str().unwrap(),
        ],
        None,
    );
    let tag = format!("{:08x}", rand::random::<u32>());
    let alias = format!("pgpve-img-{tag}");
    let _image = ImageCleanup(alias.clone());
    run(
        "lxc",
        &[
            "image",
            "import",
            META,
            rootfs.to_str().unwrap(),
            "--alias",
            &alias,
        ],
        None,
    );
    std::fs::remove_file(&rootfs).unwrap();
    let ct = format!("pgpve-ct-{tag}");
    let _ct = common::LxdCleanup(ct.clone());
    run("lxc", &["launch", &alias, &ct], None);
    // systemd reads the links as the ones `systemctl enable` makes for the [Install] section.
    assert_eq!(
        run(
            "lxc",
            &[
                "exec",
                &ct,
                "--",
                "systemctl",
                "--root=/",
                "is-enabled",
                "paygress-login.service"
            ],
            None
        )
        .trim(),
        "enabled"
    );

    // Root's keys exactly as the backend sends them in `ssh-public-keys`, and a root password
    // (PVE sets both for root only).
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = common::ssh::keygen(keys.path());
    let sent = lxc_keys(&spec(&public)).unwrap();
    let file = keys.path().join("authorized_keys");
    std::fs::write(&file, format!("{sent}\n")).unwrap();
    run(
        "lxc",
        &[
            "file",
            "push",
            "-p",
            "--mode",
            "0600",
            file.to_str().unwrap(),
            &format!("{ct}/root/.ssh/authorized_keys"),
        ],
        None,
    );
    run(
        "lxc",
        &["exec", &ct, "--", "chpasswd"],
        Some(format!("root:{PASSWORD}\n").as_bytes()),
    );
    assert!(
        output("lxc", &["exec", &ct, "--", "id", "-u", "alice"], None).0 != Some(0),
        "alice exists before the boot that should make her"
    );

    // The boot runs the unit by itself.
    run("lxc", &["restart", &ct], None);
    let port = common::free_port_block(1).0;
    run(
        "lxc",
        &[
            "config",
            "device",
            "add",
            &ct,
            "ssh",
            "proxy",
            &format!("listen=tcp:127.0.0.1:{port}"),
            "connect=tcp:127.0.0.1:22",
        ],
        None,
    );
    assert_eq!(login(port, &key).await, "alice");
    assert_eq!(
        ssh_password_at("127.0.0.1", port, "alice", PASSWORD, "echo pw")
            .await
            .unwrap()
            .trim(),
        "pw"
    );
    assert!(ssh_password_at("127.0.0.1", port, "root", PASSWORD, "true")
        .await
        .is_err());
    let status = run(
        "lxc",
        &["exec", &ct, "--", "passwd", "--status", "root"],
        None,
    );
    assert_eq!(
        status.split_whitespace().nth(1),
        Some("L"),
        "root locked: {status}"
    );
}

#[test]
fn a_template_without_sshd_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/os-release"), "ID=debian\n").unwrap();
    std::fs::write(tree.join("usr/bin/true"), "").unwrap();
    let out = dir.path().join("cache");
    std::fs::create_dir(&out).unwrap();
    let src = out.join("nossh-standard_1.0_amd64.tar.zst");
    run(
        "tar",
        &[
            "--zstd",
            "-cf",
            src.to_str().unwrap(),
            "-C",
            tree.to_str().unwrap(),
            ".",
        ],
        None,
    );
    let name = pve_image::image_name("nossh-standard_1.0_amd64.tar.zst");
    let (code, _, err) = repack(&src, &out, &name);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("no /usr/sbin/sshd"), "{err}");
    assert_eq!(entries(&out), ["nossh-standard_1.0_amd64.tar.zst"]);

    // A name that is not a derived one, or a source that is no template, changes nothing.
    let (code, _, err) = repack(&src, &out, "../x.tar.zst");
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = repack(&out.join("x.iso"), &out, &name);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(entries(&out), ["nossh-standard_1.0_amd64.tar.zst"]);
}
