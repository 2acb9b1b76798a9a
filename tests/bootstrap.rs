//! `paygress-cli bootstrap` and `system reset` against a real host: an LXD container from the
//! base image (systemd + sshd), nesting enabled, reached over an LXD proxy device on 127.0.0.1.
//!
//! The container stands in for a whole VPS. Its only apt source is the local repository
//! tools/test.sh downloads (/var/cache/paygress/debs, mounted read-only): it has no network
//! interface at all, so nothing it does reaches a mirror or anything else. The test's mint and
//! relay (on the test machine's 127.0.0.1) are reachable inside through proxy devices bound in
//! the container (listening on its 127.0.0.1, connecting to ours), and the workloads' SSH ports
//! the other way round.
//!
//! The buy uses `--backend sandbox`: nested LXD installs and initialises inside the container
//! (see `lxd_backend_installs_and_initialises_inside`), but on these machines (cgroup v1 hybrid,
//! no systemd on the outer host) the inner LXD cannot start a container: unprivileged, it has no
//! uid range to give ("LXD doesn't have a uid/gid allocation"); privileged, liblxc fails on the
//! cgroup layout ("Failed to open 6/cpuacct").

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nostr_sdk::prelude::*;
use paygress::relay::EmbeddedRelay;
use tokio::io::AsyncWriteExt;

use common::mint::TestMint;

const CLI: &str = env!("CARGO_BIN_EXE_paygress-cli");
const IMAGE: &str = "paygress-debian-12";
const DEBS: &str = "/var/cache/paygress/debs";
const OPERATOR: &str = "op";
const OPERATOR_PASSWORD: &str = "op-sudo-Pw-8841";

