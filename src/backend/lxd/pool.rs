//! The warm pool: containers made and booted ahead of any sale, so a paid spawn only has to set
//! the buyer's login and add the SSH forward.
//!
//! A cold spawn pays for LXD's clone of the image and for the container's boot (about a second
//! on btrfs, several on `dir`); neither depends on the buyer. With `warm_pool = N`, the backend
//! keeps N containers per (tier, image) ready: created with exactly the body a cold spawn of that
//! tier and image gets (limits, `limits.processes`, the isolated id map, the egress network, the
//! root disk quota), started, and with sshd listening inside — but **with no user, no password,
//! no key and no forwarded port**. They are marked `user.paygress.pool = <provider id>` (not
//! `user.paygress.provider`), so they never show in [`Backend::list`]: the core never sees them
//! as sold, and recovery never takes them for orphans.
//!
//! # A spawn takes one
//!
//! [`LxdBackend::take_member`] pops a member from its queue under a mutex, so no member is ever
//! handed to two buyers. The claim then:
//!
//! 1. marks it sold in one `PATCH`: the provider and deadline marks, the workload's name
//!    (`user.paygress.workload`: LXD cannot rename a running container, so the backend maps the
//!    core's name to the member's), and the pool marks removed. From here on a restart sees a
//!    sold workload, never a pool member, so no credential is ever set in something that could
//!    go back to the pool;
//! 2. (from here on a cold instance, once started, goes the same way: `hand_over`) adds the SSH
//!    proxy device, *without* waiting for LXD's answer: LXD polls its forkproxy
//!    helper once and then only after a fixed second, so that request takes a second however
//!    fast the helper is (see the module docs of `lxd.rs`). The answer is watched for failure (a
//!    taken port) while
//! 3. the same constant user script as a cold spawn runs through `exec`, the username in its
//!    environment, the password and a key staged through the file API, and
//! 4. the host port is watched for the member's own sshd banner (its nonce, set when the member
//!    was made). Once the login exists and the banner is ours, the spawn answers.
//!
//! While that device request is still running, LXD refuses other updates of the instance (after
//! blocking for the rest of the second), so the instance is *settling*: an `extend` in that time
//! is recorded and applied when the request ends, and stop, resume and destroy wait for it.
//!
//! A claim that fails removes the member; a failure other than a taken port then falls back to
//! the cold path, and so does a spawn that finds the pool empty. Members are never reused: a
//! sold container is destroyed like any other.
//!
//! # Refill, restart, shutdown
//!
//! One background task keeps the pool full, one member at a time (it competes with cold spawns
//! for LXD and the disk, and serial creation keeps that bounded). At start, members left by an
//! earlier run of this provider are re-adopted when their shape (a hash of the body they were
//! made with) still matches a current tier and image and they run, and removed otherwise. At
//! shutdown ([`Backend::stop_warm_pool`]) every member is removed.

use std::collections::{HashMap, VecDeque};

use sha2::{Digest, Sha256};

use super::*;

/// Config key marking a warm, unsold member: the provider id that keeps it.
pub const KEY_POOL: &str = "user.paygress.pool";
/// Config key holding the shape (tier and image body hash) a member was made for.
pub const KEY_POOL_SHAPE: &str = "user.paygress.pool.shape";
/// The process that made an unsold member (`<pid>:<start time>` on the LXD host), so that the
/// members of a provider that died without shutting down (a killed demo, whose next start has a
/// new provider id) can be told from the members of a live one and removed.
pub const KEY_POOL_OWNER: &str = "user.paygress.pool.owner";

/// `<pid>:<start time>` of this process, for [`KEY_POOL_OWNER`].
fn owner_mark() -> String {
    let pid = std::process::id() as i32;
    let start = crate::backend::sandbox::jail::process_start(pid).unwrap_or(0);
    format!("{pid}:{start}")
}

/// Whether an owner mark names a process that no longer runs on this host.
fn owner_is_dead(mark: &str) -> bool {
    let Some((pid, start)) = mark.split_once(':') else {
        return false;
    };
    match (pid.parse::<i32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) if pid > 0 && start > 0 => {
            !crate::backend::sandbox::jail::is_alive(pid, start)
        }
        _ => false,
    }
}

