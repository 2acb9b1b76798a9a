//! `paygress-mcp-server`: the provider's MCP tool server (stdio; ContextVM over Nostr).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use paygress::app::{self, exit};
use paygress::backend::Backend;
use paygress::config::Config;
use paygress::doors::contextvm;
use paygress::doors::mcp::{ExtraTool, McpDoor};
use paygress::Provider;
use rmcp::ServiceExt;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// MCP over standard input/output (for AI assistants and inspectors).
    Stdio,
    /// MCP over Nostr relays (ContextVM), with the provider's Nostr key.
    Contextvm,
    /// Both at once; the server keeps serving ContextVM after stdin closes.
    Both,
    /// No MCP transport: only the HTTP door (`--http` or `http.listen`).
    None,
}

/// Sell SSH-ready compute for Cashu ecash, as MCP tools: get_offers, spawn_pod, topup_pod,
/// get_pod_status.
///
/// Logs go to stderr; in stdio mode stdout carries the MCP protocol. ContextVM mode serves the
/// same tools over the relays in `nostr.relays`, answering as the provider's Nostr key; it runs
/// until interrupted (Ctrl-C or SIGTERM).
#[derive(Debug, Parser)]
#[command(name = "paygress-mcp-server", version, about, long_about)]
struct Args {
    /// Provider configuration (TOML). Also PAYGRESS_CONFIG.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// How clients reach the server.
    #[arg(long, value_enum, default_value = "stdio")]
    transport: Transport,
    /// Run an embedded Nostr relay on ADDR (e.g. 127.0.0.1:7777; port 0 picks one) and serve
    /// ContextVM on it too. Overrides nostr.embedded_relay.
    #[arg(long, value_name = "ADDR")]
    embedded_relay: Option<SocketAddr>,
    /// Demo mode (also chosen when there is no configuration): an embedded Cashu test mint
    /// (fake Lightning; tokens are worthless), a temporary provider on this machine, an embedded
    /// relay for ContextVM, and one more tool, get_demo_token, to pay with.
    #[arg(long, conflicts_with = "config")]
    demo: bool,
    /// The demo's backend: LXD when its socket answers and has the base image, else the local
    /// sandbox.
    #[arg(long, value_enum, default_value = "auto", value_name = "BACKEND")]
    demo_backend: DemoChoice,
    /// Serve the HTTP door (NUT-24 402 payments) on ADDR, e.g. 127.0.0.1:8080 (port 0 picks
    /// one). Overrides http.listen (env PAYGRESS_HTTP). The server then runs until interrupted.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Requests per minute one client address may make to the HTTP door (0: unlimited).
    /// Overrides http.rate_limit_per_minute.
    #[arg(long, value_name = "N")]
    http_rate_limit: Option<u32>,
    /// Who stdio callers are. `anonymous` or `gateway-meta` when a ContextVM gateway runs this
    /// server (start-paygress-context-vm.sh picks `anonymous`, or PAYGRESS_STDIO_CALLER).
    #[arg(long, value_enum, default_value = "local", value_name = "WHO")]
    stdio_caller: StdioCaller,
}

/// Who a stdio caller is (it owns what it spawns; only the owner sees login details later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StdioCaller {
    /// The operator's own MCP client: one owner for everything spawned over stdio.
    Local,
    /// Callers with no name (a ContextVM gateway that does not say who calls): spawns return
    /// their login details, `get_pod_status` shows them to nobody.
    Anonymous,
    /// The Nostr key in each request's `_meta.clientPubkey`, written by a ContextVM gateway
    /// that injects it (and overwrites what clients send); anonymous without one.
    GatewayMeta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DemoChoice {
    Auto,
    Lxd,
    Sandbox,
}

