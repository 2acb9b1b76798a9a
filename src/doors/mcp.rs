//! The MCP door: `get_offers`, `spawn_pod`, `topup_pod`, `get_pod_status` as MCP tools.
//!
//! A thin adapter. It turns tool arguments into core requests and core results into tool
//! results; pricing, validation and payment stay in [`crate::provider`]. The same handler serves
//! stdio and ContextVM (MCP over Nostr): only how the caller is identified differs, which is why
//! the handler takes an [`Identify`] function.
//!
//! Wire behaviour (DESIGN.md, "Wire contracts"):
//! - Results carry `structuredContent` matching the tool's declared `outputSchema`, and the same
//!   JSON as text for clients that read only text.
//! - Input and payment problems are tool results with `isError: true` and the typed body
//!   `{error_type, message, details?, refund_token?}`; unknown tools and malformed JSON-RPC stay
//!   JSON-RPC errors (rmcp answers the latter itself).
//! - `spawn_pod` sends `notifications/progress` (validated → paid → provisioning → ready) when the
//!   client asked with a progress token (not over ContextVM, see [`McpDoor::without_progress`]),
//!   and passes the request's cancellation to the core, which rolls back and refunds.
//! - A caller known by its Nostr key (ContextVM) has at most `provider.max_concurrent_per_sender`
//!   tool calls in flight; one more is refused with `resource_unavailable`, token untouched.

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

use super::sender_cap::SenderCap;
use crate::api::{
    Offers, PodStatus, SpawnRequest, SpawnResult, SpawnStage, StatusRequest, TopUpRequest,
    TopUpResult,
};
use crate::error::ProviderError;
use crate::provider::{Caller, Progress, Provider};

/// How a door learns who is calling from a request's context (stdio: always the local client;
/// ContextVM: the client's Nostr pubkey).
pub type Identify = Arc<dyn Fn(&RequestContext<RoleServer>) -> Caller + Send + Sync>;

/// An extra tool a mode adds (the demo's `get_demo_token`).
#[async_trait::async_trait]
pub trait ExtraTool: Send + Sync {
    fn tool(&self) -> Tool;
    async fn call(&self, args: JsonObject) -> Result<serde_json::Value, ProviderError>;
}

#[derive(Clone)]
pub struct McpDoor {
    provider: Arc<Provider>,
    identify: Identify,
    extra: Vec<Arc<dyn ExtraTool>>,
    /// Per-sender cap on requests in flight, for callers known by a Nostr key (ContextVM).
    senders: SenderCap,
    /// Whether `spawn_pod` sends progress notifications.
    progress: bool,
}

pub const INSTRUCTIONS: &str = "Paygress sells SSH-accessible compute (containers/VMs) for Cashu ecash, no account needed. \
1) Call get_offers: it lists tiers (pod_specs) with rate_msats_per_sec, the minimum duration, accepted mints and images. \
2) Get a Cashu token (cashuA…/cashuB…, unit sat) from one of the whitelisted_mints, e.g. from your Cashu wallet. \
Price: duration_seconds = floor(token_value_msats / rate_msats_per_sec); 1 sat = 1000 msat; the token must buy at least minimum_duration_seconds. \
3) Call spawn_pod with the token, a pod_spec_id and an ssh_username (optionally ssh_password or ssh_public_key); the result has the ssh command, \
password and expiry. 4) Before expires_at, call topup_pod with another token to extend; get_pod_status shows the time left. \
If a paid spawn fails, the error carries refund_token: a token for the full amount received; keep it. \
Repeating a request with the same token returns the first answer instead of charging twice.";

impl McpDoor {
    /// The door for a local (stdio) client.
    pub fn local(provider: Arc<Provider>) -> Self {
        McpDoor {
            senders: SenderCap::new(provider.config().provider.max_concurrent_per_sender),
            provider,
            identify: Arc::new(|_| Caller::Local),
            extra: Vec::new(),
            progress: true,
        }
    }

    pub fn with_identify(provider: Arc<Provider>, identify: Identify) -> Self {
        McpDoor {
            senders: SenderCap::new(provider.config().provider.max_concurrent_per_sender),
            provider,
            identify,
            extra: Vec::new(),
            progress: true,
        }
    }

    /// Identify callers another way (ContextVM: the client's Nostr pubkey).
    pub fn identified_by(mut self, identify: Identify) -> Self {
        self.identify = identify;
        self
    }

