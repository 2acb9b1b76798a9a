//! The simulated scheduler and kubelet of the one node `sim-node`.
//!
//! It follows the store's changes (the same events watches get) plus a one-second sync tick,
//! like a kubelet's sync loop, and moves pods through the lifecycle a real node does: Pending
//! → scheduled (`spec.nodeName`, `PodScheduled`) → containers creating → Running with
//! `Initialized`, `ContainersReady` and `Ready`; `activeDeadlineSeconds` passed → `Failed`,
//! reason `DeadlineExceeded`, containers killed, the object kept; a graceful delete →
//! containers stopped, then the object removed.
//!
//! "Running a container" means: when the pod mounts a Secret as the volume `login` (the
//! Paygress pod layout: keys `username`, `password`, `authorized_keys`) and a NodePort Service
//! selects it, the kubelet starts a real workload for it on the sandbox backend, with that
//! login and the container's CPU and memory limits, listening on the Service's nodePort on
//! 127.0.0.1 — so what a real cluster gives a buyer (ssh to node:nodePort, the tier's limits)
//! is real here too. Any other pod runs as a status only (nothing is executed), which is all
//! the fidelity tests with kubectl and the Python client need. Images are not pulled: the
//! sandbox runs the host's programs (see the README on what this does not prove).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use paygress::backend::sandbox::SandboxBackend;
use paygress::backend::{Backend, WorkloadSpec};
use paygress::config::Tier;
use paygress::secret::Secret;
use serde_json::{json, Value};

use super::selector;
use super::server::{now_secs, rfc3339, Sim};
use super::store::Key;

pub const NODE: &str = "sim-node";

struct Running {
    uid: String,
    started: u64,
    /// A sandbox workload runs for it (else the container is a status only).
    sandboxed: bool,
    /// The PersistentVolumeClaim mounted at /home, if any: its sandbox home outlives the pod.
    claim: Option<String>,
}

pub struct Kubelet {
    sim: Arc<Sim>,
    sandbox: Option<Arc<SandboxBackend>>,
    running: HashMap<Key, Running>,
    /// Pods whose start failed, with when to try again.
    backoff: HashMap<Key, u64>,
    /// Stopped sandbox workloads of deleted pods that had a claim: (pod key → claim). A new pod
    /// of that name resumes it (home intact); removing the claim removes it.
    kept: HashMap<Key, String>,
    /// Pods "pulling their image" (`Sim::start_delay`), by uid, with when they may start.
    pulling: HashMap<String, u64>,
}

fn quantity_millicores(q: &Value) -> Option<u32> {
    let s = q
        .as_str()
        .map(str::to_string)
        .or_else(|| q.as_u64().map(|n| n.to_string()))?;
    if let Some(m) = s.strip_suffix('m') {
        m.parse().ok()
    } else {
        s.parse::<f64>().ok().map(|c| (c * 1000.0) as u32)
    }
}

fn quantity_mib(q: &Value) -> Option<u32> {
    let s = q.as_str()?;
    let (num, mul) = [
        ("Ki", 1.0 / 1024.0),
        ("Mi", 1.0),
        ("Gi", 1024.0),
        ("Ti", 1024.0 * 1024.0),
    ]
    .iter()
    .find_map(|(suf, mul)| s.strip_suffix(suf).map(|n| (n, *mul)))
    .unwrap_or((s, 1.0 / (1024.0 * 1024.0)));
    num.parse::<f64>().ok().map(|n| (n * mul) as u32)
}

impl Kubelet {
    pub fn new(sim: Arc<Sim>, sandbox: Option<Arc<SandboxBackend>>) -> Kubelet {
        Kubelet {
            sim,
            sandbox,
            running: HashMap::new(),
            backoff: HashMap::new(),
            kept: HashMap::new(),
            pulling: HashMap::new(),
        }
    }

