//! Tests of the LXD backend's pure parts (the daemon-backed tests live in tests/lxd.rs and
//! tests/lxd_pool.rs).

use std::path::PathBuf;

use super::rest::{is_valid_operation_path, operation_result, parse_envelope};
use super::*;
use crate::secret::Secret;

fn spec() -> WorkloadSpec {
    WorkloadSpec {
        name: "pg-test-1".into(),
        provider_id: "prov123".into(),
        tier: Tier {
            id: "basic".into(),
            name: "Basic".into(),
            description: String::new(),
            cpu_millicores: 1500,
            memory_mb: 512,
            disk_gb: Some(5),
            rate_msats_per_sec: 1,
        },
        image: "paygress-debian-12".into(),
        ssh_username: "alice".into(),
        ssh_password: Secret::new("s3cret-pass"),
        ssh_public_key: None,
        host_port: Some(30022),
        expires_at: 1_900_000_000,
    }
}

#[test]
fn create_body_carries_everything_but_the_forward() {
    let cfg = LxdConfig::default();
    let b = create_body(&spec(), &cfg, "pgabc", None);
    assert_eq!(b["name"], "pg-test-1");
    assert_eq!(b["type"], "container");
    assert_eq!(
        b["source"],
        json!({"type": "image", "alias": "paygress-debian-12"})
    );
    assert_eq!(b["profiles"], json!(["default"]));
    let c = &b["config"];
    assert_eq!(c["limits.cpu"], "2");
    assert_eq!(c["limits.memory"], "512MiB");
    assert_eq!(c["security.privileged"], "false");
    assert!(c.get("security.nesting").is_none());
    assert_eq!(c["limits.processes"], "512");
    assert_eq!(c["security.idmap.isolated"], "true");
    assert_eq!(c[KEY_PROVIDER], "prov123");
    assert_eq!(c[KEY_EXPIRES_AT], "1900000000");
    assert_eq!(c[KEY_NONCE], "pgabc");
    // The SSH forward is added once the instance runs (see `provision`).
    assert!(b["devices"].get(SSH_DEVICE).is_none());
    assert_eq!(
        proxy_device(&cfg.ssh_listen_address, 30022),
        json!({"type": "proxy", "listen": "tcp:0.0.0.0:30022", "connect": "tcp:127.0.0.1:22", "bind": "host"})
    );
    // dir pool: no size, so no root override at all.
    assert!(b["devices"].get("root").is_none());
    // Nothing secret in the body.
    assert!(!b.to_string().contains("s3cret-pass"));
}

#[test]
fn create_body_options() {
    let cfg = LxdConfig {
        nesting: true,
        ssh_listen_address: "::".into(),
        ..LxdConfig::default()
    };
    let sized = RootPool {
        name: "fast".into(),
        enforces_size: true,
    };
    let b = create_body(&spec(), &cfg, "n", Some(&sized));
    assert_eq!(b["config"]["security.nesting"], "true");
    assert_eq!(
        proxy_device(&cfg.ssh_listen_address, 30022)["listen"],
        "tcp:[::]:30022"
    );
    assert_eq!(
        b["devices"]["root"],
        json!({"type": "disk", "path": "/", "pool": "fast", "size": "5GB"})
    );
    // No size asked: the profile's root device is enough.
    let mut s = spec();
    s.tier.disk_gb = None;
    assert!(create_body(&s, &cfg, "n", Some(&sized))["devices"]
        .get("root")
        .is_none());
    // A dir pool cannot enforce a size: skipped quietly.
    let dir = RootPool {
        name: "default".into(),
        enforces_size: false,
    };
    assert!(create_body(&spec(), &cfg, "n", Some(&dir))["devices"]
        .get("root")
        .is_none());
    // A configured pool is always named, with the size only where it is enforced.
    let on_pool = LxdConfig {
        storage_pool: Some("fast".into()),
        ..LxdConfig::default()
    };
    assert_eq!(
        create_body(&s, &on_pool, "n", Some(&sized))["devices"]["root"],
        json!({"type": "disk", "path": "/", "pool": "fast"})
    );
    assert_eq!(
        create_body(&spec(), &on_pool, "n", Some(&dir))["devices"]["root"],
        json!({"type": "disk", "path": "/", "pool": "default"})
    );
}