/// The host container; removed on drop, whatever happened.
struct Host {
    name: String,
    ssh_port: u16,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::process::Command::new("lxc")
            .args(["delete", "--force", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn lxc(args: &[&str]) -> Output {
    std::process::Command::new("lxc")
        .args(args)
        .output()
        .unwrap()
}

fn lxc_ok(args: &[&str]) -> String {
    let o = lxc(args);
    assert!(
        o.status.success(),
        "lxc {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Host {
    /// Run a shell line inside as root (the test's own commands; never the product's way in).
    fn sh(&self, line: &str) -> Output {
        lxc(&["exec", &self.name, "--", "sh", "-c", line])
    }
    fn sh_ok(&self, line: &str) -> String {
        let o = self.sh(line);
        assert!(
            o.status.success(),
            "{line}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn sh_stdin(&self, line: &str, input: &str) {
        let mut c = std::process::Command::new("lxc")
            .args(["exec", &self.name, "--", "sh", "-c", line])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let o = c.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    fn proxy(&self, dev: &str, port: u16, bind_instance: bool) {
        let listen = format!("listen=tcp:127.0.0.1:{port}");
        let connect = format!("connect=tcp:127.0.0.1:{port}");
        let mut args = vec!["config", "device", "add", &self.name, dev, "proxy"];
        args.push(&listen);
        args.push(&connect);
        if bind_instance {
            args.push("bind=instance");
        }
        lxc_ok(&args);
    }
    fn host_key(&self) -> String {
        let out = self.sh_ok("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub");
        out.split_whitespace().nth(1).unwrap().to_string()
    }
    fn wait_for_systemd(&self) {
        for _ in 0..120 {
            let o = self.sh("systemctl is-system-running 2>/dev/null; systemctl is-active ssh");
            let s = String::from_utf8_lossy(&o.stdout);
            if (s.starts_with("running") || s.starts_with("degraded")) && s.contains("\nactive") {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("the host container did not boot");
    }
}

/// A host container: no network interface, the local repository as its only apt source, sudo
/// and a non-root operator with a password, SSH on 127.0.0.1:`ssh_port` here.
fn launch_host() -> Host {
    assert!(
        Path::new(DEBS).join("Packages").exists(),
        "{DEBS} is missing: run tools/test.sh"
    );
    let name = format!("pgb-{:08x}", rand::random::<u32>());
    let ssh_port = common::free_port_block(1).0;
    lxc_ok(&["init", IMAGE, &name, "-c", "security.nesting=true"]);
    let host = Host { name, ssh_port };
    let n = host.name.clone();
    lxc_ok(&["config", "device", "add", &n, "eth0", "none"]);
    let src = format!("source={DEBS}");
    lxc_ok(&[
        "config",
        "device",
        "add",
        &n,
        "debs",
        "disk",
        &src,
        "path=/srv/debs",
        "readonly=true",
    ]);
    lxc_ok(&[
        "config",
        "device",
        "add",
        &n,
        "ssh",
        "proxy",
        &format!("listen=tcp:127.0.0.1:{ssh_port}"),
        "connect=tcp:127.0.0.1:22",
    ]);
    lxc_ok(&["start", &n]);
    host.wait_for_systemd();
    host.sh_ok(
        "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/* && \
         echo 'deb [trusted=yes] file:/srv/debs ./' >/etc/apt/sources.list.d/paygress-test.list && \
         apt-get update -qq >/dev/null 2>&1 && \
         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends sudo >/dev/null 2>&1 && \
         useradd -m -s /bin/bash -G sudo op",
    );
    host.sh_stdin("chpasswd", &format!("{OPERATOR}:{OPERATOR_PASSWORD}\n"));
    host
}

/// Scans every /proc/*/cmdline of the host about every 2 ms and prints each command line the
/// first time it is seen, until /run/pgb-watch.stop exists. One long-lived perl process (the
/// base image has perl-base): a scan of a few dozen processes costs well under a millisecond,
/// and nothing is spawned per sample.
const WATCH: &str = r#"$| = 1; my %seen;
while (!-e "/run/pgb-watch.stop") {
  opendir(my $d, "/proc") or die "no /proc";
  for my $p (readdir $d) {
    next unless $p =~ /^\d+$/;
    open(my $f, "<", "/proc/$p/cmdline") or next;
    local $/; my $c = <$f>; close $f;
    next unless defined $c && length $c;
    $c =~ s/\0+$//; $c =~ tr/\0/ /;
    print "$c\n" unless $seen{$c}++;
  }
  closedir $d;
  select(undef, undef, undef, 0.002);
}"#;

/// Every command line on the host, watched continuously until `stop` (restarted when the host
/// reboots).
fn watch_ps(host: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<String> {
    let host = host.to_string();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = std::collections::BTreeSet::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut child) = std::process::Command::new("lxc")
                .args(["exec", &host, "--", "perl", "-e", WATCH])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
            else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            let out = child.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                std::io::BufReader::new(out)
                    .lines()
                    .map_while(Result::ok)
                    .collect::<Vec<_>>()
            });
            loop {
                if stop.load(Ordering::Relaxed) {
                    let _ = std::process::Command::new("lxc")
                        .args(["exec", &host, "--", "touch", "/run/pgb-watch.stop"])
                        .output();
                    break;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.wait();
            seen.extend(reader.join().unwrap_or_default());
            std::thread::sleep(Duration::from_millis(200));
        }
        seen.into_iter().collect::<Vec<_>>().join("\n")
    })
}

async fn cli(args: &[&str], stdin: &str, home: &Path) -> Output {
    let mut child = tokio::process::Command::new(CLI)
        .args(args)
        .env("HOME", home)
        .env_remove("NOSTR_RELAYS")
        .env_remove("PAYGRESS_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut i = child.stdin.take().unwrap();
    i.write_all(stdin.as_bytes()).await.unwrap();
    drop(i);
    tokio::time::timeout(Duration::from_secs(600), child.wait_with_output())
        .await
        .expect("the command finished in time")
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn offer_since(relay: &str, npub: &str, since: u64) -> bool {
    let c = Client::builder().signer(Keys::generate()).build();
    c.add_relay(relay).await.unwrap();
    c.connect().await;
    c.wait_for_connection(Duration::from_secs(5)).await;
    let pk = PublicKey::from_bech32(npub).unwrap();
    let f = Filter::new()
        .kind(Kind::Custom(paygress::market::OFFER_KIND))
        .author(pk);
    for _ in 0..120 {
        let ev = c
            .fetch_events(f.clone(), Duration::from_secs(2))
            .await
            .unwrap();
        if ev.iter().any(|e| e.created_at.as_secs() >= since) {
            c.shutdown().await;
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.shutdown().await;
    false
}

/// Modification times and identity of what bootstrap installs, and the service's start.
/// The installed files only (a refused reset stops and restarts the service, nothing else), and
/// the wallet files by name (their -wal/-shm files come and go as the service opens and closes
/// them).
fn files_fingerprint(host: &Host) -> String {
    host.sh_ok(
        "stat -c %n:%Y:%a:%U /usr/local/bin/paygress-cli /etc/paygress/paygress.toml \
         /etc/systemd/system/paygress-provider.service /var/lib/paygress/nostr.key; \
         ls /var/lib/paygress/wallets/*.sqlite",
    )
}

fn fingerprint(host: &Host) -> String {
    host.sh_ok(
        "stat -c %n:%Y:%a:%U /usr/local/bin/paygress-cli /etc/paygress/paygress.toml \
         /etc/systemd/system/paygress-provider.service /var/lib/paygress/nostr.key; \
         systemctl show -p MainPID -p ActiveEnterTimestampMonotonic paygress-provider",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_sells_from_a_fresh_host_survives_a_restart_reruns_as_a_noop_and_resets() {
    let mint = TestMint::start().await;
    let relay = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let relay_port: u16 = relay
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let mint_port: u16 = mint
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let host = launch_host();
    host.proxy("mint", mint_port, true);
    host.proxy("relay", relay_port, true);
    let ports = common::free_port_block(3);
    for p in ports.0..=ports.1 {
        host.proxy(&format!("w{p}"), p, false);
    }
    let home = tempfile::tempdir().unwrap();
    let known_hosts = home.path().join("known_hosts");
    let host_key = host.host_key();
    let ssh_port = host.ssh_port.to_string();
    let range = format!("{}-{}", ports.0, ports.1);
    let tier_file = home.path().join("tiers.toml");
    std::fs::write(
        &tier_file,
        "[[tiers]]\nid = \"basic\"\nname = \"Basic\"\ndescription = \"1 vCPU, 512 MiB\"\n\
         cpu_millicores = 1000\nmemory_mb = 512\nrate_msats_per_sec = 100\n\n\
         [[tiers]]\nid = \"large\"\nname = \"Large\"\ndescription = \"2 vCPU, 2 GiB\"\n\
         cpu_millicores = 2000\nmemory_mb = 2048\nrate_msats_per_sec = 300\n",
    )
    .unwrap();
    let tier_file = tier_file.to_str().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let ps = watch_ps(&host.name, stop.clone());
    let bootstrap_args = |host_key: &str| -> Vec<String> {
        [
            "bootstrap",
            "--host",
            "127.0.0.1",
            "--port",
            &ssh_port,
            "--user",
            OPERATOR,
            "--password-stdin",
            "--host-key",
            host_key,
            "--known-hosts",
            known_hosts.to_str().unwrap(),
            "--name",
            "Bootstrap test node",
            "--location",
            "Test rack",
            "--backend",
            "sandbox",
            "--mints",
            &mint.url,
            "--relays",
            &relay.url(),
            "--ssh-host",
            "127.0.0.1",
            "--ssh-ports",
            &range,
            "--tier-file",
            &tier_file,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = bootstrap_args(&host_key);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let pw = format!("{OPERATOR_PASSWORD}\n");

    // A wrong pin is refused before anything is sent.
    let mut bad = args.clone();
    let i = bad.iter().position(|a| a == "--host-key").unwrap() + 1;
    bad[i] = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
    let badv: Vec<&str> = bad.iter().map(String::as_str).collect();
    let o = cli(&badv, &pw, home.path()).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("not the pinned"), "{}", text(&o));
    assert!(!host.sh("test -e /etc/paygress").status.success());

    // This host is no Proxmox VE host: --backend proxmox is refused at its read-only
    // preflight, naming what is missing, and nothing on the host changes.
    let before_pve = host.sh_ok("ls -la /etc /usr/local/bin; getent passwd | sort | md5sum");
    let mut pve_args = args.clone();
    let i = pve_args.iter().position(|a| a == "--backend").unwrap() + 1;
    pve_args[i] = "proxmox".into();
    let pvev: Vec<&str> = pve_args.iter().map(String::as_str).collect();
    let o = cli(&pvev, &pw, home.path()).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    for w in [
        "not a Proxmox VE host",
        "pveversion is missing",
        "nothing was changed",
    ] {
        assert!(text(&o).contains(w), "{w}: {}", text(&o));
    }
    assert!(!text(&o).contains("] user: "), "no step ran: {}", text(&o));
    assert!(!host.sh("test -e /etc/paygress").status.success());
    assert!(!host.sh("id -u paygress").status.success());
    assert_eq!(
        host.sh_ok("ls -la /etc /usr/local/bin; getent passwd | sort | md5sum"),
        before_pve
    );

    // A step that fails names itself, and the run is simply redone: here the host has no
    // package source for a moment.
    host.sh_ok(
        "mv /etc/apt/sources.list.d/paygress-test.list /root/ && rm -rf /var/lib/apt/lists/*",
    );
    let o = cli(&argv, &pw, home.path()).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("packages: FAILED"), "{}", text(&o));
    assert!(text(&o).contains("step packages failed"), "{}", text(&o));
    assert!(!host.sh("test -e /etc/paygress").status.success());
    host.sh_ok("mv /root/paygress-test.list /etc/apt/sources.list.d/ && apt-get update -qq >/dev/null 2>&1");

    // First run: every step does its work, the service runs, the offer is on the relay.
    let o = cli(&argv, &pw, home.path()).await;
    let out = text(&o);
    assert!(o.status.success(), "bootstrap failed: {out}");
    for step in [
        "packages", "user", "binary", "data-dir", "config", "identity", "unit", "service",
    ] {
        assert!(out.contains(&format!("] {step}: done")), "{step}: {out}");
    }
    let npub = out
        .lines()
        .find_map(|l| l.strip_prefix("provider npub: "))
        .expect("npub printed")
        .trim()
        .to_string();
    assert!(out.contains("journalctl -u paygress-provider -f"), "{out}");
    assert!(out.contains("basic") && out.contains("large"), "{out}");
    assert!(out.contains("300 msat/s"), "{out}");
    assert!(
        !out.contains(OPERATOR_PASSWORD) && !out.contains("nsec1"),
        "{out}"
    );
    assert_eq!(
        host.sh_ok("systemctl is-active paygress-provider").trim(),
        "active"
    );
    assert_eq!(
        host.sh_ok("stat -c %a:%U /etc/paygress/paygress.toml /var/lib/paygress /var/lib/paygress/nostr.key"),
        "600:paygress\n700:paygress\n600:paygress\n"
    );
    assert_eq!(
        host.sh_ok("systemctl show -p User --value paygress-provider")
            .trim(),
        "paygress"
    );

    // The service survives a restart of the whole host and publishes again.
    let before_restart = paygress::provider::now_secs();
    lxc_ok(&["restart", &host.name]);
    host.wait_for_systemd();
    for _ in 0..60 {
        if host
            .sh("systemctl is-active --quiet paygress-provider")
            .status
            .success()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        host.sh_ok("systemctl is-active paygress-provider").trim(),
        "active"
    );
    // The new process says (in its status file) that a relay accepted its offer; that offer is
    // on the relay, and its marketplace door is listening.
    let mut started = 0;
    for _ in 0..120 {
        let pid = host.sh_ok("systemctl show -p MainPID --value paygress-provider");
        let st = host.sh("cat /var/lib/paygress/status.json");
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&st.stdout) {
            if v["pid"].as_u64().map(|p| p.to_string()).as_deref() == Some(pid.trim())
                && v["last_heartbeat_at"].as_u64().is_some()
            {
                started = v["started_at"].as_u64().unwrap();
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        started >= before_restart,
        "the restarted provider never published"
    );
    assert!(
        offer_since(&relay.url(), &npub, started).await,
        "no offer after the restart"
    );

    // A buyer buys over the relay with a real token and logs in over ssh.
    let token = mint.token(120).await;
    let buyer_home = tempfile::tempdir().unwrap();
    let o = {
        let mut c = tokio::process::Command::new(CLI);
        c.args([
            "market",
            "spawn",
            "--relay",
            &relay.url(),
            "--provider",
            &npub,
            "--tier",
            "basic",
            "--token",
            "-",
            "--user",
            "alice",
            "--json",
        ])
        .env("HOME", buyer_home.path())
        .env("PAYGRESS_SSH_PASSWORD", "alice-Pw-5521")
        .env_remove("NOSTR_RELAYS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut i = child.stdin.take().unwrap();
        i.write_all(token.as_bytes()).await.unwrap();
        drop(i);
        tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
            .await
            .unwrap()
            .unwrap()
    };
    assert!(
        o.status.success(),
        "spawn: {}\nthe provider's log: {}",
        text(&o),
        String::from_utf8_lossy(
            &host
                .sh("journalctl -u paygress-provider -n 40 --no-pager -o cat")
                .stdout
        )
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let port = r["node_port"].as_u64().unwrap() as u16;
    assert!((ports.0..=ports.1).contains(&port), "{r}");
    let who = common::ssh::ssh_password(port, "alice", "alice-Pw-5521", "whoami")
        .await
        .expect("ssh into the bought workload");
    assert_eq!(who.trim(), "alice");

    // provider status over SSH: what the running provider knows, and its earnings.
    let status_args = [
        "provider",
        "status",
        "--host",
        "127.0.0.1",
        "--port",
        &ssh_port,
        "--user",
        OPERATOR,
        "--password-stdin",
        "--host-key",
        &host_key,
    ];
    let mut st = serde_json::Value::Null;
    for _ in 0..40 {
        let mut a = status_args.to_vec();
        a.push("--json");
        let o = cli(&a, &pw, home.path()).await;
        assert!(o.status.success(), "status: {}", text(&o));
        st = serde_json::from_slice(&o.stdout).unwrap();
        // Both relay doors are open (ContextVM's self-check may take a while).
        if st["status"]["doors"].to_string().contains("contextvm") {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(st["running"], true, "{st}");
    assert_eq!(st["status"]["npub"], npub.as_str(), "{st}");
    assert_eq!(st["status"]["live_workloads"], 1, "{st}");
    assert_eq!(st["earnings_total_sats"], 120, "{st}");
    assert!(st["status"]["last_heartbeat_at"].as_u64().is_some(), "{st}");
    let doors = st["status"]["doors"].to_string();
    assert!(
        doors.contains("marketplace") && doors.contains("contextvm"),
        "{st}"
    );
    assert_eq!(st["status"]["relays"][0]["connected"], true, "{st}");
    let o = cli(&status_args, &pw, home.path()).await;
    let table = text(&o);
    assert!(o.status.success(), "{table}");
    for w in [
        "running (pid",
        "marketplace",
        "connected",
        "120 sat at",
        "1 live",
    ] {
        assert!(table.contains(w), "{w}: {table}");
    }

    // From here the operator has a NOPASSWD rule for /bin/bash only (not for `true`): sudo
    // then never reads the password sent first, and the sentinel check must keep it from the
    // scripts' input (the config step would write it into paygress.toml, changing the file).
    host.sh_ok(
        "echo 'op ALL=(ALL) NOPASSWD: /bin/bash' >/etc/sudoers.d/op-bash && chmod 0440 /etc/sudoers.d/op-bash \
         && visudo -cq",
    );
    // A second run changes nothing: every step unchanged, no file rewritten, no restart.
    let before = fingerprint(&host);
    // It does not wait for the next heartbeat (every 60 s): the running service's offers since
    // its start count. With 10 s to find one, a bar at this run's start would fail unless a
    // heartbeat happened to fall in those 10 s.
    let mut rerun = argv.clone();
    rerun.extend(["--offer-timeout", "10"]);
    let t = std::time::Instant::now();
    let o = cli(&rerun, &pw, home.path()).await;
    let out = text(&o);
    assert!(o.status.success(), "second bootstrap: {out}");
    eprintln!("no-op rerun (sandbox): {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(out.matches(": unchanged").count(), 8, "{out}");
    assert!(!out.contains(": done"), "{out}");
    assert_eq!(fingerprint(&host), before);

    // A run that changes the config and then fails before the service step (here: the key's
    // mode is wrong, so the identity step fails its check) leaves the service on the old
    // config; the next run, though every file step is unchanged then, restarts it.
    let mut renamed = args.clone();
    let i = renamed.iter().position(|a| a == "--name").unwrap() + 1;
    renamed[i] = "Renamed test node".into();
    let renamedv: Vec<&str> = renamed.iter().map(String::as_str).collect();
    host.sh_ok("chmod 0640 /var/lib/paygress/nostr.key");
    let pid = |host: &Host| host.sh_ok("systemctl show -p MainPID --value paygress-provider");
    let pid_before = pid(&host);
    let o = cli(&renamedv, &pw, home.path()).await;
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("] config: done") && out.contains("] identity: FAILED"),
        "{out}"
    );
    assert_eq!(pid(&host), pid_before, "not restarted yet: {out}");
    host.sh_ok("chmod 0600 /var/lib/paygress/nostr.key");
    let o = cli(&renamedv, &pw, home.path()).await;
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("] config: unchanged") && out.contains("] service: done"),
        "{out}"
    );
    assert_ne!(
        pid(&host),
        pid_before,
        "the service was not restarted: {out}"
    );
    // Back to the first config (a restart again), then a rerun is a no-op once more.
    let o = cli(&argv, &pw, home.path()).await;
    assert!(o.status.success(), "{}", text(&o));
    let before = fingerprint(&host);
    let o = cli(&argv, &pw, home.path()).await;
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(!out.contains(": done"), "{out}");
    assert_eq!(fingerprint(&host), before);

    // A rerun that drops the mint holding the 120 sat, or switches the backend under a live
    // workload, is refused before any step.
    let swap = |flag: &str, value: &str| -> Vec<String> {
        let mut v = args.clone();
        let i = v.iter().position(|x| x == flag).unwrap();
        v[i + 1] = value.to_string();
        v
    };
    let v = swap("--mints", "http://127.0.0.1:9");
    let o = cli(
        &v.iter().map(String::as_str).collect::<Vec<_>>(),
        &pw,
        home.path(),
    )
    .await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("120 sat) are at a mint the new --mints drops"),
        "{}",
        text(&o)
    );
    let v = swap("--backend", "lxd");
    let o = cli(
        &v.iter().map(String::as_str).collect::<Vec<_>>(),
        &pw,
        home.path(),
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("would orphan them"), "{}", text(&o));
    assert!(!text(&o).contains("[1/"), "a step ran: {}", text(&o));
    assert_eq!(fingerprint(&host), before);

    // Earnings present: reset refuses and changes nothing.
    let earned: u64 = {
        let b = host.sh_ok(
            "cd / && runuser -u paygress -- paygress-cli wallet balance --config /etc/paygress/paygress.toml --json",
        );
        let v: serde_json::Value = serde_json::from_str(b.trim()).unwrap();
        v["total_sats"].as_u64().unwrap()
    };
    assert_eq!(earned, 120);
    let reset = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "system",
            "reset",
            "--host",
            "127.0.0.1",
            "--port",
            &ssh_port,
            "--user",
            OPERATOR,
            "--password-stdin",
            "--host-key",
            &host_key,
            "--yes",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    // Without a terminal and without --yes, reset does not start.
    {
        let mut a = reset(&[]);
        a.retain(|x| x != "--yes");
        let o = cli(
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            &pw,
            home.path(),
        )
        .await;
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("pass --yes"), "{}", text(&o));
    }
    let run_reset = |extra: Vec<String>| {
        let home = home.path().to_path_buf();
        let pw = pw.clone();
        async move {
            cli(
                &extra.iter().map(String::as_str).collect::<Vec<_>>(),
                &pw,
                &home,
            )
            .await
        }
    };
    // A second wallet file the config does not name (as a rerun with other --mints leaves
    // behind): its 120 sat are counted too. It is a copy, so after the real wallet is withdrawn
    // it still shows 120 sat the withdrawal cannot take, and reset must keep everything.
    host.sh_ok(
        "systemctl stop paygress-provider && cd /var/lib/paygress/wallets \
         && f=$(ls *.sqlite | head -n1) && for x in '' -wal -shm; do \
         if [ -e \"$f$x\" ]; then cp -p \"$f$x\" \"0stale.sqlite$x\"; fi; done \
         && systemctl start paygress-provider",
    );
    let files_before = files_fingerprint(&host);
    let o = run_reset(reset(&[])).await;
    let out = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.contains("refusing"), "{out}");
    assert!(
        out.contains(
            "books on the host: 240 sat in 2 wallets (240 sat spendable), 0 unsettled payments"
        ),
        "{out}"
    );
    assert_eq!(files_fingerprint(&host), files_before);
    assert!(host
        .sh("systemctl is-active --quiet paygress-provider")
        .status
        .success());

    // With --withdraw-to the config's wallet comes out as a token; the stale copy still holds
    // 120 sat, so nothing is deleted and the host's copy of the tokens is confirmed and gone.
    let tokens = home.path().join("earnings.tokens");
    let o = run_reset(reset(&["--withdraw-to", tokens.to_str().unwrap()])).await;
    let out = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.contains("still holds 120 sat"), "{out}");
    assert!(out.contains("0stale.sqlite"), "{out}");
    assert!(!out.contains("cashu"), "a token on the terminal: {out}");
    assert!(host
        .sh("test -e /var/lib/paygress/nostr.key")
        .status
        .success());
    assert!(!host
        .sh("test -e /var/lib/paygress/withdrawn.tokens")
        .status
        .success());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&tokens).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The stale copy removed, reset counts 0 sat and removes everything.
    host.sh_ok("rm -f /var/lib/paygress/wallets/0stale.sqlite*");
    let tokens2 = home.path().join("earnings2.tokens");
    let o = run_reset(reset(&["--withdraw-to", tokens2.to_str().unwrap()])).await;
    assert!(o.status.success(), "reset: {}", text(&o));
    assert!(
        text(&o).contains(
            "books on the host: 0 sat in 1 wallets (0 sat spendable), 0 unsettled payments"
        ),
        "{}",
        text(&o)
    );
    assert!(!tokens2.exists());
    // The books to the sat: the buyer paid 120, the operator holds tokens worth 120.
    let wallet = common::mint::fresh_wallet(&mint.url).await;
    let mut redeemed = 0;
    let lines = std::fs::read_to_string(&tokens).unwrap();
    for t in lines.lines() {
        redeemed += u64::from(
            wallet
                .receive(t, cdk::wallet::ReceiveOptions::default())
                .await
                .unwrap(),
        );
    }
    assert_eq!(redeemed, earned);
    let left = host.sh(
        "test -e /etc/paygress || test -e /var/lib/paygress || test -e /usr/local/bin/paygress-cli \
         || test -e /etc/systemd/system/paygress-provider.service || id -u paygress || pgrep -u paygress",
    );
    assert!(
        !left.status.success(),
        "{}",
        String::from_utf8_lossy(&left.stdout)
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
            || common::ssh::ssh_password(port, "alice", "alice-Pw-5521", "true")
                .await
                .is_err(),
        "the workload outlived the reset"
    );

    // The watch sees short-lived processes: five that live about 100 ms each (`ps` every 100 ms
    // misses some of those; the watch scans every ~2 ms, so only a stall of the host longer
    // than the process's life could hide one).
    for i in 0..5 {
        host.sh_ok(&format!("sh -c 'sleep 0.1; : pgb-probe-{i}'"));
    }
    std::thread::sleep(Duration::from_millis(300));
    // Nothing secret was ever on a command line of the host.
    stop.store(true, Ordering::Relaxed);
    let seen = ps.join().unwrap();
    for i in 0..5 {
        assert!(
            seen.contains(&format!("pgb-probe-{i}")),
            "the watch missed a 100 ms process: {seen}"
        );
    }
    assert!(seen.lines().count() > 20, "ps saw too little: {seen}");
    assert!(!seen.contains(OPERATOR_PASSWORD), "password in ps");
    assert!(!seen.contains("alice-Pw-5521"), "buyer password in ps");
    assert!(!seen.contains("nsec1"), "nsec in ps");
    assert!(!seen.contains("cashu"), "token in ps");
    assert!(
        seen.contains("paygress-cli provider start"),
        "ps missed the service: {seen}"
    );
    let all_output = text(&o);
    assert!(!all_output.contains(OPERATOR_PASSWORD));
    let journal = host.sh("journalctl --no-pager -o cat");
    assert!(
        !String::from_utf8_lossy(&journal.stdout).contains(OPERATOR_PASSWORD),
        "the sudo password reached the host's journal"
    );
}

/// `provider status --config` only reads: a data dir that is not there is not created, and one
/// that is gets no wallet, seed or journal added.
#[tokio::test]
async fn provider_status_here_creates_nothing() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let cfg = home.path().join("provider.toml");
    std::fs::write(
        &cfg,
        format!(
            "[provider]\ndata_dir = {:?}\n\n[backend]\nkind = \"sandbox\"\n\n[payments]\nwhitelisted_mints = [\"http://127.0.0.1:9\"]\n\n\
             [[tiers]]\nid = \"basic\"\nname = \"Basic\"\ndescription = \"1 vCPU\"\n\
             cpu_millicores = 1000\nmemory_mb = 512\nrate_msats_per_sec = 100\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let args = [
        "provider",
        "status",
        "--config",
        cfg.to_str().unwrap(),
        "--json",
    ];
    let o = cli(&args, "", home.path()).await;
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["earnings_total_sats"], 0, "{v}");
    assert!(!data.exists(), "status created the data dir");
    std::fs::create_dir(&data).unwrap();
    let o = cli(&args, "", home.path()).await;
    assert!(o.status.success(), "{}", text(&o));
    let added: Vec<_> = std::fs::read_dir(&data).unwrap().collect();
    assert!(
        added.is_empty(),
        "status wrote into the data dir: {added:?}"
    );
}

#[tokio::test]
async fn every_help_and_usage_error() {
    let home = tempfile::tempdir().unwrap();
    for (args, wants) in [
        (
            vec!["bootstrap", "--help"],
            vec![
                "--host",
                "--user",
                "--port",
                "--key",
                "--password-stdin",
                "--sudo-password-stdin",
                "--host-key",
                "--known-hosts",
                "--yes",
                "--name",
                "--location",
                "--backend",
                "--mints",
                "--relays",
                "--tier-file",
                "--ssh-host",
                "--ssh-ports",
                "--dry-run",
                "--sell-sandbox-to-strangers",
                "--lxd-bridge-addr",
                "--lxd-workload-bridge-addr",
                "proxmox",
                "--pve-node",
                "--pve-storage",
                "--pve-template-storage",
                "--pve-template",
                "--pve-bridge",
                "--pve-network",
                "--pve-pool",
                "--pve-gateway",
                "--pve-prefix-len",
                "paygress@pve!provider",
                "/etc/paygress/proxmox-token",
            ],
        ),
        (vec!["system", "--help"], vec!["reset"]),
        (
            vec!["system", "reset", "--help"],
            vec![
                "--host",
                "--withdraw-to",
                "--uninstall-backend",
                "--dry-run",
                "--yes",
                "--host-key",
            ],
        ),
        (
            vec!["provider", "--help"],
            vec!["start", "identity", "remove-workloads"],
        ),
        (vec!["provider", "identity", "--help"], vec!["--config"]),
        (
            vec!["provider", "status", "--help"],
            vec![
                "--config",
                "--host",
                "--json",
                "--host-key",
                "--password-stdin",
            ],
        ),
        (
            vec!["provider", "remove-workloads", "--help"],
            vec!["--config"],
        ),
        (
            vec!["wallet", "withdraw", "--help"],
            vec!["--amount", "--all", "--mint"],
        ),
        (vec!["--help"], vec!["bootstrap", "system"]),
    ] {
        let o = cli(&args, "", home.path()).await;
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        for w in wants {
            assert!(text(&o).contains(w), "{args:?} lacks {w}: {}", text(&o));
        }
    }
    let base = [
        "bootstrap",
        "--host",
        "127.0.0.1",
        "--name",
        "n",
        "--mints",
        "http://127.0.0.1:1",
        "--relays",
        "ws://127.0.0.1:2",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    let existing = home.path().join("exists");
    std::fs::write(&existing, "x").unwrap();
    let existing = Box::leak(existing.to_str().unwrap().to_string().into_boxed_str());
    let tiers = home.path().join("tiers.toml");
    std::fs::write(&tiers, "[[tiers]]\nid = \"x\"\n").unwrap();
    let tiers = Box::leak(tiers.to_str().unwrap().to_string().into_boxed_str());
    for (args, says) in [
        (vec!["bootstrap"], "--host"),
        (
            vec![
                "bootstrap",
                "--host",
                "h",
                "--mints",
                "http://m",
                "--relays",
                "ws://r",
            ],
            "--name",
        ),
        (
            vec![
                "bootstrap",
                "--host",
                "h",
                "--name",
                "n",
                "--relays",
                "ws://r",
            ],
            "--mints",
        ),
        (
            vec![
                "bootstrap",
                "--host",
                "h",
                "--name",
                "n",
                "--mints",
                "http://m",
            ],
            "--relays",
        ),
        (with(&["--ssh-ports", "9-1"]), "START"),
        (
            with(&["--sell-sandbox-to-strangers"]),
            "for --backend sandbox",
        ),
        (with(&["--lxd-bridge-addr", "10.0.0.1"]), "a.b.c.d/n"),
        // Names checked against PVE's own formats before anything connects.
        (
            with(&["--backend", "proxmox", "--pve-node", "pve.example"]),
            "not a PVE node name",
        ),
        (
            with(&["--backend", "proxmox", "--pve-storage", "1local"]),
            "not a PVE storage id",
        ),
        (
            with(&["--backend", "proxmox", "--pve-template-storage", "a;b"]),
            "not a PVE storage id",
        ),
        (
            with(&["--backend", "proxmox", "--pve-bridge", "vmbr0 x"]),
            "not a bridge name",
        ),
        (
            with(&["--backend", "proxmox", "--pve-template", "../x.tar.zst"]),
            "not a container template file name",
        ),
        (
            with(&["--backend", "proxmox", "--pve-network", "nat"]),
            "--pve-network",
        ),
        (
            with(&["--backend", "proxmox", "--pve-network", "static"]),
            "needs --pve-pool",
        ),
        (
            with(&["--backend", "proxmox", "--pve-pool", "10.0.0.9-10.0.0.1"]),
            "FIRST must not come after LAST",
        ),
        (
            with(&["--backend", "proxmox", "--pve-gateway", "10.0.0.1"]),
            "are for --pve-network static",
        ),
        (
            with(&["--backend", "proxmox", "--pve-prefix-len", "40"]),
            "--pve-prefix-len",
        ),
        (with(&["--pve-bridge", "vmbr1"]), "for --backend proxmox"),
        (with(&["--lxd-workload-bridge-addr", "$(id)/24"]), "IPv4"),
        (with(&["--ssh-ports", "x"]), "START-END"),
        (with(&["--port", "70000"]), "--port"),
        (with(&["--backend", "kubernetes"]), "--backend"),
        (
            with(&["--key", "/k", "--password-stdin"]),
            "cannot be used with",
        ),
        (
            with(&["--password-stdin", "--sudo-password-stdin"]),
            "cannot be used with",
        ),
        (with(&["--host-key", "MD5:xx"]), "--host-key must be SHA256"),
        (
            with(&["--tier-file", "/nonexistent/tiers.toml"]),
            "tiers.toml",
        ),
        (with(&["--tier-file", tiers]), "tiers.toml"),
        (
            with(&["--mints", "not a url", "--dry-run"]),
            "refused by the provider",
        ),
        (vec!["system"], "reset"),
        (vec!["system", "reset"], "--host"),
        (
            vec!["system", "reset", "--host", "h", "--withdraw-to", existing],
            "exists",
        ),
        (
            vec![
                "system",
                "reset",
                "--host",
                "h",
                "--uninstall-backend",
                "k8s",
            ],
            "--uninstall-backend",
        ),
        (
            vec![
                "system",
                "reset",
                "--host",
                "h",
                "--uninstall-backend",
                "proxmox",
            ],
            "pveum user delete paygress@pve",
        ),
        (vec!["wallet", "withdraw", "--config", "/x"], "--amount"),
        (
            vec![
                "wallet", "withdraw", "--config", "/x", "--amount", "1", "--all",
            ],
            "cannot be used with",
        ),
        (vec!["provider", "identity"], "--config FILE"),
        (vec!["provider", "status"], "--config FILE"),
        (
            vec!["provider", "status", "--config", "/x", "--host", "h"],
            "cannot be used with",
        ),
    ] {
        let o = cli(&args, "", home.path()).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains(says),
            "{args:?} should say {says}: {}",
            text(&o)
        );
    }
    // A dry run connects to nothing and prints every step.
    let o = cli(&with(&["--dry-run", "--backend", "lxd"]), "", home.path()).await;
    assert!(o.status.success(), "{}", text(&o));
    for step in [
        "lxd",
        "base-image",
        "user",
        "binary",
        "data-dir",
        "config",
        "identity",
        "unit",
        "service",
    ] {
        assert!(
            text(&o).contains(&format!("] {step}: ")),
            "{step}: {}",
            text(&o)
        );
    }
    // The Proxmox dry run: the read-only preflight, then the pveum/pveam steps with the
    // table's paths, then the common steps.
    let o = cli(
        &with(&[
            "--dry-run",
            "--backend",
            "proxmox",
            "--pve-storage",
            "tank",
            "--pve-bridge",
            "vmbr7",
        ]),
        "",
        home.path(),
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    for step in [
        "user",
        "pve-template",
        "pve-roles",
        "pve-user",
        "pve-token",
        "pve-acl",
        "pve-image",
        "binary",
        "config",
        "identity",
        "unit",
        "service",
    ] {
        assert!(out.contains(&format!("] {step}: ")), "{step}: {out}");
    }
    for w in [
        "Proxmox VE 8 or newer",
        "pveum role add/modify PaygressGuests, PaygressDisks, PaygressTemplates, PaygressBridge",
        "pveum user token add paygress@pve provider --privsep 1",
        "/vms PaygressGuests",
        "/storage/tank PaygressDisks",
        "/storage/local PaygressTemplates",
        "/sdn/zones/localnetwork/vmbr7 PaygressBridge",
        "https://127.0.0.1:8006",
        "local:vztmpl/paygress-debian-12-standard_12.7-1_amd64-",
        "add the Paygress first-boot login",
    ] {
        assert!(out.contains(w), "{w}: {out}");
    }
    assert!(!out.contains("] packages: "), "{out}");
    let o = cli(
        &["system", "reset", "--host", "h", "--dry-run"],
        "",
        home.path(),
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("] files: "), "{}", text(&o));
}

/// The LXD backend's steps on the same kind of host: provider/lxd-setup.sh installs LXD from the
/// local repository and initialises it (pool, bridges, egress ACL), provider/build-base-image.sh
/// imports the base image (from its documented cache, /var/cache/paygress, which the operator
/// may fill in advance and the test does: the host has no mirror to debootstrap from), and the
/// service runs with the LXD backend through LXD's socket and publishes its offer. Then reset
/// with --uninstall-backend removes Paygress and LXD. No workload is bought: nested LXD cannot
/// start a container here (see the top of the file); the attempt is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lxd_backend_installs_and_initialises_inside() {
    let mint = TestMint::start().await;
    let relay = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let relay_port: u16 = relay
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let mint_port: u16 = mint
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let host = launch_host();
    host.proxy("mint", mint_port, true);
    host.proxy("relay", relay_port, true);
    host.sh_ok("mkdir -p /var/cache/paygress");
    // The whole cache: the tarballs and the stamp of the tuning they were made with (without
    // it the script tunes the tree again, which unpacks device nodes a container cannot make).
    for f in [
        "paygress-debian-12.meta.tar.gz",
        "paygress-debian-12.rootfs.tar",
        "paygress-debian-12.rootfs.tar.tune",
    ] {
        lxc_ok(&[
            "file",
            "push",
            &format!("/var/cache/paygress/{f}"),
            &format!("{}/var/cache/paygress/{f}", host.name),
        ]);
    }
    let home = tempfile::tempdir().unwrap();
    let ssh_port = host.ssh_port.to_string();
    let pw = format!("{OPERATOR_PASSWORD}\n");
    // This time: a key login, sudo's password on stdin, and the host key learnt on first
    // contact (--yes) into a known_hosts file, then checked against it.
    let (key, public) = common::ssh::keygen(home.path());
    host.sh_stdin(
        "install -d -o op -g op -m 0700 /home/op/.ssh && cat >/home/op/.ssh/authorized_keys \
         && chown op:op /home/op/.ssh/authorized_keys",
        &format!("{public}\n"),
    );
    let kh = home.path().join("known_hosts");
    let (key, kh) = (key.to_str().unwrap(), kh.to_str().unwrap());
    let (mint_url, relay_url) = (mint.url.clone(), relay.url());
    let mut args = vec![
        "bootstrap",
        "--host",
        "127.0.0.1",
        "--port",
        &ssh_port,
        "--user",
        OPERATOR,
        "--key",
        key,
        "--sudo-password-stdin",
        "--known-hosts",
        kh,
        "--name",
        "LXD test node",
        "--backend",
        "lxd",
        "--mints",
        &mint_url,
        "--relays",
        &relay_url,
        "--ssh-host",
        "127.0.0.1",
        "--lxd-bridge-addr",
        "10.99.0.1/24",
        "--lxd-workload-bridge-addr",
        "10.98.0.1/24",
    ];
    // Unknown host, no --yes, no terminal to ask on: refused before anything is sent.
    let o = cli(&args, &pw, home.path()).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("is not in"), "{}", text(&o));
    let mut first = args.clone();
    first.push("--yes");
    let o = cli(&first, &pw, home.path()).await;
    let out = text(&o);
    assert!(o.status.success(), "bootstrap --backend lxd: {out}");
    for step in [
        "lxd",
        "base-image",
        "user",
        "binary",
        "config",
        "identity",
        "unit",
        "service",
    ] {
        assert!(out.contains(&format!("] {step}: done")), "{step}: {out}");
    }
    assert!(out.contains("provider npub: npub1"), "{out}");
    assert_eq!(
        host.sh_ok("id -nG paygress")
            .split_whitespace()
            .filter(|g| *g == "lxd")
            .count(),
        1
    );
    host.sh_ok(
        "lxc image info paygress-debian-12 >/dev/null && lxc network show paygressbr0 >/dev/null",
    );
    assert_eq!(
        host.sh_ok("lxc network get lxdbr0 ipv4.address; lxc network get paygressbr0 ipv4.address"),
        "10.99.0.1/24\n10.98.0.1/24\n"
    );
    // What nested LXD does here when asked for a container (printed for the record).
    let nested = host.sh("lxc launch paygress-debian-12 pgb-nested-probe 2>&1 | tail -n 3; lxc delete -f pgb-nested-probe >/dev/null 2>&1");
    eprintln!(
        "nested LXD launch inside the host: {}",
        String::from_utf8_lossy(&nested.stdout)
    );
    // Rerun: nothing to do.
    assert!(out.contains(&host.host_key()), "{out}");
    args.retain(|a| *a != "--yes");
    // Found within 10 s: the running service's offers since its start count (see the sandbox
    // flow).
    let mut rerun = args.clone();
    rerun.extend(["--offer-timeout", "10"]);
    let t = std::time::Instant::now();
    let o = cli(&rerun, &pw, home.path()).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).matches(": unchanged").count(), 9, "{}", text(&o));
    eprintln!("no-op rerun (lxd): {:.1} s", t.elapsed().as_secs_f64());

    known_hosts_verdicts_match_openssh(&host, home.path(), key, &pw).await;

    // A known_hosts naming another key for this host: refused.
    let other = tempfile::tempdir().unwrap();
    let (_, other_public) = common::ssh::keygen(other.path());
    let bad_kh = home.path().join("known_hosts.changed");
    std::fs::write(&bad_kh, format!("[127.0.0.1]:{ssh_port} {other_public}\n")).unwrap();
    let mut reset = vec![
        "system",
        "reset",
        "--host",
        "127.0.0.1",
        "--port",
        &ssh_port,
        "--user",
        OPERATOR,
        "--key",
        key,
        "--sudo-password-stdin",
        "--uninstall-backend",
        "lxd",
        "--yes",
        "--known-hosts",
    ];
    let mut changed = reset.clone();
    changed.push(bad_kh.to_str().unwrap());
    let o = cli(&changed, &pw, home.path()).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("differs from the one in"), "{}", text(&o));
    reset.push(kh);
    // LXD holds an instance Paygress did not make (never started: nested LXD cannot start
    // one here, but it can create one, privileged: unprivileged ones need a uid range it does
    // not have): purging LXD is refused, naming it, and nothing changes.
    host.sh_ok("lxc init --empty pgb-foreign -c security.privileged=true");
    let o = cli(&reset, &pw, home.path()).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        text(&o).contains("instances Paygress did not make (pgb-foreign)"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("nothing was changed"), "{}", text(&o));
    host.sh_ok(
        "test -e /etc/paygress/paygress.toml && test -d /var/lib/paygress && id -u paygress \
         && command -v lxd && systemctl is-active --quiet paygress-provider \
         && lxc info pgb-foreign >/dev/null",
    );
    host.sh_ok("lxc delete pgb-foreign");
    let o = cli(&reset, &pw, home.path()).await;
    assert!(o.status.success(), "reset: {}", text(&o));
    assert!(
        text(&o).contains("books on the host: 0 sat"),
        "{}",
        text(&o)
    );
    let left = host.sh(
        "test -e /etc/paygress || test -e /var/lib/paygress || id -u paygress || command -v lxd \
         || test -e /var/lib/lxd",
    );
    assert!(
        !left.status.success(),
        "{}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// What bootstrap's host key check and OpenSSH's `ssh -o StrictHostKeyChecking=yes` say about
/// the same known_hosts files, against the host's real sshd: markers (`@revoked`,
/// `@cert-authority`), wildcards, negation and hashed names. Ours is `provider status --host`
/// (it connects, then reads the running provider's status).
async fn known_hosts_verdicts_match_openssh(host: &Host, home: &Path, key: &str, pw: &str) {
    let port = host.ssh_port.to_string();
    let hk = host.sh_ok("cat /etc/ssh/ssh_host_ed25519_key.pub");
    let hk: String = hk.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let other = tempfile::tempdir().unwrap();
    let (_, other_key) = common::ssh::keygen(other.path());
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("wildcard port", format!("[127.0.0.1]:* {hk}\n"), "ok"),
        ("wildcard host", format!("[127.0.0.?]:{port} {hk}\n"), "ok"),
        (
            "negated",
            format!("![127.0.0.1]:{port},[127.0.0.*]:* {hk}\n"),
            "unknown",
        ),
        (
            "cert-authority only",
            format!("@cert-authority [127.0.0.1]:* {hk}\n"),
            "unknown",
        ),
        (
            "revoked",
            format!("[127.0.0.1]:{port} {hk}\n@revoked * {hk}\n"),
            "revoked",
        ),
        ("changed", format!("[127.0.0.1]:* {other_key}\n"), "changed"),
        ("hashed", format!("[127.0.0.1]:{port} {hk}\n"), "ok"),
    ];
    for (what, content, want) in cases {
        let f = dir.path().join(what.replace(' ', "-"));
        std::fs::write(&f, content).unwrap();
        if what == "hashed" {
            let o = std::process::Command::new("ssh-keygen")
                .arg("-H")
                .arg("-f")
                .arg(&f)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert!(std::fs::read_to_string(&f).unwrap().starts_with("|1|"));
        }
        let fs = f.to_str().unwrap();
        let ssh = std::process::Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "UpdateHostKeys=no",
                "-o",
                "HostKeyAlgorithms=ssh-ed25519",
                "-o",
                &format!("UserKnownHostsFile={fs}"),
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "IdentitiesOnly=yes",
                "-i",
                key,
                "-p",
                &port,
                "op@127.0.0.1",
                "true",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let ssh_err = String::from_utf8_lossy(&ssh.stderr).to_string();
        let theirs = if ssh.status.success() {
            "ok"
        } else if ssh_err.contains("REVOKED") {
            "revoked"
        } else if ssh_err.contains("HAS CHANGED") {
            "changed"
        } else if ssh_err.contains("No ED25519 host key is known")
            || ssh_err.contains("Host key verification failed")
        {
            "unknown"
        } else {
            panic!("{what}: ssh said {ssh_err}");
        };
        let mut args = vec![
            "provider",
            "status",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--user",
            OPERATOR,
            "--key",
            key,
            "--sudo-password-stdin",
            "--known-hosts",
            fs,
            "--json",
        ];
        let o = cli(&args, pw, home).await;
        let t = text(&o);
        let ours = if o.status.success() {
            "ok"
        } else if t.contains("is marked @revoked in") {
            "revoked"
        } else if t.contains("differs from the one in") {
            "changed"
        } else if t.contains("is not in") {
            "unknown"
        } else {
            panic!("{what}: paygress-cli said {t}");
        };
        eprintln!("known_hosts {what}: ssh {theirs}, paygress-cli {ours}");
        assert_eq!((ours, theirs), (want, want), "{what}: {t} / {ssh_err}");
        if what == "cert-authority only" {
            assert!(t.contains("@cert-authority lines match it"), "{t}");
        }
        if what == "revoked" {
            // Neither --yes nor a pin of the very key lets it through.
            let pin = host.host_key();
            for extra in [vec!["--yes"], vec!["--host-key", pin.as_str()]] {
                let mut a = args.clone();
                a.extend(extra.iter().copied());
                let o = cli(&a, pw, home).await;
                assert_eq!(o.status.code(), Some(4), "{extra:?}: {}", text(&o));
                assert!(text(&o).contains("is marked @revoked in"), "{}", text(&o));
            }
        }
        args.clear();
    }
}

/// On a terminal the operator is asked: whether to trust an unknown host key (its fingerprint
/// shown), then for sudo's password, read with echo off. A real tmux pane, a `system reset` of a
/// host without Paygress (it connects, becomes root, finds nothing to remove).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_it_asks_about_the_host_key_and_for_the_sudo_password() {
    let host = launch_host();
    let home = tempfile::tempdir().unwrap();
    let (key, public) = common::ssh::keygen(home.path());
    host.sh_stdin(
        "install -d -o op -g op -m 0700 /home/op/.ssh && cat >/home/op/.ssh/authorized_keys \
         && chown op:op /home/op/.ssh/authorized_keys",
        &format!("{public}\n"),
    );
    let kh = home.path().join("known_hosts");
    let socket = format!("paygress-bootstrap-test-{}", std::process::id());
    let tmux = |args: Vec<String>| {
        let socket = socket.clone();
        async move {
            tokio::process::Command::new("tmux")
                .arg("-L")
                .arg(&socket)
                .args(&args)
                .output()
                .await
                .expect("tmux is not installed: run tools/test.sh (it installs tmux)")
        }
    };
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    // The program and its arguments reach tmux as one argv each (no shell line is built).
    let port = host.ssh_port.to_string();
    let out = tmux(s(&[
        "start-server",
        ";",
        "set-option",
        "-g",
        "remain-on-exit",
        "on",
        ";",
        "new-session",
        "-d",
        "-x",
        "200",
        "-y",
        "50",
        "-e",
        &format!("HOME={}", home.path().display()),
        "--",
        CLI,
        "system",
        "reset",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--user",
        OPERATOR,
        "--key",
        key.to_str().unwrap(),
        "--known-hosts",
        kh.to_str().unwrap(),
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let screen = |want: &'static str| {
        let tmux = &tmux;
        async move {
            let mut last = String::new();
            for _ in 0..300 {
                let o = tmux(s(&["capture-pane", "-p", "-J", "-S", "-", "-t", "0"])).await;
                last = String::from_utf8_lossy(&o.stdout).into_owned();
                if last.contains(want) {
                    return last;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = tmux(s(&["kill-server"])).await;
            panic!("the screen never showed {want:?}: {last}");
        }
    };
    screen("Remove Paygress from 127.0.0.1").await;
    tmux(s(&["send-keys", "-t", "0", "y", "Enter"])).await;
    let fp = host.host_key();
    let shown = screen("Trust it? [y/N]").await;
    assert!(shown.contains(&fp), "{shown}");
    tmux(s(&["send-keys", "-t", "0", "y", "Enter"])).await;
    screen("[sudo] password for op:").await;
    tmux(s(&["send-keys", "-t", "0", "-l", OPERATOR_PASSWORD])).await;
    tmux(s(&["send-keys", "-t", "0", "Enter"])).await;
    let done = screen("Paygress is removed from").await;
    let _ = tmux(s(&["kill-server"])).await;
    assert!(
        !done.contains(OPERATOR_PASSWORD),
        "the password was echoed: {done}"
    );
    assert!(done.contains("books on the host: 0 sat"), "{done}");
    let learnt = std::fs::read_to_string(&kh).unwrap();
    assert!(learnt.contains(&format!("[127.0.0.1]:{port} ")), "{learnt}");
}
