//! `netctl service ...`: create, ls, ps, inspect, update, scale, rm — docker's flags and output,
//! including the convergence progress of create, update and scale.
//!
//! A service runs its command directly on the nodes (tasks are processes), so where docker shows
//! an IMAGE, netctl shows the COMMAND.
//!
//! Files: `spec` turns flags into specs (create, update, scale), `progress` follows convergence,
//! `ps` lists tasks, `format` holds docker's ways of printing states and ages; listing and
//! inspecting are here.

mod format;
mod logs;
pub mod progress;
pub mod ps;
mod publish;
mod spec;

use std::collections::HashMap;

use ::api::network::NetworkResource;
use ::api::service::Service;
use anyhow::Result;
use clap::Subcommand;

use super::Format;
use super::client::{Client, esc, filters_query, parse_filters};
use super::network::short;
use super::table::render;
use format::ellipsis;
use progress::WaitArgs;
use spec::{CreateArgs, UpdateArgs};

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a new service.
    Create(CreateArgs),
    /// List services.
    #[command(alias = "list")]
    Ls {
        /// Only display IDs.
        #[arg(long, short = 'q')]
        quiet: bool,
        /// Filter output based on conditions provided (id=, name=, mode=, label=).
        #[arg(long, short = 'f')]
        filter: Vec<String>,
        /// table, or json: one object per line with the table's fields.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// List the tasks of one or more services.
    Ps {
        #[command(flatten)]
        args: ps::PsArgs,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Display detailed information on one or more services.
    Inspect {
        /// Print the information in a human friendly format.
        #[arg(long)]
        pretty: bool,
        #[arg(long, short = 'f', value_enum)]
        format: Option<Format>,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Update a service.
    Update(UpdateArgs),
    /// Scale one or multiple replicated services (SERVICE=REPLICAS...).
    Scale {
        #[command(flatten)]
        wait: WaitArgs,
        #[arg(required = true)]
        scales: Vec<String>,
    },
    /// Remove one or more services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Fetch the logs of a service's tasks (those on this node; the others are named).
    Logs {
        /// Number of lines to show from the end of the logs ("all" for everything).
        #[arg(long, short = 'n', default_value = "all")]
        tail: String,
        /// Show the task's context (node, service and task ids) before each line.
        #[arg(long)]
        details: bool,
        service: String,
    },
}

fn replicas_cell(s: &Service) -> String {
    let st = s.service_status.unwrap_or_default();
    format!("{}/{}", st.running_tasks, st.desired_tasks)
}

fn mode_name(s: &Service) -> &'static str {
    ::api::service::mode_name(&s.spec.mode)
}

fn command_cell(s: &Service) -> String {
    ellipsis(&::api::service::argv(&s.spec.task_template).join(" "), 40)
}

/// docker's `service inspect --pretty`.
pub fn pretty(s: &Service, network_names: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        if v.is_empty() {
            out.push_str(&format!("{k}\n"));
        } else {
            out.push_str(&format!("{k:<16}{v}\n"));
        }
    };
    line("ID:", &s.id);
    line("Name:", &s.spec.name);
    if !s.spec.labels.is_empty() {
        line("Labels:", "");
        for (k, v) in &s.spec.labels {
            if v.is_empty() {
                line(&format!(" {k}"), "");
            } else {
                line(&format!(" {k}={v}"), "");
            }
        }
    }
    match &s.spec.mode.replicated {
        Some(r) => {
            line("Service Mode:", "Replicated");
            line(" Replicas:", &r.replicas.unwrap_or(1).to_string());
        }
        None => line("Service Mode:", "Global"),
    }
    line("Placement:", "");
    let placement = s.spec.task_template.placement.clone().unwrap_or_default();
    let constraints = &placement.constraints;
    if !constraints.is_empty() {
        line(" Constraints:", &format!("[{}]", constraints.join(" ")));
    }
    if let Some(u) = &s.spec.update_config {
        line("UpdateConfig:", "");
        line(" Parallelism:", &u.parallelism.to_string());
    }
    line("ContainerSpec:", "");
    let spec = s
        .spec
        .task_template
        .container_spec
        .clone()
        .unwrap_or_default();
    if !spec.image.is_empty() {
        line(" Image:", &spec.image);
    }
    line(
        " Command:",
        &::api::service::argv(&s.spec.task_template).join(" "),
    );
    if !spec.env.is_empty() {
        line(" Env:", &spec.env.join(" "));
    }
    let name = |id: &str| network_names.get(id).cloned().unwrap_or(id.to_string());
    let nets = &s.spec.task_template.networks;
    if !nets.is_empty() {
        let names: Vec<String> = nets
            .iter()
            .map(|n| {
                if n.aliases.is_empty() {
                    name(&n.target)
                } else {
                    format!("{} (aliases: {})", name(&n.target), n.aliases.join(", "))
                }
            })
            .collect();
        line(&format!("Networks: {}", names.join(" ")), "");
    }
    let endpoint = s.spec.endpoint_spec.clone().unwrap_or_default();
    line(
        "Endpoint Mode:",
        if endpoint.mode.is_empty() {
            "vip"
        } else {
            &endpoint.mode
        },
    );
    // The allocated ports (Endpoint.Ports) when the swarm has allocated them.
    let ports = if s.endpoint.ports.is_empty() {
        &endpoint.ports
    } else {
        &s.endpoint.ports
    };
    if !ports.is_empty() {
        line("Ports:", "");
        for p in ports {
            line(
                &format!(
                    " PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}",
                    p.published_port, p.protocol, p.target_port, p.publish_mode
                ),
                "",
            );
        }
    }
    if !s.endpoint.virtual_ips.is_empty() {
        line("Virtual IPs:", "");
        for v in &s.endpoint.virtual_ips {
            line(&format!(" {}:", name(&v.network_id)), &v.addr);
        }
    }
    out
}

