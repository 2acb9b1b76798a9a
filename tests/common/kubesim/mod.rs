//! A protocol-faithful simulated Kubernetes API server on 127.0.0.1, for the Kubernetes
//! backend's tests (no kube-apiserver, k3s, kind or envtest can be had on these machines).
//!
//! It is test infrastructure, not product code, and lives here so every test can start its
//! own on a free port. It implements the subset of the API the backend and the manifests in
//! `provider/kubernetes/` use, with the wire behaviour of a real server (see
//! `resources`, `server` and `status` for the details):
//!
//! - discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}/v1`) for pods,
//!   services, secrets, configmaps, serviceaccounts, PVCs, namespaces, resourcequotas,
//!   deployments, roles, rolebindings and networkpolicies;
//! - get, list, watch, create, update (PUT), merge and strategic-merge patch, delete; errors
//!   as `Status` objects with the real reasons and messages (404 NotFound, 409 AlreadyExists
//!   and Conflict, 422 Invalid with causes, 400, 401, 403, 405, 406, 410, 415);
//! - one resourceVersion counter, label and field selectors, watches with `ADDED`,
//!   `MODIFIED`, `DELETED`, `BOOKMARK` and `ERROR` (410 Expired after [`KubeSim::compact`]),
//!   ended after `timeoutSeconds`;
//! - pod validation and defaults, the update rules (`activeDeadlineSeconds` only set or
//!   lowered), graceful deletion (Terminating until the kubelet is done);
//! - NodePort allocation (30000-32767, upper band first) with "already allocated" and
//!   "not in the valid range" conflicts;
//! - bearer tokens with per-token rules (401 for unknown tokens, RBAC-worded 403s), and a
//!   pod-count ResourceQuota whose refusal is the quota plugin's 403;
//! - a scheduler and kubelet ([`kubelet`]) that run pods on the sandbox backend so SSH works
//!   end to end.
//!
//! Not simulated: TLS and client certificates (plain HTTP with bearer tokens), protobuf (the
//! server offers JSON only and refuses protobuf bodies with 415, as a server without that
//! codec would), server-side apply, strategic merge of lists by key (lists are replaced),
//! controllers (a Deployment is stored, never rolled out), admission webhooks, OpenAPI
//! documents (kubectl needs `--validate=false`), real images and a container runtime.

pub mod kubelet;
pub mod resources;
pub mod selector;
pub mod server;
pub mod status;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use paygress::backend::sandbox::SandboxBackend;
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use server::{Principal, Rule, Sim};
use store::Key;

/// The token with every right (the cluster admin of the kubeconfigs this writes).
pub const ADMIN_TOKEN: &str = "sim-admin-token";

pub struct KubeSim {
    pub sim: Arc<Sim>,
    pub port: u16,
    pub url: String,
    /// The CA that signed the server's certificate (PEM), in every kubeconfig this writes.
    pub ca_pem: Vec<u8>,
    stop: CancellationToken,
    pub dir: tempfile::TempDir,
}

