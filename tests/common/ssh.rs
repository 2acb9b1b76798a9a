//! Logging in with the real OpenSSH client (`sshpass` feeds the password through its
//! environment, never argv).

use std::process::Stdio;
use std::time::Duration;

/// Run `cmd` on `user@127.0.0.1:port` with a password; stdout on exit 0, else status and stderr.
pub async fn ssh_password(
    port: u16,
    user: &str,
    password: &str,
    cmd: &str,
) -> Result<String, String> {
    let mut c = tokio::process::Command::new("sshpass");
    c.arg("-e")
        .arg("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
        ])
        .arg("-p")
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg(cmd)
        .env("SSHPASS", password)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = c.spawn().map_err(|e| format!("cannot run ssh: {e}"))?;
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
