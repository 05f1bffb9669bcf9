//! The node's side of the dispatcher session: a stream to the leader (found from the Raft
//! metrics on a manager, from the managers list or a redirect on a worker) carrying heartbeats
//! and task status up, the node's own object and its assignments down. A role change the
//! managers made (promote / demote) is acted on from here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use model::node::Role;
use tokio_stream::wrappers::ReceiverStream;

use crate::agent::Agent;
use crate::member::Member;
use crate::rpc::generated::dispatcher_client::DispatcherClient;
use crate::rpc::messages::{SessionDown, SessionUp};
use crate::services::LEADER_HINT;

/// The session, for as long as the membership lasts (reconnecting as needed); supervised (see
/// `crate::supervisor`), so it returns only when the member stops.
pub async fn run(agent: Arc<Agent>, member: Arc<Member>) -> anyhow::Result<()> {
    let mut hint: Option<String> = None;
    let mut turn = 0usize;
    let changing = Arc::new(AtomicBool::new(false));
    loop {
        if member.cancel.is_cancelled() {
            return Ok(());
        }
        let target = hint.take().or_else(|| member.leader_addr()).or_else(|| {
            let managers = member.node_state().managers;
            turn += 1;
            managers.get(turn % managers.len().max(1)).cloned()
        });
        if let Some(addr) = target {
            let result = session(&agent, &member, &addr, &changing).await;
            member.session_open.send_replace(false);
            if let Err(next) = result {
                hint = next;
            }
        }
        let pause = (*member.heartbeat.borrow() / 2)
            .clamp(Duration::from_millis(50), Duration::from_millis(500));
        tokio::select! {
            _ = member.cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One session; returns the leader to try next when the manager named one.
async fn session(
    agent: &Arc<Agent>,
    member: &Arc<Member>,
    addr: &str,
    changing: &Arc<AtomicBool>,
) -> Result<(), Option<String>> {
    let channel = member.channel(addr).map_err(|_| None)?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let state = member.node_state();
    let _ = tx
        .send(SessionUp::Hello {
            description: crate::sysinfo::describe(&agent.cfg),
            advertise_addr: state.advertise_addr.clone(),
            data_path_addr: state.data_path_addr.clone(),
            tls: Some(Box::new(crate::certs::tls_info(member))),
            problem: member.health.problem(),
        })
        .await;
    let mut health = member.health.subscribe();
    health.mark_unchanged();
    let mut client = DispatcherClient::new(channel);
    let resp = client.session(ReceiverStream::new(rx)).await.map_err(|s| {
        tracing::debug!(manager = %addr, error = %s.message(), "dispatcher session refused");
        s.metadata()
            .get(LEADER_HINT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    })?;
    tracing::debug!(manager = %addr, "dispatcher session open");
    let mut inbound = resp.into_inner();
    let mut tls = TlsCache::default();
    let mut ticker = tokio::time::interval(*member.heartbeat.borrow());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = member.cancel.cancelled() => return Ok(()),
            _ = ticker.tick() => {
                let problem = member.health.problem();
                if tx.send(SessionUp::Heartbeat { problem }).await.is_err() {
                    return Err(None);
                }
                crate::metrics::heartbeat_sent();
                // Unrecorded task status goes again with every heartbeat.
                if send_status(member, &tx).await.is_err() {
                    return Err(None);
                }
                // So does the node's TLS state until its object shows it.
                if send_tls(member, &tx, &mut tls).await.is_err() {
                    return Err(None);
                }
            }
            // The node's health changed: the leader hears it now, not at the next beat.
            Ok(()) = health.changed() => {
                let problem = member.health.problem();
                if tx.send(SessionUp::Heartbeat { problem }).await.is_err() {
                    return Err(None);
                }
            }
            _ = member.task_status_notify.notified() => {
                if send_status(member, &tx).await.is_err() {
                    return Err(None);
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(SessionDown::Welcome { heartbeat_ms, managers, cluster })) => {
                    if let Some(ca) = cluster.as_ref().and_then(|c| c.ca.as_ref()) {
                        crate::certs::apply_ca(agent, member, ca);
                    }
                    if cluster.is_some() {
                        member.cluster_info.send_if_modified(|c| {
                            let changed = *c != cluster;
                            *c = cluster;
                            changed
                        });
                    }
                    keep_period(member, &mut ticker, heartbeat_ms);
                    remember_managers(agent, member, managers);
                    member.session_open.send_replace(true);
                }
                Ok(Some(SessionDown::Heartbeat { node, managers, cluster })) => {
                    remember_managers(agent, member, managers);
                    if let Some(ca) = cluster.as_ref().and_then(|c| c.ca.as_ref()) {
                        crate::certs::apply_ca(agent, member, ca);
                    }
                    if let Some(c) = &cluster {
                        // `swarm update --dispatcher-heartbeat` reaches connected nodes here.
                        keep_period(member, &mut ticker, c.heartbeat_period_ms);
                        member.cluster_info.send_if_modified(|c| {
                            let changed = *c != cluster;
                            *c = cluster;
                            changed
                        });
                    }
                    // The node's object comes when it changed; a role change that failed is
                    // tried again on every beat, from the object last received.
                    if let Some(node) = node {
                        member.node_obj.send_replace(Some(*node));
                    }
                    let target = member.node_obj.borrow().as_ref().and_then(|node| {
                        match (member.role(), node.spec.role, node.role) {
                            (Role::Worker, Role::Manager, _) => Some(Role::Manager),
                            (Role::Manager, Role::Worker, Role::Worker) => Some(Role::Worker),
                            _ => None,
                        }
                    });
                    if let Some(target) = target
                        && !changing.swap(true, Ordering::SeqCst)
                    {
                        let agent = agent.clone();
                        let changing = changing.clone();
                        // Detached: the change stops this very session.
                        tokio::spawn(async move {
                            if let Err(e) = agent.change_role(target).await {
                                tracing::warn!(error = %e, "role change failed; retrying on a later heartbeat");
                            }
                            changing.store(false, Ordering::SeqCst);
                        });
                    }
                }
                Ok(Some(SessionDown::Assignments(a))) => {
                    crate::metrics::assignments_received(true);
                    accept_assignments(member, *a)
                }
                Ok(Some(SessionDown::AssignmentsDelta(d))) => {
                    crate::metrics::assignments_received(false);
                    let revision = d.revision;
                    if !accept_delta(member, *d) {
                        // Out of sequence (cannot happen on one ordered stream): start over.
                        tracing::warn!(revision, "assignments delta out of sequence; reconnecting for a full set");
                        return Err(None);
                    }
                }
                Ok(None) => return Err(None),
                Err(s) => {
                    tracing::debug!(manager = %addr, error = %s.message(), "dispatcher session ended");
                    return Err(None);
                }
            }
        }
    }
}

/// Hands a session's first, whole set of assignments to the executor and forgets the task
/// status it shows recorded.
fn accept_assignments(member: &Member, a: model::Assignments) {
    forget_recorded(member, &a.tasks, true);
    member.assignments.replace(a);
}

/// Applies a delta of the assignments; false if it does not follow what the node has.
fn accept_delta(member: &Member, d: model::assignment::AssignmentsDelta) -> bool {
    forget_recorded(member, &d.tasks, false);
    member.assignments.apply(d)
}

/// Drops the task status the leader has recorded (the tasks show it). With `all`, `tasks` is the
/// whole set: status of tasks not in it is dropped too.
fn forget_recorded(member: &Member, tasks: &[model::Task], all: bool) {
    let mut pending = member.task_status.lock().unwrap_or_else(|e| e.into_inner());
    pending.retain(|id, st| match tasks.iter().find(|t| &t.meta.id == id) {
        Some(t) => t.status.state < st.state,
        None => !all,
    });
}

/// Sends the task status the leader has not recorded yet, if any.
async fn send_status(member: &Member, tx: &tokio::sync::mpsc::Sender<SessionUp>) -> Result<(), ()> {
    let updates: Vec<(String, model::task::TaskStatus)> = member
        .task_status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if updates.is_empty() {
        return Ok(());
    }
    tx.send(SessionUp::TaskStatus { updates })
        .await
        .map_err(|_| ())
}

/// The node's TLS state, computed again only when its certificate or trust changed.
#[derive(Default)]
struct TlsCache {
    key: (String, String),
    info: Option<model::node::TlsInfo>,
}

/// Sends the node's TLS state unless its object (as the leader last sent it) shows it.
async fn send_tls(
    member: &Member,
    tx: &tokio::sync::mpsc::Sender<SessionUp>,
    cache: &mut TlsCache,
) -> Result<(), ()> {
    let key = (member.cert.keys().cert_pem, member.trust.pem());
    if cache.info.is_none() || cache.key != key {
        cache.info = Some(crate::certs::tls_info(member));
        cache.key = key;
    }
    let Some(info) = cache.info.clone() else {
        return Ok(());
    };
    let recorded = member
        .node_obj
        .borrow()
        .as_ref()
        .is_some_and(|n| n.tls_info.as_ref() == Some(&info));
    if recorded {
        return Ok(());
    }
    tx.send(SessionUp::Tls { info }).await.map_err(|_| ())
}

fn remember_managers(agent: &Agent, member: &Member, managers: Vec<String>) {
    if managers.is_empty() {
        return;
    }
    let mut state = member.state.lock().unwrap_or_else(|e| e.into_inner());
    if state.managers == managers {
        return;
    }
    state.managers = managers;
    if let Ok(json) = serde_json::to_vec_pretty(&*state)
        && let Err(e) =
            crate::config::write_atomic(&agent.cfg.state_path("node.json"), &json, 0o644)
    {
        tracing::warn!(error = %e, "cannot save the managers' addresses");
    }
}

/// Beats every `ms` (at least 10 ms) from now on, if that is a change.
fn keep_period(member: &Member, ticker: &mut tokio::time::Interval, ms: u64) {
    let period = Duration::from_millis(ms.max(10));
    if ticker.period() == period {
        return;
    }
    member.heartbeat.send_replace(period);
    *ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
}
