//! `paygress-cli identity`: the buyer's Nostr key.
//!
//! Pods belong to the key that paid for them: only that key sees their login details. So the key
//! is kept (in `~/.paygress/identity`, 0600) rather than made anew for each purchase, and it is
//! only ever printed by `show --secret`.

use std::io::{IsTerminal, Read};

use clap::Subcommand;
use nostr_sdk::prelude::{Keys, ToBech32};
use paygress::app::exit;
use paygress::identity::{self, buyer_identity_path};
use paygress::secret::Secret;

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Print your npub (creating the identity if there is none yet).
    Show {
        /// Also print the secret key (nsec). Anyone with it owns your pods.
        #[arg(long)]
        secret: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a new identity. Refuses to replace an existing one without --force.
    New {
        /// Replace the existing identity (pods bought with it stay with the old key).
        #[arg(long)]
        force: bool,
    },
    /// Keep an existing key (nsec or hex) as your identity, read from standard input so it does
    /// not show in the process list or shell history.
    Import {
        /// Replace the existing identity.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: IdentityCommand) -> i32 {
    let Some(path) = buyer_identity_path() else {
        eprintln!("paygress-cli: HOME is not set; cannot find ~/.paygress/identity");
        return exit::USAGE;
    };
    match cmd {
        IdentityCommand::Show { secret, json } => match identity::load_or_create(&path) {
            Ok(keys) => {
                let npub = identity::npub(&keys);
                let nsec = keys.secret_key().to_bech32().unwrap_or_default();
                if json {
                    let mut v = serde_json::json!({"npub": npub, "pubkey": keys.public_key().to_hex(), "path": path.display().to_string()});
                    if secret {
                        v["nsec"] = serde_json::Value::String(nsec);
                    }
                    println!("{v}");
                } else {
                    println!("{npub}");
                    if secret {
                        println!("{nsec}");
                    }
                }
                0
            }
            Err(e) => {
                eprintln!("paygress-cli: {e}");
                exit::USAGE
            }
        },
        IdentityCommand::New { force } => replace(&path, Keys::generate(), force),
        IdentityCommand::Import { force } => {
            if std::io::stdin().is_terminal() {
                eprintln!("paste the nsec (or hex secret key), then press Enter and Ctrl-D:");
            }
            let mut text = String::new();
            if let Err(e) = std::io::stdin().take(4096).read_to_string(&mut text) {
                eprintln!("paygress-cli: cannot read standard input: {e}");
                return exit::USAGE;
            }
            match identity::parse_secret_key(&Secret::new(text.trim()), "standard input") {
                Ok(keys) => replace(&path, keys, force),
                Err(e) => {
                    eprintln!("paygress-cli: {e}");
                    exit::USAGE
                }
            }
        }
    }
}

fn replace(path: &std::path::Path, keys: Keys, force: bool) -> i32 {
    if path.exists() && !force {
        eprintln!(
            "paygress-cli: {} already holds an identity; pass --force to replace it (pods bought with it stay with that key)",
            path.display()
        );
        return exit::USAGE;
    }
    match identity::save(path, &keys) {
        Ok(()) => {
            println!("{}", identity::npub(&keys));
            0
        }
        Err(e) => {
            eprintln!("paygress-cli: {e}");
            exit::USAGE
        }
    }
}
