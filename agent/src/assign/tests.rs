//! The assignment index's unit tests.
use super::*;
use model::node::{Availability, NodeSpec, NodeStatus, Role};
use model::task::{TaskState, TaskStatus};
use model::{Meta, Object};
use store::Applied;

fn node(id: &str) -> Object {
    Object::Node(Node {
        meta: Meta::with_id(id.to_string()),
        spec: NodeSpec {
            role: Role::Worker,
            availability: Availability::Active,
            labels: Default::default(),
        },
        role: Role::Worker,
        description: Default::default(),
        status: NodeStatus {
            state: NodeState::Ready,
            ..Default::default()
        },
        manager_status: None,
        advertise_addr: String::new(),
        data_path_addr: String::new(),
        attachments: Vec::new(),
        cert_expires_at: None,
        tls_info: None,
    })
}

fn task(id: &str, node: &str) -> Object {
    Object::Task(Task {
        meta: Meta::with_id(id.to_string()),
        service_id: "svc".into(),
        slot: 1,
        node_id: Some(node.into()),
        desired_state: TaskState::Running,
        status: TaskStatus {
            state: TaskState::Running,
            timestamp: chrono::Utc::now(),
            message: String::new(),
            err: None,
            exit_code: None,
        },
        spec: Default::default(),
        networks: Vec::new(),
    })
}

fn service_on(id: &str, nets: &[&str]) -> Object {
    Object::Service(Service {
        meta: Meta::with_id(id.to_string()),
        spec: model::service::ServiceSpec {
            name: id.into(),
            labels: Default::default(),
            mode: model::service::ServiceMode::Replicated { replicas: 1 },
            task: Default::default(),
            networks: nets
                .iter()
                .map(|n| model::service::NetworkAttachmentSpec {
                    target: n.to_string(),
                    aliases: vec![],
                })
                .collect(),
            endpoint: Default::default(),
            update: Default::default(),
        },
        virtual_ips: vec![],
        ports: vec![],
    })
}

fn task_on(id: &str, node: &str, service: &str, nets: &[&str]) -> Object {
    let Object::Task(mut t) = task(id, node) else {
        unreachable!()
    };
    t.service_id = service.into();
    t.networks = nets
        .iter()
        .map(|n| model::task::NetworkAttachment {
            network_id: n.to_string(),
            addresses: vec![],
            aliases: vec![],
        })
        .collect();
    Object::Task(t)
}

/// `serves` (asked per service, what a delta uses) agrees with `services_of` (the list, what
/// a full set uses) for every node and service, as networks and tasks come and go.
#[test]
fn serves_agrees_with_the_service_list() {
    let a = Assigner::new(&ClusterState::default());
    let check = |a: &Assigner| {
        let idx = a.lock();
        for node in idx.nodes.values() {
            let listed = idx.services_of(node);
            for s in ["s1", "s2", "s3", "s4", "gone"] {
                assert_eq!(idx.serves(node, s), listed.contains(s), "service {s}");
            }
        }
    };
    for n in ["n1", "n2", "n3"] {
        a.observe(&Applied::Put(node(n)));
    }
    a.observe(&Applied::Put(service_on("s1", &["red"])));
    a.observe(&Applied::Put(service_on("s2", &["red", "blue"])));
    a.observe(&Applied::Put(service_on("s3", &["blue"])));
    a.observe(&Applied::Put(service_on("s4", &[])));
    check(&a);
    a.observe(&Applied::Put(task_on("t1", "n1", "s1", &["red"])));
    a.observe(&Applied::Put(task_on("t2", "n2", "s3", &["blue"])));
    a.observe(&Applied::Put(task_on("t3", "n3", "s4", &[])));
    check(&a);
    {
        let idx = a.lock();
        assert!(idx.serves(&idx.nodes["n1"], "s2"), "shares red with s2");
        assert!(!idx.serves(&idx.nodes["n1"], "s3"));
        assert!(idx.serves(&idx.nodes["n3"], "s4"), "runs a task of s4");
    }
    a.observe(&Applied::Put(service_on("s2", &["blue"])));
    a.observe(&Applied::Deleted(task_on("t1", "n1", "s1", &["red"])));
    check(&a);
    a.observe(&Applied::Deleted(service_on("s3", &["blue"])));
    check(&a);
}

/// A node that left is forgotten once its tasks are gone, and a session of a node the
/// cluster does not hold leaves nothing behind: the index is as large as the cluster.
#[test]
fn departed_nodes_are_pruned() {
    let a = Assigner::new(&ClusterState::default());
    a.observe(&Applied::Put(node("n1")));
    a.observe(&Applied::Put(node("n2")));
    a.observe(&Applied::Put(task("t1", "n2")));
    assert_eq!(a.tracked_nodes(), 2);
    a.observe(&Applied::Deleted(node("n2")));
    assert_eq!(a.tracked_nodes(), 2, "kept while a task of it is indexed");
    a.observe(&Applied::Deleted(task("t1", "n2")));
    assert_eq!(a.tracked_nodes(), 1);
    // A session opened for a node about to go, ended after it went.
    let _ = a.notifier("n3");
    assert_eq!(a.tracked_nodes(), 2);
    a.session_ended("n3");
    assert_eq!(a.tracked_nodes(), 1);
    // The cluster's own nodes stay when their sessions end.
    a.session_ended("n1");
    assert_eq!(a.tracked_nodes(), 1);
}
