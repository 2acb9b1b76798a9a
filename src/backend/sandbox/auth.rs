//! Login credentials of one workload: a salted password hash and the one public key allowed.
//!
//! The sandbox's SSH server is ours, so the password never has to exist in clear anywhere but in
//! memory during `create`: the metadata on disk keeps only `salt` and an iterated, salted SHA-256
//! of it (SHA-256 is already in the build; the iteration makes an offline guess cost thousands of
//! hashes). A login attempt is hashed the same way and compared in constant time, so neither the
//! comparison nor an early exit tells an attacker how close a guess was.
//!
//! Public-key login accepts exactly the key the buyer gave at spawn, compared on the key material
//! (algorithm and bytes), not on the comment.

use russh::keys::PublicKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Hash rounds; cheap for one login, expensive for a dictionary.
const ROUNDS: u32 = 4096;
const DOMAIN: &[u8] = b"paygress-sandbox-password-v1";

/// A salted, iterated SHA-256 of a password (hex on disk).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordHash {
    salt: String,
    hash: String,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash([redacted])")
    }
}

fn digest(salt: &[u8], password: &[u8]) -> [u8; 32] {
    let mut h: [u8; 32] = Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(salt)
        .chain_update(password)
        .finalize()
        .into();
    for _ in 1..ROUNDS {
        h = Sha256::new()
            .chain_update(h)
            .chain_update(salt)
            .finalize()
            .into();
    }
    h
}

/// Equality that always looks at every byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl PasswordHash {
    /// Hash `password` with a fresh random salt.
    pub fn new(password: &str) -> PasswordHash {
        let salt: [u8; 16] = rand::random();
        PasswordHash {
            salt: hex::encode(salt),
            hash: hex::encode(digest(&salt, password.as_bytes())),
        }
    }

    /// Whether `password` is the one hashed. Malformed stored values never match.
    pub fn verify(&self, password: &str) -> bool {
        let (Ok(salt), Ok(want)) = (hex::decode(&self.salt), hex::decode(&self.hash)) else {
            return false;
        };
        constant_time_eq(&digest(&salt, password.as_bytes()), &want)
    }
}

/// Key types the embedded server can verify (it is built without RSA, see the module docs of
/// the backend).
pub fn parse_public_key(line: &str) -> Result<PublicKey, String> {
    let key = PublicKey::from_openssh(line.trim())
        .map_err(|_| "the SSH public key could not be parsed".to_string())?;
    match key.algorithm() {
        russh::keys::Algorithm::Ed25519 | russh::keys::Algorithm::Ecdsa { .. } => Ok(key),
        other => Err(format!(
            "SSH keys of type {} are not supported by the sandbox backend; use ed25519 or ecdsa",
            other.as_str()
        )),
    }
}

/// Whether `offered` is the allowed key (material only; comments differ between copies).
pub fn key_matches(allowed: &PublicKey, offered: &PublicKey) -> bool {
    allowed.key_data() == offered.key_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_and_others_do_not() {
        let h = PasswordHash::new("correct horse");
        assert!(h.verify("correct horse"));
        assert!(!h.verify("correct hors"));
        assert!(!h.verify(""));
        // Same password, different salt, different hash.
        assert_ne!(h, PasswordHash::new("correct horse"));
        // Nothing of the password in its stored or printed form.
        let json = serde_json::to_string(&h).unwrap();
        assert!(!json.contains("correct"));
        assert_eq!(format!("{h:?}"), "PasswordHash([redacted])");
        let broken = PasswordHash {
            salt: "zz".into(),
            hash: "00".into(),
        };
        assert!(!broken.verify("correct horse"));
    }

    #[test]
    fn constant_time_eq_compares_everything() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn keys_parse_and_match_on_material() {
        let a =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ9Y2QwFDIlMSIMf3Ue3JNrZI1Ab1r6bDp2Ezd61Cm8 one";
        let b =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ9Y2QwFDIlMSIMf3Ue3JNrZI1Ab1r6bDp2Ezd61Cm8 two";
        let ka = parse_public_key(a).unwrap();
        let kb = parse_public_key(b).unwrap();
        assert!(key_matches(&ka, &kb));
        assert!(parse_public_key("ssh-ed25519 nonsense").is_err());
    }
}
