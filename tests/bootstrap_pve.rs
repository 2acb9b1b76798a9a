//! The `pveum` and `pveam` commands `bootstrap --backend proxmox` runs on a PVE host are honest
//! against PVE's own API: there is no PVE host here, so they are checked three ways.
//!
//! 1. The scripts ([`pve::SCRIPTS`]) are parsed: every `pveum`/`pveam` call in them is one of
//!    [`pve::CLI_CALLS`] (the subcommand → API method map read from pveum.pm's and pveam.pm's
//!    command tables), with the right number of positional arguments and only the options that
//!    method takes; every table entry is used.
//! 2. Each mapped method exists in fakepve's bundled PVE 9 API schema
//!    (`fakepve/data/pve-api.json.gz`) with those parameter names; booleans are sent as `1`;
//!    every privilege of [`pve::LEAST_PRIVILEGES`] is one PVE 9 knows (fakepve's list).
//! 3. The same operations are performed against a running fakepve over its API (roles, user,
//!    token with privilege separation, ACLs on the table's paths, template download) and
//!    accepted; a misspelt parameter is refused, so the check can fail. (fakepve takes `true`
//!    for a boolean where PVE takes only `1`/`0`: test 1 checks the values in the scripts.)

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use common::proxmox::FakePve;
use paygress::backend::proxmox::api::{self, Api, Form, Trust};
use paygress::bootstrap::pve::{self, CliCall, Targets};
use paygress::secret::Secret;
use serde_json::Value;

