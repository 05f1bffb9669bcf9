//! Scenario tests of a whole pass: state in, changes out, applied, repeated.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use model::network::{IpamConfig, Network, NetworkSpec};
use model::node::{Availability, NodeDescription, NodeSpec, NodeState, NodeStatus, Role};
use model::service::{
    EndpointSpec, NetworkAttachmentSpec, Service, ServiceMode, ServiceSpec, TaskTemplate,
};
use model::task::TaskState;
use model::{Kind, Meta, Node, Task};

use crate::allocator::{allocate_network, allocate_vips, ipam_from_state};
use crate::{ClusterState, Config, Leader, Observed, reconcile};

/// Every scenario runs twice: with a full pass over the whole state each time, and with one
/// long-lived incremental [`Leader`] fed the changes (which must then also be a fixed point of
/// the full pass).
#[derive(Debug, Clone, Copy)]
enum Mode {
    Full,
    Incremental,
}

macro_rules! scenario {
    ($name:ident) => {
        mod $name {
            #[test]
            fn full() {
                super::$name(super::Mode::Full)
            }
            #[test]
            fn incremental() {
                super::$name(super::Mode::Incremental)
            }
        }
    };
}

pub fn node(id: &str, hostname: &str) -> Node {
    Node {
        meta: Meta::with_id(id.into()),
        spec: NodeSpec {
            role: Role::Worker,
            availability: Availability::Active,
            labels: BTreeMap::new(),
        },
        role: Role::Worker,
        description: NodeDescription {
            hostname: hostname.into(),
            ..Default::default()
        },
        status: NodeStatus {
            state: NodeState::Ready,
            ..Default::default()
        },
        manager_status: None,
        advertise_addr: String::new(),
        data_path_addr: String::new(),
        attachments: vec![],
        cert_expires_at: None,
        tls_info: None,
    }
}

fn network(state: &ClusterState, name: &str, subnet: Option<&str>) -> Network {
    let spec = NetworkSpec {
        name: name.into(),
        driver: "overlay".into(),
        ipam: subnet
            .map(|s| {
                vec![IpamConfig {
                    subnet: Some(s.into()),
                    ..Default::default()
                }]
            })
            .unwrap_or_default(),
        options: BTreeMap::new(),
        labels: BTreeMap::new(),
        encrypted: false,
        attachable: false,
        internal: false,
        ingress: false,
        mtu: None,
    };
    let allocation = Some(allocate_network(&mut ipam_from_state(state), &spec).unwrap());
    Network {
        meta: Meta::with_id(format!("net-{name}")),
        spec,
        allocation,
        retiring: false,
    }
}

fn service(state: &ClusterState, name: &str, mode: ServiceMode, networks: &[&str]) -> Service {
    let mut s = Service {
        meta: Meta::with_id(format!("svc-{name}")),
        spec: ServiceSpec {
            name: name.into(),
            labels: BTreeMap::new(),
            mode,
            task: TaskTemplate {
                command: vec!["sleep".into(), "1000".into()],
                ..Default::default()
            },
            networks: networks
                .iter()
                .map(|n| NetworkAttachmentSpec {
                    target: format!("net-{n}"),
                    aliases: vec![],
                })
                .collect(),
            endpoint: EndpointSpec::default(),
            update: Default::default(),
        },
        virtual_ips: vec![],
        ports: vec![],
    };
    allocate_vips(&mut ipam_from_state(state), state, &mut s).unwrap();
    s
}

struct World {
    state: ClusterState,
    config: Config,
    now: DateTime<Utc>,
    mode: Mode,
    leader: Option<Leader>,
    /// The state as the leader last saw it (to feed it what changed since, as a change feed).
    seen: ClusterState,
}

impl World {
    fn new(nodes: usize, mode: Mode) -> World {
        let mut state = ClusterState::default();
        for i in 1..=nodes {
            let n = node(&format!("id{i}"), &format!("node{i}"));
            state.nodes.insert(n.meta.id.clone(), n);
        }
        World {
            state,
            // Tasks run at once here; `a_replacement_settles_before_the_next_goes` checks the
            // settle time.
            config: Config {
                replacement_settle: chrono::Duration::zero(),
                ..Config::default()
            },
            now: Utc::now(),
            mode,
            leader: None,
            seen: ClusterState::default(),
        }
    }

