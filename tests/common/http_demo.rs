//! The real `paygress-mcp-server --demo` serving only its HTTP door on a free 127.0.0.1 port,
//! on the sandbox backend, with its embedded test mint. Stopped with SIGINT when dropped, so the
//! demo removes the pods it sold.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct HttpDemo {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The demo mint's URL.
    pub mint: String,
    /// The server's npub.
    pub npub: String,
    /// The embedded relay's URL, when it serves ContextVM too.
    pub relay: Option<String>,
    log: Arc<Mutex<String>>,
}

impl HttpDemo {
    pub fn start() -> HttpDemo {
        HttpDemo::start_with("none")
    }

    /// The demo serving ContextVM on its embedded relay besides HTTP.
    pub fn start_contextvm() -> HttpDemo {
        HttpDemo::start_with("contextvm")
    }

    fn start_with(transport: &str) -> HttpDemo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_paygress-mcp-server"))
            .args([
                "--demo",
                "--demo-backend",
                "sandbox",
                "--transport",
                transport,
            ])
            .args(["--http", "127.0.0.1:0", "--http-rate-limit", "0"])
            .env_remove("PAYGRESS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("paygress-mcp-server");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let start = Instant::now();
        loop {
            let text = log.lock().unwrap().clone();
            let find = |prefix: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
            };
            let relay = find("paygress: embedded relay at ");
            let cvm_ready = transport != "contextvm" || text.contains("paygress: ContextVM server");
            if let (Some(base), Some(mint), Some(npub), true) = (
                find("paygress: HTTP door at "),
                find("demo: mint "),
                find("demo: server "),
                cvm_ready,
            ) {
                return HttpDemo {
                    child,
                    base,
                    mint,
                    npub,
                    relay,
                    log,
                };
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("the demo exited ({st}): {text}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the demo did not open its HTTP door: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for HttpDemo {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
