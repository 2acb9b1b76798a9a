//! Journal benchmark: the store's work for one spawn, one status and one reaper pass, on an
//! empty journal (the baseline) and on one holding 100 000 workloads and payments, interleaved.
//! Prints medians and the ratio to the baseline; a journal that "stays fast" keeps the ratios
//! near 1.
//!
//! Run: `cargo bench --bench journal -- [N]` (N rounds per side, default 200; rows default
//! 100 000, `--rows R` to change).

use std::time::{Duration, Instant};

use paygress::config::Tier;
use paygress::secret::Secret;
use paygress::store::{PaymentKind, PaymentRow, PaymentState, Store, WorkloadRow, WorkloadStatus};

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn tier() -> Tier {
    Tier {
        id: "basic".into(),
        name: "Basic".into(),
        description: "bench".into(),
        cpu_millicores: 1000,
        memory_mb: 512,
        disk_gb: None,
        rate_msats_per_sec: 100,
    }
}

fn workload(id: &str, now: u64) -> WorkloadRow {
    WorkloadRow {
        id: id.into(),
        name: format!("pg-{id}"),
        tier: tier(),
        image: "paygress-debian-12".into(),
        ssh_username: "alice".into(),
        ssh_password: Secret::new("pw"),
        ssh_public_key: None,
        host_port: 0,
        ssh_host: None,
        ssh_port: None,
        owner: None,
        state: WorkloadStatus::Provisioning,
        created_at: now,
        expires_at: now,
        stopped_at: None,
        paid_msats: 0,
    }
}

fn payment(key: &str, pod: &str, now: u64) -> PaymentRow {
    PaymentRow {
        key: key.into(),
        kind: PaymentKind::Spawn,
        fingerprint: "fp".into(),
        request_id: Some(format!("rq-{key}")),
        pod_id: Some(pod.into()),
        mint_url: "http://127.0.0.1:1".into(),
        face_msats: 100_000,
        received_msats: None,
        state: PaymentState::Swapping,
        token: Some(Secret::new("cashuBxxxx")),
        refund_token: None,
        response: None,
        created_at: now,
        attempts: Vec::new(),
        in_flight_until: 0,
        refund_op: None,
        refund_reason: None,
    }
}

/// Fill `path` with `rows` finished spawns (deleted workloads, completed payments) and 500 live
/// running ones, in one transaction on a raw connection.
fn prefill(path: &std::path::Path, rows: usize, now: u64) {
    let mut c = rusqlite::Connection::open(path).expect("open");
    let tx = c.transaction().expect("tx");
    let tier = serde_json::to_string(&tier()).expect("tier");
    for i in 0..rows {
        let live = i < 500;
        tx.execute(
            "INSERT INTO workloads (id, name, tier_json, image, ssh_username, ssh_password,
               ssh_public_key, host_port, owner, state, created_at, expires_at, stopped_at, paid_msats)
             VALUES (?1, ?2, ?3, 'img', 'alice', 'pw', NULL, ?4, NULL, ?5, ?6, ?7, NULL, 100000)",
            rusqlite::params![
                format!("w{i}"),
                format!("pg-w{i}"),
                tier,
                if live { 40_000 + i as i64 } else { 40_000 },
                if live { "running" } else { "deleted" },
                (now - 10_000) as i64,
                (now + 1_000_000) as i64,
            ],
        )
        .expect("workload");
        tx.execute(
            "INSERT INTO payments (key, kind, fingerprint, request_id, pod_id, mint_url, face_msats,
               received_msats, state, token, refund_token, response, created_at, updated_at)
             VALUES (?1, 'spawn', 'fp', ?2, ?3, 'http://127.0.0.1:1', 100000, 100000, 'completed',
               NULL, NULL, '{}', ?4, ?4)",
            rusqlite::params![format!("k{i}"), format!("r{i}"), format!("w{i}"), now as i64],
        )
        .expect("payment");
    }
    tx.commit().expect("commit");
}

struct Side {
    store: Store,
    spawn: Vec<Duration>,
    status: Vec<Duration>,
    reap: Vec<Duration>,
    /// The reaper's previous scan: every running and expired row, due or not.
    reap_all: Vec<Duration>,
}

impl Side {
    fn round(&mut self, i: usize, now: u64) {
        // One spawn's journal work: reserve a port, journal the payment, paid, completed; then
        // the workload ends (deleted) so the live set stays the same size.
        let id = format!("bench{i}");
        let key = format!("bk{i}");
        let t = Instant::now();
        let port = self
            .store
            .insert_workload_with_port(&workload(&id, now), Some((30_000, 30_999)), 0, |_| true)
            .expect("reserve")
            .expect("a port");
        assert!(port >= 30_000);
        assert!(self
            .store
            .insert_payment(&payment(&key, &id, now), now)
            .expect("journal"));
        self.store
            .mark_spawn_paid(&key, 100_000, &id, now + 1000, now)
            .expect("paid");
        self.store
            .complete_spawn(&key, &id, now + 1000, (None, 30_000), "{}", now)
            .expect("complete");
        self.spawn.push(t.elapsed());
        let t = Instant::now();
        let w = self.store.workload(&id).expect("status").expect("row");
        let p = self.store.payment(&key).expect("payment").expect("row");
        assert_eq!(w.id, id);
        assert_eq!(p.state, PaymentState::Completed);
        self.status.push(t.elapsed());
        let t = Instant::now();
        let due = self.store.workloads_due(now, 3600).expect("due");
        assert!(due.is_empty());
        self.reap.push(t.elapsed());
        let t = Instant::now();
        let all = self
            .store
            .workloads_in_state(&[WorkloadStatus::Running, WorkloadStatus::Expired])
            .expect("all");
        std::hint::black_box(all);
        self.reap_all.push(t.elapsed());
        self.store
            .set_workload_state(&id, WorkloadStatus::Deleted, now)
            .expect("end");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(200);
    let rows: usize = args
        .iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let now = paygress::provider::now_secs();
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.sqlite3");
    let full = dir.path().join("full.sqlite3");
    drop(Store::open(&empty).expect("empty store"));
    drop(Store::open(&full).expect("full store"));
    let t = Instant::now();
    prefill(&full, rows, now);
    eprintln!(
        "prefilled {rows} workloads + {rows} payments in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut base = Side {
        store: Store::open(&empty).expect("open"),
        spawn: vec![],
        status: vec![],
        reap: vec![],
        reap_all: vec![],
    };
    let mut big = Side {
        store: Store::open(&full).expect("open"),
        spawn: vec![],
        status: vec![],
        reap: vec![],
        reap_all: vec![],
    };
    for i in 0..rounds {
        base.round(i, now);
        big.round(i, now);
    }
    println!("journal at {rows} rows vs empty, {rounds} rounds each (medians)");
    println!("| operation | empty | {rows} rows | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, a, b) in [
        (
            "spawn (reserve, journal, paid, complete)",
            &mut base.spawn,
            &mut big.spawn,
        ),
        (
            "status (workload + payment by key)",
            &mut base.status,
            &mut big.status,
        ),
        ("reaper pass (due scan)", &mut base.reap, &mut big.reap),
        (
            "reaper pass, previous scan (all running/expired rows)",
            &mut base.reap_all,
            &mut big.reap_all,
        ),
    ] {
        let (ma, mb) = (median(a), median(b));
        println!(
            "| {name} | {:.0} µs | {:.0} µs | {:.2}x |",
            us(ma),
            us(mb),
            us(mb) / us(ma).max(1e-9)
        );
    }
}
