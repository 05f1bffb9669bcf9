//! `/services`: list (`?status=true`), inspect, create, update (`?version=`), delete; and the
//! task spec both services and tasks carry.
//!
//! Tasks are processes: `ContainerSpec.Image` names the program when `Command` is empty, `Args`
//! follow (see `model::service::TaskTemplate::argv`); `Env` and `Labels` are kept. docker fields
//! with no meaning for a process (mounts, resources, restart policy, ...) are accepted and named in
//! the answer's `Warnings`; jobs and SCTP are refused.

use std::collections::BTreeMap;

use model::service::{
    EndpointMode, EndpointSpec as ModelEndpointSpec, NetworkAttachmentSpec,
    PortConfig as ModelPort, Protocol, PublishMode, ServiceMode,
};
use serde::{Deserialize, Serialize};

use crate::network::validate_name;
use crate::{Invalid, Meta};

type Extra = BTreeMap<String, serde_json::Value>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(rename = "Spec")]
    pub spec: ServiceSpec,
    #[serde(rename = "Endpoint", default)]
    pub endpoint: Endpoint,
    /// With `?status=true`.
    #[serde(
        rename = "ServiceStatus",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub service_status: Option<ServiceStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "Labels", default, with = "crate::null_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "TaskTemplate", default)]
    pub task_template: TaskSpec,
    #[serde(rename = "Mode", default)]
    pub mode: Mode,
    /// docker's deprecated place for networks; moved into `TaskTemplate.Networks` as docker does.
    #[serde(
        rename = "Networks",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub networks: Vec<NetworkAttachmentConfig>,
    #[serde(rename = "EndpointSpec", default)]
    pub endpoint_spec: Option<EndpointSpec>,
    /// Absent: docker's defaults (one task at a time).
    #[serde(
        rename = "UpdateConfig",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub update_config: Option<UpdateConfig>,
    /// RollbackConfig and fields docker does not have: accepted, warned about.
    #[serde(flatten)]
    pub other: Extra,
}

/// How an update rolls out. netagent keeps the parallelism; the rest is accepted and warned
/// about when it differs from docker's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks replaced at a time; 0 (or absent): all at once, as docker's API says.
    #[serde(rename = "Parallelism", default)]
    pub parallelism: u64,
    /// Delay, FailureAction, Monitor, MaxFailureRatio, Order.
    #[serde(flatten)]
    pub other: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Never null in answers (the docker CLI dereferences it).
    #[serde(rename = "ContainerSpec", default)]
    pub container_spec: Option<ContainerSpec>,
    #[serde(rename = "Placement", default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    #[serde(
        rename = "Networks",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub networks: Vec<NetworkAttachmentConfig>,
    #[serde(rename = "ForceUpdate", default)]
    pub force_update: u64,
    /// Resources, RestartPolicy, LogDriver, Runtime, ...: accepted, warned about.
    #[serde(flatten)]
    pub other: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    #[serde(rename = "Image", default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(
        rename = "Labels",
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        rename = "Command",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub command: Vec<String>,
    #[serde(
        rename = "Args",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub args: Vec<String>,
    #[serde(
        rename = "Env",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub env: Vec<String>,
    /// Mounts, User, Dir, Healthcheck, ...: accepted, warned about.
    #[serde(flatten)]
    pub other: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    #[serde(
        rename = "Constraints",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub constraints: Vec<String>,
    /// Preferences, MaxReplicas, Platforms: accepted, warned about.
    #[serde(flatten)]
    pub other: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachmentConfig {
    /// A network id (docker's CLI resolves names first); a name or unique id prefix is accepted.
    #[serde(rename = "Target", default)]
    pub target: String,
    #[serde(
        rename = "Aliases",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub aliases: Vec<String>,
    #[serde(
        rename = "DriverOpts",
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub driver_opts: BTreeMap<String, String>,
}