    /// Runs passes until nothing changes; returns how many passes changed something.
    fn settle(&mut self) -> usize {
        match self.mode {
            Mode::Full => {
                for pass in 0..10 {
                    let changes = reconcile(&self.state, &self.config, self.now);
                    if changes.is_empty() {
                        return pass;
                    }
                    self.state.apply(&changes);
                }
                panic!("no fixed point after 10 passes");
            }
            Mode::Incremental => self.settle_incremental(),
        }
    }

    fn settle_incremental(&mut self) -> usize {
        let leader = self
            .leader
            .get_or_insert_with(|| Leader::new(self.state.clone(), self.config.clone()));
        // What changed outside the leader. Services and networks are the API's decisions, which
        // the leader records before writing, then sees again (unchanged) in the change feed;
        // tasks and nodes change through the store (status reports, node updates).
        let external = self.state.changes_since(&self.seen);
        let by_api = |k: Kind| matches!(k, Kind::Service | Kind::Network);
        let api = crate::Changes {
            put: external
                .put
                .iter()
                .filter(|o| by_api(o.kind()))
                .cloned()
                .collect(),
            delete: external
                .delete
                .iter()
                .filter(|(k, _)| by_api(*k))
                .cloned()
                .collect(),
        };
        leader.record(&api);
        for o in external.put {
            leader.observe(Observed::Put(o));
        }
        for (kind, id) in external.delete {
            leader.observe(Observed::Deleted(kind, id));
        }
        let mut passes = 0;
        loop {
            assert!(passes < 10, "no fixed point after 10 passes");
            let changes = leader.pass(self.now);
            if changes.is_empty() {
                break;
            }
            self.state.apply(&changes);
            // The store confirms what the leader wrote.
            for o in changes.put {
                leader.observe(Observed::Put(o));
            }
            passes += 1;
        }
        assert_eq!(
            leader.state(),
            &self.state,
            "the leader's view is the store's"
        );
        let missed = reconcile(&self.state, &self.config, self.now);
        assert!(
            missed.is_empty(),
            "the incremental leader left work a full pass does: {missed:?}"
        );
        self.seen = self.state.clone();
        passes
    }

    /// The executor's part: every assigned task starts running.
    fn run_assigned(&mut self) {
        for t in self.state.tasks.values_mut() {
            if t.status.state == TaskState::Assigned && t.desired_state == TaskState::Running {
                t.status.state = TaskState::Running;
                t.status.timestamp = self.now;
            }
            if t.desired_state >= TaskState::Shutdown
                && !t.status.state.is_terminal()
                && t.node_id.is_some()
            {
                t.status.state = TaskState::Shutdown;
                t.status.timestamp = self.now;
            }
        }
    }

    fn live(&self, service: &str) -> Vec<&Task> {
        self.state
            .tasks
            .values()
            .filter(|t| {
                t.service_id == format!("svc-{service}") && t.desired_state == TaskState::Running
            })
            .collect()
    }

    fn nodes_of(&self, service: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .live(service)
            .iter()
            .filter_map(|t| t.node_id.clone())
            .collect();
        v.sort();
        v
    }

    fn add_network(&mut self, name: &str, subnet: Option<&str>) {
        let n = network(&self.state, name, subnet);
        self.state.networks.insert(n.meta.id.clone(), n);
    }

    /// The task template of service `name`, to change it.
    fn task_spec(&mut self, name: &str) -> &mut model::service::TaskTemplate {
        &mut self
            .state
            .services
            .get_mut(&format!("svc-{name}"))
            .expect("the service exists")
            .spec
            .task
    }

    fn add_service(&mut self, name: &str, mode: ServiceMode, networks: &[&str]) {
        let s = service(&self.state, name, mode, networks);
        self.state.services.insert(s.meta.id.clone(), s);
    }

    /// The ingress network `net-ingress`, and a service publishing 8080 through it.
    fn add_publishing(&mut self, name: &str, mode: ServiceMode) {
        let mut ingress = network(&self.state, "ingress", None);
        ingress.spec.ingress = true;
        self.state.networks.insert(ingress.meta.id.clone(), ingress);
        self.add_publishing_service(name, mode, &[]);
    }

    /// A service on `networks` publishing 8080 through the routing mesh.
    fn add_publishing_service(&mut self, name: &str, mode: ServiceMode, networks: &[&str]) {
        use model::service::{PortConfig, Protocol, PublishMode};
        let mut svc = service(&self.state, name, mode, networks);
        svc.spec.endpoint.ports = vec![PortConfig {
            published: 8080,
            target: 80,
            protocol: Protocol::Tcp,
            mode: PublishMode::Ingress,
        }];
        crate::ports::PublishedPorts::from_state(&self.state)
            .allocate(&self.state, &mut svc)
            .unwrap();
        self.state.services.insert(svc.meta.id.clone(), svc);
    }
}