/// Waits for sshd to listen on port 22 inside (LISTEN in /proc/net/tcp{,6}): constant text.
const SSHD_LISTENING: &str = r#"i=0
while [ $i -lt 600 ]; do
  if grep -qs ':0016 [0-9A-F:]* 0A ' /proc/net/tcp /proc/net/tcp6; then exit 0; fi
  i=$((i+1)); sleep 0.05
done
exit 1
"#;

/// One ready member.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub instance: String,
    pub nonce: String,
    pub host_keys: Vec<String>,
    /// The fingerprint of the image it was made from (`volatile.base_image`): a member whose
    /// image alias has since moved (a rebuilt image) is never sold.
    pub base_image: String,
}

/// LXD's record of the image an instance was made from.
const KEY_BASE_IMAGE: &str = "volatile.base_image";

/// A (tier, image) pair the pool keeps members for.
#[derive(Debug, Clone)]
struct Shape {
    tier: Tier,
    image: String,
    /// Hash of the member body (without name, nonce and marks).
    key: String,
}

#[derive(Default)]
struct State {
    provider_id: String,
    shapes: Vec<Shape>,
    ready: HashMap<String, VecDeque<Member>>,
    /// Members being made, per shape key.
    making: HashMap<String, usize>,
    running: bool,
}

