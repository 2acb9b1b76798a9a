//! Checks on buyer-supplied strings.
//!
//! Every string that reaches a backend (a username that becomes a Unix account, a key that lands
//! in `authorized_keys`, an image name) is checked here first, against a whitelist of characters,
//! so no backend ever has to worry about quoting. These checks run before a token is touched.

/// Accounts a buyer may not take over inside a workload.
const RESERVED_USERS: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "sshd",
    "messagebus",
    "_apt",
    "systemd-network",
    "systemd-resolve",
    "systemd-timesync",
    "systemd-journal",
    "polkitd",
    "admin",
    "operator",
    "halt",
    "shutdown",
];

/// A Unix login name: `^[a-z_][a-z0-9_-]{0,31}$` and not a system account.
pub fn check_username(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = matches!(chars.next(), Some('a'..='z' | '_'));
    let rest_ok = chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'));
    if name.is_empty() || name.len() > 32 || !first_ok || !rest_ok {
        return Err(
            "ssh_username must be 1-32 characters of a-z, 0-9, '_' or '-', starting with a letter or '_'"
                .into(),
        );
    }
    if RESERVED_USERS.contains(&name) || name.starts_with("systemd-") {
        return Err(format!("ssh_username {name:?} is reserved; choose another"));
    }
    Ok(())
}

/// A buyer-chosen password: 8-128 printable ASCII characters, no ':' (the chpasswd separator).
/// The message never repeats the password.
pub fn check_password(pw: &str) -> Result<(), String> {
    let len = pw.chars().count();
    if !(8..=128).contains(&len) {
        return Err("ssh_password must be 8 to 128 characters".into());
    }
    if !pw.chars().all(|c| c.is_ascii_graphic() || c == ' ') || pw.contains(':') {
        return Err("ssh_password may hold printable ASCII characters except ':'".into());
    }
    Ok(())
}

/// Every OpenSSH public key type a login may use (backends may accept fewer).
pub const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// One OpenSSH public key line: `TYPE BASE64 [comment]`, no options, no control characters.
pub fn check_public_key(key: &str) -> Result<(), String> {
    let key = key.trim();
    if key.is_empty() || key.len() > 8192 || key.chars().any(|c| c.is_control()) {
        return Err("ssh_public_key must be a single OpenSSH public key line".into());
    }
    let mut parts = key.split_whitespace();
    let kind = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("");
    if !KEY_TYPES.contains(&kind) {
        return Err(format!(
            "ssh_public_key type must be one of {} (got {:?})",
            KEY_TYPES.join(", "),
            kind.chars().take(40).collect::<String>()
        ));
    }
    let b64_ok = body.len() >= 16
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='));
    if !b64_ok {
        return Err("ssh_public_key body is not base64".into());
    }
    let comment_ok = parts.all(|p| p.chars().all(|c| c.is_ascii_graphic()));
    if !comment_ok {
        return Err("ssh_public_key comment may hold printable ASCII only".into());
    }
    Ok(())
}

/// Tier ids, namespaces: 1-64 characters of `a-z 0-9 - _ .`, starting with a letter or digit.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// Image names: 1-128 characters of `A-Z a-z 0-9 . _ : / -`, starting with a letter or digit.
pub fn is_image_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:/-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["alice", "_svc", "a1-b_2", "x"] {
            assert!(check_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "root",
            "Alice",
            "1abc",
            "a b",
            "a;rm -rf /",
            "$(id)",
            "systemd-foo",
            "é",
            "abcdefghijklmnopqrstuvwxyz0123456",
        ] {
            assert!(check_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_checked_without_echo() {
        assert!(check_password("correct horse").is_ok());
        let e = check_password("short").unwrap_err();
        assert!(!e.contains("short"));
        assert!(check_password("has:colon99").is_err());
        assert!(check_password("new\nline99").is_err());
    }

    #[test]
    fn public_keys() {
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@host";
        assert!(check_public_key(k).is_ok());
        assert!(check_public_key("command=\"x\" ssh-ed25519 AAAA").is_err());
        assert!(check_public_key(&format!("{k}\nssh-rsa AAAAB3NzaC1yc2EAAAADAQAB")).is_err());
        assert!(check_public_key("ssh-ed25519 not*base64*at*all!").is_err());
    }

    #[test]
    fn names() {
        assert!(is_image_name("paygress-debian-12"));
        assert!(is_image_name("docker.io/library/ubuntu:24.04"));
        assert!(!is_image_name("../etc"));
        assert!(!is_image_name("a b"));
        assert!(is_identifier("basic"));
        assert!(!is_identifier("Basic"));
    }
}
