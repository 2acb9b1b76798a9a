//! `paygress-cli demo`: the whole buyer flow against `paygress-mcp-server --demo`, printed as a
//! walk-through to paste, or run (`--run`): get a demo token, get offers, spawn, print the ssh
//! command, keep the pod until Ctrl-C or end of input.

use std::time::Duration;

use clap::Args;
use paygress::app::exit;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;
use serde_json::{json, Value};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run the walk-through instead of printing it: start the demo server, pay, spawn, print
    /// the ssh command, and keep the pod until Ctrl-C or end of standard input.
    #[arg(long)]
    run: bool,
    /// The demo's backend (auto: LXD when it answers and has the base image, else the sandbox).
    #[arg(long, value_name = "BACKEND", default_value = "auto", value_parser = ["auto", "lxd", "sandbox"])]
    backend: String,
    /// Sats to pay (at the demo's rates 1 sat buys 100 seconds of the small tier).
    #[arg(long, value_name = "SATS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    sats: u64,
    /// Login name inside the pod.
    #[arg(long, value_name = "NAME", default_value = "demo")]
    user: String,
}

fn server_path() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("paygress-mcp-server")))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "paygress-mcp-server".into())
}

pub async fn run(args: DemoArgs) -> i32 {
    if !args.run {
        print_walkthrough(&server_path(), &args);
        return 0;
    }
    let mut cmd = tokio::process::Command::new(server_path());
    cmd.args(["--demo", "--demo-backend", &args.backend]);
    let transport = match TokioChildProcess::new(cmd) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("paygress-cli: cannot start paygress-mcp-server: {e}");
            return exit::PROVIDER;
        }
    };
    let client = match ().serve(transport).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("paygress-cli: the demo server did not start: {e}");
            return exit::PROVIDER;
        }
    };
    let code = walk(&client, &args).await;
    let _ = client.cancel().await;
    code
}

async fn call(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    name: &str,
    args: Value,
) -> Result<Value, i32> {
    let params = CallToolRequestParams::new(name.to_string())
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    let r = match client.call_tool(params).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("paygress-cli: {name}: {e}");
            return Err(exit::PROVIDER);
        }
    };
    let body = r.structured_content.clone().unwrap_or(Value::Null);
    if r.is_error == Some(true) {
        eprintln!(
            "paygress-cli: {name} failed ({}): {}",
            body["error_type"].as_str().unwrap_or("?"),
            body["message"].as_str().unwrap_or("")
        );
        return Err(exit::PROVIDER);
    }
    Ok(body)
}

async fn walk(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    args: &DemoArgs,
) -> i32 {
    let step = |n: u32, what: &str| println!("{n}. {what}");
    step(1, &format!("get_demo_token {{amount_sats: {}}}", args.sats));
    let token = match call(client, "get_demo_token", json!({"amount_sats": args.sats})).await {
        Ok(v) => v["cashu_token"].as_str().unwrap_or("").to_string(),
        Err(c) => return c,
    };
    println!("   a {}-sat test token from the demo mint", args.sats);
    step(2, "get_offers");
    let offers = match call(client, "get_offers", json!({})).await {
        Ok(v) => v,
        Err(c) => return c,
    };
    let tier = offers["pod_specs"][0].clone();
    println!(
        "   {} on {}: tier {} at {} msat/s",
        offers["provider"]["name"].as_str().unwrap_or(""),
        offers["backend"].as_str().unwrap_or(""),
        tier["id"].as_str().unwrap_or(""),
        tier["rate_msats_per_sec"]
    );
    step(3, "spawn_pod");
    let pod = match call(
        client,
        "spawn_pod",
        json!({"cashu_token": token, "pod_spec_id": tier["id"], "ssh_username": args.user}),
    )
    .await
    {
        Ok(v) => v,
        Err(c) => return c,
    };
    println!(
        "   pod {} for {} s, until {}",
        pod["pod_npub"].as_str().unwrap_or(""),
        pod["duration_seconds"],
        pod["expires_at"].as_str().unwrap_or("")
    );
    step(4, "log in:");
    println!(
        "   ssh -p {} {}@{}",
        pod["node_port"],
        pod["ssh_username"].as_str().unwrap_or(""),
        pod["host"].as_str().unwrap_or("")
    );
    println!(
        "   password: {}",
        pod["ssh_password"].as_str().unwrap_or("")
    );
    println!("The pod lives until it expires or this demo ends (Ctrl-C or end of input).");
    wait_for_end().await;
    0
}

/// Ctrl-C, SIGTERM, or end of standard input.
async fn wait_for_end() {
    let eof = async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 256];
        let mut stdin = tokio::io::stdin();
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = paygress::app::interrupted() => {}
        _ = eof => {}
        // A pod outlives no demo: at most a day.
        _ = tokio::time::sleep(Duration::from_secs(86_400)) => {}
    }
}

fn print_walkthrough(server: &str, args: &DemoArgs) {
    println!(
        r#"Paygress demo: buy a pod with a test token, end to end.

The demo server has an embedded Cashu mint with a fake Lightning backend: its tokens are
worthless. Everything else (payment checks, provisioning, SSH) is real.

Let paygress-cli do it (starts the server, pays, spawns, prints the ssh command):

    paygress-cli demo --run

Or by hand with the MCP Inspector (each call starts a fresh demo server, so for a pod that
stays, give the server to an MCP client instead):

    npx @modelcontextprotocol/inspector --cli {server} --demo --method tools/list
    npx @modelcontextprotocol/inspector --cli {server} --demo \
        --method tools/call --tool-name get_demo_token --tool-arg amount_sats={sats}

For an AI assistant (Claude Desktop or any client reading mcpServers):

    {{"mcpServers": {{"paygress-demo": {{"command": "{server}", "args": ["--demo"]}}}}}}

then ask it to: call get_demo_token with amount_sats {sats}, call get_offers, call spawn_pod with
the token, pod_spec_id "small" and ssh_username "{user}", and give you the ssh command."#,
        server = server,
        sats = args.sats,
        user = args.user,
    );
}
