//! SSH with the real OpenSSH client (`ssh`, and `sshpass` for passwords, which reads the
//! password from its environment, never argv) against workloads on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

pub fn ssh_opts() -> [&'static str; 8] {
    [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
    ]
}

/// An ssh command line with a password (through sshpass's environment, never argv).
pub fn ssh_password_cmd(port: u16, user: &str, password: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("sshpass");
    c.arg("-e")
        .arg("ssh")
        .args(ssh_opts())
        .args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
        ])
        .arg("-p")
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .env("SSHPASS", password);
    c
}

/// Run `cmd` over SSH with a password; stdout on exit 0, else the status and stderr.
pub async fn ssh_password(
    port: u16,
    user: &str,
    password: &str,
    cmd: &str,
) -> Result<String, String> {
    let mut c = ssh_password_cmd(port, user, password);
    c.arg(cmd);
    run(c, None).await
}

pub async fn ssh_key(port: u16, user: &str, key: &Path, cmd: &str) -> Result<String, String> {
    let mut c = tokio::process::Command::new("ssh");
    c.args(ssh_opts())
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(key)
        .arg("-p")
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg(cmd);
    run(c, None).await
}

pub async fn run(mut c: tokio::process::Command, input: Option<&str>) -> Result<String, String> {
    c.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = c.spawn().map_err(|e| format!("cannot run ssh: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use tokio::io::AsyncWriteExt;
        let text = text.to_string();
        tokio::spawn(async move {
            let _ = stdin.write_all(text.as_bytes()).await;
            // Keep stdin open a little: a PTY session must finish on its own `exit`.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| "ssh timed out".to_string())?
        .map_err(|e| format!("ssh failed: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ssh exited {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub fn keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "paygress-test", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}
