//! `netctl node ...`

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use clap::Subcommand;

use super::client::{Client, esc};
use super::table::{bytes, render, title};
use super::{Format, warn};
use crate::api::views::{Done, NodeView};

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes in the swarm.
    #[command(alias = "list")]
    Ls {
        /// Only display IDs.
        #[arg(long, short = 'q')]
        quiet: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Display detailed information on one or more nodes.
    Inspect {
        /// Print the information in a human friendly format.
        #[arg(long)]
        pretty: bool,
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Node ids, hostnames, or "self".
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// List tasks running on one or more nodes, defaults to current node.
    Ps {
        #[command(flatten)]
        args: super::service::PsArgs,
        /// Node ids, hostnames, or "self" (the default).
        nodes: Vec<String>,
    },
    /// Update a node.
    Update {
        /// Availability of the node ("active", "pause", "drain").
        #[arg(long)]
        availability: Option<String>,
        /// Add or update a node label (key=value), repeatable.
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Remove a node label if exists, repeatable.
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        /// Role of the node ("worker", "manager").
        #[arg(long)]
        role: Option<String>,
        node: String,
    },
    /// Promote one or more nodes to manager in the swarm.
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Demote one or more nodes from manager in the swarm.
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove one or more nodes from the swarm.
    #[command(alias = "remove")]
    Rm {
        /// Force remove a node from the swarm.
        #[arg(long, short = 'f')]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

fn manager_status(n: &NodeView) -> String {
    match &n.manager_status {
        None => String::new(),
        Some(m) if m.leader => "Leader".into(),
        Some(m) if m.reachability == "reachable" => "Reachable".into(),
        Some(_) => "Unavailable".into(),
    }
}

fn pretty(n: &NodeView) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: &str| s.push_str(&format!("{:<22}{}\n", k, v));
    line("ID:", &n.id);
    if !n.spec.labels.is_empty() {
        line("Labels:", "");
        for (k, v) in &n.spec.labels {
            line(&format!(" - {k}={v}"), "");
        }
    }
    line("Hostname:", &n.description.hostname);
    line("Joined at:", &n.created_at.to_string());
    line("Status:", "");
    line(" State:", &title(&serde_plain(&n.status.state)));
    if !n.status.message.is_empty() {
        line(" Message:", &n.status.message);
    }
    line(" Availability:", &title(&serde_plain(&n.spec.availability)));
    line(" Address:", &n.status.addr);
    if let Some(m) = &n.manager_status {
        line("Manager Status:", "");
        line(" Address:", &m.addr);
        line(" Raft Status:", &title(&m.reachability));
        line(" Leader:", if m.leader { "Yes" } else { "No" });
    }
    line("Platform:", "");
    line(" Operating System:", &n.description.platform.os);
    line(" Architecture:", &n.description.platform.architecture);
    line("Resources:", "");
    line(
        " CPUs:",
        &(n.description.resources.nano_cpus / 1_000_000_000).to_string(),
    );
    line(" Memory:", &bytes(n.description.resources.memory_bytes));
    line("Engine Version:", &n.description.engine.engine_version);
    s
}

fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn print_warnings(d: &Done) {
    for w in &d.warnings {
        warn(w);
    }
}

/// `node promote` / `node demote`: each node in turn, printing docker's line (or the agent's
/// note) for each; the last failure, if any, is the result.
async fn change_roles(
    client: &Client,
    nodes: &[String],
    action: &str,
    done: impl Fn(&str) -> String,
) -> Result<()> {
    let mut failed = None;
    for n in nodes {
        match client
            .post(
                &format!("/nodes/{}/{action}", esc(n)),
                serde_json::json!({}),
            )
            .await
        {
            Ok(r) => {
                let d: Done = r.parse()?;
                print_warnings(&d);
                println!("{}", d.note.unwrap_or_else(|| done(n)));
            }
            Err(e) => failed = Some(e),
        }
    }
    failed.map_or(Ok(()), Err)
}

pub async fn run(client: &Client, cmd: NodeCmd) -> Result<()> {
    match cmd {
        NodeCmd::Ps { args, nodes } => {
            let nodes = if nodes.is_empty() {
                vec!["self".to_string()]
            } else {
                nodes
            };
            super::service::ps(client, "node", nodes, args).await?
        }
        NodeCmd::Ls { quiet, format } => {
            let r = client.get("/nodes").await?;
            if let Some(why) = &r.stale {
                warn(why);
            }
            let nodes: Vec<NodeView> = r.parse()?;
            let me = r.node_id.clone().unwrap_or_default();
            if quiet {
                for n in &nodes {
                    println!("{}", n.id);
                }
            } else if format == Format::Json {
                for n in &nodes {
                    println!("{}", serde_json::to_string(n)?);
                }
            } else {
                let rows: Vec<Vec<String>> = nodes
                    .iter()
                    .map(|n| {
                        vec![
                            if n.id == me {
                                format!("{} *", n.id)
                            } else {
                                n.id.clone()
                            },
                            n.description.hostname.clone(),
                            title(&serde_plain(&n.status.state)),
                            title(&serde_plain(&n.spec.availability)),
                            manager_status(n),
                            n.description.engine.engine_version.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(
                        &[
                            "ID",
                            "HOSTNAME",
                            "STATUS",
                            "AVAILABILITY",
                            "MANAGER STATUS",
                            "ENGINE VERSION"
                        ],
                        &rows
                    )
                );
            }
        }
        NodeCmd::Inspect {
            pretty: human,
            format,
            nodes,
        } => {
            let mut views = Vec::new();
            let mut failed = None;
            for n in &nodes {
                match client.get(&format!("/nodes/{}", esc(n))).await {
                    Ok(r) => {
                        if let Some(why) = &r.stale {
                            warn(why);
                        }
                        views.push(r.parse::<NodeView>()?);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if human && format != Some(Format::Json) {
                let texts: Vec<String> = views.iter().map(pretty).collect();
                print!("{}", texts.join("\n"));
            } else {
                println!("{}", serde_json::to_string_pretty(&views)?);
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        NodeCmd::Update {
            availability,
            label_add,
            label_rm,
            role,
            node,
        } => {
            let availability = match availability.as_deref() {
                None => None,
                Some(a @ ("active" | "pause" | "drain")) => Some(a.to_string()),
                Some(other) => bail!("invalid availability {other:?}: use active, pause or drain"),
            };
            let role = match role.as_deref() {
                None => None,
                Some(r @ ("worker" | "manager")) => Some(r.to_string()),
                Some(other) => bail!("invalid role {other:?}: use worker or manager"),
            };
            let mut adds = BTreeMap::new();
            for l in &label_add {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                if k.is_empty() {
                    bail!("invalid label {l:?}: use key or key=value");
                }
                adds.insert(k.to_string(), v.to_string());
            }
            let body = serde_json::json!({
                "availability": availability,
                "role": role,
                "label_add": adds,
                "label_rm": label_rm,
            });
            let d: Done = client
                .post(&format!("/nodes/{}/update", esc(&node)), body)
                .await?
                .parse()?;
            print_warnings(&d);
            println!("{node}");
        }
        NodeCmd::Promote { nodes } => {
            change_roles(client, &nodes, "promote", |n| {
                format!("Node {n} promoted to a manager in the swarm.")
            })
            .await?
        }
        NodeCmd::Demote { nodes } => {
            change_roles(client, &nodes, "demote", |n| {
                format!("Manager {n} demoted in the swarm.")
            })
            .await?
        }
        NodeCmd::Rm { force, nodes } => {
            let mut failed = None;
            for n in &nodes {
                match client
                    .delete(&format!("/nodes/{}?force={force}", esc(n)))
                    .await
                {
                    Ok(_) => println!("{n}"),
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
    }
    Ok(())
}
