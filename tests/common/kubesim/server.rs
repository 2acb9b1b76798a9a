//! The HTTP side of the simulated API server: routing of the REST paths, bearer-token
//! authentication and rule-based authorization (401/403 as Status objects), content
//! negotiation (JSON only: protobuf is refused with 415/406 the way a server without it
//! would), and the verbs get, list, watch, create, update, patch and delete.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::resources::{self as rs, Res};
use super::selector;
use super::status::{self as st, ApiError};
use super::store::{Key, Store};

/// What a token may do: `verbs` on `resources` (plurals) in `namespaces`; `"*"` matches any,
/// an empty `namespaces` means every namespace and the cluster scope.
#[derive(Debug, Clone)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub resources: Vec<String>,
    pub namespaces: Vec<String>,
}

impl Rule {
    pub fn admin() -> Rule {
        Rule {
            verbs: vec!["*".into()],
            resources: vec!["*".into()],
            namespaces: vec![],
        }
    }
    pub fn new(verbs: &[&str], resources: &[&str], namespaces: &[&str]) -> Rule {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        Rule {
            verbs: v(verbs),
            resources: v(resources),
            namespaces: v(namespaces),
        }
    }
    fn allows(&self, verb: &str, res: &str, ns: Option<&str>) -> bool {
        let any = |l: &[String], x: &str| l.iter().any(|i| i == "*" || i == x);
        any(&self.verbs, verb)
            && any(&self.resources, res)
            && (self.namespaces.is_empty() || ns.is_some_and(|n| any(&self.namespaces, n)))
    }
}

#[derive(Debug, Clone)]
pub struct Principal {
    pub user: String,
    pub rules: Vec<Rule>,
}

/// Shared state of one simulated API server.
pub struct Sim {
    pub store: Store,
    pub tokens: Mutex<HashMap<String, Principal>>,
    /// A ResourceQuota on pods per namespace (`pods` count), when set.
    pub pod_quota: Mutex<Option<usize>>,
    /// Every request as `METHOD path?query`, for tests that look at what a client did.
    pub requests: Mutex<Vec<String>>,
    /// Images the kubelet cannot pull (ErrImagePull, then ImagePullBackOff).
    pub missing_images: Mutex<Vec<String>>,
    /// The longest a watch may last whatever the client asks (real servers end watches on
    /// their own too); `None`: as asked.
    pub watch_cap: Mutex<Option<u64>>,
    /// Watches answered with 410 Expired so far.
    pub expired_served: std::sync::atomic::AtomicU64,
    /// Seconds the kubelet keeps a scheduled pod in ContainerCreating (an image pull).
    pub start_delay: Mutex<u64>,
    ips: AtomicU32,
}

impl Sim {
    pub fn new() -> Sim {
        Sim {
            store: Store::new(),
            tokens: Mutex::new(HashMap::new()),
            pod_quota: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            missing_images: Mutex::new(Vec::new()),
            watch_cap: Mutex::new(None),
            expired_served: std::sync::atomic::AtomicU64::new(0),
            start_delay: Mutex::new(0),
            ips: AtomicU32::new(10),
        }
    }

    /// An address out of the simulated pod or service network (a label, never dialled).
    pub fn next_ip(&self, prefix: &str) -> String {
        let n = self.ips.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}.{}.{}", (n >> 8) & 0xff, n & 0xff)
    }
}

fn respond(code: u16, v: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn fail(e: ApiError) -> Response {
    respond(e.code, &e.body)
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 (UTC, seconds) from unix seconds.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn query(uri: &Uri) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            let s = s.replace('+', " ");
            percent_decode(&s)
        };
        m.insert(dec(k), dec(v));
    }
    m
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

enum Route<'a> {
    Json(Value),
    Resource {
        res: &'static Res,
        ns: Option<String>,
        name: Option<String>,
        sub: Option<&'a str>,
    },
    NotFound,
}