fn replicas(n: u64) -> ServiceMode {
    ServiceMode::Replicated { replicas: n }
}

fn replicas_spread_over_nodes_with_addresses_and_settle(mode: Mode) {
    let mut w = World::new(3, mode);
    w.add_network("web", None);
    w.add_service("api", replicas(3), &["web"]);
    assert!(w.settle() >= 1);
    assert_eq!(w.nodes_of("api"), ["id1", "id2", "id3"]);
    let vip = w.state.services["svc-api"].virtual_ips[0].addr.to_string();
    assert_eq!(
        vip, "10.0.0.2/24",
        "the VIP is the first address after the gateway"
    );
    let mut addrs: Vec<String> = w
        .live("api")
        .iter()
        .map(|t| t.networks[0].addresses[0].to_string())
        .collect();
    addrs.sort();
    assert_eq!(addrs, ["10.0.0.3/24", "10.0.0.4/24", "10.0.0.5/24"]);
    let slots: Vec<u64> = {
        let mut s: Vec<u64> = w.live("api").iter().map(|t| t.slot).collect();
        s.sort();
        s
    };
    assert_eq!(slots, [1, 2, 3]);
    w.run_assigned();
    assert_eq!(w.settle(), 0, "a running service needs no change");
}

fn scale_down_and_up(mode: Mode) {
    let mut w = World::new(2, mode);
    w.add_service("s", replicas(3), &[]);
    w.settle();
    w.run_assigned();
    w.state.services.get_mut("svc-s").unwrap().spec.mode = replicas(1);
    w.settle();
    assert_eq!(w.live("s").len(), 1);
    assert_eq!(w.live("s")[0].slot, 1);
    w.run_assigned();
    w.state.services.get_mut("svc-s").unwrap().spec.mode = replicas(4);
    w.settle();
    assert_eq!(w.live("s").len(), 4);
    assert_eq!(w.nodes_of("s"), ["id1", "id1", "id2", "id2"]);
}

fn drain_moves_tasks_and_pause_takes_no_new_ones(mode: Mode) {
    let mut w = World::new(3, mode);
    w.add_service("s", replicas(3), &[]);
    w.settle();
    w.run_assigned();
    w.state.nodes.get_mut("id2").unwrap().spec.availability = Availability::Drain;
    w.settle();
    assert_eq!(w.live("s").len(), 3);
    assert!(
        !w.nodes_of("s").contains(&"id2".to_string()),
        "no task left on the drained node"
    );
    let old: Vec<&Task> = w
        .state
        .tasks
        .values()
        .filter(|t| t.node_id.as_deref() == Some("id2"))
        .collect();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].desired_state, TaskState::Shutdown);

    // Pause: running tasks stay, new ones go elsewhere.
    w.run_assigned();
    w.state.nodes.get_mut("id2").unwrap().spec.availability = Availability::Active;
    w.state.nodes.get_mut("id1").unwrap().spec.availability = Availability::Pause;
    let before = w.nodes_of("s");
    w.settle();
    assert_eq!(w.nodes_of("s"), before, "pause moves nothing");
    w.state.services.get_mut("svc-s").unwrap().spec.mode = replicas(5);
    w.settle();
    let on_paused = w
        .live("s")
        .iter()
        .filter(|t| t.node_id.as_deref() == Some("id1"))
        .count();
    assert_eq!(
        on_paused,
        before.iter().filter(|n| *n == "id1").count(),
        "no new task on a paused node"
    );
}

fn a_down_node_has_its_tasks_placed_elsewhere(mode: Mode) {
    let mut w = World::new(3, mode);
    w.add_service("s", replicas(3), &[]);
    w.settle();
    w.run_assigned();
    w.state.nodes.get_mut("id3").unwrap().status.state = NodeState::Down;
    w.settle();
    assert_eq!(w.nodes_of("s").iter().filter(|n| *n == "id3").count(), 0);
    assert_eq!(w.live("s").len(), 3);
    // The old task stays (desired shutdown) until its node reports it stopped.
    let old: Vec<&Task> = w
        .state
        .tasks
        .values()
        .filter(|t| t.node_id.as_deref() == Some("id3"))
        .collect();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].desired_state, TaskState::Shutdown);
    assert_eq!(old[0].status.state, TaskState::Running);
    // Unknown (e.g. right after a leader change) is not down: nothing moves.
    w.state.nodes.get_mut("id3").unwrap().status.state = NodeState::Unknown;
    assert_eq!(w.settle(), 0);
}

