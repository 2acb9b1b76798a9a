//! What the operator's known_hosts files say about the key a provider host offered.
//!
//! Why not russh's `known_hosts` helpers: they compare host names literally (no `*`/`?`
//! wildcards, no `!` negation) and read a marker line (`@revoked`, `@cert-authority`) as a host
//! name — a revoked key went unnoticed. The lines are parsed with `ssh-key`'s known_hosts
//! parser (as russh re-exports it), which reads markers, hashed names and pattern lists but
//! does not match them; the matching here follows OpenSSH (sshd(8) "SSH_KNOWN_HOSTS FILE
//! FORMAT", match.c, hostfile.c):
//! - the name looked up is `host`, or `[host]:port` when the port is not 22, lowercased;
//! - a line's comma-separated patterns match when one of them matches (`*` any run of
//!   characters, `?` one character, compared case-insensitively) and no negated (`!pattern`)
//!   one does: a matching negation excludes the line whatever else it lists;
//! - a hashed name `|1|salt|hash` matches when HMAC-SHA1(salt, name) is the hash;
//! - `@cert-authority` lines sign host certificates; bootstrap checks the plain key the host
//!   offers, so they never make a key (or a host) known;
//! - `@revoked` lines: the key is refused. OpenSSH honours such a line where its patterns
//!   match the host (usually `*`); here a key listed `@revoked` is refused for every host,
//!   whatever the line's patterns, and before a pin or `--yes` is considered — a revoked key
//!   is never worth trusting.
//!
//! Lines OpenSSH would skip (comments, unknown key types, malformed lines) are skipped.

use std::path::Path;

use hmac::{Hmac, Mac};
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::PublicKey;
use sha1::Sha1;

/// What the known_hosts files say about the key a host offered.
#[derive(Debug, PartialEq, Eq)]
pub enum Known {
    /// A `@revoked` line of this file lists the key.
    Revoked(String),
    /// One of the host's recorded keys is this key.
    Same,
    /// No plain entry for the host at all (of any key type): a first contact. `ca_lines`: the
    /// host matched `@cert-authority` lines, which do not count for a plain key.
    Unknown { ca_lines: bool },
    /// The host has entries, none of them this key (in this file). Whatever their type: a host
    /// known by an ed25519 key that now offers an ECDSA or RSA one is not a new host.
    Other(String),
}

/// The name OpenSSH looks a host up by.
pub fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    match port {
        22 => host,
        _ => format!("[{host}]:{port}"),
    }
}

/// OpenSSH's `match_pattern`: `*` is any run of characters, `?` one; `name` and `pattern`
/// already lowercased.
fn glob(name: &[u8], pattern: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| glob(&name[i..], rest)),
        Some((b'?', rest)) => !name.is_empty() && glob(&name[1..], rest),
        Some((c, rest)) => name.first() == Some(c) && glob(&name[1..], rest),
    }
}

/// OpenSSH's `match_hostname` over one line's patterns: a matching negation wins.
fn patterns_match(name: &str, patterns: &[String]) -> bool {
    let name = name.to_ascii_lowercase();
    let mut positive = false;
    for p in patterns {
        let (negated, p) = match p.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, p.as_str()),
        };
        if glob(name.as_bytes(), p.to_ascii_lowercase().as_bytes()) {
            if negated {
                return false;
            }
            positive = true;
        }
    }
    positive
}

/// Whether a line's host field names `name` (as [`lookup_name`] builds it).
pub fn host_matches(name: &str, hosts: &HostPatterns) -> bool {
    match hosts {
        HostPatterns::Patterns(p) => patterns_match(name, p),
        HostPatterns::HashedName { salt, hash } => Hmac::<Sha1>::new_from_slice(salt)
            .map(|m| m.chain_update(name.as_bytes()).verify_slice(hash).is_ok())
            .unwrap_or(false),
    }
}

/// The entries of a known_hosts text that parse; the rest is skipped, as OpenSSH does.
pub fn entries(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            // Fields are separated by any whitespace; the parser wants single spaces.
            let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
            line.parse::<Entry>().ok()
        })
        .collect()
}

