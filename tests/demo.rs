//! `paygress-mcp-server --demo` as a fresh machine sees it: a child process with an empty HOME,
//! no config and a clean environment, on the local sandbox backend. An MCP client gets a demo
//! token, spawns, and a real `ssh` client logs in and looks around.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

struct Demo {
    client: RunningService<RoleClient, ()>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _home: tempfile::TempDir,
}

/// Start the demo with `env` on top of a clean environment (PATH only) and an empty HOME.
async fn start(args: &[&str], env: &[(&str, String)]) -> Demo {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_paygress-mcp-server"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (transport, stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    let mut reader = tokio::io::BufReader::new(stderr.unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(l)) = reader.next_line().await {
            sink.lock().unwrap().push(l);
        }
    });
    let client = tokio::time::timeout(Duration::from_secs(60), ().serve(transport))
        .await
        .expect("demo server up in time")
        .unwrap();
    Demo {
        client,
        stderr: lines,
        _home: home,
    }
}

async fn call(d: &Demo, name: &str, args: Value) -> CallToolResult {
    d.client
        .call_tool(
            CallToolRequestParams::new(name.to_string())
                .with_arguments(args.as_object().unwrap().clone()),
        )
        .await
        .unwrap()
}

fn body(r: &CallToolResult) -> Value {
    r.structured_content.clone().expect("structured content")
}

async fn ok(d: &Demo, name: &str, args: Value) -> Value {
    let r = call(d, name, args).await;
    assert_ne!(r.is_error, Some(true), "{name}: {:?}", r.structured_content);
    body(&r)
}

async fn token(d: &Demo, sats: u64) -> String {
    ok(d, "get_demo_token", json!({"amount_sats": sats})).await["cashu_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Run `cmd` over a real OpenSSH client with a password (given to sshpass in its environment).
async fn ssh(port: u64, user: &str, password: &str, cmd: &str) -> std::process::Output {
    tokio::process::Command::new("sshpass")
        .args(["-e", "ssh", "-p", &port.to_string()])
        .args(common::SSH_OPTS)
        .args(["-o", "PubkeyAuthentication=no"])
        .arg(format!("{user}@127.0.0.1"))
        .arg(cmd)
        .env("SSHPASS", password)
        .output()
        .await
        .unwrap()
}

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn cgroups_writable() -> bool {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let dir = if v2 {
        "/sys/fs/cgroup/paygress-probe"
    } else {
        "/sys/fs/cgroup/memory/paygress-probe"
    };
    let ok = std::fs::create_dir(dir).is_ok();
    let _ = std::fs::remove_dir(dir);
    ok
}

#[tokio::test]
async fn demo_on_a_bare_machine_sells_a_sandbox_you_can_ssh_into() {
    let d = start(&["--demo", "--demo-backend", "sandbox"], &[]).await;
    let tools = d.client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "get_offers",
            "spawn_pod",
            "topup_pod",
            "get_pod_status",
            "get_demo_token"
        ]
    );
    let err = call(&d, "get_demo_token", json!({"amount_sats": 0})).await;
    assert_eq!(err.is_error, Some(true));
    assert_eq!(body(&err)["error_type"], "invalid_request");

    let offers = ok(&d, "get_offers", json!({})).await;
    assert_eq!(offers["backend"], "sandbox");
    let t = token(&d, 10).await;
    let pod = ok(
        &d,
        "spawn_pod",
        json!({"cashu_token": t, "pod_spec_id": "small", "ssh_username": "alice", "ssh_password": "demo-pass-123"}),
    )
    .await;
    assert_eq!(pod["duration_seconds"], 1000);
    let port = pod["node_port"].as_u64().unwrap();

    let who = ssh(port, "alice", "demo-pass-123", "whoami; echo $HOME").await;
    assert!(who.status.success(), "{who:?}");
    assert_eq!(out(&who), "alice\n/home/alice");
    // Only the workload's own processes: the session's shell, ps, the jail's init.
    let ps = ssh(port, "alice", "demo-pass-123", "ps -e -o pid=,comm=").await;
    let procs = out(&ps);
    assert!(procs.lines().count() <= 6, "ps shows the host:\n{procs}");
    assert!(procs.contains("ps"), "{procs}");
    // Writes outside the home fail; inside they work and last across sessions.
    let w = ssh(
        port,
        "alice",
        "demo-pass-123",
        "touch /usr/pg-x || echo denied; touch /etc/pg-x || echo denied; echo kept > ~/f",
    )
    .await;
    assert_eq!(out(&w), "denied\ndenied", "{w:?}");
    assert!(!Path::new("/usr/pg-x").exists() && !Path::new("/etc/pg-x").exists());
    let r = ssh(port, "alice", "demo-pass-123", "cat ~/f").await;
    assert_eq!(out(&r), "kept");
    // Beyond the tier's 256 MiB: killed (when the host lets us set cgroup limits).
    if cgroups_writable() {
        let hog = ssh(
            port,
            "alice",
            "demo-pass-123",
            "head -c 600M /dev/zero | tail > /dev/null; echo exit=$?",
        )
        .await;
        let text = out(&hog);
        assert!(
            text.starts_with("exit=") && text != "exit=0",
            "a 600 MB allocation in a 256 MiB pod must be killed: {text}"
        );
    } else {
        eprintln!("cgroups not writable here: memory limit check skipped");
    }
    // A wrong password is refused.
    let bad = ssh(port, "alice", "wrong-password", "true").await;
    assert!(!bad.status.success());

    let err_lines = d.stderr.lock().unwrap().clone();
    let joined = err_lines.join("\n");
    assert!(
        joined.contains("demo: payments are test tokens, not real sats"),
        "{joined}"
    );
    assert!(joined.contains("demo: mint http://127.0.0.1:"), "{joined}");
    assert!(joined.contains("demo: server npub1"), "{joined}");
    let _ = d.client.cancel().await;
}

