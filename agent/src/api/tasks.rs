//! /tasks handlers: `service ps`, `node ps` and the progress display of `service create /
//! update / scale` (the `_up-to-date` filter), in docker's shapes.

use std::sync::Arc;

use ::api::task::{LIST_FILTERS, Task as WireTask, desired_state_matches, is_up_to_date};
use axum::Json;
use axum::extract::{Path, State};
use model::task::TaskState;

use super::networks::{member, resolve};
use super::query::{ApiQuery, ListQuery};
use super::services::find as find_service;
use crate::agent::Agent;
use crate::error::{Failure, Result};
use crate::orchestration;

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
    let state = orchestration::snapshot(&m)?;
    let services: Vec<String> = f
        .get("service")
        .into_iter()
        .map(|r| find_service(&state, r).map(|s| s.meta.id.clone()))
        .collect::<Result<_>>()?;
    let nodes: Vec<String> = f
        .get("node")
        .into_iter()
        .map(|r| super::nodes::resolve(&m, r).map(|n| n.meta.id))
        .collect::<Result<_>>()?;
    let up_to_date = f.is_true("_up-to-date");
    let service_name = |id: &str| {
        state
            .services
            .get(id)
            .map(|s| s.spec.name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let mut out = Vec::new();
    for t in state.tasks.values() {
        let node = t.node_id.clone().unwrap_or_default();
        let name = ::api::task::name(&service_name(&t.service_id), t.slot, &node);
        let keep = (services.is_empty() || services.contains(&t.service_id))
            && (nodes.is_empty() || nodes.contains(&node))
            && f.matches("desired-state", |d| {
                desired_state_matches(d, t.desired_state).unwrap_or(false)
            })
            && f.matches("name", |v| name.contains(v))
            && f.matches("id", |v| t.meta.id.starts_with(v))
            && f.match_labels(&Default::default())
            && (!up_to_date
                || state
                    .services
                    .get(&t.service_id)
                    .is_some_and(|s| is_up_to_date(s, t)));
        if keep {
            out.push(::api::task::task(t, |id| state.networks.get(id)));
        }
    }
    let hostname = |id: &str| {
        state
            .nodes
            .get(id)
            .map(|n| n.description.hostname.clone())
            .unwrap_or_default()
    };
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
    let state = orchestration::snapshot(&m)?;
    let t = resolve(
        state.tasks.values(),
        &reference,
        |t| &t.meta.id,
        |_| "",
        "task",
        || Failure::not_found(format!("No such task: {reference}")),
    )?;
    Ok(Json(::api::task::task(t, |id| state.networks.get(id))))
}
