//! The HTTP/JSON API on the unix socket (default /run/netagent/netagent.sock, mode 0660), what
//! `netctl` talks to.
//!
//! | method | path | what | where it runs |
//! |---|---|---|---|
//! | GET | /info | this node's membership (node id, role, leader, managers) | local |
//! | POST | /swarm/init | `swarm init` (also `--force-new-cluster`) | local |
//! | POST | /swarm/join | `swarm join` | local |
//! | POST | /swarm/leave?force=true | `swarm leave` | local |
//! | GET | /swarm | the cluster object (no secrets) | manager, local replica |
//! | GET | /swarm/join-token/{worker\|manager} | a join token and the address to join through | manager, local replica |
//! | POST | /swarm/join-token/{worker\|manager}/rotate | a new join token | leader |
//! | GET | /nodes | `node ls` | manager, local replica |
//! | GET | /nodes/{id\|hostname\|self} | `node inspect` | manager, local replica |
//! | POST | /nodes/{ref}/update | `node update` (availability, labels, role) | leader |
//! | POST | /nodes/{ref}/promote, /nodes/{ref}/demote | `node promote/demote` | leader |
//! | DELETE | /nodes/{ref}?force=true | `node rm` | leader |
//! | POST | /networks/create | `network create` (allocates subnets and VNIs) | leader |
//! | GET | /networks | `network ls` (sorted by name) | manager, local replica; worker, its tasks' networks |
//! | GET | /networks/{id\|name\|id-prefix} | `network inspect` (peers and endpoints from this node's gossip) | manager, local replica; worker, its tasks' networks |
//! | DELETE | /networks/{ref} | `network rm` (refused while a service or a task uses it) | leader |
//! | POST | /services/create | `service create` (allocates VIPs) | leader |
//! | GET | /services | `service ls` (with running/desired task counts) | manager, local replica |
//! | GET | /services/{id\|name\|id-prefix} | `service inspect` | manager, local replica |
//! | POST | /services/{ref}/update | `service update`, `service scale` (version-checked) | leader |
//! | DELETE | /services/{ref} | `service rm` (the leader loop stops the tasks) | leader |
//! | GET | /tasks?service=REF&node=REF&desired-state=running\|shutdown\|accepted | `service ps`, progress | manager, local replica |
//!
//! Errors are `{"message": "..."}` with a 4xx/5xx status. Reads answer from the local replica;
//! when this manager has no leader or no quorum the answer carries `X-Netagent-Stale: <why>`.
//!
//! Adding a route: write the handler (reads use `crate::member::Member` and the store; writes
//! build a `store::Batch` and call `Member::write`), add it to [`router`]. The `gate` middleware
//! already does the rest for every route: GETs run on any manager; any other method runs on the
//! leader — a follower forwards the request as it came (`netagent.Control/Forward`), a worker
//! refuses, and without quorum it fails at once with the quorum message. Routes that act on this
//! node only are listed in `is_local`; reads a worker answers from its own assignments (as docker
//! shows a worker the networks its containers use) in `worker_reads`.

pub mod networks;
mod nodes;
pub mod services;
mod swarm;
pub mod swarm_types {
    pub use super::swarm::TokenView;
}
pub mod views;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::agent::Agent;
use crate::error::Failure;
use crate::rpc::generated::control_client::ControlClient;
use crate::rpc::messages::ForwardRequest;
use crate::services::FORWARDED;

/// Header of reads answered from a replica that may be behind.
pub const STALE: &str = "x-netagent-stale";
/// Header naming the node that answered (netctl marks it with `*`).
pub const NODE_ID: &str = "x-netagent-node-id";

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            axum::Json(serde_json::json!({"message": self.message})),
        )
            .into_response()
    }
}

/// A JSON body whose rejection is a clear 400 in the API's error format.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Failure> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| Failure::bad_request(format!("cannot read the request body: {e}")))?;
        let text = if bytes.is_empty() {
            &b"{}"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(text)
            .map(ApiJson)
            .map_err(|e| Failure::bad_request(format!("malformed request body: {e}")))
    }
}

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/info", get(swarm::info))
        .route("/swarm", get(swarm::inspect))
        .route("/swarm/init", post(swarm::init))
        .route("/swarm/join", post(swarm::join))
        .route("/swarm/leave", post(swarm::leave))
        .route("/swarm/join-token/{role}", get(swarm::join_token))
        .route("/swarm/join-token/{role}/rotate", post(swarm::rotate))
        .route("/nodes", get(nodes::list))
        .route("/nodes/{node}", get(nodes::inspect).delete(nodes::remove))
        .route("/nodes/{node}/update", post(nodes::update))
        .route("/nodes/{node}/promote", post(nodes::promote))
        .route("/nodes/{node}/demote", post(nodes::demote))
        .route("/networks", get(networks::list))
        // A network or service may be called "create": GET and DELETE of that path are its own.
        .route(
            "/networks/create",
            post(networks::create)
                .get(|a: State<Arc<Agent>>| {
                    networks::inspect(a, axum::extract::Path("create".into()))
                })
                .delete(|a: State<Arc<Agent>>| {
                    networks::remove(a, axum::extract::Path("create".into()))
                }),
        )
        .route(
            "/networks/{network}",
            get(networks::inspect).delete(networks::remove),
        )
        .route("/services", get(services::list))
        .route(
            "/services/create",
            post(services::create)
                .get(|a: State<Arc<Agent>>| {
                    services::inspect(a, axum::extract::Path("create".into()))
                })
                .delete(|a: State<Arc<Agent>>| {
                    services::remove(a, axum::extract::Path("create".into()))
                }),
        )
        .route(
            "/services/{service}",
            get(services::inspect).delete(services::remove),
        )
        .route("/services/{service}/update", post(services::update))
        .route("/tasks", get(services::tasks))
        .fallback(|| async { Failure::not_found("no such API route; see `netctl --help`") })
        .layer(axum::middleware::from_fn_with_state(agent.clone(), gate))
        .with_state(agent)
}

