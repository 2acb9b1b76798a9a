//! The simulated Kubernetes API server (tests/common/kubesim) kept honest by two independent
//! real clients: `kubectl` (the machine's 1.32) and the official Python client (PyPI
//! `kubernetes`, in tools/e2e/.venv). Both create, get, list by label, watch and delete pods
//! and services through it and see the errors a real cluster gives (409, 404, 422 for a raised
//! deadline and a taken NodePort, 401, 403). The raw wire is checked too: 410 for a watch from
//! a compacted version, bookmarks, the end of a watch after `timeoutSeconds`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::kubesim::{KubeSim, Rule, ADMIN_TOKEN};
use serde_json::{json, Value};

const NS: &str = "user-workloads";

fn e2e() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/e2e")
}

async fn kubectl(kc: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("kubectl")
        .env("KUBECONFIG", kc)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .args(args)
        .arg("--request-timeout=20s")
        .output()
        .await
        .expect("kubectl is installed (tools/test.sh)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn ok(kc: &Path, args: &[&str]) -> String {
    let (good, out, err) = kubectl(kc, args).await;
    assert!(good, "kubectl {args:?} failed: {err}\n{out}");
    out
}

async fn refused(kc: &Path, args: &[&str]) -> String {
    let (good, out, err) = kubectl(kc, args).await;
    assert!(!good, "kubectl {args:?} should have failed: {out}");
    err
}

fn manifest(dir: &Path, name: &str, v: Value) -> PathBuf {
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    p
}

fn pod(name: &str, app: &str, deadline: Option<i64>) -> Value {
    let mut v = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}
    });
    if let Some(d) = deadline {
        v["spec"]["activeDeadlineSeconds"] = json!(d);
    }
    v
}

fn node_port_service(name: &str, node_port: Option<u16>) -> Value {
    let mut port = json!({"port": 22, "targetPort": 22});
    if let Some(n) = node_port {
        port["nodePort"] = json!(n);
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [port]}
    })
}

