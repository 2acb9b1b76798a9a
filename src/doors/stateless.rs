//! MCP 2026-07-28, the stateless revision, in front of a handshake-era rmcp session.
//!
//! The 2026-07-28 revision drops the `initialize` handshake: every request carries its own
//! envelope in `params._meta` (protocol version, client capabilities, client info), a client may
//! first probe `server/discover`, and results carry `resultType` (and cache hints on list
//! results). The newest official clients (the Python SDK's default `mode="auto"`) open with that
//! probe. rmcp 1.8, which the ContextVM door is tied to through contextvm-sdk 0.2, speaks only
//! the handshake revisions (2024-11-05 to 2025-11-25), so the stdio filter
//! ([`crate::doors::stdio`]) serves the new revision around it with the pieces here: it answers
//! `server/discover` itself, opens one handshake with rmcp on the client's behalf when the first
//! enveloped request comes, forwards the requests (rmcp ignores the extra `_meta` keys and still
//! reads `progressToken` there), and adds the 2026-07-28 result fields to rmcp's answers.
//!
//! Everything is plain JSON over the wire shapes of the spec; nothing here knows the tools.

use rmcp::model::ServerInfo;
use serde_json::{json, Map, Value};

/// The revision served with the per-request envelope.
pub const STATELESS_VERSION: &str = "2026-07-28";
/// The revisions served with the `initialize` handshake (rmcp 1.8's own), oldest first.
pub const HANDSHAKE_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The handshake revision rmcp is opened with on a stateless client's behalf, and the answer to
/// an `initialize` proposing a revision that has no handshake.
pub const LATEST_HANDSHAKE_VERSION: &str = "2025-11-25";

pub const PROTOCOL_VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";
pub const CLIENT_CAPABILITIES_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
pub const CLIENT_INFO_KEY: &str = "io.modelcontextprotocol/clientInfo";
pub const SERVER_INFO_KEY: &str = "io.modelcontextprotocol/serverInfo";

/// JSON-RPC error codes used here.
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
/// The 2026-07-28 `UnsupportedProtocolVersionError`.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// How long a client may cache the tool list and the discover result (ms). The tools of a
/// running server never change (no `listChanged`), so any value is true; this one bounds how
/// stale a client's view can be after an upgrade.
pub const CACHE_TTL_MS: u64 = 300_000;

/// A JSON-RPC error to send back: code, message, optional data.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The full response line for request `id` (`null` when there is none).
    pub fn response(&self, id: Value) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.data {
            error["data"] = d.clone();
        }
        json!({"jsonrpc": "2.0", "id": id, "error": error})
    }

    /// `-32022`, naming what this server serves (the shape the 2026-07-28 schema gives).
    pub fn unsupported_version(requested: &Value, supported: &[&str]) -> Self {
        RpcError {
            code: UNSUPPORTED_PROTOCOL_VERSION,
            message: "Unsupported protocol version".into(),
            data: Some(json!({"supported": supported, "requested": requested})),
        }
    }
}

/// Every revision this server speaks, oldest first.
pub fn all_versions() -> Vec<&'static str> {
    let mut v = HANDSHAKE_VERSIONS.to_vec();
    v.push(STATELESS_VERSION);
    v
}

/// What a message's `params._meta` says about the revision.
#[derive(Debug, Clone, PartialEq)]
pub enum Envelope {
    /// No `io.modelcontextprotocol/protocolVersion` key: a handshake-era message (legacy
    /// requests carry `_meta` too, for `progressToken`, so `_meta` alone is no evidence).
    Absent,
    /// A complete envelope at the revision served here.
    Valid,
    /// An envelope that is incomplete, malformed or at another revision.
    Rejected(RpcError),
}

/// Check a request's envelope as the 2026-07-28 "per-request protocol fields" rules say: the
/// protocol version and the client capabilities are required, the version must be served.
pub fn envelope(msg: &Value) -> Envelope {
    let Some(meta) = msg.get("params").and_then(|p| p.get("_meta")) else {
        return Envelope::Absent;
    };
    let Some(meta) = meta.as_object() else {
        return Envelope::Absent;
    };
    let Some(version) = meta.get(PROTOCOL_VERSION_KEY) else {
        return Envelope::Absent;
    };
    let Some(v) = version.as_str() else {
        return Envelope::Rejected(RpcError::new(
            INVALID_PARAMS,
            format!("params._meta[{PROTOCOL_VERSION_KEY:?}] must be a string"),
        ));
    };
    if !meta
        .get(CLIENT_CAPABILITIES_KEY)
        .is_some_and(Value::is_object)
    {
        return Envelope::Rejected(RpcError::new(
            INVALID_PARAMS,
            format!(
                "params._meta is missing the required envelope key {CLIENT_CAPABILITIES_KEY} (an object)"
            ),
        ));
    }
    if v != STATELESS_VERSION {
        return Envelope::Rejected(RpcError::unsupported_version(version, &all_versions()));
    }
    Envelope::Valid
}

/// What this server is, as both eras describe it.
#[derive(Debug, Clone)]
pub struct Description {
    capabilities: Value,
    server_info: Value,
    instructions: Option<String>,
}

impl Description {
    pub fn new(info: &ServerInfo) -> Self {
        Description {
            capabilities: serde_json::to_value(&info.capabilities).unwrap_or_else(|_| json!({})),
            server_info: serde_json::to_value(&info.server_info).unwrap_or_else(|_| json!({})),
            instructions: info.instructions.clone(),
        }
    }

