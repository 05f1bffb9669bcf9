//! Managers ping each other every heartbeat period, so each knows which managers it reaches:
//! quorum checks (writes fail at once without quorum), and Reachable / Unreachable in `node ls`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::member::Member;
use crate::rpc::generated::control_client::ControlClient;
use crate::rpc::messages::PingRequest;

/// Pings every other manager once, concurrently, each within `timeout`.
pub async fn probe(member: &Member, timeout: Duration) {
    let Some(m) = &member.manager else {
        return;
    };
    let me = m.store.id();
    let (nodes, voters) = m.store.members();
    let pings = nodes
        .into_iter()
        .filter(|(id, _)| *id != me && voters.contains(id))
        .map(|(id, addr)| async move {
            let Ok(ch) = member.channel(&addr) else {
                return;
            };
            let mut req = tonic::Request::new(PingRequest {});
            req.set_timeout(timeout);
            let ok = matches!(
                tokio::time::timeout(timeout, ControlClient::new(ch).ping(req)).await,
                Ok(Ok(_))
            );
            if ok {
                m.peers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, Instant::now());
            }
        });
    futures::future::join_all(pings).await;
}

pub async fn run(member: Arc<Member>, period: Duration) {
    let timeout = period.max(Duration::from_millis(300));
    loop {
        tokio::select! {
            _ = member.cancel.cancelled() => return,
            _ = probe(&member, timeout) => {}
        }
        tokio::select! {
            _ = member.cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}