fn constraints_restrict_placement_and_explain_failure(mode: Mode) {
    let mut w = World::new(3, mode);
    w.state
        .nodes
        .get_mut("id2")
        .unwrap()
        .spec
        .labels
        .insert("zone".into(), "east".into());
    w.add_service("s", replicas(2), &[]);
    w.task_spec("s").constraints = vec!["node.labels.zone==east".into()];
    w.settle();
    assert_eq!(w.nodes_of("s"), ["id2", "id2"]);

    w.add_service("t", replicas(1), &[]);
    w.task_spec("t").constraints = vec!["node.hostname==nowhere".into()];
    w.state.nodes.get_mut("id1").unwrap().status.state = NodeState::Down;
    w.settle();
    let t = w.live("t")[0];
    assert_eq!(t.status.state, TaskState::Pending);
    assert_eq!(
        t.status.err.as_deref(),
        Some(
            "no suitable node (scheduling constraints not satisfied on 2 nodes; 1 node not available for new tasks)"
        )
    );
}

fn a_full_network_leaves_tasks_pending_with_the_reason(mode: Mode) {
    let mut w = World::new(2, mode);
    // /29: 8 addresses - network, broadcast, gateway = 5; the VIP takes one.
    w.add_network("tiny", Some("10.9.9.0/29"));
    w.add_service("s", replicas(6), &["tiny"]);
    w.settle();
    let pending: Vec<&Task> = w
        .live("s")
        .into_iter()
        .filter(|t| t.status.state == TaskState::Pending)
        .collect();
    assert_eq!(pending.len(), 2);
    let err = pending[0].status.err.as_deref().unwrap();
    assert!(
        err.contains("no available IP addresses on network tiny") && err.contains("10.9.9.0/29"),
        "{err}"
    );
    // Scaling down frees addresses; the rest get placed.
    w.run_assigned();
    w.state.services.get_mut("svc-s").unwrap().spec.mode = replicas(4);
    w.settle();
    w.run_assigned();
    w.settle();
    w.run_assigned();
    assert_eq!(w.settle(), 0);
    assert!(
        w.live("s")
            .iter()
            .all(|t| t.status.state == TaskState::Running),
        "all 4 run"
    );
}

fn global_services_run_once_per_eligible_node(mode: Mode) {
    let mut w = World::new(3, mode);
    w.state.nodes.get_mut("id3").unwrap().spec.availability = Availability::Pause;
    w.add_service("g", ServiceMode::Global, &[]);
    w.settle();
    assert_eq!(w.nodes_of("g"), ["id1", "id2"]);
    w.run_assigned();
    let n = node("id4", "node4");
    w.state.nodes.insert("id4".into(), n);
    w.settle();
    assert_eq!(w.nodes_of("g"), ["id1", "id2", "id4"]);
    w.state.nodes.get_mut("id1").unwrap().spec.availability = Availability::Drain;
    w.settle();
    assert_eq!(w.nodes_of("g"), ["id2", "id4"]);
}

fn failed_tasks_are_replaced_after_the_restart_delay_and_history_is_trimmed(mode: Mode) {
    let mut w = World::new(1, mode);
    w.add_service("s", replicas(1), &[]);
    for round in 0..8 {
        w.settle();
        w.run_assigned();
        let t = w.live("s")[0].meta.id.clone();
        let t = w.state.tasks.get_mut(&t).unwrap();
        t.status.state = TaskState::Failed;
        t.status.exit_code = Some(1);
        t.status.timestamp = w.now;
        assert_eq!(w.settle(), 0, "round {round}: not before the delay");
        w.now += Duration::seconds(6);
    }
    w.settle();
    let all = w.state.tasks.len();
    assert_eq!(all, 1 + 5, "one live task and five in history");
}

fn removed_services_stop_then_vanish_and_free_their_addresses(mode: Mode) {
    let mut w = World::new(2, mode);
    w.add_network("web", Some("10.1.0.0/24"));
    w.add_service("s", replicas(2), &["web"]);
    w.settle();
    w.run_assigned();
    w.state.services.remove("svc-s");
    w.settle();
    assert!(
        w.state
            .tasks
            .values()
            .all(|t| t.desired_state == TaskState::Shutdown)
    );
    w.run_assigned();
    w.settle();
    assert!(w.state.tasks.is_empty());
    let ipam = ipam_from_state(&w.state);
    let subnet = "10.1.0.0/24".parse().unwrap();
    assert!(
        !ipam
            .subnets()
            .is_address_allocated(subnet, "10.1.0.3".parse().unwrap())
    );
}