/// `{"Replicated": {"Replicas": 3}}` or `{"Global": {}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mode {
    #[serde(
        rename = "Replicated",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub replicated: Option<Replicated>,
    #[serde(rename = "Global", default, skip_serializing_if = "Option::is_none")]
    pub global: Option<Empty>,
    #[serde(
        rename = "ReplicatedJob",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub replicated_job: Option<serde_json::Value>,
    #[serde(rename = "GlobalJob", default, skip_serializing_if = "Option::is_none")]
    pub global_job: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replicated {
    /// Signed so that a negative count gets a clear error rather than a decoding one.
    #[serde(rename = "Replicas", default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    /// "vip" (the default) or "dnsrr".
    #[serde(rename = "Mode", default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
    #[serde(
        rename = "Ports",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub ports: Vec<PortConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    #[serde(rename = "Name", default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// "tcp" (the default) or "udp".
    #[serde(rename = "Protocol", default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(rename = "TargetPort", default)]
    pub target_port: u32,
    #[serde(rename = "PublishedPort", default)]
    pub published_port: u32,
    /// "ingress" (the default) or "host".
    #[serde(
        rename = "PublishMode",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub publish_mode: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(rename = "Spec", default)]
    pub spec: EndpointSpec,
    #[serde(
        rename = "Ports",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub ports: Vec<PortConfig>,
    #[serde(
        rename = "VirtualIPs",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub virtual_ips: Vec<VirtualIp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualIp {
    #[serde(rename = "NetworkID", default)]
    pub network_id: String,
    #[serde(rename = "Addr", default)]
    pub addr: String,
}

/// docker's `ServiceStatus` (`GET /services?status=true`): what `service ls` shows as REPLICAS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Slots (global: nodes) with a running task that should run.
    #[serde(rename = "RunningTasks")]
    pub running_tasks: u64,
    /// Replicas, or eligible nodes of a global service.
    #[serde(rename = "DesiredTasks")]
    pub desired_tasks: u64,
    #[serde(rename = "CompletedTasks", default)]
    pub completed_tasks: u64,
}

/// Answer of `POST /services/create`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateResponse {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(
        rename = "Warnings",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub warnings: Vec<String>,
}

/// Answer of `POST /services/{id}/update`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateResponse {
    #[serde(
        rename = "Warnings",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub warnings: Vec<String>,
}

/// docker's `service ls` filters.
pub const LIST_FILTERS: &[&str] = &["id", "label", "mode", "name"];

/// "replicated" or "global".
pub fn mode_name(m: &Mode) -> &'static str {
    if m.global.is_some() {
        "global"
    } else if m.replicated_job.is_some() {
        "replicated-job"
    } else if m.global_job.is_some() {
        "global-job"
    } else {
        "replicated"
    }
}

pub fn matches(f: &crate::Filters, s: &model::Service) -> bool {
    let mode = match s.spec.mode {
        ServiceMode::Replicated { .. } => "replicated",
        ServiceMode::Global => "global",
    };
    f.matches("id", |v| s.meta.id.starts_with(v))
        && f.matches("name", |v| s.spec.name.starts_with(v))
        && f.matches("mode", |v| v == mode)
        && f.match_labels(&s.spec.labels)
}

/// Why docker fields netagent does not use are ignored, for warnings.
fn ignored(path: &str, extra: &Extra, why: &str, warnings: &mut Vec<String>) {
    for (k, v) in extra {
        if !crate::is_empty_value(v) {
            warnings.push(format!("{path}{k} is ignored: {why}"));
        }
    }
}

pub fn replicas_value(n: i64) -> Result<u64, Invalid> {
    u64::try_from(n).map_err(|_| {
        Invalid::new(format!(
            "invalid replicas value {n}: must be a non-negative integer"
        ))
    })
}

