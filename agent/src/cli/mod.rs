//! netctl: the command line of netagent, modelled on the docker CLI (`swarm ...`, `node ...`,
//! `network ...`, `service ...`) and a client of the same Docker Engine API the docker CLI uses
//! (the `api` crate's types).
//! Human tables by default, `--format json` for machines, `-q` where docker has it; errors are one
//! line on stderr and a non-zero exit.

pub mod client;
mod ingress;
mod network;
mod node;
mod service;
mod swarm;
mod swarm_ca;
pub mod table;

use std::path::PathBuf;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

use client::Client;

#[derive(Debug, Parser)]
#[command(name = "netctl", version = crate::LONG_VERSION, about = "Control a netagent swarm")]
pub struct Cli {
    /// The agent's API socket.
    #[arg(long, short = 'H', env = "NETAGENT_HOST", default_value = crate::config::DEFAULT_HOST, global = true)]
    pub host: PathBuf,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Manage the swarm.
    #[command(subcommand)]
    Swarm(swarm::SwarmCmd),
    /// Manage swarm nodes.
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// Manage swarm networks.
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// Manage swarm services.
    #[command(subcommand)]
    Service(service::ServiceCmd),
    /// Manage the routing mesh's ingress network.
    #[command(subcommand)]
    Ingress(ingress::IngressCmd),
    /// Show this node's swarm membership.
    Info {
        /// json or table.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Print a shell completion script (source it, or install it where your shell looks).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Output format of listing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn warn(msg: &str) {
    eprintln!("WARNING: {msg}");
}

/// Prints every error but the last, which becomes netctl's (as docker reports several).
pub(crate) fn collect_errors(mut failed: Vec<anyhow::Error>) -> Result<()> {
    if let Some(last) = failed.pop() {
        for e in failed {
            eprintln!("{e:#}");
        }
        return Err(last);
    }
    Ok(())
}

pub async fn run(cli: Cli) -> Result<()> {
    let client = Client::new(&cli.host);
    match cli.cmd {
        Cmd::Swarm(c) => swarm::run(&client, c).await,
        Cmd::Node(c) => node::run(&client, c).await,
        Cmd::Network(c) => network::run(&client, c).await,
        Cmd::Service(c) => service::run(&client, c).await,
        Cmd::Ingress(c) => ingress::run(&client, c).await,
        Cmd::Info { format } => info(&client, &format).await,
        Cmd::Completion { shell } => {
            use std::io::Write;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "netctl", &mut script);
            match std::io::stdout().lock().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(anyhow::anyhow!("cannot write the completion script: {e}"))
                }
                _ => Ok(()),
            }
        }
    }
}

async fn info(client: &Client, format: &str) -> Result<()> {
    let r = client.get("/info").await?;
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&r.body)?);
        return Ok(());
    }
    let i: ::api::system::Info = r.parse()?;
    let s = &i.swarm;
    println!("Swarm: {}", s.local_node_state);
    if s.local_node_state != ::api::system::ACTIVE {
        return Ok(());
    }
    println!(" NodeID: {}", s.node_id);
    if !s.error.is_empty() {
        println!(" Error: {}", s.error);
    }
    println!(" Is Manager: {}", s.control_available);
    if s.control_available {
        let nodes: Vec<::api::node::Node> = client.get("/nodes").await?.parse()?;
        let managers: Vec<&::api::node::ManagerStatus> = nodes
            .iter()
            .filter_map(|n| n.manager_status.as_ref())
            .collect();
        let reachable = managers
            .iter()
            .filter(|m| m.reachability == ::api::node::REACHABLE)
            .count();
        let leader = nodes
            .iter()
            .any(|n| n.id == s.node_id && n.manager_status.as_ref().is_some_and(|m| m.leader));
        println!(
            " ClusterID: {}",
            s.cluster
                .as_ref()
                .map(|c| c.id.as_str())
                .unwrap_or_default()
        );
        println!(" Managers: {} ({reachable} reachable)", s.managers);
        println!(" Is Leader: {leader}");
        if let Some(c) = &s.cluster {
            println!(
                " Root Rotation In Progress: {}",
                c.root_rotation_in_progress
            );
        }
    }
    println!(" Node Address: {}", s.node_addr);
    println!(" Manager Addresses:");
    for m in &s.remote_managers {
        println!("  {}", m.addr);
    }
    Ok(())
}
