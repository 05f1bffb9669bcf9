//! Store tests: three replicas in one process over an in-memory network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use model::{Kind, Object};
use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::*;

#[derive(Clone, Default)]
struct Router(Arc<Mutex<HashMap<NodeId, Raft>>>);

struct Client {
    target: NodeId,
    router: Router,
}

#[derive(Debug, thiserror::Error)]
#[error("node {0} is down")]
struct Down(NodeId);

impl Client {
    fn raft(&self) -> Result<Raft, Down> {
        self.router
            .0
            .lock()
            .unwrap()
            .get(&self.target)
            .cloned()
            .ok_or(Down(self.target))
    }
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Client;
    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Client {
        Client {
            target,
            router: self.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self
            .raft()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let raft = self
            .raft()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _o: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self
            .raft()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn config() -> StoreConfig {
    StoreConfig {
        heartbeat_ms: 50,
        election_min_ms: 150,
        election_max_ms: 300,
        snapshot_every: 20,
        keep_behind_snapshot: 5,
    }
}

async fn open(dir: &Path, id: NodeId, router: &Router) -> Store {
    let s = Store::open(&dir.join(format!("n{id}")), id, &config(), router.clone())
        .await
        .unwrap();
    router.0.lock().unwrap().insert(id, s.raft().clone());
    s
}

async fn wait(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

fn cluster_with_port(port: u16) -> Object {
    let mut c = change::tests_support::sample();
    if let Object::Cluster(ref mut cl) = c {
        cl.data_path_port = port;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_snapshots_compacts_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let s1 = open(dir.path(), 1, &router).await;
    s1.bootstrap("n1").await.unwrap();
    wait("s1 leader", || s1.is_leader()).await;
    let s2 = open(dir.path(), 2, &router).await;
    let s3 = open(dir.path(), 3, &router).await;
    s1.add_voter(2, "n2").await.unwrap();
    s1.add_voter(3, "n3").await.unwrap();
    let mut feed = s2.subscribe();

    // 50 writes: more than two snapshots' worth, so the log is compacted.
    let mut ids = Vec::new();
    for i in 0..50u16 {
        let obj = cluster_with_port(1000 + i);
        ids.push(obj.id().to_string());
        let out = s1.propose(Batch::one(Change::Create(obj))).await.unwrap();
        assert!(out[0].as_ref().unwrap().meta().version > 0);
    }
    // A follower refuses to propose and names the leader.
    match s2
        .propose(Batch::one(Change::Create(cluster_with_port(1))))
        .await
    {
        Err(ProposeError::NotLeader {
            leader: Some((1, addr)),
        }) => assert_eq!(addr, "n1"),
        other => panic!("{other:?}"),
    }
    // A conflicting batch changes nothing.
    let dup = s1.get(Kind::Cluster, &ids[0]).unwrap().unwrap();
    let err = s1
        .propose(Batch::new(vec![
            Change::Delete {
                kind: Kind::Cluster,
                id: ids[1].clone(),
                version: None,
            },
            Change::Create(dup),
        ]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProposeError::Conflict(Conflict::Exists { .. })),
        "{err}"
    );
    s1.read_barrier().await.unwrap();
    assert_eq!(s1.list(Kind::Cluster).unwrap().len(), 50);
    let target = s1.applied_index();
    s2.wait_applied(target).await;
    s3.wait_applied(target).await;
    assert_eq!(
        s2.list(Kind::Cluster).unwrap(),
        s1.list(Kind::Cluster).unwrap()
    );
    assert!(matches!(
        feed.try_recv().unwrap().as_ref(),
        Event::Changes { .. }
    ));

    s1.snapshot_now().await.unwrap();
    wait("log compaction", || {
        let (first, _) = s1.log_bounds().unwrap();
        first.unwrap_or(0) > 10
    })
    .await;

    // A new member catches up from a snapshot.
    let s4 = open(dir.path(), 4, &router).await;
    s1.add_voter(4, "n4").await.unwrap();
    s4.wait_applied(target).await;
    assert_eq!(s4.list(Kind::Cluster).unwrap().len(), 50);

    // Restart of a follower keeps its state.
    router.0.lock().unwrap().remove(&3);
    s3.shutdown().await;
    drop(s3);
    let s3 = open(dir.path(), 3, &router).await;
    wait("s3 reloaded", || {
        s3.list(Kind::Cluster).unwrap().len() == 50
    })
    .await;

    // Remove a voter.
    s1.remove_voter(4).await.unwrap();
    let (_, voters) = s1.members();
    assert_eq!(voters.into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);

    // Everyone but node 2 dies; node 2 is forced into a new cluster of its own.
    for s in [&s1, &s3, &s4] {
        s.shutdown().await;
    }
    s2.shutdown().await;
    router.0.lock().unwrap().clear();
    drop((s1, s2, s3, s4));
    force_new_cluster(&dir.path().join("n2"), 2, "n2").unwrap();
    let s2 = open(dir.path(), 2, &router).await;
    wait("s2 leader alone", || s2.is_leader()).await;
    s2.propose(Batch::one(Change::Create(cluster_with_port(7))))
        .await
        .unwrap();
    assert_eq!(s2.list(Kind::Cluster).unwrap().len(), 51);
    let (_, voters) = s2.members();
    assert_eq!(voters.into_iter().collect::<Vec<_>>(), vec![2]);

    // A batch decided by the leader of another term is refused where it is applied (the
    // decider was deposed before writing it); one decided in this term applies.
    let term = s2.term();
    for other in [term - 1, term + 1] {
        let err = s2
            .propose(Batch::one(Change::Create(cluster_with_port(8))).decided_in(other))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProposeError::Conflict(Conflict::Deposed { .. })),
            "{err}"
        );
    }
    s2.propose(Batch::one(Change::Create(cluster_with_port(9))).decided_in(term))
        .await
        .unwrap();
    assert_eq!(s2.list(Kind::Cluster).unwrap().len(), 52);
    s2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_state_machine_write_fails_closed_and_a_restart_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let s1 = open(dir.path(), 1, &router).await;
    s1.bootstrap("n1").await.unwrap();
    wait("s1 leader", || s1.is_leader()).await;
    let s2 = open(dir.path(), 2, &router).await;
    let s3 = open(dir.path(), 3, &router).await;
    s1.add_voter(2, "n2").await.unwrap();
    s1.add_voter(3, "n3").await.unwrap();
    for i in 0..5u16 {
        s1.propose(Batch::one(Change::Create(cluster_with_port(2000 + i))))
            .await
            .unwrap();
    }
    assert_eq!(s1.unhealthy(), None);

    // The leader's next file write fails: the entry is committed (a quorum has it) and applied
    // in memory, but its rows are not in the leader's file.
    s1.inject_write_failure();
    // Which write fails is a race: 2005's (committed by the quorum before the leader applies
    // it), or a write still pending for an earlier entry, after which the leader stops before
    // 2005 is committed. Whether it answers before its Raft stops is a race too; either answer
    // is right, and an Ok means 2005 was committed.
    let answered = match s1
        .propose(Batch::one(Change::Create(cluster_with_port(2005))))
        .await
    {
        Ok(_) => true,
        Err(ProposeError::Raft(_)) => false,
        Err(other) => panic!("{other:?}"),
    };
    wait("s1 unhealthy", || s1.unhealthy().is_some()).await;
    let why = s1.unhealthy().unwrap();
    assert!(why.contains("injected write failure"), "{why}");
    // It refuses to propose, with the reason, and leaves Raft: another replica leads.
    match s1
        .propose(Batch::one(Change::Create(cluster_with_port(1))))
        .await
    {
        Err(ProposeError::Raft(msg)) => {
            assert!(
                msg.contains("unhealthy") && msg.contains("injected"),
                "{msg}"
            )
        }
        other => panic!("{other:?}"),
    }
    wait("a new leader", || s2.is_leader() || s3.is_leader()).await;
    let leader = if s2.is_leader() { &s2 } else { &s3 };
    for i in 6..10u16 {
        leader
            .propose(Batch::one(Change::Create(cluster_with_port(2000 + i))))
            .await
            .unwrap();
    }
    assert!(!s1.is_leader());
    assert_eq!(
        s1.unhealthy().as_deref(),
        Some(why.as_str()),
        "until restarted"
    );

    // Restarted, it reloads its file (behind the failed write) and applies the rest from the
    // log: every committed entry, the failed one included.
    router.0.lock().unwrap().remove(&1);
    s1.shutdown().await;
    drop(s1);
    let s1 = open(dir.path(), 1, &router).await;
    assert_eq!(s1.unhealthy(), None);
    let want = leader.list(Kind::Cluster).unwrap();
    let ports: std::collections::BTreeSet<u16> = want
        .iter()
        .filter_map(|o| match o {
            Object::Cluster(c) => Some(c.data_path_port),
            _ => None,
        })
        .collect();
    let committed_before: Vec<u16> = (2000..2005).chain(2006..2010).collect();
    assert!(
        committed_before.iter().all(|p| ports.contains(p)),
        "{ports:?}"
    );
    assert!(!answered || ports.contains(&2005), "{ports:?}");
    assert_eq!(want.len(), ports.len());
    wait("s1 caught up", || s1.list(Kind::Cluster).unwrap() == want).await;
    for s in [&s1, &s2, &s3] {
        s.shutdown().await;
    }
}

fn pending() -> (
    Pending,
    tokio::sync::oneshot::Receiver<Result<Outcome, ProposeError>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    ((Batch::new(Vec::new()), tx), rx)
}

/// The queue into Raft is bounded: a proposer waits while it is full, gets in when room is
/// made, and is refused with a clear "too many pending writes" when none is made in time.
#[tokio::test]
async fn proposals_apply_back_pressure() {
    let wait = Duration::from_millis(200);
    let (q, mut rx) = Proposals::new(2, wait);
    q.submit(pending().0).await.unwrap();
    q.submit(pending().0).await.unwrap();
    // Full: refused after the wait, saying how many wait.
    let started = std::time::Instant::now();
    let err = q.submit(pending().0).await.unwrap_err();
    assert!(started.elapsed() >= wait, "it waited for room first");
    assert!(matches!(err, ProposeError::Busy { pending: 2 }), "{err:?}");
    assert!(err.to_string().contains("too many pending writes"), "{err}");
    // Full, but the proposer makes room meanwhile: the waiting proposal gets in.
    let (q2, _) = Proposals::new(2, Duration::from_secs(60));
    let q2 = Proposals {
        tx: q.tx.clone(),
        ..q2
    };
    let waiting = tokio::spawn(async move { q2.submit(pending().0).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "it waits while the queue is full");
    rx.recv().await.unwrap();
    waiting.await.unwrap().unwrap();
    // Closed: the store is shut down.
    drop(rx);
    assert!(matches!(
        q.submit(pending().0).await,
        Err(ProposeError::Raft(m)) if m.contains("shut down")
    ));
}
