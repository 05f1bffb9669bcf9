//! The node's own IPv4 addresses as they come and go. The routing mesh's eBPF shortcut is keyed
//! by them (`vxlan::meshpath`: a published port on each address of the node), so an address
//! added after the mesh was applied (a second address, an interface brought up later) would
//! take the node's nftables path until the mesh next changed. A thread of its own, subscribed to
//! the kernel's address notifications in the node's namespace, wakes the executor instead,
//! which applies the mesh again (`Executor::on_node_addresses`, writing only what the new
//! addresses need).

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use crate::node::Ev;

/// How often the watching thread looks whether the executor is still there.
const CHECK_GONE: Duration = Duration::from_secs(1);

/// Starts the thread that sends [`Ev::NodeAddresses`] on `tx` when an IPv4 address of the node
/// namespace (`None`: the agent's own) is added or removed. It ends when the executor is gone.
/// Without a subscription the shortcut follows mesh changes only (logged).
pub(crate) fn watch(node_netns: Option<PathBuf>, tx: mpsc::UnboundedSender<Ev>) {
    let run = move || {
        let events = crate::plane::node_netns(node_netns.as_ref())
            .map_err(|e| e.to_string())
            .and_then(|ns| {
                nlsock::Events::open(&ns, nlsock::NETLINK_ROUTE, nlsock::RTMGRP_IPV4_IFADDR)
                    .map_err(|e| e.to_string())
            });
        let mut events = match events {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "node addresses are not followed: the mesh shortcut learns new ones at its next change");
                return;
            }
        };
        loop {
            match events.wait(CHECK_GONE) {
                Ok(true) => {
                    if tx.send(Ev::NodeAddresses).is_err() {
                        return;
                    }
                }
                Ok(false) if tx.is_closed() => return,
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "node addresses are no longer followed");
                    return;
                }
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("node-addrs".into())
        .spawn(run)
    {
        warn!(error = %e, "cannot start the thread that follows the node's addresses");
    }
}