/// Judge `key` offered by `host:port` against `files` in order (the first that knows the
/// host decides; a revocation in any of them wins). A missing file is an empty one.
pub fn judge(host: &str, port: u16, key: &PublicKey, files: &[&Path]) -> Result<Known, String> {
    let name = lookup_name(host, port);
    let mut read = Vec::new();
    for f in files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", f.display())),
        };
        let es = entries(&text);
        if es
            .iter()
            .any(|e| e.marker() == Some(&Marker::Revoked) && same_key(e.public_key(), key))
        {
            return Ok(Known::Revoked(f.display().to_string()));
        }
        read.push((f.display().to_string(), es));
    }
    let mut other = None;
    let mut ca_lines = false;
    for (file, es) in &read {
        let mut known = false;
        for e in es.iter().filter(|e| host_matches(&name, e.host_patterns())) {
            match e.marker() {
                None if same_key(e.public_key(), key) => return Ok(Known::Same),
                None => known = true,
                Some(Marker::CertAuthority) => ca_lines = true,
                Some(Marker::Revoked) => {}
            }
        }
        if known && other.is_none() {
            other = Some(file.clone());
        }
    }
    Ok(other.map_or(Known::Unknown { ca_lines }, Known::Other))
}

fn same_key(a: &PublicKey, b: &PublicKey) -> bool {
    a.key_data() == b.key_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPYp+5H21bRjqIHx65EePO4voIq9KxQyojB2iq0L+GB1";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBMy+PiCfZ2sWwBt4mUnTA/StM4e1B6SD3vV07jA3VRptIrhpV4fX90U+ihhz/5dLgdavbpHcPTTxx8AwaxbdPOA=";

    fn key(line: &str) -> PublicKey {
        PublicKey::from_openssh(line).unwrap()
    }

    #[test]
    fn a_host_known_by_a_key_of_another_type_is_not_unknown() {
        let d = tempfile::tempdir().unwrap();
        let kh = d.path().join("known_hosts");
        std::fs::write(&kh, format!("[h.example]:2222 {ED25519}\n")).unwrap();
        let none = d.path().join("none");
        let files = [kh.as_path(), none.as_path()];
        // Known by ed25519, offering ECDSA: refused as a changed key, never learnt as new.
        assert_eq!(
            judge("h.example", 2222, &key(ECDSA), &files).unwrap(),
            Known::Other(kh.display().to_string())
        );
        assert_eq!(
            judge("h.example", 2222, &key(ED25519), &files).unwrap(),
            Known::Same
        );
        assert_eq!(
            judge("other.example", 2222, &key(ECDSA), &files).unwrap(),
            Known::Unknown { ca_lines: false }
        );
        // The second file (the system's) counts too.
        let sys = d.path().join("ssh_known_hosts");
        std::fs::write(
            &sys,
            format!("[h2.example]:22 {ED25519}\nh3.example {ECDSA}\n"),
        )
        .unwrap();
        let files = [none.as_path(), sys.as_path()];
        assert_eq!(
            judge("h3.example", 22, &key(ED25519), &files).unwrap(),
            Known::Other(sys.display().to_string())
        );
        assert_eq!(
            judge("h3.example", 22, &key(ECDSA), &files).unwrap(),
            Known::Same
        );
    }

    #[test]
    fn markers_revoke_and_certificate_authorities_do_not_make_a_key_known() {
        let d = tempfile::tempdir().unwrap();
        let kh = d.path().join("known_hosts");
        let f = kh.display().to_string();
        // Revoked under a pattern that does not even name the host: still refused, and
        // before the plain line that lists the same key.
        std::fs::write(
            &kh,
            format!("[h.example]:2222 {ED25519}\n@revoked nowhere.invalid {ED25519}\n"),
        )
        .unwrap();
        assert_eq!(
            judge("h.example", 2222, &key(ED25519), &[kh.as_path()]).unwrap(),
            Known::Revoked(f.clone())
        );
        assert_eq!(
            judge("h.example", 2222, &key(ECDSA), &[kh.as_path()]).unwrap(),
            Known::Other(f.clone())
        );
        // A revocation in the second file wins over a plain line of the first.
        let sys = d.path().join("sys");
        std::fs::write(&sys, format!("@revoked * {ECDSA}\n")).unwrap();
        std::fs::write(&kh, format!("h.example {ECDSA}\n")).unwrap();
        assert_eq!(
            judge("h.example", 22, &key(ECDSA), &[kh.as_path(), sys.as_path()]).unwrap(),
            Known::Revoked(sys.display().to_string())
        );
        // @cert-authority: neither the key nor the host is known by it.
        std::fs::write(&kh, format!("@cert-authority *.example {ED25519}\n")).unwrap();
        assert_eq!(
            judge("h.example", 22, &key(ED25519), &[kh.as_path()]).unwrap(),
            Known::Unknown { ca_lines: true }
        );
        assert_eq!(
            judge("h.other", 22, &key(ED25519), &[kh.as_path()]).unwrap(),
            Known::Unknown { ca_lines: false }
        );
        // Garbage lines and comments are skipped, not fatal.
        std::fs::write(
            &kh,
            format!(
                "# c\n\ngarbage\n@bogus h.example {ED25519}\nh.example\tssh-ed25519   {}\n",
                &ED25519[12..]
            ),
        )
        .unwrap();
        assert_eq!(
            judge("h.example", 22, &key(ED25519), &[kh.as_path()]).unwrap(),
            Known::Same
        );
    }

    /// A hashed name as `ssh-keygen -H` writes it.
    fn hashed(name: &str, salt: &[u8]) -> String {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD;
        let mac = Hmac::<Sha1>::new_from_slice(salt)
            .unwrap()
            .chain_update(name.as_bytes())
            .finalize()
            .into_bytes();
        format!("|1|{}|{}", b.encode(salt), b.encode(mac))
    }

    /// Every pattern against every name, compared with what OpenSSH's `ssh-keygen -F` finds.
    #[test]
    fn patterns_match_as_openssh_matches_them() {
        let patterns = [
            "h.example",
            "H.Example",
            "*.example",
            "h.examp??",
            "h.exampl?",
            "*",
            "!h.example,*",
            "*.example,!h.example",
            "!*.example",
            "other,h.example",
            "[h.example]:2222",
            "[h.example]:*",
            "[*.example]:2222",
            "[h.example]:22",
            "h?example",
            "10.0.0.*",
            "*h*",
            "h.example.",
            "**.example",
        ];
        let names = [
            ("h.example", 22),
            ("x.h.example", 22),
            ("h.example", 2222),
            ("H.EXAMPLE", 2223),
            ("10.0.0.7", 22),
            ("h.exampleX", 22),
        ];
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("kh");
        let mut checked = 0;
        for p in patterns {
            std::fs::write(&f, format!("{p} {ED25519}\n")).unwrap();
            let e = &entries(&std::fs::read_to_string(&f).unwrap())[0];
            for (host, port) in names {
                let name = lookup_name(host, port);
                let ours = host_matches(&name, e.host_patterns());
                assert_eq!(
                    ours,
                    keygen_finds(&name, &f),
                    "pattern {p:?}, name {name:?}"
                );
                checked += 1;
            }
        }
        // Hashed names: the same name (as OpenSSH builds it) matches, any other does not.
        for (host, port) in names {
            let name = lookup_name(host, port);
            std::fs::write(
                &f,
                format!("{} {ED25519}\n", hashed(&name, b"0123456789abcdefghij")),
            )
            .unwrap();
            let e = &entries(&std::fs::read_to_string(&f).unwrap())[0];
            for (h2, p2) in names {
                let other = lookup_name(h2, p2);
                assert_eq!(
                    host_matches(&other, e.host_patterns()),
                    keygen_finds(&other, &f),
                    "hashed {name:?}, looked up {other:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 100);
    }

    /// Whether `ssh-keygen -F name -f file` (real OpenSSH) finds a line.
    fn keygen_finds(name: &str, file: &Path) -> bool {
        let o = std::process::Command::new("ssh-keygen")
            .arg("-F")
            .arg(name)
            .arg("-f")
            .arg(file)
            .output()
            .expect("ssh-keygen (openssh-client) is installed");
        let out = String::from_utf8_lossy(&o.stdout);
        o.status.success() && out.contains("found: line 1")
    }
}
