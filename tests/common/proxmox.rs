//! Proxmox VE test helpers: fakepve on a free loopback port, and real SSH servers standing in for
//! the guests it "runs".
//!
//! fakepve (PyPI, AGPL; installed into `tools/e2e/.venv` by `tools/test.sh`, never copied here)
//! serves PVE's API with PVE's own state machine, errors and tasks, but its guests do not run.
//! So [`StandIns`] watches fakepve's guests and, for each one that is running and has a
//! 127.0.0.0/8 address, starts a real SSH server (the sandbox backend's) on that address and the
//! guest's SSH port, with the credentials the Proxmox backend sent: the key from the create
//! request (LXC) or the cloud-init user, password and percent-encoded keys of the VM's config
//! (QEMU). When the guest stops or goes, its stand-in goes too. Nothing leaves 127.0.0.0/8.

use std::collections::HashMap;
use std::io::BufRead;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use paygress::backend::sandbox::{NetworkMode, SandboxBackend, SandboxConfig};
use paygress::backend::{Backend, WorkloadSpec};
use paygress::config::Tier;
use paygress::secret::Secret;
use serde_json::Value;
use tokio::sync::Mutex;

/// The LXC template the launcher makes present.
pub const LXC_TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";
/// The cloud-init template VM the launcher makes.
pub const QEMU_TEMPLATE: u32 = 9000;

