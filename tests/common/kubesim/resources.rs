//! What the simulated API server knows about each resource: discovery entries, name rules,
//! server-set defaults, and the validation the real server does on create and update for the
//! kinds Paygress uses (pods, services, secrets); other kinds are stored as given.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::status::{invalid, Cause};

pub struct Res {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short: &'static [&'static str],
}

impl Res {
    /// Store key prefix (`pods`, `deployments.apps`).
    pub fn key(&self) -> String {
        if self.group.is_empty() {
            self.plural.into()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.into()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    pub fn what(&self) -> super::status::What<'static> {
        super::status::What {
            group: self.group,
            plural: self.plural,
        }
    }
    /// Field selectors this resource answers to.
    pub fn fields(&self) -> &'static [&'static str] {
        match self.plural {
            "pods" => &[
                "metadata.name",
                "metadata.namespace",
                "spec.nodeName",
                "spec.restartPolicy",
                "status.phase",
            ],
            "secrets" => &["metadata.name", "metadata.namespace", "type"],
            _ => &["metadata.name", "metadata.namespace"],
        }
    }
}

const fn r(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
) -> Res {
    Res {
        group,
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short,
    }
}

pub const RESOURCES: &[Res] = &[
    r("", "namespaces", "namespace", "Namespace", false, &["ns"]),
    r("", "pods", "pod", "Pod", true, &["po"]),
    r("", "services", "service", "Service", true, &["svc"]),
    r("", "secrets", "secret", "Secret", true, &[]),
    r("", "configmaps", "configmap", "ConfigMap", true, &["cm"]),
    r(
        "",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
    ),
    r(
        "",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
        &["pvc"],
    ),
    r(
        "",
        "resourcequotas",
        "resourcequota",
        "ResourceQuota",
        true,
        &["quota"],
    ),
    r(
        "apps",
        "deployments",
        "deployment",
        "Deployment",
        true,
        &["deploy"],
    ),
    r(
        "rbac.authorization.k8s.io",
        "roles",
        "role",
        "Role",
        true,
        &[],
    ),
    r(
        "rbac.authorization.k8s.io",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        &[],
    ),
    r(
        "networking.k8s.io",
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        true,
        &["netpol"],
    ),
];

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Res> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Discovery: `APIResourceList` for one group/version.
pub fn resource_list(group: &str) -> Value {
    let gv = if group.is_empty() {
        "v1".to_string()
    } else {
        format!("{group}/v1")
    };
    let mut items = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        items.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "shortNames": r.short,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        }));
        if r.plural == "pods" {
            items.push(json!({
                "name": "pods/status", "singularName": "", "namespaced": true,
                "kind": "Pod", "verbs": ["get", "patch", "update"],
            }));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": items})
}

/// Discovery: `APIGroupList` (every non-core group).
pub fn group_list() -> Value {
    let groups: BTreeSet<&str> = RESOURCES
        .iter()
        .map(|r| r.group)
        .filter(|g| !g.is_empty())
        .collect();
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|g| {
            let v = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [v.clone()], "preferredVersion": v})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
    alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character \
    (e.g. 'example.com', regex used for validation is \
    '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters \
    or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. \
    'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case \
    alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. \
    'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn label_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(label_ok)
}

