//! The LXD backend: system containers on a real LXD daemon, driven over its REST API.
//!
//! LXD is what most providers run on a VPS or a bare-metal box: one daemon, full system
//! containers (systemd, sshd, a real `free` and `nproc` thanks to lxcfs), cheap enough to make one
//! per buyer. This module talks to LXD's REST API directly — never the `lxc` command line — over
//! the local unix socket or HTTPS with a client certificate (see [`rest`]).
//!
//! Parts: [`config`] (the settings), [`rest`] (transports, envelope, the calls), [`banner`] (SSH
//! readiness), [`egress`] (the network ACL), [`pool`] (the warm pool). This file is the workload
//! lifecycle behind the [`Backend`] trait.
//!
//! # Making a workload
//!
//! [`LxdBackend::create`] sends one `POST /1.0/instances` with the image alias, the tier's limits
//! (`limits.cpu`, `limits.memory`, the root disk size when the storage pool can enforce one),
//! `security.privileged=false`, nesting only if the operator asked, and the ownership and
//! deadline marks (`user.paygress.provider`, `user.paygress.expires_at`); it starts the instance
//! bare and then hands it over exactly as a sold warm member is (see [`pool`]): the SSH proxy
//! device from the allocated host port to the container's `127.0.0.1:22`, the login, and the
//! wait for the container's own banner, all at once.
//!
//! The login user is made without ever putting buyer input into a shell command line: one `exec`
//! runs a constant script (`useradd`, then `chpasswd` fed from a file), and the username reaches
//! it as an environment variable. The password and a public key are written with LXD's file API
//! into root-only staging files, which the same script consumes and removes. The password never
//! goes in the environment: LXD hands an exec's environment to its host helper on the command
//! line, readable by any host user. Nothing a buyer sends is parsed by a shell.
//!
//! # Why spawn is fast
//!
//! LXD starts a proxy device by spawning a `forkproxy` helper and then polling the helper's log
//! for "Started" — once immediately, and then only after a fixed one-second sleep. So a request
//! that starts a proxy device (an instance start with one, or the update that adds one) never
//! finishes in less than about a second, even though the helper listens within milliseconds, and
//! while it runs LXD answers file requests on the instance only at its end. So the instance is
//! made and started without the device (started bare it runs in ~0.6-0.8 s on one vCPU), and the
//! update that adds the device is not waited for: it is watched alongside only for failure (a
//! taken port fails it within ~0.1 s) while the login is made and the host port is watched for
//! the SSH banner. Nothing is pushed into the stopped instance either: a file written there made
//! the following start ~1 s slower in most runs (measured with the REST API).
//!
//! The catch is that a banner on the host port proves nothing by itself: another program could be
//! listening there. So every instance gets a random, non-secret nonce (`user.paygress.nonce`),
//! which the base image's LXD template puts in sshd's `VersionAddendum`; a banner carrying the
//! nonce can only come from this very container through its own proxy device. If the image has no
//! such template (any other image), create falls back to waiting for the device update, which
//! is correct everywhere and only slower. Before anything is created, the host port is also
//! probed locally, so a taken port is a precise `Capacity` error that costs nothing.
//!
//! The banner read matters in itself: the proxy accepts TCP connections before sshd inside is
//! up, so a bare connect is no proof of readiness; a line starting `SSH-` is. The host key
//! fingerprints of the spawn answer are then taken from the same port, one key exchange per key
//! type ended at the host key check (the key files through the file API would wait for the
//! device update).
//!
//! One consequence: for up to a second after create returns, LXD is still finishing the device
//! update and refuses other updates of the instance ("busy"). So the instance is *settling*
//! until it ends (see [`pool`]): an `extend` meanwhile (the core moves the deadline mark right
//! after create) is recorded and written when it ends, and stop, resume and destroy wait for it;
//! every mutating call also retries while LXD says busy, within its timeout.
//!
//! With `warm_pool` set, a spawn first tries a booted, unsold container from the pool and only
//! sets the login and adds the SSH forward (see [`pool`]); this section is the cold path, taken
//! when the pool is empty or disabled.
//!
//! The rest of spawn time is the storage pool's: on `dir` every container is a full unpack of the
//! image (0.2-2 s for the 120 MB base image, depending on the machine), on btrfs or zfs it is a
//! snapshot (~0.1 s). `storage_pool` puts the root disk on a pool of the operator's choice; tier
//! disk sizes are applied where the pool's driver enforces them and skipped quietly on `dir`.
//!
//! # Failure and ownership
//!
//! Any failure after the create request was accepted removes the instance (force stop, delete)
//! before the error is returned, so a failed create leaves nothing behind. Errors map to
//! [`BackendError`]: an unknown image alias is `ImageMissing`, a taken host port is `Capacity`,
//! a missing instance is `NotFound`, SSH not answering in time is `NotReady`, anything else
//! `Api`. No error message ever carries the password: it is only ever a file's content, and
//! create scrubs its errors of the password anyway.
//!
//! [`Backend::list`] returns only instances whose `user.paygress.provider` is this provider, so a
//! restarted provider re-adopts its own instances and leaves everything else on the host alone.
//! A sold warm container keeps its own instance name (LXD renames only stopped containers), so
//! it carries the core's name in `user.paygress.workload`, every call maps the name to the
//! instance, and `list` reports the core's name.
//!
//! Every request has a timeout, and nothing read from the daemon or the network is trusted enough
//! to `unwrap()`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use tokio::sync::OnceCell;

