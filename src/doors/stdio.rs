//! Stdio framing that survives garbage and serves every MCP revision.
//!
//! rmcp's stdio transport ends the session on a line it cannot decode, and rmcp 1.8 also ends it
//! when the first message is anything but `initialize` (a ping aside). A server that AI
//! assistants and scripts pipe into must not die on one bad line, and the newest official
//! clients open with a `server/discover` probe, so stdin passes through this filter first:
//! - each line is bounded in size and must be one JSON-RPC message rmcp can decode; anything
//!   else is answered here (`-32700` parse error, `-32600` invalid request; a batch gets one
//!   error per request in it, since MCP dropped JSON-RPC batching in 2025-06-18) and dropped;
//! - until the client has chosen a revision, only `initialize` (the handshake revisions
//!   2024-11-05 to 2025-11-25) and pings reach rmcp; a request carrying the 2026-07-28
//!   per-request envelope chooses that revision ([`crate::doors::stateless`]); other requests
//!   get a JSON-RPC error (`-32601` for unknown methods, `-32600` otherwise) and notifications
//!   are ignored, as JSON-RPC says, so a later `initialize` still works;
//! - `server/discover` is answered here in any state.
//!
//! The session goes on after each of these.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmcp::model::{ClientJsonRpcMessage, ClientRequest, JsonRpcMessage, ServerInfo};
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::doors::stateless::{self, Description, Envelope, RpcError};

/// Longest line accepted (bytes). Real MCP requests are a few KB; a Cashu token is under 64 KB.
pub const MAX_LINE: usize = 1024 * 1024;

/// Read one line of at most `max` bytes. Returns `None` at end of input, `Some(Err(len))` for a
/// line that was too long (its bytes are consumed and dropped).
async fn read_bounded_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Option<Result<Vec<u8>, usize>> {
    let mut line = Vec::new();
    let mut dropped = 0usize;
    loop {
        let buf = match r.fill_buf().await {
            Ok(b) => b,
            Err(_) => return None,
        };
        if buf.is_empty() {
            return if line.is_empty() && dropped == 0 {
                None
            } else if dropped > 0 {
                Some(Err(dropped))
            } else {
                Some(Ok(line))
            };
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if dropped > 0 || line.len() + chunk.len() > max {
            dropped += line.len() + chunk.len();
            line.clear();
        } else {
            line.extend_from_slice(chunk);
        }
        let consumed = done.unwrap_or(buf.len());
        r.consume(consumed);
        if done.is_some() {
            return Some(if dropped > 0 { Err(dropped) } else { Ok(line) });
        }
    }
}

fn line_of(v: &Value) -> Vec<u8> {
    let mut l = v.to_string().into_bytes();
    l.push(b'\n');
    l
}

fn error_line(id: Value, code: i64, message: &str) -> Vec<u8> {
    line_of(&RpcError::new(code, message).response(id))
}

/// A request id as JSON-RPC allows it (string or number), if the message has one.
fn request_id(v: &Value) -> Option<Value> {
    v.get("id")
        .filter(|i| i.is_string() || i.is_number())
        .cloned()
}

/// Which revision the client chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Era {
    /// Nothing chosen yet: only `initialize`, pings and enveloped requests go through.
    Undecided,
    /// The client sent `initialize` (2024-11-05 to 2025-11-25): rmcp serves it as it is.
    Handshake,
    /// The client sent a 2026-07-28 enveloped request: the filter opened rmcp's handshake itself.
    Stateless,
}

/// Where a line goes.
#[derive(Debug, PartialEq)]
enum Out {
    Rmcp(Vec<u8>),
    Client(Vec<u8>),
}

/// The id of the `initialize` the filter sends rmcp for a stateless client; its answer is
/// swallowed. Client ids cannot be confused with it: rmcp answers it before reading anything else.
const INTERNAL_INIT_ID: &str = "paygress-stdio-initialize";

/// The filter's state, shared by the input and the output side.
struct Router {
    era: Era,
    description: Description,
    /// Our own `initialize` is in flight.
    internal_init: bool,
    /// Stateless requests forwarded to rmcp, by id (as JSON text), with their method: their
    /// answers get the 2026-07-28 result fields.
    stateless: HashMap<String, String>,
}

