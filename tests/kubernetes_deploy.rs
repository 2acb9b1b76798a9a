//! Deploying the Kubernetes backend, for real where it can be: the SSH image's entrypoint
//! (provider/kubernetes/entrypoint.sh) inside the LXD base image over real ssh; `kubectl apply`
//! of provider/kubernetes/manifests to the simulated API server (tests/common/kubesim), their
//! typed parse and a paid life cycle with exactly the Role they bind; the real
//! `paygress-mcp-server` binary's get_offers (official MCP Inspector) with a kubeconfig and, in
//! a private mount namespace, with a pod's service-account token and CA.
//!
//! Needs root (LXD, the kubelet's sandbox, a mount namespace).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::kube::{k8s_config, nothing_left, row, NS};
use common::kubesim::{KubeSim, Rule, ADMIN_TOKEN};
use common::mint::TestMint;
use common::sandbox::Cleanup;
use common::ssh::ssh_password;
use paygress::api::{SpawnRequest, TopUpRequest};
use paygress::backend::kubernetes::KubernetesConfig;
use paygress::backend::sandbox::{SandboxBackend, SandboxConfig};
use paygress::config::{BackendChoice, Config};
use paygress::secret::Secret;
use paygress::{Caller, Provider};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// msat/s of the first tier: 100 sats buy 1000 s.
const RATE: u64 = 100;

fn manifests_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("provider/kubernetes/manifests")
}