fn networks_get_the_lowest_free_subnet_and_overlaps_are_refused(mode: Mode) {
    let mut w = World::new(1, mode);
    w.add_network("a", None);
    w.add_network("b", None);
    let a = &w.state.networks["net-a"].allocation.as_ref().unwrap()[0];
    let b = &w.state.networks["net-b"].allocation.as_ref().unwrap()[0];
    assert_eq!(
        (a.subnet.to_string().as_str(), a.vni),
        ("10.0.0.0/24", 4096)
    );
    assert_eq!(
        (b.subnet.to_string().as_str(), b.vni),
        ("10.0.1.0/24", 4097)
    );
    let spec = NetworkSpec {
        ipam: vec![IpamConfig {
            subnet: Some("10.0.0.0/16".into()),
            ..Default::default()
        }],
        ..w.state.networks["net-a"].spec.clone()
    };
    let e = allocate_network(&mut ipam_from_state(&w.state), &spec)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("10.0.0.0/16") && e.contains("10.0.0.0/24"),
        "{e}"
    );
    let bad = NetworkSpec {
        ipam: vec![IpamConfig {
            subnet: Some("10.0.300.0/24".into()),
            ..Default::default()
        }],
        ..spec
    };
    let e = allocate_network(&mut ipam_from_state(&w.state), &bad)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("invalid subnet \"10.0.300.0/24\""), "{e}");
    // Not carried end to end yet: several subnets, IPv6. Refused, nothing reserved.
    let mut ipam = ipam_from_state(&w.state);
    let two = NetworkSpec {
        ipam: vec![
            IpamConfig {
                subnet: Some("10.9.0.0/24".into()),
                ..Default::default()
            },
            IpamConfig {
                subnet: Some("10.9.1.0/24".into()),
                ..Default::default()
            },
        ],
        ..bad.clone()
    };
    let e = allocate_network(&mut ipam, &two).unwrap_err().to_string();
    assert!(e.contains("more than one subnet"), "{e}");
    let six = NetworkSpec {
        ipam: vec![IpamConfig {
            subnet: Some("fd00:50::/64".into()),
            ..Default::default()
        }],
        ..bad
    };
    let e = allocate_network(&mut ipam, &six).unwrap_err().to_string();
    assert!(e.contains("IPv6"), "{e}");
    assert_eq!(ipam, ipam_from_state(&w.state), "nothing reserved");
}

/// At once, not one at a time: a task cannot wait for its turn without the network (or on one
/// that went).
fn joining_a_network_later_replaces_tasks_with_attached_ones(mode: Mode) {
    let mut w = World::new(2, mode);
    w.add_network("a", None);
    w.add_service("s", replicas(3), &[]);
    w.settle();
    w.run_assigned();
    let mut svc = w.state.services["svc-s"].clone();
    svc.spec.networks.push(NetworkAttachmentSpec {
        target: "net-a".into(),
        aliases: vec![],
    });
    allocate_vips(&mut ipam_from_state(&w.state), &w.state, &mut svc).unwrap();
    w.state.services.insert(svc.meta.id.clone(), svc);
    w.settle();
    let live = w.live("s");
    assert_eq!(live.len(), 3);
    assert!(
        live.iter().all(|t| t.networks.len() == 1),
        "every new task is attached to the network"
    );
}

scenario!(replicas_spread_over_nodes_with_addresses_and_settle);
scenario!(scale_down_and_up);
scenario!(drain_moves_tasks_and_pause_takes_no_new_ones);
scenario!(a_down_node_has_its_tasks_placed_elsewhere);
scenario!(constraints_restrict_placement_and_explain_failure);
scenario!(a_full_network_leaves_tasks_pending_with_the_reason);
scenario!(global_services_run_once_per_eligible_node);
scenario!(failed_tasks_are_replaced_after_the_restart_delay_and_history_is_trimmed);
scenario!(removed_services_stop_then_vanish_and_free_their_addresses);
scenario!(networks_get_the_lowest_free_subnet_and_overlaps_are_refused);
scenario!(joining_a_network_later_replaces_tasks_with_attached_ones);
scenario!(encrypted_networks_only_go_to_nodes_that_can_encrypt);

