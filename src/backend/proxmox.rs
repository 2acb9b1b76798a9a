//! Proxmox VE backend: LXC containers or QEMU VMs made through the PVE REST API.
//!
//! Why it looks the way it does:
//! - **Only the API's own fields carry credentials.** LXC gets `password` and `ssh-public-keys`
//!   (with hyphens: the underscore spelling is an unknown parameter and a 400); QEMU gets
//!   cloud-init's `ciuser`, `cipassword` and `sshkeys` (percent-encoded inside the value, then
//!   form-encoded again on the wire). No buyer string is ever put into a command. PVE sets an
//!   LXC guest's credentials for root only, so the login user's name rides on an extra key line
//!   for the template's constant first-boot script ([`LOGIN_MARK`]).
//! - **Every mutation is a task.** The POST answers with a UPID; the backend polls it until it
//!   stops and treats any exit status but `OK` / `WARNINGS: N` as a failure. A create that fails
//!   anywhere — inside the task (a missing template), on start, or because SSH never answers — is
//!   rolled back (stop, wait until stopped, destroy with purge; retried while a task that
//!   outlived our wait still holds the guest's lock), so a failed create leaves nothing behind.
//! - **vmids race.** Another client can take a vmid between our look and our create; PVE then
//!   answers `CT 100 already exists on node …` and the backend tries the next free one.
//! - **Reaching SSH.** PVE has no port-forward API. `network.mode` says how buyers get in:
//!   `static` hands out addresses from a pool (SSH at address:22), `dhcp` reads the guest's
//!   address from the API, `nat` keeps nftables DNAT rules on the PVE host from a core-reserved
//!   host port to the guest ([`nat`]). `create` returns that endpoint.
//! - **Ownership by tag.** Each guest carries the tags `paygress` and `paygress-<provider id>`
//!   (and, in NAT mode, `paygress-port-<host port>`), so after a restart `list` finds exactly this
//!   provider's guests for re-adoption or orphan removal, and NAT rules are rebuilt from them.
//! - **Limits from the tier.** `cores` (whole CPUs, rounded up) and `cpulimit` (the fractional
//!   share), `memory`, `swap`, and the root disk from `disk_gb`; containers are unprivileged and
//!   get nesting only when the operator enables it.

pub mod api;
mod config;
pub mod nat;

pub use self::config::{GuestKind, NetworkConfig, NetworkMode, ProxmoxConfig};

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::Mutex;

use self::api::{Api, ApiError, Form};
use self::nat::{Forward, Nat};
use super::{
    Backend, BackendError, BackendKind, Endpoint, Isolation, WorkloadInfo, WorkloadSpec,
    WorkloadState,
};

/// Tag every Paygress guest carries.
const TAG: &str = "paygress";
/// How many vmids a create tries when others keep taking them.
const VMID_TRIES: usize = 8;

/// What the backend remembers of one of its guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Guest {
    vmid: u32,
    /// Pool address (`static`, `nat`).
    addr: Option<Ipv4Addr>,
    /// DNAT'd host port (`nat`).
    host_port: Option<u16>,
}

/// The Proxmox VE backend.
pub struct ProxmoxBackend {
    cfg: ProxmoxConfig,
    api: Api,
    nat: Option<Nat>,
    guests: StdMutex<HashMap<String, Guest>>,
    /// Held while a vmid and an address are chosen and the create is submitted, so two creates
    /// never pick the same ones (the task and the boot run outside it).
    alloc: Mutex<()>,
    /// Held from the snapshot of the forwards to the end of `nft -f`: two syncs at once could
    /// otherwise commit an older snapshot last and drop another guest's rule.
    nat_sync: Mutex<()>,
}

impl std::fmt::Debug for ProxmoxBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxmoxBackend")
            .field("url", &self.cfg.url)
            .field("node", &self.cfg.node)
            .field("kind", &self.cfg.kind)
            .finish()
    }
}

fn api_err(e: ApiError) -> BackendError {
    BackendError::Api(e.to_string())
}