async fn kubectl(kc: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("kubectl")
        .env("KUBECONFIG", kc)
        .args(args)
        .arg("--request-timeout=20s")
        .output()
        .await
        .expect("kubectl (tools/test.sh)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `kubectl apply` of provider/kubernetes/manifests to the simulator; every object read back
/// parses as its k8s-openapi type; the ConfigMap's paygress.toml is a valid Kubernetes-backend
/// config; a second apply changes nothing; and the Role the manifests bind to the provider's
/// service account is enough for a paid workload's whole life and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_apply_parse_and_their_role_is_enough() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{
        ConfigMap, Namespace, PersistentVolumeClaim, Service, ServiceAccount,
    };
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubelet_sandbox = Arc::new(
        SandboxBackend::open(SandboxConfig::default(), &dir.path().join("node"))
            .await
            .unwrap(),
    );
    let _guard = Cleanup {
        backend: Some(kubelet_sandbox.clone()),
    };
    let sim = KubeSim::start(&[], Some(kubelet_sandbox.clone())).await;
    let admin = sim.kubeconfig(ADMIN_TOKEN, "default");
    let m = manifests_dir();
    let (good, out) = kubectl(
        &admin,
        &["apply", "--validate=false", "-f", m.to_str().unwrap()],
    )
    .await;
    assert!(good, "{out}");
    for made in [
        "namespace/paygress created",
        "namespace/user-workloads created",
        "serviceaccount/paygress created",
        "role.rbac.authorization.k8s.io/paygress-workloads created",
        "rolebinding.rbac.authorization.k8s.io/paygress-workloads created",
        "configmap/paygress-config created",
        "persistentvolumeclaim/paygress-data created",
        "deployment.apps/paygress created",
        "service/paygress-http created",
    ] {
        assert!(out.contains(made), "{made}: {out}");
    }
    let (good, out) = kubectl(
        &admin,
        &["apply", "--validate=false", "-f", m.to_str().unwrap()],
    )
    .await;
    assert!(
        good && out.contains("deployment.apps/paygress unchanged"),
        "{out}"
    );

    // Read back as the typed objects.
    let get = |res: &str, ns: &str, name: &str| {
        sim.object(res, ns, name)
            .unwrap_or_else(|| panic!("{res} {name}"))
    };
    let _: Namespace = serde_json::from_value(get("namespaces", "", "user-workloads")).unwrap();
    let _: ServiceAccount =
        serde_json::from_value(get("serviceaccounts", "paygress", "paygress")).unwrap();
    let role: Role = serde_json::from_value(get(
        "roles.rbac.authorization.k8s.io",
        "user-workloads",
        "paygress-workloads",
    ))
    .unwrap();
    let _: RoleBinding = serde_json::from_value(get(
        "rolebindings.rbac.authorization.k8s.io",
        "user-workloads",
        "paygress-workloads",
    ))
    .unwrap();
    let _: PersistentVolumeClaim =
        serde_json::from_value(get("persistentvolumeclaims", "paygress", "paygress-data")).unwrap();
    let _: Service = serde_json::from_value(get("services", "paygress", "paygress-http")).unwrap();
    let deploy: Deployment =
        serde_json::from_value(get("deployments.apps", "paygress", "paygress")).unwrap();
    let pod = deploy.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("paygress"));
    // The key file is readable by the provider's user (through fsGroup), by no one else.
    let uid_gid = pod.security_context.as_ref().and_then(|s| s.fs_group);
    let keys = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "keys")
        .unwrap();
    assert_eq!(keys.secret.as_ref().unwrap().default_mode, Some(0o440));
    assert_eq!(
        uid_gid,
        pod.security_context.as_ref().and_then(|s| s.run_as_user)
    );
    assert_eq!(
        pod.containers[0].args.as_ref().unwrap()[..2],
        ["provider".to_string(), "start".to_string()]
    );
    let rules = role.rules.unwrap();
    assert!(
        rules.iter().all(|r| !r.verbs.iter().any(|v| v == "*")),
        "no wildcards"
    );
    let cm: ConfigMap =
        serde_json::from_value(get("configmaps", "paygress", "paygress-config")).unwrap();
    let toml = cm.data.unwrap()["paygress.toml"].clone();
    let cfg =
        Config::from_toml_with_env(&toml, &Default::default()).expect("the ConfigMap's config");
    assert_eq!(cfg.backend.kind, BackendChoice::Kubernetes);
    assert_eq!(
        cfg.backend.kubernetes.namespace.as_deref(),
        Some("user-workloads")
    );
    assert!(cfg.backend.kubernetes.kubeconfig.is_none(), "in-cluster");

    // The service account's rights, exactly as bound: a paid workload's whole life works.
    sim.service_account_token("sa-token", "paygress", "paygress");
    let sa = sim.kubeconfig("sa-token", "user-workloads");
    let mut pcfg = common::config(&dir.path().join("provider"), &[&mint.url], RATE, (1, 1));
    pcfg.backend.kind = BackendChoice::Kubernetes;
    pcfg.backend.kubernetes = KubernetesConfig {
        kubeconfig: Some(sa.clone()),
        ..cfg.backend.kubernetes.clone()
    };
    pcfg.backend.kubernetes.node_address = Some("127.0.0.1".into());
    pcfg.backend.kubernetes.images.clear();
    // A tier with a disk, so the claim rights are exercised too.
    pcfg.tiers[0].disk_gb = Some(1);
    let backend = paygress::backend::from_config(&pcfg)
        .await
        .expect("connect as the service account");
    let provider = Provider::open(pcfg.clone(), backend.clone()).await.unwrap();
    let r = provider
        .spawn(
            SpawnRequest {
                cashu_token: Secret::new(mint.token(100).await),
                ssh_username: "alice".into(),
                ssh_password: Some(Secret::new("sa-pass-123")),
                ..Default::default()
            },
            Caller::Local,
            None,
            CancellationToken::new(),
        )
        .await
        .expect("spawn with the manifests' Role");
    assert_eq!(
        ssh_password(r.node_port, "alice", "sa-pass-123", "whoami")
            .await
            .unwrap()
            .trim(),
        "alice"
    );
    let (name, expires) = row(&provider, &r.pod_npub);
    provider
        .top_up(TopUpRequest {
            pod_npub: r.pod_npub.clone(),
            cashu_token: Secret::new(mint.token(10).await),
            request_id: None,
        })
        .await
        .expect("top-up with the manifests' Role");
    assert_eq!(
        provider.reap_at(expires + 100).await.stopped,
        vec![r.pod_npub.clone()]
    );
    provider
        .top_up(TopUpRequest {
            pod_npub: r.pod_npub.clone(),
            cashu_token: Secret::new(mint.token(10).await),
            request_id: None,
        })
        .await
        .expect("resume with the manifests' Role");
    assert!(backend
        .list(provider.provider_id())
        .await
        .unwrap()
        .iter()
        .any(|w| w.name == name));
    backend
        .destroy(&name)
        .await
        .expect("destroy with the manifests' Role");
    nothing_left(&sim);
    // And no more than that: nothing outside the workload namespace, no reading secrets.
    for args in [
        ["get", "secrets", "-n", "paygress"],
        ["get", "pods", "-n", "default"],
        ["get", "secrets", "-n", "user-workloads"],
        ["get", "configmaps", "-n", "user-workloads"],
    ] {
        let (good, out) = kubectl(&sa, &args).await;
        assert!(!good && out.contains("Forbidden"), "{args:?}: {out}");
    }
}