fn route<'a>(segs: &[&'a str], port: u16) -> Route<'a> {
    let (group, version, rest): (&str, &str, &[&str]) = match segs {
        ["version"] => {
            return Route::Json(json!({
                "major": "1", "minor": "32", "gitVersion": "v1.32.0-paygress-sim",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
                "platform": "linux/amd64"
            }))
        }
        ["api"] => {
            return Route::Json(json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{port}")}]
            }))
        }
        ["api", "v1"] => return Route::Json(rs::resource_list("")),
        ["apis"] => return Route::Json(rs::group_list()),
        ["apis", g, "v1"] if rs::RESOURCES.iter().any(|r| r.group == *g) => {
            return Route::Json(rs::resource_list(g))
        }
        ["apis", g] if rs::RESOURCES.iter().any(|r| r.group == *g) => {
            let v = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            return Route::Json(json!({"kind": "APIGroup", "apiVersion": "v1", "name": g,
                "versions": [v.clone()], "preferredVersion": v}));
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Route::NotFound,
    };
    let (ns, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] if tail.len() <= 2 => {
            (Some(ns.to_string()), *plural, tail.first(), tail.get(1))
        }
        [plural, tail @ ..] if tail.len() <= 2 => (None, *plural, tail.first(), tail.get(1)),
        _ => return Route::NotFound,
    };
    let Some(res) = rs::find(group, version, plural) else {
        return Route::NotFound;
    };
    if ns.is_some() && !res.namespaced {
        return Route::NotFound;
    }
    let sub = sub.copied();
    if sub.is_some_and(|s| !(res.plural == "pods" && s == "status")) {
        return Route::NotFound;
    }
    Route::Resource {
        res,
        ns,
        name: name.map(|n| n.to_string()),
        sub,
    }
}

fn media(headers: &HeaderMap, h: header::HeaderName) -> String {
    headers
        .get(h)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The one handler behind every path.
pub async fn handle(
    State((sim, port)): State<(Arc<Sim>, u16)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(format!("{method} {uri}"));
    let segs: Vec<&str> = uri
        .path()
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    // What `system:public-info-viewer` grants anonymous clients on a default cluster (kubectl
    // wrappers ask /version before they have picked a binary and its credentials).
    if matches!(segs.as_slice(), ["healthz"] | ["livez"] | ["readyz"]) {
        return (StatusCode::OK, "ok").into_response();
    }
    if segs.as_slice() == ["version"] {
        if let Route::Json(v) = route(&segs, port) {
            return respond(200, &v);
        }
    }
    let principal = {
        let tokens = sim.tokens.lock().unwrap_or_else(|p| p.into_inner());
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| tokens.get(t.trim()).cloned())
    };
    let Some(principal) = principal else {
        return fail(st::unauthorized());
    };
    let accept = media(&headers, header::ACCEPT);
    if !accept.is_empty()
        && !accept.split(',').any(|a| {
            let a = a.trim();
            a.starts_with("application/json")
                || a.starts_with("*/*")
                || a.starts_with("application/*")
        })
    {
        return fail(st::not_acceptable());
    }
    match route(&segs, port) {
        Route::Json(v) => respond(200, &v),
        Route::NotFound => fail(st::page_not_found()),
        Route::Resource { res, ns, name, sub } => {
            let q = query(&uri);
            let is_watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
            let verb = match (&method, name.is_some(), is_watch) {
                (&Method::GET, _, true) => "watch",
                (&Method::GET, true, false) => "get",
                (&Method::GET, false, false) => "list",
                (&Method::POST, false, _) => "create",
                (&Method::PUT, true, _) => "update",
                (&Method::PATCH, true, _) => "patch",
                (&Method::DELETE, true, _) => "delete",
                _ => return fail(st::method_not_allowed()),
            };
            let rname = match sub {
                Some(s) => format!("{}/{s}", res.plural),
                None => res.plural.to_string(),
            };
            if !principal
                .rules
                .iter()
                .any(|r| r.allows(verb, &rname, ns.as_deref()))
            {
                return fail(st::forbidden(
                    &principal.user,
                    verb,
                    &res.what(),
                    ns.as_deref(),
                    name.as_deref(),
                ));
            }
            let ct = media(&headers, header::CONTENT_TYPE);
            let result = match verb {
                "get" => get(&sim, res, ns.as_deref(), name.as_deref().unwrap_or("")),
                "list" => list(&sim, res, ns.as_deref(), &q),
                "watch" => return watch(sim, res, ns, name, q).await,
                "create" => {
                    parse_body(&ct, &body, false).and_then(|b| create(&sim, res, ns.as_deref(), b))
                }
                "update" => parse_body(&ct, &body, false).and_then(|b| {
                    update(
                        &sim,
                        res,
                        ns.as_deref(),
                        name.as_deref().unwrap_or(""),
                        sub,
                        Change::Put(b),
                    )
                }),
                "patch" => parse_body(&ct, &body, true).and_then(|b| {
                    update(
                        &sim,
                        res,
                        ns.as_deref(),
                        name.as_deref().unwrap_or(""),
                        sub,
                        Change::Patch(b),
                    )
                }),
                "delete" => {
                    let opts: Value = if body.is_empty() {
                        json!({})
                    } else {
                        serde_json::from_slice(&body).unwrap_or(json!({}))
                    };
                    delete(
                        &sim,
                        res,
                        ns.as_deref(),
                        name.as_deref().unwrap_or(""),
                        &q,
                        &opts,
                    )
                }
                _ => Err(st::method_not_allowed()),
            };
            match result {
                Ok((code, v)) => respond(code, &v),
                Err(e) => fail(e),
            }
        }
    }
}