fn is_dns1035(s: &str) -> bool {
    label_ok(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// The name rule of each resource: a cause when `name` breaks it.
pub fn name_cause(res: &Res, name: &str) -> Option<Cause> {
    let v = Value::String(name.into());
    match res.plural {
        "services" if !is_dns1035(name) => Some(Cause::invalid("metadata.name", &v, DNS1035_MSG)),
        "namespaces" if !label_ok(name) => {
            Some(Cause::invalid("metadata.name", &v, DNS1123_LABEL_MSG))
        }
        _ if !is_subdomain(name) => Some(Cause::invalid("metadata.name", &v, SUBDOMAIN_MSG)),
        _ => None,
    }
}

/// Valid range of `activeDeadlineSeconds`.
const MAX_DEADLINE: i64 = 2_147_483_647;

/// Pod create: validation and the defaults the real server fills in.
pub fn pod_create(name: &str, pod: &mut Value) -> Result<(), super::status::ApiError> {
    let mut causes = Vec::new();
    let spec = &mut pod["spec"];
    if !spec.is_object() {
        causes.push(Cause::required("spec.containers"));
    }
    match spec["containers"].as_array() {
        Some(cs) if !cs.is_empty() => {
            let mut seen = BTreeSet::new();
            for (i, c) in cs.iter().enumerate() {
                match c["name"].as_str() {
                    None | Some("") => {
                        causes.push(Cause::required(&format!("spec.containers[{i}].name")))
                    }
                    Some(n) if !label_ok(n) => causes.push(Cause::invalid(
                        &format!("spec.containers[{i}].name"),
                        &c["name"],
                        DNS1123_LABEL_MSG,
                    )),
                    Some(n) => {
                        if !seen.insert(n.to_string()) {
                            causes.push(Cause {
                                field: format!("spec.containers[{i}].name"),
                                reason: "FieldValueDuplicate",
                                message: format!("Duplicate value: {n:?}"),
                            });
                        }
                    }
                }
                if c["image"].as_str().is_none_or(str::is_empty) {
                    causes.push(Cause::required(&format!("spec.containers[{i}].image")));
                }
            }
        }
        _ => causes.push(Cause::required("spec.containers")),
    }
    let ads = &spec["activeDeadlineSeconds"];
    if !ads.is_null() {
        match ads.as_i64() {
            Some(n) if (1..=MAX_DEADLINE).contains(&n) => {}
            _ => causes.push(Cause::invalid(
                "spec.activeDeadlineSeconds",
                ads,
                "must be between 1 and 2147483647, inclusive",
            )),
        }
    }
    if let Some(rc) = spec["runtimeClassName"].as_str() {
        if !is_subdomain(rc) {
            causes.push(Cause::invalid(
                "spec.runtimeClassName",
                &spec["runtimeClassName"],
                SUBDOMAIN_MSG,
            ));
        }
    }
    if !causes.is_empty() {
        return Err(invalid("", "Pod", name, causes));
    }
    // Defaults.
    let defaults = [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("serviceAccountName", json!("default")),
        ("securityContext", json!({})),
        ("enableServiceLinks", json!(true)),
        ("priority", json!(0)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
    ];
    for (k, v) in defaults {
        if spec[k].is_null() {
            spec[k] = v;
        }
    }
    if spec["tolerations"].is_null() {
        spec["tolerations"] = json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ]);
    }
    let mut guaranteed = true;
    if let Some(cs) = spec["containers"].as_array_mut() {
        for c in cs {
            let image = c["image"].as_str().unwrap_or_default().to_string();
            let tagged = image
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':'))
                && !image.ends_with(":latest");
            for (k, v) in [
                ("terminationMessagePath", json!("/dev/termination-log")),
                ("terminationMessagePolicy", json!("File")),
                (
                    "imagePullPolicy",
                    json!(if tagged { "IfNotPresent" } else { "Always" }),
                ),
                ("resources", json!({})),
            ] {
                if c[k].is_null() {
                    c[k] = v;
                }
            }
            if let Some(ports) = c["ports"].as_array_mut() {
                for p in ports {
                    if p["protocol"].is_null() {
                        p["protocol"] = json!("TCP");
                    }
                }
            }
            let res = &mut c["resources"];
            if res["requests"].is_null() && res["limits"].is_object() {
                res["requests"] = res["limits"].clone();
            }
            let full =
                |k: &str| !res["limits"][k].is_null() && res["limits"][k] == res["requests"][k];
            guaranteed &= full("cpu") && full("memory");
        }
    }
    pod["status"] = json!({
        "phase": "Pending",
        "qosClass": if guaranteed { "Guaranteed" } else { "BestEffort" },
    });
    Ok(())
}

