//! The buyer's MCP door (`paygress-cli mcp`): the [`Agent`]'s operations as MCP tools on stdio,
//! for the owner's own AI assistant.
//!
//! Built like the provider's door ([`crate::doors::mcp`]): every tool has an input and an output
//! schema (standard formats only), results carry `structuredContent` and the same JSON as text,
//! annotations say which tools spend money, `spawn_pod` reports progress, and failures are tool
//! results with `isError: true` and a typed body ([`AgentError`]). There is no tool argument
//! for a spending cap: caps come from the config file only.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, Content, Implementation, JsonObject, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerInfo, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::agent::{
    Agent, AgentError, BalanceOutcome, EmptyArgs, FundArgs, FundOutcome, ListProvidersArgs,
    ProvidersResult, ReceiveArgs, ReceiveOutcome, RunArgs, RunOutcome, SpawnArgs, SpawnOutcome,
    StatusArgs, StepFn, TopUpArgs, TopUpOutcome, SPAWN_STEPS,
};
use crate::api::PodStatus;
use crate::doors::mcp::schema_object;

pub const INSTRUCTIONS: &str = "Buy SSH-accessible compute from Paygress providers found on Nostr, paid from the owner's \
Cashu wallet. 1) list_providers shows live providers and their tiers (rate_msats_per_sec; 1 sat = 1000 msat). \
2) spawn_pod {provider, pod_spec_id, duration_seconds} pays exactly the price of that time from the wallet and returns the pod. \
3) run_command {pod_npub, command} runs a command on it over SSH and returns stdout, stderr and the exit code. \
4) topup_pod adds time; get_pod_status shows the time left. wallet_balance shows the funds, the spending caps and what was \
spent today; wallet_fund returns a Lightning invoice for the owner to pay; wallet_receive takes a Cashu token. \
Spending caps are set by the owner in the config file and cannot be changed by any tool; a payment past a cap is \
refused with error_type cap_exceeded and nothing is paid. Refunds go back into the wallet by themselves.";

#[derive(Clone)]
pub struct BuyerDoor {
    agent: Arc<Agent>,
}

impl BuyerDoor {
    pub fn new(agent: Arc<Agent>) -> BuyerDoor {
        BuyerDoor { agent }
    }

    pub fn tools(&self) -> Vec<Tool> {
        fn tool<I: schemars::JsonSchema, O: schemars::JsonSchema>(
            name: &'static str,
            title: &'static str,
            description: &'static str,
            annotations: ToolAnnotations,
        ) -> Tool {
            Tool::new(name, description, Arc::new(schema_object::<I>()))
                .with_title(title)
                .with_raw_output_schema(Arc::new(output_schema::<O>()))
                .with_annotations(annotations)
        }
        let read = |t: &'static str| ToolAnnotations::with_title(t).read_only(true);
        let spend = |t: &'static str| {
            ToolAnnotations::with_title(t)
                .read_only(false)
                .destructive(false)
                .idempotent(false)
                .open_world(true)
        };
        vec![
            tool::<ListProvidersArgs, ProvidersResult>(
                "list_providers",
                "List providers",
                "Live Paygress providers on the relays and their tiers (price per second, cpu, memory), \
                 filtered by backend, price and memory, cheapest first. Free.",
                read("List providers").open_world(true),
            ),
            tool::<SpawnArgs, SpawnOutcome>(
                "spawn_pod",
                "Spawn pod",
                "Buy a pod: pays exactly ceil(duration_seconds * rate_msats_per_sec / 1000) sats from the wallet, \
                 within the owner's caps, and returns the pod with its pinned SSH host key. The agent's own SSH key \
                 is authorised; use run_command. A refund after a failure goes back into the wallet.",
                spend("Spawn pod"),
            ),
            tool::<TopUpArgs, TopUpOutcome>(
                "topup_pod",
                "Top up pod",
                "Add duration_seconds of paid time to a pod, paid from the wallet within the caps.",
                spend("Top up pod"),
            ),
            tool::<StatusArgs, PodStatus>(
                "get_pod_status",
                "Get pod status",
                "A pod's state, expiry and seconds remaining, from its provider. Free.",
                read("Get pod status").open_world(true),
            ),
            tool::<RunArgs, RunOutcome>(
                "run_command",
                "Run command",
                "Run a command on a pod this agent bought, over SSH with the agent's kept key; the pod's host key \
                 must be the one pinned when it was bought. Returns stdout, stderr and exit_code.",
                ToolAnnotations::with_title("Run command")
                    .read_only(false)
                    .destructive(true)
                    .idempotent(false)
                    .open_world(true),
            ),
            tool::<EmptyArgs, BalanceOutcome>(
                "wallet_balance",
                "Wallet balance",
                "The wallet's sats per mint, what was paid to providers in the last 24 hours, and the caps.",
                read("Wallet balance").open_world(false),
            ),
            tool::<FundArgs, FundOutcome>(
                "wallet_fund",
                "Fund wallet",
                "Get a Lightning invoice for amount_sats from the wallet's mint, for the owner to pay; the wallet \
                 mints the sats by itself once it is paid (see wallet_balance).",
                ToolAnnotations::with_title("Fund wallet")
                    .read_only(false)
                    .destructive(false)
                    .idempotent(false)
                    .open_world(true),
            ),
            tool::<ReceiveArgs, ReceiveOutcome>(
                "wallet_receive",
                "Receive token",
                "Take a Cashu token into the wallet (swapped at its mint, so it cannot be spent twice).",
                ToolAnnotations::with_title("Receive token")
                    .read_only(false)
                    .destructive(false)
                    .idempotent(true)
                    .open_world(true),
            ),
        ]
    }

    async fn dispatch(
        &self,
        name: &str,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let a = &self.agent;
        Ok(match name {
            "list_providers" => match parse::<ListProvidersArgs>(name, args) {
                Ok(x) => to_result(a.list_providers(x).await),
                Err(e) => err_result(&e),
            },
            "spawn_pod" => match parse::<SpawnArgs>(name, args) {
                Ok(x) => {
                    let (step, forwarded) = progress(&ctx);
                    let r = a.spawn(x, step).await;
                    // Every progress notification goes out before the result: a client stops
                    // listening for a request's progress once it has its answer.
                    if let Some(f) = forwarded {
                        let _ = f.await;
                    }
                    to_result(r)
                }
                Err(e) => err_result(&e),
            },
            "topup_pod" => match parse::<TopUpArgs>(name, args) {
                Ok(x) => to_result(a.top_up(x).await),
                Err(e) => err_result(&e),
            },
            "get_pod_status" => match parse::<StatusArgs>(name, args) {
                Ok(x) => to_result(a.status(x).await),
                Err(e) => err_result(&e),
            },
            "run_command" => match parse::<RunArgs>(name, args) {
                Ok(x) => to_result(a.run_command(x).await),
                Err(e) => err_result(&e),
            },
            "wallet_balance" => match parse::<EmptyArgs>(name, args) {
                Ok(_) => to_result(a.balance().await),
                Err(e) => err_result(&e),
            },
            "wallet_fund" => match parse::<FundArgs>(name, args) {
                Ok(x) => to_result(a.fund(x).await),
                Err(e) => err_result(&e),
            },
            "wallet_receive" => match parse::<ReceiveArgs>(name, args) {
                Ok(x) => to_result(a.receive(x).await),
                Err(e) => err_result(&e),
            },
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(McpError::invalid_params(
                    format!("unknown tool: {shown}"),
                    None,
                ));
            }
        })
    }
}