/// The pool's shared state (one per backend, shared by its clones and the refill task).
#[derive(Default)]
pub(super) struct Pool {
    state: std::sync::Mutex<State>,
    wake: tokio::sync::Notify,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Pool {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the pool holds right now (for operators, tests and the benchmark).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// Ready members per `(tier id, image)`.
    pub ready: Vec<(String, String, usize)>,
    /// Members being made.
    pub making: usize,
    /// Instance names of the ready members.
    pub members: Vec<String>,
}

impl PoolStatus {
    /// Ready members in all.
    pub fn total_ready(&self) -> usize {
        self.ready.iter().map(|r| r.2).sum()
    }
}

fn shape_key(body: &Value) -> String {
    let mut h = Sha256::new();
    h.update(body.to_string().as_bytes());
    hex::encode(&h.finalize()[..8])
}

fn new_member_name() -> String {
    format!("pgw-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

impl LxdBackend {
    /// The pool's current content.
    pub fn pool_status(&self) -> PoolStatus {
        let st = self.pool.state();
        let mut ready: Vec<(String, String, usize)> = st
            .shapes
            .iter()
            .map(|s| {
                let n = st.ready.get(&s.key).map_or(0, VecDeque::len);
                (s.tier.id.clone(), s.image.clone(), n)
            })
            .collect();
        ready.sort();
        let mut members: Vec<String> = st
            .ready
            .values()
            .flat_map(|q| q.iter().map(|m| m.instance.clone()))
            .collect();
        members.sort();
        PoolStatus {
            ready,
            making: st.making.values().sum(),
            members,
        }
    }

    /// Wait (bounded) until every (tier, image) has `warm_pool` ready members; whether it got
    /// there. For tests, the benchmark and operators who want a full pool before opening doors.
    pub async fn wait_pool_full(&self, limit: Duration) -> bool {
        let want = self.cfg.warm_pool as usize;
        let until = Instant::now() + limit;
        loop {
            let full = {
                let st = self.pool.state();
                st.shapes
                    .iter()
                    .all(|s| st.ready.get(&s.key).map_or(0, VecDeque::len) >= want)
            };
            if full {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The member body of a tier and image, and its shape key.
    async fn shape_of(&self, tier: &Tier, image: &str) -> Shape {
        let root = if tier.disk_gb.is_some() || self.cfg.storage_pool.is_some() {
            self.root_pool().await
        } else {
            None
        };
        let body = instance_body(tier, image, &self.cfg, "", root.as_ref());
        Shape {
            tier: tier.clone(),
            image: image.to_string(),
            key: shape_key(&body),
        }
    }

    /// Start keeping members for every tier × image (see the module docs): re-adopt or remove
    /// what an earlier run left, then refill in the background.
    pub(super) async fn start_pool(&self, provider_id: &str, tiers: &[Tier], images: &[String]) {
        let mut shapes = Vec::new();
        if self.cfg.warm_pool > 0 {
            for t in tiers {
                for i in images {
                    shapes.push(self.shape_of(t, i).await);
                }
            }
        }
        let leftovers = match self.pool_members(provider_id).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(
                    "LXD warm pool: cannot list earlier members: {}",
                    e.message()
                );
                Vec::new()
            }
        };
        let mut adopted: HashMap<String, VecDeque<Member>> = HashMap::new();
        let want = self.cfg.warm_pool as usize;
        let mut removed = self.remove_orphaned_members(provider_id).await;
        for inst in leftovers {
            let Some(name) = inst.get("name").and_then(Value::as_str).map(String::from) else {
                continue;
            };
            let shape = config_value(&inst, KEY_POOL_SHAPE).unwrap_or("");
            let running = inst.get("status").and_then(Value::as_str) == Some("Running");
            let nonce = config_value(&inst, KEY_NONCE).unwrap_or("").to_string();
            let base_image = config_value(&inst, KEY_BASE_IMAGE)
                .unwrap_or("")
                .to_string();
            let image = shapes
                .iter()
                .find(|s| s.key == shape)
                .map(|s| s.image.clone());
            let current = match &image {
                Some(i) => self.alias_target(i).await.as_deref() == Some(base_image.as_str()),
                None => false,
            };
            let fits = current && adopted.get(shape).map_or(0, VecDeque::len) < want;
            if fits && running && !nonce.is_empty() && ssh_port_of(&inst).is_none() {
                let host_keys = self.read_host_keys(&name).await;
                adopted
                    .entry(shape.to_string())
                    .or_default()
                    .push_back(Member {
                        instance: name,
                        nonce,
                        host_keys,
                        base_image,
                    });
            } else {
                if let Err(e) = self.remove(&name).await {
                    tracing::warn!(
                        name,
                        "LXD warm pool: cannot remove a stale member: {}",
                        e.message()
                    );
                }
                removed += 1;
            }
        }
        let n_adopted: usize = adopted.values().map(VecDeque::len).sum();
        if n_adopted + removed > 0 {
            tracing::info!(
                adopted = n_adopted,
                removed,
                "LXD warm pool: members of an earlier run"
            );
        }
        {
            let mut st = self.pool.state();
            st.provider_id = provider_id.to_string();
            st.shapes = shapes;
            st.ready = adopted;
            st.running = self.cfg.warm_pool > 0;
        }
        if self.cfg.warm_pool > 0 {
            let me = self.clone();
            let task = tokio::spawn(async move { me.refill_loop().await });
            if let Ok(mut t) = self.pool.task.lock() {
                if let Some(old) = t.replace(task) {
                    old.abort();
                }
            }
        }
    }

    /// Remove the unsold members of other providers whose process died on this host without
    /// shutting down (their own next start could re-adopt them only under the same provider id,
    /// which a demo never has). A live owner's members, and this provider's own (re-adopted
    /// below), are left alone; on a remote LXD pids say nothing, so nothing is swept.
    async fn remove_orphaned_members(&self, provider_id: &str) -> usize {
        if !self.local {
            return 0;
        }
        let Ok(all) = self.get("/1.0/instances?recursion=1").await else {
            return 0;
        };
        let orphans: Vec<String> = all
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| {
                        config_value(i, KEY_POOL).is_some_and(|p| !p.is_empty() && p != provider_id)
                            && config_value(i, KEY_POOL_OWNER).is_some_and(owner_is_dead)
                    })
                    .filter_map(|i| i.get("name").and_then(Value::as_str).map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut n = 0;
        for name in orphans {
            match self.remove(&name).await {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!(
                    name,
                    "LXD warm pool: cannot remove a dead provider's member: {}",
                    e.message()
                ),
            }
        }
        n
    }

    /// Every instance this provider keeps as a pool member.
    async fn pool_members(&self, provider_id: &str) -> Result<Vec<Value>, LxdError> {
        let all = self.get("/1.0/instances?recursion=1").await?;
        Ok(all
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| config_value(i, KEY_POOL) == Some(provider_id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Keep every shape at `warm_pool` members, one member at a time.
    async fn refill_loop(&self) {
        // Shapes whose last member failed (an image LXD lacks, a full disk): when to try again
        // and the backoff, so one failing shape never starves the others.
        let mut failing: HashMap<String, (Instant, Duration)> = HashMap::new();
        loop {
            let now = Instant::now();
            let next = {
                let mut st = self.pool.state();
                if !st.running {
                    return;
                }
                let want = self.cfg.warm_pool as usize;
                let short = st
                    .shapes
                    .iter()
                    .filter(|s| failing.get(&s.key).is_none_or(|(at, _)| *at <= now))
                    .find(|s| {
                        st.ready.get(&s.key).map_or(0, VecDeque::len)
                            + st.making.get(&s.key).copied().unwrap_or(0)
                            < want
                    })
                    .cloned();
                if let Some(s) = &short {
                    *st.making.entry(s.key.clone()).or_default() += 1;
                }
                short.map(|s| (s, st.provider_id.clone()))
            };
            let Some((shape, provider_id)) = next else {
                // Nothing to make now: wait for a sale, or for the next retry of a failing shape.
                let soonest = failing
                    .values()
                    .map(|(at, _)| *at)
                    .filter(|at| *at > now)
                    .min();
                match soonest {
                    Some(at) => tokio::select! {
                        _ = tokio::time::sleep(at - now) => {}
                        _ = self.pool.wake.notified() => {}
                    },
                    None => self.pool.wake.notified().await,
                }
                continue;
            };
            let made = self.make_member(&shape, &provider_id).await;
            let keep = {
                let mut st = self.pool.state();
                if let Some(n) = st.making.get_mut(&shape.key) {
                    *n = n.saturating_sub(1);
                }
                match made {
                    Ok(m) if st.running => {
                        st.ready.entry(shape.key.clone()).or_default().push_back(m);
                        None
                    }
                    Ok(m) => Some(Ok(m)),
                    Err(e) => Some(Err(e)),
                }
            };
            match keep {
                None => {
                    failing.remove(&shape.key);
                }
                // Made while the pool was stopping: not kept.
                Some(Ok(m)) => {
                    let _ = self.remove(&m.instance).await;
                    return;
                }
                Some(Err(e)) => {
                    let backoff = failing
                        .get(&shape.key)
                        .map_or(Duration::from_secs(1), |(_, b)| {
                            (*b * 2).min(Duration::from_secs(60))
                        });
                    tracing::warn!(
                        tier = %shape.tier.id,
                        image = %shape.image,
                        "LXD warm pool: cannot make a member (retrying in {}s): {e}",
                        backoff.as_secs()
                    );
                    failing.insert(shape.key.clone(), (Instant::now() + backoff, backoff));
                }
            }
        }
    }

    /// Create, start and wait for one member; removed again if any step fails.
    async fn make_member(&self, shape: &Shape, provider_id: &str) -> Result<Member, BackendError> {
        let t0 = Instant::now();
        let name = new_member_name();
        let nonce = new_nonce();
        let root = if shape.tier.disk_gb.is_some() || self.cfg.storage_pool.is_some() {
            self.root_pool().await
        } else {
            None
        };
        let mut body = instance_body(&shape.tier, &shape.image, &self.cfg, &nonce, root.as_ref());
        body["name"] = name.clone().into();
        if let Some(c) = body.get_mut("config").and_then(Value::as_object_mut) {
            c.insert(KEY_POOL.into(), provider_id.into());
            c.insert(KEY_POOL_SHAPE.into(), shape.key.clone().into());
            if self.local {
                c.insert(KEY_POOL_OWNER.into(), owner_mark().into());
            }
        }
        let op = match self.post_instance(&name, &body).await {
            Ok(Answer::Async(op)) => op,
            // Whatever may have been made under the name goes, so no marked leftover waits
            // for the next sweep.
            Ok(Answer::Sync(_)) => {
                let _ = self.remove(&name).await;
                return Err(BackendError::Api(
                    "LXD create answered without an operation".into(),
                ));
            }
            Err(e) => {
                if !e.is_not_found() && !e.contains("already exists") {
                    let _ = self.remove(&name).await;
                }
                return Err(map_create_error(&e, &shape.image, 0));
            }
        };
        let r = async {
            self.wait_operation(&op, self.ready_timeout())
                .await
                .map_err(|e| map_create_error(&e, &shape.image, 0))?;
            self.change_state(&name, json!({"action": "start"}), self.ready_timeout())
                .await
                .map_err(|e| e.api("start"))?;
            let probe = json!({
                "command": ["/bin/sh", "-c", SSHD_LISTENING],
                "environment": { "PATH": "/usr/sbin:/usr/bin:/sbin:/bin" },
                "wait-for-websocket": false,
                "interactive": false,
                "record-output": false,
            });
            let deadline = Instant::now() + self.ready_timeout();
            let code = self
                .exec_when_running(&name, &probe, deadline)
                .await
                .map_err(|e| e.api("waiting for sshd"))?;
            if code != 0 {
                return Err(BackendError::NotReady(
                    "sshd did not listen in the warm container".into(),
                ));
            }
            Ok(())
        }
        .await;
        match r {
            Ok(()) => {
                let host_keys = self.read_host_keys(&name).await;
                let base_image = match self.instance(&name).await {
                    Ok(Some(i)) => config_value(&i, KEY_BASE_IMAGE).unwrap_or("").to_string(),
                    _ => String::new(),
                };
                tracing::debug!(
                    name,
                    ms = t0.elapsed().as_millis() as u64,
                    "LXD warm pool: member ready"
                );
                Ok(Member {
                    instance: name,
                    nonce,
                    host_keys,
                    base_image,
                })
            }
            Err(e) => {
                let _ = self.remove(&name).await;
                Err(e)
            }
        }
    }

    /// The fingerprint an image alias points at now.
    pub(super) async fn alias_target(&self, alias: &str) -> Option<String> {
        if alias.is_empty() || alias.contains(['/', '?', '#', '%', ' ']) {
            return None;
        }
        let v = self
            .get(&format!("/1.0/images/aliases/{alias}"))
            .await
            .ok()?;
        v.get("target").and_then(Value::as_str).map(String::from)
    }

    /// Take a ready member for this tier and image whose image is still what the alias names
    /// (never the same member twice). Members made from an image the alias no longer points at
    /// (the operator rebuilt it, e.g. for a security fix) are removed, not sold.
    pub(super) async fn take_current_member(&self, tier: &Tier, image: &str) -> Option<Member> {
        let mut m = self.take_member(tier, image)?;
        let Some(target) = self.alias_target(image).await else {
            // LXD did not say: the member goes back untouched, and this spawn goes cold.
            self.give_back(tier, image, m);
            return None;
        };
        loop {
            if m.base_image == target {
                return Some(m);
            }
            tracing::info!(
                name = %m.instance,
                "LXD warm pool: a member of an earlier image of {image} is removed"
            );
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.remove(&m.instance).await {
                    tracing::warn!(name = %m.instance, "LXD warm pool: cannot remove a member: {}", e.message());
                }
            });
            m = self.take_member(tier, image)?;
        }
    }

    /// Put an untouched member back at the head of its queue.
    fn give_back(&self, tier: &Tier, image: &str, m: Member) {
        let mut st = self.pool.state();
        let key = st
            .shapes
            .iter()
            .find(|s| s.tier == *tier && s.image == image)
            .map(|s| s.key.clone());
        match key {
            Some(k) if st.running => st.ready.entry(k).or_default().push_front(m),
            _ => {
                drop(st);
                let me = self.clone();
                tokio::spawn(async move {
                    let _ = me.remove(&m.instance).await;
                });
            }
        }
    }

    /// Take a ready member for this tier and image, if there is one (never the same twice).
    pub(super) fn take_member(&self, tier: &Tier, image: &str) -> Option<Member> {
        let mut st = self.pool.state();
        if !st.running {
            return None;
        }
        let key = st
            .shapes
            .iter()
            .find(|s| s.tier == *tier && s.image == image)
            .map(|s| s.key.clone())?;
        let m = st.ready.get_mut(&key)?.pop_front();
        drop(st);
        self.pool.wake.notify_one();
        m
    }

    /// Sell member `m` as `spec`'s workload on `port` (see the module docs). On failure the
    /// caller removes the member.
    pub(super) async fn claim(
        &self,
        m: &Member,
        spec: &WorkloadSpec,
        port: u16,
    ) -> Result<(), BackendError> {
        let inst = m.instance.as_str();
        let path = format!("/1.0/instances/{inst}");
        let t0 = Instant::now();
        let deadline = t0 + self.ready_timeout();
        // 1. Sold from now on.
        let marks = json!({ "config": {
            KEY_PROVIDER: spec.provider_id,
            KEY_EXPIRES_AT: spec.expires_at.to_string(),
            KEY_WORKLOAD: spec.name,
            KEY_POOL: "",
            KEY_POOL_SHAPE: "",
            KEY_POOL_OWNER: "",
        }});
        self.call_wait(hyper::Method::PATCH, &path, Some(&marks), self.timeout())
            .await
            .map_err(|e| e.api("claiming a warm container"))?;
        self.map_name(&spec.name, inst);
        let t_sold = Instant::now();
        let (_, user_ms, banner_ms) = self.hand_over(inst, spec, port, &m.nonce, deadline).await?;
        tracing::debug!(
            instance = inst,
            mark_ms = (t_sold - t0).as_millis() as u64,
            user_ms,
            banner_ms,
            "LXD warm claim"
        );
        Ok(())
    }

    /// Give a running instance (a sold member, or a cold one just started) its SSH forward and
    /// the buyer's login, and wait until it answers as itself on `port`: steps 2-4 of the module
    /// docs. Returns the banner seen and how long the login and the banner took (ms).
    pub(super) async fn hand_over(
        &self,
        inst: &str,
        spec: &WorkloadSpec,
        port: u16,
        nonce: &str,
        deadline: Instant,
    ) -> Result<(Banner, u64, u64), BackendError> {
        let path = format!("/1.0/instances/{inst}");
        // 2. The SSH forward, answered in the background.
        self.settle_begin(inst);
        let device =
            json!({ "devices": { SSH_DEVICE: proxy_device(&self.cfg.ssh_listen_address, port) } });
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        {
            let me = self.clone();
            let inst = inst.to_string();
            let path = path.clone();
            tokio::spawn(async move {
                let r = me
                    .call_wait(hyper::Method::PATCH, &path, Some(&device), me.timeout())
                    .await
                    .map(|_| ());
                let _ = tx.send(r);
                me.settle_end(&inst).await;
            });
        }

        // 3. The login and 4. our banner on the host port, meanwhile.
        let t_sold = Instant::now();
        let login = async {
            self.stage_login(inst, spec).await?;
            let exec = user_exec_body(&spec.ssh_username);
            let code = self
                .exec_when_running(inst, &exec, deadline)
                .await
                .map_err(|e| e.api("user setup"))?;
            if code != 0 {
                return Err(BackendError::Api(format!(
                    "creating the login user failed (exit {code})"
                )));
            }
            Ok::<_, BackendError>(t_sold.elapsed())
        };
        let answering = async {
            let b = wait_for_ssh(&self.check_host, port, Some(nonce), deadline).await?;
            Ok::<_, BackendError>((b, t_sold.elapsed()))
        };
        tokio::pin!(login, answering);
        let mut device_ok = false;
        let (mut user_ms, mut banner) = (None, None);
        while user_ms.is_none() || banner.is_none() {
            tokio::select! {
                r = &mut rx, if !device_ok => match r {
                    Ok(Ok(())) => device_ok = true,
                    Ok(Err(e)) => return Err(map_start_error(&e, port, "SSH forward")),
                    Err(_) => return Err(BackendError::Api("the SSH forward request was lost".into())),
                },
                r = &mut login, if user_ms.is_none() => user_ms = Some(r?),
                r = &mut answering, if banner.is_none() => banner = Some(r?),
            }
        }
        let (banner, banner_t) = banner.unwrap_or((Banner::Anonymous, Duration::ZERO));
        if banner == Banner::Anonymous && !device_ok {
            // Without our nonce the banner proves nothing until LXD confirms the device.
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(map_start_error(&e, port, "SSH forward")),
                Err(_) => return Err(BackendError::Api("the SSH forward request was lost".into())),
            }
        }
        Ok((
            banner,
            user_ms.unwrap_or_default().as_millis() as u64,
            banner_t.as_millis() as u64,
        ))
    }

    /// The instance behind a workload name: the name itself, unless it is a sold warm container
    /// (whose instance keeps its own name; see [`pool`]).
    pub(super) async fn resolve(&self, name: &str) -> String {
        if let Some(i) = self.names.lock().ok().and_then(|m| m.get(name).cloned()) {
            return i;
        }
        // Not seen by this process yet (after a restart, before the first `list`).
        if let Ok(Some(_)) = self.instance(name).await {
            return name.to_string();
        }
        if let Ok(all) = self.get("/1.0/instances?recursion=1").await {
            let found = all.as_array().and_then(|a| {
                a.iter()
                    .find(|i| config_value(i, KEY_WORKLOAD) == Some(name))
                    .and_then(|i| i.get("name")?.as_str())
                    .filter(|n| is_valid_instance_name(n))
                    .map(String::from)
            });
            if let Some(inst) = found {
                self.map_name(name, &inst);
                return inst;
            }
        }
        name.to_string()
    }

    pub(super) fn map_name(&self, workload: &str, instance: &str) {
        if let Ok(mut m) = self.names.lock() {
            m.insert(workload.to_string(), instance.to_string());
        }
    }

    pub(super) fn forget_name(&self, workload: &str) {
        if let Ok(mut m) = self.names.lock() {
            m.remove(workload);
        }
        if let Ok(mut k) = self.host_keys.lock() {
            k.remove(workload);
        }
    }

    /// `instance` has an update running that LXD will not let another overlap with.
    pub(super) fn settle_begin(&self, instance: &str) {
        if let Ok(mut s) = self.settling.lock() {
            s.insert(instance.to_string(), None);
        }
    }

    /// Record a deadline for a settling instance, to be written when it settles; whether it was.
    pub(super) fn settle_later(&self, instance: &str, expires_at: u64) -> bool {
        match self.settling.lock() {
            Ok(mut s) => match s.get_mut(instance) {
                Some(pending) => {
                    *pending = Some(expires_at);
                    true
                }
                None => false,
            },
            Err(_) => false,
        }
    }

    /// The running update ended: write any deadline recorded meanwhile, then let others in.
    pub(super) async fn settle_end(&self, instance: &str) {
        loop {
            let pending = match self.settling.lock() {
                Ok(mut s) => match s.get_mut(instance).and_then(Option::take) {
                    Some(at) => Some(at),
                    None => {
                        s.remove(instance);
                        None
                    }
                },
                Err(_) => None,
            };
            let Some(at) = pending else { return };
            let body = json!({ "config": { KEY_EXPIRES_AT: at.to_string() } });
            let path = format!("/1.0/instances/{instance}");
            if let Err(e) = self
                .call_wait(hyper::Method::PATCH, &path, Some(&body), self.timeout())
                .await
            {
                tracing::warn!(instance, "cannot record the deadline mark: {}", e.message());
            }
        }
    }

    /// Wait (bounded) until `instance` has no update of ours running.
    pub(super) async fn wait_settled(&self, instance: &str) {
        let until = Instant::now() + self.timeout();
        while Instant::now() < until {
            let busy = self
                .settling
                .lock()
                .map(|s| s.contains_key(instance))
                .unwrap_or(false);
            if !busy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop refilling and remove every member (the provider is shutting down).
    pub(super) async fn stop_pool(&self) {
        let (members, provider_id) = {
            let mut st = self.pool.state();
            st.running = false;
            let m: Vec<Member> = st.ready.drain().flat_map(|(_, q)| q).collect();
            (m, st.provider_id.clone())
        };
        self.pool.wake.notify_one();
        let task = self.pool.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            // The member being made is removed by the task itself.
            let _ = tokio::time::timeout(self.ready_timeout() + self.timeout(), task).await;
        }
        for m in members {
            if let Err(e) = self.remove(&m.instance).await {
                tracing::warn!(name = %m.instance, "LXD warm pool: cannot remove a member: {}", e.message());
            }
        }
        // Anything else still marked as ours (made by an interrupted task).
        if !provider_id.is_empty() {
            if let Ok(left) = self.pool_members(&provider_id).await {
                for i in left {
                    if let Some(n) = i.get("name").and_then(Value::as_str) {
                        let _ = self.remove(n).await;
                    }
                }
            }
        }
    }

    /// Stop refilling and forget the members without removing them: what a crash leaves behind.
    /// A restarted provider re-adopts them. For tests and for handing the pool to a new process.
    pub fn detach_warm_pool(&self) {
        {
            let mut st = self.pool.state();
            st.running = false;
            st.ready.clear();
        }
        if let Some(t) = self.pool.task.lock().ok().and_then(|mut t| t.take()) {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_keys_follow_the_body() {
        let t = Tier {
            id: "basic".into(),
            name: "Basic".into(),
            description: String::new(),
            cpu_millicores: 1000,
            memory_mb: 512,
            disk_gb: None,
            rate_msats_per_sec: 1,
        };
        let cfg = LxdConfig::default();
        let a = shape_key(&instance_body(&t, "img", &cfg, "", None));
        assert_eq!(a, shape_key(&instance_body(&t, "img", &cfg, "", None)));
        let mut t2 = t.clone();
        t2.memory_mb = 1024;
        assert_ne!(a, shape_key(&instance_body(&t2, "img", &cfg, "", None)));
        assert_ne!(a, shape_key(&instance_body(&t, "other", &cfg, "", None)));
        let egress = LxdConfig {
            egress_network: Some("wl0".into()),
            ..LxdConfig::default()
        };
        assert_ne!(a, shape_key(&instance_body(&t, "img", &egress, "", None)));
        assert!(is_valid_instance_name(&new_member_name()));
    }

    /// A member is made with the cold body minus the name and the ownership marks (neither has
    /// the SSH forward until it is handed over): the same limits, task limit, id map, egress network and root disk quota.
    #[test]
    fn members_are_made_like_cold_workloads() {
        let t = Tier {
            id: "basic".into(),
            name: "Basic".into(),
            description: String::new(),
            cpu_millicores: 2000,
            memory_mb: 512,
            disk_gb: Some(3),
            rate_msats_per_sec: 1,
        };
        let cfg = LxdConfig {
            egress_network: Some("wl0".into()),
            pids_max: 99,
            ..LxdConfig::default()
        };
        let root = RootPool {
            name: "default".into(),
            enforces_size: true,
        };
        let spec = WorkloadSpec {
            name: "pg-x".into(),
            provider_id: "p".into(),
            tier: t.clone(),
            image: "img".into(),
            ssh_username: "alice".into(),
            ssh_password: crate::secret::Secret::new("pw"),
            ssh_public_key: None,
            host_port: Some(30000),
            expires_at: 1,
        };
        let mut cold = create_body(&spec, &cfg, "n1", Some(&root));
        let member = instance_body(&t, "img", &cfg, "n1", Some(&root));
        let o = cold.as_object_mut().unwrap();
        o.remove("name");
        let c = o.get_mut("config").unwrap().as_object_mut().unwrap();
        c.remove(KEY_PROVIDER);
        c.remove(KEY_EXPIRES_AT);
        assert_eq!(cold, member);
        assert_eq!(member["devices"]["eth0"]["network"], "wl0");
        assert_eq!(member["devices"]["root"]["size"], "3GB");
        assert_eq!(member["config"]["limits.processes"], "99");
        assert_eq!(member["config"]["security.idmap.isolated"], "true");
        assert!(member["devices"].get(SSH_DEVICE).is_none());
    }
}
