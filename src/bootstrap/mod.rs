//! Make a machine a Paygress provider over SSH (`paygress-cli bootstrap`), undo it
//! (`paygress-cli system reset`).
//!
//! Why a module of its own: it is the operator's side, run on the operator's machine, and it
//! never reaches into the provider core — on the host it runs the very `paygress-cli` binary it
//! uploaded, as the service user, for everything the core knows (the Nostr identity, the
//! earnings, the workloads it made). What it does on the host is a list of named, checked steps
//! ([`steps`]) of constant scripts ([`plan`]) sent over one checked SSH session ([`remote`]).

pub mod known_hosts;
pub mod libc;
pub mod plan;
pub mod pve;
pub mod pve_image;
pub mod remote;
pub mod settings;
pub mod steps;
pub mod tty;
