//! `service create / update / scale`: docker's flags made into a `ServiceSpec` (create), or
//! applied to the spec read from the API and written back at its version (update, scale), as
//! the docker CLI does.

use ::api::network::NetworkResource;
use ::api::service::{
    ContainerSpec, CreateResponse, Empty, EndpointSpec, Mode, NetworkAttachmentConfig, Placement,
    Replicated, Service, ServiceSpec, TaskSpec, UpdateConfig, UpdateResponse,
};
use anyhow::{Result, anyhow, bail};
use clap::Args;

use super::progress::{WaitArgs, wait_converged};
use crate::cli::client::{Client, esc, out_of_sequence};
use crate::cli::network::key_values;

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name.
    #[arg(long)]
    name: Option<String>,
    /// Number of tasks (replicated mode).
    #[arg(long, allow_hyphen_values = true)]
    replicas: Option<String>,
    /// Service mode (replicated or global).
    #[arg(long)]
    mode: Option<String>,
    /// Network attachments: NAME, or name=NAME,alias=ALIAS... (repeatable).
    #[arg(long)]
    network: Vec<String>,
    /// Endpoint mode (vip or dnsrr).
    #[arg(long = "endpoint-mode")]
    endpoint_mode: Option<String>,
    /// Placement constraints, e.g. node.role==worker (repeatable).
    #[arg(long)]
    constraint: Vec<String>,
    /// Publish a port: [PUBLISHED:]TARGET[/PROTOCOL], or
    /// published=P,target=T,protocol=tcp|udp,mode=ingress|host (repeatable).
    #[arg(long, short = 'p')]
    publish: Vec<String>,
    /// Set environment variables (KEY=VALUE, or KEY to take netctl's value), repeatable.
    #[arg(long, short = 'e')]
    env: Vec<String>,
    /// Service labels (key=value), repeatable.
    #[arg(long, short = 'l')]
    label: Vec<String>,
    /// Tasks replaced at a time when the service is updated (0: all at once); default 1.
    #[arg(long = "update-parallelism")]
    update_parallelism: Option<u64>,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// The command every task runs, and its arguments (after `--` if they look like options).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Number of tasks.
    #[arg(long, allow_hyphen_values = true)]
    replicas: Option<String>,
    /// Add a network (NAME, or name=NAME,alias=ALIAS...), repeatable.
    #[arg(long = "network-add")]
    network_add: Vec<String>,
    /// Remove a network, repeatable.
    #[arg(long = "network-rm")]
    network_rm: Vec<String>,
    /// Add or update a placement constraint, repeatable.
    #[arg(long = "constraint-add")]
    constraint_add: Vec<String>,
    /// Remove a constraint, repeatable.
    #[arg(long = "constraint-rm")]
    constraint_rm: Vec<String>,
    /// Add or update an environment variable (KEY=VALUE), repeatable.
    #[arg(long = "env-add")]
    env_add: Vec<String>,
    /// Remove an environment variable (KEY), repeatable.
    #[arg(long = "env-rm")]
    env_rm: Vec<String>,
    /// Add or update a service label (key=value), repeatable.
    #[arg(long = "label-add")]
    label_add: Vec<String>,
    /// Remove a label by its key, repeatable.
    #[arg(long = "label-rm")]
    label_rm: Vec<String>,
    /// Endpoint mode (vip or dnsrr).
    #[arg(long = "endpoint-mode")]
    endpoint_mode: Option<String>,
    /// Add or update a published port (as --publish), repeatable.
    #[arg(long = "publish-add")]
    publish_add: Vec<String>,
    /// Remove a published port (PUBLISHED[/PROTOCOL], or the long syntax), repeatable.
    #[arg(long = "publish-rm")]
    publish_rm: Vec<String>,
    /// Replace the command (the whole argv, as one shell-like string split on spaces).
    #[arg(long)]
    args: Option<String>,
    /// Force update even if no changes require it (every task is replaced).
    #[arg(long)]
    force: bool,
    /// Tasks replaced at a time, from this update on (0: all at once).
    #[arg(long = "update-parallelism")]
    update_parallelism: Option<u64>,
    #[command(flatten)]
    pub wait: WaitArgs,
    service: String,
}

