//! The Kubernetes backend: each workload is a Pod, a NodePort Service and a Secret in one
//! namespace, driven through the API server with `kube` and `k8s-openapi`.
//!
//! Why this shape (and what upstream got wrong, see the notes in the README):
//! - **No `hostNetwork`**, no host port: the pod has the cluster's pod network; buyers reach
//!   sshd through a NodePort Service whose port the API server allocates, so two workloads never
//!   race for a port on a node and the pod never sees the node's network. The endpoint is
//!   `node_address:nodePort` (`host_port_from_core()` is false).
//! - **The login is a Secret** mounted read-only at [`LOGIN_DIR`] and read by the constant
//!   entrypoint of the SSH image (`provider/kubernetes/entrypoint.sh`): the buyer's password
//!   and key never reach a command line, an environment variable or a shell string; the
//!   username (validated, not a secret) is an argument to `useradd` and sshd's `AllowUsers`.
//!   The Secret also holds the pod's SSH host key, made here, so the spawn answer names its
//!   fingerprint and buyers can pin it.
//! - **Limits from the tier**: requests = limits (cpu millicores, memory MiB, ephemeral storage
//!   from `disk_gb`), so pods are Guaranteed QoS; `allowPrivilegeEscalation: false`, the
//!   runtime's default seccomp profile, every capability dropped but the few sshd needs, no
//!   service-account token, no service links, an optional `runtimeClassName` (gVisor, Kata).
//!   A NetworkPolicy (one per namespace, made at start) lets the pods out to the internet but
//!   not to private ranges (the cluster's services, the node, the provider) unless the operator
//!   lists them in `egress_allow`.
//! - **Readiness from a watch**: `create` waits on a watch of the pod (kube-runtime's watcher,
//!   no polling of GETs; it rides out ended watches and 410 Expired by relisting) for Running
//!   and Ready, then for an SSH banner on the endpoint.
//! - **Time is the core's**: the paid deadline is an annotation the core's reaper enforces;
//!   `activeDeadlineSeconds` can only be lowered once set (the API server rejects raising it),
//!   so it is set only as an optional hard cap on a pod's whole life
//!   (`max_pod_lifetime_seconds`) and a top-up never depends on it.
//! - **Stop** deletes the pod and keeps the Service (so the endpoint survives), the Secret and,
//!   for a tier with a disk, the PersistentVolumeClaim `<name>-home` mounted at `/home`;
//!   **resume** recreates the pod from the template kept on the Service. **Destroy** removes
//!   them all. A failed create removes everything it made. A container that cannot start (an
//!   image that cannot be pulled, a crash loop) fails the create at once instead of timing out.
//! - **Re-adoption**: everything carries the labels [`MANAGED_BY`] and [`PROVIDER_LABEL`];
//!   `list` answers from the Services so a restarted provider finds its workloads (stopped ones
//!   too) and the core removes orphans.
//!
//! API errors are mapped to [`BackendError`]s that say what happened: 404 → `NotFound`; 409 →
//! the name is taken or the old pod is still terminating; 422 for a NodePort that is taken, and
//! 403 for an exceeded ResourceQuota → `Capacity`; other 422s → the object was invalid; 401/403
//! → the credentials or the Role. No message carries the login.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service,
    ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::{
    Backend, BackendError, BackendKind, Endpoint, WorkloadInfo, WorkloadSpec, WorkloadState,
};

/// Where the pod sees its login (the Secret's keys `username`, `password`, `authorized_keys`).
pub const LOGIN_DIR: &str = "/etc/paygress/login";
/// Label on everything this backend makes.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label: the provider instance that owns the object.
pub const PROVIDER_LABEL: &str = "paygress.io/provider";
/// Label: the workload an object belongs to.
pub const WORKLOAD_LABEL: &str = "paygress.io/workload";
/// Service annotation: the paid deadline (unix seconds), for operators and re-adoption.
pub const EXPIRES_ANNOTATION: &str = "paygress.io/expires-at";
/// Service annotation: the Pod to recreate on resume (no secret in it).
pub const POD_ANNOTATION: &str = "paygress.io/pod-template";
/// The Secret key (and file in [`LOGIN_DIR`]) of the workload's SSH host key, made by the
/// backend so its fingerprint is known before the first connection.
pub const HOST_KEY: &str = "ssh_host_ed25519_key";
/// The NetworkPolicy made for the namespace.
pub const NETWORK_POLICY: &str = "paygress-workloads";