    pub async fn run(mut self, stop: tokio_util::sync::CancellationToken) {
        let mut events = self.sim.store.lock().subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
                _ = events.recv() => {}
            }
            self.sync().await;
        }
        // The node goes away: its containers with it.
        let names: Vec<Key> = self.running.keys().cloned().collect();
        for k in names {
            self.kill(&k).await;
        }
    }

    /// Change a pod's status (and, through `f`, anything else) if it is still the same pod.
    fn write(&self, key: &Key, uid: &str, f: impl FnOnce(&mut Value)) {
        let mut s = self.sim.store.lock();
        let Some(mut pod) = s.get(key).cloned() else {
            return;
        };
        if pod["metadata"]["uid"].as_str() != Some(uid) {
            return;
        }
        let before = pod.clone();
        f(&mut pod);
        if pod != before {
            s.put(key.clone(), pod);
        }
    }

    async fn kill(&mut self, key: &Key) {
        if let Some(r) = self.running.remove(key) {
            if r.sandboxed {
                if let Some(sb) = &self.sandbox {
                    match r.claim {
                        Some(c) => {
                            let _ = sb.stop(&key.name).await;
                            self.kept.insert(key.clone(), c);
                        }
                        None => {
                            let _ = sb.destroy(&key.name).await;
                        }
                    }
                }
            }
        }
    }

    fn claim_of(pod: &Value) -> Option<String> {
        pod["spec"]["volumes"]
            .as_array()?
            .iter()
            .find_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
            .map(str::to_string)
    }

    async fn sync(&mut self) {
        let pods = self.sim.store.lock().all("pods", None);
        // Containers whose pod is gone (or was replaced by a new one of the same name) stop.
        let stale: Vec<Key> = self
            .running
            .iter()
            .filter(|(k, r)| {
                !pods
                    .iter()
                    .any(|(pk, p)| pk == *k && p["metadata"]["uid"].as_str() == Some(&r.uid))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.kill(&k).await;
        }
        // A deleted claim takes the kept home with it.
        let gone: Vec<Key> = {
            let s = self.sim.store.lock();
            self.kept
                .iter()
                .filter(|(k, c)| {
                    s.get(&Key::new("persistentvolumeclaims", &k.ns, c))
                        .is_none()
                })
                .map(|(k, _)| k.clone())
                .collect()
        };
        for k in gone {
            self.kept.remove(&k);
            if let Some(sb) = &self.sandbox {
                let _ = sb.destroy(&k.name).await;
            }
        }
        let now = now_secs();
        for (key, pod) in pods {
            let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
            let phase = pod["status"]["phase"].as_str().unwrap_or("").to_string();
            if !pod["metadata"]["deletionTimestamp"].is_null() {
                self.kill(&key).await;
                let mut s = self.sim.store.lock();
                if s.get(&key).and_then(|p| p["metadata"]["uid"].as_str()) == Some(uid.as_str()) {
                    s.remove(&key);
                }
                continue;
            }
            if phase == "Succeeded" || phase == "Failed" {
                self.kill(&key).await;
                continue;
            }
            if pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
                self.write(&key, &uid, |p| {
                    p["spec"]["nodeName"] = json!(NODE);
                    p["status"]["conditions"] = json!([{
                        "type": "PodScheduled", "status": "True",
                        "lastProbeTime": null, "lastTransitionTime": rfc3339(now)
                    }]);
                });
                continue;
            }
            if let Some(r) = self.running.get(&key) {
                let ads = pod["spec"]["activeDeadlineSeconds"].as_u64();
                if let Some(ads) = ads {
                    if now.saturating_sub(r.started) >= ads {
                        self.kill(&key).await;
                        self.write(&key, &uid, |p| {
                            let st = &mut p["status"];
                            st["phase"] = json!("Failed");
                            st["reason"] = json!("DeadlineExceeded");
                            st["message"] = json!(
                                "Pod was active on the node longer than the specified deadline"
                            );
                            for c in st["conditions"].as_array_mut().into_iter().flatten() {
                                if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                                    c["status"] = json!("False");
                                }
                            }
                            for c in st["containerStatuses"].as_array_mut().into_iter().flatten() {
                                c["ready"] = json!(false);
                                c["state"] = json!({"terminated": {
                                    "exitCode": 137, "reason": "Error", "finishedAt": rfc3339(now)
                                }});
                            }
                        });
                    }
                }
                continue;
            }
            if self.backoff.get(&key).is_some_and(|t| *t > now) {
                continue;
            }
            let delay = *self
                .sim
                .start_delay
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if delay > 0 {
                match self.pulling.get(&uid).copied() {
                    None => {
                        self.pulling.insert(uid.clone(), now + delay);
                        self.waiting(&key, &uid, &pod, "ContainerCreating", "");
                        continue;
                    }
                    Some(at) if at > now => continue,
                    Some(_) => {
                        self.pulling.remove(&uid);
                    }
                }
            }
            self.start(&key, &uid, &pod).await;
        }
    }

    /// The Secret mounted as `login`, decoded, when the pod has one.
    fn login(&self, key: &Key, pod: &Value) -> Option<Result<HashMap<String, String>, String>> {
        let secret = pod["spec"]["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == "login")?["secret"]["secretName"]
            .as_str()?
            .to_string();
        let s = self.sim.store.lock();
        let Some(obj) = s.get(&Key::new("secrets", &key.ns, &secret)) else {
            return Some(Err(format!("secret \"{secret}\" not found")));
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = HashMap::new();
        for (k, v) in obj["data"].as_object().into_iter().flatten() {
            let bytes = v
                .as_str()
                .and_then(|t| b64.decode(t).ok())
                .unwrap_or_default();
            out.insert(k.clone(), String::from_utf8_lossy(&bytes).into_owned());
        }
        Some(Ok(out))
    }

    /// The nodePort of a NodePort Service selecting this pod, forwarding to port 22.
    fn node_port(&self, key: &Key, pod: &Value) -> Option<u16> {
        let s = self.sim.store.lock();
        s.all("services", Some(&key.ns))
            .into_iter()
            .find_map(|(_, svc)| {
                let sel = svc["spec"]["selector"].as_object()?;
                let reqs: Vec<selector::Req> = sel
                    .iter()
                    .map(|(k, v)| selector::Req::Eq(k.clone(), v.as_str().unwrap_or("").into()))
                    .collect();
                if reqs.is_empty() || !selector::labels_match(&reqs, pod) {
                    return None;
                }
                svc["spec"]["ports"].as_array()?.iter().find_map(|p| {
                    let to22 = p["targetPort"] == json!(22) || p["targetPort"] == json!("ssh");
                    to22.then(|| p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()))
                        .flatten()
                })
            })
    }

    fn waiting(&self, key: &Key, uid: &str, pod: &Value, reason: &str, message: &str) {
        let statuses: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                json!({
                    "name": c["name"], "image": c["image"], "imageID": "", "ready": false,
                    "restartCount": 0, "started": false,
                    "state": {"waiting": {"reason": reason, "message": message}}
                })
            })
            .collect();
        self.write(key, uid, |p| {
            p["status"]["hostIP"] = json!("127.0.0.1");
            p["status"]["containerStatuses"] = json!(statuses);
        });
    }

    async fn start(&mut self, key: &Key, uid: &str, pod: &Value) {
        let now = now_secs();
        let mut sandboxed = false;
        let image = pod["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let missing = self
            .sim
            .missing_images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&image);
        if missing {
            let msg = format!(
                "Failed to pull image \"{image}\": rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": not found"
            );
            let reason = if self.backoff.contains_key(key) {
                "ImagePullBackOff"
            } else {
                "ErrImagePull"
            };
            self.waiting(key, uid, pod, reason, &msg);
            self.backoff.insert(key.clone(), now + 2);
            return;
        }
        let claim = Self::claim_of(pod);
        if let Some(c) = &claim {
            if self
                .sim
                .store
                .lock()
                .get(&Key::new("persistentvolumeclaims", &key.ns, c))
                .is_none()
            {
                self.waiting(
                    key,
                    uid,
                    pod,
                    "ContainerCreating",
                    &format!("persistentvolumeclaim \"{c}\" not found"),
                );
                return;
            }
        }
        if let (Some(sb), Some(login)) = (&self.sandbox, self.login(key, pod)) {
            let login = match login {
                Ok(l) => l,
                Err(e) => {
                    self.waiting(key, uid, pod, "CreateContainerConfigError", &e);
                    return;
                }
            };
            let Some(port) = self.node_port(key, pod) else {
                self.waiting(key, uid, pod, "ContainerCreating", "");
                return;
            };
            self.waiting(key, uid, pod, "ContainerCreating", "");
            let limits = &pod["spec"]["containers"][0]["resources"]["limits"];
            let spec = WorkloadSpec {
                name: key.name.clone(),
                provider_id: "kubesim".into(),
                tier: Tier {
                    id: "pod".into(),
                    name: "pod".into(),
                    description: String::new(),
                    cpu_millicores: quantity_millicores(&limits["cpu"]).unwrap_or(1000),
                    memory_mb: quantity_mib(&limits["memory"]).unwrap_or(512),
                    disk_gb: None,
                    rate_msats_per_sec: 1,
                },
                image: pod["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or("")
                    .into(),
                ssh_username: login.get("username").cloned().unwrap_or_default(),
                ssh_password: Secret::new(login.get("password").cloned().unwrap_or_default()),
                ssh_public_key: login
                    .get("authorized_keys")
                    .map(|k| k.trim().to_string())
                    .filter(|k| !k.is_empty()),
                host_port: Some(port),
                expires_at: now + 86_400 * 365,
            };
            let started = match self.kept.remove(key) {
                // The home on the claim is still there: the same sandbox workload again.
                Some(_) if claim.is_some() => sb.resume(&key.name).await.map(|_| ()),
                _ => {
                    // Whatever a previous pod of this name left behind goes first.
                    let _ = sb.destroy(&key.name).await;
                    sb.create(&spec).await.map(|_| ())
                }
            };
            if let Err(e) = started {
                self.waiting(key, uid, pod, "CreateContainerError", &e.to_string());
                self.backoff.insert(key.clone(), now + 2);
                return;
            }
            sandboxed = true;
        }
        self.backoff.remove(key);
        self.running.insert(
            key.clone(),
            Running {
                uid: uid.to_string(),
                started: now,
                sandboxed,
                claim,
            },
        );
        let pod_ip = self.sim.next_ip("10.244");
        let statuses: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| json!({
                "name": c["name"], "image": c["image"], "imageID": format!("sim://{}", c["image"].as_str().unwrap_or("")),
                "containerID": format!("sim://{}", &uid), "ready": true, "restartCount": 0, "started": true,
                "state": {"running": {"startedAt": rfc3339(now)}}
            }))
            .collect();
        self.write(key, uid, |p| {
            let t = rfc3339(now);
            let st = &mut p["status"];
            st["phase"] = json!("Running");
            st["hostIP"] = json!("127.0.0.1");
            st["hostIPs"] = json!([{"ip": "127.0.0.1"}]);
            st["podIP"] = json!(pod_ip);
            st["podIPs"] = json!([{"ip": pod_ip}]);
            st["startTime"] = json!(t);
            st["containerStatuses"] = json!(statuses);
            st["conditions"] = json!(["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
                .iter()
                .map(|c| json!({"type": c, "status": "True", "lastProbeTime": null, "lastTransitionTime": t}))
                .collect::<Vec<_>>());
        });
    }
}
