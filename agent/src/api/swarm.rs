//! `/swarm` handlers: inspect, init, join, leave, update (settings, token rotation), and
//! autolock's unlock key (never set: netagent does not lock managers).

use std::sync::Arc;

use ::api::swarm::{InitRequest, JoinRequest, Swarm, UnlockKey};
use axum::Json;
use axum::extract::State;
use model::Kind;
use pki::JoinToken;
use store::{Batch, Change};

use super::ApiJson;
use super::query::{ApiQuery, ForceQuery, UpdateQuery, bool_value};
use crate::agent::{Agent, Init, Join};
use crate::error::{Failure, Result};
use crate::member::not_in_swarm;

/// `GET /swarm`.
pub async fn inspect(State(agent): State<Arc<Agent>>) -> Result<Json<Swarm>> {
    let member = agent.member().ok_or_else(not_in_swarm)?;
    let c = member.cluster()?;
    let (election, heartbeat) = super::system::raft_ticks(&agent);
    Ok(Json(Swarm {
        cluster: shown(&c, election, heartbeat),
        join_tokens: ::api::swarm::JoinTokens {
            worker: c.join_tokens.worker.clone(),
            manager: c.join_tokens.manager.clone(),
        },
    }))
}

/// The cluster as `GET /swarm` and `/info` show it: docker's fields, with the subject and key of
/// the root CA (and of the new root during a rotation).
pub(crate) fn shown(
    c: &model::Cluster,
    election: u64,
    heartbeat: u64,
) -> ::api::swarm::ClusterInfo {
    let mut info = ::api::swarm::cluster_info(c, election, heartbeat);
    let fill = |t: &mut ::api::swarm::TlsInfo| {
        if let Ok(i) = pki::tls::issuer_info_of_ca(&t.trust_root) {
            t.cert_issuer_subject = i.subject;
            t.cert_issuer_public_key = i.public_key;
        }
    };
    fill(&mut info.tls_info);
    if let Some(r) = info.root_rotation.as_mut() {
        fill(r);
    }
    info
}

pub(crate) fn refuse_availability(a: &str) -> Result<()> {
    if !a.is_empty() && a != "active" {
        return Err(Failure::bad_request(format!(
            "joining with availability {a:?} is not supported: join active, then `node update --availability {a}`"
        )));
    }
    Ok(())
}

/// docker's listen address names the cluster port; netagent's is its `--cluster-port`.
fn check_listen_addr(agent: &Agent, listen: &str) -> Result<()> {
    let port = listen.rsplit_once(':').map(|(_, p)| p).unwrap_or("");
    if listen.is_empty() || port.is_empty() || port.parse() == Ok(agent.cfg.cluster_port) {
        return Ok(());
    }
    Err(Failure::bad_request(format!(
        "invalid listen address {listen:?}: netagent listens on its cluster port {} on every address (--cluster-port); leave --listen-addr out",
        agent.cfg.cluster_port
    )))
}

fn non_empty(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.trim().to_string())
}

/// `POST /swarm/init`: answers the new node's id (a JSON string, as docker).
pub async fn init(
    State(agent): State<Arc<Agent>>,
    ApiJson(req): ApiJson<InitRequest>,
) -> Result<Json<String>> {
    check_listen_addr(&agent, &req.listen_addr)?;
    refuse_availability(&req.availability)?;
    if req.auto_lock_managers || req.spec.encryption_config.auto_lock_managers {
        return Err(Failure::bad_request(
            "autolock (--autolock) is not supported: netagent keeps no encrypted Raft log to lock",
        ));
    }
    let current = ::api::swarm::SwarmSpec::default();
    let settings = ::api::swarm::settings_update(&current, &req.spec)?;
    let port = match req.data_path_port {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| {
            Failure::bad_request(format!(
                "invalid --data-path-port {p}: use a UDP port in 1024-49151 (default 4789)"
            ))
        })?),
    };
    let mask = match req.subnet_size {
        0 => None,
        m => Some(u8::try_from(m).map_err(|_| {
            Failure::bad_request(format!(
                "invalid --default-addr-pool-mask-length {m}: use 1-30"
            ))
        })?),
    };
    let r = agent
        .init(Init {
            advertise_addr: non_empty(&req.advertise_addr),
            data_path_addr: non_empty(&req.data_path_addr),
            data_path_port: port,
            default_addr_pool: req.default_addr_pool,
            default_addr_pool_mask_length: mask,
            force_new_cluster: req.force_new_cluster,
            heartbeat_ms: (settings.heartbeat_period_ms > 0)
                .then_some(settings.heartbeat_period_ms),
            data_key_rotation_ms: (settings.data_key_rotation_ms > 0)
                .then_some(settings.data_key_rotation_ms),
            cert_expiry_ms: (settings.node_cert_expiry_ms > 0)
                .then_some(settings.node_cert_expiry_ms),
            ingress: crate::ingress::IngressOptions {
                subnet: non_empty(&req.ingress_subnet),
                mtu: (req.ingress_mtu != 0).then_some(req.ingress_mtu),
                ..Default::default()
            },
        })
        .await?;
    Ok(Json(r.node_id))
}