impl ProxmoxBackend {
    /// Check the config, then the server: certificate, token, node.
    pub async fn connect(cfg: ProxmoxConfig) -> Result<ProxmoxBackend, BackendError> {
        let trust = cfg.validate().map_err(BackendError::Api)?;
        let secret = config::read_secret(&cfg.token_secret_file).map_err(BackendError::Api)?;
        let api = Api::new(&cfg.url, &cfg.token_id, &secret, &trust)
            .map_err(|e| BackendError::Api(format!("backend.proxmox.{e}")))?;
        let nat = match cfg.network.mode {
            NetworkMode::Nat => Some(
                Nat::new(
                    cfg.network.nft_command.clone(),
                    cfg.network.nft_table.clone(),
                )
                .map_err(BackendError::Api)?,
            ),
            _ => None,
        };
        let b = ProxmoxBackend {
            cfg,
            api,
            nat,
            guests: StdMutex::new(HashMap::new()),
            alloc: Mutex::new(()),
            nat_sync: Mutex::new(()),
        };
        // Certificate and token first, then the node.
        let nodes = b.api.get("/nodes").await.map_err(api_err)?;
        let found = nodes
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n["node"].as_str() == Some(&b.cfg.node)));
        if !found {
            return Err(BackendError::Api(format!(
                "backend.proxmox.node: {:?} is not a node of this cluster",
                b.cfg.node
            )));
        }
        Ok(b)
    }

    fn kind_path(&self) -> &'static str {
        match self.cfg.kind {
            GuestKind::Lxc => "lxc",
            GuestKind::Qemu => "qemu",
        }
    }

    fn guest_path(&self, vmid: u32) -> String {
        format!(
            "/nodes/{}/{}/{vmid}",
            api::segment(&self.cfg.node),
            self.kind_path()
        )
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.task_timeout_seconds)
    }

    /// Run a mutation and wait for its task.
    async fn task(&self, answer: Result<Value, ApiError>) -> Result<(), ApiError> {
        let upid = api::upid(&answer?)?;
        self.api
            .wait_task(&self.cfg.node, &upid, self.timeout())
            .await
    }

    fn remember(&self, name: &str, g: Option<Guest>) {
        let mut m = self.guests.lock().unwrap_or_else(|e| e.into_inner());
        match g {
            Some(g) => {
                m.insert(name.to_string(), g);
            }
            None => {
                m.remove(name);
            }
        }
    }

    fn known(&self, name: &str) -> Option<Guest> {
        self.guests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }

    /// The guests of the kind this backend makes, as PVE lists them.
    async fn listing(&self) -> Result<Vec<Value>, BackendError> {
        let v = self
            .api
            .get(&format!(
                "/nodes/{}/{}",
                api::segment(&self.cfg.node),
                self.kind_path()
            ))
            .await
            .map_err(api_err)?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Every vmid in use on the cluster (guests of both kinds, on every node).
    async fn used_vmids(&self) -> Result<Vec<u32>, BackendError> {
        let v = self
            .api
            .get("/cluster/resources?type=vm")
            .await
            .map_err(api_err)?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|g| api::lenient_u64(&g["vmid"]))
                    .filter_map(|n| u32::try_from(n).ok())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Find a guest by workload name: from memory, else from the node's list (after a restart).
    /// A guest counts when it carries the Paygress tag, or — a QEMU clone whose config (and so
    /// its tags) was never written because the provider stopped in between — when its vmid lies
    /// in the backend's own range.
    async fn find(&self, name: &str) -> Result<Option<Guest>, BackendError> {
        if let Some(g) = self.known(name) {
            return Ok(Some(g));
        }
        for g in self.listing().await? {
            let Some(vmid) = api::lenient_u64(&g["vmid"]).and_then(|n| u32::try_from(n).ok())
            else {
                continue;
            };
            let ours = tags(&g).iter().any(|t| t == TAG)
                || (self.cfg.vmid_min..=self.cfg.vmid_max).contains(&vmid);
            if g["name"].as_str() == Some(name) && ours {
                let guest = self.read_guest(vmid, &g).await?;
                self.remember(name, Some(guest));
                return Ok(Some(guest));
            }
        }
        Ok(None)
    }

    /// Rebuild what we remember of a guest from its config and tags.
    async fn read_guest(&self, vmid: u32, listed: &Value) -> Result<Guest, BackendError> {
        let host_port = tags(listed)
            .iter()
            .find_map(|t| t.strip_prefix("paygress-port-")?.parse().ok());
        let addr = if self.cfg.network.mode == NetworkMode::Dhcp {
            None
        } else {
            let conf = self
                .api
                .get(&format!("{}/config", self.guest_path(vmid)))
                .await
                .map_err(api_err)?;
            let key = match self.cfg.kind {
                GuestKind::Lxc => "net0",
                GuestKind::Qemu => "ipconfig0",
            };
            conf[key].as_str().and_then(static_ip)
        };
        Ok(Guest {
            vmid,
            addr,
            host_port,
        })
    }

    /// The first free address of the pool.
    fn free_address(&self) -> Result<Ipv4Addr, BackendError> {
        let (Some(a), Some(b)) = (self.cfg.network.pool_start, self.cfg.network.pool_end) else {
            return Err(BackendError::Api("no address pool configured".into()));
        };
        let taken: Vec<Ipv4Addr> = self
            .guests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(|g| g.addr)
            .collect();
        (u32::from(a)..=u32::from(b))
            .map(Ipv4Addr::from)
            .find(|ip| !taken.contains(ip))
            .ok_or_else(|| BackendError::Capacity("the guest address pool is exhausted".into()))
    }

    /// Write the NAT table from every guest we know that has a forward.
    async fn sync_nat(&self) -> Result<(), BackendError> {
        let Some(nat) = &self.nat else {
            return Ok(());
        };
        let _one_at_a_time = self.nat_sync.lock().await;
        let mut forwards: Vec<Forward> = self
            .guests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(|g| {
                Some(Forward {
                    host_port: g.host_port?,
                    guest: g.addr?,
                    guest_port: self.cfg.network.ssh_port,
                })
            })
            .collect();
        forwards.sort_by_key(|f| f.host_port);
        nat.sync(&forwards).await.map_err(BackendError::Api)
    }

    /// The tags of a new guest.
    fn tags_for(&self, spec: &WorkloadSpec) -> String {
        let mut t = format!("{TAG};{TAG}-{}", spec.provider_id);
        if let (NetworkMode::Nat, Some(p)) = (self.cfg.network.mode, spec.host_port) {
            t.push_str(&format!(";{TAG}-port-{p}"));
        }
        t
    }

    /// The `ip=` part of a guest's network config.
    fn ip_config(&self, addr: Option<Ipv4Addr>) -> String {
        match addr {
            Some(a) => {
                let mut s = format!("ip={a}/{}", self.cfg.network.prefix_len);
                if let Some(gw) = self.cfg.network.gateway {
                    s.push_str(&format!(",gw={gw}"));
                }
                s
            }
            None => "ip=dhcp".into(),
        }
    }

    /// The request that makes an LXC guest (sent as is; tests check its bytes). `keys` is the
    /// `ssh-public-keys` value ([`lxc_keys`]).
    pub fn lxc_create_form(
        &self,
        spec: &WorkloadSpec,
        vmid: u32,
        ostemplate: &str,
        addr: Option<Ipv4Addr>,
        keys: &str,
    ) -> Form {
        let t = &spec.tier;
        let disk = t.disk_gb.unwrap_or(self.cfg.default_disk_gb);
        let mut f = Form::new()
            .set("vmid", vmid)
            .set("ostemplate", ostemplate)
            .set("hostname", &spec.name)
            .set("storage", &self.cfg.storage)
            .set("rootfs", format!("{}:{disk}", self.cfg.storage))
            .set("cores", cores(t.cpu_millicores))
            .set("cpulimit", cpulimit(t.cpu_millicores))
            .set("memory", t.memory_mb)
            .set("swap", self.cfg.swap_mb)
            .set(
                "net0",
                format!(
                    "name=eth0,bridge={},{}",
                    self.cfg.bridge,
                    self.ip_config(addr)
                ),
            )
            .flag("unprivileged", true)
            .set("password", spec.ssh_password.expose())
            .set("ssh-public-keys", keys);
        if self.cfg.nesting {
            f = f.set("features", "nesting=1");
        }
        f.set("tags", self.tags_for(spec)).set(
            "description",
            format!(
                "Paygress workload {} (provider {})",
                spec.name, spec.provider_id
            ),
        )
    }

    /// The config a QEMU clone gets (cloud-init credentials and the tier's limits).
    pub fn qemu_config_form(&self, spec: &WorkloadSpec, addr: Option<Ipv4Addr>) -> Form {
        let t = &spec.tier;
        let mut f = Form::new()
            .set("cores", cores(t.cpu_millicores))
            .set("cpulimit", cpulimit(t.cpu_millicores))
            .set("memory", t.memory_mb)
            .set("net0", format!("virtio,bridge={}", self.cfg.bridge))
            .set("ipconfig0", self.ip_config(addr))
            .set("ciuser", &spec.ssh_username)
            .set("cipassword", spec.ssh_password.expose());
        if let Some(k) = &spec.ssh_public_key {
            f = f.set("sshkeys", api::uri_component(k));
        }
        f.set("tags", self.tags_for(spec)).set(
            "description",
            format!(
                "Paygress workload {} (provider {})",
                spec.name, spec.provider_id
            ),
        )
    }

    /// Ask PVE to make the guest under a free vmid, retrying when another client takes it
    /// first; returns the vmid and the task's UPID. Nothing exists on the node when it fails.
    async fn submit(
        &self,
        spec: &WorkloadSpec,
        template: &str,
        addr: Option<Ipv4Addr>,
    ) -> Result<(u32, String), BackendError> {
        let keys = lxc_keys(spec)?;
        let mut used = self.used_vmids().await?;
        used.extend(
            self.guests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .map(|g| g.vmid),
        );
        let node = api::segment(&self.cfg.node);
        for _ in 0..VMID_TRIES {
            let Some(vmid) = (self.cfg.vmid_min..=self.cfg.vmid_max).find(|v| !used.contains(v))
            else {
                return Err(BackendError::Capacity(
                    "no free vmid in backend.proxmox.vmid_min..=vmid_max".into(),
                ));
            };
            let answer = match self.cfg.kind {
                GuestKind::Lxc => {
                    self.api
                        .post(
                            &format!("/nodes/{node}/lxc"),
                            &self.lxc_create_form(spec, vmid, template, addr, &keys),
                        )
                        .await
                }
                GuestKind::Qemu => {
                    self.api
                        .post(
                            &format!("/nodes/{node}/qemu/{template}/clone"),
                            &Form::new()
                                .set("newid", vmid)
                                .set("name", &spec.name)
                                .flag("full", false),
                        )
                        .await
                }
            };
            match answer {
                Err(e) if is_taken(&e) => {
                    tracing::info!(vmid, "vmid taken meanwhile; trying the next one");
                    used.push(vmid);
                }
                Err(e) => return Err(api_err(e)),
                Ok(v) => match api::upid(&v) {
                    Ok(upid) => return Ok((vmid, upid)),
                    // PVE took the request, so the guest may be in the making: remove it.
                    Err(e) => {
                        if let Err(r) = self.remove_vmid(vmid).await {
                            tracing::error!(vmid, "removing a guest whose task is unknown: {r}");
                        }
                        return Err(api_err(e));
                    }
                },
            }
        }
        Err(BackendError::Capacity(
            "vmids kept being taken by other clients".into(),
        ))
    }

    /// Wait for the create task, then (QEMU) configure the clone: cloud-init and limits.
    async fn finish(
        &self,
        spec: &WorkloadSpec,
        template: &str,
        g: Guest,
        upid: &str,
    ) -> Result<(), BackendError> {
        if let Err(e) = self
            .api
            .wait_task(&self.cfg.node, upid, self.timeout())
            .await
        {
            let msg = e.message();
            return Err(
                if msg.contains("does not exist") && msg.contains(template) {
                    BackendError::ImageMissing(format!("{} ({msg})", spec.image))
                } else {
                    api_err(e)
                },
            );
        }
        if self.cfg.kind == GuestKind::Qemu {
            let path = self.guest_path(g.vmid);
            self.api
                .put(
                    &format!("{path}/config"),
                    &self.qemu_config_form(spec, g.addr),
                )
                .await
                .map_err(api_err)?;
            if let Some(gb) = spec.tier.disk_gb {
                let r = self
                    .api
                    .put(
                        &format!("{path}/resize"),
                        &Form::new()
                            .set("disk", &self.cfg.qemu_disk)
                            .set("size", format!("{gb}G")),
                    )
                    .await;
                self.task(r).await.map_err(api_err)?;
            }
        }
        Ok(())
    }

    /// Start a guest and wait until its sshd sends its banner; the endpoint buyers use.
    async fn start_and_wait(&self, name: &str, g: Guest) -> Result<Endpoint, BackendError> {
        let path = self.guest_path(g.vmid);
        match self
            .task(
                self.api
                    .post(&format!("{path}/status/start"), &Form::new())
                    .await,
            )
            .await
        {
            Ok(()) => {}
            Err(e) if e.message().contains("already running") => {}
            Err(e) => return Err(api_err(e)),
        }
        let deadline = Instant::now() + Duration::from_secs(self.cfg.ready_timeout_seconds);
        let addr = match g.addr {
            Some(a) => a,
            None => self.dhcp_address(g.vmid, deadline).await?,
        };
        let port = self.cfg.network.ssh_port;
        let mut delay = Duration::from_millis(100);
        loop {
            if ssh_banner(addr, port).await {
                break;
            }
            if Instant::now() + delay > deadline {
                return Err(BackendError::NotReady(format!(
                    "{name}: SSH at {addr}:{port} did not answer within {} s",
                    self.cfg.ready_timeout_seconds
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        Ok(match (self.cfg.network.mode, g.host_port) {
            (NetworkMode::Nat, Some(p)) => Endpoint::on_provider_host(p),
            _ => Endpoint {
                host: Some(addr.to_string()),
                port,
            },
        })
    }

    /// The guest's DHCP address, read from the API once it has one.
    async fn dhcp_address(&self, vmid: u32, deadline: Instant) -> Result<Ipv4Addr, BackendError> {
        let path = match self.cfg.kind {
            GuestKind::Lxc => format!("{}/interfaces", self.guest_path(vmid)),
            GuestKind::Qemu => format!("{}/agent/network-get-interfaces", self.guest_path(vmid)),
        };
        loop {
            if let Ok(v) = self.api.get(&path).await {
                let list = v.get("result").unwrap_or(&v);
                if let Some(a) = first_guest_ipv4(list) {
                    return Ok(a);
                }
            }
            if Instant::now() > deadline {
                return Err(BackendError::NotReady(format!(
                    "guest {vmid} reported no IPv4 address"
                )));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Stop a guest and wait until PVE reports it stopped (the stop task can end first).
    async fn stop_vmid(&self, vmid: u32) -> Result<(), BackendError> {
        let path = self.guest_path(vmid);
        match self
            .task(
                self.api
                    .post(&format!("{path}/status/stop"), &Form::new())
                    .await,
            )
            .await
        {
            Ok(()) => {}
            Err(e) if e.message().contains("not running") => {}
            Err(e) => return Err(api_err(e)),
        }
        let deadline = Instant::now() + self.timeout();
        loop {
            let st = self
                .api
                .get(&format!("{path}/status/current"))
                .await
                .map_err(api_err)?;
            if st["status"].as_str() == Some("stopped") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BackendError::Api(format!("guest {vmid} did not stop")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stop and destroy (purge) a guest; a missing one is fine. While another task holds the
    /// guest's lock (a create that outlived our wait), keep trying for a while: the guest must
    /// not outlive a failed create.
    async fn remove_vmid(&self, vmid: u32) -> Result<(), BackendError> {
        let deadline = Instant::now() + self.timeout() * 2 + Duration::from_secs(30);
        let mut delay = Duration::from_millis(200);
        loop {
            match self.remove_once(vmid).await {
                Err(BackendError::Api(m)) if is_locked(&m) && Instant::now() + delay < deadline => {
                    tracing::info!(
                        vmid,
                        "guest is locked by another task; retrying its removal"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    async fn remove_once(&self, vmid: u32) -> Result<(), BackendError> {
        match self.stop_vmid(vmid).await {
            Ok(()) => {}
            Err(BackendError::Api(m)) if m.contains("does not exist") => return Ok(()),
            Err(e) => return Err(e),
        }
        let q = match self.cfg.kind {
            GuestKind::Lxc => "purge=1&force=1",
            GuestKind::Qemu => "purge=1&destroy-unreferenced-disks=1",
        };
        match self
            .task(
                self.api
                    .delete(&format!("{}?{q}", self.guest_path(vmid)))
                    .await,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.message().contains("does not exist") => Ok(()),
            Err(e) => Err(api_err(e)),
        }
    }
}

#[async_trait]
impl Backend for ProxmoxBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Proxmox
    }

    fn isolation(&self) -> Isolation {
        match self.cfg.kind {
            GuestKind::Lxc => Isolation::Container,
            GuestKind::Qemu => Isolation::Vm,
        }
    }

    fn host_port_from_core(&self) -> bool {
        self.cfg.network.mode == NetworkMode::Nat
    }

    async fn create(&self, spec: &WorkloadSpec) -> Result<Endpoint, BackendError> {
        let Some(template) = self.cfg.templates.get(&spec.image).cloned() else {
            return Err(BackendError::ImageMissing(format!(
                "{}: no backend.proxmox.templates entry",
                spec.image
            )));
        };
        if self.cfg.network.mode == NetworkMode::Nat && spec.host_port.is_none() {
            return Err(BackendError::Api(
                "nat mode needs a host port from the core".into(),
            ));
        }
        // Choosing the address and the vmid and asking PVE for the guest happen one create at
        // a time; the long part (the task, the boot) runs concurrently.
        let host_port = spec.host_port.filter(|_| self.nat.is_some());
        let (guest, upid) = {
            let _alloc = self.alloc.lock().await;
            let addr = match self.cfg.network.mode {
                NetworkMode::Dhcp => None,
                _ => Some(self.free_address()?),
            };
            let (vmid, upid) = self.submit(spec, &template, addr).await?;
            let guest = Guest {
                vmid,
                addr,
                host_port,
            };
            self.remember(&spec.name, Some(guest));
            (guest, upid)
        };
        let result = async {
            self.finish(spec, &template, guest, &upid).await?;
            self.sync_nat().await?;
            self.start_and_wait(&spec.name, guest).await
        }
        .await;
        match result {
            Ok(ep) => {
                tracing::info!(name = %spec.name, vmid = guest.vmid, "proxmox guest ready");
                Ok(ep)
            }
            Err(e) => {
                match self.remove_vmid(guest.vmid).await {
                    // Gone: its vmid and address are free again.
                    Ok(()) => self.remember(&spec.name, None),
                    // Still there: kept in mind (its address stays taken), so the core's
                    // destroy of this name finds and removes it later.
                    Err(r) => tracing::error!(
                        vmid = guest.vmid,
                        "rollback of a failed create failed: {r}"
                    ),
                }
                if let Err(r) = self.sync_nat().await {
                    tracing::error!("NAT table after a rollback: {r}");
                }
                Err(e)
            }
        }
    }

    async fn extend(&self, name: &str, _expires_at: u64) -> Result<(), BackendError> {
        // The core's reaper enforces deadlines; the guest only has to exist.
        match self.find(name).await? {
            Some(_) => Ok(()),
            None => Err(BackendError::NotFound(name.to_string())),
        }
    }

    async fn stop(&self, name: &str) -> Result<(), BackendError> {
        let g = self
            .find(name)
            .await?
            .ok_or_else(|| BackendError::NotFound(name.to_string()))?;
        self.stop_vmid(g.vmid).await
    }

    async fn resume(&self, name: &str) -> Result<Endpoint, BackendError> {
        let g = self
            .find(name)
            .await?
            .ok_or_else(|| BackendError::NotFound(name.to_string()))?;
        self.sync_nat().await?;
        self.start_and_wait(name, g).await
    }

    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        let Some(g) = self.find(name).await? else {
            return Ok(());
        };
        self.remove_vmid(g.vmid).await?;
        self.remember(name, None);
        self.sync_nat().await
    }

    async fn inspect(&self, name: &str) -> Result<Option<WorkloadInfo>, BackendError> {
        let Some(g) = self.find(name).await? else {
            return Ok(None);
        };
        let st = match self
            .api
            .get(&format!("{}/status/current", self.guest_path(g.vmid)))
            .await
        {
            Ok(v) => v,
            Err(e) if e.message().contains("does not exist") => {
                self.remember(name, None);
                return Ok(None);
            }
            Err(e) => return Err(api_err(e)),
        };
        Ok(Some(WorkloadInfo {
            name: name.to_string(),
            state: state_of(&st),
            endpoint: self.endpoint_of(&g),
        }))
    }

    async fn list(&self, provider_id: &str) -> Result<Vec<WorkloadInfo>, BackendError> {
        let owner = format!("{TAG}-{provider_id}");
        let mut out = Vec::new();
        for g in self.listing().await? {
            if !tags(&g).contains(&owner) {
                continue;
            }
            let (Some(name), Some(vmid)) = (
                g["name"].as_str(),
                api::lenient_u64(&g["vmid"]).and_then(|n| u32::try_from(n).ok()),
            ) else {
                continue;
            };
            let guest = self.read_guest(vmid, &g).await?;
            self.remember(name, Some(guest));
            out.push(WorkloadInfo {
                name: name.to_string(),
                state: state_of(&g),
                endpoint: self.endpoint_of(&guest),
            });
        }
        // Re-adoption writes the NAT rules again (after a host reboot they are gone).
        self.sync_nat().await?;
        Ok(out)
    }
}

impl ProxmoxBackend {
    fn endpoint_of(&self, g: &Guest) -> Option<Endpoint> {
        match (self.cfg.network.mode, g.host_port, g.addr) {
            (NetworkMode::Nat, Some(p), _) => Some(Endpoint::on_provider_host(p)),
            (NetworkMode::Static, _, Some(a)) => Some(Endpoint {
                host: Some(a.to_string()),
                port: self.cfg.network.ssh_port,
            }),
            _ => None,
        }
    }
}

/// Whether an SSH server answers at `addr:port` (its banner, not just an open port).
async fn ssh_banner(addr: Ipv4Addr, port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let probe = async {
        let mut s = tokio::net::TcpStream::connect((addr, port)).await.ok()?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"SSH-")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), probe).await,
        Ok(Some(true))
    )
}

/// The comment that names the login user on the marker key line of an LXC guest.
pub const LOGIN_MARK: &str = "paygress-user=";

/// An LXC guest's `ssh-public-keys`: the buyer's key (if any) and a marker line — a fresh key
/// whose private half is thrown away, commented `paygress-user=NAME`. PVE's API installs keys
/// and password for root only; the template's constant first-boot script
/// (`provider/proxmox/paygress-login.sh`) reads the name from that line, creates the user with
/// root's keys and password hash, and locks root. PVE validates every line with ssh-keygen, so
/// the name rides in a real key's comment.
pub fn lxc_keys(spec: &WorkloadSpec) -> Result<String, BackendError> {
    let key =
        russh::keys::PrivateKey::random(&mut rand::rngs::OsRng, russh::keys::Algorithm::Ed25519)
            .map_err(|e| BackendError::Api(format!("cannot make the marker key: {e}")))?;
    let mut public = key.public_key().clone();
    public.set_comment(format!("{LOGIN_MARK}{}", spec.ssh_username));
    let marker = public
        .to_openssh()
        .map_err(|e| BackendError::Api(format!("cannot encode the marker key: {e}")))?;
    // The marker first, and the buyer's key without its comment: a comment is the buyer's
    // free text, and one saying `paygress-user=…` must not name the account.
    Ok(match &spec.ssh_public_key {
        Some(k) => {
            let mut parts = k.split_whitespace();
            let (kind, body) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            format!("{marker}\n{kind} {body}")
        }
        None => marker,
    })
}

/// Whole CPUs for `cores`: the tier's share rounded up, at least one.
fn cores(millicores: u32) -> u32 {
    millicores.div_ceil(1000).max(1)
}

/// The fractional CPU share for `cpulimit` (`0.5`, `1.25`, `2`).
fn cpulimit(millicores: u32) -> String {
    let whole = millicores / 1000;
    let frac = millicores % 1000;
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{:03}", frac)
            .trim_end_matches('0')
            .to_string()
    }
}

/// PVE's `tags` (`a;b` — older versions also use spaces or commas).
fn tags(listed: &Value) -> Vec<String> {
    listed["tags"]
        .as_str()
        .unwrap_or("")
        .split([';', ',', ' '])
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

fn state_of(st: &Value) -> WorkloadState {
    match st["status"].as_str() {
        Some("running") => WorkloadState::Running,
        Some("stopped") => WorkloadState::Stopped,
        _ => WorkloadState::Other,
    }
}

/// The address of an `ip=A.B.C.D/N` in a `net0` or `ipconfig0` value.
fn static_ip(conf: &str) -> Option<Ipv4Addr> {
    conf.split(',')
        .find_map(|kv| kv.strip_prefix("ip="))
        .and_then(|v| v.split('/').next())
        .and_then(|a| a.parse().ok())
}

/// The first IPv4 address outside `lo` in PVE's (or the guest agent's) interface list.
fn first_guest_ipv4(list: &Value) -> Option<Ipv4Addr> {
    list.as_array()?
        .iter()
        .filter(|i| i["name"].as_str() != Some("lo"))
        .flat_map(|i| i["ip-addresses"].as_array().cloned().unwrap_or_default())
        // PVE's LXC list says `inet`, the QEMU guest agent `ipv4`.
        .filter(|a| matches!(a["ip-address-type"].as_str(), Some("inet" | "ipv4")))
        .find_map(|a| a["ip-address"].as_str()?.parse::<Ipv4Addr>().ok())
}

/// PVE's wording when a task holds the guest: `CT is locked (create)`, `VM is locked (clone)`,
/// `can't lock file '/var/lock/lxc/pve-config-100.lock' - got timeout`.
fn is_locked(message: &str) -> bool {
    message.contains("is locked") || message.contains("can't lock file")
}

/// PVE's wording when a vmid is taken: `CT 100 already exists on node 'pve'`,
/// `VM 100 already exists …`, or a clone's `unable to create VM 100: config file already exists`.
fn is_taken(e: &ApiError) -> bool {
    matches!(e, ApiError::Status { status: 500, .. }) && e.message().contains("already exists")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_limits_are_whole_cores_and_a_fraction() {
        assert_eq!((cores(500), cpulimit(500)), (1, "0.5".to_string()));
        assert_eq!((cores(1000), cpulimit(1000)), (1, "1".to_string()));
        assert_eq!((cores(1250), cpulimit(1250)), (2, "1.25".to_string()));
        assert_eq!((cores(2000), cpulimit(2000)), (2, "2".to_string()));
        assert_eq!(cpulimit(1), "0.001");
    }

    #[test]
    fn addresses_are_read_from_net_configs_and_interface_lists() {
        assert_eq!(
            static_ip("name=eth0,bridge=vmbr0,gw=10.0.0.1,hwaddr=BC:24,ip=10.0.0.5/24,type=veth"),
            Some(Ipv4Addr::new(10, 0, 0, 5))
        );
        assert_eq!(static_ip("ip=dhcp"), None);
        let list: Value = serde_json::json!([
            {"name": "lo", "ip-addresses": [{"ip-address-type": "inet", "ip-address": "127.0.0.1"}]},
            {"name": "eth0", "ip-addresses": [{"ip-address-type": "inet6", "ip-address": "fe80::1"},
                                              {"ip-address-type": "inet", "ip-address": "10.0.0.9"}]}
        ]);
        assert_eq!(first_guest_ipv4(&list), Some(Ipv4Addr::new(10, 0, 0, 9)));
        // The QEMU guest agent's shape.
        let agent: Value = serde_json::json!([
            {"name": "eth0", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "10.0.0.7", "prefix": 24}]}
        ]);
        assert_eq!(first_guest_ipv4(&agent), Some(Ipv4Addr::new(10, 0, 0, 7)));
    }

    #[test]
    fn config_refuses_missing_trust_and_bad_token_ids() {
        let base = ProxmoxConfig {
            url: "https://pve.example:8006".into(),
            token_id: "paygress@pve!paygress".into(),
            fingerprint: Some(
                "99:D9:67:AA:6F:9E:AA:83:C3:38:01:ED:CF:75:6B:46:A5:D0:40:49:FA:E9:99:41:8B:B9:89:8B:68:8F:7A:14".into(),
            ),
            network: NetworkConfig {
                mode: NetworkMode::Dhcp,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(base.validate().is_ok());
        let mut c = base.clone();
        c.fingerprint = None;
        assert!(c
            .validate()
            .unwrap_err()
            .contains("never accepted unchecked"));
        let mut c = base.clone();
        c.token_id = "paygress".into();
        assert!(c.validate().unwrap_err().contains("token_id"));
        let mut c = base.clone();
        c.network.mode = NetworkMode::Static;
        assert!(c.validate().unwrap_err().contains("pool_start"));
        let mut c = base.clone();
        c.templates.insert("debian".into(), "debian.tar".into());
        assert!(c.validate().unwrap_err().contains("ostemplate"));
        // PVE's node names (capitals allowed), as bootstrap reads and checks them.
        let mut c = base.clone();
        c.node = "PVE01".into();
        assert!(c.validate().is_ok());
        for bad in ["pve.example", "-pve", "pve/x", ""] {
            let mut c = base.clone();
            c.node = bad.into();
            assert!(c.validate().unwrap_err().contains("node"), "{bad}");
        }
    }
}
