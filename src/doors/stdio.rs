//! Stdio framing that survives garbage.
//!
//! rmcp's stdio transport ends the session on a line it cannot decode. A server that AI
//! assistants and scripts pipe into must not die on one bad line, so stdin passes through this
//! filter first: each line is bounded in size and checked to be a JSON-RPC message rmcp can
//! decode; anything else is answered here with a JSON-RPC error (`-32700` parse error, `-32600`
//! invalid request) and dropped, and the session goes on.

use rmcp::model::ClientJsonRpcMessage;
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

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

fn error_line(id: Value, code: i64, message: &str) -> Vec<u8> {
    let mut v = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        .to_string()
        .into_bytes();
    v.push(b'\n');
    v
}

/// Serve `door` over `input`/`output` (stdin/stdout in production) behind the filter.
pub async fn serve_filtered<I, O, F, Fut>(input: I, mut output: O, serve: F)
where
    I: AsyncRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(tokio::io::DuplexStream, tokio::io::DuplexStream) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (mut to_rmcp, rmcp_in) = tokio::io::duplex(MAX_LINE * 2);
    let (rmcp_out, from_rmcp) = tokio::io::duplex(MAX_LINE * 2);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);

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
    tokio::spawn(async move {
        let mut lines = BufReader::new(from_rmcp);
        while let Some(Ok(mut line)) = read_bounded_line(&mut lines, usize::MAX).await {
            line.push(b'\n');
            if tx_out.send(line).await.is_err() {
                break;
            }
        }
    });
    // Input filter.
    tokio::spawn(async move {
        let mut input = BufReader::new(input);
        while let Some(line) = read_bounded_line(&mut input, MAX_LINE).await {
            let reply = match line {
                Err(len) => {
                    tracing::warn!(bytes = len, "dropped an oversized stdin line");
                    Some(error_line(
                        Value::Null,
                        -32600,
                        "Invalid request: line too long",
                    ))
                }
                Ok(line) if line.iter().all(u8::is_ascii_whitespace) => None,
                Ok(line) => match serde_json::from_slice::<Value>(&line) {
                    Err(_) => Some(error_line(Value::Null, -32700, "Parse error")),
                    Ok(v) => match serde_json::from_value::<ClientJsonRpcMessage>(v.clone()) {
                        Ok(_) => {
                            let mut l = line;
                            l.push(b'\n');
                            if to_rmcp.write_all(&l).await.is_err() {
                                break;
                            }
                            None
                        }
                        Err(_) => {
                            let id = v
                                .get("id")
                                .cloned()
                                .filter(|i| i.is_string() || i.is_number());
                            // A malformed notification (no id) gets no answer, per JSON-RPC.
                            id.map(|id| {
                                error_line(
                                    id,
                                    -32600,
                                    "Invalid request: not a valid MCP JSON-RPC message",
                                )
                            })
                        }
                    },
                },
            };
            if let Some(r) = reply {
                if tx.send(r).await.is_err() {
                    break;
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
