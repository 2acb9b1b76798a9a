//! What serving the 2026-07-28 revision in the stdio filter costs per request: the same
//! requests over two sessions of the real `paygress-mcp-server --demo` binary, one opened with
//! the `initialize` handshake (the filter passes lines to rmcp untouched) and one speaking the
//! stateless revision (the filter checks each request's envelope and rewrites each result with
//! the revision's fields), interleaved so machine noise hits both alike. Prints the medians and
//! 90th percentiles per method and the stateless/handshake ratio.
//!
//! Run: `cargo bench --bench stdio_revisions -- [N]` (N requests per method and session,
//! default 300).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ENVELOPE: &str = r#"{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"bench","version":"1"}}"#;

struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stateless: bool,
    next_id: u64,
    _home: tempfile::TempDir,
}

impl Session {
    fn start(stateless: bool) -> Session {
        let home = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_paygress-mcp-server"))
            .args(["--demo", "--demo-backend", "sandbox"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start paygress-mcp-server");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut s = Session {
            child,
            stdin,
            stdout,
            stateless,
            next_id: 0,
            _home: home,
        };
        if stateless {
            let d = s.request("server/discover", json!({}));
            assert!(d["result"]["supportedVersions"].is_array(), "{d}");
        } else {
            let init = s.request(
                "initialize",
                json!({"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "bench", "version": "1"}}),
            );
            assert!(init["result"]["protocolVersion"].is_string(), "{init}");
            s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        }
        s
    }

    fn send(&mut self, v: &Value) {
        let mut line = v.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).expect("write");
        self.stdin.flush().expect("flush");
    }

    /// One request, answered; the answer.
    fn request(&mut self, method: &str, mut params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        if self.stateless {
            params["_meta"] = serde_json::from_str(ENVELOPE).expect("envelope");
        }
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.stdout.read_line(&mut line).expect("read") > 0,
                "server closed"
            );
            let v: Value = serde_json::from_str(&line).expect("json");
            if v["id"] == id {
                return v;
            }
        }
    }

    fn timed(&mut self, method: &str, params: &Value) -> Duration {
        let t = Instant::now();
        let r = self.request(method, params.clone());
        let d = t.elapsed();
        assert!(r.get("result").is_some(), "{r}");
        d
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    let mut handshake = Session::start(false);
    let mut stateless = Session::start(true);
    let calls = [
        ("tools/list", json!({})),
        ("tools/call", json!({"name": "get_offers", "arguments": {}})),
    ];
    println!("stdio round trip per request, {n} requests per method and session (interleaved)");
    println!(
        "| request | handshake median µs | stateless median µs | ratio | handshake p90 µs | stateless p90 µs |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (method, params) in &calls {
        // Warm up both.
        for _ in 0..20 {
            handshake.timed(method, params);
            stateless.timed(method, params);
        }
        let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            if i % 2 == 0 {
                a.push(handshake.timed(method, params));
                b.push(stateless.timed(method, params));
            } else {
                b.push(stateless.timed(method, params));
                a.push(handshake.timed(method, params));
            }
        }
        let (ma, mb) = (quantile(&mut a, 0.5), quantile(&mut b, 0.5));
        let (pa, pb) = (quantile(&mut a, 0.9), quantile(&mut b, 0.9));
        let label = if *method == "tools/call" {
            "tools/call get_offers"
        } else {
            method
        };
        println!(
            "| {label} | {:.0} | {:.0} | {:.2}x | {:.0} | {:.0} |",
            us(ma),
            us(mb),
            us(mb) / us(ma),
            us(pa),
            us(pb)
        );
    }
}
