//! The simulated API server's object store: every object as JSON under (resource, namespace,
//! name), one global `resourceVersion` counter like etcd's revision, and an event log that
//! watches replay from and that can be compacted (after which older versions answer 410).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::broadcast;

/// Where an object lives. `res` is the plural, with `.group` for non-core groups
/// (`pods`, `deployments.apps`); `ns` is empty for cluster-scoped objects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub res: String,
    pub ns: String,
    pub name: String,
}

impl Key {
    pub fn new(res: &str, ns: &str, name: &str) -> Key {
        Key {
            res: res.into(),
            ns: ns.into(),
            name: name.into(),
        }
    }
}

/// One change, as watches send it.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub typ: &'static str,
    pub key: Key,
    pub obj: Value,
}

pub struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: VecDeque<Arc<Event>>,
    /// Versions at or below this are gone from the log (410 for watches from there).
    compacted: u64,
    tx: broadcast::Sender<Arc<Event>>,
}

/// Events kept for watches to resume from.
const LOG_LEN: usize = 10_000;

pub struct Store {
    inner: Mutex<Inner>,
}

impl Store {
    pub fn new() -> Store {
        let (tx, _) = broadcast::channel(4096);
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                log: VecDeque::new(),
                compacted: 0,
                tx,
            }),
        }
    }

    /// The store, locked (never held across an await).
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Every object of resource `res` (in namespace `ns`, when given).
    pub fn all(&self, res: &str, ns: Option<&str>) -> Vec<(Key, Value)> {
        self.objects
            .iter()
            .filter(|(k, _)| k.res == res && ns.is_none_or(|n| k.ns == n))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Subscribe to changes from now on (call with the lock held, before taking a snapshot, so
    /// nothing falls between the two).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Logged events after `rv` (for a watch resuming there).
    pub fn since(&self, rv: u64) -> Vec<Arc<Event>> {
        self.log.iter().filter(|e| e.rv > rv).cloned().collect()
    }

    fn record(&mut self, typ: &'static str, key: Key, obj: Value) {
        let ev = Arc::new(Event {
            rv: self.rv,
            typ,
            key,
            obj,
        });
        self.log.push_back(Arc::clone(&ev));
        while self.log.len() > LOG_LEN {
            if let Some(old) = self.log.pop_front() {
                self.compacted = old.rv;
            }
        }
        let _ = self.tx.send(ev);
    }

    /// Store `obj` (new or changed) with a fresh resourceVersion; returns it as stored.
    pub fn put(&mut self, key: Key, mut obj: Value) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let typ = if self.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.objects.insert(key.clone(), obj.clone());
        self.record(typ, key, obj.clone());
        obj
    }

    /// Remove an object for good; returns its last state (with the deletion's version).
    pub fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut obj = self.objects.remove(key)?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        self.record("DELETED", key.clone(), obj.clone());
        Some(obj)
    }

    /// Forget the event log (as etcd compaction does): watches from any version up to now
    /// get 410 Expired.
    pub fn compact(&mut self) {
        self.log.clear();
        self.compacted = self.rv;
    }
}