/// `--replicas` as docker checks it, with the API's wording.
pub fn parse_replicas(s: &str) -> Result<i64> {
    let n: i64 = s
        .trim()
        .parse()
        .map_err(|_| anyhow!("invalid replicas value {s}: must be a non-negative integer"))?;
    if n < 0 {
        bail!("invalid replicas value {n}: must be a non-negative integer");
    }
    Ok(n)
}

/// `--network NAME` or docker's long form `--network name=NAME,alias=A,alias=B`.
pub fn network_ref(s: &str) -> Result<NetworkAttachmentConfig> {
    if !s.contains('=') {
        if s.is_empty() {
            bail!("--network needs a network name");
        }
        return Ok(NetworkAttachmentConfig {
            target: s.to_string(),
            ..Default::default()
        });
    }
    let mut r = NetworkAttachmentConfig::default();
    for field in s.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid field {field:?} in --network {s:?}: use key=value"))?;
        match k.trim().to_ascii_lowercase().as_str() {
            "name" | "target" => r.target = v.to_string(),
            "alias" => r.aliases.push(v.to_string()),
            other => bail!(
                "invalid field key {other:?} in --network {s:?}: use name=NETWORK and alias=ALIAS"
            ),
        }
    }
    if r.target.is_empty() {
        bail!("--network {s:?} names no network: add name=NETWORK");
    }
    Ok(r)
}

/// `--env KEY=VALUE`, or `--env KEY` taking netctl's own value, as docker does.
fn env_values(items: &[String]) -> Result<Vec<String>> {
    items
        .iter()
        .map(|e| {
            if e.contains('=') {
                return Ok(e.clone());
            }
            match std::env::var(e) {
                Ok(v) => Ok(format!("{e}={v}")),
                Err(_) => bail!(
                    "invalid environment variable {e:?}: use KEY=VALUE (KEY alone takes netctl's own value, and {e} is not set)"
                ),
            }
        })
        .collect()
}

/// The container spec of an argv: the program names the image (what `service ls` shows), the
/// command is the whole argv (what `service inspect` shows and the task runs).
fn container_of(
    argv: Vec<String>,
    env: Vec<String>,
    labels_keep: Option<&ContainerSpec>,
) -> ContainerSpec {
    ContainerSpec {
        image: argv.first().cloned().unwrap_or_default(),
        command: argv,
        args: Vec::new(),
        env,
        labels: labels_keep.map(|c| c.labels.clone()).unwrap_or_default(),
        other: Default::default(),
    }
}

pub async fn create(client: &Client, a: CreateArgs) -> Result<()> {
    let replicas = a.replicas.as_deref().map(parse_replicas).transpose()?;
    let mode = match a.mode.as_deref().unwrap_or("replicated") {
        "replicated" => Mode {
            replicated: Some(Replicated { replicas }),
            ..Default::default()
        },
        "global" => {
            if replicas.is_some() {
                bail!(
                    "replicas can only be used with replicated mode: drop --replicas, or use --mode replicated"
                );
            }
            Mode {
                global: Some(Empty {}),
                ..Default::default()
            }
        }
        other => bail!("invalid mode {other:?}: use replicated or global"),
    };
    if a.command.first().is_none_or(|c| c.is_empty()) {
        bail!(
            "a service needs a command: give it after the options, e.g. `netctl service create --name web -- sleep infinity`"
        );
    }
    let networks = a
        .network
        .iter()
        .map(|n| network_ref(n))
        .collect::<Result<Vec<_>>>()?;
    let spec = ServiceSpec {
        name: a.name.unwrap_or_default(),
        labels: key_values(&a.label, "label (--label)")?,
        task_template: TaskSpec {
            container_spec: Some(container_of(a.command, env_values(&a.env)?, None)),
            placement: Some(Placement {
                constraints: a.constraint,
                other: Default::default(),
            }),
            networks,
            force_update: 0,
            other: Default::default(),
        },
        mode,
        endpoint_spec: Some(EndpointSpec {
            mode: a.endpoint_mode.unwrap_or_default(),
            ports: a
                .publish
                .iter()
                .map(|p| super::publish::parse(p))
                .collect::<Result<_>>()?,
        }),
        update_config: a.update_parallelism.map(|parallelism| UpdateConfig {
            parallelism,
            other: Default::default(),
        }),
        ..Default::default()
    };
    let created: CreateResponse = client
        .post("/services/create", serde_json::to_value(&spec)?)
        .await?
        .parse()?;
    for w in &created.warnings {
        crate::cli::warn(w);
    }
    println!("{}", created.id);
    if !a.wait.detach {
        wait_converged(client, &created.id, &a.wait).await?;
    }
    Ok(())
}