/// Routes that act on this node itself, never forwarded.
fn is_local(path: &str) -> bool {
    matches!(
        path,
        "/info" | "/swarm/init" | "/swarm/join" | "/swarm/leave"
    )
}

/// GETs a worker answers itself, from the networks its tasks use.
fn worker_reads(method: &Method, path: &str) -> bool {
    method == Method::GET && (path == "/networks" || path.starts_with("/networks/"))
}

/// Decides where a request runs (see the module doc).
async fn gate(State(agent): State<Arc<Agent>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if is_local(&path) {
        return next.run(req).await;
    }
    let Some(member) = agent.member() else {
        return crate::member::not_in_swarm().into_response();
    };
    let Some(manager) = &member.manager else {
        if worker_reads(req.method(), &path) {
            return next.run(req).await;
        }
        return crate::member::not_a_manager().into_response();
    };
    let store = manager.store.clone();
    if req.method() == Method::GET {
        let mut resp = next.run(req).await;
        if let Ok(v) = HeaderValue::from_str(&member.node_id()) {
            resp.headers_mut().insert(NODE_ID, v);
        }
        if !store.is_leader() {
            let why = match member.quorum() {
                Ok(q) if !q.has_quorum() => Some(format!(
                    "this manager reaches {} of {} managers, no quorum: the answer comes from its local replica and may be stale",
                    q.reachable, q.managers
                )),
                _ if store.leader().is_none() => {
                    Some("no leader is known: the answer comes from this manager's local replica and may be stale".into())
                }
                _ => None,
            };
            if let Some(why) = why
                && let Ok(v) = HeaderValue::from_str(&why)
            {
                resp.headers_mut().insert(STALE, v);
            }
        }
        return resp;
    }
    if req.headers().contains_key(FORWARDED) {
        if !store.is_leader() {
            return Failure::unavailable("leadership moved while the request was forwarded; retry")
                .into_response();
        }
        return next.run(req).await;
    }
    if let Err(f) = member.require_quorum().await {
        return f.into_response();
    }
    if store.is_leader() {
        return next.run(req).await;
    }
    match forward(&member, req).await {
        Ok(r) => r,
        Err(f) => f.into_response(),
    }
}

/// Sends the request to the leader over the cluster port and relays its answer.
async fn forward(member: &crate::member::Member, req: Request) -> Result<Response, Failure> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    let body = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .map_err(|e| Failure::bad_request(format!("cannot read the request body: {e}")))?;
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| Failure::bad_request("the request body is not UTF-8 JSON"))?;
    let mut last = None;
    for _ in 0..3 {
        let addr = member.wait_leader().await?;
        let mut client = ControlClient::new(member.channel(&addr)?);
        let fwd = ForwardRequest {
            method: method.clone(),
            path: path.clone(),
            body: body.clone(),
        };
        match client.forward(fwd).await {
            Ok(r) => {
                let r = r.into_inner();
                if r.status == 503 && r.body.contains("leadership moved") {
                    last = Some(Failure::unavailable("leadership moved; retry"));
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
                let mut resp = Response::builder()
                    .status(r.status)
                    .header("content-type", "application/json");
                for (k, v) in r.headers {
                    resp = resp.header(k, v);
                }
                return resp
                    .body(Body::from(r.body))
                    .map_err(|e| Failure::internal(e.to_string()));
            }
            Err(s) => {
                last = Some(Failure::from_status(&s));
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| Failure::unavailable("could not reach the leader")))
}

/// Serves the API on the unix socket until `shutdown` resolves.
pub async fn serve(
    agent: Arc<Agent>,
    path: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()));
        }
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    let app = router(agent.clone());
    let _ = agent.router.set(app.clone());
    tracing::info!(socket = %path.display(), "API listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("the API server failed")?;
    let _ = std::fs::remove_file(path);
    Ok(())
}