impl ServerHandler for BuyerDoor {
    fn get_info(&self) -> ServerInfo {
        ServerInfo::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("paygress-cli-mcp", env!("CARGO_PKG_VERSION"))
                    .with_title("Paygress buyer: compute for the owner's ecash"),
            )
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let args = request.arguments.unwrap_or_default();
        self.dispatch(&request.name, args, context).await
    }
}

/// Progress notifications, in order, when the client sent a progress token; the task that
/// forwards them ends once the step function is dropped and all are sent.
fn progress(ctx: &RequestContext<RoleServer>) -> (StepFn, Option<tokio::task::JoinHandle<()>>) {
    let Some(token) = ctx.meta.get_progress_token() else {
        return (Arc::new(|_, _| {}), None);
    };
    let peer = ctx.peer.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u32, String)>();
    let forwarder = tokio::spawn(async move {
        while let Some((step, message)) = rx.recv().await {
            let p = ProgressNotificationParam::new(token.clone(), f64::from(step))
                .with_total(f64::from(SPAWN_STEPS))
                .with_message(message);
            if peer.notify_progress(p).await.is_err() {
                break;
            }
        }
    });
    let step: StepFn = Arc::new(move |step, message| {
        let _ = tx.send((step, message.to_string()));
    });
    (step, Some(forwarder))
}

fn parse<T: DeserializeOwned>(tool: &str, args: JsonObject) -> Result<T, AgentError> {
    serde_json::from_value(serde_json::Value::Object(args)).map_err(|e| {
        AgentError::invalid(format!(
            "invalid arguments for {tool}: {}",
            crate::error::sanitize_serde(&e)
        ))
    })
}

fn ok_result<T: Serialize>(v: &T) -> CallToolResult {
    let value = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
    let mut r = CallToolResult::success(vec![Content::text(value.to_string())]);
    r.structured_content = Some(value);
    r
}

fn err_result(e: &AgentError) -> CallToolResult {
    let value = serde_json::to_value(e).unwrap_or(serde_json::Value::Null);
    let mut r = CallToolResult::error(vec![Content::text(value.to_string())]);
    r.structured_content = Some(value);
    r
}

fn to_result<T: Serialize>(r: Result<T, AgentError>) -> CallToolResult {
    match r {
        Ok(v) => ok_result(&v),
        Err(e) => err_result(&e),
    }
}

/// The result, or the typed error body an `isError` result carries (clients check both against
/// the `outputSchema`).
fn output_schema<T: schemars::JsonSchema>() -> JsonObject {
    let mut m = JsonObject::new();
    m.insert("type".into(), "object".into());
    m.insert(
        "description".into(),
        "The tool's result; when isError is true, the error body {error_type, message, refunded_sats?, details?}."
            .into(),
    );
    m.insert(
        "anyOf".into(),
        serde_json::json!([schema_object::<T>(), schema_object::<AgentError>()]),
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_tool_takes_a_cap_and_every_schema_is_an_object() {
        let door_tools = [
            schema_object::<ListProvidersArgs>(),
            schema_object::<SpawnArgs>(),
            schema_object::<TopUpArgs>(),
            schema_object::<StatusArgs>(),
            schema_object::<RunArgs>(),
            schema_object::<EmptyArgs>(),
            schema_object::<FundArgs>(),
            schema_object::<ReceiveArgs>(),
        ];
        for s in &door_tools {
            assert_eq!(s["type"], "object", "{s:?}");
            let text = serde_json::to_string(s).unwrap();
            let props = s.get("properties").and_then(|p| p.as_object());
            for name in props.into_iter().flat_map(|p| p.keys()) {
                assert!(!name.starts_with("per_") && name != "caps", "{text}");
            }
            assert!(!text.contains("uint"), "standard formats only: {text}");
        }
        let spawn = schema_object::<SpawnArgs>();
        let req = spawn["required"].as_array().unwrap();
        assert!(req.contains(&"duration_seconds".into()) && req.contains(&"provider".into()));
    }
}
