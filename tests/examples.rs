//! Every file in examples/ run against the real demo, so none can rot:
//! - claude_desktop_config.json: its command and args, started by the official MCP Inspector
//!   CLI, answer get_offers;
//! - python_mcp_client.py: the official MCP Python SDK buys a pod over stdio;
//! - contextvm_client.ts: compiled with TypeScript, the official @contextvm/sdk buys a pod over
//!   the demo's embedded relay;
//! - curl_402.sh: the NUT-24 walk-through with curl, then a real ssh login with what it printed;
//! - kubernetes/: its nginx.conf in a real nginx in front of the demo (certificate paths, port
//!   and upstream rewritten for the test), the walk-through through it, and the manifests'
//!   wiring (the door's address, the generated ConfigMap) checked.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::http_demo::HttpDemo;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> PathBuf {
    root().join("examples")
}

fn e2e() -> PathBuf {
    root().join("tools/e2e")
}

fn installed(p: &Path, what: &str) -> PathBuf {
    assert!(
        p.exists(),
        "{what} is not installed ({}): run tools/test.sh",
        p.display()
    );
    p.to_path_buf()
}

/// Run a command to the end within a liveness bound; (stdout, stderr) on success.
async fn run(mut c: tokio::process::Command) -> (String, String) {
    c.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(300), c.output())
        .await
        .expect("finished in time")
        .expect("started");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "failed ({}):\n{o}\n{e}", out.status);
    (o, e)
}

