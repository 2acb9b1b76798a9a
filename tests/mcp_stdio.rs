//! `paygress-mcp-server` as a child process, spoken to over stdio MCP by rmcp's client, with a
//! real test mint and the real LXD backend behind it.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mint::TestMint;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientRequest, ProgressNotificationParam,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct Client {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for Client {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _ctx: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }
}

struct Server {
    client: RunningService<RoleClient, Client>,
    handler: Client,
    _dir: tempfile::TempDir,
}

fn write_config(dir: &Path, mints: &[&str], ports: (u16, u16)) -> std::path::PathBuf {
    let cfg = common::config(dir, mints, 100, ports);
    let mut text = toml::to_string(&cfg).unwrap();
    text = text.replace("kind = \"sandbox\"", "kind = \"lxd\"");
    text = text.replace(
        "allowed = [\"paygress-debian-12\", \"alpine\"]",
        "allowed = [\"paygress-debian-12\", \"no-such-image\"]",
    );
    let f = dir.join("paygress.toml");
    std::fs::write(&f, text).unwrap();
    f
}

async fn start(mints: &[&str], ports: u16) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), mints, common::free_port_block(ports));
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_paygress-mcp-server"));
    cmd.arg("--config").arg(&cfg);
    let transport = TokioChildProcess::new(cmd).unwrap();
    let handler = Client::default();
    let client = handler.clone().serve(transport).await.unwrap();
    Server {
        client,
        handler,
        _dir: dir,
    }
}

