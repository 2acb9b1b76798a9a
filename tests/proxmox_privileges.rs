//! The least privileges `bootstrap --backend proxmox` grants ([`pve::LEAST_PRIVILEGES`], the
//! one table the bootstrap steps use too) are enough for the Proxmox backend's whole life
//! cycle, and every one of them is needed.
//!
//! fakepve (PyPI, PVE 9's schema) enforces per-path ACLs the way PVE does once any grant
//! exists: the launcher (`tools/e2e/fakepve_launch.py --grants FILE`) gives the token
//! `paygress@pve!provider` and its user exactly the table's privileges on the table's paths.
//! With all of them, a paid LXC guest goes through create, start, SSH login, top-up, expiry
//! stop, resume and deletion through the core; then, for each (path, privilege) of the table,
//! a fakepve without that one grant makes the backend's life cycle fail with PVE's 403 wording
//! (`Permission check failed …`).
//!
//! What fakepve does not model (said here and in the README): PVE's intersection of a
//! privilege-separated token's rights with its user's (fakepve takes either; the launcher
//! grants both the same, so a privilege left out is missing for both), and `user-tag-access`
//! (the default, `free`, lets `VM.Config.Options` set any tag, which is what the backend needs).
//!
//! Needs root (the stand-in SSH servers are sandbox workloads).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::mint::TestMint;
use common::proxmox::{loopback_block, ssh_key_at, Buyer, FakePve, StandIns, LXC_TEMPLATE};
use paygress::api::{SpawnRequest, TopUpRequest};
use paygress::backend::proxmox::{ProxmoxBackend, ProxmoxConfig};
use paygress::backend::{Backend, WorkloadSpec, WorkloadState};
use paygress::bootstrap::pve::{self, Targets};
use paygress::config::BackendChoice;
use paygress::secret::Secret;
use paygress::{Caller, Provider};
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "pve-pass-123";

/// The names the launcher's node has: root disks on local-lvm, the template on local, vmbr0.
fn targets() -> Targets {
    Targets {
        storage: "local-lvm".into(),
        template_storage: LXC_TEMPLATE.split(':').next().unwrap().into(),
        bridge: "vmbr0".into(),
    }
}

/// The table as the launcher's grants file, without the `skip`th (entry, privilege) if given.
fn grants(dir: &std::path::Path, skip: Option<(usize, usize)>) -> std::path::PathBuf {
    let list: Vec<serde_json::Value> = pve::acls(&targets())
        .into_iter()
        .enumerate()
        .map(|(i, (path, _, privs))| {
            let privs: Vec<&str> = privs
                .iter()
                .enumerate()
                .filter(|(j, _)| skip != Some((i, *j)))
                .map(|(_, p)| *p)
                .collect();
            serde_json::json!({"path": path, "privileges": privs})
        })
        .collect();
    let f = dir.join(format!("grants-{skip:?}.json"));
    std::fs::write(&f, serde_json::to_vec(&list).unwrap()).unwrap();
    f
}

struct Pve {
    pve: Arc<FakePve>,
    cfg: ProxmoxConfig,
    block: (u8, u8),
    ssh_port: u16,
    standins: StandIns,
}

/// fakepve with exactly these grants, the backend's config for it (static addresses on a
/// loopback /24), and stand-in sshds for its running guests.
fn launch(grants: &std::path::Path, dir: &std::path::Path) -> Pve {
    let pve = Arc::new(FakePve::start_with(&[
        "--token-id",
        pve::TOKEN_ID,
        "--grants",
        grants.to_str().unwrap(),
    ]));
    let block = loopback_block();
    let ssh_port = common::free_port_block(1).0;
    let network = format!(
        "[network]\nmode = \"static\"\npool_start = \"127.{a}.{b}.10\"\npool_end = \"127.{a}.{b}.20\"\n\
         prefix_len = 32\ngateway = \"127.{a}.{b}.1\"\nssh_port = {ssh_port}\n",
        a = block.0,
        b = block.1
    );
    let cfg: ProxmoxConfig =
        toml::from_str(&format!("{}\n{network}", pve.backend_toml("lxc"))).expect("config");
    let standins = StandIns::start(
        pve.clone(),
        Buyer {
            password: PASSWORD.into(),
        },
        ssh_port,
        dir,
    );
    Pve {
        pve,
        cfg,
        block,
        ssh_port,
        standins,
    }
}