/// `POST /swarm/join`: tries the managers given, in order. Answers nothing on success (docker's
/// clients read `/info` for the role).
pub async fn join(
    State(agent): State<Arc<Agent>>,
    ApiJson(req): ApiJson<JoinRequest>,
) -> Result<()> {
    check_listen_addr(&agent, &req.listen_addr)?;
    refuse_availability(&req.availability)?;
    if req.join_token.trim().is_empty() {
        return Err(Failure::bad_request("a join token is required (--token)"));
    }
    let remotes: Vec<&String> = req
        .remote_addrs
        .iter()
        .filter(|a| !a.trim().is_empty())
        .collect();
    if remotes.is_empty() {
        return Err(Failure::bad_request(
            "the address of a manager is required (HOST:PORT)",
        ));
    }
    let mut last = None;
    for remote in remotes {
        let j = Join {
            token: req.join_token.clone(),
            remote_addr: remote.clone(),
            advertise_addr: non_empty(&req.advertise_addr),
            data_path_addr: non_empty(&req.data_path_addr),
            manager: req.require_manager,
        };
        match agent.join(j).await {
            Ok(_) => return Ok(()),
            // Only an unreachable manager is worth trying the next one for.
            Err(f) if f.code == crate::error::Code::Unavailable => last = Some(f),
            Err(f) => return Err(f),
        }
    }
    Err(last.unwrap_or_else(|| Failure::unavailable("no manager could be reached")))
}

/// `POST /swarm/leave?force=`.
pub async fn leave(
    State(agent): State<Arc<Agent>>,
    ApiQuery(q): ApiQuery<ForceQuery>,
) -> Result<()> {
    agent.leave(q.force()).await
}

/// `POST /swarm/update?version=&rotateWorkerToken=&rotateManagerToken=`: the dispatcher's
/// heartbeat period and new join tokens; a change to anything netagent does not apply is
/// refused.
pub async fn update(
    State(agent): State<Arc<Agent>>,
    ApiQuery(q): ApiQuery<UpdateQuery>,
    ApiJson(spec): ApiJson<::api::swarm::SwarmSpec>,
) -> Result<()> {
    let member = agent.member().ok_or_else(not_in_swarm)?;
    let c = member.cluster()?;
    if let Some(v) = q.version()?
        && v != c.meta.version
    {
        return Err(Failure::conflict(format!(
            "update out of sequence: the swarm is at version {}, not {v}; read it again (`GET /swarm`) and retry",
            c.meta.version
        )));
    }
    if bool_value(q.rotate_manager_unlock_key.as_deref()) {
        return Err(Failure::bad_request(
            "there is no unlock key to rotate: autolock is not supported",
        ));
    }
    let (election, heartbeat) = super::system::raft_ticks(&agent);
    let current = ::api::swarm::cluster_info(&c, election, heartbeat).spec;
    let settings = ::api::swarm::settings_update(&current, &spec)?;
    let mut patch = serde_json::Map::new();
    if settings != c.settings {
        patch.insert(
            "settings".into(),
            serde_json::to_value(&settings).map_err(|e| Failure::internal(e.to_string()))?,
        );
    }
    if spec.ca_config.force_rotate != c.ca_force_rotate {
        // docker's `swarm ca --rotate`: a new root CA, moved to without downtime.
        let start = crate::ca_rotation::start(&c, spec.ca_config.force_rotate)?;
        if let serde_json::Value::Object(m) = start {
            patch.extend(m);
        }
        tracing::info!(
            replacing = c.root_rotation.is_some(),
            "CA rotation started: a new root CA, cross-signed by the current one"
        );
    }
    let digest = || {
        pki::tls::cert_der_from_pem(&c.ca_cert_pem)
            .map(|d| pki::ca_digest(&d))
            .map_err(|e| Failure::internal(e.to_string()))
    };
    let mut tokens = serde_json::Map::new();
    if bool_value(q.rotate_worker_token.as_deref()) {
        tokens.insert(
            "worker".into(),
            JoinToken::generate(&digest()?).to_string().into(),
        );
    }
    if bool_value(q.rotate_manager_token.as_deref()) {
        tokens.insert(
            "manager".into(),
            JoinToken::generate(&digest()?).to_string().into(),
        );
    }
    if !tokens.is_empty() {
        patch.insert("join_tokens".into(), serde_json::Value::Object(tokens));
    }
    if bool_value(q.rotate_data_key.as_deref()) {
        patch.extend(crate::leader::data_key_rotation(&c, chrono::Utc::now()));
    }
    if patch.is_empty() {
        return Ok(());
    }
    member
        .write(Batch::one(Change::Patch {
            kind: Kind::Cluster,
            id: c.meta.id.clone(),
            patch: serde_json::Value::Object(patch),
            version: Some(c.meta.version),
        }))
        .await?;
    Ok(())
}

/// `GET /swarm/unlockkey`: autolock is never on, so there is no key.
pub async fn unlock_key(State(agent): State<Arc<Agent>>) -> Result<Json<UnlockKey>> {
    agent.member().ok_or_else(not_in_swarm)?;
    Ok(Json(UnlockKey::default()))
}

/// `POST /swarm/unlock`.
pub async fn unlock() -> Result<()> {
    Err(Failure::conflict(
        "Swarm is not locked: netagent does not lock managers (autolock is not supported)",
    ))
}
