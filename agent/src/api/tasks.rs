//! /tasks handlers: `service ps`, `node ps` and the progress display of `service create /
//! update / scale` (the `_up-to-date` filter), in docker's shapes.

use std::collections::BTreeMap;
use std::sync::Arc;

use ::api::task::{LIST_FILTERS, Task as WireTask, desired_state_matches, is_up_to_date};
use axum::Json;
use axum::extract::{Path, State};
use model::task::TaskState;
use model::{Kind, Object};

use super::networks::{member, resolve};
use super::query::{ApiQuery, ListQuery};
use super::services::lookup as lookup_service;
use crate::agent::Agent;
use crate::error::{Failure, Result};

/// `GET /tasks?filters=`: service, node (ids, names, prefixes, "self"), desired-state, name,
/// id, label, `_up-to-date`. Sorted as `service ps` shows them.
pub async fn list(
    State(agent): State<Arc<Agent>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<WireTask>>> {
    let f = q.filters(LIST_FILTERS)?;
    for d in f.get("desired-state") {
        desired_state_matches(d, TaskState::Running)?;
    }
    let m = member(&agent)?;
    let store = m.store()?;
    let services: Vec<String> = f
        .get("service")
        .into_iter()
        .map(|r| lookup_service(&m, r).map(|s| s.meta.id))
        .collect::<Result<_>>()?;
    let nodes: Vec<String> = f
        .get("node")
        .into_iter()
        .map(|r| super::nodes::resolve(&m, r).map(|n| n.meta.id))
        .collect::<Result<_>>()?;
    let up_to_date = f.is_true("_up-to-date");
    // The tasks that pass the filters on their own fields, found where they are: `service ps
    // web` (polled by `service scale` and `update` while they wait) copies web's tasks, not the
    // whole store.
    let tasks: Vec<model::Task> = store.scan(Kind::Task, |objects| {
        objects
            .filter_map(|o| match o {
                Object::Task(t) => Some(t),
                _ => None,
            })
            .filter(|t| {
                (services.is_empty() || services.contains(&t.service_id))
                    && (nodes.is_empty()
                        || nodes
                            .iter()
                            .any(|n| Some(n.as_str()) == t.node_id.as_deref()))
                    && f.matches("desired-state", |d| {
                        desired_state_matches(d, t.desired_state).unwrap_or(false)
                    })
                    && f.matches("id", |v| t.meta.id.starts_with(v))
            })
            .cloned()
            .collect()
    })?;
    // Their services (names, the up-to-date check), networks and nodes, once each.
    let mut service_of: BTreeMap<String, Option<model::Service>> = BTreeMap::new();
    for t in &tasks {
        if !service_of.contains_key(&t.service_id) {
            let s = store
                .get(Kind::Service, &t.service_id)?
                .and_then(|o| model::Service::try_from(o).ok());
            service_of.insert(t.service_id.clone(), s);
        }
    }
    let networks = networks_by_id(store)?;
    let hostnames: BTreeMap<String, String> = m
        .nodes()?
        .into_iter()
        .map(|n| (n.meta.id, n.description.hostname))
        .collect();
    let service_name = |id: &str| {
        service_of
            .get(id)
            .and_then(|s| s.as_ref())
            .map(|s| s.spec.name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let mut out = Vec::new();
    for t in &tasks {
        let node = t.node_id.clone().unwrap_or_default();
        let name = ::api::task::name(&service_name(&t.service_id), t.slot, &node);
        let keep = f.matches("name", |v| name.contains(v))
            && f.match_labels(&Default::default())
            && (!up_to_date
                || service_of
                    .get(&t.service_id)
                    .and_then(|s| s.as_ref())
                    .is_some_and(|s| is_up_to_date(s, t)));
        if keep {
            out.push(::api::task::task(t, |id| networks.get(id)));
        }
    }
    let hostname = |id: &str| hostnames.get(id).cloned().unwrap_or_default();
    ::api::task::sort(&mut out, |t| {
        (service_name(&t.service_id), hostname(&t.node_id))
    });
    Ok(Json(out))
}

/// `GET /tasks/{id}` (full id or unique prefix).
pub async fn inspect(
    State(agent): State<Arc<Agent>>,
    Path(reference): Path<String>,
) -> Result<Json<WireTask>> {
    let m = member(&agent)?;
    let store = m.store()?;
    let t = store.scan(Kind::Task, |objects| {
        let tasks = objects.filter_map(|o| match o {
            Object::Task(t) => Some(t),
            _ => None,
        });
        resolve(
            tasks,
            &reference,
            |t| &t.meta.id,
            |_| "",
            "task",
            || Failure::not_found(format!("No such task: {reference}")),
        )
        .cloned()
    })??;
    let networks = networks_by_id(store)?;
    Ok(Json(::api::task::task(&t, |id| networks.get(id))))
}

/// The replica's networks by id (few: read whole), for the tasks' attachments.
fn networks_by_id(store: &store::Store) -> Result<BTreeMap<String, model::Network>> {
    Ok(store
        .list(Kind::Network)?
        .into_iter()
        .filter_map(|o| model::Network::try_from(o).ok())
        .map(|n| (n.meta.id.clone(), n))
        .collect())
}