fn encrypted_networks_only_go_to_nodes_that_can_encrypt(mode: Mode) {
    let mut w = World::new(3, mode);
    w.state.nodes.get_mut("id1").unwrap().description.ipsec = Some(false);
    w.state.nodes.get_mut("id2").unwrap().description.ipsec = Some(true);
    w.add_network("secret", None);
    w.state
        .networks
        .get_mut("net-secret")
        .unwrap()
        .spec
        .encrypted = true;
    w.add_service("s", replicas(3), &["secret"]);
    w.add_service("plain", replicas(3), &[]);
    w.settle();
    assert!(
        !w.nodes_of("s").contains(&"id1".to_string()),
        "{:?}",
        w.nodes_of("s")
    );
    assert!(w.nodes_of("plain").contains(&"id1".to_string()));
    // With no node able to encrypt, the task waits and says why.
    for id in ["id2", "id3"] {
        w.state.nodes.get_mut(id).unwrap().description.ipsec = Some(false);
    }
    w.add_service("t", replicas(1), &["secret"]);
    w.settle();
    let t = w.live("t")[0];
    assert_eq!(t.status.state, TaskState::Pending);
    let err = t.status.err.as_deref().unwrap();
    assert!(
        err.contains("kernel lacks esp4 / rfc4106(gcm(aes)) on 3 nodes"),
        "{err}"
    );
}
scenario!(publishing_services_get_ingress_attachments_and_every_node_an_ingress_address);

/// Random operations, as a cluster meets them, in any order: the incremental leader must reach
/// the same fixed point as a full pass after each (checked inside `settle`), and addresses stay
/// unique.
mod random_operations;
mod updates;

fn publishing_services_get_ingress_attachments_and_every_node_an_ingress_address(mode: Mode) {
    let mut w = World::new(3, mode);
    let mut ingress = network(&w.state, "ingress", None);
    ingress.spec.ingress = true;
    assert_eq!(ingress.allocation.as_ref().unwrap()[0].vni, 4096);
    w.state.networks.insert(ingress.meta.id.clone(), ingress);
    w.add_network("web", None);
    assert_eq!(
        w.state.networks["net-web"].allocation.as_ref().unwrap()[0].vni,
        4097,
        "the user's first network comes after ingress"
    );
    w.add_service("quiet", replicas(1), &["web"]);
    w.settle();
    assert!(
        w.state.nodes.values().all(|n| n.attachments.len() <= 1),
        "without published ports no node needs ingress"
    );
    w.add_publishing_service("pub", replicas(2), &["web"]);
    w.settle();
    for t in w.live("pub") {
        let nets: Vec<&str> = t.networks.iter().map(|a| a.network_id.as_str()).collect();
        assert_eq!(nets, ["net-web", "net-ingress"], "{t:?}");
        assert!(
            t.networks[1].addresses[0]
                .to_string()
                .starts_with("10.0.0.")
        );
    }
    for n in w.state.nodes.values() {
        assert!(
            n.attachments.iter().any(|a| a.network_id == "net-ingress"),
            "every node has its ingress address: {n:?}"
        );
    }
    w.run_assigned();
    assert_eq!(w.settle(), 0);
    // The last publishing service gone: the nodes give their ingress addresses back.
    w.state.services.remove("svc-pub");
    w.settle();
    w.run_assigned();
    w.settle();
    for n in w.state.nodes.values() {
        assert!(
            !n.attachments.iter().any(|a| a.network_id == "net-ingress"),
            "{n:?}"
        );
    }
}

/// The leader's write of a node's ingress address loses to a concurrent patch of the node (its
/// session recording it ready): the store's version, without the address, is put back on the
/// leader, which then allocates the address again instead of leaving the node without its
/// ingress-sbox.
#[test]
fn a_node_attachment_lost_to_a_concurrent_write_is_decided_again() {
    let mut w = World::new(2, Mode::Incremental);
    w.add_publishing("pub", replicas(1));
    w.settle();
    let has = |n: &Node| n.attachments.iter().any(|a| a.network_id == "net-ingress");
    assert!(w.state.nodes.values().all(has));
    let mut stale = w.state.nodes["id2"].clone();
    stale.attachments.clear();
    let leader = w.leader.as_mut().expect("incremental");
    leader.refresh(Kind::Node, "id2", Some(model::Object::Node(stale)));
    let changes = leader.pass(w.now);
    let again = changes.put.iter().any(|o| match o {
        model::Object::Node(n) => n.meta.id == "id2" && has(n),
        _ => false,
    });
    assert!(
        again,
        "the node's ingress address is allocated again: {changes:?}"
    );
}