use super::{
    Backend, BackendError, BackendKind, Endpoint, WorkloadInfo, WorkloadSpec, WorkloadState,
};
use crate::config::Tier;

mod banner;
mod config;
mod egress;
mod pool;
mod rest;

use banner::{presented_host_keys, wait_for_ssh, Banner};
use config::is_safe_token;
pub use config::LxdConfig;
pub use pool::{PoolStatus, KEY_POOL, KEY_POOL_SHAPE};
use rest::{https_client, Answer, LxdError, Transport};

/// Instance names as the core makes them: `[a-z0-9-]`, starting with a letter, at most 63.
fn is_valid_instance_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

// ---------------------------------------------------------------------------------------------
// Errors inside the module
// ---------------------------------------------------------------------------------------------

/// LXD's way of saying a state change had nothing to do.
fn is_already(e: &LxdError) -> bool {
    e.contains("already running") || e.contains("already stopped") || e.contains("is not running")
}

/// Give a failed start (or create) its precise meaning.
fn map_start_error(e: &LxdError, port: u16, what: &str) -> BackendError {
    if e.contains("address already in use") {
        BackendError::Capacity(format!("host port {port} is already in use"))
    } else {
        e.api(what)
    }
}

/// Give a failed create request its precise meaning.
fn map_create_error(e: &LxdError, image: &str, port: u16) -> BackendError {
    // LXD says "Image alias not found" (or "Image not found"); another 404 (a missing profile or
    // pool) is the operator's problem, not the buyer's image.
    if e.contains("image") && e.contains("not found") {
        BackendError::ImageMissing(format!("no image with alias {image:?} on the LXD host"))
    } else if e.contains("no space left") || e.contains("quota") {
        BackendError::Capacity(format!("LXD has no room for the instance: {}", e.message()))
    } else {
        map_start_error(e, port, "create")
    }
}

/// Remove every occurrence of `secret` from an error message (defence in depth: LXD never
/// echoes the environment, but nothing that formats an error should be trusted with it).
fn scrub(e: BackendError, secret: &str) -> BackendError {
    if secret.is_empty() {
        return e;
    }
    let fix = |m: String| {
        if m.contains(secret) {
            m.replace(secret, "[redacted]")
        } else {
            m
        }
    };
    match e {
        BackendError::Capacity(m) => BackendError::Capacity(fix(m)),
        BackendError::ImageMissing(m) => BackendError::ImageMissing(fix(m)),
        BackendError::NotFound(m) => BackendError::NotFound(fix(m)),
        BackendError::NotReady(m) => BackendError::NotReady(fix(m)),
        BackendError::Api(m) => BackendError::Api(fix(m)),
    }
}

// ---------------------------------------------------------------------------------------------
// Transport: unix socket (hyper) or HTTPS with a client certificate (reqwest + rustls)
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Pure parts: request bodies and status mapping
// ---------------------------------------------------------------------------------------------

/// Config key marking the provider that owns an instance.
pub const KEY_PROVIDER: &str = "user.paygress.provider";
/// Config key holding the paid deadline (unix seconds).
pub const KEY_EXPIRES_AT: &str = "user.paygress.expires_at";
/// Config key holding the banner nonce (see the module docs; not a secret).
pub const KEY_NONCE: &str = "user.paygress.nonce";
/// Config key of a sold warm-pool container: the core's name for the workload (LXD cannot
/// rename a running container, so the backend maps the name; see [`pool`]).
pub const KEY_WORKLOAD: &str = "user.paygress.workload";
/// Name of the SSH proxy device.
pub const SSH_DEVICE: &str = "ssh";
/// Where the public key is staged (root-only) before the user script installs it.
const KEY_STAGING: &str = "/root/.paygress-authorized-keys";
/// Where the buyer's password is staged (root-only, 0600) for the user script, which reads it
/// and removes it. Not the exec environment: LXD hands an exec's environment to its host helper
/// on the command line (`lxd forkexec … -- env KEY=VALUE …`), where any host user's `ps` reads it.
const PASSWORD_STAGING: &str = "/root/.paygress-password";

/// The user script. Constant text: the username, password and key reach it only through the
/// environment (`PAYGRESS_USER`, `PAYGRESS_PASSWORD`) and the staged key file.
const USER_SCRIPT: &str = r#"set -eu
useradd -m -s /bin/bash -- "$PAYGRESS_USER"
p=/root/.paygress-password
if [ -f "$p" ]; then
  { printf '%s:' "$PAYGRESS_USER"; cat "$p"; printf '\n'; } | chpasswd
  rm -f "$p"
fi
k=/root/.paygress-authorized-keys
if [ -f "$k" ]; then
  h=$(getent passwd "$PAYGRESS_USER" | cut -d: -f6)
  g=$(id -g "$PAYGRESS_USER")
  install -d -m 700 -o "$PAYGRESS_USER" -g "$g" "$h/.ssh"
  install -m 600 -o "$PAYGRESS_USER" -g "$g" "$k" "$h/.ssh/authorized_keys"
  rm -f "$k"
fi
"#;

/// `limits.cpu`: whole CPUs, rounded up, at least one.
fn cpu_limit(millicores: u32) -> u32 {
    millicores.div_ceil(1000).max(1)
}

