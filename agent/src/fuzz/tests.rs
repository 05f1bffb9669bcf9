//! The fuzz entry points over arbitrary bytes, the checked-in corpora and the regression inputs
//! (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`), and the seed corpus writer.

use model::node::{Availability, NodeDescription, NodeSpec, NodeStatus, Role};
use model::{Kind, Meta, Node, Object};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use store::{Batch, Change, Proposal};

use super::*;

use lab::fuzzing::inputs;

fn split(input: &[u8]) -> (u8, &[u8]) {
    match input.split_first() {
        Some((b, rest)) => (*b, rest),
        None => (0, &[]),
    }
}

#[test]
fn the_fuzz_ca_loads_and_a_real_join_is_signed() {
    assert_eq!(cluster().meta.id, "fuzzcluster");
    for role in [Role::Worker, Role::Manager] {
        let req = join(role);
        assert!(join_request(&serde_json::to_vec(&req).unwrap()), "{role:?}");
    }
    let mut bad = join(Role::Worker);
    bad.want_manager = true;
    assert!(!join_request(&serde_json::to_vec(&bad).unwrap()));
    let mut bad = join(Role::Worker);
    bad.token = bad
        .token
        .replace("fuzzworker", "fuzzmanager")
        .replacen('0', "", 1);
    assert!(!join_request(&serde_json::to_vec(&bad).unwrap()));
}

#[test]
fn arbitrary_bytes_never_panic() {
    for bytes in lab::fuzzing::junk(0x2545_f491_4f6c_dd1d, 2000, 300) {
        join_request(&bytes);
        let (which, rest) = split(&bytes);
        cluster_rpc(which, rest);
        api_body(which, rest);
    }
}

/// The corpora and every crash the fuzzers found: decoded without a panic. The seeds decode.
#[test]
fn corpus_and_regressions_never_panic() {
    for (_, bytes) in inputs("join_request") {
        join_request(&bytes);
    }
    for (_, bytes) in inputs("cluster_rpc") {
        let (which, rest) = split(&bytes);
        cluster_rpc(which, rest);
    }
    for (_, bytes) in inputs("api_bodies") {
        let (route, rest) = split(&bytes);
        api_body(route, rest);
    }
}

fn join(role: Role) -> JoinRequest {
    let (csr_pem, _key) = pki::new_csr().unwrap();
    JoinRequest {
        token: join_token(role),
        csr_pem,
        want_manager: role == Role::Manager,
        hostname: "node-1".into(),
        advertise_addr: "198.18.0.2".into(),
        data_path_addr: "198.18.0.2".into(),
        description: NodeDescription {
            hostname: "node-1".into(),
            os: "linux".into(),
            architecture: "x86_64".into(),
            ..Default::default()
        },
    }
}

fn node() -> Node {
    Node {
        meta: Meta::with_id("n1".into()),
        spec: NodeSpec {
            role: Role::Worker,
            availability: Availability::Active,
            labels: [("zone".to_string(), "a".to_string())].into(),
        },
        role: Role::Worker,
        description: NodeDescription::default(),
        status: NodeStatus::default(),
        manager_status: None,
        advertise_addr: "198.18.0.2".into(),
        data_path_addr: "198.18.0.2".into(),
        attachments: vec![],
        cert_expires_at: None,
        tls_info: None,
    }
}

fn batch() -> Batch {
    Batch::new(vec![
        Change::Create(Object::Node(node())),
        Change::Patch {
            kind: Kind::Node,
            id: "n1".into(),
            patch: serde_json::json!({"spec": {"availability": "drain", "labels": {"zone": null}}}),
            version: None,
        },
        Change::Delete {
            kind: Kind::Node,
            id: "n1".into(),
            version: Some(1),
        },
    ])
}

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