impl Router {
    fn new(info: &ServerInfo) -> Self {
        Router {
            era: Era::Undecided,
            description: Description::new(info),
            internal_init: false,
            stateless: HashMap::new(),
        }
    }

    /// One line from the client.
    fn input(&mut self, line: Vec<u8>) -> Vec<Out> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Vec::new();
        }
        let v = match serde_json::from_slice::<Value>(&line) {
            Ok(v) => v,
            Err(_) => return vec![Out::Client(error_line(Value::Null, -32700, "Parse error"))],
        };
        match v {
            Value::Array(items) => batch(&items),
            Value::Object(_) => self.message(line, v),
            _ => vec![Out::Client(error_line(
                Value::Null,
                stateless::INVALID_REQUEST,
                "Invalid request: not a JSON-RPC message",
            ))],
        }
    }

    fn message(&mut self, line: Vec<u8>, v: Value) -> Vec<Out> {
        let id = request_id(&v);
        let decoded = match serde_json::from_value::<ClientJsonRpcMessage>(v.clone()) {
            Ok(m) => m,
            // A malformed notification (no id) gets no answer, per JSON-RPC.
            Err(_) => {
                return id
                    .map(|id| {
                        Out::Client(error_line(
                            id,
                            stateless::INVALID_REQUEST,
                            "Invalid request: not a valid MCP JSON-RPC message",
                        ))
                    })
                    .into_iter()
                    .collect()
            }
        };
        match decoded {
            JsonRpcMessage::Request(r) => {
                let custom = matches!(r.request, ClientRequest::CustomRequest(_));
                self.request(line, v, r.id.into_json_value(), custom)
            }
            JsonRpcMessage::Notification(_) => self.notification(line, &v),
            // Answers to server requests (this server sends none); before a session there is
            // nothing they could answer.
            JsonRpcMessage::Response(_) | JsonRpcMessage::Error(_) => match self.era {
                Era::Undecided => {
                    tracing::debug!("ignored a response before initialize");
                    Vec::new()
                }
                _ => vec![Out::Rmcp(with_newline(line))],
            },
        }
    }

    fn request(&mut self, line: Vec<u8>, v: Value, id: Value, custom: bool) -> Vec<Out> {
        let method = v.get("method").and_then(Value::as_str).unwrap_or_default();
        let reply = |e: RpcError| vec![Out::Client(line_of(&e.response(id.clone())))];
        let envelope = stateless::envelope(&v);
        if method == "server/discover" {
            return match envelope {
                Envelope::Valid => {
                    let r = json!({"jsonrpc": "2.0", "id": id, "result": self.description.discover_result()});
                    vec![Out::Client(line_of(&r))]
                }
                Envelope::Rejected(e) => reply(e),
                Envelope::Absent => reply(RpcError::new(
                    stateless::INVALID_PARAMS,
                    format!(
                        "server/discover is the {} probe: params._meta must carry {} and {}; \
                         handshake clients send initialize",
                        stateless::STATELESS_VERSION,
                        stateless::PROTOCOL_VERSION_KEY,
                        stateless::CLIENT_CAPABILITIES_KEY
                    ),
                )),
            };
        }
        match self.era {
            Era::Undecided if method == "initialize" => {
                self.era = Era::Handshake;
                vec![Out::Rmcp(handshake_initialize(line, v))]
            }
            Era::Undecided => match envelope {
                Envelope::Valid => {
                    self.era = Era::Stateless;
                    self.internal_init = true;
                    let init = Description::internal_initialize(INTERNAL_INIT_ID, &v);
                    let initialized =
                        json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
                    self.stateless.insert(id.to_string(), method.to_string());
                    vec![
                        Out::Rmcp(line_of(&init)),
                        Out::Rmcp(line_of(&initialized)),
                        Out::Rmcp(with_newline(line)),
                    ]
                }
                Envelope::Rejected(e) => reply(e),
                // rmcp answers pings before initialize itself.
                Envelope::Absent if method == "ping" => vec![Out::Rmcp(with_newline(line))],
                Envelope::Absent if custom => reply(RpcError::new(
                    stateless::METHOD_NOT_FOUND,
                    "Method not found",
                )),
                Envelope::Absent => reply(RpcError::new(
                    stateless::INVALID_REQUEST,
                    format!(
                        "Invalid request: no session yet: send initialize first, or use the {} \
                         per-request params._meta envelope",
                        stateless::STATELESS_VERSION
                    ),
                )),
            },
            // A ContextVM gateway (the official `NostrMCPGateway`, `cvmi serve`) carries every
            // Nostr client over this one stdio session, and each of them opens with its own
            // initialize: each is answered, as rmcp answers them, and the session goes on.
            Era::Handshake if method == "initialize" => {
                vec![Out::Rmcp(handshake_initialize(line, v))]
            }
            Era::Handshake => vec![Out::Rmcp(with_newline(line))],
            Era::Stateless if method == "initialize" => reply(stateless::initialize_refused(&v)),
            Era::Stateless => match envelope {
                Envelope::Valid => {
                    self.stateless.insert(id.to_string(), method.to_string());
                    vec![Out::Rmcp(with_newline(line))]
                }
                Envelope::Rejected(e) => reply(e),
                Envelope::Absent => reply(RpcError::new(
                    stateless::INVALID_PARAMS,
                    format!(
                        "this connection serves the {} protocol: every request carries \
                         params._meta with {} and {}",
                        stateless::STATELESS_VERSION,
                        stateless::PROTOCOL_VERSION_KEY,
                        stateless::CLIENT_CAPABILITIES_KEY
                    ),
                )),
            },
        }
    }

    fn notification(&mut self, line: Vec<u8>, v: &Value) -> Vec<Out> {
        let method = v.get("method").and_then(Value::as_str).unwrap_or_default();
        match self.era {
            Era::Undecided => {
                tracing::debug!(method, "ignored a notification before initialize");
                Vec::new()
            }
            Era::Handshake => vec![Out::Rmcp(with_newline(line))],
            // The filter already told rmcp the session is initialized.
            Era::Stateless if method == "notifications/initialized" => Vec::new(),
            Era::Stateless => {
                if method == "notifications/cancelled" {
                    if let Some(rid) = v.get("params").and_then(|p| p.get("requestId")) {
                        self.stateless.remove(&rid.to_string());
                    }
                }
                vec![Out::Rmcp(with_newline(line))]
            }
        }
    }

    /// One line from rmcp: `None` to swallow it.
    fn output(&mut self, line: Vec<u8>) -> Option<Vec<u8>> {
        if !self.internal_init && self.stateless.is_empty() {
            return Some(with_newline(line));
        }
        let Ok(Value::Object(mut v)) = serde_json::from_slice::<Value>(&line) else {
            return Some(with_newline(line));
        };
        if v.contains_key("method") {
            return Some(with_newline(line));
        }
        let Some(id) = v.get("id").cloned() else {
            return Some(with_newline(line));
        };
        if self.internal_init && id.as_str() == Some(INTERNAL_INIT_ID) {
            self.internal_init = false;
            if v.contains_key("error") {
                tracing::error!(
                    "rmcp refused the stateless client's session: {:?}",
                    v.get("error")
                );
            }
            return None;
        }
        let Some(method) = self.stateless.remove(&id.to_string()) else {
            return Some(with_newline(line));
        };
        if let Some(Value::Object(r)) = v.get_mut("result") {
            self.description.finish_result(&method, r);
            return Some(line_of(&Value::Object(v)));
        }
        Some(with_newline(line))
    }
}

