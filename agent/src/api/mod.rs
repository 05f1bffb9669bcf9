//! The HTTP API on the unix socket (default /run/netagent/netagent.sock, mode 0660): the Docker
//! Engine API's swarm subset (v1.41, every route also under `/v1.24/` ... `/v1.41/`), what
//! `netctl`, the docker CLI and docker's SDKs talk to; plus `/metrics`. Request and answer bodies
//! are the `api` crate's types; each handler file turns one resource's HTTP into calls on the
//! membership (`Member`, the store, the agent's transitions).
//!
//! | method | path | what | where it runs |
//! |---|---|---|---|
//! | GET, HEAD | /_ping | `API-Version`, `OSType` headers, "OK" | local |
//! | GET | /version, /info | the daemon; this node's membership (`Swarm`) | local |
//! | GET | /metrics | Prometheus text format | local |
//! | POST | /swarm/init, /swarm/join, /swarm/leave?force= | membership transitions | local |
//! | GET | /swarm | the cluster and its join tokens | manager, local replica |
//! | POST | /swarm/update?version=&rotateWorkerToken=&rotateManagerToken= | settings, new tokens | leader |
//! | GET | /swarm/unlockkey; POST /swarm/unlock | autolock (never on: empty key, "not locked") | manager / local |
//! | GET | /nodes?filters=, /nodes/{id\|name\|prefix\|self} | `node ls / inspect` | manager, local replica |
//! | POST | /nodes/{ref}/update?version= | availability, labels, role (promote/demote) | leader |
//! | DELETE | /nodes/{ref}?force= | `node rm` | leader |
//! | GET | /networks?filters=, /networks/{ref} | `network ls / inspect` | manager; worker: its tasks' networks |
//! | POST | /networks/create; DELETE /networks/{ref} | allocate subnets and VNIs; remove | leader |
//! | GET | /services?filters=&status=, /services/{ref} | `service ls / inspect` | manager, local replica |
//! | POST | /services/create, /services/{ref}/update?version= | allocate VIPs; change the spec | leader |
//! | DELETE | /services/{ref} | `service rm` (the leader loop stops the tasks) | leader |
//! | GET | /services/{ref}/logs | the output of the service's tasks on this node | manager, local files |
//! | GET | /tasks?filters=, /tasks/{id\|prefix} | `service ps`, progress (`_up-to-date`) | manager, local replica |
//!
//! Errors are docker's: `{"message": "..."}` with 400 (bad request), 404 (no such object or
//! route), 409 (conflicts with the state), 503 (not a manager, no quorum), 500. Reads answer from
//! the local replica; when this manager has no leader or no quorum the answer carries
//! `X-Netagent-Stale: <why>` (netctl warns with it).
//!
//! Adding a route: a handler in the resource's file (reads use `Member` and the store; writes
//! build a `store::Batch` and call `Member::write`), one line in [`routes`]. The `gate`
//! middleware does the rest: GETs run on any manager; any other method runs on the leader — a
//! follower forwards the request as it came (`netagent.Control/Forward`), a worker refuses, and
//! without quorum it fails at once with the quorum message. Routes that act on this node only
//! are listed in `is_local`; reads a worker answers from its own assignments in `worker_reads`.

pub mod fuzz;
mod ingress;
mod logs;
mod networks;
mod nodes;
mod query;
mod services;
mod swarm;
mod system;
mod tasks;

use std::path::Path;
use std::sync::Arc;

use ::api::system::{HEADER_API_VERSION, HEADER_EXPERIMENTAL, HEADER_OS_TYPE, HEADER_STALE};
use ::api::version::{ApiVersion, Prefixed};
use ::api::{API_VERSION, ErrorResponse};
use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::agent::Agent;
use crate::error::Failure;
use crate::rpc::generated::control_client::ControlClient;
use crate::rpc::messages::ForwardRequest;
use crate::services::FORWARDED;

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            axum::Json(ErrorResponse {
                message: self.message,
            }),
        )
            .into_response()
    }
}

impl From<::api::Invalid> for Failure {
    fn from(e: ::api::Invalid) -> Failure {
        Failure::bad_request(e.0)
    }
}

/// A JSON body whose rejection is a clear 400 in the API's error format. Go's decoder ignores
/// unknown fields, and so does this; wrong types are refused.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Failure> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| Failure::bad_request(format!("cannot read the request body: {e}")))?;
        parse_body(&bytes).map(ApiJson)
    }
}

