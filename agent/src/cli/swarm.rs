//! `netctl swarm ...`

use anyhow::Result;
use clap::Subcommand;

use super::client::Client;
use crate::agent::{InitRequest, InitResponse, JoinApiRequest, JoinApiResponse};
use crate::api::swarm_types::TokenView;
use model::node::Role;

#[derive(Debug, Subcommand)]
pub enum SwarmCmd {
    /// Initialize a swarm.
    Init {
        /// Advertised address (IP address of this node).
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Address or interface to use for data path traffic (VXLAN source).
        #[arg(long)]
        data_path_addr: Option<String>,
        /// UDP port of the data path (VXLAN), 1024-49151.
        #[arg(long)]
        data_path_port: Option<u16>,
        /// Default address pool in CIDR format (repeatable).
        #[arg(long = "default-addr-pool")]
        default_addr_pool: Vec<String>,
        /// Default address pool subnet mask length.
        #[arg(long)]
        default_addr_pool_mask_length: Option<u8>,
        /// Force create a new cluster from current state.
        #[arg(long)]
        force_new_cluster: bool,
    },
    /// Join a swarm as a node and/or manager.
    Join {
        /// Token for entry into the swarm.
        #[arg(long)]
        token: String,
        #[arg(long)]
        advertise_addr: Option<String>,
        #[arg(long)]
        data_path_addr: Option<String>,
        /// Refuse to join unless the token makes this node a manager.
        #[arg(long)]
        manager: bool,
        /// A manager's address, HOST[:PORT].
        remote: String,
    },
    /// Manage join tokens.
    JoinToken {
        /// Rotate join token.
        #[arg(long)]
        rotate: bool,
        /// Only display token.
        #[arg(long, short = 'q')]
        quiet: bool,
        /// worker or manager.
        role: String,
    },
    /// Leave the swarm.
    Leave {
        /// Force this node to leave the swarm, ignoring warnings.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Display the cluster's settings.
    Inspect,
}

fn join_command(t: &TokenView) -> String {
    format!("    netctl swarm join --token {} {}", t.token, t.addr)
}

pub async fn run(client: &Client, cmd: SwarmCmd) -> Result<()> {
    match cmd {
        SwarmCmd::Init {
            advertise_addr,
            data_path_addr,
            data_path_port,
            default_addr_pool,
            default_addr_pool_mask_length,
            force_new_cluster,
        } => {
            let req = InitRequest {
                advertise_addr,
                data_path_addr,
                data_path_port,
                default_addr_pool,
                default_addr_pool_mask_length,
                force_new_cluster,
            };
            let r: InitResponse = client
                .post("/swarm/init", serde_json::to_value(req)?)
                .await?
                .parse()?;
            println!(
                "Swarm initialized: current node ({}) is now a manager.\n",
                r.node_id
            );
            println!("To add a worker to this swarm, run the following command:\n");
            println!(
                "    netctl swarm join --token {} {}\n",
                r.worker_token, r.addr
            );
            println!(
                "To add a manager to this swarm, run 'netctl swarm join-token manager' and follow the instructions.\n"
            );
        }
        SwarmCmd::Join {
            token,
            advertise_addr,
            data_path_addr,
            manager,
            remote,
        } => {
            let req = JoinApiRequest {
                token,
                remote_addr: remote,
                advertise_addr,
                data_path_addr,
                manager,
            };
            let r: JoinApiResponse = client
                .post("/swarm/join", serde_json::to_value(req)?)
                .await?
                .parse()?;
            match r.role {
                Role::Manager => println!("This node joined a swarm as a manager."),
                Role::Worker => println!("This node joined a swarm as a worker."),
            }
        }
        SwarmCmd::JoinToken {
            rotate,
            quiet,
            role,
        } => {
            if role != "worker" && role != "manager" {
                anyhow::bail!("unknown role {role:?}: use worker or manager");
            }
            let t: TokenView = if rotate {
                let t = client
                    .post(
                        &format!("/swarm/join-token/{role}/rotate"),
                        serde_json::json!({}),
                    )
                    .await?
                    .parse()?;
                if !quiet {
                    println!("Successfully rotated {role} join token.\n");
                }
                t
            } else {
                client
                    .get(&format!("/swarm/join-token/{role}"))
                    .await?
                    .parse()?
            };
            if quiet {
                println!("{}", t.token);
            } else {
                println!("To add a {role} to this swarm, run the following command:\n");
                println!("{}\n", join_command(&t));
            }
        }
        SwarmCmd::Leave { force } => {
            client
                .post(
                    &format!("/swarm/leave?force={force}"),
                    serde_json::json!({}),
                )
                .await?;
            println!("Node left the swarm.");
        }
        SwarmCmd::Inspect => {
            let r = client.get("/swarm").await?;
            if let Some(why) = &r.stale {
                super::warn(why);
            }
            println!("{}", serde_json::to_string_pretty(&vec![r.body])?);
        }
    }
    Ok(())
}