fn with_newline(mut l: Vec<u8>) -> Vec<u8> {
    l.push(b'\n');
    l
}

/// An `initialize` as rmcp should see it: a revision without a handshake (2026-07-28, or one
/// unknown here) is answered with the newest handshake revision, as the handshake rules say;
/// rmcp 1.8 would echo 2026-07-28 back.
fn handshake_initialize(line: Vec<u8>, mut v: Value) -> Vec<u8> {
    let asked = v
        .get("params")
        .and_then(|p| p.get("protocolVersion"))
        .and_then(Value::as_str);
    if asked.is_some_and(|a| !stateless::HANDSHAKE_VERSIONS.contains(&a)) {
        v["params"]["protocolVersion"] = Value::String(stateless::LATEST_HANDSHAKE_VERSION.into());
        return line_of(&v);
    }
    with_newline(line)
}

/// A JSON-RPC batch: MCP removed batching in 2025-06-18 and rmcp does not decode it, so each
/// request in it gets an error with its id, notifications get nothing, and an empty batch gets
/// one error (JSON-RPC 2.0, "Batch").
fn batch(items: &[Value]) -> Vec<Out> {
    if items.is_empty() {
        return vec![Out::Client(error_line(
            Value::Null,
            stateless::INVALID_REQUEST,
            "Invalid request: empty batch",
        ))];
    }
    let errors: Vec<Value> = items
        .iter()
        .filter_map(|it| {
            let is_call = it.get("method").is_some_and(Value::is_string);
            match request_id(it) {
                Some(id) if is_call => Some(
                    RpcError::new(
                        stateless::INVALID_REQUEST,
                        "Invalid request: JSON-RPC batches are not supported (MCP removed them \
                         in 2025-06-18): send one message per line",
                    )
                    .response(id),
                ),
                // A notification gets no answer; nor does a response.
                None if is_call => None,
                _ if it.get("result").is_some() || it.get("error").is_some() => None,
                _ => Some(
                    RpcError::new(stateless::INVALID_REQUEST, "Invalid request")
                        .response(Value::Null),
                ),
            }
        })
        .collect();
    if errors.is_empty() {
        Vec::new()
    } else {
        vec![Out::Client(line_of(&Value::Array(errors)))]
    }
}