/// Decodes a request body as every handler does: empty (or blank) means `{}`.
pub(crate) fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    let text = if bytes.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        bytes
    };
    serde_json::from_slice(text)
        .map_err(|e| Failure::bad_request(format!("malformed request body: {e}")))
}

/// The API's routes, without the version prefix (see [`app`]).
fn routes(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/_ping", get(system::ping))
        .route("/version", get(system::version))
        .route("/info", get(system::info))
        .route("/metrics", get(system::metrics))
        .route("/swarm", get(swarm::inspect))
        .route("/swarm/init", post(swarm::init))
        .route("/swarm/join", post(swarm::join))
        .route("/swarm/leave", post(swarm::leave))
        .route("/swarm/update", post(swarm::update))
        .route("/swarm/unlockkey", get(swarm::unlock_key))
        .route("/swarm/unlock", post(swarm::unlock))
        .route("/nodes", get(nodes::list))
        .route("/nodes/{node}", get(nodes::inspect).delete(nodes::remove))
        .route("/nodes/{node}/update", post(nodes::update))
        .route("/networks", get(networks::list))
        // A network or service may be called "create": GET and DELETE of that path are its own.
        .route(
            "/networks/create",
            post(networks::create)
                .get(
                    |a: State<Arc<Agent>>, q: query::ApiQuery<::api::query::InspectQuery>| {
                        networks::inspect(a, axum::extract::Path("create".into()), q)
                    },
                )
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
        .route("/services/{service}/logs", get(logs::service_logs))
        .route("/ingress/recreate", post(ingress::recreate))
        .route("/tasks", get(tasks::list))
        .route("/tasks/{task}", get(tasks::inspect))
        .fallback(|| async { Failure::not_found("page not found") })
        .layer(axum::middleware::from_fn_with_state(agent.clone(), gate))
        .with_state(agent)
}

/// The whole API: [`routes`] behind docker's edge (version prefix, headers).
pub fn app(agent: Arc<Agent>) -> Router {
    Router::new()
        .fallback_service(routes(agent))
        .layer(axum::middleware::from_fn(docker_edge))
}

/// The TCP metrics endpoint (`--metrics-addr`): `GET /metrics` only.
pub fn metrics_app() -> Router {
    Router::new()
        .route("/metrics", get(|| async { crate::metrics::response() }))
        .fallback(|| async {
            Failure::not_found("page not found: this address serves GET /metrics")
        })
}

/// Strips and checks the `/v1.NN` prefix (docker's error for versions outside 1.24..=1.41), then
/// adds docker's headers to the answer.
async fn docker_edge(mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let version = match ::api::version::split(&path) {
        Ok(Prefixed::Bare) => ApiVersion::current(),
        Ok(Prefixed::Versioned(v, rest)) => {
            let pq = match req.uri().query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_string(),
            };
            match pq.parse::<Uri>() {
                Ok(u) => *req.uri_mut() = u,
                Err(e) => {
                    return Failure::bad_request(format!("bad path {path:?}: {e}")).into_response();
                }
            }
            v
        }
        Err(e) => return with_docker_headers(Failure::bad_request(e.0).into_response()),
    };
    req.extensions_mut().insert(version);
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let class = format!("{}xx", resp.status().as_u16() / 100);
    crate::metrics::global()
        .api
        .requests
        .get_or_create(&[("method", method), ("code", class)])
        .inc();
    with_docker_headers(resp)
}

fn with_docker_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(HEADER_API_VERSION, HeaderValue::from_static(API_VERSION));
    h.insert(HEADER_OS_TYPE, HeaderValue::from_static("linux"));
    h.insert(HEADER_EXPERIMENTAL, HeaderValue::from_static("false"));
    h.insert(
        "server",
        HeaderValue::from_static(concat!("netagent/", env!("CARGO_PKG_VERSION"), " (linux)")),
    );
    resp
}