    /// Send no progress notifications. For transports that cannot address a notification to
    /// the client whose request it belongs to: contextvm-sdk 0.2 broadcasts every server
    /// notification to all initialised clients, so one buyer's progress would tell every other
    /// connected client that someone is buying, and when (MCP also forbids progress for a token
    /// a client did not send). Progress is optional in MCP; the spawn's result carries it all.
    pub fn without_progress(mut self) -> Self {
        self.progress = false;
        self
    }

    pub fn with_extra_tool(mut self, t: Arc<dyn ExtraTool>) -> Self {
        self.extra.push(t);
        self
    }

    /// The tool definitions, with schemas derived from the wire types.
    pub fn tools(&self) -> Vec<Tool> {
        let mut tools = vec![
            Tool::new(
                "get_offers",
                "List what this provider sells: tiers (pod_specs) with cpu, memory and price per second, \
                 minimum duration, accepted Cashu mints, allowed images, backend and free capacity. Call this first.",
                Arc::new(empty_object_schema()),
            )
            .with_title("Get offers")
            .with_raw_output_schema(Arc::new(output_schema::<Offers>()))
            .with_annotations(ToolAnnotations::with_title("Get offers").read_only(true).open_world(false)),
            Tool::new(
                "spawn_pod",
                "Pay with a Cashu token and get an SSH-accessible pod for exactly the time paid \
                 (floor(token msats / tier rate) seconds, at least the minimum duration). Returns host, port, \
                 username, password, expiry and a ready-to-paste ssh command. On failure after payment the \
                 error carries a refund_token worth the full amount received.",
                Arc::new(schema_object::<SpawnRequest>()),
            )
            .with_title("Spawn pod")
            .with_raw_output_schema(Arc::new(output_schema::<SpawnResult>()))
            .with_annotations(
                ToolAnnotations::with_title("Spawn pod")
                    .read_only(false)
                    .destructive(false)
                    .idempotent(false)
                    .open_world(true),
            ),
            Tool::new(
                "topup_pod",
                "Extend a pod's paid time with another Cashu token: adds floor(token msats / tier rate) seconds. \
                 A pod that expired within the grace period is resumed. Anyone may top up any pod.",
                Arc::new(schema_object::<TopUpRequest>()),
            )
            .with_title("Top up pod")
            .with_raw_output_schema(Arc::new(output_schema::<TopUpResult>()))
            .with_annotations(
                ToolAnnotations::with_title("Top up pod")
                    .read_only(false)
                    .destructive(false)
                    .idempotent(false)
                    .open_world(true),
            ),
            Tool::new(
                "get_pod_status",
                "Show a pod's state, expiry and seconds remaining. Login details are included only for the pod's owner.",
                Arc::new(schema_object::<StatusRequest>()),
            )
            .with_title("Get pod status")
            .with_raw_output_schema(Arc::new(output_schema::<PodStatus>()))
            .with_annotations(ToolAnnotations::with_title("Get pod status").read_only(true).open_world(false)),
        ];
        tools.extend(self.extra.iter().map(|t| t.tool()));
        tools
    }

    async fn dispatch(
        &self,
        name: &str,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let caller = (self.identify)(&ctx);
        let p = &self.provider;
        // A caller known by its Nostr key has a cap on requests in flight; over it, the request
        // is refused before the core sees it (nothing paid, token untouched).
        let _admitted = match (&caller, name) {
            (Caller::Nostr(pk), "spawn_pod" | "topup_pod" | "get_pod_status") => {
                match self.senders.admit(pk) {
                    Ok(a) => Some(a),
                    Err(e) => return Ok(err_result(&e)),
                }
            }
            _ => None,
        };
        match name {
            "get_offers" => Ok(ok_result(&p.offers())),
            "spawn_pod" => {
                let req: SpawnRequest = match parse_args(name, args) {
                    Ok(r) => r,
                    Err(e) => return Ok(err_result(&e)),
                };
                let reporter = self.progress.then(|| progress_reporter(&ctx)).flatten();
                let (progress, flush) = match reporter {
                    Some((progress, flush)) => (Some(progress), Some(flush)),
                    None => (None, None),
                };
                let result = p.spawn(req, caller, progress, ctx.ct.clone()).await;
                // Clients stop listening for a request's progress once its result arrives, so
                // every notification is written before the result.
                if let Some(flush) = flush {
                    flush.wait().await;
                }
                Ok(to_result(result))
            }
            "topup_pod" => match parse_args::<TopUpRequest>(name, args) {
                Ok(r) => Ok(to_result(p.top_up(r).await)),
                Err(e) => Ok(err_result(&e)),
            },
            "get_pod_status" => match parse_args::<StatusRequest>(name, args) {
                Ok(r) => Ok(to_result(p.status(r, &caller).await)),
                Err(e) => Ok(err_result(&e)),
            },
            other => {
                if let Some(t) = self.extra.iter().find(|t| t.tool().name == other) {
                    return Ok(match t.call(args).await {
                        Ok(v) => ok_result(&v),
                        Err(e) => err_result(&e),
                    });
                }
                let shown: String = other.chars().take(64).collect();
                Err(McpError::invalid_params(
                    format!("unknown tool: {shown}"),
                    None,
                ))
            }
        }
    }
}