async fn call(s: &Server, name: &str, args: Value) -> CallToolResult {
    s.client
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

fn error_type(r: &CallToolResult) -> String {
    assert_eq!(r.is_error, Some(true), "expected an error: {r:?}");
    body(r)["error_type"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn tools_are_listed_with_schemas_and_honest_annotations() {
    let mint = TestMint::start().await;
    let s = start(&[&mint.url], 3).await;
    let info = s.client.peer_info().unwrap();
    assert_eq!(info.server_info.name, "paygress-mcp-server");
    assert!(info.instructions.as_deref().unwrap().contains("get_offers"));
    let tools = s.client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        ["get_offers", "spawn_pod", "topup_pod", "get_pod_status"]
    );
    let spawn = &tools[1];
    let req = spawn.input_schema["required"].as_array().unwrap();
    assert!(req.contains(&json!("cashu_token")) && req.contains(&json!("ssh_username")));
    // The result, or the typed error body an isError result carries.
    let out = spawn.output_schema.as_ref().unwrap();
    assert_eq!(out["type"], "object");
    assert!(out["anyOf"][0]["properties"]["node_port"].is_object());
    assert!(out["anyOf"][1]["required"]
        .as_array()
        .unwrap()
        .contains(&json!("error_type")));
    let a = spawn.annotations.as_ref().unwrap();
    assert_eq!(
        (a.read_only_hint, a.idempotent_hint, a.open_world_hint),
        (Some(false), Some(false), Some(true))
    );
    assert_eq!(
        tools[0].annotations.as_ref().unwrap().read_only_hint,
        Some(true)
    );
    assert_eq!(
        tools[3].annotations.as_ref().unwrap().read_only_hint,
        Some(true)
    );
    let offers = call(&s, "get_offers", json!({})).await;
    assert_eq!(body(&offers)["whitelisted_mints"][0], mint.url);
    assert_eq!(body(&offers)["backend"], "lxd");
    let text = offers.content[0].as_text().unwrap().text.clone();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        body(&offers),
        "same JSON as text"
    );
    // Unknown tools stay JSON-RPC errors.
    let err = s
        .client
        .call_tool(CallToolRequestParams::new("rm_rf"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown tool"), "{err}");
}

#[tokio::test]
async fn a_paid_spawn_reports_progress_then_top_up_and_status_work() {
    let mint = TestMint::start().await;
    let s = start(&[&mint.url], 3).await;
    let token = mint.token(100).await;
    let args = json!({"cashu_token": token, "pod_spec_id": "basic", "ssh_username": "alice", "ssh_password": "correct horse 1"});
    let req = ClientRequest::CallToolRequest(rmcp::model::Request::new(
        CallToolRequestParams::new("spawn_pod").with_arguments(args.as_object().unwrap().clone()),
    ));
    let handle = s
        .client
        .send_cancellable_request(req, PeerRequestOptions::no_options())
        .await
        .unwrap();
    let resp = handle.await_response().await.unwrap();
    let rmcp::model::ServerResult::CallToolResult(r) = resp else {
        panic!("unexpected {resp:?}")
    };
    assert_ne!(r.is_error, Some(true), "{:?}", r.structured_content);
    let b = body(&r);
    assert_eq!(b["duration_seconds"], 1000);
    assert_eq!(b["ssh_password"], "correct horse 1");
    let port = b["node_port"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let steps: Vec<f64> = s
        .handler
        .progress
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.progress)
        .collect();
    assert_eq!(steps, vec![1.0, 2.0, 3.0, 4.0], "progress in order");
    // SSH answers on the port.
    let mut banner = [0u8; 7];
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port as u16))
        .await
        .unwrap();
    tokio::io::AsyncReadExt::read_exact(&mut c, &mut banner)
        .await
        .unwrap();
    assert_eq!(&banner, b"SSH-2.0");

    let pod = b["pod_npub"].as_str().unwrap().to_string();
    let _cleanup = common::LxdCleanup::for_pod(&pod);
    let up = call(
        &s,
        "topup_pod",
        json!({"pod_npub": pod, "cashu_token": mint.token(10).await}),
    )
    .await;
    assert_eq!(
        body(&up)["extended_duration_seconds"],
        100,
        "{:?}",
        body(&up)
    );
    let st = call(&s, "get_pod_status", json!({"pod_npub": pod})).await;
    assert_eq!(body(&st)["state"], "running");
    assert_eq!(body(&st)["access"]["node_port"], port);
    // Clean up the container.
    let _ = std::process::Command::new("lxc")
        .args(["delete", "--force"])
        .output();
}

#[tokio::test]
async fn every_error_the_core_can_produce_comes_back_typed() {
    let mint = TestMint::start().await;
    let foreign = TestMint::start().await;
    let s = start(&[&mint.url], 3).await;
    let ok = |t: &str| json!({"cashu_token": t, "ssh_username": "alice"});
    let t = mint.token(100).await;

    let r = call(
        &s,
        "spawn_pod",
        json!({"cashu_token": t, "ssh_username": "root"}),
    )
    .await;
    assert_eq!(error_type(&r), "invalid_request");
    let r = call(
        &s,
        "spawn_pod",
        json!({"cashu_token": t, "ssh_username": "alice", "pod_spec_id": "nope"}),
    )
    .await;
    assert_eq!(error_type(&r), "invalid_spec");
    let r = call(&s, "spawn_pod", ok("cashuBgarbage")).await;
    assert_eq!(error_type(&r), "invalid_token");
    let r = call(&s, "spawn_pod", ok(&foreign.token(100).await)).await;
    assert_eq!(error_type(&r), "mint_not_allowed");
    let r = call(&s, "spawn_pod", ok(&mint.token(1).await)).await;
    assert_eq!(error_type(&r), "insufficient_payment");
    let spent = mint.token(100).await;
    mint.receive_fresh(&spent).await.unwrap();
    let r = call(&s, "spawn_pod", ok(&spent)).await;
    assert_eq!(error_type(&r), "token_already_spent");
    let r = call(
        &s,
        "get_pod_status",
        json!({"pod_npub": "npub1doesnotexist"}),
    )
    .await;
    assert_eq!(error_type(&r), "pod_not_found");
    let r = call(&s, "spawn_pod", json!({"ssh_username": 5})).await;
    assert_eq!(error_type(&r), "invalid_request");
    // A missing image on the backend: created after payment, so refunded.
    let r = call(&s, "spawn_pod", json!({"cashu_token": mint.token(100).await, "ssh_username": "alice", "pod_image": "no-such-image"})).await;
    assert_eq!(error_type(&r), "pod_creation_failed");
    let refund = body(&r)["refund_token"].as_str().unwrap().to_string();
    assert_eq!(mint.receive_fresh(&refund).await.unwrap(), 100);
    // The token the validation errors saw was never touched.
    assert_eq!(mint.receive_fresh(&t).await.unwrap(), 100);
    // The mint goes down: payment_failed, nothing taken.
    let late = mint.token(100).await;
    mint.stop_serving();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = call(&s, "spawn_pod", ok(&late)).await;
    assert_eq!(error_type(&r), "payment_failed");
    assert!(body(&r).get("refund_token").is_none());
}

#[tokio::test]
async fn no_free_port_is_resource_unavailable() {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The provider's only SSH port is taken by another program on the host.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = write_config(dir.path(), &[&mint.url], (port, port));
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_paygress-mcp-server"));
    cmd.arg("--config").arg(&cfg);
    let client = Client::default()
        .serve(TokioChildProcess::new(cmd).unwrap())
        .await
        .unwrap();
    let s = Server {
        client,
        handler: Client::default(),
        _dir: dir,
    };
    let t = mint.token(100).await;
    let r = call(
        &s,
        "spawn_pod",
        json!({"cashu_token": t, "ssh_username": "alice"}),
    )
    .await;
    assert_eq!(error_type(&r), "resource_unavailable");
    assert_eq!(
        mint.receive_fresh(&t).await.unwrap(),
        100,
        "token untouched"
    );
}

fn inspector() -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/e2e/node_modules/.bin/mcp-inspector");
    assert!(p.exists(), "the MCP Inspector is not installed: run `npm install --prefix tools/e2e` (tools/test.sh does)");
    p
}