fn parse_body(ct: &str, body: &[u8], patch: bool) -> Result<Value, ApiError> {
    let ct = ct.split(';').next().unwrap_or("").trim();
    let ok = if patch {
        [
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ]
        .contains(&ct)
    } else {
        ct == "application/json" || ct.is_empty()
    };
    if !ok {
        return Err(st::unsupported_media_type(ct));
    }
    serde_json::from_slice(body).map_err(|e| {
        st::bad_request(format!(
            "error decoding from json: illegal base64 data or invalid JSON: {e}"
        ))
    })
}

fn ns_key(ns: Option<&str>) -> &str {
    ns.unwrap_or("")
}

fn strip_for_list(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("kind");
        o.remove("apiVersion");
    }
    v
}

fn get(sim: &Sim, res: &Res, ns: Option<&str>, name: &str) -> Result<(u16, Value), ApiError> {
    let s = sim.store.lock();
    s.get(&Key::new(&res.key(), ns_key(ns), name))
        .cloned()
        .map(|v| (200, v))
        .ok_or_else(|| st::not_found(&res.what(), name))
}

struct Filter {
    labels: Vec<selector::Req>,
    fields: Vec<selector::FieldReq>,
}

impl Filter {
    fn from(
        res: &Res,
        q: &HashMap<String, String>,
        name: Option<&str>,
    ) -> Result<Filter, ApiError> {
        let labels =
            selector::parse_labels(q.get("labelSelector").map(String::as_str).unwrap_or(""))
                .map_err(st::bad_request)?;
        let mut fields = selector::parse_fields(
            q.get("fieldSelector").map(String::as_str).unwrap_or(""),
            res.fields(),
        )
        .map_err(st::bad_request)?;
        if let Some(n) = name {
            fields.push(("metadata.name".into(), true, n.into()));
        }
        Ok(Filter { labels, fields })
    }
    fn matches(&self, v: &Value) -> bool {
        selector::labels_match(&self.labels, v) && selector::fields_match(&self.fields, v)
    }
}

fn list(
    sim: &Sim,
    res: &Res,
    ns: Option<&str>,
    q: &HashMap<String, String>,
) -> Result<(u16, Value), ApiError> {
    let f = Filter::from(res, q, None)?;
    let s = sim.store.lock();
    let items: Vec<Value> = s
        .all(&res.key(), ns)
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| f.matches(v))
        .map(strip_for_list)
        .collect();
    Ok((
        200,
        json!({
            "kind": format!("{}List", res.kind),
            "apiVersion": res.api_version(),
            "metadata": {"resourceVersion": s.rv().to_string()},
            "items": items,
        }),
    ))
}