async fn inspect(client: &Client, service: &str) -> Result<Service> {
    client
        .get(&format!("/services/{}", esc(service)))
        .await?
        .parse()
}

/// The network's id, as docker's CLI resolves `--network-add/rm` names.
async fn network_id(client: &Client, reference: &str) -> Result<NetworkResource> {
    client
        .get(&format!("/networks/{}", esc(reference)))
        .await?
        .parse()
}

/// Writes `spec` back at the version `svc` was read at.
async fn write(client: &Client, svc: &Service, spec: &ServiceSpec) -> Result<()> {
    let u: UpdateResponse = client
        .post(
            &format!(
                "/services/{}/update?version={}",
                esc(&svc.id),
                svc.meta.version.index
            ),
            serde_json::to_value(spec)?,
        )
        .await?
        .parse()?;
    for w in &u.warnings {
        crate::cli::warn(w);
    }
    Ok(())
}

fn set_replicas(spec: &mut ServiceSpec, n: i64) -> Result<()> {
    if spec.mode.global.is_some() {
        bail!(
            "service {} is global: replicas (and scale) can only be used with replicated mode",
            spec.name
        );
    }
    spec.mode.replicated = Some(Replicated { replicas: Some(n) });
    Ok(())
}

fn env_key(e: &str) -> &str {
    e.split_once('=').map(|(k, _)| k).unwrap_or(e)
}

/// Applies `service update`'s flags to the spec read (the caller writes it back).
async fn apply_update(
    client: &Client,
    spec: &mut ServiceSpec,
    allocated: &[::api::service::PortConfig],
    a: &UpdateArgs,
) -> Result<()> {
    if let Some(r) = a.replicas.as_deref() {
        set_replicas(spec, parse_replicas(r)?)?;
    }
    if let Some(mode) = &a.endpoint_mode {
        spec.endpoint_spec.get_or_insert_with(Default::default).mode = mode.clone();
    }
    if let Some(p) = a.update_parallelism {
        // Written with the rest of the update, so it governs this update's roll-out, as with
        // docker.
        spec.update_config
            .get_or_insert_with(Default::default)
            .parallelism = p;
    }
    super::publish::update(spec, allocated, &a.publish_add, &a.publish_rm)?;
    let tpl = &mut spec.task_template;
    if let Some(args) = a.args.as_deref() {
        let argv: Vec<String> = args.split_whitespace().map(str::to_string).collect();
        let old = tpl.container_spec.clone().unwrap_or_default();
        let mut c = container_of(argv, old.env.clone(), Some(&old));
        c.other = old.other;
        tpl.container_spec = Some(c);
    }
    if a.force {
        tpl.force_update += 1;
    }
    // Networks: removals (by name, id or prefix) first, then additions.
    for r in &a.network_rm {
        let n = network_id(client, r).await?;
        tpl.networks
            .retain(|x| x.target != n.id && x.target != n.name);
    }
    for add in &a.network_add {
        let mut att = network_ref(add)?;
        let n = network_id(client, &att.target).await?;
        if tpl
            .networks
            .iter()
            .any(|x| x.target == n.id || x.target == n.name)
        {
            bail!(
                "service {} is already attached to network {}",
                spec.name,
                n.name
            );
        }
        att.target = n.id;
        tpl.networks.push(att);
    }
    // Constraints: compared without spaces, as docker does.
    let squash = |c: &str| c.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let placement = tpl.placement.get_or_insert_with(Default::default);
    placement
        .constraints
        .retain(|c| !a.constraint_rm.iter().any(|r| squash(r) == squash(c)));
    for c in &a.constraint_add {
        if !placement.constraints.iter().any(|x| squash(x) == squash(c)) {
            placement.constraints.push(c.clone());
        }
    }
    // Environment: by key.
    let container = tpl.container_spec.get_or_insert_with(Default::default);
    container
        .env
        .retain(|e| !a.env_rm.iter().any(|k| env_key(e) == k));
    for e in env_values(&a.env_add)? {
        let key = env_key(&e).to_string();
        container.env.retain(|x| env_key(x) != key);
        container.env.push(e);
    }
    // Labels.
    for k in &a.label_rm {
        spec.labels.remove(k);
    }
    spec.labels
        .extend(key_values(&a.label_add, "label (--label-add)")?);
    Ok(())
}