fn line_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_desktop_config_starts_a_server_that_answers_get_offers() {
    let inspector = installed(
        &e2e().join("node_modules/.bin/mcp-inspector"),
        "the MCP Inspector",
    );
    let text = std::fs::read_to_string(examples().join("claude_desktop_config.json")).unwrap();
    let cfg: Value = serde_json::from_str(&text).unwrap();
    let server = &cfg["mcpServers"]["paygress"];
    assert_eq!(server["command"], "paygress-mcp-server");
    let args: Vec<String> = server["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let home = tempfile::tempdir().unwrap();
    let mut c = tokio::process::Command::new(inspector);
    c.arg("--cli")
        .arg(env!("CARGO_BIN_EXE_paygress-mcp-server"))
        .args(&args)
        .args(["--method", "tools/call", "--tool-name", "get_offers"])
        .env("HOME", home.path())
        .env_remove("PAYGRESS_CONFIG");
    let (out, _) = run(c).await;
    assert!(out.contains("\"pod_specs\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_mcp_client_buys_a_pod() {
    let python = installed(&e2e().join(".venv/bin/python"), "the MCP Python SDK");
    let home = tempfile::tempdir().unwrap();
    let mut c = tokio::process::Command::new(python);
    c.arg(examples().join("python_mcp_client.py"))
        .arg(env!("CARGO_BIN_EXE_paygress-mcp-server"))
        .args(["--demo", "--demo-backend", "sandbox"])
        .env("HOME", home.path())
        .env_remove("PAYGRESS_CONFIG")
        .env_remove("CASHU_TOKEN");
    let (out, _) = run(c).await;
    assert!(line_after(&out, "tools: ").contains("spawn_pod"), "{out}");
    assert!(line_after(&out, "ssh: ").starts_with("ssh -p "), "{out}");
    assert!(
        line_after(&out, "ssh answers: ").starts_with("SSH-2.0"),
        "{out}"
    );
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["state"], "running", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_contextvm_client_buys_a_pod() {
    let modules = installed(&e2e().join("node_modules"), "tools/e2e's npm packages");
    let tsc = installed(&modules.join(".bin/tsc"), "TypeScript");
    installed(&modules.join("@contextvm/sdk"), "@contextvm/sdk");
    // Build the example as it stands, with tools/e2e's pinned packages beside it.
    let work = tempfile::tempdir().unwrap();
    for f in ["contextvm_client.ts", "tsconfig.json", "package.json"] {
        std::fs::copy(examples().join(f), work.path().join(f)).unwrap();
    }
    std::os::unix::fs::symlink(&modules, work.path().join("node_modules")).unwrap();
    let mut c = tokio::process::Command::new(tsc);
    c.arg("-p").arg(work.path()).current_dir(work.path());
    run(c).await;

    let demo = HttpDemo::start_contextvm();
    let relay = demo.relay.clone().expect("the demo's relay");
    let mut c = tokio::process::Command::new("node");
    c.arg(work.path().join("contextvm_client.js"))
        .args(["--relay", &relay, "--server", &demo.npub])
        .current_dir(work.path())
        .env_remove("CASHU_TOKEN");
    let (out, _) = run(c).await;
    let ssh = line_after(&out, "ssh: ").to_string();
    let password = line_after(&out, "password: ").to_string();
    // The client's key owns the pod: its status carries the same ssh command.
    assert_eq!(
        line_after(&out, "state: "),
        format!("running, access: {ssh}"),
        "{out}"
    );
    let port: u16 = ssh.split_whitespace().nth(2).unwrap().parse().unwrap();
    let who = common::ssh::ssh_password(port, "alice", &password, "id -un")
        .await
        .expect("ssh login");
    assert_eq!(who.trim(), "alice");
}

/// Run the curl walk-through against `base`; log in with what it printed.
async fn curl_walk_through(base: &str, ca: Option<&Path>) -> String {
    let mut c = tokio::process::Command::new("bash");
    c.arg(examples().join("curl_402.sh"))
        .arg(base)
        .env_remove("CASHU_TOKEN");
    if let Some(ca) = ca {
        c.env("CURL_CA", ca);
    }
    let (out, _) = run(c).await;
    assert!(out.contains("HTTP 402, X-Cashu: creqA"), "{out}");
    assert!(out.contains("HTTP 201"), "{out}");
    assert!(line_after(&out, "pod ").contains(": running,"), "{out}");
    assert!(out.contains("access for alice"), "{out}");
    let ssh = line_after(&out, "ssh: ").to_string();
    let password = line_after(&out, "password: ").to_string();
    let port: u16 = ssh.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(ssh.ends_with("alice@127.0.0.1"), "{ssh}");
    let who = common::ssh::ssh_password(port, "alice", &password, "id -un")
        .await
        .expect("ssh login");
    assert_eq!(who.trim(), "alice");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_walk_through_pays_and_logs_in() {
    let demo = HttpDemo::start();
    curl_walk_through(&demo.base, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_nginx_snippet_fronts_the_door_with_tls() {
    let dir = examples().join("kubernetes");
    let conf = std::fs::read_to_string(dir.join("nginx.conf")).unwrap();
    // The manifests' wiring, read with PyYAML (from tools/e2e's venv): the door listens where
    // nginx proxies to, nginx mounts the generated ConfigMap and the TLS Secret where the
    // snippet reads them, and the Service publishes nginx's port.
    let python = installed(&e2e().join(".venv/bin/python"), "PyYAML");
    let mut c = tokio::process::Command::new(python);
    c.arg("-c")
        .arg(
            "import json,sys,yaml\n\
             d=list(yaml.safe_load_all(open(sys.argv[1])))\n\
             k=yaml.safe_load(open(sys.argv[2]))\n\
             print(json.dumps({'docs': d, 'kustomization': k}))",
        )
        .arg(dir.join("paygress.yaml"))
        .arg(dir.join("kustomization.yaml"));
    let (out, _) = run(c).await;
    let m: Value = serde_json::from_str(out.trim()).unwrap();
    let deploy = m["docs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let containers = deploy["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let args: Vec<&str> = containers[0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let listen = args[args.iter().position(|a| *a == "--http").unwrap() + 1];
    assert!(
        conf.contains(&format!("proxy_pass http://{listen};")),
        "{conf}"
    );
    assert_eq!(
        m["kustomization"]["configMapGenerator"][0]["files"][0],
        "nginx.conf"
    );
    let mounts = containers[1]["volumeMounts"].to_string();
    assert!(mounts.contains("/etc/nginx/conf.d") && mounts.contains("/etc/nginx/tls"));
    assert!(conf.contains("listen 8443 ssl;"));
    assert_eq!(containers[1]["ports"][0]["containerPort"], 8443);

    // The snippet itself, in a real nginx in front of the demo, with the walk-through through it.
    let demo = HttpDemo::start();
    let upstream = demo.base.trim_start_matches("http://").to_string();
    let nginx = common::nginx::Nginx::start_with(|port, cert, key| {
        conf.replace("listen 8443 ssl;", &format!("listen 127.0.0.1:{port} ssl;"))
            .replace("/etc/nginx/tls/tls.crt", &cert.display().to_string())
            .replace("/etc/nginx/tls/tls.key", &key.display().to_string())
            .replace(&format!("http://{listen}"), &format!("http://{upstream}"))
    });
    let ca = nginx.dir.path().join("ca.pem");
    curl_walk_through(&format!("https://127.0.0.1:{}", nginx.port), Some(&ca)).await;
    assert!(
        nginx.access_log().contains("POST /pods"),
        "{}",
        nginx.access_log()
    );
}