fn create(
    sim: &Sim,
    res: &Res,
    ns: Option<&str>,
    mut obj: Value,
) -> Result<(u16, Value), ApiError> {
    if !obj.is_object() {
        return Err(st::bad_request(
            "the body of the request is not a JSON object".into(),
        ));
    }
    // A missing kind or apiVersion takes the endpoint's (the server's decoder defaults it);
    // a different one is refused.
    match obj["kind"].as_str() {
        None | Some("") => obj["kind"] = json!(res.kind),
        Some(k) if k != res.kind => {
            return Err(st::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )))
        }
        _ => {}
    }
    match obj["apiVersion"].as_str() {
        None | Some("") => obj["apiVersion"] = json!(res.api_version()),
        Some(v) if v == res.api_version() => {}
        Some(other) => {
            return Err(st::bad_request(format!(
            "the API version in the data ({other}) does not match the expected API version ({})",
            res.api_version()
        )))
        }
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let name = match obj["metadata"]["name"].as_str() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => match obj["metadata"]["generateName"].as_str() {
            Some(p) => {
                let suffix: String = (0..5)
                    .map(|_| {
                        let c = b"bcdfghjklmnpqrstvwxz2456789";
                        c[rand::random::<usize>() % c.len()] as char
                    })
                    .collect();
                format!("{p}{suffix}")
            }
            None => {
                return Err(st::invalid(
                    res.group,
                    res.kind,
                    "",
                    vec![st::Cause {
                        field: "metadata.name".into(),
                        reason: "FieldValueRequired",
                        message: "Required value: name or generateName is required".into(),
                    }],
                ))
            }
        },
    };
    obj["metadata"]["name"] = json!(name);
    if let Some(ns) = ns {
        match obj["metadata"]["namespace"].as_str() {
            Some(n) if !n.is_empty() && n != ns => {
                return Err(st::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ))
            }
            _ => obj["metadata"]["namespace"] = json!(ns),
        }
    }
    if let Some(c) = rs::name_cause(res, &name) {
        return Err(st::invalid(res.group, res.kind, &name, vec![c]));
    }
    let mut s = sim.store.lock();
    if let Some(ns) = ns {
        if s.get(&Key::new("namespaces", "", ns)).is_none() {
            return Err(st::not_found(&rs::RESOURCES[0].what(), ns));
        }
    }
    let key = Key::new(&res.key(), ns_key(ns), &name);
    if s.get(&key).is_some() {
        return Err(st::already_exists(&res.what(), &name));
    }
    let meta = obj["metadata"].as_object_mut().expect("object");
    for k in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        meta.remove(k);
    }
    meta.insert("uid".into(), json!(uid()));
    meta.insert("creationTimestamp".into(), json!(rfc3339(now_secs())));
    match res.plural {
        "pods" => {
            rs::pod_create(&name, &mut obj)?;
            let quota = *sim.pod_quota.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(limit) = quota {
                let used = s
                    .all("pods", ns)
                    .iter()
                    .filter(|(_, p)| {
                        !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                    })
                    .count();
                if used >= limit {
                    return Err(st::quota_exceeded(
                        &res.what(),
                        &name,
                        "pod-count",
                        used,
                        limit,
                    ));
                }
            }
        }
        "services" => {
            let taken: BTreeSet<u16> = s
                .all("services", None)
                .iter()
                .flat_map(|(_, v)| rs::node_ports_of(v))
                .collect();
            rs::service_admit(&name, None, &mut obj, &taken, sim.next_ip("10.96"))?;
        }
        "secrets" => rs::secret_admit(&name, &mut obj)?,
        "namespaces" => {
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        }
        "deployments" => {
            obj["metadata"]["generation"] = json!(1);
            obj["status"] = json!({});
        }
        "persistentvolumeclaims" => {
            // A provisioner that binds at once (no WaitForFirstConsumer).
            if obj["spec"]["volumeMode"].is_null() {
                obj["spec"]["volumeMode"] = json!("Filesystem");
            }
            obj["spec"]["volumeName"] = json!(format!(
                "pvc-{}",
                obj["metadata"]["uid"].as_str().unwrap_or("")
            ));
            obj["status"] = json!({
                "phase": "Bound",
                "accessModes": obj["spec"]["accessModes"].clone(),
                "capacity": {"storage": obj["spec"]["resources"]["requests"]["storage"].clone()},
            });
        }
        _ => {}
    }
    let stored = s.put(key, obj);
    Ok((201, stored))
}