fn main() -> ExitCode {
    let args = Args::parse();
    app::init_logging();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paygress-mcp-server: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let nostr = matches!(args.transport, Transport::Contextvm | Transport::Both);
    let demo_mode = args.demo || app::config_path(args.config.clone()).is_none();
    let mut extra_tools: Vec<Arc<dyn ExtraTool>> = Vec::new();
    let (mut cfg, backend, demo) = if demo_mode {
        match start_demo(args.demo_backend, &mut extra_tools).await {
            Ok((cfg, backend, demo)) => (cfg, Some(backend), demo),
            Err(code) => return code,
        }
    } else {
        match app::load_config(args.config) {
            Ok(c) => (c, None, None),
            Err(e) => {
                eprintln!("paygress-mcp-server: {e}");
                return ExitCode::from(exit::USAGE as u8);
            }
        }
    };
    // A demo serving ContextVM with no relays gets its own.
    let relay_flag = match args.embedded_relay {
        None if demo_mode && nostr && cfg.nostr.relays.is_empty() => {
            Some(SocketAddr::from(([127, 0, 0, 1], 0)))
        }
        other => other,
    };
    // The embedded relay lives as long as this function.
    let _relay = match app::start_embedded_relay(&mut cfg, relay_flag).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("paygress-mcp-server: {e}");
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    if nostr && cfg.nostr.relays.is_empty() {
        eprintln!(
            "paygress-mcp-server: {}",
            contextvm::ContextVmError::NoRelays
        );
        return ExitCode::from(exit::USAGE as u8);
    }
    let opened = match backend {
        Some(b) => Provider::open(cfg, b).await.map_err(|e| e.to_string()),
        None => app::open_provider(cfg).await.map_err(|e| e.to_string()),
    };
    let provider = match opened {
        Ok(p) => p,
        Err(e) => {
            eprintln!("paygress-mcp-server: {e}");
            return ExitCode::from(exit::PROVIDER as u8);
        }
    };
    if demo.is_some() {
        eprintln!("demo: server {}", provider.npub());
        let end = if args.transport == Transport::Stdio {
            "Ctrl-C (or closing stdin)"
        } else {
            "Ctrl-C"
        };
        eprintln!("demo: call get_demo_token, then get_offers and spawn_pod; {end} ends the demo and removes its pods");
        if args.http.is_some() {
            eprintln!("demo: over HTTP, POST /tools/get_demo_token {{\"amount_sats\": 10}} gives a token (examples/curl_402.sh walks through it)");
        }
    }
    let shutdown = CancellationToken::new();
    let reaper = provider.start_reaper(shutdown.clone());
    tracing::info!(npub = %provider.npub(), backend = %provider.backend().kind(), "provider open");

    let mut contextvm_task = None;
    if nostr {
        match app::start_contextvm(&provider, &extra_tools, shutdown.clone()).await {
            Ok(t) => contextvm_task = Some(t),
            Err(e) => {
                eprintln!("paygress-mcp-server: {e}");
                shutdown.cancel();
                let _ = reaper.await;
                return ExitCode::from(exit::PROVIDER as u8);
            }
        }
    }

    let mut http_task = None;
    if let Some(addr) = args.http.or(provider.config().http.listen) {
        let mut doors = Vec::new();
        if matches!(args.transport, Transport::Stdio | Transport::Both) {
            doors.push("stdio".to_string());
        }
        if nostr {
            doors.push("contextvm".to_string());
        }
        let mut section = provider.config().http.clone();
        if let Some(n) = args.http_rate_limit {
            section.rate_limit_per_minute = n;
        }
        let opts = paygress::doors::http::HttpOptions {
            section,
            other_doors: doors,
            extra_tools: extra_tools.clone(),
        };
        match paygress::doors::http::start(provider.clone(), addr, opts, shutdown.clone()).await {
            Ok((bound, task)) => {
                eprintln!("paygress: HTTP door at http://{bound}");
                http_task = Some(task);
            }
            Err(e) => {
                eprintln!("paygress-mcp-server: {e}");
                shutdown.cancel();
                let _ = reaper.await;
                return ExitCode::from(exit::USAGE as u8);
            }
        }
    } else if args.transport == Transport::None {
        eprintln!("paygress-mcp-server: --transport none needs --http ADDR (or http.listen)");
        shutdown.cancel();
        let _ = reaper.await;
        return ExitCode::from(exit::USAGE as u8);
    }

    let mut code = ExitCode::SUCCESS;
    if matches!(args.transport, Transport::Stdio | Transport::Both) {
        let mut door = McpDoor::local(provider.clone());
        match args.stdio_caller {
            StdioCaller::Local => {}
            StdioCaller::Anonymous => door = door.identified_by(contextvm::identify_as_anonymous()),
            StdioCaller::GatewayMeta => {
                door = door.identified_by(contextvm::identify_by_gateway_meta())
            }
        }
        for t in &extra_tools {
            door = door.with_extra_tool(t.clone());
        }
        let info = rmcp::ServerHandler::get_info(&door);
        paygress::doors::stdio::serve_filtered(
            tokio::io::stdin(),
            tokio::io::stdout(),
            &info,
            |r, w| async move {
                match door.serve((r, w)).await {
                    Ok(service) => {
                        let _ = service.waiting().await;
                    }
                    Err(e) => tracing::error!("MCP session ended during initialisation: {e}"),
                }
            },
        )
        .await;
    }
    if contextvm_task.is_none() && http_task.is_some() {
        app::interrupted().await;
    }
    if let Some(task) = contextvm_task {
        tokio::select! {
            _ = app::interrupted() => {}
            r = &mut Box::pin(task) => {
                if let Ok(Err(e)) = r {
                    eprintln!("paygress-mcp-server: {e}");
                    code = ExitCode::from(exit::PROVIDER as u8);
                }
            }
        }
    }
    shutdown.cancel();
    let _ = reaper.await;
    if demo.is_some() {
        remove_demo_workloads(&provider).await;
    }
    // The demo's mint and temporary data dir go now, after its pods (without the demo feature
    // there is nothing to stop).
    #[cfg(feature = "demo")]
    drop(demo);
    code
}