/// `tcp:ADDR:PORT`, with IPv6 addresses in brackets.
fn proxy_listen(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("tcp:[{addr}]:{port}")
    } else {
        format!("tcp:{addr}:{port}")
    }
}

/// The storage pool the root disk goes on, and whether its driver can enforce a size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RootPool {
    name: String,
    enforces_size: bool,
}

/// What every instance of a tier and image is made with, cold or warm: the image, the limits,
/// the isolation settings, the network and the root disk. No name, no ownership marks and no SSH
/// forward: a cold create adds the name and marks in the same request ([`create_body`]) and the
/// forward once the instance runs; a warm pool member gets its pool marks instead and the rest
/// when it is sold (see [`pool`]).
fn instance_body(
    tier: &Tier,
    image: &str,
    cfg: &LxdConfig,
    nonce: &str,
    root: Option<&RootPool>,
) -> Value {
    let mut config = Map::new();
    config.insert(
        "limits.cpu".into(),
        cpu_limit(tier.cpu_millicores).to_string().into(),
    );
    // The tier's memory is in MiB; LXD's "MB" would be decimal and short the buyer ~5%.
    config.insert(
        "limits.memory".into(),
        format!("{}MiB", tier.memory_mb.max(1)).into(),
    );
    config.insert("security.privileged".into(), "false".into());
    config.insert("limits.processes".into(), cfg.pids_max.to_string().into());
    if cfg.idmap_isolated {
        config.insert("security.idmap.isolated".into(), "true".into());
    }
    if cfg.nesting {
        config.insert("security.nesting".into(), "true".into());
    }
    if !nonce.is_empty() {
        config.insert(KEY_NONCE.into(), nonce.into());
    }

    let mut devices = Map::new();
    if let Some(net) = &cfg.egress_network {
        devices.insert(
            "eth0".into(),
            json!({ "type": "nic", "name": "eth0", "network": net }),
        );
    }
    // A root device of our own only when it says something the profile's does not: another
    // pool, or a size the pool can enforce (`dir` cannot: the size is skipped there).
    if let Some(root) = root {
        let size = tier.disk_gb.filter(|_| root.enforces_size);
        if cfg.storage_pool.is_some() || size.is_some() {
            let mut dev = json!({ "type": "disk", "path": "/", "pool": root.name });
            if let Some(gb) = size {
                dev["size"] = format!("{gb}GB").into();
            }
            devices.insert("root".into(), dev);
        }
    }
    json!({
        "type": "container",
        "source": { "type": "image", "alias": image },
        "profiles": cfg.profiles,
        "config": config,
        "devices": devices,
    })
}

/// The SSH proxy device: the host port to the container's own `127.0.0.1:22`.
fn proxy_device(listen_address: &str, port: u16) -> Value {
    json!({
        "type": "proxy",
        "listen": proxy_listen(listen_address, port),
        "connect": "tcp:127.0.0.1:22",
        "bind": "host",
    })
}

/// The body of `POST /1.0/instances` for a cold create: the workload's image, limits, isolation,
/// network, disk and marks; not its SSH forward, which [`LxdBackend::provision`] adds once the
/// instance runs.
fn create_body(
    spec: &WorkloadSpec,
    cfg: &LxdConfig,
    nonce: &str,
    root: Option<&RootPool>,
) -> Value {
    let mut body = instance_body(&spec.tier, &spec.image, cfg, nonce, root);
    body["name"] = spec.name.clone().into();
    if let Some(config) = body.get_mut("config").and_then(Value::as_object_mut) {
        config.insert(KEY_PROVIDER.into(), spec.provider_id.clone().into());
        config.insert(KEY_EXPIRES_AT.into(), spec.expires_at.to_string().into());
    }
    body
}

/// The body of the `exec` that makes the login user (the password and key are staged as files
/// first, see [`LxdBackend::stage_login`]).
fn user_exec_body(user: &str) -> Value {
    json!({
        "command": ["/bin/sh", "-c", USER_SCRIPT],
        "environment": {
            "PAYGRESS_USER": user,
            "HOME": "/root",
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        },
        "wait-for-websocket": false,
        "interactive": false,
        "record-output": false,
    })
}

/// LXD status name → the core's state.
fn map_status(status: &str) -> WorkloadState {
    match status {
        "Running" => WorkloadState::Running,
        "Stopped" => WorkloadState::Stopped,
        _ => WorkloadState::Other,
    }
}

/// The host port of an instance's SSH proxy device, from its (expanded) devices.
fn ssh_port_of(instance: &Value) -> Option<u16> {
    let devices = instance
        .get("expanded_devices")
        .and_then(Value::as_object)
        .or_else(|| instance.get("devices").and_then(Value::as_object))?;
    let port_of = |d: &Value| -> Option<u16> {
        if d.get("type").and_then(Value::as_str) != Some("proxy") {
            return None;
        }
        let listen = d.get("listen").and_then(Value::as_str)?;
        listen
            .strip_prefix("tcp:")?
            .rsplit(':')
            .next()?
            .parse()
            .ok()
    };
    if let Some(p) = devices.get(SSH_DEVICE).and_then(port_of) {
        return Some(p);
    }
    devices
        .values()
        .filter(|d| {
            d.get("connect")
                .and_then(Value::as_str)
                .is_some_and(|c| c.ends_with(":22"))
        })
        .find_map(port_of)
}