enum Change {
    Put(Value),
    Patch(Value),
}

fn update(
    sim: &Sim,
    res: &Res,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    change: Change,
) -> Result<(u16, Value), ApiError> {
    let mut s = sim.store.lock();
    let key = Key::new(&res.key(), ns_key(ns), name);
    let old = s
        .get(&key)
        .cloned()
        .ok_or_else(|| st::not_found(&res.what(), name))?;
    let mut new = match change {
        Change::Put(b) => {
            match b["metadata"]["resourceVersion"].as_str() {
                None | Some("") => {
                    return Err(st::invalid(
                        res.group,
                        res.kind,
                        name,
                        vec![st::Cause::invalid(
                            "metadata.resourceVersion",
                            &json!("0x0"),
                            "must be specified for an update",
                        )],
                    ))
                }
                Some(rv) if Some(rv) != old["metadata"]["resourceVersion"].as_str() => {
                    return Err(st::conflict(&res.what(), name))
                }
                _ => {}
            }
            b
        }
        Change::Patch(p) => {
            if let Some(rv) = p["metadata"]["resourceVersion"].as_str() {
                if Some(rv) != old["metadata"]["resourceVersion"].as_str() {
                    return Err(st::conflict(&res.what(), name));
                }
            }
            let mut t = old.clone();
            rs::merge_patch(&mut t, &p);
            t
        }
    };
    if new["metadata"]["name"].as_str() != Some(name) {
        return Err(st::bad_request(
            "the name of the object does not match the name on the URL".into(),
        ));
    }
    // Server-owned metadata stays.
    for k in [
        "uid",
        "creationTimestamp",
        "namespace",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        if old["metadata"][k].is_null() {
            if let Some(m) = new["metadata"].as_object_mut() {
                m.remove(k);
            }
        } else {
            new["metadata"][k] = old["metadata"][k].clone();
        }
    }
    new["kind"] = old["kind"].clone();
    new["apiVersion"] = old["apiVersion"].clone();
    match (res.plural, sub) {
        ("pods", Some("status")) => {
            let status = new["status"].clone();
            new = old.clone();
            new["status"] = status;
        }
        ("pods", _) => rs::pod_update(name, &old, &mut new)?,
        ("services", _) => {
            let taken: BTreeSet<u16> = s
                .all("services", None)
                .iter()
                .filter(|(k, _)| *k != key)
                .flat_map(|(_, v)| rs::node_ports_of(v))
                .collect();
            rs::service_admit(name, Some(&old), &mut new, &taken, String::new())?;
        }
        ("secrets", _) => rs::secret_admit(name, &mut new)?,
        _ => {}
    }
    let stored = s.put(key, new);
    Ok((200, stored))
}

