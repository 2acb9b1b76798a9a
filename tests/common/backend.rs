//! A backend double that keeps workloads in memory and can be told to fail at any step.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use paygress::backend::{
    Backend, BackendError, BackendKind, Endpoint, WorkloadInfo, WorkloadSpec, WorkloadState,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Create,
    Extend,
    Stop,
    Resume,
    Destroy,
    List,
}

#[derive(Debug, Clone)]
pub struct Held {
    pub spec: WorkloadSpec,
    pub state: WorkloadState,
    pub expires_at: u64,
    pub provider_id: String,
    pub endpoint: Endpoint,
}

#[derive(Default)]
pub struct FakeBackend {
    pub workloads: Mutex<BTreeMap<String, Held>>,
    failing: Mutex<HashSet<Step>>,
    create_delay: Mutex<Duration>,
    pub creates: Mutex<u32>,
    key_types: Option<&'static [&'static str]>,
    /// Set: the backend chooses endpoints on this host itself (like a NodePort or a guest
    /// address), and a resume moves the workload to a new port.
    own_endpoints: Option<String>,
}

impl FakeBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend that can install only these SSH key types (like the sandbox: no RSA).
    pub fn with_key_types(types: &'static [&'static str]) -> Self {
        FakeBackend {
            key_types: Some(types),
            ..Self::default()
        }
    }

    /// A backend that chooses its own endpoints on `host` (the core reserves no host port).
    pub fn with_own_endpoints(host: &str) -> Self {
        FakeBackend {
            own_endpoints: Some(host.to_string()),
            ..Self::default()
        }
    }

    pub fn fail(&self, step: Step) {
        self.failing.lock().unwrap().insert(step);
    }

    pub fn heal(&self, step: Step) {
        self.failing.lock().unwrap().remove(&step);
    }

    pub fn set_create_delay(&self, d: Duration) {
        *self.create_delay.lock().unwrap() = d;
    }

    pub fn count(&self) -> usize {
        self.workloads.lock().unwrap().len()
    }

    pub fn get(&self, name: &str) -> Option<Held> {
        self.workloads.lock().unwrap().get(name).cloned()
    }

    /// Put a workload on the "backend" that the provider does not know (an orphan).
    pub fn plant(&self, spec: WorkloadSpec) {
        let held = Held {
            endpoint: Endpoint::on_provider_host(spec.host_port.unwrap_or_default()),
            expires_at: spec.expires_at,
            provider_id: spec.provider_id.clone(),
            state: WorkloadState::Running,
            spec: spec.clone(),
        };
        self.workloads
            .lock()
            .unwrap()
            .insert(spec.name.clone(), held);
    }

    fn check(&self, step: Step) -> Result<(), BackendError> {
        if self.failing.lock().unwrap().contains(&step) {
            Err(BackendError::Api(format!("injected failure at {step:?}")))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Custom
    }

    fn login_key_types(&self) -> &'static [&'static str] {
        self.key_types.unwrap_or(paygress::validate::KEY_TYPES)
    }

    fn host_port_from_core(&self) -> bool {
        self.own_endpoints.is_none()
    }

    async fn create(&self, spec: &WorkloadSpec) -> Result<Endpoint, BackendError> {
        let n = {
            let mut c = self.creates.lock().unwrap();
            *c += 1;
            *c
        };
        let delay = *self.create_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.check(Step::Create)?;
        let endpoint = match (&self.own_endpoints, spec.host_port) {
            (Some(host), None) => Endpoint {
                host: Some(host.clone()),
                port: 40_000 + u16::try_from(n).unwrap_or(0),
            },
            (None, Some(port)) => Endpoint::on_provider_host(port),
            (own, port) => {
                return Err(BackendError::Api(format!(
                    "the core reserved {port:?} but the backend chooses its own: {}",
                    own.is_some()
                )))
            }
        };
        let mut w = self.workloads.lock().unwrap();
        if w.values().any(|h| h.endpoint == endpoint) {
            return Err(BackendError::Capacity(format!(
                "port {} taken",
                endpoint.port
            )));
        }
        w.insert(
            spec.name.clone(),
            Held {
                spec: spec.clone(),
                state: WorkloadState::Running,
                expires_at: spec.expires_at,
                provider_id: spec.provider_id.clone(),
                endpoint: endpoint.clone(),
            },
        );
        Ok(endpoint)
    }

    async fn extend(&self, name: &str, expires_at: u64) -> Result<(), BackendError> {
        self.check(Step::Extend)?;
        let mut w = self.workloads.lock().unwrap();
        let h = w
            .get_mut(name)
            .ok_or_else(|| BackendError::NotFound(name.into()))?;
        h.expires_at = expires_at;
        Ok(())
    }

    async fn stop(&self, name: &str) -> Result<(), BackendError> {
        self.check(Step::Stop)?;
        let mut w = self.workloads.lock().unwrap();
        let h = w
            .get_mut(name)
            .ok_or_else(|| BackendError::NotFound(name.into()))?;
        h.state = WorkloadState::Stopped;
        Ok(())
    }

    async fn resume(&self, name: &str) -> Result<Endpoint, BackendError> {
        self.check(Step::Resume)?;
        let mut w = self.workloads.lock().unwrap();
        let h = w
            .get_mut(name)
            .ok_or_else(|| BackendError::NotFound(name.into()))?;
        h.state = WorkloadState::Running;
        if self.own_endpoints.is_some() {
            h.endpoint.port = h.endpoint.port.saturating_add(1000);
        }
        Ok(h.endpoint.clone())
    }

    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        self.check(Step::Destroy)?;
        self.workloads.lock().unwrap().remove(name);
        Ok(())
    }

    async fn inspect(&self, name: &str) -> Result<Option<WorkloadInfo>, BackendError> {
        Ok(self
            .workloads
            .lock()
            .unwrap()
            .get(name)
            .map(|h| WorkloadInfo {
                name: name.to_string(),
                state: h.state,
                endpoint: Some(h.endpoint.clone()),
            }))
    }

    async fn list(&self, provider_id: &str) -> Result<Vec<WorkloadInfo>, BackendError> {
        self.check(Step::List)?;
        Ok(self
            .workloads
            .lock()
            .unwrap()
            .values()
            .filter(|h| h.provider_id == provider_id)
            .map(|h| WorkloadInfo {
                name: h.spec.name.clone(),
                state: h.state,
                endpoint: Some(h.endpoint.clone()),
            })
            .collect())
    }
}