impl KubeSim {
    /// An API server with namespaces `default`, `kube-system` and `extra`, the admin token, and
    /// a kubelet that runs login pods on `sandbox` (status-only pods without one).
    pub async fn start(extra: &[&str], sandbox: Option<Arc<SandboxBackend>>) -> KubeSim {
        let sim = Arc::new(Sim::new());
        sim.tokens.lock().unwrap().insert(
            ADMIN_TOKEN.into(),
            Principal {
                user: "kubernetes-admin".into(),
                rules: vec![Rule::admin()],
            },
        );
        for ns in ["default", "kube-system", "kube-public"]
            .iter()
            .chain(extra)
        {
            sim.seed_namespace(ns);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, cert, key) = super::nginx::certificates(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the simulated API server");
        let port = listener.local_addr().expect("addr").port();
        let app = axum::Router::new()
            .fallback(server::handle)
            .with_state((Arc::clone(&sim), port));
        let stop = CancellationToken::new();
        tokio::spawn(serve_tls(
            listener,
            app,
            tls_config(&cert, &key),
            stop.clone(),
        ));
        let kubelet = kubelet::Kubelet::new(Arc::clone(&sim), sandbox);
        tokio::spawn(kubelet.run(stop.clone()));
        KubeSim {
            sim,
            port,
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: std::fs::read(ca).expect("ca"),
            stop,
            dir,
        }
    }

    /// Give `token` these rules, as user `user`.
    pub fn add_token(&self, token: &str, user: &str, rules: Vec<Rule>) {
        self.sim.tokens.lock().unwrap().insert(
            token.into(),
            Principal {
                user: user.into(),
                rules,
            },
        );
    }

    /// A token for service account `ns/name` with exactly the rights the stored RoleBindings
    /// give it (Roles only; API groups are not told apart), as RBAC would: what
    /// `provider/kubernetes/manifests` grant, checked by using them.
    pub fn service_account_token(&self, token: &str, ns: &str, name: &str) {
        let s = self.sim.store.lock();
        let mut rules = Vec::new();
        for (key, rb) in s.all("rolebindings.rbac.authorization.k8s.io", None) {
            let bound = rb["subjects"].as_array().into_iter().flatten().any(|sub| {
                sub["kind"] == "ServiceAccount" && sub["name"] == name && sub["namespace"] == ns
            });
            if !bound || rb["roleRef"]["kind"] != "Role" {
                continue;
            }
            let role_name = rb["roleRef"]["name"].as_str().unwrap_or("");
            let Some(role) = s.get(&Key::new(
                "roles.rbac.authorization.k8s.io",
                &key.ns,
                role_name,
            )) else {
                continue;
            };
            for r in role["rules"].as_array().into_iter().flatten() {
                let strs = |v: &serde_json::Value| -> Vec<String> {
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                };
                rules.push(Rule {
                    verbs: strs(&r["verbs"]),
                    resources: strs(&r["resources"]),
                    namespaces: vec![key.ns.clone()],
                });
            }
        }
        drop(s);
        self.add_token(token, &format!("system:serviceaccount:{ns}:{name}"), rules);
    }

    /// End every watch after `secs` (None: when the client asked).
    pub fn cap_watches(&self, secs: Option<u64>) {
        *self.sim.watch_cap.lock().unwrap() = secs;
    }

    /// Keep scheduled pods in ContainerCreating for `secs` (an image pull).
    pub fn set_start_delay(&self, secs: u64) {
        *self.sim.start_delay.lock().unwrap() = secs;
    }

    /// Watches answered with 410 Expired so far.
    pub fn expired_served(&self) -> u64 {
        self.sim
            .expired_served
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An image the kubelet will fail to pull.
    pub fn missing_image(&self, image: &str) {
        self.sim.missing_images.lock().unwrap().push(image.into());
    }

    /// A ResourceQuota of `n` pods per namespace (None: no quota).
    pub fn set_pod_quota(&self, n: Option<usize>) {
        *self.sim.pod_quota.lock().unwrap() = n;
    }

    /// Compact the event log: watches from any earlier resourceVersion get 410 Expired.
    pub fn compact(&self) {
        self.sim.store.lock().compact();
    }

    /// A kubeconfig (JSON, which is YAML) for `token` with namespace `ns`, as a file.
    pub fn kubeconfig(&self, token: &str, ns: &str) -> PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{token}-{ns}"));
        let cfg = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "sim",
            "clusters": [{"name": "sim", "cluster": {
                "server": self.url,
                "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(&self.ca_pem),
            }}],
            "users": [{"name": "sim-user", "user": {"token": token}}],
            "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "sim-user", "namespace": ns}}],
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("json"))
            .expect("write kubeconfig");
        path
    }

    /// The stored object, if any (`res` as the store names it: `pods`, `deployments.apps`).
    pub fn object(&self, res: &str, ns: &str, name: &str) -> Option<serde_json::Value> {
        self.sim.store.lock().get(&Key::new(res, ns, name)).cloned()
    }

    /// Every stored object of `res` in `ns`.
    pub fn objects(&self, res: &str, ns: &str) -> Vec<serde_json::Value> {
        self.sim
            .store
            .lock()
            .all(res, Some(ns))
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// Requests served so far (`METHOD /path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.sim.requests.lock().unwrap().clone()
    }

    pub fn kubeconfig_dir(&self) -> &Path {
        self.dir.path()
    }
}

fn tls_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .map(|c| c.expect("cert"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server certificate");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// HTTP/1.1 over TLS, one task per connection, until `stop`.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let (acceptor, app, stop) = (acceptor.clone(), app.clone(), stop.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    use tower_service::Service;
                    let mut app = app.clone();
                    async move { app.call(req.map(axum::body::Body::new)).await }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Sim {
    /// Move the resourceVersion on (a change elsewhere in the cluster) and compact: a watch
    /// resuming from before now gets 410 Expired.
    pub fn churn_and_compact(&self) {
        let mut s = self.store.lock();
        let key = Key::new("configmaps", "default", "churn");
        s.put(
            key,
            json!({"kind": "ConfigMap", "apiVersion": "v1",
                "metadata": {"name": "churn", "namespace": "default", "uid": "churn"},
                "data": {"n": rand::random::<u32>().to_string()}}),
        );
        s.compact();
    }

    /// A namespace that exists from the start.
    pub fn seed_namespace(&self, ns: &str) {
        let mut s = self.store.lock();
        let key = Key::new("namespaces", "", ns);
        if s.get(&key).is_none() {
            s.put(
                key,
                json!({
                    "kind": "Namespace", "apiVersion": "v1",
                    "metadata": {"name": ns, "uid": format!("ns-{ns}"),
                        "creationTimestamp": server::rfc3339(server::now_secs()),
                        "labels": {"kubernetes.io/metadata.name": ns}},
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                }),
            );
        }
    }
}