fn mode_to_model(m: &Mode) -> Result<ServiceMode, Invalid> {
    if m.replicated_job.is_some() || m.global_job.is_some() {
        return Err(Invalid::new(
            "job services (replicated-job, global-job) are not supported: use replicated or global",
        ));
    }
    match (&m.replicated, &m.global) {
        (Some(_), Some(_)) => Err(Invalid::new(
            "a service is either replicated or global: give one of Mode.Replicated and Mode.Global",
        )),
        (_, Some(_)) => Ok(ServiceMode::Global),
        (Some(r), None) => Ok(ServiceMode::Replicated {
            replicas: r.replicas.map(replicas_value).transpose()?.unwrap_or(1),
        }),
        (None, None) => Ok(ServiceMode::Replicated { replicas: 1 }),
    }
}

fn endpoint_mode_of(mode: &str) -> Result<EndpointMode, Invalid> {
    match mode {
        "" | "vip" => Ok(EndpointMode::Vip),
        "dnsrr" => Ok(EndpointMode::Dnsrr),
        other => Err(Invalid::new(format!(
            "invalid endpoint mode {other:?}: use vip or dnsrr"
        ))),
    }
}

fn port_to_model(p: &PortConfig) -> Result<ModelPort, Invalid> {
    let protocol = match p.protocol.as_str() {
        "" | "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => {
            return Err(Invalid::new(format!(
                "invalid port protocol {other:?}: use tcp or udp (sctp is not supported)"
            )));
        }
    };
    let mode = match p.publish_mode.as_str() {
        "" | "ingress" => PublishMode::Ingress,
        "host" => PublishMode::Host,
        other => {
            return Err(Invalid::new(format!(
                "invalid publish mode {other:?}: use ingress or host"
            )));
        }
    };
    let port = |what: &str, n: u32, zero_ok: bool| -> Result<u16, Invalid> {
        match u16::try_from(n) {
            Ok(0) if !zero_ok => Err(Invalid::new(format!(
                "invalid {what} 0: give a port between 1 and 65535"
            ))),
            Ok(v) => Ok(v),
            Err(_) => Err(Invalid::new(format!(
                "invalid {what} {n}: give a port between 1 and 65535"
            ))),
        }
    };
    Ok(ModelPort {
        published: port("published port", p.published_port, true)?,
        target: port("target port", p.target_port, false)?,
        protocol,
        mode,
    })
}

/// docker's `PortConfig` of a stored port.
pub fn port(p: &ModelPort) -> PortConfig {
    PortConfig {
        name: String::new(),
        protocol: match p.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
        .into(),
        target_port: u32::from(p.target),
        published_port: u32::from(p.published),
        publish_mode: match p.mode {
            PublishMode::Ingress => "ingress",
            PublishMode::Host => "host",
        }
        .into(),
    }
}

fn check_env(env: &[String]) -> Result<(), Invalid> {
    for e in env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() && !k.contains(char::is_whitespace) => {}
            _ => {
                return Err(Invalid::new(format!(
                    "invalid environment variable {e:?}: use KEY=VALUE"
                )));
            }
        }
    }
    Ok(())
}

fn check_labels<'a>(keys: impl IntoIterator<Item = &'a String>) -> Result<(), Invalid> {
    if keys.into_iter().any(|k| k.is_empty()) {
        return Err(Invalid::new("a label needs a key (--label key[=value])"));
    }
    Ok(())
}

/// A task spec as the model stores it; its networks are kept apart (they are the service's).
pub fn task_spec_to_model(
    t: &TaskSpec,
    warnings: &mut Vec<String>,
) -> Result<model::service::TaskTemplate, Invalid> {
    let c = t.container_spec.clone().unwrap_or_default();
    ignored(
        "TaskTemplate.",
        &t.other,
        "tasks are processes started by netagent (no resources, restart policy, log driver or runtime settings)",
        warnings,
    );
    ignored(
        "TaskTemplate.ContainerSpec.",
        &c.other,
        "tasks are processes, not containers",
        warnings,
    );
    let placement = t.placement.clone().unwrap_or_default();
    ignored(
        "TaskTemplate.Placement.",
        &placement.other,
        "netagent places by constraints only",
        warnings,
    );
    check_env(&c.env)?;
    check_labels(c.labels.keys())?;
    let tpl = model::service::TaskTemplate {
        image: c.image.trim().to_string(),
        command: c.command,
        args: c.args,
        labels: c.labels,
        env: c.env,
        constraints: placement.constraints,
        force_update: t.force_update,
    };
    if tpl.argv().first().is_none_or(|p| p.is_empty()) {
        return Err(Invalid::new(
            "a service needs a program: give the command after the options (e.g. `netctl service create --name web -- sleep infinity`, or `docker service create --name web busybox httpd -f`)",
        ));
    }
    Ok(tpl)
}