/// Private and special ranges workloads may not reach unless `egress_allow` lists them.
const EGRESS_DENY: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "127.0.0.0/8",
];

/// Capabilities sshd needs to log users in (privilege separation, ptys, setuid to the user).
const SSHD_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "SETUID",
    "SETGID",
    "SYS_CHROOT",
    "AUDIT_WRITE",
    "KILL",
    "NET_BIND_SERVICE",
];

/// `[backend.kubernetes]` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Kubeconfig file; default the usual lookup (`KUBECONFIG`, `~/.kube/config`), then the
    /// in-cluster service account when running in a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig (default: its current context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Namespace for workloads; `POD_NAMESPACE` overrides it; default `backend.namespace`
    /// (`user-workloads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// What buyers SSH to: a node's external address or a load balancer in front of the
    /// NodePorts. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_address: Option<String>,
    /// Offered image → container image (`paygress-debian-12 = "ghcr.io/…/ssh:1"`). An offered
    /// image missing here is used as the container image itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, String>,
    /// `runtimeClassName` for workload pods (gVisor, Kata) for stronger isolation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class: Option<String>,
    /// Storage class for workload volumes (reserved for tiers with a disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// A hard cap on a pod's whole life (`activeDeadlineSeconds`), unset by default. It can
    /// never be raised, so paid time does not depend on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pod_lifetime_seconds: Option<u64>,
    /// CIDRs workloads may reach although they are private (a service offered on purpose).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_allow: Vec<String>,
    /// Seconds to wait for a pod to be Ready and answer SSH (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout_seconds: Option<u64>,
}

/// The Kubernetes backend. See the module docs.
#[derive(Clone)]
pub struct KubernetesBackend {
    client: kube::Client,
    namespace: String,
    node_address: String,
    cfg: KubernetesConfig,
    /// Fingerprints of the host key each new workload got, until the spawn answer takes them
    /// ([`Backend::host_key_fingerprints`]).
    host_keys: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<String>>>>,
}

impl std::fmt::Debug for KubernetesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesBackend")
            .field("namespace", &self.namespace)
            .field("node_address", &self.node_address)
            .finish()
    }
}

