//! `network.mode = "nat"`: nftables DNAT rules from a host port to a guest's SSH port.
//!
//! PVE has no port-forward API (nothing like LXD's proxy device), so in NAT mode Paygress runs on
//! the PVE host and keeps one nftables table of its own (`ip paygress` by default). The table is
//! always written whole, from the set of guests the backend knows, in one `nft -f -`
//! transaction: adding or removing a guest's rule can never leave a half-written table, a rule
//! left by a crash is dropped by the next write, and a restarted provider rewrites the same
//! table from the guests it re-adopts. The rules live in the kernel, so they survive a restart of
//! Paygress itself; after a host reboot the first `list` (re-adoption) writes them again.
//!
//! Only numbers and addresses the backend made go into the script (ports, IPv4 addresses); no
//! buyer input ever does. The command that runs nft is configured as argv (`["nft"]`, or
//! `["sudo", "-n", "nft"]` for an unprivileged provider) and gets the script on stdin.

use std::net::Ipv4Addr;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

/// One forward: `host_port` on the PVE host to `guest:guest_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub host_port: u16,
    pub guest: Ipv4Addr,
    pub guest_port: u16,
}

/// The nftables table this provider owns.
#[derive(Debug, Clone)]
pub struct Nat {
    command: Vec<String>,
    table: String,
}

/// Whether `name` is a table name nft takes without quoting.
pub fn valid_table(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Nat {
    pub fn new(command: Vec<String>, table: String) -> Result<Nat, String> {
        if command.is_empty() || command[0].is_empty() {
            return Err("network.nft_command: must name the nft program".into());
        }
        if !valid_table(&table) {
            return Err(
                "network.nft_table: 1-32 characters of a-z, 0-9, '_', starting with a letter"
                    .into(),
            );
        }
        Ok(Nat { command, table })
    }

    /// The whole table for these forwards, as one nft transaction.
    pub fn script(&self, forwards: &[Forward]) -> String {
        let t = &self.table;
        let mut rules = String::new();
        for f in forwards {
            rules.push_str(&format!(
                "    fib daddr type local tcp dport {} dnat to {}:{}\n",
                f.host_port, f.guest, f.guest_port
            ));
        }
        format!(
            "table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{\n  \
             chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{rules}  }}\n  \
             chain output {{\n    type nat hook output priority -100; policy accept;\n{rules}  }}\n}}\n"
        )
    }

    /// Replace the table with exactly these forwards.
    pub async fn sync(&self, forwards: &[Forward]) -> Result<(), String> {
        let script = self.script(forwards);
        let mut child = tokio::process::Command::new(&self.command[0])
            .args(&self.command[1..])
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.command[0]))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|e| format!("nft: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("nft: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft refused the paygress table: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_written_whole_with_one_rule_per_forward_and_hook() {
        let nat = Nat::new(vec!["nft".into()], "paygress".into()).unwrap();
        let s = nat.script(&[Forward {
            host_port: 30001,
            guest: Ipv4Addr::new(10, 10, 0, 5),
            guest_port: 22,
        }]);
        assert!(
            s.starts_with("table ip paygress {}\ndelete table ip paygress\n"),
            "{s}"
        );
        assert_eq!(
            s.matches("tcp dport 30001 dnat to 10.10.0.5:22").count(),
            2,
            "{s}"
        );
        assert!(Nat::new(vec!["nft".into()], "bad name".into()).is_err());
        assert!(Nat::new(vec![], "paygress".into()).is_err());
    }
}