/// An instance object (`GET /1.0/instances/{name}`) → what the core sees: a sold warm container
/// under the core's name for it.
fn workload_info(instance: &Value) -> Option<WorkloadInfo> {
    let name = config_value(instance, KEY_WORKLOAD)
        .filter(|n| is_valid_instance_name(n))
        .or_else(|| instance.get("name").and_then(Value::as_str))?;
    let status = instance.get("status").and_then(Value::as_str).unwrap_or("");
    Some(WorkloadInfo {
        name: name.to_string(),
        state: map_status(status),
        endpoint: ssh_port_of(instance).map(Endpoint::on_provider_host),
    })
}

fn config_value<'a>(instance: &'a Value, key: &str) -> Option<&'a str> {
    instance.get("config")?.get(key)?.as_str()
}

/// A random, non-secret nonce for the sshd banner.
fn new_nonce() -> String {
    format!("pg{:016x}", rand::random::<u64>())
}

/// A buyer password as chpasswd can take it safely (the core validates first; this is the
/// backend's own line of defence: a newline would let a password set a second account).
fn check_password(pw: &str) -> Result<(), BackendError> {
    if pw.chars().any(|c| c.is_control()) || pw.contains(':') {
        return Err(BackendError::Api(
            "the SSH password holds characters the backend cannot set".into(),
        ));
    }
    Ok(())
}

fn check_username(u: &str) -> Result<(), BackendError> {
    let first_ok = u
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let ok = first_ok
        && u.len() <= 32
        && u.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(BackendError::Api("invalid SSH username".into()))
    }
}

// ---------------------------------------------------------------------------------------------
// SSH readiness
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------------------------------

/// Held while an instance with an isolated id map is being recorded: LXD picks its free host id
/// range when it creates the instance, and two creates at once can pick the same one (the second
/// then fails to start). One for the process, not per backend: two backends on the same daemon
/// (a warm pool's refill and another provider's cold create, or parallel tests) race alike.
static IDMAP_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The LXD backend. Cheap to clone: every clone shares the same state (the refill task of the
/// warm pool holds one).
#[derive(Clone)]
pub struct LxdBackend {
    cfg: Arc<LxdConfig>,
    transport: Arc<Transport>,
    /// Host the SSH banner is read from.
    check_host: Arc<str>,
    /// Whether the host port can be probed on this machine before create.
    local: bool,
    /// The root disk's storage pool (looked up once).
    root_pool: Arc<OnceCell<Option<RootPool>>>,
    /// SSH host key fingerprints read from each new container, until the spawn answer takes
    /// them ([`Backend::host_key_fingerprints`]).
    host_keys: Arc<std::sync::Mutex<BTreeMap<String, Vec<String>>>>,
    /// Workload name → instance name, where they differ (sold warm containers) or are known.
    names: Arc<std::sync::Mutex<HashMap<String, String>>>,
    /// Instances whose SSH forward request is still running (a sold warm container, for about a
    /// second), with a deadline to record once it ends (see [`pool`]).
    settling: Arc<std::sync::Mutex<HashMap<String, Option<u64>>>>,
    /// The warm pool.
    pool: Arc<pool::Pool>,
}

impl std::fmt::Debug for LxdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LxdBackend")
            .field("remote", &self.cfg.url)
            .field("socket", &self.cfg.socket)
            .field("project", &self.cfg.project)
            .finish()
    }
}

impl LxdBackend {
    /// Build the backend from its config (no request is made; see [`LxdBackend::connect`]).
    pub fn new(cfg: LxdConfig) -> Result<LxdBackend, BackendError> {
        cfg.validate().map_err(BackendError::Api)?;
        let (transport, url_host) = match &cfg.url {
            Some(url) => {
                let client = https_client(&cfg).map_err(BackendError::Api)?;
                let parsed = reqwest::Url::parse(url)
                    .map_err(|e| BackendError::Api(format!("backend.lxd.url: {e}")))?;
                let host = parsed
                    .host_str()
                    .unwrap_or("")
                    .trim_matches(['[', ']'])
                    .to_string();
                (
                    Transport::Https {
                        client,
                        base: url.trim_end_matches('/').to_string(),
                    },
                    Some(host),
                )
            }
            None => (Transport::Unix(cfg.socket.clone()), None),
        };
        let check_host = match (&cfg.ssh_check_host, &url_host) {
            (Some(h), _) => h.clone(),
            (None, Some(h)) => h.clone(),
            (None, None) => match cfg.ssh_listen_address.as_str() {
                "0.0.0.0" | "127.0.0.1" => "127.0.0.1".into(),
                "::" | "::1" => "::1".into(),
                other => other.to_string(),
            },
        };
        Ok(LxdBackend {
            local: url_host.is_none(),
            transport: Arc::new(transport),
            check_host: check_host.into(),
            cfg: Arc::new(cfg),
            root_pool: Default::default(),
            host_keys: Default::default(),
            names: Default::default(),
            settling: Default::default(),
            pool: Default::default(),
        })
    }

