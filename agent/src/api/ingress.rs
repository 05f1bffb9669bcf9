//! `POST /ingress/recreate` (netagent's own): replaces the ingress network's options while
//! services publish through it. Docker refuses and makes the operator remove every publishing
//! service; netagent changes the network in place when its subnet stays (MTU, encryption: the
//! nodes apply the new values to the live sandboxes and interfaces, nothing restarts), and
//! otherwise replaces it with a new network and moves the publishing services' tasks to it: the
//! old network is kept, renamed and marked retiring, the orchestrator rolls the tasks over as
//! for an update, every ingress-sbox balances over both networks meanwhile, and the leader
//! removes the old one once no task runs there.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use model::{Meta, Network, Object};
use orchestrator::allocator::{allocate_network, ingress_network};

use super::ApiJson;
use super::networks::member;
use crate::agent::Agent;
use crate::error::{Failure, Result};
use crate::ingress::{IngressOptions, Recreated, spec};
use crate::orchestration;

pub async fn recreate(
    State(agent): State<Arc<Agent>>,
    ApiJson(req): ApiJson<IngressOptions>,
) -> Result<Json<Recreated>> {
    let m = member(&agent)?;
    let mut leader = orchestration::leader(&m).await?;
    let mut wanted = spec(&req)?;
    let state = leader.state();
    let old = ingress_network(state).cloned();
    let moving = state
        .networks
        .values()
        .find(|n| n.spec.ingress && n.retiring);
    let mut moved: Vec<String> = state
        .services
        .values()
        .filter(|s| s.publishes_ingress())
        .map(|s| s.spec.name.clone())
        .collect();
    moved.sort();
    let same_subnet = |old: &Network| {
        let first = old.allocation.as_ref().and_then(|a| a.first());
        match (&req.subnet, first) {
            (None, _) => req.gateway.is_none(),
            (Some(s), Some(a)) => {
                s.trim().parse::<orchestrator::ipam::ipnet::IpNet>().ok() == Some(a.subnet)
                    && req
                        .gateway
                        .as_ref()
                        .is_none_or(|g| g.trim().parse().ok() == Some(a.gateway))
            }
            _ => false,
        }
    };
    let (changes, answer) = match old {
        Some(old) if same_subnet(&old) => {
            wanted.ipam = old.spec.ipam.clone();
            wanted.labels = old.spec.labels.clone();
            if wanted == old.spec {
                return Ok(Json(Recreated {
                    id: old.meta.id.clone(),
                    in_place: true,
                    moved: vec![],
                    retiring: None,
                }));
            }
            let id = old.meta.id.clone();
            let mut n = old;
            n.spec = wanted;
            (
                orchestrator::Changes {
                    put: vec![Object::Network(n)],
                    delete: vec![],
                },
                Recreated {
                    id,
                    in_place: true,
                    moved: vec![],
                    retiring: None,
                },
            )
        }
        old => {
            if let Some(r) = moving {
                return Err(Failure::conflict(format!(
                    "the ingress network is still moving off {} ({}): try again once its tasks moved (`netctl service ps`)",
                    r.spec.name,
                    r.allocation
                        .iter()
                        .flatten()
                        .map(|a| a.subnet.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let (ipam, state) = leader.ipam_mut();
            let allocation = allocate_network(ipam, &wanted).map_err(|e| {
                let holder = state
                    .networks
                    .values()
                    .find(|n| e.to_string().contains(&n.spec.name));
                Failure::bad_request(format!(
                    "invalid ingress network: {e}{}",
                    holder
                        .map(|n| format!(" (network {})", n.spec.name))
                        .unwrap_or_default()
                ))
            })?;
            let n = Network {
                meta: Meta::new(),
                spec: wanted,
                allocation: Some(allocation),
                retiring: false,
            };
            let id = n.meta.id.clone();
            // The old network stays, renamed, while its tasks move (the leader removes it
            // when none runs there): every sbox balances over both meanwhile.
            let retiring = old.map(|mut o| {
                o.retiring = true;
                o.spec.name = format!("{}-{}", crate::ingress::NAME, short(&o.meta.id));
                o
            });
            let answer = Recreated {
                id,
                in_place: false,
                moved,
                retiring: retiring.as_ref().map(|o| o.meta.id.clone()),
            };
            let mut put = vec![Object::Network(n)];
            put.extend(retiring.map(Object::Network));
            (
                orchestrator::Changes {
                    put,
                    delete: vec![],
                },
                answer,
            )
        }
    };
    leader.record(&changes);
    orchestration::write_decided(&m, &mut leader, &changes).await?;
    tracing::info!(network = %answer.id, in_place = answer.in_place, moved = ?answer.moved, "ingress network recreated");
    Ok(Json(answer))
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