    /// The `server/discover` result.
    pub fn discover_result(&self) -> Value {
        let mut r = json!({
            "supportedVersions": [STATELESS_VERSION],
            "capabilities": self.capabilities,
            "resultType": "complete",
            "ttlMs": CACHE_TTL_MS,
            "cacheScope": "public",
            "_meta": {SERVER_INFO_KEY: self.server_info},
        });
        if let Some(i) = &self.instructions {
            r["instructions"] = Value::String(i.clone());
        }
        r
    }

    /// The `initialize` the filter sends rmcp on a stateless client's behalf, with that client's
    /// name from its envelope (rmcp logs it; capabilities do not matter: this server never sends
    /// the client requests, which the 2026-07-28 revision forbids anyway).
    pub fn internal_initialize(id: &str, first: &Value) -> Value {
        let client_info = first
            .get("params")
            .and_then(|p| p.get("_meta"))
            .and_then(|m| m.get(CLIENT_INFO_KEY))
            .filter(|c| c.get("name").is_some_and(Value::is_string))
            .cloned()
            .unwrap_or_else(|| json!({"name": "mcp-2026-07-28-client", "version": "0"}));
        json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": "initialize",
            "params": {
                "protocolVersion": LATEST_HANDSHAKE_VERSION,
                "capabilities": {},
                "clientInfo": client_info,
            }
        })
    }

    /// Give rmcp's answer to a stateless request of `method` the 2026-07-28 result fields:
    /// `resultType`, the `serverInfo` stamp and, on list results, cache hints.
    pub fn finish_result(&self, method: &str, result: &mut Map<String, Value>) {
        result
            .entry("resultType")
            .or_insert_with(|| Value::String("complete".into()));
        if method.ends_with("/list") || method == "resources/read" {
            result.entry("ttlMs").or_insert_with(|| json!(CACHE_TTL_MS));
            result
                .entry("cacheScope")
                .or_insert_with(|| Value::String("public".into()));
        }
        let meta = result
            .entry("_meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(m) = meta.as_object_mut() {
            m.entry(SERVER_INFO_KEY)
                .or_insert_with(|| self.server_info.clone());
        }
    }
}

/// The answer to an `initialize` once the connection serves the stateless revision.
pub fn initialize_refused(msg: &Value) -> RpcError {
    let requested = msg
        .get("params")
        .and_then(|p| p.get("protocolVersion"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut e = RpcError::unsupported_version(&requested, &[STATELESS_VERSION]);
    e.message = "this connection serves the 2026-07-28 protocol (per-request _meta); \
                 the initialize handshake is not accepted on it"
        .into();
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(meta: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}})
    }

    #[test]
    fn envelopes_are_classified_as_the_spec_says() {
        assert_eq!(
            envelope(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})),
            Envelope::Absent
        );
        assert_eq!(
            envelope(&req(json!({"progressToken": 3}))),
            Envelope::Absent
        );
        assert_eq!(
            envelope(&req(
                json!({PROTOCOL_VERSION_KEY: "2026-07-28", CLIENT_CAPABILITIES_KEY: {}})
            )),
            Envelope::Valid
        );
        let Envelope::Rejected(e) = envelope(&req(json!({PROTOCOL_VERSION_KEY: "2026-07-28"})))
        else {
            panic!("missing capabilities must be rejected")
        };
        assert_eq!(e.code, INVALID_PARAMS);
        let Envelope::Rejected(e) = envelope(&req(
            json!({PROTOCOL_VERSION_KEY: "2099-01-01", CLIENT_CAPABILITIES_KEY: {}}),
        )) else {
            panic!("an unknown revision must be rejected")
        };
        assert_eq!(e.code, UNSUPPORTED_PROTOCOL_VERSION);
        let data = e.data.unwrap();
        assert_eq!(data["requested"], "2099-01-01");
        assert_eq!(data["supported"].as_array().unwrap().len(), 5);
        let Envelope::Rejected(e) = envelope(&req(
            json!({PROTOCOL_VERSION_KEY: 7, CLIENT_CAPABILITIES_KEY: {}}),
        )) else {
            panic!("a non-string version must be rejected")
        };
        assert_eq!(e.code, INVALID_PARAMS);
    }

    #[test]
    fn results_get_the_new_fields_without_losing_their_own() {
        let d = Description {
            capabilities: json!({"tools": {}}),
            server_info: json!({"name": "s", "version": "1"}),
            instructions: Some("hi".into()),
        };
        let mut r = json!({"tools": [], "_meta": {"x": 1}})
            .as_object()
            .unwrap()
            .clone();
        d.finish_result("tools/list", &mut r);
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["ttlMs"], CACHE_TTL_MS);
        assert_eq!(r["cacheScope"], "public");
        assert_eq!(r["_meta"]["x"], 1);
        assert_eq!(r["_meta"][SERVER_INFO_KEY]["name"], "s");
        let mut c = json!({"content": [], "resultType": "input_required"})
            .as_object()
            .unwrap()
            .clone();
        d.finish_result("tools/call", &mut c);
        assert_eq!(c["resultType"], "input_required", "kept");
        assert!(c.get("ttlMs").is_none(), "no cache hint on a call");
        let disc = d.discover_result();
        assert_eq!(disc["supportedVersions"], json!(["2026-07-28"]));
        assert_eq!(disc["instructions"], "hi");
    }
}