#[tokio::test]
async fn expiry_closes_the_session_and_removes_the_pod_and_a_top_up_prevents_it() {
    // A fast tier so that 2 sats buy 10 s (tiers come from POD_SPECS_FILE, as for any provider).
    let dir = tempfile::tempdir().unwrap();
    let specs = dir.path().join("tiers.json");
    std::fs::write(
        &specs,
        json!([{"id": "fast", "name": "Fast", "description": "for expiry tests", "cpu_millicores": 500, "memory_mb": 256, "rate_msats_per_sec": 200}]).to_string(),
    )
    .unwrap();
    let env = [
        ("POD_SPECS_FILE", specs.display().to_string()),
        ("MINIMUM_POD_DURATION_SECONDS", "5".to_string()),
    ];
    let d = start(&["--demo", "--demo-backend", "sandbox"], &env).await;
    let spawn = |user: &'static str| {
        let d = &d;
        async move {
            let t = token(d, 2).await;
            ok(
                d,
                "spawn_pod",
                json!({"cashu_token": t, "ssh_username": user, "ssh_password": "expiry-pass-1"}),
            )
            .await
        }
    };
    let doomed = spawn("bob").await;
    let kept = spawn("carol").await;
    assert_eq!(doomed["duration_seconds"], 10);
    let (dport, kport) = (
        doomed["node_port"].as_u64().unwrap(),
        kept["node_port"].as_u64().unwrap(),
    );
    // Top up the second one at once: +5 sats = +25 s.
    let up = ok(
        &d,
        "topup_pod",
        json!({"pod_npub": kept["pod_npub"], "cashu_token": token(&d, 5).await}),
    )
    .await;
    assert_eq!(up["extended_duration_seconds"], 25);

    // A session that would last a minute is cut when the paid time runs out: the server says
    // why and the command never finishes.
    let session = ssh(dport, "bob", "expiry-pass-1", "sleep 60; echo survived").await;
    assert!(!out(&session).contains("survived"));
    assert!(
        String::from_utf8_lossy(&session.stderr).contains("stopped"),
        "{session:?}"
    );
    // The reaper records the stop right after it closes the session.
    let mut state = Value::Null;
    for _ in 0..50 {
        let st = ok(
            &d,
            "get_pod_status",
            json!({"pod_npub": doomed["pod_npub"]}),
        )
        .await;
        state = st["state"].clone();
        if state == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "expired");
    // The topped-up pod is still there.
    let alive = ssh(kport, "carol", "expiry-pass-1", "echo alive").await;
    assert_eq!(out(&alive), "alive");
    // After the demo's 15 s grace, the expired pod is deleted.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = ok(
            &d,
            "get_pod_status",
            json!({"pod_npub": doomed["pod_npub"]}),
        )
        .await;
        if st["state"] == "deleted" {
            break;
        }
        assert!(Instant::now() < deadline, "not deleted: {st}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let gone = tokio::net::TcpStream::connect(("127.0.0.1", dport as u16)).await;
    assert!(gone.is_err(), "nothing listens on the deleted pod's port");
    let _ = d.client.cancel().await;
}