/// One command of a script: its words, with double-quoted words unquoted (`$x` left as is).
fn tokens(rest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => quoted = !quoted,
            _ if quoted => cur.push(c),
            ';' | '|' | '<' | '>' | ')' | '&' | '\n' => {
                // `2>/dev/null`: the descriptor is no argument.
                if matches!(c, '<' | '>') && cur.bytes().all(|b| b.is_ascii_digit()) {
                    cur.clear();
                }
                break;
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A call as a script makes it: the table entry, its positional arguments, its options.
struct Made {
    call: &'static CliCall,
    positional: Vec<String>,
    options: BTreeMap<String, String>,
}

/// Every `pveum …`/`pveam …` command in `script` (not the names in messages or in the
/// preflight's `for c in pveum pveam openssl` list).
fn calls_in(script: &str) -> Vec<Made> {
    let mut found = Vec::new();
    for (at, _) in script
        .match_indices("pveum ")
        .chain(script.match_indices("pveam "))
    {
        let before = script[..at].trim_end();
        if script[..at].ends_with('"')
            || before.ends_with(" in")
            || before.ends_with("pveum")
            || before.ends_with("\\")
        {
            continue;
        }
        let words = tokens(&script[at..]);
        let call = pve::CLI_CALLS
            .iter()
            .filter(|c| {
                let w: Vec<&str> = c.cli.split(' ').collect();
                words.len() >= w.len() && words[..w.len()] == w[..]
            })
            .max_by_key(|c| c.cli.len())
            .unwrap_or_else(|| panic!("a call not in pve::CLI_CALLS: {words:?}"));
        let mut rest = words[call.cli.split(' ').count()..].iter();
        let mut positional = Vec::new();
        let mut options = BTreeMap::new();
        while let Some(w) = rest.next() {
            match w.strip_prefix("--") {
                Some(name) => {
                    let v = rest
                        .next()
                        .unwrap_or_else(|| panic!("--{name} has no value"));
                    options.insert(name.to_string(), v.clone());
                }
                None => positional.push(w.clone()),
            }
        }
        found.push(Made {
            call,
            positional,
            options,
        });
    }
    found
}

#[test]
fn every_pveum_and_pveam_call_is_in_the_table_with_its_methods_options() {
    let mut used = std::collections::BTreeSet::new();
    for script in pve::SCRIPTS {
        for m in calls_in(script) {
            used.insert(m.call.cli);
            assert_eq!(
                m.positional.len(),
                m.call.positional.len(),
                "{}: positional arguments {:?}",
                m.call.cli,
                m.positional
            );
            for (k, v) in &m.options {
                if k == "output-format" {
                    assert!(
                        m.call.output_format,
                        "{} takes no --output-format",
                        m.call.cli
                    );
                    assert_eq!(v, "json");
                } else {
                    assert!(
                        m.call.options.contains(&k.as_str()),
                        "{}: --{k} is not a parameter of its method",
                        m.call.cli
                    );
                }
            }
            // Booleans as PVE's schema checks them: only 1 or 0.
            for b in ["privsep", "propagate"] {
                if let Some(v) = m.options.get(b) {
                    assert!(v == "1" || v == "0", "{}: --{b} {v}", m.call.cli);
                }
            }
            if m.call.cli == "pveum user token add" {
                assert_eq!(m.options.get("privsep").map(String::as_str), Some("1"));
                assert_eq!(m.positional, [pve::PVE_USER, pve::TOKEN_NAME]);
            }
        }
    }
    let all: std::collections::BTreeSet<&str> = pve::CLI_CALLS.iter().map(|c| c.cli).collect();
    assert_eq!(used, all, "every table entry is one the scripts run");
}

fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/e2e/.venv/bin/python")
}

/// Path → method → parameter names.
type Methods = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// From fakepve's bundled schema: the methods of the paths called; and PVE 9's privileges.
fn schema() -> (Methods, Vec<String>) {
    let paths: Vec<&str> = pve::CLI_CALLS.iter().filter_map(|c| c.path).collect();
    let out = Command::new(python())
        .args([
            "-c",
            "import gzip, json, os, sys, fakepve\n\
             from fakepve.shapes import PRIVILEGES\n\
             d = json.load(gzip.open(os.path.join(os.path.dirname(fakepve.__file__), 'data', 'pve-api.json.gz')))['paths']\n\
             want = json.loads(sys.argv[1])\n\
             out = {p: {m: sorted(i.get('parameters', {}).get('properties', {})) for m, i in d.get(p, {}).items() if isinstance(i, dict) and 'parameters' in i} for p in want}\n\
             print(json.dumps({'paths': out, 'privileges': list(PRIVILEGES)}))",
            &serde_json::to_string(&paths).unwrap(),
        ])
        .output()
        .expect("run the venv's python (tools/test.sh installs fakepve)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        serde_json::from_value(v["paths"].clone()).unwrap(),
        serde_json::from_value(v["privileges"].clone()).unwrap(),
    )
}

#[test]
fn every_mapped_method_exists_in_pves_schema_with_those_parameters() {
    let (paths, privileges) = schema();
    for c in pve::CLI_CALLS {
        let Some(path) = c.path else { continue };
        let params = paths
            .get(path)
            .and_then(|m| m.get(c.method))
            .unwrap_or_else(|| panic!("{}: no {} {path} in PVE's API", c.cli, c.method));
        for p in c.positional.iter().chain(c.options) {
            assert!(
                params.iter().any(|x| x == p),
                "{}: {p} is not a parameter of {} {path} ({params:?})",
                c.cli,
                c.method
            );
        }
    }
    for g in pve::LEAST_PRIVILEGES {
        assert!(
            !g.role.to_ascii_uppercase().starts_with("PVE"),
            "{}",
            g.role
        );
        for p in g.privileges {
            assert!(privileges.iter().any(|x| x == p), "{p} is no PVE privilege");
        }
    }
}

fn api(pve: &FakePve) -> Api {
    let secret = std::fs::read_to_string(&pve.token_file).unwrap();
    let trust = Trust::Fingerprint(api::parse_fingerprint(&pve.fingerprint).unwrap());
    Api::new(&pve.url, &pve.token_id, &Secret::new(secret.trim()), &trust).unwrap()
}

/// What the steps do, as the API calls pveum makes of them, against fakepve.
#[tokio::test]
async fn the_same_operations_are_accepted_by_a_pve_api_server() {
    let pve = FakePve::start();
    let a = api(&pve);
    let t = Targets {
        storage: "local-lvm".into(),
        template_storage: "local".into(),
        bridge: "vmbr0".into(),
    };
    for g in pve::LEAST_PRIVILEGES {
        let mut privs = g.privileges.to_vec();
        privs.sort_unstable();
        let privs = privs.join(",");
        a.post(
            "/access/roles",
            &Form::new().set("roleid", g.role).set("privs", &privs),
        )
        .await
        .unwrap_or_else(|e| panic!("role add {}: {e}", g.role));
        a.put(
            &format!("/access/roles/{}", g.role),
            &Form::new().set("privs", &privs),
        )
        .await
        .unwrap_or_else(|e| panic!("role modify {}: {e}", g.role));
    }
    a.post(
        "/access/users",
        &Form::new().set("userid", pve::PVE_USER).set(
            "comment",
            "Paygress provider (made by paygress-cli bootstrap)",
        ),
    )
    .await
    .expect("user add");
    let token = format!(
        "/access/users/{}/token/{}",
        api::segment(pve::PVE_USER),
        pve::TOKEN_NAME
    );
    a.post(
        &token,
        &Form::new().set("privsep", "1").set(
            "comment",
            "Paygress provider (made by paygress-cli bootstrap)",
        ),
    )
    .await
    .expect("token add");
    for (path, role, _) in pve::acls(&t) {
        a.put(
            "/access/acl",
            &Form::new()
                .set("path", &path)
                .set("roles", role)
                .set("users", pve::PVE_USER)
                .set("tokens", pve::TOKEN_ID)
                .set("propagate", "1"),
        )
        .await
        .unwrap_or_else(|e| panic!("acl modify {path}: {e}"));
    }
    a.post(
        &format!("/nodes/{}/aplinfo", pve.node),
        &Form::new()
            .set("storage", &t.template_storage)
            .set("template", "debian-12-standard_12.7-1_amd64.tar.zst"),
    )
    .await
    .expect("pveam download");
    a.delete(&token).await.expect("token remove");

    // The server does check parameter names, in PVE's wording (it is lenient about boolean
    // spellings, which the first test checks in the scripts instead).
    let e = a
        .post(&token, &Form::new().set("priv-sep", "1"))
        .await
        .expect_err("priv-sep is not a parameter");
    assert!(
        e.to_string().contains("property is not defined in schema"),
        "{e}"
    );
    let e = a
        .put(
            "/access/acl",
            &Form::new()
                .set("path", "/vms")
                .set("role", "PaygressGuests")
                .set("tokens", pve::TOKEN_ID),
        )
        .await
        .expect_err("role (not roles) is not a parameter");
    assert!(
        e.to_string().contains("property is not defined in schema"),
        "{e}"
    );
}