impl ServerHandler for McpDoor {
    fn get_info(&self) -> ServerInfo {
        ServerInfo::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("paygress-mcp-server", env!("CARGO_PKG_VERSION"))
                    .with_title("Paygress: compute for Cashu"),
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

/// Forward core progress to the client, in order, when it sent a progress token.
fn progress_reporter(ctx: &RequestContext<RoleServer>) -> Option<(Progress, ProgressFlush)> {
    let token = ctx.meta.get_progress_token()?;
    let peer = ctx.peer.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Forward>();
    tokio::spawn(async move {
        let mut open = true;
        while let Some(msg) = rx.recv().await {
            match msg {
                Forward::Stage(stage) if open => {
                    let p = ProgressNotificationParam::new(token.clone(), f64::from(stage.step()))
                        .with_total(f64::from(SpawnStage::TOTAL))
                        .with_message(stage.message());
                    open = peer.notify_progress(p).await.is_ok();
                }
                Forward::Stage(_) => {}
                Forward::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    });
    let flush = ProgressFlush(tx.clone());
    Some((
        Arc::new(move |stage| {
            let _ = tx.send(Forward::Stage(stage));
        }),
        flush,
    ))
}

enum Forward {
    Stage(SpawnStage),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Waits until every progress notification reported so far has been handed to the transport.
struct ProgressFlush(tokio::sync::mpsc::UnboundedSender<Forward>);

impl ProgressFlush {
    async fn wait(self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.0.send(Forward::Flush(done)).is_ok() {
            // Bounded: a stuck transport must not hold the result back for long.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), wait).await;
        }
    }
}

fn parse_args<T: DeserializeOwned>(tool: &str, args: JsonObject) -> Result<T, ProviderError> {
    serde_json::from_value(serde_json::Value::Object(args)).map_err(|e| {
        ProviderError::invalid_request(format!(
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

fn err_result(e: &ProviderError) -> CallToolResult {
    let value = serde_json::to_value(e).unwrap_or(serde_json::Value::Null);
    let mut r = CallToolResult::error(vec![Content::text(value.to_string())]);
    r.structured_content = Some(value);
    r
}

fn to_result<T: Serialize>(r: Result<T, ProviderError>) -> CallToolResult {
    match r {
        Ok(v) => ok_result(&v),
        Err(e) => err_result(&e),
    }
}

fn empty_object_schema() -> JsonObject {
    let mut m = JsonObject::new();
    m.insert("type".into(), "object".into());
    m.insert("properties".into(), serde_json::json!({}));
    m.insert("additionalProperties".into(), false.into());
    m
}

/// The formats JSON Schema 2020-12 defines (Validation, section 7.3). schemars also writes the
/// Rust integer type as a format (`"uint64"`, `"uint32"`, ...), which no standard validator
/// knows: the official TypeScript SDK's (ajv) warns "unknown format ignored" for each one.
pub const STANDARD_FORMATS: [&str; 19] = [
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Drop a non-standard `format`, keeping what it meant as standard bounds: schemars already
/// writes `minimum: 0` for unsigned types and both bounds for 8- and 16-bit ones; 32-bit ones
/// get theirs here (64-bit bounds are beyond what JSON numbers carry exactly, so none).
fn standard_formats_only(schema: &mut schemars::Schema) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    let Some(format) = obj
        .get("format")
        .and_then(|f| f.as_str())
        .map(str::to_owned)
    else {
        return;
    };
    if STANDARD_FORMATS.contains(&format.as_str()) {
        return;
    }
    obj.remove("format");
    let bounds: Option<(i64, i64)> = match format.as_str() {
        "uint32" => Some((0, i64::from(u32::MAX))),
        "int32" => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
        _ => None,
    };
    if let Some((min, max)) = bounds {
        obj.entry("minimum").or_insert(min.into());
        obj.entry("maximum").or_insert(max.into());
    }
}

/// A tool's `outputSchema`: its result, or the typed error body (`ProviderError`) an `isError`
/// result carries. Both are `structuredContent`, and the official TypeScript SDK (1.32) checks
/// an error result's `structuredContent` against `outputSchema` too, so without the error branch
/// every typed error (a refund token among them) reaches its callers as a validation failure.
pub fn output_schema<T: schemars::JsonSchema>() -> JsonObject {
    let mut m = JsonObject::new();
    m.insert("type".into(), "object".into());
    m.insert(
        "description".into(),
        "The tool's result; when isError is true, the error body {error_type, message, details?, refund_token?}."
            .into(),
    );
    m.insert(
        "anyOf".into(),
        serde_json::json!([schema_object::<T>(), schema_object::<ProviderError>()]),
    );
    m
}

/// The JSON schema of `T` as an object, with definitions inlined where schemars can and only
/// standard formats, so validators accept it silently.
pub fn schema_object<T: schemars::JsonSchema>() -> JsonObject {
    let settings = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| {
            s.inline_subschemas = true;
        })
        .with_transform(schemars::transform::RecursiveTransform(
            standard_formats_only,
        ));
    let schema = settings.into_generator().into_root_schema_for::<T>();
    match serde_json::to_value(schema) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.remove("$schema");
            m
        }
        _ => empty_object_schema(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_objects_with_required_fields() {
        let s = schema_object::<SpawnRequest>();
        assert_eq!(s["type"], "object");
        let req = s["required"].as_array().unwrap();
        assert!(req.contains(&"cashu_token".into()) && req.contains(&"ssh_username".into()));
        assert!(s["properties"]["cashu_token"]["description"]
            .as_str()
            .unwrap()
            .contains("Cashu"));
        let o = schema_object::<Offers>();
        assert!(o.get("$defs").is_none(), "inlined: {o:?}");
    }

    /// Every `format` left in any schema is one JSON Schema defines, and the integer bounds the
    /// Rust types imply are still there.
    #[test]
    fn schemas_use_only_standard_formats_and_keep_integer_bounds() {
        fn formats(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(f) = m.get("format").and_then(|f| f.as_str()) {
                        out.push(f.to_string());
                    }
                    m.iter()
                        .filter(|(k, _)| k.as_str() != "format")
                        .for_each(|(_, v)| formats(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| formats(v, out)),
                _ => {}
            }
        }
        let all = [
            schema_object::<Offers>(),
            schema_object::<SpawnRequest>(),
            schema_object::<SpawnResult>(),
            schema_object::<TopUpRequest>(),
            schema_object::<TopUpResult>(),
            schema_object::<StatusRequest>(),
            schema_object::<PodStatus>(),
        ];
        let mut found = Vec::new();
        for s in &all {
            formats(&serde_json::Value::Object(s.clone()), &mut found);
        }
        assert!(
            found.iter().all(|f| STANDARD_FORMATS.contains(&f.as_str())),
            "{found:?}"
        );
        let spawn = schema_object::<SpawnResult>();
        let port = &spawn["properties"]["node_port"];
        assert_eq!(
            (port["minimum"].clone(), port["maximum"].clone()),
            (0.into(), 65535.into())
        );
        let paid = &spawn["properties"]["paid_msats"];
        assert_eq!(
            (paid["type"].clone(), paid["minimum"].clone()),
            ("integer".into(), 0.into())
        );
        let cpu = &spawn["properties"]["cpu_millicores"];
        assert_eq!(cpu["maximum"], u64::from(u32::MAX));
    }

    #[test]
    fn argument_errors_never_echo_values() {
        let args = serde_json::json!({"cashu_token": 12345, "ssh_username": "x"});
        let e =
            parse_args::<SpawnRequest>("spawn_pod", args.as_object().unwrap().clone()).unwrap_err();
        assert!(!e.message.contains("12345"), "{}", e.message);
        let args = serde_json::json!({"cashu_token": "cashuBsecret", "ssh_username": ["x"]});
        let e =
            parse_args::<SpawnRequest>("spawn_pod", args.as_object().unwrap().clone()).unwrap_err();
        assert!(!e.message.contains("secret"), "{}", e.message);
        let args = serde_json::json!({"ssh_username": "x"});
        let e =
            parse_args::<SpawnRequest>("spawn_pod", args.as_object().unwrap().clone()).unwrap_err();
        assert!(e.message.contains("cashu_token"), "{}", e.message);
    }
}
