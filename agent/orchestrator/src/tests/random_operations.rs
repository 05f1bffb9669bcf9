//! Random operations, as a cluster meets them, in any order: the incremental leader must reach
//! the same fixed point as a full pass after each (checked inside `settle`), and addresses stay
//! unique.

use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    AddService(u8, u8, bool),
    Scale(u8, u8),
    RemoveService(u8),
    NodeState(u8, u8),
    Availability(u8, u8),
    RunAssigned,
    FailOne(u8),
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, 0u8..5, any::<bool>()).prop_map(|(s, n, g)| Op::AddService(s, n, g)),
        (0u8..6, 0u8..6).prop_map(|(s, n)| Op::Scale(s, n)),
        (0u8..6).prop_map(Op::RemoveService),
        (0u8..4, 0u8..3).prop_map(|(n, s)| Op::NodeState(n, s)),
        (0u8..4, 0u8..3).prop_map(|(n, a)| Op::Availability(n, a)),
        Just(Op::RunAssigned),
        (0u8..20).prop_map(Op::FailOne),
        Just(Op::Tick),
    ]
}

fn apply(w: &mut World, op: &Op) {
    match op {
        Op::AddService(s, n, global) => {
            let name = format!("s{s}");
            if w.state.services.contains_key(&format!("svc-{name}")) {
                return;
            }
            let mode = if *global {
                ServiceMode::Global
            } else {
                replicas(u64::from(*n))
            };
            let nets: &[&str] = if s % 2 == 0 { &["a"] } else { &["a", "b"] };
            w.add_service(&name, mode, nets);
        }
        Op::Scale(s, n) => {
            if let Some(svc) = w.state.services.get_mut(&format!("svc-s{s}"))
                && matches!(svc.spec.mode, ServiceMode::Replicated { .. })
            {
                svc.spec.mode = replicas(u64::from(*n));
            }
        }
        Op::RemoveService(s) => {
            w.state.services.remove(&format!("svc-s{s}"));
        }
        Op::NodeState(n, st) => {
            if let Some(node) = w.state.nodes.get_mut(&format!("id{}", n + 1)) {
                node.status.state =
                    [NodeState::Ready, NodeState::Down, NodeState::Unknown][usize::from(*st)];
            }
        }
        Op::Availability(n, a) => {
            if let Some(node) = w.state.nodes.get_mut(&format!("id{}", n + 1)) {
                node.spec.availability = [
                    Availability::Active,
                    Availability::Pause,
                    Availability::Drain,
                ][usize::from(*a)];
            }
        }
        Op::RunAssigned => w.run_assigned(),
        Op::FailOne(i) => {
            let running: Vec<String> = w
                .state
                .tasks
                .values()
                .filter(|t| t.status.state == TaskState::Running)
                .map(|t| t.meta.id.clone())
                .collect();
            if let Some(id) = running.get(usize::from(*i) % running.len().max(1)) {
                let t = w.state.tasks.get_mut(id).unwrap();
                t.status.state = TaskState::Failed;
                t.status.timestamp = w.now;
            }
        }
        Op::Tick => w.now += Duration::seconds(3),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn incremental_matches_full(ops in proptest::collection::vec(op(), 1..40)) {
        let mut w = World::new(4, Mode::Incremental);
        w.add_network("a", Some("10.1.0.0/24"));
        w.add_network("b", None);
        for op in &ops {
            apply(&mut w, op);
            w.settle();
            let mut held = std::collections::BTreeSet::new();
            let addrs = w.state.tasks.values()
                .filter(|t| crate::allocator::holds_addresses(t.status.state))
                .flat_map(|t| t.networks.iter().flat_map(|a| a.addresses.iter()))
                .chain(w.state.nodes.values().flat_map(|n| n.attachments.iter().flat_map(|a| a.addresses.iter())))
                .chain(w.state.services.values().flat_map(|s| s.virtual_ips.iter().map(|v| &v.addr)));
            for a in addrs {
                prop_assert!(held.insert(a.addr()), "{a} handed out twice");
            }
        }
    }
}
