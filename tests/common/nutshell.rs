//! Nutshell, the Python reference mint (PyPI `cashu`, pinned in tools/e2e/nutshell/requirements.txt and
//! installed into tools/e2e/.venv-nutshell by tools/test.sh), as a child process on 127.0.0.1 with its
//! fake Lightning backend: an independent implementation to check the money path against.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nutshell {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nutshell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/e2e/.venv-nutshell/bin/mint");
    assert!(
        p.exists(),
        "Nutshell is not installed: tools/test.sh installs tools/e2e/nutshell/requirements.txt into tools/e2e/.venv-nutshell"
    );
    p
}

impl Nutshell {
    pub async fn start() -> Nutshell {
        let bin = binary();
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let key: [u8; 16] = rand::random();
        let child = Command::new(bin)
            .current_dir(dir.path())
            .env("MINT_BACKEND_BOLT11_SAT", "FakeWallet")
            .env("FAKEWALLET_BRR", "true")
            .env("MINT_LISTEN_HOST", "127.0.0.1")
            .env("MINT_LISTEN_PORT", port.to_string())
            .env("MINT_PRIVATE_KEY", hex::encode(key))
            .env("MINT_DATABASE", dir.path().join("db"))
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Nutshell");
        let url = format!("http://127.0.0.1:{port}");
        let n = Nutshell {
            url: url.clone(),
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                let w = super::mint::fresh_wallet(&url).await;
                if w.fetch_mint_info().await.is_ok() {
                    return n;
                }
            }
            assert!(Instant::now() < deadline, "Nutshell did not come up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