/// `kubectl get RESOURCE… --watch-only --output-watch-events -o json`, running.
fn watch_events(kc: &Path, what: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new("kubectl")
        .env("KUBECONFIG", kc)
        .arg("get")
        .args(what)
        .args(["--watch-only", "--output-watch-events", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// What a watching kubectl printed, until a DELETED event (or 10 s); then it is stopped.
async fn events_until_deleted(w: &mut tokio::process::Child) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = String::new();
    let mut out = w.stdout.take().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = out.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains("\"DELETED\"") {
                break;
            }
        }
    })
    .await;
    let _ = w.kill().await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_gets_lists_watches_and_deletes() {
    let sim = KubeSim::start(&[NS], None).await;
    let kc = sim.kubeconfig(ADMIN_TOKEN, NS);
    let dir = sim.kubeconfig_dir().to_path_buf();
    let v: Value = serde_json::from_str(&ok(&kc, &["version", "-o", "json"]).await).unwrap();
    assert_eq!(v["serverVersion"]["minor"], "32");

    // Watches from now on, printing every event: pods labelled app=web, and services.
    let mut watcher = watch_events(&kc, &["pods", "-l", "app=web"]);
    let mut svc_watcher = watch_events(&kc, &["services"]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let web = manifest(&dir, "web", pod("web", "web", None));
    let db = manifest(&dir, "db", pod("db", "db", None));
    assert!(ok(
        &kc,
        &["create", "--validate=false", "-f", web.to_str().unwrap()]
    )
    .await
    .contains("pod/web created"));
    ok(
        &kc,
        &["create", "--validate=false", "-f", db.to_str().unwrap()],
    )
    .await;
    let got: Value =
        serde_json::from_str(&ok(&kc, &["get", "pod", "web", "-o", "json"]).await).unwrap();
    assert!(got["metadata"]["uid"]
        .as_str()
        .is_some_and(|u| u.len() == 36));
    assert_eq!(got["spec"]["restartPolicy"], "Always");
    assert_eq!(got["spec"]["terminationGracePeriodSeconds"], 30);

    // The simulated kubelet schedules and starts it.
    ok(
        &kc,
        &["wait", "--for=condition=Ready", "pod/web", "--timeout=20s"],
    )
    .await;
    let got: Value =
        serde_json::from_str(&ok(&kc, &["get", "pod", "web", "-o", "json"]).await).unwrap();
    assert_eq!(got["status"]["phase"], "Running");
    assert_eq!(got["spec"]["nodeName"], "sim-node");

    // Lists by label, with each selector form.
    for (sel, want) in [
        ("app=web", "pod/web\n"),
        ("app!=web", "pod/db\n"),
        ("app in (db,x)", "pod/db\n"),
        ("app notin (db)", "pod/web\n"),
        ("!app", ""),
    ] {
        assert_eq!(
            ok(&kc, &["get", "pods", "-l", sel, "-o", "name"]).await,
            want,
            "{sel}"
        );
    }
    let table = ok(&kc, &["get", "pods"]).await;
    assert!(table.contains("web") && table.contains("db"), "{table}");

    // Services: the NodePort is allocated from the range.
    let svc = manifest(&dir, "svc", node_port_service("web", None));
    ok(
        &kc,
        &["create", "--validate=false", "-f", svc.to_str().unwrap()],
    )
    .await;
    let s: Value =
        serde_json::from_str(&ok(&kc, &["get", "svc", "web", "-o", "json"]).await).unwrap();
    let np = s["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30086..=32767).contains(&np), "{np}");
    assert_eq!(
        ok(&kc, &["get", "services", "-l", "app=web", "-o", "name"]).await,
        "service/web\n"
    );

    // Graceful delete: kubectl waits until the kubelet has stopped it and it is gone.
    assert!(ok(&kc, &["delete", "pod", "web"])
        .await
        .contains("pod \"web\" deleted"));
    assert!(refused(&kc, &["get", "pod", "web"])
        .await
        .contains("NotFound"));
    ok(&kc, &["delete", "service", "web"]).await;
    assert_eq!(ok(&kc, &["get", "services", "-o", "name"]).await, "");

    // The watches saw them come (and the pod run) and go.
    let seen = events_until_deleted(&mut watcher).await;
    let svc_seen = events_until_deleted(&mut svc_watcher).await;
    assert!(
        svc_seen.contains("\"ADDED\"") && svc_seen.contains("\"DELETED\""),
        "{svc_seen}"
    );
    assert!(
        svc_seen.contains(&format!("\"nodePort\":{np}")),
        "{svc_seen}"
    );
    assert!(seen.contains("\"ADDED\""), "{seen}");
    assert!(seen.contains("\"MODIFIED\""), "{seen}");
    assert!(seen.contains("\"DELETED\""), "{seen}");
    assert!(
        !seen.contains("\"name\":\"db\"") && seen.contains("\"name\":\"web\""),
        "the label selector held: {seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_sees_the_errors_a_cluster_gives() {
    let sim = KubeSim::start(&[NS], None).await;
    let kc = sim.kubeconfig(ADMIN_TOKEN, NS);
    let dir = sim.kubeconfig_dir().to_path_buf();
    let p = manifest(&dir, "dl", pod("dl", "dl", Some(600)));
    let p = p.to_str().unwrap();
    ok(&kc, &["create", "--validate=false", "-f", p]).await;

    let e = refused(&kc, &["create", "--validate=false", "-f", p]).await;
    assert!(
        e.contains("Error from server (AlreadyExists)") && e.contains("pods \"dl\" already exists"),
        "{e}"
    );
    let e = refused(&kc, &["get", "pod", "nope"]).await;
    assert!(
        e.contains("Error from server (NotFound): pods \"nope\" not found"),
        "{e}"
    );

    // activeDeadlineSeconds may be lowered, never raised or removed.
    ok(
        &kc,
        &[
            "patch",
            "pod",
            "dl",
            "--type=merge",
            "-p",
            r#"{"spec":{"activeDeadlineSeconds":300}}"#,
        ],
    )
    .await;
    let e = refused(
        &kc,
        &[
            "patch",
            "pod",
            "dl",
            "--type=merge",
            "-p",
            r#"{"spec":{"activeDeadlineSeconds":900}}"#,
        ],
    )
    .await;
    assert!(
        e.contains("The Pod \"dl\" is invalid: spec.activeDeadlineSeconds: Invalid value: 900: must be less than or equal to previous value"),
        "{e}"
    );
    let e = refused(
        &kc,
        &[
            "patch",
            "pod",
            "dl",
            "--type=merge",
            "-p",
            r#"{"spec":{"activeDeadlineSeconds":null}}"#,
        ],
    )
    .await;
    assert!(
        e.contains("must not update from a positive integer to nil value"),
        "{e}"
    );
    let e = refused(
        &kc,
        &[
            "patch",
            "pod",
            "dl",
            "--type=merge",
            "-p",
            r#"{"spec":{"restartPolicy":"Never"}}"#,
        ],
    )
    .await;
    assert!(
        e.contains("pod updates may not change fields other than"),
        "{e}"
    );
    // Labels of a pod may change.
    ok(&kc, &["label", "pod", "dl", "tier=gold"]).await;

    // NodePorts: a taken one and one outside the range.
    let a = manifest(&dir, "a", node_port_service("a", Some(30100)));
    ok(
        &kc,
        &["create", "--validate=false", "-f", a.to_str().unwrap()],
    )
    .await;
    let b = manifest(&dir, "b", node_port_service("b", Some(30100)));
    let e = refused(
        &kc,
        &["create", "--validate=false", "-f", b.to_str().unwrap()],
    )
    .await;
    assert!(
        e.contains("The Service \"b\" is invalid: spec.ports[0].nodePort: Invalid value: 30100: provided port is already allocated"),
        "{e}"
    );
    let c = manifest(&dir, "c", node_port_service("c", Some(80)));
    let e = refused(
        &kc,
        &["create", "--validate=false", "-f", c.to_str().unwrap()],
    )
    .await;
    assert!(
        e.contains(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{e}"
    );
    // Names: services are DNS-1035 labels.
    let bad = manifest(&dir, "bad", node_port_service("9lives", None));
    let e = refused(
        &kc,
        &["create", "--validate=false", "-f", bad.to_str().unwrap()],
    )
    .await;
    assert!(
        e.contains("a DNS-1035 label must consist of lower case alphanumeric characters"),
        "{e}"
    );

    // Authentication and authorization.
    let nobody = sim.kubeconfig("no-such-token", NS);
    let e = refused(&nobody, &["get", "pods"]).await;
    assert!(
        e.contains("You must be logged in to the server (Unauthorized)"),
        "{e}"
    );
    sim.add_token(
        "viewer-token",
        "viewer",
        vec![Rule::new(&["get", "list", "watch"], &["pods"], &[NS])],
    );
    let viewer = sim.kubeconfig("viewer-token", NS);
    assert_eq!(
        ok(&viewer, &["get", "pods", "-o", "name"]).await,
        "pod/dl\n"
    );
    let e = refused(&viewer, &["delete", "pod", "dl"]).await;
    assert!(
        e.contains("Error from server (Forbidden): pods \"dl\" is forbidden: User \"viewer\" cannot delete resource \"pods\" in API group \"\" in the namespace \"user-workloads\""),
        "{e}"
    );
    let e = refused(&viewer, &["get", "services"]).await;
    assert!(e.contains("services is forbidden"), "{e}");
}

/// kubectl 1.32 sends some requests as protobuf (`kubectl create namespace`). The simulator
/// speaks JSON only and refuses a protobuf body with 415, as a server without that codec does;
/// the same object sent as JSON (`create -f`) works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_bodies_are_refused_with_415_and_json_works() {
    let sim = KubeSim::start(&[], None).await;
    let kc = sim.kubeconfig(ADMIN_TOKEN, "default");
    let (good, out, err) = kubectl(&kc, &["create", "namespace", "made-by-kubectl"]).await;
    let asked_protobuf = sim
        .requests()
        .iter()
        .any(|r| r.starts_with("POST /api/v1/namespaces"));
    assert!(asked_protobuf);
    // kubectl does not retry in JSON: the command fails with the server's 415, which names
    // what it accepts (so the operator's README says to use `kubectl apply -f`).
    assert!(!good, "{out}");
    assert!(
        err.contains("Error from server (UnsupportedMediaType): the body of the request was in an unknown format"),
        "{err}"
    );
    let dir = sim.kubeconfig_dir().to_path_buf();
    let ns = manifest(
        &dir,
        "ns",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "made-from-json"}}),
    );
    ok(
        &kc,
        &["create", "--validate=false", "-f", ns.to_str().unwrap()],
    )
    .await;
    assert!(ok(&kc, &["get", "namespaces", "-o", "name"])
        .await
        .contains("namespace/made-from-json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_client_sees_a_real_servers_behaviour() {
    let python = e2e().join(".venv/bin/python");
    assert!(
        python.exists(),
        "run tools/test.sh first (it makes {})",
        python.display()
    );
    let sim = KubeSim::start(&[NS], None).await;
    sim.add_token(
        "viewer-token",
        "viewer",
        vec![Rule::new(&["get", "list", "watch"], &["pods"], &[NS])],
    );
    let out = tokio::process::Command::new(&python)
        .arg(e2e().join("kube_client_fidelity.py"))
        .arg(sim.kubeconfig(ADMIN_TOKEN, NS))
        .arg(NS)
        .arg(sim.kubeconfig("viewer-token", NS))
        .arg(sim.kubeconfig("not-a-token", NS))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["created"]["uid"], true);
    assert_eq!(v["created"]["phase"], "Pending");
    assert_eq!(v["created"]["restartPolicy"], "Always");
    assert_eq!(v["created"]["grace"], 30);
    assert_eq!(v["created"]["dnsPolicy"], "ClusterFirst");
    assert_eq!(v["got_uid_same"], true);
    assert_eq!(v["list_app_py"], json!(["py-a"]));
    assert_eq!(v["list_notin"], json!(["py-b"]));
    assert_eq!(v["dup"]["status"], 409);
    assert_eq!(v["dup"]["reason"], "AlreadyExists");
    assert_eq!(v["dup"]["message"], "pods \"py-a\" already exists");
    assert_eq!(v["missing"]["status"], 404);
    assert_eq!(v["missing"]["message"], "pods \"py-nope\" not found");
    assert_eq!(v["deadline_lowered"], 300);
    assert_eq!(v["deadline_raised"]["status"], 422);
    assert_eq!(v["deadline_raised"]["reason"], "Invalid");
    assert_eq!(
        v["deadline_raised"]["causes"][0]["field"],
        "spec.activeDeadlineSeconds"
    );
    assert_eq!(
        v["deadline_raised"]["message"],
        "Pod \"py-dl\" is invalid: spec.activeDeadlineSeconds: Invalid value: 900: must be less than or equal to previous value"
    );
    assert_eq!(v["deadline_invalid"]["status"], 422);
    let np = v["node_port"].as_u64().unwrap();
    assert!((30000..=32767).contains(&np));
    assert_eq!(v["port_taken"]["status"], 422);
    assert_eq!(
        v["port_taken"]["causes"][0]["field"],
        "spec.ports[0].nodePort"
    );
    assert!(v["port_taken"]["message"]
        .as_str()
        .unwrap()
        .ends_with("provided port is already allocated"));
    assert_eq!(v["port_range"]["status"], 422);
    assert_eq!(v["services"], json!(["py-svc"]));
    assert_eq!(v["service_deleted_kind"], "V1Service");
    assert_eq!(v["service_got_same_port"], true);
    let svc_events: Vec<(String, String, u64)> =
        serde_json::from_value(v["service_events"].clone()).unwrap();
    assert_eq!(
        svc_events,
        [
            ("ADDED".to_string(), "py-svc".to_string(), np),
            ("DELETED".to_string(), "py-svc".to_string(), np)
        ],
        "the watch sees py-svc only (py-svc2/3 were refused)"
    );
    assert_eq!(v["port_reused"], true);
    assert_eq!(v["delete_returned"], "V1Pod");
    let events: Vec<(String, String)> = serde_json::from_value(v["events"].clone()).unwrap();
    assert_eq!(
        events.first(),
        Some(&("ADDED".to_string(), "py-a".to_string())),
        "{events:?}"
    );
    assert!(
        events.contains(&("MODIFIED".to_string(), "py-a".to_string())),
        "{events:?}"
    );
    assert_eq!(
        events.last(),
        Some(&("DELETED".to_string(), "py-a".to_string())),
        "{events:?}"
    );
    assert!(
        events.iter().all(|(_, n)| n == "py-a"),
        "label selector: {events:?}"
    );
    assert_eq!(v["deleted_again"]["status"], 404);
    assert_eq!(v["unauthorized"]["status"], 401);
    assert_eq!(v["unauthorized"]["reason"], "Unauthorized");
    assert_eq!(v["forbidden"]["status"], 403);
    assert_eq!(
        v["forbidden"]["message"],
        "pods is forbidden: User \"viewer\" cannot create resource \"pods\" in API group \"\" in the namespace \"user-workloads\""
    );
    assert_eq!(v["viewer_can_list"], true);
}

/// The wire itself: a watch from a compacted resourceVersion gets a 410 `ERROR` event (kube-rs
/// and client-go relist on it), bookmarks carry the current version, and the server ends a
/// watch after `timeoutSeconds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_expire_bookmark_and_time_out() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = KubeSim::start(&[NS], None).await;
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&sim.ca_pem).unwrap()])
        .build()
        .unwrap();
    let base = format!("{}/api/v1/namespaces/{NS}/pods", sim.url);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let created: Value = http
        .post(&base)
        .header("Authorization", &auth)
        .json(&pod("w1", "w", None))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rv: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // From an exact version: only later changes.
    let later = http
        .get(format!(
            "{base}?watch=true&resourceVersion={rv}&timeoutSeconds=2&allowWatchBookmarks=true"
        ))
        .header("Authorization", &auth)
        .send();
    let body = later.await.unwrap().text().await.unwrap();
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.iter().all(|e| e["type"] != "ADDED"), "{body}");
    assert!(
        events.iter().any(|e| e["type"] == "BOOKMARK"
            && e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .is_some()),
        "{body}"
    );
    // Without a version: a synthetic ADDED for what exists.
    let body = http
        .get(format!("{base}?watch=true&timeoutSeconds=1"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let first: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["metadata"]["name"], "w1");
    assert_eq!(first["object"]["kind"], "Pod");
    // After compaction the old version is gone.
    sim.compact();
    let body = http
        .get(format!(
            "{base}?watch=true&resourceVersion={rv}&timeoutSeconds=5"
        ))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ev: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    // Lists: items without kind, the list's own version.
    let list: Value = http
        .get(format!("{base}?labelSelector=app%3Dw"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["kind"], "PodList");
    assert!(list["items"][0].get("kind").is_none());
    assert!(list["metadata"]["resourceVersion"].as_str().is_some());
    // A stale resourceVersion on update is a 409 Conflict.
    let mut stale = created.clone();
    stale["metadata"]["labels"]["x"] = json!("y");
    let r = http
        .put(format!("{base}/w1"))
        .header("Authorization", &auth)
        .json(&stale)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["reason"], "Conflict");
    assert!(s["message"]
        .as_str()
        .unwrap()
        .contains("the object has been modified"));
}

/// The label selector grammar, each form (what kubectl and the client libraries send).
#[test]
fn label_selectors_parse_and_match_like_apimachinery() {
    use common::kubesim::selector::{labels_match, parse_labels};
    let o = json!({"metadata": {"labels": {"a": "1", "b": "x"}}});
    for (s, want) in [
        ("a=1", true),
        ("a==1", true),
        ("a!=1", false),
        ("a in (1,2)", true),
        ("a notin (1)", false),
        ("b", true),
        ("!c", true),
        ("!b", false),
        ("a=1,b=y", false),
        ("a in (1, 2),b", true),
    ] {
        assert_eq!(labels_match(&parse_labels(s).unwrap(), &o), want, "{s}");
    }
    assert!(parse_labels("a in 1").is_err());
    assert!(parse_labels("a b=1").is_err());
}