/// The demo's state is temporary, so its pods go with it.
async fn remove_demo_workloads(provider: &Provider) {
    let backend = provider.backend();
    if let Ok(list) = backend.list(provider.provider_id()).await {
        for w in list {
            let _ = backend.destroy(&w.name).await;
        }
    }
}

#[cfg(feature = "demo")]
type DemoGuard = paygress::demo::Demo;
/// A build without the demo has nothing to keep alive.
#[cfg(not(feature = "demo"))]
struct DemoGuard;

/// Prepare the demo: mint, backend, config; say on stderr what is fake.
#[cfg(feature = "demo")]
async fn start_demo(
    choice: DemoChoice,
    extra_tools: &mut Vec<Arc<dyn ExtraTool>>,
) -> Result<(Config, Arc<dyn Backend>, Option<DemoGuard>), ExitCode> {
    use paygress::demo::{Demo, DemoBackend};
    let choice = match choice {
        DemoChoice::Auto => DemoBackend::Auto,
        DemoChoice::Lxd => DemoBackend::Lxd,
        DemoChoice::Sandbox => DemoBackend::Sandbox,
    };
    match Demo::prepare(choice).await {
        Ok(demo) => {
            for line in demo.describe() {
                eprintln!("{line}");
            }
            extra_tools.push(demo.token_tool());
            Ok((demo.config.clone(), demo.backend.clone(), Some(demo)))
        }
        Err(e) => {
            eprintln!("paygress-mcp-server: {e}");
            Err(ExitCode::from(exit::PROVIDER as u8))
        }
    }
}

#[cfg(not(feature = "demo"))]
async fn start_demo(
    _choice: DemoChoice,
    _extra_tools: &mut Vec<Arc<dyn ExtraTool>>,
) -> Result<(Config, Arc<dyn Backend>, Option<DemoGuard>), ExitCode> {
    eprintln!("paygress-mcp-server: {}", app::StartError::NoConfig);
    eprintln!("paygress-mcp-server: (this build has no demo mode; build with the default `demo` feature for it)");
    Err(ExitCode::from(exit::USAGE as u8))
}