/// Routes that act on this node itself, never forwarded.
fn is_local(path: &str) -> bool {
    matches!(
        path,
        "/_ping"
            | "/version"
            | "/info"
            | "/metrics"
            | "/swarm/init"
            | "/swarm/join"
            | "/swarm/leave"
            | "/swarm/unlock"
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
    if req.method() == Method::GET || req.method() == Method::HEAD {
        let mut resp = next.run(req).await;
        // Even a leader may answer stale: cut off from its quorum it still believes it leads.
        let why = match (store.unhealthy(), member.quorum()) {
            (Some(e), _) => Some(format!(
                "this manager's store is unhealthy ({e}): the answer comes from its local replica and may be stale"
            )),
            (_, Ok(q)) if !q.has_quorum() => Some(format!(
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
            resp.headers_mut().insert(HEADER_STALE, v);
        }
        return resp;
    }
    if let Some(e) = store.unhealthy() {
        return crate::member::store_unhealthy(&e).into_response();
    }
    if req.headers().contains_key(FORWARDED) {
        if !store.is_leader() {
            return Failure::unavailable(NOT_RUN_HERE).into_response();
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

/// A forwarded request's answer from a manager that is not the leader any more: it did not run
/// there, so the forwarding manager may send it to the new leader.
const NOT_RUN_HERE: &str = "leadership moved while the request was forwarded; retry";

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
                // Only this answer proves the request did not run: anything else (a write
                // refused or timed out after the leader decided) may have been applied, and a
                // second try would answer for the first (a create "already exists").
                if r.status == 503 && r.body.contains(NOT_RUN_HERE) {
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
            // The leader took the request and did not answer in time: it may still apply it.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                ) =>
            {
                return Err(Failure::unavailable(format!(
                    "the leader did not answer ({}): the request may or may not have been applied; check, then retry",
                    s.message()
                )));
            }
            Err(s) => {
                last = Some(Failure::from_status(&s));
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| Failure::unavailable("could not reach the leader")))
}

/// Runs one request through this agent's own API (as a client on the socket would) and returns
/// the status and the body: for the daemon's own calls (a leaving manager demoting itself).
pub async fn call_local(
    agent: &Agent,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(StatusCode, bytes::Bytes), Failure> {
    use tower::ServiceExt;
    let router = agent
        .router
        .get()
        .cloned()
        .ok_or_else(|| Failure::unavailable("the API is not up yet"))?;
    let body = match body {
        Some(v) => {
            Body::from(serde_json::to_vec(&v).map_err(|e| Failure::internal(e.to_string()))?)
        }
        None => Body::empty(),
    };
    let req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body)
        .map_err(|e| Failure::internal(e.to_string()))?;
    let resp = router
        .oneshot(req)
        .await
        .map_err(|e| Failure::internal(e.to_string()))?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .map_err(|e| Failure::internal(e.to_string()))?;
    Ok((status, bytes))
}

/// The group that may use the API socket (mode 0660), if it exists.
pub const SOCKET_GROUP: &str = "netagent";

/// The API socket is root's: anyone who can write to its directory could replace it (and catch
/// the operator's commands), so a directory writable by others is refused.
fn refuse_open_directory(socket: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = socket.parent() else {
        return Ok(());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let meta =
        std::fs::metadata(dir).with_context(|| format!("cannot inspect {}", dir.display()))?;
    if meta.mode() & 0o002 != 0 {
        anyhow::bail!(
            "refusing to serve the API socket in {}: the directory is writable by every user, who could replace the socket; use a directory only root writes (default /run/netagent)",
            dir.display()
        );
    }
    Ok(())
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
    refuse_open_directory(path)?;
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    // root:netagent, when the operator made that group (members may drive the daemon).
    if let Ok(Some(group)) = nix::unistd::Group::from_name(SOCKET_GROUP) {
        nix::unistd::chown(path, None, Some(group.gid))
            .with_context(|| format!("cannot give {} to group {SOCKET_GROUP}", path.display()))?;
    }
    let app = app(agent.clone());
    let _ = agent.router.set(app.clone());
    tracing::info!(socket = %path.display(), "API listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("the API server failed")?;
    let _ = std::fs::remove_file(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_directory_writable_by_everyone_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("netagent-sockdir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("netagent.sock");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = refuse_open_directory(&sock).unwrap_err().to_string();
        assert!(err.contains("writable by every user"), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        refuse_open_directory(&sock).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn local_routes() {
        assert!(is_local("/_ping"));
        assert!(is_local("/swarm/join"));
        assert!(!is_local("/swarm"));
        assert!(worker_reads(&Method::GET, "/networks/x"));
        assert!(!worker_reads(&Method::DELETE, "/networks/x"));
    }
}