/// Removes the test's LXD container however the test ends.
struct Instance(String);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::process::Command::new("lxc")
            .args(["delete", "--force", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

async fn lxc(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("lxc")
        .args(args)
        .output()
        .await
        .expect("lxc (tools/test.sh installs LXD)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The SSH image's entrypoint (provider/kubernetes/entrypoint.sh), for real: inside the LXD
/// base image (which has sshd), with the Secret's files where the pod mounts them, run as the
/// container's process; the buyer logs in over real ssh with the password (shell
/// metacharacters and all, never run) and the key; root cannot log in; usernames the core
/// would refuse stop the entrypoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssh_image_entrypoint_logs_the_secret_user_in_over_real_ssh() {
    let name = format!("pgk-entry-{:08x}", rand::random::<u32>());
    let _cleanup = Instance(name.clone());
    let (good, out) = lxc(&["launch", "paygress-debian-12", &name]).await;
    assert!(good, "{out}");
    let entry =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("provider/kubernetes/entrypoint.sh");
    let (good, out) = lxc(&[
        "file",
        "push",
        "--mode",
        "0755",
        entry.to_str().unwrap(),
        &format!("{name}/usr/local/sbin/paygress-entrypoint"),
    ])
    .await;
    assert!(good, "{out}");

    // The Secret's files, as the backend writes them (no trailing newline on the password).
    let password = "it's $(touch /tmp/pwned); `id` \"x\" \\ ok";
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = common::ssh::keygen(keys.path());
    let login = tempfile::tempdir().unwrap();
    let put = |dir: &std::path::Path, files: &[(&str, String)]| {
        for (f, text) in files {
            std::fs::write(dir.join(f), text).unwrap();
        }
    };
    // The host key, as the backend makes it (OpenSSH format).
    let host_key =
        russh::keys::PrivateKey::random(&mut rand::rngs::OsRng, russh::keys::Algorithm::Ed25519)
            .unwrap();
    let host_fp = host_key
        .public_key()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    put(
        login.path(),
        &[
            ("username", "alice".into()),
            ("password", password.into()),
            ("authorized_keys", format!("{public}\n")),
            (
                "ssh_host_ed25519_key",
                host_key
                    .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                    .unwrap()
                    .to_string(),
            ),
        ],
    );
    for f in [
        "username",
        "password",
        "authorized_keys",
        "ssh_host_ed25519_key",
    ] {
        let (good, out) = lxc(&[
            "file",
            "push",
            "--create-dirs",
            "--mode",
            "0400",
            "--uid",
            "0",
            "--gid",
            "0",
            login.path().join(f).to_str().unwrap(),
            &format!("{name}/etc/paygress/login/{f}"),
        ])
        .await;
        assert!(good, "{out}");
    }
    // sshd of the image keeps port 22; the entrypoint's sshd listens on 2222, reached through
    // a proxy device on 127.0.0.1 (as a NodePort would reach the pod's port).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (good, out) = lxc(&[
        "config",
        "device",
        "add",
        &name,
        "pgk-ssh",
        "proxy",
        &format!("listen=tcp:127.0.0.1:{port}"),
        "connect=tcp:127.0.0.1:2222",
    ])
    .await;
    assert!(good, "{out}");
    let mut entrypoint = tokio::process::Command::new("lxc")
        .args([
            "exec",
            &name,
            "--",
            "/usr/local/sbin/paygress-entrypoint",
            "-p",
            "2222",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut who = Err(String::new());
    for _ in 0..60 {
        who = ssh_password(
            port,
            "alice",
            password,
            "whoami; echo $HOME; test -e /tmp/pwned && echo PWNED || echo clean",
        )
        .await;
        if who.is_ok() {
            break;
        }
        if let Ok(Some(st)) = entrypoint.try_wait() {
            let mut err = String::new();
            use tokio::io::AsyncReadExt;
            let _ = entrypoint
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .await;
            panic!("the entrypoint ended ({st}): {err}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let who = who.expect("password login through the entrypoint's sshd");
    assert_eq!(
        who.lines().collect::<Vec<_>>(),
        ["alice", "/home/alice", "clean"]
    );
    assert_eq!(
        common::ssh::ssh_key(port, "alice", &key, "echo by-key")
            .await
            .unwrap()
            .trim(),
        "by-key"
    );
    // sshd offers exactly the host key from the Secret: what a buyer pins from the answer.
    let scan = tokio::process::Command::new("ssh-keyscan")
        .args(["-p", &port.to_string(), "127.0.0.1"])
        .output()
        .await
        .unwrap();
    let scanned: Vec<String> = String::from_utf8_lossy(&scan.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' ').map(|(_, k)| k.to_string()))
        .collect();
    assert_eq!(scanned.len(), 1, "{scanned:?}");
    let seen = russh::keys::PublicKey::from_openssh(&scanned[0])
        .unwrap()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    assert_eq!(seen, host_fp);
    assert!(ssh_password(port, "root", password, "true").await.is_err());
    assert!(ssh_password(port, "alice", "wrong-password", "true")
        .await
        .is_err());
    let (_, out) = lxc(&[
        "exec",
        &name,
        "--",
        "stat",
        "-c",
        "%a %U",
        "/home/alice/.ssh/authorized_keys",
    ])
    .await;
    assert_eq!(out.trim(), "600 alice");

    // Usernames the core refuses stop the entrypoint before anything is made.
    for bad in ["root", "Alice", "a;b", "-o", "x$(id)", ""] {
        let dir = tempfile::tempdir().unwrap();
        put(
            dir.path(),
            &[("username", bad.into()), ("password", "pw-123456".into())],
        );
        for f in ["username", "password"] {
            let (good, out) = lxc(&[
                "file",
                "push",
                "--create-dirs",
                "--mode",
                "0400",
                dir.path().join(f).to_str().unwrap(),
                &format!("{name}/etc/paygress/bad/{f}"),
            ])
            .await;
            assert!(good, "{out}");
        }
        let (good, out) = lxc(&[
            "exec",
            &name,
            "--env",
            "LOGIN_DIR=/etc/paygress/bad",
            "--",
            "/usr/local/sbin/paygress-entrypoint",
            "-p",
            "2223",
        ])
        .await;
        assert!(!good, "{bad:?} was accepted: {out}");
        assert!(out.contains("paygress-entrypoint:"), "{out}");
    }
    let _ = entrypoint.kill().await;
}

/// The real `paygress-mcp-server` binary with `backend.kind = "kubernetes"` in its config file
/// connects to the API server named in its kubeconfig, and the official MCP Inspector CLI's
/// `get_offers` says `kubernetes` (isolation `container`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_get_offers_for_the_kubernetes_backend() {
    let inspector = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools/e2e/node_modules/.bin/mcp-inspector");
    assert!(
        inspector.exists(),
        "the MCP Inspector is not installed: run tools/test.sh"
    );
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = KubeSim::start(&[NS], None).await;
    let mut cfg = common::config(&dir.path().join("provider"), &[&mint.url], RATE, (1, 1));
    cfg.backend.kind = BackendChoice::Kubernetes;
    cfg.backend.kubernetes = k8s_config(&sim, ADMIN_TOKEN);
    let file = dir.path().join("paygress.toml");
    std::fs::write(&file, toml::to_string(&cfg).expect("config as TOML")).unwrap();
    let out = tokio::process::Command::new(&inspector)
        .arg("--cli")
        .arg(env!("CARGO_BIN_EXE_paygress-mcp-server"))
        .arg("-e")
        .arg(format!("PAYGRESS_CONFIG={}", file.display()))
        .args(["--method", "tools/call", "--tool-name", "get_offers"])
        .env("MCP_CATALOG_PATH", dir.path().join("catalog.json"))
        .env("HOME", dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "inspector: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let offers = &v["structuredContent"];
    assert_eq!(offers["backend"], "kubernetes", "{v}");
    assert_eq!(offers["isolation"], "container", "{v}");
    // It really asked the API server (the start-up check lists pods in the namespace).
    assert!(sim
        .requests()
        .iter()
        .any(|r| r.starts_with(&format!("GET /api/v1/namespaces/{NS}/pods?"))));
}

/// In a pod there is no kubeconfig: the binary, with no `backend.kubernetes.kubeconfig` and no
/// kubeconfig in its HOME, uses the service account the way a pod gets it
/// (`KUBERNETES_SERVICE_HOST`/`_PORT`, token and CA under
/// /var/run/secrets/kubernetes.io/serviceaccount). The test gives it those files in a private
/// mount namespace (a tmpfs on /run, so the host's /run is untouched), with a token the
/// simulator knows only as the manifests' service account, and asks get_offers through the
/// official MCP Inspector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_pod_the_service_account_is_used() {
    let inspector = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools/e2e/node_modules/.bin/mcp-inspector");
    assert!(
        inspector.exists(),
        "the MCP Inspector is not installed: run tools/test.sh"
    );
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = KubeSim::start(&[NS], None).await;
    sim.add_token(
        "in-cluster-token",
        "system:serviceaccount:paygress:paygress",
        vec![Rule::new(
            &[
                "get", "list", "watch", "create", "update", "delete", "patch",
            ],
            &["*"],
            &[NS],
        )],
    );
    // What the kubelet projects into a pod.
    let sa = dir.path().join("sa");
    std::fs::create_dir(&sa).unwrap();
    std::fs::write(sa.join("token"), "in-cluster-token").unwrap();
    std::fs::write(sa.join("ca.crt"), &sim.ca_pem).unwrap();
    std::fs::write(sa.join("namespace"), "paygress").unwrap();
    let mut cfg = common::config(&dir.path().join("provider"), &[&mint.url], RATE, (1, 1));
    cfg.backend.kind = BackendChoice::Kubernetes;
    cfg.backend.kubernetes = KubernetesConfig {
        namespace: Some(NS.into()),
        node_address: Some("127.0.0.1".into()),
        ..Default::default()
    };
    let file = dir.path().join("paygress.toml");
    std::fs::write(&file, toml::to_string(&cfg).unwrap()).unwrap();
    // The launcher: only paths this test made go into the script, as positional arguments.
    let script = "mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io && \
                  cp -r \"$1\" /run/secrets/kubernetes.io/serviceaccount && shift && exec \"$@\"";
    let out = tokio::process::Command::new(&inspector)
        .arg("--cli")
        .arg("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "launcher",
        ])
        .arg(&sa)
        .arg(env!("CARGO_BIN_EXE_paygress-mcp-server"))
        .arg("-e")
        .arg(format!("PAYGRESS_CONFIG={}", file.display()))
        .arg("-e")
        .arg("KUBERNETES_SERVICE_HOST=127.0.0.1")
        .arg("-e")
        .arg(format!("KUBERNETES_SERVICE_PORT={}", sim.port))
        .arg("-e")
        .arg(format!("HOME={}", dir.path().display()))
        .args(["--method", "tools/call", "--tool-name", "get_offers"])
        .env("MCP_CATALOG_PATH", dir.path().join("catalog.json"))
        .env("HOME", dir.path())
        .env_remove("KUBECONFIG")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "inspector: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["structuredContent"]["backend"], "kubernetes", "{v}");
    // The start-up check reached the simulator with the service account's token (the only
    // credential it had: a failed check stops the start, and get_offers would not answer).
    assert!(sim
        .requests()
        .iter()
        .any(|r| r.starts_with(&format!("GET /api/v1/namespaces/{NS}/pods?"))));
}