#[test]
fn cpu_rounds_up_with_a_floor_of_one() {
    assert_eq!(cpu_limit(0), 1);
    assert_eq!(cpu_limit(1), 1);
    assert_eq!(cpu_limit(1000), 1);
    assert_eq!(cpu_limit(1001), 2);
    assert_eq!(cpu_limit(2000), 2);
    assert_eq!(cpu_limit(u32::MAX), 4_294_968);
}

#[test]
fn user_exec_passes_the_user_through_the_environment_and_no_password() {
    let b = user_exec_body("alice");
    assert_eq!(b["command"][2], USER_SCRIPT);
    assert_eq!(b["environment"]["PAYGRESS_USER"], "alice");
    // LXD puts an exec's environment on its helper's command line: no secret may go there.
    assert!(b["environment"].get("PAYGRESS_PASSWORD").is_none());
    assert!(USER_SCRIPT.contains(PASSWORD_STAGING) && USER_SCRIPT.contains("rm -f"));
    assert!(!USER_SCRIPT.contains("alice"));
    assert_eq!(b["wait-for-websocket"], false);
    assert_eq!(b["interactive"], false);
}

#[test]
fn status_mapping() {
    assert_eq!(map_status("Running"), WorkloadState::Running);
    assert_eq!(map_status("Stopped"), WorkloadState::Stopped);
    for s in ["Frozen", "Error", "Starting", "Stopping", "", "weird"] {
        assert_eq!(map_status(s), WorkloadState::Other);
    }
}

#[test]
fn instance_parsing() {
    let inst = json!({
        "name": "pg-x", "status": "Running",
        "config": {KEY_PROVIDER: "p"},
        "expanded_devices": {
            "eth0": {"type": "nic"},
            "ssh": {"type": "proxy", "listen": "tcp:0.0.0.0:31000", "connect": "tcp:127.0.0.1:22"}
        }
    });
    assert_eq!(
        workload_info(&inst),
        Some(WorkloadInfo {
            name: "pg-x".into(),
            state: WorkloadState::Running,
            endpoint: Some(Endpoint::on_provider_host(31000))
        })
    );
    assert_eq!(config_value(&inst, KEY_PROVIDER), Some("p"));
    let v6 = json!({"devices": {"other": {"type": "proxy", "listen": "tcp:[::]:31001", "connect": "tcp:127.0.0.1:22"}}});
    assert_eq!(ssh_port_of(&v6), Some(31001));
    // Garbage never panics.
    for junk in [
        json!(null),
        json!(1),
        json!({"name": 5}),
        json!({"name": "a", "expanded_devices": {"ssh": {"type": "proxy", "listen": "tcp:x"}}}),
    ] {
        let _ = workload_info(&junk);
        let _ = ssh_port_of(&junk);
    }
    assert_eq!(
        workload_info(&json!({"name": "a", "status": "Stopped"})).map(|w| w.state),
        Some(WorkloadState::Stopped)
    );
}