    /// Build the backend and check that the daemon answers and supports what is needed.
    pub async fn connect(cfg: LxdConfig) -> Result<LxdBackend, BackendError> {
        let mut b = LxdBackend::new(cfg)?;
        let server = b.get("/1.0").await.map_err(|e| e.api("server"))?;
        let auth = server.get("auth").and_then(Value::as_str).unwrap_or("");
        if auth != "trusted" {
            return Err(BackendError::Api(format!(
                "LXD does not trust this client (auth: {auth:?}); add the client certificate with `lxc config trust add`"
            )));
        }
        let exts: Vec<&str> = server
            .get("api_extensions")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for needed in ["instances", "proxy"] {
            if !exts.contains(&needed) {
                return Err(BackendError::Api(format!(
                    "LXD lacks the API extension {needed:?} (LXD 4.0 or later is needed)"
                )));
            }
        }
        let default_exists = b.cfg.egress_network.is_none()
            && b.get(&format!("/1.0/networks/{}", config::DEFAULT_EGRESS_NETWORK))
                .await
                .is_ok();
        let choice = config::egress_choice(&b.cfg, default_exists).map_err(BackendError::Api)?;
        if b.cfg.egress_network.is_none() && choice.is_some() {
            let mut cfg = (*b.cfg).clone();
            cfg.egress_network = choice.clone();
            tracing::info!(
                network = config::DEFAULT_EGRESS_NETWORK,
                "LXD: workloads go on the dedicated bridge provider/lxd-setup.sh made"
            );
            b = LxdBackend::new(cfg)?;
        }
        match choice {
            Some(net) => {
                if !exts.contains(&"network_bridge_acl") {
                    return Err(BackendError::Api(
                        "backend.lxd.egress_network: this LXD has no network ACLs on bridges \
                         (API extension network_bridge_acl, LXD 5.0 or later)"
                            .into(),
                    ));
                }
                b.apply_egress(&net).await?;
            }
            None => tracing::warn!(
                "LXD: no egress policy (allow_unfiltered_egress): containers can reach the \
                 host's addresses, each other, link-local and private networks"
            ),
        }
        Ok(b)
    }

    /// `POST /1.0/instances`, serialised with other creates until LXD has recorded the new
    /// instance's id map when id maps are isolated (see [`IDMAP_LOCK`]).
    async fn post_instance(&self, name: &str, body: &Value) -> Result<Answer, LxdError> {
        let idmap_guard = match self.cfg.idmap_isolated {
            true => Some(IDMAP_LOCK.lock().await),
            false => None,
        };
        let posted = self
            .call(hyper::Method::POST, "/1.0/instances", Some(body))
            .await;
        if idmap_guard.is_some() && posted.is_ok() {
            self.wait_for_idmap(name).await;
        }
        posted
    }