/// A service spec as the model stores it, and warnings for what was accepted but means nothing
/// to netagent. Network targets are left as given (names, ids or prefixes): the daemon resolves
/// them against the swarm's networks.
pub fn spec_to_model(
    s: &ServiceSpec,
) -> Result<(model::service::ServiceSpec, Vec<String>), Invalid> {
    let mut warnings = Vec::new();
    validate_name("service", &s.name)?;
    check_labels(s.labels.keys())?;
    ignored(
        "",
        &s.other,
        "netagent keeps no rollback settings",
        &mut warnings,
    );
    let update = match &s.update_config {
        None => model::service::UpdateConfig::default(),
        Some(u) => {
            update_extras_ignored(&u.other, &mut warnings);
            model::service::UpdateConfig {
                parallelism: u.parallelism,
            }
        }
    };
    let mode = mode_to_model(&s.mode)?;
    let task = task_spec_to_model(&s.task_template, &mut warnings)?;
    let nets = if s.task_template.networks.is_empty() {
        &s.networks
    } else {
        &s.task_template.networks
    };
    let mut networks = Vec::new();
    for n in nets {
        if n.target.trim().is_empty() {
            return Err(Invalid::new(
                "a network attachment needs a Target (network id or name)",
            ));
        }
        if n.aliases.iter().any(|a| a.is_empty()) {
            return Err(Invalid::new(format!(
                "an alias on network {} is empty",
                n.target
            )));
        }
        if !n.driver_opts.is_empty() {
            warnings.push(format!(
                "driver options of the attachment to {} are ignored: overlay attachments take none",
                n.target
            ));
        }
        networks.push(NetworkAttachmentSpec {
            target: n.target.clone(),
            aliases: n.aliases.clone(),
        });
    }
    let es = s.endpoint_spec.clone().unwrap_or_default();
    let endpoint = ModelEndpointSpec {
        mode: endpoint_mode_of(&es.mode)?,
        ports: es
            .ports
            .iter()
            .map(port_to_model)
            .collect::<Result<_, _>>()?,
    };
    if endpoint.mode == EndpointMode::Dnsrr
        && endpoint
            .ports
            .iter()
            .any(|p| p.mode == PublishMode::Ingress)
    {
        return Err(Invalid::new(
            "port published with ingress mode can't be used with dnsrr mode: publish with mode=host, or use --endpoint-mode vip",
        ));
    }
    Ok((
        model::service::ServiceSpec {
            name: s.name.clone(),
            labels: s.labels.clone(),
            mode,
            task,
            networks,
            endpoint,
            update,
        },
        warnings,
    ))
}

/// The UpdateConfig in docker's shape (the fields docker's Go type always has, as the docker
/// CLI prints them): the old task serves until its replacement runs ("start-first"; a service
/// with host-mode ports rolls stop-first), and a replacement that keeps failing holds the
/// update ("pause").
fn update_config(u: &model::service::UpdateConfig) -> UpdateConfig {
    let mut other = Extra::new();
    other.insert("FailureAction".into(), "pause".into());
    other.insert("MaxFailureRatio".into(), 0.into());
    other.insert("Order".into(), "start-first".into());
    UpdateConfig {
        parallelism: u.parallelism,
        other,
    }
}

