//! netctl: the command line of netagent, modelled on the docker CLI (`swarm ...`, `node ...`,
//! `network ...`, `service ...`).
//! Human tables by default, `--format json` for machines, `-q` where docker has it; errors are one
//! line on stderr and a non-zero exit.

pub mod client;
mod network;
mod node;
mod service;
mod swarm;
pub mod table;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use client::Client;

#[derive(Debug, Parser)]
#[command(name = "netctl", version, about = "Control a netagent swarm")]
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
    /// Show this node's swarm membership.
    Info {
        /// json or table.
        #[arg(long, default_value = "table")]
        format: String,
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

pub async fn run(cli: Cli) -> Result<()> {
    let client = Client::new(&cli.host);
    match cli.cmd {
        Cmd::Swarm(c) => swarm::run(&client, c).await,
        Cmd::Node(c) => node::run(&client, c).await,
        Cmd::Network(c) => network::run(&client, c).await,
        Cmd::Service(c) => service::run(&client, c).await,
        Cmd::Info { format } => {
            let r = client.get("/info").await?;
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&r.body)?);
            } else {
                let i: crate::api::views::Info = r.parse()?;
                println!("Swarm: {}", i.local_node_state);
                if i.local_node_state == "active" {
                    println!(" NodeID: {}", i.node_id);
                    println!(" Is Manager: {}", i.control_available);
                    if i.control_available {
                        println!(" ClusterID: {}", i.cluster_id);
                        println!(
                            " Managers: {} ({} reachable)",
                            i.managers, i.reachable_managers
                        );
                        println!(" Is Leader: {}", i.is_leader);
                    }
                    println!(" Node Address: {}", i.node_addr);
                    println!(" Manager Addresses:");
                    for m in i.remote_managers {
                        println!("  {m}");
                    }
                }
            }
            Ok(())
        }
    }
}