/// The official MCP Inspector CLI (npm) against the stdio server.
#[tokio::test]
async fn the_official_mcp_inspector_lists_tools_and_calls_get_offers() {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &[&mint.url], common::free_port_block(3));
    let run = |args: Vec<String>| {
        let mut c = tokio::process::Command::new(inspector());
        c.arg("--cli")
            .arg(env!("CARGO_BIN_EXE_paygress-mcp-server"))
            .arg("-e")
            .arg(format!("PAYGRESS_CONFIG={}", cfg.display()))
            .args(args)
            .env("MCP_CATALOG_PATH", dir.path().join("catalog.json"))
            .env("HOME", dir.path());
        c
    };
    let out = run(vec!["--method".into(), "tools/list".into()])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "inspector failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["get_offers", "spawn_pod", "topup_pod", "get_pod_status"]
    );

    let out = run(vec![
        "--method".into(),
        "tools/call".into(),
        "--tool-name".into(),
        "get_offers".into(),
    ])
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "inspector failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["structuredContent"]["whitelisted_mints"][0], mint.url,
        "{v}"
    );
    assert_eq!(v["structuredContent"]["pod_specs"][0]["id"], "basic");
}

/// Garbage on stdin never crashes the server: it answers with errors and keeps serving.
#[tokio::test]
async fn garbage_on_stdin_gets_errors_and_the_server_keeps_serving() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &[&mint.url], common::free_port_block(3));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_paygress-mcp-server"))
        .arg("--config")
        .arg(&cfg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let huge = "x".repeat(4 * 1024 * 1024);
    let inputs = vec![
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#.to_string(),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_string(),
        "this is not json".to_string(),
        "{\"jsonrpc\":\"2.0\",\"id\":".to_string(),
        format!(r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"get_offers","arguments":{{"pad":"{huge}"}}}}}}"#),
        huge.clone(),
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"spawn_pod","arguments":{"cashu_token":[1,2],"ssh_username":{}}}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":"nope"}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":5,"method":"no/such/method"}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/list"}"#.to_string(),
    ];
    for l in inputs {
        stdin.write_all(l.as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
    }
    stdin.flush().await.unwrap();
    let mut answers = std::collections::BTreeMap::new();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            let v: Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if let Some(id) = v["id"].as_u64() {
                answers.insert(id, v);
                // Requests are handled concurrently: answers may come in any order.
                if [3, 4, 5, 6].iter().all(|k| answers.contains_key(k)) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the server kept answering");
    assert!(
        answers[&6]["result"]["tools"].as_array().unwrap().len() == 4,
        "{:?}",
        answers.get(&6)
    );
    let spawn = &answers[&3]["result"];
    assert_eq!(spawn["isError"], true, "{spawn}");
    assert_eq!(spawn["structuredContent"]["error_type"], "invalid_request");
    assert!(answers[&4].get("error").is_some(), "{:?}", answers.get(&4));
    assert!(answers[&5].get("error").is_some(), "{:?}", answers.get(&5));
    assert!(child.try_wait().unwrap().is_none(), "still running");
}

/// A spawn cancelled by the client mid-provisioning is rolled back and refunded; repeating the
/// request with the same token collects the refund.
#[tokio::test]
async fn a_cancelled_spawn_is_rolled_back_and_refunded() {
    let mint = TestMint::start().await;
    let s = start(&[&mint.url], 3).await;
    let token = mint.token(100).await;
    let args = json!({"cashu_token": token, "ssh_username": "alice"});
    let req = ClientRequest::CallToolRequest(rmcp::model::Request::new(
        CallToolRequestParams::new("spawn_pod").with_arguments(args.as_object().unwrap().clone()),
    ));
    let handle = s
        .client
        .send_cancellable_request(req, PeerRequestOptions::no_options())
        .await
        .unwrap();
    // Cancel once the backend is creating the workload (progress step 3).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !s
        .handler
        .progress
        .lock()
        .unwrap()
        .iter()
        .any(|p| p.progress >= 3.0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no provisioning progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.cancel(Some("changed my mind".into())).await.unwrap();
    // The same request again returns the first (cancelled) answer, with the refund.
    let mut r = call(&s, "spawn_pod", args.clone()).await;
    for _ in 0..100 {
        if body(&r)["error_type"] != "payment_failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        r = call(&s, "spawn_pod", args.clone()).await;
    }
    assert_eq!(error_type(&r), "pod_creation_failed", "{:?}", body(&r));
    assert!(body(&r)["message"].as_str().unwrap().contains("cancelled"));
    let refund = body(&r)["refund_token"].as_str().unwrap().to_string();
    assert_eq!(mint.receive_fresh(&refund).await.unwrap(), 100);
    let left = std::process::Command::new("lxc")
        .args(["list", "-c", "n", "--format", "csv"])
        .output()
        .unwrap();
    let offers = body(&call(&s, "get_offers", json!({})).await);
    assert_eq!(
        offers["capacity"]["live_workloads"],
        0,
        "{}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// The binary on a sandbox-backed config, spoken to line by line.
struct Raw {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    _dir: tempfile::TempDir,
}

impl Raw {
    async fn start(mint: &str) -> Raw {
        let dir = tempfile::tempdir().unwrap();
        let cfg = common::config(dir.path(), &[mint], 100, common::free_port_block(2));
        let f = dir.path().join("paygress.toml");
        std::fs::write(&f, toml::to_string(&cfg).unwrap()).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_paygress-mcp-server"))
            .arg("--config")
            .arg(&f)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
            child.stdout.take().unwrap(),
        ));
        Raw {
            child,
            stdin,
            lines,
            _dir: dir,
        }
    }

    async fn send(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.write_all(b"\n").await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next line the server writes (a generous bound: only for liveness).
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .expect("the server answered")
            .unwrap()
            .expect("the server is still serving");
        serde_json::from_str(&line).unwrap()
    }

    async fn ask(&mut self, line: &str) -> Value {
        self.send(line).await;
        self.next().await
    }

    /// `line` must produce no output: a ping sent after it is answered first.
    async fn ignored(&mut self, line: &str, ping_id: u64) {
        self.send(line).await;
        let r = self
            .ask(&json!({"jsonrpc": "2.0", "id": ping_id, "method": "ping"}).to_string())
            .await;
        assert_eq!(r["id"], ping_id, "{line} was answered: {r}");
        assert_eq!(r["result"], json!({}), "{r}");
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

fn code(r: &Value) -> i64 {
    r["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error: {r}"))
}

const ENVELOPE: &str = r#"{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"}}"#;

/// A first message that is not `initialize` never ends the session: requests get JSON-RPC
/// errors, notifications are ignored, a batch gets one error per request, and a later
/// `initialize` opens the session as usual.
#[tokio::test]
async fn first_messages_that_are_not_initialize_are_answered_or_ignored_then_initialize_works() {
    let mint = TestMint::start().await;
    let mut s = Raw::start(&mint.url).await;
    // A stray request before initialize.
    let r = s
        .ask(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .await;
    assert_eq!((r["id"].clone(), code(&r)), (json!(1), -32600), "{r}");
    let r = s
        .ask(
            r#"{"jsonrpc":"2.0","id":"call","method":"tools/call","params":{"name":"get_offers"}}"#,
        )
        .await;
    assert_eq!((r["id"].clone(), code(&r)), (json!("call"), -32600), "{r}");
    // Notifications are never answered.
    s.ignored(
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        100,
    )
    .await;
    s.ignored(
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
        101,
    )
    .await;
    s.ignored(r#"{"jsonrpc":"2.0","method":"no/such/notification"}"#, 102)
        .await;
    // A batch: one error per request in it, nothing for its notification.
    let r = s
        .ask(r#"[{"jsonrpc":"2.0","id":3,"method":"tools/list"},{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":4,"method":"initialize","params":{}}]"#)
        .await;
    let errs = r
        .as_array()
        .unwrap_or_else(|| panic!("not a batch answer: {r}"));
    assert_eq!(errs.len(), 2, "{r}");
    assert_eq!((errs[0]["id"].clone(), code(&errs[0])), (json!(3), -32600));
    assert_eq!((errs[1]["id"].clone(), code(&errs[1])), (json!(4), -32600));
    let r = s.ask("[]").await;
    assert_eq!((r["id"].clone(), code(&r)), (Value::Null, -32600), "{r}");
    s.ignored(
        r#"[{"jsonrpc":"2.0","method":"notifications/initialized"}]"#,
        103,
    )
    .await;
    // An unknown method.
    let r = s
        .ask(r#"{"jsonrpc":"2.0","id":5,"method":"no/such/method","params":{}}"#)
        .await;
    assert_eq!((r["id"].clone(), code(&r)), (json!(5), -32601), "{r}");
    // The 2026-07-28 probe without its envelope; the probe with an unknown revision.
    let r = s
        .ask(r#"{"jsonrpc":"2.0","id":6,"method":"server/discover"}"#)
        .await;
    assert_eq!((r["id"].clone(), code(&r)), (json!(6), -32602), "{r}");
    let r = s
        .ask(r#"{"jsonrpc":"2.0","id":7,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2099-01-01","io.modelcontextprotocol/clientCapabilities":{}}}}"#)
        .await;
    assert_eq!((r["id"].clone(), code(&r)), (json!(7), -32022), "{r}");
    assert_eq!(r["error"]["data"]["requested"], "2099-01-01");
    assert!(r["error"]["data"]["supported"]
        .as_array()
        .unwrap()
        .contains(&json!("2025-11-25")));
    // A response to nothing.
    s.ignored(r#"{"jsonrpc":"2.0","id":99,"result":{}}"#, 104)
        .await;
    // The handshake still works, at the revision the client asked for.
    let r = s
        .ask(r#"{"jsonrpc":"2.0","id":8,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#)
        .await;
    assert_eq!(r["id"], 8, "{r}");
    assert_eq!(r["result"]["protocolVersion"], "2025-06-18", "{r}");
    assert_eq!(r["result"]["serverInfo"]["name"], "paygress-mcp-server");
    s.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .await;
    let r = s
        .ask(r#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#)
        .await;
    assert_eq!(r["result"]["tools"].as_array().unwrap().len(), 4, "{r}");
    let r = s
        .ask(r#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"get_offers","arguments":{}}}"#)
        .await;
    assert_eq!(
        r["result"]["structuredContent"]["whitelisted_mints"][0],
        mint.url
    );
    // A second initialize (a gateway's next client on the same session) is answered too; the
    // session goes on.
    let r = s
        .ask(r#"{"jsonrpc":"2.0","id":11,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#)
        .await;
    // rmcp answers with the revision this session already speaks.
    assert_eq!(r["id"], json!(11), "{r}");
    assert!(r["result"]["protocolVersion"].is_string(), "{r}");
    let r = s
        .ask(r#"{"jsonrpc":"2.0","id":12,"method":"tools/list"}"#)
        .await;
    assert_eq!(r["result"]["tools"].as_array().unwrap().len(), 4, "{r}");
    assert!(s.running());
}

/// An `initialize` proposing 2026-07-28 (a revision without a handshake) is answered with the
/// newest handshake revision instead of an echo.
#[tokio::test]
async fn an_initialize_proposing_the_stateless_revision_gets_the_newest_handshake_one() {
    let mint = TestMint::start().await;
    let mut s = Raw::start(&mint.url).await;
    let r = s
        .ask(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2026-07-28","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#)
        .await;
    assert_eq!(r["result"]["protocolVersion"], "2025-11-25", "{r}");
}

/// The 2026-07-28 revision: `server/discover`, then requests that each carry their envelope, no
/// handshake; results carry the revision's fields, and a late `initialize` is refused with the
/// revision's error naming what is served.
#[tokio::test]
async fn a_2026_07_28_client_is_served_without_a_handshake() {
    let mint = TestMint::start().await;
    let mut s = Raw::start(&mint.url).await;
    let req = |id: u64, method: &str, params: Value| {
        let mut p = params;
        p["_meta"] = serde_json::from_str(ENVELOPE).unwrap();
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": p}).to_string()
    };
    let r = s.ask(&req(1, "server/discover", json!({}))).await;
    let d = &r["result"];
    assert_eq!(d["supportedVersions"], json!(["2026-07-28"]), "{r}");
    assert_eq!(d["capabilities"]["tools"], json!({}));
    assert_eq!(d["resultType"], "complete");
    assert!(d["ttlMs"].is_u64() && d["cacheScope"] == "public", "{d}");
    assert_eq!(
        d["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "paygress-mcp-server"
    );
    assert!(d["instructions"].as_str().unwrap().contains("get_offers"));
    let r = s.ask(&req(2, "tools/list", json!({}))).await;
    let l = &r["result"];
    assert_eq!(l["tools"].as_array().unwrap().len(), 4, "{r}");
    assert_eq!(
        (l["resultType"].clone(), l["cacheScope"].clone()),
        (json!("complete"), json!("public"))
    );
    assert!(l["ttlMs"].is_u64());
    let r = s
        .ask(&req(
            3,
            "tools/call",
            json!({"name": "get_offers", "arguments": {}}),
        ))
        .await;
    let c = &r["result"];
    assert_eq!(c["resultType"], "complete", "{r}");
    assert_eq!(c["structuredContent"]["whitelisted_mints"][0], mint.url);
    assert_eq!(
        c["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "paygress-mcp-server"
    );
    // Tool errors stay tool results; unknown tools and methods stay JSON-RPC errors.
    let r = s
        .ask(&req(
            4,
            "tools/call",
            json!({"name": "get_pod_status", "arguments": {"pod_npub": "npub1nope"}}),
        ))
        .await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert_eq!(
        r["result"]["structuredContent"]["error_type"],
        "pod_not_found"
    );
    let r = s
        .ask(&req(
            5,
            "tools/call",
            json!({"name": "rm_rf", "arguments": {}}),
        ))
        .await;
    assert!(r.get("error").is_some(), "{r}");
    let r = s.ask(&req(6, "no/such/method", json!({}))).await;
    assert_eq!(code(&r), -32601, "{r}");
    // A request without its envelope, one at another revision, a late initialize.
    let r = s
        .ask(r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#)
        .await;
    assert_eq!((r["id"].clone(), code(&r)), (json!(7), -32602), "{r}");
    let r = s
        .ask(r#"{"jsonrpc":"2.0","id":8,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2025-11-25","io.modelcontextprotocol/clientCapabilities":{}}}}"#)
        .await;
    assert_eq!((r["id"].clone(), code(&r)), (json!(8), -32022), "{r}");
    let r = s
        .ask(r#"{"jsonrpc":"2.0","id":9,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#)
        .await;
    assert_eq!((r["id"].clone(), code(&r)), (json!(9), -32022), "{r}");
    assert_eq!(r["error"]["data"]["supported"], json!(["2026-07-28"]));
    // Still serving.
    let r = s.ask(&req(10, "tools/list", json!({}))).await;
    assert_eq!(r["result"]["tools"].as_array().unwrap().len(), 4, "{r}");
    assert!(s.running());
}
