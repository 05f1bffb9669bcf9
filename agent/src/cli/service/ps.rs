//! `service ps` and `node ps`: the tasks of services or nodes in docker's table.

use std::collections::{BTreeSet, HashMap};

use ::api::node::Node;
use ::api::service::Service;
use ::api::task::Task;
use anyhow::Result;
use chrono::Utc;
use clap::Args;

use super::format::{current_state, error_cell};
use crate::cli::Format;
use crate::cli::client::{Client, filters_query, parse_filters};
use crate::cli::network::short;
use crate::cli::table::{render, title};

/// The options of `service ps` and `node ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only display task IDs.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Do not truncate output.
    #[arg(long)]
    no_trunc: bool,
    /// Filter output (desired-state=running|shutdown|accepted, node=NODE, name=NAME, id=ID).
    #[arg(long, short = 'f')]
    filter: Vec<String>,
    /// table, or json: one object per line with the table's fields.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// Service and node names of the tasks, as docker's CLI resolves them.
struct Names {
    services: HashMap<String, String>,
    nodes: HashMap<String, String>,
}

impl Names {
    async fn fetch(client: &Client) -> Result<Names> {
        let services: Vec<Service> = client.get("/services").await?.parse()?;
        let nodes: Vec<Node> = client.get("/nodes").await?.parse()?;
        Ok(Names {
            services: services.into_iter().map(|s| (s.id, s.spec.name)).collect(),
            nodes: nodes
                .into_iter()
                .map(|n| (n.id, n.description.hostname))
                .collect(),
        })
    }

    fn service(&self, t: &Task) -> String {
        self.services
            .get(&t.service_id)
            .cloned()
            .unwrap_or_else(|| t.service_id.clone())
    }

    fn node(&self, t: &Task) -> String {
        self.nodes.get(&t.node_id).cloned().unwrap_or_default()
    }

    fn task(&self, t: &Task) -> String {
        ::api::task::name(&self.service(t), t.slot, &t.node_id)
    }
}

/// `service ps` (`by` = "service") and `node ps` (`by` = "node"): the tasks of each reference,
/// in docker's table.
pub async fn ps(client: &Client, by: &str, refs: Vec<String>, a: PsArgs) -> Result<()> {
    let PsArgs {
        quiet,
        no_trunc,
        filter,
        format,
    } = a;
    let user = parse_filters(&filter)?;
    user.validate(&["desired-state", "node", "name", "id"])?;
    for d in user.get("desired-state") {
        ::api::task::desired_state_matches(d, model::task::TaskState::Running)?;
    }
    let mut tasks: Vec<Task> = Vec::new();
    let mut seen = BTreeSet::new();
    for r in &refs {
        let mut f = ::api::Filters::new();
        for key in ["desired-state", "name", "id", "node"] {
            if key == by {
                continue;
            }
            for v in user.get(key) {
                f.add(key, v);
            }
        }
        f.add(by, r);
        let resp = client.get(&format!("/tasks?{}", filters_query(&f))).await?;
        if let Some(why) = &resp.stale {
            crate::cli::warn(why);
        }
        for t in resp.parse::<Vec<Task>>()? {
            if seen.insert(t.id.clone()) {
                tasks.push(t);
            }
        }
    }
    let names = Names::fetch(client).await?;
    if by == "node" {
        // The user's node filter narrows `node ps` (the references are nodes already).
        tasks.retain(|t| {
            user.matches("node", |v| {
                names.node(t) == v || (!v.is_empty() && t.node_id.starts_with(v))
            })
        });
    }
    ::api::task::sort(&mut tasks, |t| (names.service(t), names.node(t)));
    let now = Utc::now();
    let id = |t: &Task| {
        if no_trunc { t.id.clone() } else { short(&t.id) }
    };
    if quiet {
        for t in &tasks {
            println!("{}", id(t));
        }
        return Ok(());
    }
    // Older tasks of the same slot are indented under the newest, as docker does.
    let mut prev = String::new();
    let mut rows = Vec::new();
    for t in &tasks {
        let task_name = names.task(t);
        let slot_key = format!("{}/{task_name}", t.service_id);
        let name = if slot_key == prev && format == Format::Table {
            format!(" \\_ {task_name}")
        } else {
            task_name.clone()
        };
        prev = slot_key;
        let current = current_state(t.status.state, t.status.timestamp, now);
        let desired = title(t.desired_state.as_str());
        if format == Format::Json {
            let row = serde_json::json!({
                "ID": id(t),
                "Name": task_name,
                "Command": ::api::service::argv(&t.spec).join(" "),
                "Node": names.node(t),
                "DesiredState": desired,
                "CurrentState": current,
                "Error": t.status.err,
                "Ports": "",
            });
            println!("{row}");
        } else {
            rows.push(vec![
                id(t),
                name,
                names.node(t),
                desired,
                current,
                error_cell(&t.status.err, !no_trunc),
            ]);
        }
    }
    if format == Format::Table {
        print!(
            "{}",
            render(
                &[
                    "ID",
                    "NAME",
                    "NODE",
                    "DESIRED STATE",
                    "CURRENT STATE",
                    "ERROR"
                ],
                &rows
            )
        );
    }
    Ok(())
}