async fn login(host: &str, port: u16, key: &std::path::Path) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        match ssh_key_at(host, port, "alice", key, "whoami").await {
            Ok(out) => return out.trim().to_string(),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no login at {host}:{port}: {last}");
}

/// With exactly the table's grants: pay, log in, top up, expire (stopped), top up (resumed,
/// log in again), expire past the grace period (destroyed), nothing left on the node.
#[tokio::test]
async fn the_least_privileges_carry_the_whole_life_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let p = launch(&grants(dir.path(), None), dir.path());
    let mint = TestMint::start().await;
    let mut cfg = common::config(dir.path(), &[&mint.url], 100, common::free_port_block(4));
    cfg.backend.kind = BackendChoice::Proxmox;
    cfg.backend.proxmox = p.cfg.clone();
    let backend = Arc::new(
        ProxmoxBackend::connect(p.cfg.clone())
            .await
            .expect("the token connects"),
    );
    let provider = Provider::open(cfg.clone(), backend.clone())
        .await
        .expect("provider");
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = common::ssh::keygen(keys.path());
    let r = provider
        .spawn(
            SpawnRequest {
                cashu_token: Secret::new(mint.token(100).await),
                ssh_username: "alice".into(),
                ssh_password: Some(Secret::new(PASSWORD)),
                ssh_public_key: Some(public),
                ..Default::default()
            },
            Caller::Local,
            None,
            CancellationToken::new(),
        )
        .await
        .expect("a paid spawn with the least privileges");
    let addr = format!("127.{}.{}.10", p.block.0, p.block.1);
    assert_eq!((r.host.as_str(), r.node_port), (addr.as_str(), p.ssh_port));
    assert_eq!(login(&r.host, r.node_port, &key).await, "alice");
    let top_up = |sats| {
        let (provider, mint, pod) = (provider.clone(), &mint, r.pod_npub.clone());
        async move {
            provider
                .top_up(TopUpRequest {
                    pod_npub: pod,
                    cashu_token: Secret::new(mint.token(sats).await),
                    request_id: None,
                })
                .await
                .expect("top-up")
        }
    };
    top_up(10).await;
    let row = provider.store().workload(&r.pod_npub).unwrap().unwrap();
    assert_eq!(
        provider.reap_at(row.expires_at).await.stopped,
        vec![r.pod_npub.clone()]
    );
    assert_eq!(
        backend.inspect(&row.name).await.unwrap().unwrap().state,
        WorkloadState::Stopped
    );
    top_up(10).await;
    assert_eq!(login(&r.host, r.node_port, &key).await, "alice");
    assert_eq!(
        backend.list(provider.provider_id()).await.unwrap().len(),
        1,
        "the token sees its guest in the node's list"
    );
    let row = provider.store().workload(&r.pod_npub).unwrap().unwrap();
    let grace = cfg.provider.expiry_grace_seconds;
    assert_eq!(
        provider.reap_at(row.expires_at + 1).await.stopped,
        vec![r.pod_npub.clone()]
    );
    assert_eq!(
        provider.reap_at(row.expires_at + 1 + grace).await.deleted,
        vec![r.pod_npub.clone()]
    );
    assert!(backend.inspect(&row.name).await.unwrap().is_none());
    assert!(
        p.pve.workloads().await.is_empty(),
        "nothing left on the node"
    );
    drop(p.standins);
}

fn spec(name: &str) -> WorkloadSpec {
    WorkloadSpec {
        name: name.into(),
        provider_id: "p1".into(),
        tier: paygress::config::Tier {
            id: "basic".into(),
            name: "Basic".into(),
            description: String::new(),
            cpu_millicores: 1000,
            memory_mb: 512,
            disk_gb: None,
            rate_msats_per_sec: 100,
        },
        image: "paygress-debian-12".into(),
        ssh_username: "alice".into(),
        ssh_password: Secret::new(PASSWORD),
        ssh_public_key: None,
        host_port: None,
        expires_at: paygress::provider::now_secs() + 600,
    }
}