fn delete(
    sim: &Sim,
    res: &Res,
    ns: Option<&str>,
    name: &str,
    q: &HashMap<String, String>,
    opts: &Value,
) -> Result<(u16, Value), ApiError> {
    let mut s = sim.store.lock();
    let key = Key::new(&res.key(), ns_key(ns), name);
    let old = s
        .get(&key)
        .cloned()
        .ok_or_else(|| st::not_found(&res.what(), name))?;
    if let Some(u) = opts["preconditions"]["uid"].as_str() {
        if Some(u) != old["metadata"]["uid"].as_str() {
            return Err(st::status(
                409,
                "Conflict",
                format!(
                    "Precondition failed: UID in precondition: {u}, UID in object meta: {}",
                    old["metadata"]["uid"].as_str().unwrap_or("")
                ),
                Some(json!({"name": name, "kind": res.plural})),
            ));
        }
    }
    if res.plural == "pods" {
        let grace = q
            .get("gracePeriodSeconds")
            .and_then(|g| g.parse::<i64>().ok())
            .or_else(|| opts["gracePeriodSeconds"].as_i64())
            .or_else(|| old["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30);
        let scheduled = old["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let terminal = matches!(
            old["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        if scheduled && !terminal && grace > 0 {
            if !old["metadata"]["deletionTimestamp"].is_null() {
                return Ok((200, old));
            }
            let mut p = old;
            p["metadata"]["deletionTimestamp"] = json!(rfc3339(now_secs() + grace as u64));
            p["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            let stored = s.put(key, p);
            return Ok((200, stored));
        }
        let gone = s.remove(&key).unwrap_or(old);
        return Ok((200, gone));
    }
    if res.plural == "namespaces" {
        // Everything in it goes with it (a real server finalizes asynchronously).
        let inside: Vec<Key> = rs::RESOURCES
            .iter()
            .filter(|r| r.namespaced)
            .flat_map(|r| s.all(&r.key(), Some(name)))
            .map(|(k, _)| k)
            .collect();
        for k in inside {
            s.remove(&k);
        }
    }
    let gone = s.remove(&key).unwrap_or(old);
    if res.plural == "services" {
        return Ok((200, gone));
    }
    Ok((
        200,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "kind": res.plural, "uid": gone["metadata"]["uid"]},
        }),
    ))
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

async fn watch(
    sim: Arc<Sim>,
    res: &'static Res,
    ns: Option<String>,
    name: Option<String>,
    q: HashMap<String, String>,
) -> Response {
    let f = match Filter::from(res, &q, name.as_deref()) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(3600)
        .min(
            sim.watch_cap
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or(u64::MAX),
        );
    let from = q
        .get("resourceVersion")
        .filter(|r| !r.is_empty())
        .map(|r| r.parse::<u64>());
    let rkey = res.key();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let (mut events, first, mut last) = {
        let s = sim.store.lock();
        let events = s.subscribe();
        let mut first = Vec::new();
        let last = s.rv();
        match from {
            Some(Err(_)) => {
                drop(s);
                return fail(st::bad_request("invalid resource version".into()));
            }
            None | Some(Ok(0)) => {
                for (_, v) in s.all(&rkey, ns.as_deref()) {
                    if f.matches(&v) {
                        first.push(json!({"type": "ADDED", "object": v}));
                    }
                }
            }
            Some(Ok(rv)) if rv < s.compacted() => {
                sim.expired_served.fetch_add(1, Ordering::Relaxed);
                let e = st::expired(rv, s.compacted());
                first.push(json!({"type": "ERROR", "object": e.body}));
                let _ = tx.try_send(line(&first[0]));
                drop(tx);
                return stream_response(rx);
            }
            Some(Ok(rv)) => {
                for e in s.since(rv) {
                    if e.key.res == rkey
                        && ns.as_deref().is_none_or(|n| e.key.ns == n)
                        && f.matches(&e.obj)
                    {
                        first.push(json!({"type": e.typ, "object": e.obj}));
                    }
                }
            }
        }
        (events, first, last)
    };
    let kind = res.kind;
    let api_version = res.api_version();
    tokio::spawn(async move {
        for ev in first {
            if tx.send(line(&ev)).await.is_err() {
                return;
            }
        }
        let end = tokio::time::Instant::now() + Duration::from_secs(timeout);
        // A bookmark at the start, then every 10 s (a real server: about once a minute).
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(end) => return,
                _ = tick.tick(), if bookmarks => {
                    let rv = sim.store.lock().rv();
                    let b = json!({"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": rv.to_string()}}});
                    if tx.send(line(&b)).await.is_err() { return; }
                }
                ev = events.recv() => match ev {
                    Ok(e) => {
                        if e.rv <= last || e.key.res != rkey
                            || ns.as_deref().is_some_and(|n| e.key.ns != n)
                            || !f.matches(&e.obj) {
                            continue;
                        }
                        last = e.rv;
                        if tx.send(line(&json!({"type": e.typ, "object": e.obj}))).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let e = st::expired(last, sim.store.lock().compacted());
                        let _ = tx.send(line(&json!({"type": "ERROR", "object": e.body}))).await;
                        return;
                    }
                    Err(_) => return,
                }
            }
        }
    });
    stream_response(rx)
}

fn stream_response(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}
