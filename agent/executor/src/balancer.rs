//! What this node's load balancer has been given: the networks it balances on (their
//! load-balancer namespace and the node's address there) and every VIP with its running tasks.
//! Fed by [`crate::discovery::Discovery`] from the same records DNS answers from, so names and
//! backends never disagree; sends the load balancer only differences, and a full pass's `sync`
//! makes the kernel hold exactly this (what an earlier run left and nobody wants goes).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ipvs::{Change, Counters, Desired, Kind, LoadBalancer, NetworkLb, ServiceKey, ServiceLb};
use tracing::warn;

type Shared = Arc<Mutex<Box<dyn LoadBalancer>>>;

/// Reads the node's load-balancer counters (for `/metrics`): shares the balancer with the
/// executor, which holds the lock only while it writes to the kernel.
#[derive(Clone)]
pub struct LbCounters {
    kind: Kind,
    lb: Shared,
}

impl LbCounters {
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// What the kernel holds and counted now (reads only).
    pub fn read(&self) -> ipvs::Result<Counters> {
        self.lb.lock().unwrap_or_else(|e| e.into_inner()).counters()
    }
}

impl std::fmt::Debug for LbCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbCounters")
            .field("kind", &self.kind)
            .finish()
    }
}

pub(crate) struct Balancer {
    /// Shared with [`LbCounters`]; the executor writes from one task.
    lb: Option<Shared>,
    nets: BTreeMap<String, NetworkLb>,
    svcs: BTreeMap<ServiceKey, ServiceLb>,
    /// Kernel writes of the load balancer, added to the executor's count.
    writes: Arc<AtomicU64>,
    /// A call failed: the kernel may not hold what was given; the next full pass syncs.
    pub(crate) dirty: bool,
}

impl Balancer {
    pub fn new(lb: Option<Box<dyn LoadBalancer>>, writes: Arc<AtomicU64>) -> Balancer {
        Balancer {
            lb: lb.map(|lb| Arc::new(Mutex::new(lb))),
            nets: BTreeMap::new(),
            svcs: BTreeMap::new(),
            writes,
            dirty: false,
        }
    }

    /// A handle that reads the balancer's counters (None without a balancer).
    pub fn counters(&self) -> Option<LbCounters> {
        let lb = self.lb.as_ref()?;
        let kind = lb.lock().unwrap_or_else(|e| e.into_inner()).kind();
        Some(LbCounters {
            kind,
            lb: lb.clone(),
        })
    }

    /// A network to balance on (Some), or not any more (None: with every VIP on it).
    pub fn network(&mut self, id: &str, want: Option<NetworkLb>) {
        match want {
            Some(n) => {
                if self.nets.get(id) != Some(&n) {
                    self.nets.insert(id.to_string(), n.clone());
                    self.apply(vec![Change::PutNetwork(n)]);
                }
            }
            None => {
                if self.nets.remove(id).is_some() {
                    self.svcs.retain(|k, _| k.network != id);
                    self.apply(vec![Change::RemoveNetwork(id.to_string())]);
                }
            }
        }
    }

    /// One service's VIP on a network and its backends (None: no VIP there any more).
    pub fn service(&mut self, key: ServiceKey, want: Option<ServiceLb>) {
        if !self.nets.contains_key(&key.network) {
            self.svcs.remove(&key);
            return;
        }
        if self.svcs.get(&key) == want.as_ref() {
            return;
        }
        let change = match want {
            Some(s) => {
                self.svcs.insert(key, s.clone());
                Change::PutService(s)
            }
            None => {
                self.svcs.remove(&key);
                Change::RemoveService(key)
            }
        };
        self.apply(vec![change]);
    }

    /// Makes the kernel hold exactly what was given (after a full pass, when every network's
    /// table is known: nothing that is still right is touched).
    pub fn sync(&mut self) {
        let Some(lb) = self.lb.as_ref() else {
            return;
        };
        let desired = Desired {
            networks: self.nets.clone(),
            services: self.svcs.clone(),
        };
        let done = lb.lock().unwrap_or_else(|e| e.into_inner()).sync(&desired);
        match done {
            Ok(r) => {
                self.dirty = false;
                self.count(r);
            }
            Err(e) => {
                warn!(error = %e, "load balancer sync failed");
                self.dirty = true;
            }
        }
    }

    fn apply(&mut self, changes: Vec<Change>) {
        let Some(lb) = self.lb.as_ref() else {
            return;
        };
        let done = lb.lock().unwrap_or_else(|e| e.into_inner()).apply(&changes);
        match done {
            Ok(r) => self.count(r),
            Err(e) => {
                warn!(error = %e, "load balancer update failed; the next full pass retries");
                self.dirty = true;
            }
        }
    }

    fn count(&mut self, r: ipvs::Report) {
        self.writes.fetch_add(r.writes, Ordering::Relaxed);
        for why in r.refused {
            warn!(%why, "load balancer refused input");
        }
    }
}