/// The backend's calls, as the core makes them over a guest's life, each error as text.
async fn life_cycle(cfg: &ProxmoxConfig) -> Result<(), String> {
    let b = ProxmoxBackend::connect(cfg.clone())
        .await
        .map_err(|e| e.to_string())?;
    let s = spec("pv-life");
    b.create(&s).await.map_err(|e| e.to_string())?;
    let step = async {
        b.inspect(&s.name).await?;
        b.extend(&s.name, s.expires_at + 100).await?;
        b.stop(&s.name).await?;
        b.resume(&s.name).await?;
        // After a restart the backend knows its guests only from PVE's list.
        let fresh = ProxmoxBackend::connect(cfg.clone()).await?;
        if fresh.list(&s.provider_id).await?.len() != 1 {
            return Err(paygress::backend::BackendError::Api(
                "the restarted backend does not see its guest".into(),
            ));
        }
        fresh.destroy(&s.name).await?;
        match fresh.inspect(&s.name).await? {
            None => Ok(()),
            Some(_) => Err(paygress::backend::BackendError::Api(
                "the guest outlived its destroy".into(),
            )),
        }
    };
    step.await.map_err(|e| e.to_string())
}

/// Each privilege of the table, taken away alone, breaks the life cycle with PVE's 403.
#[tokio::test]
async fn every_privilege_of_the_table_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    // The control run: the same life cycle with the whole table passes.
    let p = launch(&grants(dir.path(), None), dir.path());
    life_cycle(&p.cfg)
        .await
        .expect("the whole table carries the life cycle");
    drop(p);
    for (i, g) in pve::LEAST_PRIVILEGES.iter().enumerate() {
        for (j, privilege) in g.privileges.iter().enumerate() {
            let p = launch(&grants(dir.path(), Some((i, j))), dir.path());
            let err = life_cycle(&p.cfg).await.expect_err(&format!(
                "the life cycle passed without {privilege} on {}",
                g.path.resolve(&targets())
            ));
            eprintln!(
                "without {privilege} on {}: {err}",
                g.path.resolve(&targets())
            );
            // PVE names the privilege in its 403, except for the create's own VM.Allocate
            // check (`Permission check failed`, bare, in pve-container's LXC.pm).
            let named = err.contains(&format!("{privilege})"))
                || err.contains(&format!("{privilege}|"))
                || (*privilege == "VM.Allocate" && err.ends_with("Permission check failed"));
            assert!(
                err.contains("Permission check failed") && named,
                "without {privilege} on {}: {err}",
                g.path.resolve(&targets())
            );
        }
    }
}

/// `--pve-network dhcp` (bootstrap's default) reads the guest's address from
/// `/lxc/{vmid}/interfaces`: the table covers that too.
#[tokio::test]
async fn dhcp_mode_needs_no_more_than_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let p = launch(&grants(dir.path(), None), dir.path());
    let mut cfg = p.cfg.clone();
    cfg.network = toml::from_str(&format!("mode = \"dhcp\"\nssh_port = {}\n", p.ssh_port)).unwrap();
    // The DHCP server: every running guest asking for DHCP gets 127.A.B.(40 + n).
    let (leases, block) = (p.pve.clone(), p.block);
    let dhcp = tokio::spawn(async move {
        loop {
            for g in leases.workloads().await {
                let net = g["config"]["net0"].as_str().unwrap_or_default().to_string();
                if g["status"] == "running" && net.contains("ip=dhcp") {
                    let vmid = g["vmid"].as_u64().unwrap();
                    let ip =
                        std::net::Ipv4Addr::new(127, block.0, block.1, 40 + (vmid % 100) as u8);
                    leases.lease(vmid, ip).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let b = ProxmoxBackend::connect(cfg).await.expect("connect");
    let s = spec("pv-dhcp");
    let ep = b
        .create(&s)
        .await
        .expect("a DHCP guest with the least privileges");
    assert_eq!(ep.host, Some(format!("127.{}.{}.40", p.block.0, p.block.1)));
    assert!(p
        .pve
        .requests()
        .await
        .iter()
        .any(|(m, path, _)| m == "GET" && path.ends_with("/lxc/10000/interfaces")));
    b.destroy(&s.name).await.expect("destroy");
    dhcp.abort();
}
