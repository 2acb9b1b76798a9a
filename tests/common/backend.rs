//! A backend double that keeps workloads in memory and can be told to fail at any step.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use paygress::backend::{
    Backend, BackendError, BackendKind, WorkloadInfo, WorkloadSpec, WorkloadState,
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
}

#[derive(Default)]
pub struct FakeBackend {
    pub workloads: Mutex<BTreeMap<String, Held>>,
    failing: Mutex<HashSet<Step>>,
    create_delay: Mutex<Duration>,
    pub creates: Mutex<u32>,
    key_types: Option<&'static [&'static str]>,
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

    async fn create(&self, spec: &WorkloadSpec) -> Result<(), BackendError> {
        *self.creates.lock().unwrap() += 1;
        let delay = *self.create_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.check(Step::Create)?;
        let mut w = self.workloads.lock().unwrap();
        if w.values().any(|h| h.spec.host_port == spec.host_port) {
            return Err(BackendError::Capacity(format!(
                "port {} taken",
                spec.host_port
            )));
        }
        w.insert(
            spec.name.clone(),
            Held {
                spec: spec.clone(),
                state: WorkloadState::Running,
                expires_at: spec.expires_at,
                provider_id: spec.provider_id.clone(),
            },
        );
        Ok(())
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

    async fn resume(&self, name: &str) -> Result<(), BackendError> {
        self.check(Step::Resume)?;
        let mut w = self.workloads.lock().unwrap();
        let h = w
            .get_mut(name)
            .ok_or_else(|| BackendError::NotFound(name.into()))?;
        h.state = WorkloadState::Running;
        Ok(())
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
                host_port: Some(h.spec.host_port),
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
                host_port: Some(h.spec.host_port),
            })
            .collect())
    }
}