/// A running fakepve, killed on drop.
pub struct FakePve {
    child: Child,
    /// Held open: the launcher exits when it closes (also when the test process dies).
    _stdin: std::process::ChildStdin,
    pub url: String,
    pub node: String,
    pub token_id: String,
    pub token_file: PathBuf,
    pub cert_file: PathBuf,
    /// `AB:CD:…`, SHA-256 of its certificate.
    pub fingerprint: String,
    control: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for FakePve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl FakePve {
    /// Start fakepve with an API token, the LXC template and the QEMU template VM.
    pub fn start() -> FakePve {
        FakePve::start_with(&[])
    }

    /// The same, with more launcher options (`--create-secs 150`).
    pub fn start_with(options: &[&str]) -> FakePve {
        let python = repo().join("tools/e2e/.venv/bin/python");
        assert!(
            python.exists(),
            "{} missing: run tools/test.sh (it installs fakepve)",
            python.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let mut argv = vec![python.display().to_string()];
        argv.push(
            repo()
                .join("tools/e2e/fakepve_launch.py")
                .display()
                .to_string(),
        );
        argv.extend([
            "--dir".into(),
            dir.path().display().to_string(),
            "--template".into(),
            LXC_TEMPLATE.into(),
            "--qemu-template".into(),
            QEMU_TEMPLATE.to_string(),
        ]);
        argv.extend(options.iter().map(|s| s.to_string()));
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the fakepve launcher");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("fakepve announced itself");
        let v: Value = serde_json::from_str(&line).expect("launcher's JSON line");
        let s = |k: &str| v[k].as_str().expect(k).to_string();
        FakePve {
            child,
            _stdin: stdin,
            url: s("url"),
            node: s("node"),
            token_id: s("token_id"),
            token_file: s("token_file").into(),
            cert_file: s("cert_file").into(),
            fingerprint: s("fingerprint"),
            control: s("control"),
            http: {
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::new()
            },
            _dir: dir,
        }
    }

    /// Every request fakepve saw: (method, path, body), passwords redacted by fakepve.
    pub async fn requests(&self) -> Vec<(String, String, String)> {
        let v: Vec<(String, String, String)> = self
            .http
            .get(format!("{}/requests", self.control))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v
    }

    /// Every guest: `{type, vmid, node, status, template, config}`.
    pub async fn guests(&self) -> Vec<Value> {
        self.http
            .get(format!("{}/guests", self.control))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The guests that are not templates.
    pub async fn workloads(&self) -> Vec<Value> {
        self.guests()
            .await
            .into_iter()
            .filter(|g| g["template"] != Value::Bool(true))
            .collect()
    }

    /// Answer the next `times` requests `method …suffix` with this status and message.
    pub async fn fail(&self, method: &str, suffix: &str, status: u16, message: &str, times: u32) {
        let r = self
            .http
            .post(format!("{}/fail", self.control))
            .json(
                &serde_json::json!({"method": method, "suffix": suffix, "status": status,
                                     "message": message, "times": times}),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// Play DHCP server: give the running container `vmid` the address `ip`.
    pub async fn lease(&self, vmid: u64, ip: std::net::Ipv4Addr) {
        let r = self
            .http
            .post(format!("{}/lease", self.control))
            .json(&serde_json::json!({"vmid": vmid, "ip": ip.to_string()}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// Put a VM on the node behind the backend's back.
    pub async fn add_vm(&self, vmid: u32, name: &str, status: &str, config: Value) {
        let r = self
            .http
            .post(format!("{}/vm", self.control))
            .json(
                &serde_json::json!({"vmid": vmid, "name": name, "node": self.node,
                                     "status": status, "config": config}),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// Put a container on the node behind the backend's back.
    pub async fn add_ct(&self, vmid: u32, hostname: &str, status: &str, config: Value) {
        let r = self
            .http
            .post(format!("{}/ct", self.control))
            .json(
                &serde_json::json!({"vmid": vmid, "hostname": hostname, "node": self.node,
                                     "status": status, "config": config}),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// The body of a `[backend.proxmox]` table for this server (its `[network]` subtable goes
    /// after it).
    pub fn backend_toml(&self, kind: &str) -> String {
        let template = match kind {
            "qemu" => QEMU_TEMPLATE.to_string(),
            _ => LXC_TEMPLATE.to_string(),
        };
        format!(
            "url = {url:?}\nnode = {node:?}\ntoken_id = {tid:?}\n\
             token_secret_file = {tf:?}\nfingerprint = {fp:?}\nkind = {kind:?}\n\
             vmid_min = 10000\nvmid_max = 10099\nready_timeout_seconds = 20\n\
             [templates]\n\"paygress-debian-12\" = {template:?}\n\
             \"alpine\" = {missing:?}\n",
            url = self.url,
            node = self.node,
            tid = self.token_id,
            tf = self.token_file.display().to_string(),
            fp = self.fingerprint,
            missing = match kind {
                "qemu" => "9999".to_string(),
                _ => "local:vztmpl/alpine-3.20-default_amd64.tar.xz".to_string(),
            },
        )
    }
}

/// A random /24 of 127.0.0.0/8 for one test's guests (`127.X.Y.0`).
pub fn loopback_block() -> (u8, u8) {
    (
        rand::random::<u8>() % 200 + 20,
        rand::random::<u8>() % 250 + 1,
    )
}

/// Form fields of an urlencoded body.
pub fn form(body: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// What a stand-in cannot learn from fakepve: an LXC guest's password (fakepve redacts it in
/// its log).
#[derive(Clone)]
pub struct Buyer {
    pub password: String,
}

struct Served {
    backend: Arc<SandboxBackend>,
    name: String,
}

/// Real SSH servers for fakepve's running guests; stops them all on drop.
pub struct StandIns {
    task: tokio::task::JoinHandle<()>,
    served: Arc<Mutex<HashMap<u64, Served>>>,
    pub cleanups: Arc<std::sync::Mutex<Vec<super::sandbox::Cleanup>>>,
}

impl Drop for StandIns {
    fn drop(&mut self) {
        self.task.abort();
        // The cleanups kill what the sandboxes started.
        self.cleanups.lock().unwrap().clear();
    }
}

impl StandIns {
    /// Watch `pve` and serve every running guest on its address and `ssh_port`.
    pub fn start(pve: Arc<FakePve>, buyer: Buyer, ssh_port: u16, dir: &Path) -> StandIns {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("paygress=warn")
            .with_test_writer()
            .try_init();
        let served: Arc<Mutex<HashMap<u64, Served>>> = Arc::default();
        let cleanups: Arc<std::sync::Mutex<Vec<super::sandbox::Cleanup>>> = Arc::default();
        let (s2, c2, dir) = (served.clone(), cleanups.clone(), dir.to_path_buf());
        let task = tokio::spawn(async move {
            loop {
                sync(&pve, &buyer, ssh_port, &dir, &s2, &c2).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        StandIns {
            task,
            served,
            cleanups,
        }
    }

    /// vmids served right now.
    pub async fn serving(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.served.lock().await.keys().copied().collect();
        v.sort();
        v
    }
}

/// 198.18.0.0/15: what tests give addresses in the network namespaces they make.
pub fn in_test_range(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 198 && (o[1] == 18 || o[1] == 19)
}

fn guest_addr(g: &Value) -> Option<Ipv4Addr> {
    // A VM's DHCP address, as its guest agent reports it.
    if let Some(a) = g["agent_ipv4"].as_str() {
        return a.parse().ok();
    }
    let key = if g["type"] == "qemu" {
        "ipconfig0"
    } else {
        "net0"
    };
    g["config"][key]
        .as_str()?
        .split(',')
        .find_map(|kv| kv.strip_prefix("ip="))?
        .split('/')
        .next()?
        .parse()
        .ok()
}

async fn sync(
    pve: &FakePve,
    buyer: &Buyer,
    ssh_port: u16,
    dir: &Path,
    served: &Mutex<HashMap<u64, Served>>,
    cleanups: &std::sync::Mutex<Vec<super::sandbox::Cleanup>>,
) {
    let guests = pve.workloads().await;
    let mut served = served.lock().await;
    // Stand-ins of guests that stopped or went away go.
    let running: Vec<u64> = guests
        .iter()
        .filter(|g| g["status"] == "running")
        .filter_map(|g| g["vmid"].as_u64())
        .collect();
    let gone: Vec<u64> = served
        .keys()
        .filter(|v| !running.contains(v))
        .copied()
        .collect();
    for vmid in gone {
        if let Some(s) = served.remove(&vmid) {
            let _ = s.backend.destroy(&s.name).await;
        }
    }
    let requests = pve.requests().await;
    for g in &guests {
        let Some(vmid) = g["vmid"].as_u64() else {
            continue;
        };
        if g["status"] != "running" || served.contains_key(&vmid) {
            continue;
        }
        // Loopback, or the benchmarking range inside a namespace the test made: nowhere else.
        let Some(addr) = guest_addr(g).filter(|a| a.is_loopback() || in_test_range(*a)) else {
            continue;
        };
        let conf = &g["config"];
        let (username, password, key) = if g["type"] == "qemu" {
            let key = conf["sshkeys"].as_str().map(|k| {
                percent_encoding::percent_decode_str(k)
                    .decode_utf8_lossy()
                    .into_owned()
            });
            (
                conf["ciuser"].as_str().unwrap_or_default().to_string(),
                conf["cipassword"].as_str().unwrap_or_default().to_string(),
                key,
            )
        } else {
            // The keys the backend sent in the create request of this vmid: the buyer's, and
            // the marker line naming the login user (what the template's first-boot script
            // reads).
            let keys = requests
                .iter()
                .filter(|(m, p, _)| m == "POST" && p.ends_with(&format!("/nodes/{}/lxc", pve.node)))
                .map(|(_, _, b)| form(b))
                .filter(|f| f.iter().any(|(k, v)| k == "vmid" && v == &vmid.to_string()))
                .find_map(|f| {
                    f.into_iter()
                        .find(|(k, _)| k == "ssh-public-keys")
                        .map(|(_, v)| v)
                })
                .unwrap_or_default();
            let user = keys
                .lines()
                .find_map(|l| l.split_once(" paygress-user=").map(|(_, u)| u.to_string()))
                .unwrap_or_default();
            let key = keys
                .lines()
                .find(|l| !l.contains(" paygress-user="))
                .map(str::to_string);
            (user, buyer.password.clone(), key)
        };
        let sdir = dir.join(format!("standin-{vmid}-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&sdir).unwrap();
        let backend = Arc::new(
            SandboxBackend::open(
                SandboxConfig {
                    listen_address: addr.to_string(),
                    // Only ever an address in a namespace of the test's own.
                    sell_to_strangers: !addr.is_loopback(),
                    network: NetworkMode::None,
                    ..Default::default()
                },
                &sdir,
            )
            .await
            .expect("stand-in sandbox"),
        );
        cleanups.lock().unwrap().push(super::sandbox::Cleanup {
            backend: Some(backend.clone()),
        });
        // Unique across tests: sandbox cgroups are host-wide and named by the workload.
        let name = format!("guest-{vmid}-{:08x}", rand::random::<u32>());
        let spec = WorkloadSpec {
            name: name.clone(),
            provider_id: "standin".into(),
            tier: Tier {
                id: "t".into(),
                name: "t".into(),
                description: String::new(),
                cpu_millicores: 1000,
                memory_mb: 256,
                disk_gb: None,
                rate_msats_per_sec: 1,
            },
            image: "paygress-debian-12".into(),
            ssh_username: username,
            ssh_password: Secret::new(password),
            ssh_public_key: key,
            host_port: Some(ssh_port),
            expires_at: u64::MAX / 2,
        };
        match backend.create(&spec).await {
            Ok(_) => {
                served.insert(vmid, Served { backend, name });
            }
            Err(e) => eprintln!("stand-in for guest {vmid} at {addr}:{ssh_port}: {e}"),
        }
    }
}

/// Run `cmd` over SSH at `host:port` with a password.
pub async fn ssh_password_at(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    cmd: &str,
) -> Result<String, String> {
    let mut c = tokio::process::Command::new("sshpass");
    c.arg("-e")
        .arg("ssh")
        .args(super::ssh::ssh_opts())
        .args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
        ])
        .arg("-p")
        .arg(port.to_string())
        .arg(format!("{user}@{host}"))
        .arg(cmd)
        .env("SSHPASS", password);
    super::ssh::run(c, None).await
}

/// Run `cmd` over SSH at `host:port` with a key.
pub async fn ssh_key_at(
    host: &str,
    port: u16,
    user: &str,
    key: &Path,
    cmd: &str,
) -> Result<String, String> {
    let mut c = tokio::process::Command::new("ssh");
    c.args(super::ssh::ssh_opts())
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(key)
        .arg("-p")
        .arg(port.to_string())
        .arg(format!("{user}@{host}"))
        .arg(cmd);
    super::ssh::run(c, None).await
}