#[test]
fn envelopes_and_operations() {
    let ok = br#"{"type":"sync","status_code":200,"metadata":{"a":1}}"#;
    assert!(matches!(parse_envelope(200, ok), Ok(Answer::Sync(v)) if v["a"] == 1));
    let op =
        br#"{"type":"async","operation":"/1.0/operations/0d3c5d6e-1f2a-4b5c-8d9e-0123456789ab"}"#;
    assert!(matches!(parse_envelope(202, op), Ok(Answer::Async(p)) if p.ends_with("789ab")));
    let bad_op = br#"{"type":"async","operation":"/1.0/operations/../../x"}"#;
    assert!(matches!(
        parse_envelope(202, bad_op),
        Err(LxdError::Protocol(_))
    ));
    let err = br#"{"type":"error","error_code":404,"error":"Image alias not found"}"#;
    let e = parse_envelope(404, err).unwrap_err();
    assert!(e.is_not_found());
    assert!(matches!(
        map_create_error(&e, "img", 1),
        BackendError::ImageMissing(_)
    ));
    let profile = LxdError::Lxd {
        code: 404,
        message: "Profile not found".into(),
    };
    assert!(matches!(
        map_create_error(&profile, "img", 1),
        BackendError::Api(_)
    ));
    assert!(matches!(
        parse_envelope(500, b"<html>"),
        Err(LxdError::Lxd { code: 500, .. })
    ));
    assert!(matches!(
        parse_envelope(200, b""),
        Err(LxdError::Lxd { code: 502, .. })
    ));

    assert!(operation_result(&json!({"status": "Success", "metadata": {"return": 0}})).is_ok());
    let failed = operation_result(&json!({"status": "Failure", "status_code": 400,
        "err": "Error occurred when starting proxy device: Error: Failed to listen on 0.0.0.0:32077: listen tcp 0.0.0.0:32077: bind: address already in use"}))
    .unwrap_err();
    assert!(
        matches!(map_start_error(&failed, 32077, "start"), BackendError::Capacity(m) if m.contains("32077"))
    );
    assert!(matches!(
        operation_result(&json!({"status": "Running"})),
        Err(LxdError::Transport(_))
    ));
    assert!(operation_result(&json!(null)).is_err());
    let busy = LxdError::Lxd {
        code: 400,
        message: "Instance is busy running a \"start\" operation".into(),
    };
    assert!(busy.is_busy());
}

#[test]
fn errors_are_scrubbed_of_the_password() {
    let e = scrub(
        BackendError::Api("oops s3cret-pass here".into()),
        "s3cret-pass",
    );
    assert_eq!(e.to_string(), "backend error: oops [redacted] here");
    let e = scrub(BackendError::Api("nothing".into()), "");
    assert_eq!(e.to_string(), "backend error: nothing");
}

#[test]
fn input_checks() {
    assert!(check_password("fine pass 123").is_ok());
    assert!(check_password("new\nline").is_err());
    assert!(check_password("a:b").is_err());
    assert!(check_username("alice").is_ok());
    assert!(check_username("_svc-1").is_ok());
    assert!(check_username("Alice").is_err());
    assert!(check_username("-x").is_err());
    assert!(check_username("").is_err());
    assert!(is_valid_instance_name("pg-abc-1"));
    assert!(!is_valid_instance_name("1pg"));
    assert!(!is_valid_instance_name("pg/../x"));
    assert!(!is_valid_instance_name(""));
    assert!(is_valid_operation_path("/1.0/operations/abc-123"));
    assert!(!is_valid_operation_path("/1.0/instances/x"));
}

#[test]
fn config_defaults_and_validation() {
    let c: LxdConfig = toml::from_str("").unwrap();
    assert_eq!(c.socket, PathBuf::from("/var/lib/lxd/unix.socket"));
    assert_eq!(c.ssh_listen_address, "0.0.0.0");
    assert!(c.validate().is_ok());
    assert!(toml::from_str::<LxdConfig>("bogus = 1").is_err());
    let remote: LxdConfig = toml::from_str(r#"url = "https://10.0.0.5:8443""#).unwrap();
    assert!(remote.validate().unwrap_err().contains("client_cert"));
    let bad = LxdConfig {
        ssh_listen_address: "nope".into(),
        ..LxdConfig::default()
    };
    assert!(bad.validate().is_err());
    let b = LxdBackend::new(LxdConfig::default()).unwrap();
    assert_eq!(b.ssh_check_host(), "127.0.0.1");
    assert_eq!(b.path("/1.0/instances"), "/1.0/instances");
    let p = LxdBackend::new(LxdConfig {
        project: "paygress".into(),
        ..LxdConfig::default()
    })
    .unwrap();
    assert_eq!(
        p.path("/1.0/instances?recursion=1"),
        "/1.0/instances?recursion=1&project=paygress"
    );
}

#[test]
fn nonces_are_distinct_tokens() {
    let a = new_nonce();
    assert_ne!(a, new_nonce());
    assert!(a.starts_with("pg") && a.len() == 18 && a.bytes().all(|b| b.is_ascii_alphanumeric()));
}