/// Warns about the UpdateConfig fields that differ from docker's defaults: netagent moves on as
/// soon as the replacements have run for the settle time, and holds the update while one keeps
/// failing (docker's "pause").
fn update_extras_ignored(other: &Extra, warnings: &mut Vec<String>) {
    let default = |k: &str, v: &serde_json::Value| match k {
        "FailureAction" => v == "pause",
        // The docker CLI's default, and what netagent does (see `update_config`).
        "Order" => v == "stop-first" || v == "start-first",
        // The docker CLI fills in its default of 5 s when any --update-* flag is given.
        "Monitor" => v.as_u64() == Some(5_000_000_000) || crate::is_empty_value(v),
        _ => crate::is_empty_value(v),
    };
    for (k, v) in other {
        if !default(k, v) {
            warnings.push(format!(
                "UpdateConfig.{k} is ignored: netagent replaces Parallelism tasks at a time, the next ones as soon as the replacements run, and holds the update while a replacement fails"
            ));
        }
    }
}

/// The task spec in docker's shape (`networks`: the service's attachments, or a task's).
pub fn task_spec(t: &model::service::TaskTemplate, networks: &[NetworkAttachmentSpec]) -> TaskSpec {
    TaskSpec {
        container_spec: Some(ContainerSpec {
            image: t.image.clone(),
            labels: t.labels.clone(),
            command: t.command.clone(),
            args: t.args.clone(),
            env: t.env.clone(),
            other: Extra::new(),
        }),
        placement: Some(Placement {
            constraints: t.constraints.clone(),
            other: Extra::new(),
        }),
        networks: networks
            .iter()
            .map(|n| NetworkAttachmentConfig {
                target: n.target.clone(),
                aliases: n.aliases.clone(),
                driver_opts: BTreeMap::new(),
            })
            .collect(),
        force_update: t.force_update,
        other: Extra::new(),
    }
}

fn endpoint_mode_name(m: EndpointMode) -> &'static str {
    match m {
        EndpointMode::Vip => "vip",
        EndpointMode::Dnsrr => "dnsrr",
    }
}

/// A service in docker's shape; `status` with `?status=true`.
pub fn service(s: &model::Service, status: Option<ServiceStatus>) -> Service {
    let endpoint_spec = EndpointSpec {
        mode: endpoint_mode_name(s.spec.endpoint.mode).into(),
        ports: s.spec.endpoint.ports.iter().map(port).collect(),
    };
    Service {
        id: s.meta.id.clone(),
        meta: Meta::from(&s.meta),
        spec: ServiceSpec {
            name: s.spec.name.clone(),
            labels: s.spec.labels.clone(),
            task_template: task_spec(&s.spec.task, &s.spec.networks),
            mode: match s.spec.mode {
                ServiceMode::Replicated { replicas } => Mode {
                    replicated: Some(Replicated {
                        replicas: Some(i64::try_from(replicas).unwrap_or(i64::MAX)),
                    }),
                    ..Default::default()
                },
                ServiceMode::Global => Mode {
                    global: Some(Empty {}),
                    ..Default::default()
                },
            },
            networks: Vec::new(),
            endpoint_spec: Some(endpoint_spec.clone()),
            update_config: Some(update_config(&s.spec.update)),
            other: Extra::new(),
        },
        endpoint: Endpoint {
            ports: s.ports.iter().map(port).collect(),
            spec: endpoint_spec,
            virtual_ips: s
                .virtual_ips
                .iter()
                .map(|v| VirtualIp {
                    network_id: v.network_id.clone(),
                    addr: v.addr.to_string(),
                })
                .collect(),
        },
        service_status: status,
    }
}

/// The argv a task spec runs, for tables ("COMMAND" in netctl).
pub fn argv(t: &TaskSpec) -> Vec<String> {
    let c = t.container_spec.clone().unwrap_or_default();
    model::service::TaskTemplate {
        image: c.image,
        command: c.command,
        args: c.args,
        ..Default::default()
    }
    .argv()
}

#[cfg(test)]
mod tests;
