//! `netctl node ...`

use ::api::node::{Node, REACHABLE};
use anyhow::{Result, bail};
use clap::Subcommand;

use super::client::{Client, esc};
use super::table::{bytes, render, title};
use super::{Format, warn};

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
        args: super::service::ps::PsArgs,
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

fn manager_status(n: &Node) -> String {
    match &n.manager_status {
        None => String::new(),
        Some(m) if m.leader => "Leader".into(),
        Some(m) if m.reachability == REACHABLE => "Reachable".into(),
        Some(_) => "Unavailable".into(),
    }
}

fn pretty(n: &Node) -> String {
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
    line("Joined at:", &n.meta.created_at.to_string());
    line("Status:", "");
    line(" State:", &title(&n.status.state));
    if !n.status.message.is_empty() {
        line(" Message:", &n.status.message);
    }
    line(" Availability:", &title(&n.spec.availability));
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
    for p in &n.description.engine.plugins {
        if p.kind == "LoadBalancer" {
            line("Load Balancer:", &p.name);
        }
        if p.kind == "OverlayFastPath" {
            line("Overlay Fast Path:", &p.name);
        }
    }
    if !n.description.certificate_expiry.is_empty() {
        line("Certificate Expiry:", &n.description.certificate_expiry);
    }
    s
}

async fn inspect(client: &Client, node: &str) -> Result<Node> {
    let r = client.get(&format!("/nodes/{}", esc(node))).await?;
    if let Some(why) = &r.stale {
        warn(why);
    }
    r.parse()
}

/// Reads the node, changes its spec, writes it back at the version read (docker's way). The
/// node object also moves on its own (status, addresses) and a follower's replica may trail
/// the leader's: an update refused as out of sequence is read and made again, a few times.
async fn update_spec(
    client: &Client,
    node: &str,
    mut change: impl FnMut(&mut ::api::node::NodeSpec) -> Result<()>,
) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let n = inspect(client, node).await?;
        let mut spec = n.spec.clone();
        change(&mut spec)?;
        let r = client
            .post(
                &format!(
                    "/nodes/{}/update?version={}",
                    esc(&n.id),
                    n.meta.version.index
                ),
                serde_json::to_value(&spec)?,
            )
            .await;
        match r {
            Err(e) if super::client::out_of_sequence(&e) && attempt < 10 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other.map(|_| ()),
        }
    }
}

/// After node `id` became `role`: docker's advice when the swarm is left with an even number of
/// managers. Counted from the others' roles, so a replica that has not applied the change yet
/// (a follower answering) counts the same.
async fn warn_even_managers(client: &Client, id: &str, role: &str) {
    if let Ok(r) = client.get("/nodes").await
        && let Ok(nodes) = r.parse::<Vec<Node>>()
    {
        let others = nodes
            .iter()
            .filter(|n| n.id != id && n.spec.role == "manager")
            .count();
        let managers = others + usize::from(role == "manager");
        if let Some(w) = crate::quorum::even_warning(managers) {
            warn(&w);
        }
    }
}

/// `node promote` / `node demote`: each node in turn, printing docker's line for each; the last
/// failure, if any, is the result.
async fn change_roles(
    client: &Client,
    nodes: &[String],
    role: &str,
    done: impl Fn(&str) -> String,
) -> Result<()> {
    let mut failed = None;
    for n in nodes {
        let current = match inspect(client, n).await {
            Ok(c) => c,
            Err(e) => {
                failed = Some(e);
                continue;
            }
        };
        if current.spec.role == role {
            let what = if role == "manager" {
                "a manager"
            } else {
                "a worker"
            };
            println!("Node {n} is already {what}.");
            continue;
        }
        match update_spec(client, n, |s| {
            s.role = role.to_string();
            Ok(())
        })
        .await
        {
            Ok(()) => {
                warn_even_managers(client, &current.id, role).await;
                println!("{}", done(n));
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
            super::service::ps::ps(client, "node", nodes, args).await?
        }
        NodeCmd::Ls { quiet, format } => {
            let r = client.get("/nodes").await?;
            if let Some(why) = &r.stale {
                warn(why);
            }
            let nodes: Vec<Node> = r.parse()?;
            if quiet {
                for n in &nodes {
                    println!("{}", n.id);
                }
            } else if format == Format::Json {
                // netctl's own fields (the API's nodes stay docker's; the reason comes in the
                // X-Netagent-Stale header): whether the view may be stale, and why.
                for n in &nodes {
                    let mut v = serde_json::to_value(n)?;
                    if let Some(o) = v.as_object_mut() {
                        o.insert("Stale".into(), r.stale.is_some().into());
                        if let Some(why) = &r.stale {
                            o.insert("StaleReason".into(), why.clone().into());
                        }
                    }
                    println!("{v}");
                }
            } else {
                let info: ::api::system::Info = client.get("/info").await?.parse()?;
                let me = info.swarm.node_id;
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
                            title(&n.status.state),
                            title(&n.spec.availability),
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
                match inspect(client, n).await {
                    Ok(v) => views.push(v),
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
            if let Some(a) = &availability {
                ::api::node::parse_availability(a)?;
            }
            if let Some(r) = &role {
                ::api::node::parse_role(r)?;
            }
            let mut adds = Vec::new();
            for l in &label_add {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                if k.is_empty() {
                    bail!("invalid label {l:?}: use key or key=value");
                }
                adds.push((k.to_string(), v.to_string()));
            }
            let mut role_changed = false;
            let new_role = role.clone();
            update_spec(client, &node, |spec| {
                if let Some(a) = &availability {
                    spec.availability = a.clone();
                }
                if let Some(r) = &role {
                    role_changed = *r != spec.role;
                    spec.role = r.clone();
                }
                for k in &label_rm {
                    if spec.labels.remove(k).is_none() && !adds.iter().any(|(a, _)| a == k) {
                        bail!("key {k} doesn't exist in node's labels");
                    }
                }
                spec.labels.extend(adds.iter().cloned());
                Ok(())
            })
            .await?;
            if role_changed && let Some(r) = &new_role {
                let id = inspect(client, &node).await?.id;
                warn_even_managers(client, &id, r).await;
            }
            println!("{node}");
        }
        NodeCmd::Promote { nodes } => {
            change_roles(client, &nodes, "manager", |n| {
                format!("Node {n} promoted to a manager in the swarm.")
            })
            .await?
        }
        NodeCmd::Demote { nodes } => {
            change_roles(client, &nodes, "worker", |n| {
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