/// Pod update: only images, `activeDeadlineSeconds` (set from empty or lowered) and
/// tolerations may change; the status stays the server's.
pub fn pod_update(name: &str, old: &Value, new: &mut Value) -> Result<(), super::status::ApiError> {
    let mut causes = Vec::new();
    let (o, n) = (
        &old["spec"]["activeDeadlineSeconds"],
        &new["spec"]["activeDeadlineSeconds"],
    );
    match (o.as_i64(), n.as_i64()) {
        (_, Some(nv)) if !(1..=MAX_DEADLINE).contains(&nv) => causes.push(Cause::invalid(
            "spec.activeDeadlineSeconds",
            n,
            "must be between 1 and 2147483647, inclusive",
        )),
        (Some(ov), Some(nv)) if nv > ov => causes.push(Cause::invalid(
            "spec.activeDeadlineSeconds",
            n,
            "must be less than or equal to previous value",
        )),
        (Some(_), None) => causes.push(Cause::invalid(
            "spec.activeDeadlineSeconds",
            &json!("null"),
            "must not update from a positive integer to nil value",
        )),
        _ => {}
    }
    // Everything else in the spec must be as it was.
    let mut a = old["spec"].clone();
    let mut b = new["spec"].clone();
    for s in [&mut a, &mut b] {
        if let Some(m) = s.as_object_mut() {
            m.remove("activeDeadlineSeconds");
            m.remove("tolerations");
        }
        if let Some(cs) = s["containers"].as_array_mut() {
            for c in cs {
                if let Some(m) = c.as_object_mut() {
                    m.remove("image");
                }
            }
        }
    }
    if a != b {
        causes.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,\
             `spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` \
             (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` \
             (allow it to be set to 1 if it was previously negative)",
        ));
    }
    if !causes.is_empty() {
        return Err(invalid("", "Pod", name, causes));
    }
    new["status"] = old["status"].clone();
    Ok(())
}

/// NodePort range of a default cluster.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
/// The lower band kept for static requests (the allocator prefers the rest).
const STATIC_BAND_END: u16 = 30085;

/// Service create or update: defaults, a cluster IP, and node ports allocated or checked
/// against `taken` (the ports of every other Service).
pub fn service_admit(
    name: &str,
    old: Option<&Value>,
    svc: &mut Value,
    taken: &BTreeSet<u16>,
    cluster_ip: String,
) -> Result<(), super::status::ApiError> {
    let mut causes = Vec::new();
    let spec = &mut svc["spec"];
    if spec["type"].is_null() {
        spec["type"] = json!("ClusterIP");
    }
    let typ = spec["type"].as_str().unwrap_or("").to_string();
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&typ.as_str()) {
        causes.push(Cause {
            field: "spec.type".into(),
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {typ:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
            ),
        });
    }
    match old {
        Some(o) => {
            let was = &o["spec"]["clusterIP"];
            if spec["clusterIP"].is_null() {
                spec["clusterIP"] = was.clone();
            } else if spec["clusterIP"] != *was {
                causes.push(Cause::invalid(
                    "spec.clusterIP",
                    &spec["clusterIP"],
                    "field is immutable",
                ));
            }
        }
        None => {
            if spec["clusterIP"].is_null() {
                spec["clusterIP"] = json!(cluster_ip);
            }
        }
    }
    spec["clusterIPs"] = json!([spec["clusterIP"].clone()]);
    for (k, v) in [
        ("sessionAffinity", json!("None")),
        ("ipFamilies", json!(["IPv4"])),
        ("ipFamilyPolicy", json!("SingleStack")),
        ("internalTrafficPolicy", json!("Cluster")),
    ] {
        if spec[k].is_null() {
            spec[k] = v;
        }
    }
    let node_ports = typ == "NodePort" || typ == "LoadBalancer";
    if node_ports && spec["externalTrafficPolicy"].is_null() {
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    let old_ports: BTreeSet<u16> = old
        .and_then(|o| o["spec"]["ports"].as_array())
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()))
                .collect()
        })
        .unwrap_or_default();
    let mut mine = BTreeSet::new();
    match spec["ports"].as_array_mut() {
        Some(ports) if !ports.is_empty() => {
            for (i, p) in ports.iter_mut().enumerate() {
                if p["protocol"].is_null() {
                    p["protocol"] = json!("TCP");
                }
                let port = p["port"].as_i64().unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    causes.push(Cause::invalid(
                        &format!("spec.ports[{i}].port"),
                        &p["port"],
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                if p["targetPort"].is_null() {
                    p["targetPort"] = json!(port);
                }
                if !node_ports {
                    if !p["nodePort"].is_null() && p["nodePort"] != json!(0) {
                        causes.push(Cause::forbidden(
                            &format!("spec.ports[{i}].nodePort"),
                            "may not be used when `type` is 'ClusterIP'",
                        ));
                    }
                    continue;
                }
                let asked = p["nodePort"].as_i64().unwrap_or(0);
                if asked == 0 {
                    // Random in the upper band first, like the real allocator; a port some
                    // other program holds on this host (the simulated node) is skipped, so
                    // simulators of parallel tests do not collide.
                    let upper: Vec<u16> = (STATIC_BAND_END + 1..=*NODE_PORTS.end()).collect();
                    let start = rand::random::<usize>() % upper.len();
                    let pick = upper[start..]
                        .iter()
                        .chain(&upper[..start])
                        .copied()
                        .chain(*NODE_PORTS.start()..=STATIC_BAND_END)
                        .find(|n| {
                            !taken.contains(n)
                                && !mine.contains(n)
                                && std::net::TcpListener::bind(("127.0.0.1", *n)).is_ok()
                        });
                    match pick {
                        Some(n) => {
                            p["nodePort"] = json!(n);
                            mine.insert(n);
                        }
                        None => return Err(super::status::status(
                            500,
                            "InternalError",
                            "Internal error occurred: failed to allocate a nodePort: range is full"
                                .into(),
                            None,
                        )),
                    }
                } else {
                    let ok_range = u16::try_from(asked).is_ok_and(|n| NODE_PORTS.contains(&n));
                    if !ok_range {
                        causes.push(Cause::invalid(
                            &format!("spec.ports[{i}].nodePort"),
                            &p["nodePort"],
                            "provided port is not in the valid range. The range of valid ports is 30000-32767",
                        ));
                        continue;
                    }
                    let n = asked as u16;
                    if (taken.contains(&n) && !old_ports.contains(&n)) || !mine.insert(n) {
                        causes.push(Cause::invalid(
                            &format!("spec.ports[{i}].nodePort"),
                            &p["nodePort"],
                            "provided port is already allocated",
                        ));
                    }
                }
            }
        }
        _ if typ != "ExternalName" => causes.push(Cause::required("spec.ports")),
        _ => {}
    }
    if !causes.is_empty() {
        return Err(invalid("", "Service", name, causes));
    }
    if svc["status"].is_null() || old.is_none() {
        svc["status"] = json!({"loadBalancer": {}});
    }
    Ok(())
}

/// Node ports a Service holds.
pub fn node_ports_of(svc: &Value) -> Vec<u16> {
    svc["spec"]["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Secret create/update: `stringData` folded into base64 `data`, `type` defaulted, data
/// checked to be base64.
pub fn secret_admit(name: &str, s: &mut Value) -> Result<(), super::status::ApiError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    if s["type"].is_null() {
        s["type"] = json!("Opaque");
    }
    let mut causes = Vec::new();
    if let Some(sd) = s.get("stringData").cloned() {
        if let Some(m) = sd.as_object() {
            for (k, v) in m {
                let text = v.as_str().unwrap_or_default();
                if s["data"].is_null() {
                    s["data"] = json!({});
                }
                s["data"][k] = json!(b64.encode(text));
            }
        }
        if let Some(o) = s.as_object_mut() {
            o.remove("stringData");
        }
    }
    if let Some(d) = s["data"].as_object() {
        for (k, v) in d {
            let key_ok = !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !key_ok {
                causes.push(Cause::invalid(
                    &format!("data[{k}]"),
                    &json!(k),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                ));
            }
            if v.as_str().is_none_or(|t| b64.decode(t).is_err()) {
                return Err(super::status::bad_request(format!(
                    "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte 0 (key {k:?})"
                )));
            }
        }
    }
    if !causes.is_empty() {
        return Err(invalid("", "Secret", name, causes));
    }
    Ok(())
}

/// RFC 7386 JSON merge patch (also used, as an approximation, for strategic merge patches:
/// lists are replaced rather than merged by key).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in p {
                if k == "$patch"
                    || k.starts_with("$setElementOrder")
                    || k.starts_with("$retainKeys")
                {
                    continue;
                }
                if v.is_null() {
                    if let Some(t) = target.as_object_mut() {
                        t.remove(k);
                    }
                } else {
                    merge_patch(&mut target[k.as_str()], v);
                }
            }
        }
        other => *target = other.clone(),
    }
}
