//! The LXD warm pool on the real LXD daemon, with the locally built base image.
//!
//! Every test uses a provider id of its own, so it sees only its own pool members, and removes
//! every instance it made (the pool's members included) at the end, however it ends. Logins are
//! checked with the real OpenSSH client; what is inside a member is checked with `lxc exec`,
//! independently of the code under test.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::mint::TestMint;
use common::ssh::ssh_password;
use paygress::api::SpawnRequest;
use paygress::backend::lxd::{LxdBackend, LxdConfig, KEY_POOL, KEY_PROVIDER, KEY_WORKLOAD};
use paygress::backend::{Backend, WorkloadSpec};
use paygress::config::{Config, Tier};
use paygress::secret::Secret;
use paygress::{Caller, Provider};
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "paygress-debian-12";

fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn free_port() -> u16 {
    for _ in 0..100 {
        let p: u16 = 40_000 + (rand::random::<u16>() % 20_000);
        if std::net::TcpListener::bind(("0.0.0.0", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port");
}

fn tier(memory_mb: u32) -> Tier {
    Tier {
        id: "basic".into(),
        name: "Basic".into(),
        description: String::new(),
        cpu_millicores: 1000,
        memory_mb,
        disk_gb: None,
        rate_msats_per_sec: 1,
    }
}

fn pooled(n: u32) -> LxdBackend {
    LxdBackend::new(LxdConfig {
        warm_pool: n,
        ..LxdConfig::default()
    })
    .expect("LXD backend")
}

fn spec(provider: &str, t: &Tier, user: &str, password: &str) -> WorkloadSpec {
    WorkloadSpec {
        name: format!("pgt-pool-{}", suffix()),
        provider_id: provider.into(),
        tier: t.clone(),
        image: IMAGE.into(),
        ssh_username: user.into(),
        ssh_password: Secret::new(password),
        ssh_public_key: None,
        host_port: Some(free_port()),
        expires_at: paygress::provider::now_secs() + 3600,
    }
}

fn lxc(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("lxc")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Every instance on the daemon whose config key `key` is `value`, by name.
fn instances_with(key: &str, value: &str) -> BTreeSet<String> {
    let out = lxc(&["query", "--force-local", "/1.0/instances?recursion=1"]).expect("lxc query");
    let all: serde_json::Value = serde_json::from_str(&out).expect("LXD JSON");
    all.as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["config"][key].as_str() == Some(value))
                .filter_map(|i| i["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// What a member holds that a buyer could have left: login accounts (uid 1000-65533), the
/// staged key, any authorized_keys, a forwarded port, ownership marks.
fn leftovers_in(instance: &str) -> String {
    let inside = lxc(&[
        "exec",
        instance,
        "--",
        "sh",
        "-c",
        "awk -F: '$3>=1000 && $3<65534 {print \"user \" $1}' /etc/passwd; \
         awk -F: '$2 ~ /^\\$/ {print \"password \" $1}' /etc/shadow; \
         ls /root/.paygress-authorized-keys /home/*/.ssh/authorized_keys 2>/dev/null; true",
    ])
    .expect("lxc exec");
    let devices = lxc(&["config", "device", "list", instance]).expect("devices");
    let provider = lxc(&["config", "get", instance, KEY_PROVIDER]).unwrap_or_default();
    format!("{}{}{}", inside, devices.trim(), provider.trim())
}

/// Removes every instance of the provider id (sold or pool member) when dropped.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut names = instances_with(KEY_POOL, &self.0);
        names.extend(instances_with(KEY_PROVIDER, &self.0));
        for n in names {
            let _ = lxc(&["delete", "--force", &n]);
        }
    }
}

const FULL: Duration = Duration::from_secs(400);

/// 20 paid spawns at once through the core, on a pool of 16: every spawn gets an instance of its
/// own, each of the pool's members goes to exactly one buyer (the last ones raced for by all),
/// the rest take the cold path, and every buyer logs in with their own password only, into a
/// container holding their account and no other.
#[tokio::test]
async fn twenty_concurrent_spawns_never_share_a_member() {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: Config = common::config(dir.path(), &[&mint.url], 1, common::free_port_block(40));
    cfg.tiers.truncate(1);
    cfg.images.allowed = vec![IMAGE.into()];
    let lxd = LxdBackend::new(LxdConfig {
        warm_pool: 16,
        ready_timeout_seconds: 300,
        ..LxdConfig::default()
    })
    .expect("LXD backend");
    let provider = Provider::open(cfg, Arc::new(lxd.clone()))
        .await
        .expect("provider");
    let _guard = Cleanup(provider.provider_id().to_string());
    assert!(lxd.wait_pool_full(FULL).await, "pool never filled");
    let members: BTreeSet<String> = lxd.pool_status().members.into_iter().collect();
    assert_eq!(members.len(), 16);

    let mut tokens = Vec::new();
    for _ in 0..20 {
        tokens.push(mint.token(100).await);
    }
    let spawns = tokens.iter().enumerate().map(|(i, t)| {
        let provider = provider.clone();
        let req = SpawnRequest {
            cashu_token: Secret::new(t.as_str()),
            ssh_username: format!("buyer{i:02}"),
            ssh_password: Some(Secret::new(format!("Pw-{i:02}-{}", suffix()))),
            ..Default::default()
        };
        async move {
            provider
                .spawn(req, Caller::Local, None, CancellationToken::new())
                .await
        }
    });
    let results = futures::future::join_all(spawns).await;
    let mut sold = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        let r = r.unwrap_or_else(|e| panic!("spawn {i}: {e:?}"));
        let name = provider
            .store()
            .workload(&r.pod_npub)
            .unwrap()
            .expect("row")
            .name;
        let instance = lxd.instance_name(&name).await;
        sold.push((i, r, instance));
    }
    let instances: BTreeSet<&String> = sold.iter().map(|s| &s.2).collect();
    assert_eq!(
        instances.len(),
        20,
        "two buyers share an instance: {sold:?}",
        sold = sold.iter().map(|s| &s.2).collect::<Vec<_>>()
    );
    let warm: Vec<&String> = sold
        .iter()
        .map(|s| &s.2)
        .filter(|i| members.contains(*i))
        .collect();
    assert_eq!(warm.len(), 16, "each member is sold exactly once: {warm:?}");
    // Sold members are the core's workloads now, never pool members.
    assert!(lxd
        .pool_status()
        .members
        .iter()
        .all(|m| !instances.contains(m)));

    let logins = sold.iter().map(|(i, r, instance)| async move {
        let own = ssh_password(
            r.node_port,
            &r.ssh_username,
            r.ssh_password.expose(),
            "awk -F: '$3>=1000 && $3<65534 {print $1}' /etc/passwd",
        )
        .await
        .unwrap_or_else(|e| panic!("login {i} into {instance}: {e}"));
        assert_eq!(own.trim(), r.ssh_username, "accounts in {instance}");
        (
            r.node_port,
            r.ssh_username.clone(),
            r.ssh_password.expose().to_string(),
        )
    });
    let creds = futures::future::join_all(logins).await;
    // Someone else's password never opens a container.
    for k in [0usize, 5, 19] {
        let (port, user, _) = &creds[k];
        let (_, _, other_pw) = &creds[(k + 1) % creds.len()];
        assert!(
            ssh_password(*port, user, other_pw, "true").await.is_err(),
            "a foreign password logged in"
        );
    }
    lxd.stop_warm_pool().await;
    assert!(instances_with(KEY_POOL, provider.provider_id()).is_empty());
}

/// Members carry no account, password, key, forwarded port or owner; a sold member never comes
/// back into the pool, and its replacement is a new, clean container.
#[tokio::test]
async fn no_pool_member_holds_credentials_and_sold_ones_never_return() {
    let provider = format!("prov-pool-{}", suffix());
    let _guard = Cleanup(provider.clone());
    let t = tier(256);
    let b = pooled(2);
    b.start_warm_pool(&provider, std::slice::from_ref(&t), &[IMAGE.into()])
        .await;
    assert!(b.wait_pool_full(FULL).await, "pool never filled");
    let first: BTreeSet<String> = b.pool_status().members.into_iter().collect();
    for m in &first {
        assert_eq!(leftovers_in(m), "", "in pool member {m}");
        assert!(
            b.list(&provider).await.unwrap().is_empty(),
            "members are not sold"
        );
    }

    // A buyer with a password and a key; then the workload ends.
    let keys = tempfile::tempdir().unwrap();
    let (key_path, key) = common::ssh::keygen(keys.path());
    let mut s = spec(&provider, &t, "alice", "first-buyer-pass");
    s.ssh_public_key = Some(key);
    let port = s.host_port.unwrap();
    b.create(&s).await.expect("warm spawn");
    let sold = b.instance_name(&s.name).await;
    assert!(first.contains(&sold), "served from the pool");
    // The spawn answer's host key fingerprints are the member's own keys.
    let fps = b.host_key_fingerprints(&s.name);
    let ed = lxc(&[
        "exec",
        &sold,
        "--",
        "ssh-keygen",
        "-lf",
        "/etc/ssh/ssh_host_ed25519_key.pub",
    ])
    .expect("ssh-keygen");
    let ed_fp = ed
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string();
    assert!(fps.contains(&ed_fp), "{fps:?} vs {ed_fp}");
    assert_eq!(
        common::ssh::ssh_key(port, "alice", &key_path, "whoami")
            .await
            .expect("key login")
            .trim(),
        "alice"
    );
    let cfg = b.instance_config(&s.name).await.unwrap().expect("config");
    assert_eq!(cfg.get(KEY_WORKLOAD), Some(&s.name));
    assert_eq!(cfg.get(KEY_PROVIDER), Some(&provider));
    assert!(!cfg.contains_key(KEY_POOL));
    let listed: Vec<String> = b
        .list(&provider)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(listed, vec![s.name.clone()]);
    b.destroy(&s.name).await.expect("destroy");
    assert!(lxc(&["info", &sold]).is_err(), "the sold container is gone");

    // Refilled: the sold one is not among the members, and every member is clean.
    assert!(b.wait_pool_full(FULL).await, "pool never refilled");
    let now: BTreeSet<String> = b.pool_status().members.into_iter().collect();
    assert!(!now.contains(&sold));
    for m in &now {
        assert_eq!(leftovers_in(m), "", "in pool member {m}");
    }
    b.stop_warm_pool().await;
    assert!(
        instances_with(KEY_POOL, &provider).is_empty(),
        "shutdown removes the members"
    );
}

/// A restarted provider re-adopts its members (same instances, no new ones made, nothing taken
/// for an orphan by the core's recovery); members of a shape no longer offered are removed.
#[tokio::test]
async fn restart_readopts_members_or_removes_them() {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: Config = common::config(dir.path(), &[&mint.url], 1, common::free_port_block(4));
    cfg.tiers.truncate(1);
    cfg.images.allowed = vec![IMAGE.into()];

    let a = pooled(2);
    let provider = Provider::open(cfg.clone(), Arc::new(a.clone()))
        .await
        .expect("provider");
    let id = provider.provider_id().to_string();
    let _guard = Cleanup(id.clone());
    assert!(a.wait_pool_full(FULL).await, "pool never filled");
    let before: BTreeSet<String> = a.pool_status().members.into_iter().collect();
    // A crash: the process goes away without removing anything.
    a.detach_warm_pool();
    drop(provider);
    assert_eq!(instances_with(KEY_POOL, &id), before);

    let b = pooled(2);
    let provider = Provider::open(cfg.clone(), Arc::new(b.clone()))
        .await
        .expect("restarted provider");
    assert_eq!(provider.provider_id(), id);
    let adopted: BTreeSet<String> = b.pool_status().members.into_iter().collect();
    assert_eq!(adopted, before, "the same members, ready at once");
    assert_eq!(b.pool_status().making, 0);
    assert_eq!(
        instances_with(KEY_POOL, &id),
        before,
        "nothing removed or added"
    );
    // And they still sell.
    let t = cfg.tiers[0].clone();
    let s = spec(&id, &t, "bob", "after-restart-pass");
    b.create(&s).await.expect("spawn after restart");
    assert!(before.contains(&b.instance_name(&s.name).await));
    assert_eq!(
        ssh_password(s.host_port.unwrap(), "bob", "after-restart-pass", "whoami")
            .await
            .expect("login")
            .trim(),
        "bob"
    );
    // Another process (a restart right after this sale) finds the sold container by the core's
    // name, with nothing in memory, and removes it.
    let sold = b.instance_name(&s.name).await;
    let fresh = pooled(0);
    let seen = fresh
        .inspect(&s.name)
        .await
        .unwrap()
        .expect("found by its name");
    assert_eq!(seen.name, s.name);
    fresh.destroy(&s.name).await.expect("destroy");
    assert!(lxc(&["info", &sold]).is_err(), "the sold container is gone");
    b.detach_warm_pool();
    drop(provider);

    // The operator changed the tier: the old members no longer fit and are removed.
    let mut changed = cfg.clone();
    changed.tiers[0].memory_mb = 384;
    let c = pooled(1);
    let provider = Provider::open(changed, Arc::new(c.clone()))
        .await
        .expect("provider with a changed tier");
    let left = instances_with(KEY_POOL, &id);
    assert!(
        left.intersection(&before).next().is_none(),
        "stale members removed: {left:?}"
    );
    assert!(
        c.wait_pool_full(FULL).await,
        "a new member of the new shape"
    );
    let fresh = c.pool_status().members;
    assert_eq!(fresh.len(), 1);
    assert_eq!(
        lxc(&["config", "get", &fresh[0], "limits.memory"])
            .unwrap()
            .trim(),
        "384MiB"
    );
    c.stop_warm_pool().await;
    drop(provider);
    assert!(instances_with(KEY_POOL, &id).is_empty());
}

/// With the pool empty, a spawn takes the cold path: two spawns at once on a pool of one get
/// one member and one cold container, and both buyers log in.
#[tokio::test]
async fn a_drained_pool_falls_back_to_the_cold_path() {
    let provider = format!("prov-pool-{}", suffix());
    let _guard = Cleanup(provider.clone());
    let t = tier(256);
    let b = pooled(1);
    b.start_warm_pool(&provider, std::slice::from_ref(&t), &[IMAGE.into()])
        .await;
    assert!(b.wait_pool_full(FULL).await, "pool never filled");
    let member = b.pool_status().members[0].clone();
    let (s1, s2) = (
        spec(&provider, &t, "carol", "carol-pass-1"),
        spec(&provider, &t, "dave", "dave-pass-2"),
    );
    let (r1, r2) = tokio::join!(b.create(&s1), b.create(&s2));
    r1.expect("first");
    r2.expect("second");
    let mut how: HashMap<&str, String> = HashMap::new();
    for s in [&s1, &s2] {
        how.insert(s.name.as_str(), b.instance_name(&s.name).await);
    }
    let warm: Vec<_> = how.values().filter(|i| **i == member).collect();
    let cold: Vec<_> = how.iter().filter(|(w, i)| *w == *i).collect();
    assert_eq!((warm.len(), cold.len()), (1, 1), "{how:?}");
    for (s, user, pw) in [(&s1, "carol", "carol-pass-1"), (&s2, "dave", "dave-pass-2")] {
        assert_eq!(
            ssh_password(s.host_port.unwrap(), user, pw, "whoami")
                .await
                .expect("login")
                .trim(),
            user
        );
    }
    // Both are ordinary workloads of the provider; the pool's next member is a new one.
    let mut listed: Vec<String> = b
        .list(&provider)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    listed.sort();
    let mut want = vec![s1.name.clone(), s2.name.clone()];
    want.sort();
    assert_eq!(listed, want);
    for s in [&s1, &s2] {
        b.destroy(&s.name).await.unwrap();
        assert!(b.inspect(&s.name).await.unwrap().is_none());
    }
    b.stop_warm_pool().await;
    assert!(instances_with(KEY_POOL, &provider).is_empty());
}

/// A pool member is made with exactly the isolation a cold workload gets: the same limits,
/// `limits.processes`, isolated id map and privileges.
#[tokio::test]
async fn pool_members_keep_the_isolation_of_cold_workloads() {
    let provider = format!("prov-pool-{}", suffix());
    let _guard = Cleanup(provider.clone());
    let t = tier(256);
    let b = LxdBackend::new(LxdConfig {
        warm_pool: 1,
        pids_max: 77,
        ..LxdConfig::default()
    })
    .unwrap();
    b.start_warm_pool(&provider, std::slice::from_ref(&t), &[IMAGE.into()])
        .await;
    let cold = spec(&provider, &t, "erin", "erin-pass-1");
    // Cold first (the pool is still filling), then warm.
    b.create(&cold).await.expect("cold");
    assert!(b.wait_pool_full(FULL).await);
    let warm = spec(&provider, &t, "frank", "frank-pass-1");
    b.create(&warm).await.expect("warm");
    assert_ne!(b.instance_name(&warm.name).await, warm.name, "served warm");
    let keys = [
        "limits.cpu",
        "limits.memory",
        "limits.processes",
        "security.idmap.isolated",
        "security.privileged",
        "security.nesting",
    ];
    let pick = |c: std::collections::BTreeMap<String, String>| -> Vec<Option<String>> {
        keys.iter().map(|k| c.get(*k).cloned()).collect()
    };
    let c = pick(b.instance_config(&cold.name).await.unwrap().unwrap());
    let w = pick(b.instance_config(&warm.name).await.unwrap().unwrap());
    assert_eq!(c, w);
    assert_eq!(w[2].as_deref(), Some("77"));
    assert_eq!(w[3].as_deref(), Some("true"));
    let cold_map = lxc(&[
        "config",
        "get",
        &b.instance_name(&cold.name).await,
        "volatile.idmap.base",
    ])
    .unwrap();
    let warm_map = lxc(&[
        "config",
        "get",
        &b.instance_name(&warm.name).await,
        "volatile.idmap.base",
    ])
    .unwrap();
    assert_ne!(cold_map.trim(), warm_map.trim(), "id ranges of their own");
    b.stop_warm_pool().await;
}

/// An image on offer that LXD lacks makes no member, and does not keep the pool from filling
/// the others (the missing one comes first, so it is tried first and keeps failing).
#[tokio::test]
async fn a_shape_that_cannot_be_made_does_not_starve_the_others() {
    let provider = format!("prov-pool-{}", suffix());
    let _guard = Cleanup(provider.clone());
    let t = tier(256);
    let b = pooled(1);
    let images = ["pgt-no-such-image".to_string(), IMAGE.to_string()];
    b.start_warm_pool(&provider, std::slice::from_ref(&t), &images)
        .await;
    let until = std::time::Instant::now() + FULL;
    let ready = loop {
        let st = b.pool_status();
        let n = |img: &str| st.ready.iter().find(|r| r.1 == img).map_or(0, |r| r.2);
        if n(IMAGE) == 1 || std::time::Instant::now() > until {
            break (n(IMAGE), n("pgt-no-such-image"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready, (1, 0));
    b.stop_warm_pool().await;
    assert!(instances_with(KEY_POOL, &provider).is_empty());
}

/// A provider that shuts down (its reaper ends, as when the server stops) removes its members.
#[tokio::test]
async fn shutdown_removes_the_members() {
    let mint = TestMint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: Config = common::config(dir.path(), &[&mint.url], 1, common::free_port_block(4));
    cfg.tiers.truncate(1);
    cfg.images.allowed = vec![IMAGE.into()];
    let b = pooled(1);
    let provider = Provider::open(cfg, Arc::new(b.clone()))
        .await
        .expect("provider");
    let id = provider.provider_id().to_string();
    let _guard = Cleanup(id.clone());
    assert!(b.wait_pool_full(FULL).await, "pool never filled");
    assert_eq!(instances_with(KEY_POOL, &id).len(), 1);
    let shutdown = CancellationToken::new();
    let reaper = provider.start_reaper(shutdown.clone());
    shutdown.cancel();
    reaper.await.expect("reaper");
    assert!(instances_with(KEY_POOL, &id).is_empty());
    assert_eq!(b.pool_status().total_ready(), 0);
}

/// A provider that died without shutting down (a killed demo: its next start has a new provider
/// id) leaves unsold members behind. The next provider to start a pool on this host removes
/// those whose owning process is gone, and leaves alone the members of a provider whose process
/// still runs.
#[tokio::test]
async fn a_dead_providers_members_are_removed_and_a_live_ones_are_kept() {
    let (dead_id, live_id, me) = (
        format!("dead-{}", suffix()),
        format!("live-{}", suffix()),
        format!("prov-{}", suffix()),
    );
    let _guards = (
        Cleanup(dead_id.clone()),
        Cleanup(live_id.clone()),
        Cleanup(me.clone()),
    );
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let my_start: u64 = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(19))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let member = |id: &str, owner: String| {
        let name = format!("pgw-{}", suffix());
        lxc(&[
            "init",
            IMAGE,
            &name,
            "-c",
            &format!("{KEY_POOL}={id}"),
            "-c",
            &format!("user.paygress.pool.owner={owner}"),
        ])
        .expect("lxc init");
        name
    };
    let dead = member(&dead_id, format!("{dead_pid}:12345"));
    let live = member(&live_id, format!("{}:{my_start}", std::process::id()));

    let b = pooled(1);
    b.start_warm_pool(&me, &[tier(256)], &[IMAGE.to_string()])
        .await;
    assert!(
        instances_with(KEY_POOL, &dead_id).is_empty(),
        "the dead provider's member {dead} is still there"
    );
    assert_eq!(
        instances_with(KEY_POOL, &live_id),
        BTreeSet::from([live.clone()]),
        "the live provider's member was touched"
    );
    b.stop_warm_pool().await;
}

/// Removes a test's own image alias, image and helper container, whatever happens.
struct ImageCleanup {
    alias: String,
    image: Option<String>,
    container: String,
}

impl Drop for ImageCleanup {
    fn drop(&mut self) {
        let _ = lxc(&["image", "alias", "delete", &self.alias]);
        if let Some(fp) = &self.image {
            let _ = lxc(&["image", "delete", fp]);
        }
        let _ = lxc(&["delete", "--force", &self.container]);
    }
}

fn fingerprint_of(alias: &str) -> String {
    let out = lxc(&["image", "info", alias]).expect("image info");
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Fingerprint: "))
        .expect("fingerprint")
        .trim()
        .to_string()
}

/// The operator rebuilds the image (the alias moves to a new one, e.g. for a security fix): a
/// member made from the old image is removed, never sold; the spawn gets the new image.
#[tokio::test]
async fn a_member_of_a_replaced_image_is_never_sold() {
    let provider = format!("prov-pool-{}", suffix());
    let _guard = Cleanup(provider.clone());
    let alias = format!("pgt-img-{}", suffix());
    let mut images = ImageCleanup {
        alias: alias.clone(),
        image: None,
        container: format!("pgt-pub-{}", suffix()),
    };
    lxc(&["image", "alias", "create", &alias, &fingerprint_of(IMAGE)]).expect("alias");
    let t = tier(256);
    let b = pooled(1);
    b.start_warm_pool(
        &provider,
        std::slice::from_ref(&t),
        std::slice::from_ref(&alias),
    )
    .await;
    assert!(b.wait_pool_full(FULL).await, "pool never filled");
    let member = b.pool_status().members[0].clone();

    // A "rebuilt" image: the same tree published as a new image, and the alias moved to it.
    lxc(&["init", IMAGE, &images.container]).expect("init");
    let out = lxc(&["publish", &images.container, "--compression", "none"]).expect("publish");
    let new_fp = out
        .split_whitespace()
        .last()
        .expect("fingerprint")
        .to_string();
    images.image = Some(new_fp.clone());
    let body = format!("{{\"target\": \"{new_fp}\", \"description\": \"\"}}");
    lxc(&[
        "query",
        "-X",
        "PUT",
        &format!("/1.0/images/aliases/{alias}"),
        "--data",
        &body,
    ])
    .expect("move the alias");

    let mut s = spec(&provider, &t, "erin", "erin-pass-1");
    s.image = alias.clone();
    b.create(&s).await.expect("spawn");
    let inst = b.instance_name(&s.name).await;
    assert_ne!(inst, member, "the old image's member was sold");
    let cfg = b.instance_config(&s.name).await.unwrap().expect("config");
    assert_eq!(
        cfg.get("volatile.base_image").map(String::as_str),
        Some(new_fp.as_str())
    );
    // The stale member is removed.
    let mut gone = false;
    for _ in 0..150 {
        if lxc(&["info", &member]).is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone, "the old image's member {member} is still there");
    b.destroy(&s.name).await.unwrap();
    b.stop_warm_pool().await;
}
