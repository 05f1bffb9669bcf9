//! The fuzz entry point of the API's request bodies ([`body`]): the body decoded as
//! [`super::ApiJson`] does, then checked and converted to the stored model as its handler does,
//! up to (not including) the leader's decisions and the store write. Never panics.

use ::api::network::CreateRequest;
use ::api::node::NodeSpec;
use ::api::service::ServiceSpec;
use ::api::swarm::{InitRequest, JoinRequest, SwarmSpec};

use super::parse_body;
use crate::error::Result;
use crate::ingress::IngressOptions;

/// The routes whose bodies [`body`] decodes; the first byte of a fuzz input picks one
/// (modulo their number), the rest is the body.
pub const ROUTES: &[&str] = &[
    "POST /services/create",
    "POST /services/{id}/update",
    "POST /networks/create",
    "POST /swarm/init",
    "POST /swarm/join",
    "POST /swarm/update",
    "POST /nodes/{id}/update",
    "POST /ingress/recreate",
    "?filters=",
    "/v1.NN/ path prefix",
];

/// Decodes `bytes` as the body of `ROUTES[route]` and converts it as the handler does; returns
/// whether the handler would go on (to the leader's decisions and the store).
pub fn body(route: u8, bytes: &[u8]) -> bool {
    route_body(usize::from(route) % ROUTES.len(), bytes).is_ok()
}

/// One input for [`body`]: the route's index, then the body.
pub fn input(route: &str, body: &[u8]) -> Option<Vec<u8>> {
    let i = ROUTES.iter().position(|r| *r == route)?;
    let mut v = vec![u8::try_from(i).ok()?];
    v.extend_from_slice(body);
    Some(v)
}

fn route_body(route: usize, bytes: &[u8]) -> Result<()> {
    match route {
        // Create and update convert the same spec; the state has no networks, so a spec naming
        // one stops at the network lookup (still the handler's path).
        0 | 1 => {
            let spec: ServiceSpec = parse_body(bytes)?;
            let state = orchestrator::ClusterState::default();
            super::services::model_spec(&state, &spec)?;
        }
        2 => {
            let req: CreateRequest = parse_body(bytes)?;
            ::api::network::spec_of(&req)?;
        }
        3 => {
            let req: InitRequest = parse_body(bytes)?;
            super::swarm::refuse_availability(&req.availability)?;
            ::api::swarm::settings_update(&SwarmSpec::default(), &req.spec)?;
        }
        4 => {
            let req: JoinRequest = parse_body(bytes)?;
            super::swarm::refuse_availability(&req.availability)?;
        }
        5 => {
            let spec: SwarmSpec = parse_body(bytes)?;
            let current = ::api::swarm::cluster_info(crate::fuzz::cluster(), 10, 1).spec;
            ::api::swarm::settings_update(&current, &spec)?;
        }
        6 => {
            let spec: NodeSpec = parse_body(bytes)?;
            let current = model::node::NodeSpec {
                role: model::node::Role::Worker,
                availability: model::node::Availability::Active,
                labels: Default::default(),
            };
            ::api::node::spec_to_model(&spec, &current)?;
        }
        7 => {
            let req: IngressOptions = parse_body(bytes)?;
            crate::ingress::spec(&req)?;
        }
        8 => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| crate::error::Failure::bad_request(e.to_string()))?;
            ::api::Filters::parse(text)?;
        }
        _ => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| crate::error::Failure::bad_request(e.to_string()))?;
            ::api::version::split(text)?;
        }
    }
    Ok(())
}
