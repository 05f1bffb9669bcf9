//! The executor's handle on the node's overlay data plane (the `vxlan` crate): a [`Dataplane`]
//! made on first use, called on blocking threads, its kernel writes counted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use netns::NetNs;
use vxlan::Dataplane;

use crate::node::Error;

#[derive(Clone)]
pub(crate) struct Plane {
    inner: Arc<Mutex<Option<(u16, Dataplane)>>>,
    node_netns: Option<PathBuf>,
    vtep: std::net::Ipv4Addr,
    prefix: String,
    writes: Arc<AtomicU64>,
    fast_path: bool,
    bpf_dir: Option<PathBuf>,
}

/// The node's network namespace: the configured one, or the agent's own.
pub(crate) fn node_netns(path: Option<&PathBuf>) -> netns::Result<NetNs> {
    match path {
        Some(p) => NetNs::open_path("node", p),
        None => NetNs::current(),
    }
}

impl Plane {
    pub fn new(
        node_netns: Option<PathBuf>,
        vtep: std::net::Ipv4Addr,
        prefix: String,
        writes: Arc<AtomicU64>,
    ) -> Plane {
        Plane {
            inner: Arc::new(Mutex::new(None)),
            node_netns,
            vtep,
            prefix,
            writes,
            fast_path: false,
            bpf_dir: None,
        }
    }

    /// Uses the eBPF overlay fast path (where the kernel can), pinned under `bpf_dir`.
    pub fn with_fast_path(mut self, on: bool, bpf_dir: Option<PathBuf>) -> Plane {
        self.fast_path = on;
        self.bpf_dir = bpf_dir;
        self
    }

    /// Runs `f` on the data plane for data-path port `port` (made, or made again when the port
    /// changed) on a blocking thread.
    pub async fn call<T: Send + 'static>(
        &self,
        port: u16,
        f: impl FnOnce(&mut Dataplane) -> vxlan::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = me.inner.lock().unwrap_or_else(|e| e.into_inner());
            if guard.as_ref().is_none_or(|(p, _)| *p != port) {
                let node = node_netns(me.node_netns.as_ref())
                    .map_err(|e| Error::Dataplane(e.to_string()))?;
                let mut dp = Dataplane::new(vxlan::Config {
                    netns: node,
                    vtep: me.vtep,
                    port,
                    prefix: me.prefix.clone(),
                    fast_path: me.fast_path,
                    bpf_dir: me.bpf_dir.clone(),
                })
                .map_err(|e| Error::Dataplane(e.to_string()))?;
                dp.on_write(adding_to(me.writes.clone()));
                *guard = Some((port, dp));
            }
            let (_, dp) = guard.as_mut().expect("made above");
            f(dp).map_err(|e| match e {
                vxlan::Error::BridgeFull { .. } => Error::NetworkFull(e.to_string()),
                e => Error::Dataplane(e.to_string()),
            })
        })
        .await
        .map_err(|e| Error::Dataplane(format!("a data plane call panicked: {e}")))?
    }
}

/// A data plane's write hook (it is given the plane's running total) that adds each new write
/// to `writes`. The counter is shared with the load balancer, which adds its own: storing a
/// total would drop what the balancer added in between (the node's counter went backwards).
fn adding_to(writes: Arc<AtomicU64>) -> impl FnMut(u64) + Send + 'static {
    let mut reported = 0;
    move |n| {
        writes.fetch_add(n.saturating_sub(reported), Ordering::Relaxed);
        reported = reported.max(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_plane_and_balancer_writes_add_up() {
        let writes = Arc::new(AtomicU64::new(7)); // an earlier data plane's
        let mut hook = adding_to(writes.clone());
        hook(1);
        hook(2);
        writes.fetch_add(50, Ordering::Relaxed); // the balancer's
        hook(3);
        // Reports from two threads may arrive out of order: each write counts once.
        hook(5);
        hook(4);
        assert_eq!(writes.load(Ordering::Relaxed), 7 + 50 + 5);
    }
}