/// What an API call was about, for error messages.
fn map_err(what: &str, e: kube::Error) -> BackendError {
    match e {
        kube::Error::Api(s) => {
            let msg = s.message.clone();
            match s.code {
                404 => BackendError::NotFound(format!("kubernetes: {what}: {msg}")),
                409 if s.reason == "AlreadyExists" => BackendError::Api(format!(
                    "kubernetes: {what}: {msg} (the name is taken, or an old pod of that name is still terminating)"
                )),
                409 => BackendError::Api(format!(
                    "kubernetes: {what}: {msg} (changed concurrently)"
                )),
                422 if msg.contains("provided port is already allocated") => {
                    BackendError::Capacity(format!("kubernetes: {what}: {msg}"))
                }
                422 => BackendError::Api(format!(
                    "kubernetes: the API server rejected the {what} as invalid: {msg}"
                )),
                403 if msg.contains("exceeded quota") => {
                    BackendError::Capacity(format!("kubernetes: {what}: {msg}"))
                }
                403 => BackendError::Api(format!(
                    "kubernetes: not allowed to {what} (403; check the provider's Role): {msg}"
                )),
                401 => BackendError::Api(format!(
                    "kubernetes: not authenticated (401) to {what}: check the kubeconfig's or service account's credentials"
                )),
                500 if msg.contains("range is full") => {
                    BackendError::Capacity(format!("kubernetes: {what}: {msg}"))
                }
                code => BackendError::Api(format!("kubernetes: {what}: {code} {}: {msg}", s.reason)),
            }
        }
        other => BackendError::Api(format!("kubernetes: {what}: {other}")),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn secret_name(name: &str) -> String {
    format!("{name}-login")
}

/// The PersistentVolumeClaim holding `/home` of a workload whose tier has a disk.
fn claim_name(name: &str) -> String {
    format!("{name}-home")
}

/// Container waiting reasons that will not clear by themselves: the pod will never be Ready.
const HOPELESS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
];

/// The first hopeless waiting reason of the pod's containers, with its message.
fn hopeless(p: &Pod) -> Option<(String, String)> {
    p.status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .find_map(|w| {
            let r = w.reason.clone()?;
            HOPELESS
                .contains(&r.as_str())
                .then(|| (r, w.message.clone().unwrap_or_default()))
        })
}

/// The label value of a provider id (labels are at most 63 characters of `[A-Za-z0-9._-]`).
fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// Connect to the endpoint and read the server's `SSH-` banner.
async fn banner(host: &str, port: u16) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.ok()?;
        (&buf == b"SSH-").then_some(())
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

impl KubernetesBackend {
    /// Load the client configuration (kubeconfig, context, or in-cluster), check that the
    /// namespace is reachable with these credentials, and make the namespace's NetworkPolicy.
    pub async fn connect(
        cfg: KubernetesConfig,
        namespace: String,
    ) -> Result<KubernetesBackend, BackendError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let node_address = cfg
            .node_address
            .clone()
            .filter(|a| !a.trim().is_empty())
            .ok_or_else(|| {
                BackendError::Api(
                    "backend.kubernetes.node_address must be set: the node address or load \
                     balancer buyers SSH to"
                        .into(),
                )
            })?;
        let options = kube::config::KubeConfigOptions {
            context: cfg.context.clone(),
            ..Default::default()
        };
        let config = match &cfg.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    BackendError::Api(format!(
                        "backend.kubernetes.kubeconfig {}: {e}",
                        path.display()
                    ))
                })?;
                kube::Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| BackendError::Api(format!("kubernetes: kubeconfig: {e}")))?
            }
            None if cfg.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| BackendError::Api(format!("kubernetes: kubeconfig: {e}")))?,
            None => kube::Config::infer()
                .await
                .map_err(|e| BackendError::Api(format!("kubernetes: no configuration: {e}")))?,
        };
        let client = kube::Client::try_from(config)
            .map_err(|e| BackendError::Api(format!("kubernetes: client: {e}")))?;
        let b = KubernetesBackend {
            client,
            namespace,
            node_address,
            cfg,
            host_keys: Default::default(),
        };
        // Credentials and namespace, checked now rather than after a buyer paid.
        b.pods()
            .list(&ListParams::default().limit(1))
            .await
            .map_err(|e| map_err(&format!("list pods in namespace {}", b.namespace), e))?;
        b.ensure_network_policy().await?;
        Ok(b)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The claim for `/home` of a tier with a disk: kept across stops, removed with the
    /// workload.
    fn claim(&self, spec: &WorkloadSpec, gb: u32) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(claim_name(&spec.name)),
                labels: Some(Self::labels(&spec.provider_id, &spec.name)),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: self.cfg.storage_class.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(format!("{gb}Gi")),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn labels(provider_id: &str, name: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY.to_string(), "paygress".to_string()),
            (PROVIDER_LABEL.to_string(), label_value(provider_id)),
            (WORKLOAD_LABEL.to_string(), name.to_string()),
        ])
    }

    fn ready_timeout(&self) -> Duration {
        // At most a day: deadlines are `Instant + timeout`, which must not overflow.
        Duration::from_secs(
            self.cfg
                .ready_timeout_seconds
                .unwrap_or(300)
                .clamp(1, 86_400),
        )
    }

    /// The namespace's NetworkPolicy: SSH in from anywhere, out to anywhere but private
    /// ranges (plus DNS to the cluster's resolver).
    async fn ensure_network_policy(&self) -> Result<(), BackendError> {
        let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), &self.namespace);
        let except: Vec<String> = EGRESS_DENY
            .iter()
            .map(|s| s.to_string())
            .filter(|d| !self.cfg.egress_allow.contains(d))
            .collect();
        let mut egress = vec![
            NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: "0.0.0.0/0".into(),
                        except: Some(except),
                    }),
                    ..Default::default()
                }]),
                ports: None,
            },
            NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "kubernetes.io/metadata.name".to_string(),
                            "kube-system".to_string(),
                        )])),
                        ..Default::default()
                    }),
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "k8s-app".to_string(),
                            "kube-dns".to_string(),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ports: Some(
                    ["UDP", "TCP"]
                        .iter()
                        .map(|p| NetworkPolicyPort {
                            port: Some(IntOrString::Int(53)),
                            protocol: Some(p.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
            },
        ];
        for cidr in &self.cfg.egress_allow {
            egress.push(NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: cidr.clone(),
                        except: None,
                    }),
                    ..Default::default()
                }]),
                ports: None,
            });
        }
        let np = NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(NETWORK_POLICY.into()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.to_string(),
                    "paygress".to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        MANAGED_BY.to_string(),
                        "paygress".to_string(),
                    )])),
                    ..Default::default()
                }),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(22)),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                }]),
                egress: Some(egress),
            }),
        };
        match api.create(&PostParams::default(), &np).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => api
                .replace(NETWORK_POLICY, &PostParams::default(), &{
                    let mut np = np;
                    let current = api
                        .get(NETWORK_POLICY)
                        .await
                        .map_err(|e| map_err("read the NetworkPolicy", e))?;
                    np.metadata.resource_version = current.metadata.resource_version;
                    np
                })
                .await
                .map(|_| ())
                .map_err(|e| map_err("update the NetworkPolicy", e)),
            Err(e) => Err(map_err("create the NetworkPolicy", e)),
        }
    }

    fn container_image(&self, offered: &str) -> String {
        self.cfg
            .images
            .get(offered)
            .cloned()
            .unwrap_or_else(|| offered.to_string())
    }

    /// The pod of a workload (its template is also kept on the Service for resume).
    fn pod(&self, spec: &WorkloadSpec) -> Pod {
        let labels = Self::labels(&spec.provider_id, &spec.name);
        let mut limits = BTreeMap::from([
            (
                "cpu".to_string(),
                Quantity(format!("{}m", spec.tier.cpu_millicores)),
            ),
            (
                "memory".to_string(),
                Quantity(format!("{}Mi", spec.tier.memory_mb)),
            ),
        ]);
        if let Some(gb) = spec.tier.disk_gb {
            limits.insert("ephemeral-storage".into(), Quantity(format!("{gb}Gi")));
        }
        let seccomp = SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        };
        let mut mounts = vec![VolumeMount {
            name: "login".into(),
            mount_path: LOGIN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }];
        let mut volumes = vec![Volume {
            name: "login".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name(&spec.name)),
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..Default::default()
        }];
        if spec.tier.disk_gb.is_some() {
            mounts.push(VolumeMount {
                name: "home".into(),
                mount_path: "/home".into(),
                ..Default::default()
            });
            volumes.push(Volume {
                name: "home".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&spec.name),
                    read_only: Some(false),
                }),
                ..Default::default()
            });
        }
        Pod {
            metadata: ObjectMeta {
                name: Some(spec.name.clone()),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([(
                    "paygress.io/tier".to_string(),
                    spec.tier.id.clone(),
                )])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                host_network: Some(false),
                hostname: Some(spec.name.clone()),
                restart_policy: Some("Always".into()),
                runtime_class_name: self.cfg.runtime_class.clone(),
                active_deadline_seconds: self
                    .cfg
                    .max_pod_lifetime_seconds
                    .map(|s| s.clamp(1, 2_147_483_647) as i64),
                security_context: Some(PodSecurityContext {
                    seccomp_profile: Some(seccomp.clone()),
                    ..Default::default()
                }),
                containers: vec![Container {
                    name: "ssh".into(),
                    image: Some(self.container_image(&spec.image)),
                    ports: Some(vec![ContainerPort {
                        container_port: 22,
                        name: Some("ssh".into()),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                    resources: Some(ResourceRequirements {
                        requests: Some(limits.clone()),
                        limits: Some(limits),
                        ..Default::default()
                    }),
                    security_context: Some(SecurityContext {
                        allow_privilege_escalation: Some(false),
                        capabilities: Some(Capabilities {
                            drop: Some(vec!["ALL".into()]),
                            add: Some(SSHD_CAPS.iter().map(|c| c.to_string()).collect()),
                        }),
                        seccomp_profile: Some(seccomp),
                        ..Default::default()
                    }),
                    readiness_probe: Some(Probe {
                        tcp_socket: Some(TCPSocketAction {
                            port: IntOrString::Int(22),
                            host: None,
                        }),
                        period_seconds: Some(2),
                        ..Default::default()
                    }),
                    volume_mounts: Some(mounts),
                    ..Default::default()
                }],
                volumes: Some(volumes),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// The login Secret, with an SSH host key made here (so the spawn answer can name its
    /// fingerprint for buyers to pin): returns the Secret and that fingerprint.
    fn secret(spec: &WorkloadSpec) -> Result<(Secret, String), BackendError> {
        let bad =
            |e: &dyn std::fmt::Display| BackendError::Api(format!("kubernetes: host key: {e}"));
        let key = russh::keys::PrivateKey::random(
            &mut rand::rngs::OsRng,
            russh::keys::Algorithm::Ed25519,
        )
        .map_err(|e| bad(&e))?;
        let private = key
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .map_err(|e| bad(&e))?;
        let public = key.public_key().to_openssh().map_err(|e| bad(&e))?;
        let fingerprint = key
            .public_key()
            .fingerprint(russh::keys::HashAlg::Sha256)
            .to_string();
        let mut data = BTreeMap::from([
            ("username".to_string(), spec.ssh_username.clone()),
            (
                "password".to_string(),
                spec.ssh_password.expose().to_string(),
            ),
            (HOST_KEY.to_string(), private.to_string()),
            (format!("{HOST_KEY}.pub"), format!("{public}\n")),
        ]);
        if let Some(k) = &spec.ssh_public_key {
            data.insert("authorized_keys".into(), format!("{}\n", k.trim()));
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(secret_name(&spec.name)),
                labels: Some(Self::labels(&spec.provider_id, &spec.name)),
                ..Default::default()
            },
            string_data: Some(data),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        Ok((secret, fingerprint))
    }

    fn service(spec: &WorkloadSpec, pod: &Pod) -> Result<Service, BackendError> {
        let template = serde_json::to_string(pod)
            .map_err(|e| BackendError::Api(format!("kubernetes: pod template: {e}")))?;
        Ok(Service {
            metadata: ObjectMeta {
                name: Some(spec.name.clone()),
                labels: Some(Self::labels(&spec.provider_id, &spec.name)),
                annotations: Some(BTreeMap::from([
                    (EXPIRES_ANNOTATION.to_string(), spec.expires_at.to_string()),
                    (POD_ANNOTATION.to_string(), template),
                ])),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("NodePort".into()),
                selector: Some(BTreeMap::from([
                    (WORKLOAD_LABEL.to_string(), spec.name.clone()),
                    (PROVIDER_LABEL.to_string(), label_value(&spec.provider_id)),
                ])),
                ports: Some(vec![ServicePort {
                    name: Some("ssh".into()),
                    port: 22,
                    target_port: Some(IntOrString::Int(22)),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn node_port(svc: &Service) -> Option<u16> {
        svc.spec
            .as_ref()?
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.port == 22)?
            .node_port
            .and_then(|n| u16::try_from(n).ok())
    }

    /// Wait, on a watch of the pod, until it is Running and Ready (or fails), then for the
    /// SSH banner on the endpoint.
    async fn wait_ready(&self, name: &str, port: u16) -> Result<(), BackendError> {
        let ready = |p: Option<&Pod>| {
            let Some(st) = p.and_then(|p| p.status.as_ref()) else {
                return false;
            };
            let phase = st.phase.as_deref().unwrap_or("");
            let is_ready = st
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            matches!(phase, "Failed" | "Succeeded")
                || (phase == "Running" && is_ready)
                || p.and_then(hopeless).is_some()
        };
        let limit = self.ready_timeout();
        let deadline = tokio::time::Instant::now() + limit;
        let pod = tokio::time::timeout(limit, self.watch_pod_until(name, ready))
            .await
            .map_err(|_| {
                BackendError::NotReady(format!(
                    "kubernetes: pod {name} was not Ready within {} s",
                    limit.as_secs()
                ))
            })??;
        let phase = pod
            .as_ref()
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if let Some((reason, message)) = pod.as_ref().and_then(hopeless) {
            let e = format!("kubernetes: pod {name} cannot start: {reason}: {message}");
            return Err(if reason.contains("Image") {
                BackendError::ImageMissing(e)
            } else {
                BackendError::NotReady(e)
            });
        }
        if phase != "Running" {
            let reason = pod
                .and_then(|p| p.status)
                .and_then(|s| s.reason.or(s.message))
                .unwrap_or_default();
            return Err(BackendError::NotReady(format!(
                "kubernetes: pod {name} ended ({phase} {reason}) before it was ready"
            )));
        }
        // The Service may take a moment to route on every node (kube-proxy).
        loop {
            if banner(&self.node_address, port).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BackendError::NotReady(format!(
                    "kubernetes: pod {name} is Ready but no SSH banner answers on {}:{port}",
                    self.node_address
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Delete the pod and wait (on a watch) until it is gone.
    async fn delete_pod(&self, name: &str) -> Result<(), BackendError> {
        let pods = self.pods();
        let uid = match pods.get_opt(name).await {
            Ok(Some(p)) => p.metadata.uid,
            Ok(None) => return Ok(()),
            Err(e) => return Err(map_err(&format!("read pod {name}"), e)),
        };
        match pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(map_err(&format!("delete pod {name}"), e)),
        }
        let Some(uid) = uid else { return Ok(()) };
        let gone = |p: Option<&Pod>| p.is_none_or(|p| p.metadata.uid.as_ref() != Some(&uid));
        tokio::time::timeout(self.ready_timeout(), self.watch_pod_until(name, gone))
            .await
            .map_err(|_| {
                BackendError::Api(format!("kubernetes: pod {name} did not terminate in time"))
            })??;
        Ok(())
    }

    /// Follow pod `name` on a watch until `done` holds for what the watch shows (`None`: no
    /// such pod); returns that. kube-runtime's watcher lists, then watches from the list's
    /// version and resumes after the server ends a watch; when the version it resumes from is
    /// gone (410 Expired: the history was compacted while it was away) or a connection drops,
    /// it relists after a backoff. Those are its normal life, not failures (kube-runtime's
    /// `await_condition` gives up on the first, which would fail a paid spawn over a routine
    /// compaction); only refused credentials end the wait early.
    async fn watch_pod_until(
        &self,
        name: &str,
        mut done: impl FnMut(Option<&Pod>) -> bool,
    ) -> Result<Option<Pod>, BackendError> {
        use futures::StreamExt;
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = std::pin::pin!(watcher(self.pods(), cfg).default_backoff());
        let mut current: Option<Pod> = None;
        let mut listed: Option<Pod> = None;
        while let Some(ev) = events.next().await {
            let check = match ev {
                Ok(watcher::Event::Init) => {
                    listed = None;
                    false
                }
                Ok(watcher::Event::InitApply(p)) => {
                    listed = Some(p);
                    false
                }
                Ok(watcher::Event::InitDone) => {
                    current = listed.take();
                    true
                }
                Ok(watcher::Event::Apply(p)) => {
                    current = Some(p);
                    true
                }
                Ok(watcher::Event::Delete(_)) => {
                    current = None;
                    true
                }
                Err(e) => {
                    let refused = match &e {
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                        | watcher::Error::WatchFailed(kube::Error::Api(s)) => {
                            s.code == 401 || s.code == 403
                        }
                        watcher::Error::WatchError(s) => s.code == 401 || s.code == 403,
                        _ => false,
                    };
                    if refused {
                        return Err(BackendError::Api(format!(
                            "kubernetes: not allowed to watch pod {name} (check the provider's Role): {e}"
                        )));
                    }
                    tracing::debug!(pod = %name, "watch interrupted, the watcher resumes: {e}");
                    false
                }
            };
            if check && done(current.as_ref()) {
                return Ok(current);
            }
        }
        Err(BackendError::Api(format!(
            "kubernetes: the watch of pod {name} ended"
        )))
    }

    /// Remove the workload's objects; missing ones are fine.
    async fn remove_all(&self, name: &str) -> Result<(), BackendError> {
        let pod = self.delete_pod(name).await;
        let svc = match self.services().delete(name, &DeleteParams::default()).await {
            Err(e) if !is_not_found(&e) => Err(map_err(&format!("delete service {name}"), e)),
            _ => Ok(()),
        };
        let sec = match self
            .secrets()
            .delete(&secret_name(name), &DeleteParams::default())
            .await
        {
            Err(e) if !is_not_found(&e) => Err(map_err(&format!("delete secret of {name}"), e)),
            _ => Ok(()),
        };
        let claim = match self
            .claims()
            .delete(&claim_name(name), &DeleteParams::default())
            .await
        {
            Err(e) if !is_not_found(&e) => Err(map_err(&format!("delete the disk of {name}"), e)),
            _ => Ok(()),
        };
        pod.and(svc).and(sec).and(claim)
    }

    async fn make(&self, spec: &WorkloadSpec) -> Result<Endpoint, BackendError> {
        let pp = PostParams::default();
        let (secret, fingerprint) = Self::secret(spec)?;
        self.secrets()
            .create(&pp, &secret)
            .await
            .map_err(|e| map_err(&format!("create the login secret of {}", spec.name), e))?;
        if let Some(gb) = spec.tier.disk_gb {
            self.claims()
                .create(&pp, &self.claim(spec, gb))
                .await
                .map_err(|e| map_err(&format!("create the disk of {}", spec.name), e))?;
        }
        let pod = self.pod(spec);
        let svc = self
            .services()
            .create(&pp, &Self::service(spec, &pod)?)
            .await
            .map_err(|e| map_err(&format!("create service {}", spec.name), e))?;
        let port = Self::node_port(&svc).ok_or_else(|| {
            BackendError::Api(format!(
                "kubernetes: service {} came back without a nodePort",
                spec.name
            ))
        })?;
        self.pods()
            .create(&pp, &pod)
            .await
            .map_err(|e| map_err(&format!("create pod {}", spec.name), e))?;
        self.wait_ready(&spec.name, port).await?;
        if let Ok(mut m) = self.host_keys.lock() {
            m.insert(spec.name.clone(), vec![fingerprint]);
        }
        Ok(Endpoint {
            host: Some(self.node_address.clone()),
            port,
        })
    }

    fn state_of(pod: Option<&Pod>) -> WorkloadState {
        let Some(p) = pod else {
            return WorkloadState::Stopped;
        };
        if p.metadata.deletion_timestamp.is_some() {
            return WorkloadState::Other;
        }
        let st = p.status.as_ref();
        match st.and_then(|s| s.phase.as_deref()) {
            Some("Running") => WorkloadState::Running,
            // The hard cap passed (DeadlineExceeded) or the container ended: not serving.
            Some("Failed" | "Succeeded") => WorkloadState::Stopped,
            _ => WorkloadState::Other,
        }
    }

    fn info(&self, svc: &Service, pod: Option<&Pod>) -> Option<WorkloadInfo> {
        let name = svc.metadata.name.clone()?;
        Some(WorkloadInfo {
            name,
            state: Self::state_of(pod),
            endpoint: Self::node_port(svc).map(|port| Endpoint {
                host: Some(self.node_address.clone()),
                port,
            }),
        })
    }
}

#[async_trait]
impl Backend for KubernetesBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kubernetes
    }

    fn host_port_from_core(&self) -> bool {
        false
    }

    fn host_key_fingerprints(&self, name: &str) -> Vec<String> {
        // Taken once, by the spawn answer (which is stored for replays), so the map stays small.
        self.host_keys
            .lock()
            .ok()
            .and_then(|mut m| m.remove(name))
            .unwrap_or_default()
    }

    async fn create(&self, spec: &WorkloadSpec) -> Result<Endpoint, BackendError> {
        match self.make(spec).await {
            Ok(e) => {
                tracing::info!(workload = %spec.name, port = e.port, "kubernetes pod ready for SSH");
                Ok(e)
            }
            Err(e) => {
                tracing::warn!(workload = %spec.name, "kubernetes create failed, rolling back: {e}");
                // Names are the core's, one per workload: whatever has this one is this
                // workload's own leftover.
                if let Err(re) = self.remove_all(&spec.name).await {
                    tracing::error!(workload = %spec.name, "kubernetes rollback incomplete: {re}");
                }
                Err(e)
            }
        }
    }

    async fn extend(&self, name: &str, expires_at: u64) -> Result<(), BackendError> {
        let patch = serde_json::json!({"metadata": {"annotations": {
            EXPIRES_ANNOTATION: expires_at.to_string()
        }}});
        self.services()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| map_err(&format!("annotate service {name}"), e))
    }

    async fn stop(&self, name: &str) -> Result<(), BackendError> {
        match self.services().get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(BackendError::NotFound(name.to_string())),
            Err(e) => return Err(map_err(&format!("read service {name}"), e)),
        }
        self.delete_pod(name).await?;
        tracing::info!(workload = %name, "kubernetes pod stopped (service and login kept)");
        Ok(())
    }

    async fn resume(&self, name: &str) -> Result<Endpoint, BackendError> {
        let svc = match self.services().get_opt(name).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(BackendError::NotFound(name.to_string())),
            Err(e) => return Err(map_err(&format!("read service {name}"), e)),
        };
        let port = Self::node_port(&svc).ok_or_else(|| {
            BackendError::Api(format!("kubernetes: service {name} has no nodePort"))
        })?;
        let template = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(POD_ANNOTATION))
            .ok_or_else(|| {
                BackendError::Api(format!("kubernetes: service {name} has no pod template"))
            })?;
        let pod: Pod = serde_json::from_str(template).map_err(|e| {
            BackendError::Api(format!(
                "kubernetes: unreadable pod template of {name}: {e}"
            ))
        })?;
        match self.pods().get_opt(name).await {
            Ok(Some(p)) if Self::state_of(Some(&p)) == WorkloadState::Running => {}
            Ok(existing) => {
                if existing.is_some() {
                    // Ended (hard cap) or terminating: replace it.
                    self.delete_pod(name).await?;
                }
                self.pods()
                    .create(&PostParams::default(), &pod)
                    .await
                    .map_err(|e| map_err(&format!("create pod {name}"), e))?;
            }
            Err(e) => return Err(map_err(&format!("read pod {name}"), e)),
        }
        self.wait_ready(name, port).await?;
        tracing::info!(workload = %name, "kubernetes pod resumed");
        Ok(Endpoint {
            host: Some(self.node_address.clone()),
            port,
        })
    }

    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        self.remove_all(name).await
    }

    async fn inspect(&self, name: &str) -> Result<Option<WorkloadInfo>, BackendError> {
        let svc = self
            .services()
            .get_opt(name)
            .await
            .map_err(|e| map_err(&format!("read service {name}"), e))?;
        let pod = self
            .pods()
            .get_opt(name)
            .await
            .map_err(|e| map_err(&format!("read pod {name}"), e))?;
        Ok(match (svc, pod) {
            (Some(s), p) => self.info(&s, p.as_ref()),
            (None, Some(p)) => Some(WorkloadInfo {
                name: name.to_string(),
                state: Self::state_of(Some(&p)),
                endpoint: None,
            }),
            (None, None) => None,
        })
    }

    async fn list(&self, provider_id: &str) -> Result<Vec<WorkloadInfo>, BackendError> {
        let sel = format!(
            "{MANAGED_BY}=paygress,{PROVIDER_LABEL}={}",
            label_value(provider_id)
        );
        let lp = ListParams::default().labels(&sel);
        let svcs = self
            .services()
            .list(&lp)
            .await
            .map_err(|e| map_err("list services", e))?;
        let pods = self
            .pods()
            .list(&lp)
            .await
            .map_err(|e| map_err("list pods", e))?;
        let mut out: Vec<WorkloadInfo> = svcs
            .items
            .iter()
            .filter_map(|s| {
                let pod = pods
                    .items
                    .iter()
                    .find(|p| p.metadata.name == s.metadata.name);
                self.info(s, pod)
            })
            .collect();
        // A pod whose Service is gone (a crash mid-create) is listed so the core removes it.
        for p in &pods.items {
            if let Some(n) = &p.metadata.name {
                if !out.iter().any(|w| &w.name == n) {
                    out.push(WorkloadInfo {
                        name: n.clone(),
                        state: Self::state_of(Some(p)),
                        endpoint: None,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c: KubernetesConfig = toml::from_str("").unwrap();
        assert_eq!(c, KubernetesConfig::default());
        assert!(toml::from_str::<KubernetesConfig>("node_adress = \"x\"").is_err());
        let c: KubernetesConfig =
            toml::from_str("node_address = \"203.0.113.7\"\n[images]\nalpine = \"alpine:3\"")
                .unwrap();
        assert_eq!(c.images["alpine"], "alpine:3");
    }

    #[test]
    fn provider_ids_become_label_values() {
        assert_eq!(label_value("0a1b2c3d4e5f"), "0a1b2c3d4e5f");
        assert_eq!(label_value("a b/c"), "a-b-c");
        assert!(label_value(&"x".repeat(80)).len() <= 63);
    }
}