pub async fn run(client: &Client, cmd: ServiceCmd) -> Result<()> {
    match cmd {
        ServiceCmd::Create(a) => spec::create(client, a).await,
        ServiceCmd::Update(a) => spec::update(client, a).await,
        ServiceCmd::Scale { wait, scales } => spec::scale(client, wait, scales).await,
        ServiceCmd::Ps { args, services } => ps::ps(client, "service", services, args).await,
        ServiceCmd::Ls {
            quiet,
            filter,
            format,
        } => {
            let filters = parse_filters(&filter)?;
            let r = client
                .get(&format!(
                    "/services?status=true&{}",
                    filters_query(&filters)
                ))
                .await?;
            if let Some(why) = &r.stale {
                super::warn(why);
            }
            let services: Vec<Service> = r.parse()?;
            if quiet {
                for s in &services {
                    println!("{}", short(&s.id));
                }
            } else if format == Format::Json {
                for s in &services {
                    let row = serde_json::json!({
                        "ID": short(&s.id),
                        "Name": s.spec.name,
                        "Mode": mode_name(s),
                        "Replicas": replicas_cell(s),
                        "Command": ::api::service::argv(&s.spec.task_template).join(" "),
                        "Ports": publish::ports_cell(s),
                    });
                    println!("{row}");
                }
            } else {
                let rows: Vec<Vec<String>> = services
                    .iter()
                    .map(|s| {
                        vec![
                            short(&s.id),
                            s.spec.name.clone(),
                            mode_name(s).to_string(),
                            replicas_cell(s),
                            command_cell(s),
                            publish::ports_cell(s),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(
                        &["ID", "NAME", "MODE", "REPLICAS", "COMMAND", "PORTS"],
                        &rows
                    )
                );
            }
            Ok(())
        }
        ServiceCmd::Inspect {
            pretty: human,
            format,
            services,
        } => {
            let mut views = Vec::new();
            let mut failed = None;
            for s in &services {
                match client.get(&format!("/services/{}", esc(s))).await {
                    Ok(r) => {
                        if let Some(why) = &r.stale {
                            super::warn(why);
                        }
                        views.push(r.parse::<Service>()?);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if human && format != Some(Format::Json) {
                let nets: Vec<NetworkResource> = match client.get("/networks").await {
                    Ok(r) => r.parse()?,
                    Err(_) => Vec::new(),
                };
                let names: HashMap<String, String> =
                    nets.into_iter().map(|n| (n.id, n.name)).collect();
                let texts: Vec<String> = views.iter().map(|v| pretty(v, &names)).collect();
                print!("{}", texts.join("\n"));
            } else {
                println!("{}", serde_json::to_string_pretty(&views)?);
            }
            if let Some(e) = failed {
                return Err(e);
            }
            Ok(())
        }
        ServiceCmd::Logs {
            tail,
            details,
            service,
        } => {
            let stream = client
                .get_bytes(&format!(
                    "/services/{}/logs?stdout=1&stderr=1&tail={}&details={details}",
                    esc(&service),
                    esc(&tail)
                ))
                .await?;
            logs::print(&stream)
        }
        ServiceCmd::Rm { services } => {
            let mut failed = Vec::new();
            for s in &services {
                match client.delete(&format!("/services/{}", esc(s))).await {
                    Ok(_) => println!("{s}"),
                    Err(e) => failed.push(e),
                }
            }
            super::collect_errors(failed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_text() {
        let m = model::Service {
            meta: model::Meta::with_id("svc".into()),
            spec: model::service::ServiceSpec {
                name: "web".into(),
                labels: Default::default(),
                mode: model::service::ServiceMode::Replicated { replicas: 3 },
                task: model::service::TaskTemplate {
                    command: vec!["sleep".into(), "1".into()],
                    constraints: vec!["node.role==worker".into()],
                    ..Default::default()
                },
                networks: vec![model::service::NetworkAttachmentSpec {
                    target: "net".into(),
                    aliases: vec![],
                }],
                endpoint: Default::default(),
                update: Default::default(),
            },
            virtual_ips: vec![],
            ports: vec![],
        };
        let svc = ::api::service::service(&m, None);
        let names = HashMap::from([("net".to_string(), "red".to_string())]);
        let p = pretty(&svc, &names);
        assert!(
            p.contains("Service Mode:   Replicated\n Replicas:      3\n"),
            "{p}"
        );
        assert!(p.contains(" Constraints:   [node.role==worker]"), "{p}");
        assert!(p.contains(" Command:       sleep 1"), "{p}");
        assert!(p.contains("Networks: red\n"), "{p}");
        assert!(p.contains("Endpoint Mode:  vip\n"), "{p}");
    }
}