    /// Wait (bounded) until LXD has recorded the new instance's id map.
    async fn wait_for_idmap(&self, name: &str) {
        let until = Instant::now() + self.ready_timeout();
        while Instant::now() < until {
            if let Ok(Some(i)) = self.instance(name).await {
                if i.get("config")
                    .and_then(|c| c.get("volatile.idmap.next"))
                    .is_some()
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Create or update the egress ACL and put it on `network` (see [`egress`]).
    async fn apply_egress(&self, network: &str) -> Result<(), BackendError> {
        let name = egress::acl_name(network);
        let deny = egress::denied(&self.cfg.egress_deny).map_err(BackendError::Api)?;
        let body = egress::acl_body(&name, &deny);
        let path = format!("/1.0/network-acls/{name}");
        let t = self.timeout();
        let mut put = body.clone();
        if let Some(o) = put.as_object_mut() {
            o.remove("name");
        }
        // Providers starting at once (or tests) apply the same ACL: a create that lost the race
        // becomes an update, and an ACL already as wanted is left alone.
        let r = match self.get(&path).await {
            Ok(have) if egress::acl_matches(&have, &put) => Ok(Value::Null),
            Ok(_) => {
                self.call_wait(hyper::Method::PUT, &path, Some(&put), t)
                    .await
            }
            Err(e) if e.is_not_found() => {
                match self
                    .call_wait(hyper::Method::POST, "/1.0/network-acls", Some(&body), t)
                    .await
                {
                    Err(e) if e.contains("already exists") => {
                        self.call_wait(hyper::Method::PUT, &path, Some(&put), t)
                            .await
                    }
                    r => r,
                }
            }
            Err(e) => Err(e),
        };
        r.map_err(|e| e.api("egress ACL"))?;
        if let Ok(net) = self.get(&format!("/1.0/networks/{network}")).await {
            if egress::network_has(&net, &name) {
                return Ok(());
            }
        }
        self.call_wait(
            hyper::Method::PATCH,
            &format!("/1.0/networks/{network}"),
            Some(&egress::network_patch(&name)),
            t,
        )
        .await
        .map_err(|e| e.api("egress network"))?;
        Ok(())
    }

    /// Whether the daemon has an image under `alias` (a name this program chose, not user input).
    pub async fn has_image(&self, alias: &str) -> bool {
        if !crate::validate::is_identifier(alias) {
            return false;
        }
        self.get(&self.path(&format!("/1.0/images/aliases/{alias}")))
            .await
            .is_ok()
    }

    /// The host SSH banners are read from.
    pub fn ssh_check_host(&self) -> &str {
        &self.check_host
    }

    /// The LXD instance behind workload `name` (a sold warm container keeps its own name).
    pub async fn instance_name(&self, name: &str) -> String {
        self.resolve(name).await
    }

    /// The `user.*` and other config keys of an instance (for tests and operators).
    pub async fn instance_config(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, BackendError> {
        if !is_valid_instance_name(name) {
            return Ok(None);
        }
        let instance = self.resolve(name).await;
        // A deadline recorded while the instance settles is part of its config.
        self.wait_settled(&instance).await;
        let Some(inst) = self
            .instance(&instance)
            .await
            .map_err(|e| e.api("inspect"))?
        else {
            return Ok(None);
        };
        let map = inst
            .get("config")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(map))
    }

    /// The root disk's storage pool: the configured one, else the profiles'.
    async fn root_pool(&self) -> Option<RootPool> {
        self.root_pool
            .get_or_init(|| async {
                match self.discover_root_pool().await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(
                            "LXD: cannot look up the root storage pool, disk sizes not applied: {}",
                            e.message()
                        );
                        // The configured pool is still used, only without a size.
                        self.cfg.storage_pool.clone().map(|name| RootPool {
                            name,
                            enforces_size: false,
                        })
                    }
                }
            })
            .await
            .clone()
    }

    async fn discover_root_pool(&self) -> Result<Option<RootPool>, LxdError> {
        let mut pool = self.cfg.storage_pool.clone();
        if pool.is_none() {
            for profile in &self.cfg.profiles {
                let p = self.get(&format!("/1.0/profiles/{profile}")).await?;
                if let Some(root) = p.get("devices").and_then(|d| d.get("root")) {
                    if let Some(name) = root.get("pool").and_then(Value::as_str) {
                        pool = Some(name.to_string());
                    }
                }
            }
        }
        let Some(name) = pool.filter(|p| is_safe_token(p)) else {
            return Ok(None);
        };
        let info = self.get(&format!("/1.0/storage-pools/{name}")).await?;
        let driver = info.get("driver").and_then(Value::as_str).unwrap_or("");
        // `dir` has no quotas here (only with ext4/xfs project quotas set up by hand).
        let enforces_size = matches!(driver, "btrfs" | "zfs" | "lvm" | "ceph" | "cephfs");
        Ok(Some(RootPool {
            name,
            enforces_size,
        }))
    }

    /// A cold create: one request with everything, then start, login and banner (see the module
    /// docs).
    async fn create_cold(
        &self,
        spec: &WorkloadSpec,
        port: u16,
        t0: Instant,
    ) -> Result<Endpoint, BackendError> {
        let nonce = new_nonce();
        let root = if spec.tier.disk_gb.is_some() || self.cfg.storage_pool.is_some() {
            self.root_pool().await
        } else {
            None
        };
        let body = create_body(spec, &self.cfg, &nonce, root.as_ref());
        let posted = self.post_instance(&spec.name, &body).await;
        let accepted = match posted {
            Ok(Answer::Async(op)) => op,
            Ok(Answer::Sync(_)) => {
                return Err(BackendError::Api(
                    "LXD create answered without an operation".into(),
                ))
            }
            // Refused outright (unknown image, name taken, bad config): nothing was made, and an
            // instance with this name that already exists is not ours to remove.
            Err(e) => {
                return Err(scrub(
                    map_create_error(&e, &spec.image, spec.host_port.unwrap_or_default()),
                    spec.ssh_password.expose(),
                ))
            }
        };
        let mut t_create = Instant::now();
        let result: Result<Vec<String>, BackendError> =
            match self.wait_operation(&accepted, self.ready_timeout()).await {
                Ok(_) => {
                    t_create = Instant::now();
                    self.provision(spec, &nonce).await
                }
                Err(e) => Err(map_create_error(
                    &e,
                    &spec.image,
                    spec.host_port.unwrap_or_default(),
                )),
            };
        match result {
            Ok(keys) => {
                tracing::info!(
                    name = %spec.name,
                    port = spec.host_port.unwrap_or_default(),
                    create_ms = (t_create - t0).as_millis() as u64,
                    total_ms = t0.elapsed().as_millis() as u64,
                    "LXD instance ready for SSH"
                );
                if let Ok(mut m) = self.host_keys.lock() {
                    m.insert(spec.name.clone(), keys);
                }
                self.map_name(&spec.name, &spec.name);
                Ok(Endpoint::on_provider_host(port))
            }
            Err(e) => {
                let e = scrub(e, spec.ssh_password.expose());
                tracing::warn!(name = %spec.name, "LXD create failed, removing the instance: {e}");
                if let Err(re) = self.remove(&spec.name).await {
                    tracing::error!(name = %spec.name, "LXD rollback failed: {}", re.message());
                }
                Err(e)
            }
        }
    }

    /// The steps of create after the instance exists. Any error here is followed by removal.
    /// Put the buyer's key and password where the user script reads them: root-only files
    /// written through the file API, so neither is ever on a command line or in an environment.
    /// Both files are written at once: each is a round trip to LXD's file server in the
    /// instance (20-40 ms measured), and a claim waits for them before the user script runs.
    async fn stage_login(&self, instance: &str, spec: &WorkloadSpec) -> Result<(), BackendError> {
        let key = async {
            if let Some(key) = &spec.ssh_public_key {
                let mut line = key.trim().as_bytes().to_vec();
                line.push(b'\n');
                self.push_file(instance, KEY_STAGING, &line, "0600")
                    .await
                    .map_err(|e| e.api("writing the public key"))?;
            }
            Ok::<(), BackendError>(())
        };
        let password = async {
            let password = spec.ssh_password.expose();
            if !password.is_empty() {
                self.push_file(instance, PASSWORD_STAGING, password.as_bytes(), "0600")
                    .await
                    .map_err(|e| e.api("writing the password"))?;
            }
            Ok::<(), BackendError>(())
        };
        tokio::try_join!(key, password).map(|_| ())
    }

    /// Start the instance (made without its SSH forward), then hand it over exactly as a sold
    /// warm member is ([`pool`]'s `hand_over`: the forward added without waiting for LXD's
    /// answer, the login staged and made, our banner awaited); the fingerprints of its host
    /// keys.
    ///
    /// Why this order, measured with the REST API on fresh containers (1 vCPU): a file pushed
    /// into the *stopped* instance made its start ~1 s slower in two runs of three (exec first
    /// accepted at 1.6-2.1 s instead of 0.6 s), and with the proxy device in the create body the
    /// start operation runs a fixed second longer, during which LXD answers file requests only
    /// at its end. Started bare, the instance runs in ~0.6-0.8 s and everything else overlaps.
    async fn provision(
        &self,
        spec: &WorkloadSpec,
        nonce: &str,
    ) -> Result<Vec<String>, BackendError> {
        let name = spec.name.as_str();
        let port = spec.host_port.unwrap_or_default();
        let deadline = Instant::now() + self.ready_timeout();
        let t_start = Instant::now();
        self.change_state(name, json!({"action": "start"}), self.ready_timeout())
            .await
            .map_err(|e| map_start_error(&e, port, "start"))?;
        let start_ms = t_start.elapsed().as_millis() as u64;
        let (banner, user_ms, banner_ms) =
            self.hand_over(name, spec, port, nonce, deadline).await?;
        // The host keys as the instance's sshd presents them on the port (see
        // `banner::presented_host_keys`); the key files only when the banner is not provably ours.
        let presented = match banner {
            Banner::Ours => presented_host_keys(&self.check_host, port).await,
            Banner::Anonymous => None,
        };
        let keys = match presented {
            Some(keys) => keys,
            None => self.read_host_keys(name).await,
        };
        tracing::debug!(
            name,
            start_ms,
            user_ms,
            banner_ms,
            keys_ms = t_start.elapsed().as_millis() as u64,
            ?banner,
            "LXD instance started, user made, SSH answering"
        );
        Ok(keys)
    }
}

#[async_trait]
impl Backend for LxdBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Lxd
    }

    fn host_key_fingerprints(&self, name: &str) -> Vec<String> {
        // Taken once, by the spawn answer (which is stored for replays), so the map stays small.
        self.host_keys
            .lock()
            .ok()
            .and_then(|mut m| m.remove(name))
            .unwrap_or_default()
    }

    async fn create(&self, spec: &WorkloadSpec) -> Result<Endpoint, BackendError> {
        let t0 = Instant::now();
        let Some(port) = spec.host_port else {
            return Err(BackendError::Api(
                "LXD needs a host port reserved by the core".into(),
            ));
        };
        if !is_valid_instance_name(&spec.name) {
            return Err(BackendError::Api(format!(
                "invalid instance name {:?}",
                spec.name
            )));
        }
        check_username(&spec.ssh_username)?;
        check_password(spec.ssh_password.expose())?;
        if let Some(k) = &spec.ssh_public_key {
            if k.contains(['\n', '\r', '\0']) {
                return Err(BackendError::Api(
                    "the SSH public key must be a single line".into(),
                ));
            }
        }
        if self.local {
            // Cheap and precise: a taken port fails before anything is made.
            if let Ok(ip) = self.cfg.ssh_listen_address.parse::<std::net::IpAddr>() {
                if let Err(e) =
                    std::net::TcpListener::bind((ip, spec.host_port.unwrap_or_default()))
                {
                    if e.kind() == std::io::ErrorKind::AddrInUse {
                        return Err(BackendError::Capacity(format!(
                            "host port {} is already in use",
                            spec.host_port.unwrap_or_default()
                        )));
                    }
                }
            }
        }

        if let Some(m) = self.take_current_member(&spec.tier, &spec.image).await {
            match self.claim(&m, spec, port).await {
                Ok(()) => {
                    tracing::info!(
                        name = %spec.name,
                        instance = %m.instance,
                        port,
                        total_ms = t0.elapsed().as_millis() as u64,
                        "LXD warm container sold, ready for SSH"
                    );
                    if let Ok(mut k) = self.host_keys.lock() {
                        k.insert(spec.name.clone(), m.host_keys.clone());
                    }
                    return Ok(Endpoint::on_provider_host(port));
                }
                Err(e) => {
                    let e = scrub(e, spec.ssh_password.expose());
                    tracing::warn!(name = %spec.name, instance = %m.instance, "LXD warm claim failed, removing the container: {e}");
                    self.wait_settled(&m.instance).await;
                    if let Err(re) = self.remove(&m.instance).await {
                        // It may hold the buyer's login and carries the workload's mark: no
                        // second instance under that name. The core refunds, and its destroy
                        // finds this one by the mark (the name map is kept for that).
                        tracing::error!(instance = %m.instance, "LXD rollback failed: {}", re.message());
                        return Err(e);
                    }
                    self.forget_name(&spec.name);
                    // A taken port is the buyer's answer; anything else may still work cold.
                    if matches!(e, BackendError::Capacity(_)) {
                        return Err(e);
                    }
                }
            }
        }
        self.create_cold(spec, port, t0).await
    }

    async fn extend(&self, name: &str, expires_at: u64) -> Result<(), BackendError> {
        if !is_valid_instance_name(name) {
            return Err(BackendError::NotFound(name.to_string()));
        }
        let inst = self.resolve(name).await;
        if self.settle_later(&inst, expires_at) {
            return Ok(());
        }
        let body = json!({ "config": { KEY_EXPIRES_AT: expires_at.to_string() } });
        let path = format!("/1.0/instances/{inst}");
        // Right after create, LXD may still be finishing the start operation create did not wait
        // for (see the module docs) and refuses updates until then: retry while it is busy.
        let deadline = Instant::now() + self.timeout();
        loop {
            match self
                .call_wait(hyper::Method::PATCH, &path, Some(&body), self.timeout())
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is_not_found() => return Err(BackendError::NotFound(name.to_string())),
                Err(e) if e.is_busy() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => return Err(e.api("extend")),
            }
        }
    }

    async fn stop(&self, name: &str) -> Result<(), BackendError> {
        if !is_valid_instance_name(name) {
            return Err(BackendError::NotFound(name.to_string()));
        }
        let inst = self.resolve(name).await;
        self.wait_settled(&inst).await;
        let grace = self.cfg.stop_timeout_seconds;
        let busy_until = Instant::now() + self.timeout();
        loop {
            let clean = self.change_state(
                &inst,
                json!({"action": "stop", "timeout": grace, "force": false}),
                Duration::from_secs(grace + 5),
            );
            match clean.await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_not_found() => return Err(BackendError::NotFound(name.to_string())),
                Err(e) if e.is_busy() && Instant::now() < busy_until => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    tracing::info!(name, "clean stop did not finish ({}); forcing", e.message());
                    break;
                }
            }
        }
        let deadline = Instant::now() + self.timeout();
        loop {
            match self
                .change_state(
                    &inst,
                    json!({"action": "stop", "force": true}),
                    self.timeout(),
                )
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if e.is_not_found() => return Err(BackendError::NotFound(name.to_string())),
                Err(e) if e.is_busy() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => return Err(e.api("stop")),
            }
        }
    }

    async fn resume(&self, name: &str) -> Result<Endpoint, BackendError> {
        if !is_valid_instance_name(name) {
            return Err(BackendError::NotFound(name.to_string()));
        }
        let instance = self.resolve(name).await;
        self.wait_settled(&instance).await;
        let deadline = Instant::now() + self.ready_timeout();
        loop {
            match self
                .change_state(&instance, json!({"action": "start"}), self.ready_timeout())
                .await
            {
                Ok(()) => break,
                Err(e) if e.is_not_found() => return Err(BackendError::NotFound(name.to_string())),
                Err(e) if e.is_busy() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => return Err(map_start_error(&e, 0, "resume")),
            }
        }
        let inst = self
            .instance(&instance)
            .await
            .map_err(|e| e.api("resume"))?
            .ok_or_else(|| BackendError::NotFound(name.to_string()))?;
        let port = ssh_port_of(&inst)
            .ok_or_else(|| BackendError::Api(format!("instance {name} has no SSH proxy device")))?;
        // The start operation succeeded, so the proxy device holds the port: any banner is ours.
        wait_for_ssh(
            &self.check_host,
            port,
            config_value(&inst, KEY_NONCE),
            deadline,
        )
        .await
        .map(|_| Endpoint::on_provider_host(port))
    }

    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        if !is_valid_instance_name(name) {
            return Ok(());
        }
        let inst = self.resolve(name).await;
        self.wait_settled(&inst).await;
        self.remove(&inst).await.map_err(|e| e.api("destroy"))?;
        self.forget_name(name);
        Ok(())
    }

    async fn inspect(&self, name: &str) -> Result<Option<WorkloadInfo>, BackendError> {
        if !is_valid_instance_name(name) {
            return Ok(None);
        }
        let inst = self.resolve(name).await;
        Ok(self
            .instance(&inst)
            .await
            .map_err(|e| e.api("inspect"))?
            .as_ref()
            .and_then(workload_info))
    }

    async fn list(&self, provider_id: &str) -> Result<Vec<WorkloadInfo>, BackendError> {
        let all = self
            .get("/1.0/instances?recursion=1")
            .await
            .map_err(|e| e.api("list"))?;
        let items = all
            .as_array()
            .ok_or_else(|| BackendError::Api("LXD list: not an array".into()))?;
        let mine: Vec<(WorkloadInfo, &str)> = items
            .iter()
            .filter(|i| config_value(i, KEY_PROVIDER) == Some(provider_id))
            .filter_map(|i| Some((workload_info(i)?, i.get("name")?.as_str()?)))
            .collect();
        for (w, inst) in &mine {
            self.map_name(&w.name, inst);
        }
        Ok(mine.into_iter().map(|(w, _)| w).collect())
    }

    async fn start_warm_pool(&self, provider_id: &str, tiers: &[Tier], images: &[String]) {
        self.start_pool(provider_id, tiers, images).await
    }

    async fn stop_warm_pool(&self) {
        self.stop_pool().await
    }
}

// ---------------------------------------------------------------------------------------------
// Tests of the pure parts (the daemon-backed tests live in tests/lxd.rs)
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests;