/// The seed corpora: a few valid messages per target, made with the real types and encoders.
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let json = |v: &dyn erased::Ser| v.to_json();
    let rpc = |m: &str, bytes: Vec<u8>| rpc_input(m, &bytes).expect("a known message");
    let api = |r: &str, body: &str| api_input(r, body.as_bytes()).expect("a known route");
    let vote = Vote::new_committed(1, 1);
    let append = AppendRequest {
        vote,
        prev_log_id: Some(log_id(1)),
        entries: vec![
            Entry {
                log_id: log_id(2),
                payload: EntryPayload::Normal(Proposal {
                    batches: vec![batch()],
                }),
            },
            Entry {
                log_id: log_id(3),
                payload: EntryPayload::Blank,
            },
        ],
        leader_commit: Some(log_id(2)),
    };
    let snapshot_data = serde_json::to_vec(&serde_json::json!({"objects": [Object::Node(node())]}))
        .expect("encodes");
    let snapshot = SnapshotRequest {
        vote,
        meta: openraft::SnapshotMeta {
            last_log_id: Some(log_id(5)),
            last_membership: Default::default(),
            snapshot_id: "1-5".into(),
        },
        offset: 0,
        data: snapshot_data,
        done: true,
    };
    let status = model::task::TaskStatus {
        state: model::task::TaskState::Running,
        timestamp: chrono::DateTime::UNIX_EPOCH,
        message: "started".into(),
        err: None,
        exit_code: None,
    };
    vec![
        ("join_request", "worker", json(&join(Role::Worker))),
        ("join_request", "manager", json(&join(Role::Manager))),
        (
            "cluster_rpc",
            "append",
            rpc("Raft.AppendEntries", json(&append)),
        ),
        (
            "cluster_rpc",
            "vote",
            rpc(
                "Raft.Vote",
                json(&VoteRequest {
                    vote,
                    last_log_id: Some(log_id(3)),
                }),
            ),
        ),
        (
            "cluster_rpc",
            "snapshot",
            rpc("Raft.InstallSnapshot", json(&snapshot)),
        ),
        (
            "cluster_rpc",
            "forward",
            rpc(
                "Control.Forward",
                json(&ForwardRequest {
                    method: "POST".into(),
                    path: "/v1.41/networks/create".into(),
                    body: r#"{"Name":"web","Driver":"overlay"}"#.into(),
                }),
            ),
        ),
        (
            "cluster_rpc",
            "propose",
            rpc("Control.Propose", json(&ProposeRequest { batch: batch() })),
        ),
        (
            "cluster_rpc",
            "hello",
            rpc(
                "Dispatcher.Session up",
                json(&SessionUp::Hello {
                    description: NodeDescription::default(),
                    advertise_addr: "198.18.0.2".into(),
                    data_path_addr: "198.18.0.2".into(),
                    tls: None,
                    problem: None,
                }),
            ),
        ),
        (
            "cluster_rpc",
            "task_status",
            rpc(
                "Dispatcher.Session up",
                json(&SessionUp::TaskStatus {
                    updates: vec![("t1".into(), status)],
                }),
            ),
        ),
        (
            "cluster_rpc",
            "welcome",
            rpc(
                "Dispatcher.Session down",
                json(&SessionDown::Welcome {
                    heartbeat_ms: 5000,
                    managers: vec!["198.18.0.1:2377".into()],
                    cluster: Some(ClusterInfo::from(cluster())),
                }),
            ),
        ),
        (
            "cluster_rpc",
            "join",
            rpc("Ca.Join", json(&join(Role::Worker))),
        ),
        (
            "api_bodies",
            "service_create",
            api(
                "POST /services/create",
                r#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"busybox","Command":["httpd","-f"]},"Placement":{"Constraints":["node.role==worker"]}},"Mode":{"Replicated":{"Replicas":3}},"EndpointSpec":{"Ports":[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080}]}}"#,
            ),
        ),
        (
            "api_bodies",
            "network_create",
            api(
                "POST /networks/create",
                r#"{"Name":"web","Driver":"overlay","Attachable":true,"IPAM":{"Config":[{"Subnet":"10.1.0.0/24","Gateway":"10.1.0.1"}]},"Options":{"encrypted":""}}"#,
            ),
        ),
        (
            "api_bodies",
            "swarm_init",
            api(
                "POST /swarm/init",
                r#"{"ListenAddr":"0.0.0.0:2377","AdvertiseAddr":"198.18.0.1","DataPathPort":4789,"DefaultAddrPool":["10.20.0.0/16"],"SubnetSize":24,"Spec":{"Dispatcher":{"HeartbeatPeriod":5000000000}}}"#,
            ),
        ),
        (
            "api_bodies",
            "swarm_join",
            api(
                "POST /swarm/join",
                r#"{"ListenAddr":"0.0.0.0:2377","RemoteAddrs":["198.18.0.1:2377"],"JoinToken":"SWMTKN-1-x-y"}"#,
            ),
        ),
        (
            "api_bodies",
            "swarm_update",
            api(
                "POST /swarm/update",
                r#"{"Name":"default","Dispatcher":{"HeartbeatPeriod":5000000000}}"#,
            ),
        ),
        (
            "api_bodies",
            "node_update",
            api(
                "POST /nodes/{id}/update",
                r#"{"Role":"manager","Availability":"drain","Labels":{"zone":"a"}}"#,
            ),
        ),
        (
            "api_bodies",
            "ingress",
            api(
                "POST /ingress/recreate",
                &serde_json::to_string(&crate::ingress::IngressOptions {
                    subnet: Some("10.255.0.0/16".into()),
                    gateway: None,
                    mtu: Some(1400),
                    encrypted: true,
                })
                .expect("encodes"),
            ),
        ),
        (
            "api_bodies",
            "filters",
            api("?filters=", r#"{"name":{"web":true},"label":["a=b"]}"#),
        ),
        (
            "api_bodies",
            "path",
            api("/v1.NN/ path prefix", "/v1.41/services/create"),
        ),
    ]
}

/// Serialization through `&dyn`, for the seed list.
mod erased {
    pub trait Ser {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("encodes")
        }
    }
}

/// The seeds decode (they exercise more than the first check), and the checked-in corpus holds
/// them: `cargo test -p netagent --lib fuzz::tests::write_seed_corpus -- --ignored` writes them.
#[test]
fn seeds_decode() {
    let mut refused = Vec::new();
    for (target, name, bytes) in seeds() {
        let ok = match target {
            "join_request" => join_request(&bytes),
            "cluster_rpc" => {
                let (w, rest) = split(&bytes);
                cluster_rpc(w, rest)
            }
            _ => {
                let (r, rest) = split(&bytes);
                api_body(r, rest)
            }
        };
        // A join seed signs; swarm/update and the service spec may legitimately stop at a check
        // that needs the cluster's state, but must decode.
        let must_pass = !matches!(name, "service_create");
        if ok || !must_pass {
            continue;
        }
        refused.push(format!("{target}/{name}"));
    }
    assert!(refused.is_empty(), "seeds refused: {refused:?}");
}

#[test]
#[ignore = "writes the seed corpus under fuzz/corpus/"]
fn write_seed_corpus() {
    for (target, name, bytes) in seeds() {
        lab::fuzzing::write_seed(target, name, &bytes);
    }
}