pub async fn update(client: &Client, a: UpdateArgs) -> Result<()> {
    // Read, change, write at the version read; again if a follower's replica trailed.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let svc = inspect(client, &a.service).await?;
        let mut spec = svc.spec.clone();
        apply_update(client, &mut spec, &svc.endpoint.ports, &a).await?;
        match write(client, &svc, &spec).await {
            Err(e) if out_of_sequence(&e) && attempt < 10 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => break other?,
        }
    }
    println!("{}", a.service);
    if !a.wait.detach {
        wait_converged(client, &a.service, &a.wait).await?;
    }
    Ok(())
}

pub async fn scale(client: &Client, wait: WaitArgs, scales: Vec<String>) -> Result<()> {
    let mut wanted = Vec::new();
    for s in &scales {
        let Some((name, n)) = s.split_once('=') else {
            bail!("invalid scale specifier {s:?}: use SERVICE=REPLICAS, e.g. web=3");
        };
        if name.is_empty() {
            bail!("invalid scale specifier {s:?}: use SERVICE=REPLICAS, e.g. web=3");
        }
        wanted.push((name.to_string(), parse_replicas(n)?));
    }
    let mut failed = Vec::new();
    let mut scaled = Vec::new();
    for (name, n) in wanted {
        let r = async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let svc = inspect(client, &name).await?;
                let mut spec = svc.spec.clone();
                set_replicas(&mut spec, n)?;
                match write(client, &svc, &spec).await {
                    Err(e) if out_of_sequence(&e) && attempt < 10 => {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    other => return other,
                }
            }
        }
        .await;
        match r {
            Ok(()) => {
                println!("{name} scaled to {n}");
                scaled.push(name);
            }
            Err(e) => failed.push(anyhow!("{name}: {e:#}")),
        }
    }
    if !wait.detach {
        for name in &scaled {
            if let Err(e) = wait_converged(client, name, &wait).await {
                failed.push(e);
            }
        }
    }
    crate::cli::collect_errors(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_and_networks_flags() {
        assert_eq!(parse_replicas("3").unwrap(), 3);
        assert_eq!(parse_replicas("0").unwrap(), 0);
        assert_eq!(
            parse_replicas("-1").unwrap_err().to_string(),
            "invalid replicas value -1: must be a non-negative integer"
        );
        assert!(parse_replicas("x").is_err());
        assert_eq!(network_ref("red").unwrap().target, "red");
        let r = network_ref("name=red,alias=a,alias=b").unwrap();
        assert_eq!((r.target.as_str(), r.aliases.len()), ("red", 2));
        assert!(network_ref("alias=a").is_err());
        assert!(network_ref("name=red,driver=x").is_err());
    }
}
