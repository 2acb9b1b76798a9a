//! Helpers for the Kubernetes backend's tests against the simulated API server
//! ([`super::kubesim`]).

use paygress::backend::kubernetes::KubernetesConfig;
use paygress::Provider;

use super::kubesim::KubeSim;

/// The workload namespace of the tests.
pub const NS: &str = "user-workloads";

/// The backend's config for the simulator: a kubeconfig with `token`, workloads in [`NS`],
/// buyers on 127.0.0.1, the offered image mapped to a registry image.
pub fn k8s_config(sim: &KubeSim, token: &str) -> KubernetesConfig {
    KubernetesConfig {
        kubeconfig: Some(sim.kubeconfig(token, "default")),
        namespace: Some(NS.into()),
        node_address: Some("127.0.0.1".into()),
        images: [(
            "paygress-debian-12".to_string(),
            "ghcr.io/example/paygress-ssh:1".to_string(),
        )]
        .into_iter()
        .collect(),
        ready_timeout_seconds: Some(60),
        ..Default::default()
    }
}

/// The workload name and deadline the core recorded for a pod.
pub fn row(p: &Provider, pod: &str) -> (String, u64) {
    let w = p.store().workload(pod).unwrap().expect("workload row");
    (w.name, w.expires_at)
}

/// No Pod, Service, Secret or PVC of Paygress's is left in [`NS`].
pub fn nothing_left(sim: &KubeSim) {
    let mine = |res: &str| {
        sim.objects(res, NS)
            .into_iter()
            .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "paygress")
            .count()
    };
    assert_eq!(
        (
            mine("pods"),
            mine("services"),
            mine("secrets"),
            mine("persistentvolumeclaims")
        ),
        (0, 0, 0, 0)
    );
}
