//! The provider's Nostr identity: loaded from config or a key file, created once, kept 0600.

use std::path::Path;

use nostr_sdk::prelude::{FromBech32, Keys, SecretKey, ToBech32};

use crate::fsutil::write_private;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}: not a valid Nostr secret key (nsec or 64 hex characters)")]
    Invalid(String),
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
}

/// Parse an nsec or hex secret key. The error names the source, never the value.
pub fn parse_secret_key(value: &Secret, source: &str) -> Result<Keys, IdentityError> {
    let v = value.expose().trim();
    let sk = if v.starts_with("nsec1") {
        SecretKey::from_bech32(v).map_err(|_| IdentityError::Invalid(source.to_string()))?
    } else {
        SecretKey::from_hex(v).map_err(|_| IdentityError::Invalid(source.to_string()))?
    };
    Ok(Keys::new(sk))
}

/// Load the key in `path`, or create a new one there (mode 0600) if the file does not exist.
pub fn load_or_create(path: &Path) -> Result<Keys, IdentityError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_secret_key(&Secret::new(text), &path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keys = Keys::generate();
            save(path, &keys)?;
            Ok(keys)
        }
        Err(err) => Err(IdentityError::Io {
            path: path.display().to_string(),
            err,
        }),
    }
}

/// npub of a key pair.
pub fn npub(keys: &Keys) -> String {
    keys.public_key()
        .to_bech32()
        .unwrap_or_else(|_| keys.public_key().to_hex())
}

/// Where a buyer's identity lives: `$HOME/.paygress/identity` (the directory is 0700, the file
/// 0600).
pub fn buyer_identity_path() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| {
        std::path::PathBuf::from(h)
            .join(".paygress")
            .join("identity")
    })
}

/// Write `keys` to `path` as an nsec, 0600, creating the directory 0700.
pub fn save(path: &Path, keys: &Keys) -> Result<(), IdentityError> {
    let io = |err| IdentityError::Io {
        path: path.display().to_string(),
        err,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    let nsec = keys
        .secret_key()
        .to_bech32()
        .map_err(|_| IdentityError::Invalid("key".into()))?;
    write_private(path, format!("{nsec}\n").as_bytes()).map_err(io)
}
