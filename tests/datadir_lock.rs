//! One process per data dir, checked with real processes: a running `paygress-mcp-server`
//! holds its data dir; a second `paygress-mcp-server` or `paygress-cli provider start` on the
//! same data dir exits non-zero naming the first, and touches nothing of it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;

fn write_config(dir: &Path) -> PathBuf {
    let mut cfg = common::config(
        dir,
        &["http://127.0.0.1:9"],
        100,
        common::free_port_block(4),
    );
    cfg.nostr.marketplace = true;
    let f = dir.join("paygress.toml");
    std::fs::write(&f, toml::to_string(&cfg).unwrap()).unwrap();
    f
}

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else {
                out.insert(e.path(), (m.len(), m.modified().unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_exits_naming_the_first_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_paygress-mcp-server"));
    cmd.arg("--config").arg(&cfg);
    let first = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
    // The first is up (it answered the MCP handshake); it wrote its pid into the lock file.
    let offers = first.list_tools(None).await.unwrap();
    assert!(!offers.tools.is_empty());
    let pid: u32 = std::fs::read_to_string(dir.path().join("paygress.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let before = snapshot(dir.path());

    let second = std::process::Command::new(env!("CARGO_BIN_EXE_paygress-mcp-server"))
        .arg("--config")
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!second.status.success(), "the second server must not start");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use by another paygress process"), "{err}");
    assert!(
        err.contains(&format!("pid {pid}")),
        "names the first: {err}"
    );
    assert!(
        err.contains("paygress-mcp-server"),
        "names its command: {err}"
    );

    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_paygress-cli"))
        .args([
            "provider",
            "start",
            "--embedded-relay",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!cli.status.success(), "provider start must not start");
    let err = String::from_utf8_lossy(&cli.stderr);
    assert!(
        err.contains(&format!("pid {pid}")),
        "names the first: {err}"
    );

    assert_eq!(
        before,
        snapshot(dir.path()),
        "nothing of the first's was touched"
    );
    // And the first still serves.
    let tools = first.list_tools(None).await.unwrap();
    assert_eq!(tools.tools.len(), offers.tools.len());
    first.cancel().await.unwrap();
}

#[tokio::test]
async fn the_lock_goes_with_the_process_so_a_restart_after_kill_9_opens() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_paygress-mcp-server"))
        .arg("--config")
        .arg(&cfg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = dir.path().join("paygress.lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let pid = child.id().to_string();
    while std::fs::read_to_string(&lock)
        .ok()
        .as_deref()
        .map(str::trim)
        != Some(pid.as_str())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never took its lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_paygress-mcp-server"));
    cmd.arg("--config").arg(&cfg);
    let again = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
    assert!(!again.list_tools(None).await.unwrap().tools.is_empty());
    again.cancel().await.unwrap();
}