/// Serve `door` over `input`/`output` (stdin/stdout in production) behind the filter. `info` is
/// the door's own description (what `initialize` answers), for `server/discover`.
pub async fn serve_filtered<I, O, F, Fut>(input: I, mut output: O, info: &ServerInfo, serve: F)
where
    I: AsyncRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(tokio::io::DuplexStream, tokio::io::DuplexStream) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (mut to_rmcp, rmcp_in) = tokio::io::duplex(MAX_LINE * 2);
    let (rmcp_out, from_rmcp) = tokio::io::duplex(MAX_LINE * 2);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let router = Arc::new(Mutex::new(Router::new(info)));

    // Writer: the only task that touches the real output, so lines never interleave.
    let writer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
                break;
            }
        }
    });
    // rmcp's output, line by line, to the writer.
    let tx_out = tx.clone();
    let out_router = router.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(from_rmcp);
        while let Some(Ok(line)) = read_bounded_line(&mut lines, usize::MAX).await {
            let line = match out_router.lock() {
                Ok(mut r) => r.output(line),
                Err(_) => break,
            };
            if let Some(line) = line {
                if tx_out.send(line).await.is_err() {
                    break;
                }
            }
        }
    });
    // Input filter.
    tokio::spawn(async move {
        let mut input = BufReader::new(input);
        'lines: while let Some(line) = read_bounded_line(&mut input, MAX_LINE).await {
            let outs = match line {
                Err(len) => {
                    tracing::warn!(bytes = len, "dropped an oversized stdin line");
                    vec![Out::Client(error_line(
                        Value::Null,
                        stateless::INVALID_REQUEST,
                        "Invalid request: line too long",
                    ))]
                }
                Ok(line) => match router.lock() {
                    Ok(mut r) => r.input(line),
                    Err(_) => break,
                },
            };
            for out in outs {
                let sent = match out {
                    Out::Rmcp(l) => to_rmcp.write_all(&l).await.is_ok(),
                    Out::Client(l) => tx.send(l).await.is_ok(),
                };
                if !sent {
                    break 'lines;
                }
            }
        }
        // End of input: closing `to_rmcp` ends the session.
        let _ = to_rmcp.shutdown().await;
    });
    serve(rmcp_in, rmcp_out).await;
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::new(&ServerInfo::default())
    }

    fn input(r: &mut Router, v: Value) -> Vec<Out> {
        r.input(v.to_string().into_bytes())
    }

    fn json_of(out: &Out) -> Value {
        let (Out::Rmcp(l) | Out::Client(l)) = out;
        serde_json::from_slice(l).unwrap()
    }

    #[test]
    fn a_stateless_session_opens_one_handshake_and_its_answer_is_not_the_clients() {
        let mut r = router();
        let meta = json!({stateless::PROTOCOL_VERSION_KEY: "2026-07-28",
                          stateless::CLIENT_CAPABILITIES_KEY: {}});
        let outs = input(
            &mut r,
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"_meta": meta}}),
        );
        let sent: Vec<Value> = outs.iter().map(json_of).collect();
        assert!(outs.iter().all(|o| matches!(o, Out::Rmcp(_))), "{sent:?}");
        assert_eq!(sent[0]["method"], "initialize");
        assert_eq!(sent[0]["params"]["protocolVersion"], "2025-11-25");
        assert_eq!(sent[1]["method"], "notifications/initialized");
        assert_eq!(sent[2]["id"], 7);
        assert_eq!(r.era, Era::Stateless);
        // rmcp's answer to our initialize is swallowed, the client's gets the new fields, and
        // anything else passes untouched.
        let init = json!({"jsonrpc": "2.0", "id": INTERNAL_INIT_ID, "result": {}});
        assert_eq!(r.output(init.to_string().into_bytes()), None);
        let other = br#"{"jsonrpc":"2.0","id":99,"result":{}}"#.to_vec();
        assert_eq!(r.output(other.clone()), Some(with_newline(other)));
        let answer = json!({"jsonrpc": "2.0", "id": 7, "result": {"tools": []}});
        let out: Value =
            serde_json::from_slice(&r.output(answer.to_string().into_bytes()).unwrap()).unwrap();
        assert_eq!(out["result"]["resultType"], "complete");
        assert!(out["result"]["ttlMs"].is_u64());
        assert!(r.stateless.is_empty() && !r.internal_init);
        // A second answer with the same id is not rewritten again.
        let again = answer.to_string().into_bytes();
        assert_eq!(r.output(again.clone()), Some(with_newline(again)));
    }

    #[test]
    fn a_cancelled_stateless_request_is_forgotten() {
        let mut r = router();
        let meta = json!({stateless::PROTOCOL_VERSION_KEY: "2026-07-28",
                          stateless::CLIENT_CAPABILITIES_KEY: {}});
        input(
            &mut r,
            json!({"jsonrpc": "2.0", "id": "a", "method": "tools/call",
                   "params": {"name": "get_offers", "_meta": meta}}),
        );
        assert_eq!(r.stateless.len(), 1);
        let outs = input(
            &mut r,
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                   "params": {"requestId": "a"}}),
        );
        assert_eq!(outs.len(), 1, "forwarded to rmcp");
        assert!(r.stateless.is_empty());
    }

    #[test]
    fn batches_get_one_error_per_request_and_none_for_notifications() {
        let outs = batch(&[
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 2, "result": {}}),
            json!(5),
        ]);
        let v = json_of(&outs[0]);
        let ids: Vec<Value> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].clone())
            .collect();
        assert_eq!(ids, [json!(1), Value::Null]);
        assert!(batch(&[json!({"jsonrpc": "2.0", "method": "x"})]).is_empty());
        assert_eq!(json_of(&batch(&[])[0])["error"]["code"], -32600);
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let data = format!("short\n{}\nafter\n", "y".repeat(100));
        let mut r = BufReader::new(data.as_bytes());
        assert_eq!(
            read_bounded_line(&mut r, 10).await,
            Some(Ok(b"short".to_vec()))
        );
        assert_eq!(read_bounded_line(&mut r, 10).await, Some(Err(100)));
        assert_eq!(
            read_bounded_line(&mut r, 10).await,
            Some(Ok(b"after".to_vec()))
        );
        assert_eq!(read_bounded_line(&mut r, 10).await, None);
    }
}
