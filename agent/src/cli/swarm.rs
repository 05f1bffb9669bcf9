//! `netctl swarm ...`

use ::api::swarm::{InitRequest, JoinRequest, Swarm};
use ::api::system::Info;
use anyhow::Result;
use clap::Subcommand;

use super::client::Client;

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
        /// Subnet of the ingress network (default: the first subnet of the address pools).
        #[arg(long)]
        ingress_subnet: Option<String>,
        /// MTU of the ingress network (default: derived from the underlay).
        #[arg(long)]
        ingress_mtu: Option<u32>,
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

/// The cluster-port address of the manager answering (to join through), from `/info`.
async fn manager_addr(client: &Client) -> Result<String> {
    let info: Info = client.get("/info").await?.parse()?;
    let s = info.swarm;
    Ok(s.remote_managers
        .iter()
        .find(|m| m.node_id == s.node_id)
        .map(|m| m.addr.clone())
        .unwrap_or_else(|| format!("{}:{}", s.node_addr, crate::config::DEFAULT_CLUSTER_PORT)))
}

async fn swarm(client: &Client) -> Result<Swarm> {
    let r = client.get("/swarm").await?;
    if let Some(why) = &r.stale {
        super::warn(why);
    }
    r.parse()
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
            ingress_subnet,
            ingress_mtu,
        } => {
            let req = InitRequest {
                advertise_addr: advertise_addr.unwrap_or_default(),
                data_path_addr: data_path_addr.unwrap_or_default(),
                data_path_port: data_path_port.map(u32::from).unwrap_or(0),
                default_addr_pool,
                subnet_size: default_addr_pool_mask_length.map(u32::from).unwrap_or(0),
                force_new_cluster,
                ingress_subnet: ingress_subnet.unwrap_or_default(),
                ingress_mtu: ingress_mtu.unwrap_or(0),
                ..Default::default()
            };
            let node_id: String = client
                .post("/swarm/init", serde_json::to_value(req)?)
                .await?
                .parse()?;
            let tokens = swarm(client).await?.join_tokens;
            let addr = manager_addr(client).await?;
            println!("Swarm initialized: current node ({node_id}) is now a manager.\n");
            println!("To add a worker to this swarm, run the following command:\n");
            println!("    netctl swarm join --token {} {addr}\n", tokens.worker);
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
            let req = JoinRequest {
                join_token: token,
                remote_addrs: vec![remote],
                advertise_addr: advertise_addr.unwrap_or_default(),
                data_path_addr: data_path_addr.unwrap_or_default(),
                require_manager: manager,
                ..Default::default()
            };
            client
                .post("/swarm/join", serde_json::to_value(req)?)
                .await?;
            let info: Info = client.get("/info").await?.parse()?;
            if info.swarm.control_available {
                println!("This node joined a swarm as a manager.");
            } else {
                println!("This node joined a swarm as a worker.");
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
            if rotate {
                let current = swarm(client).await?;
                let flag = if role == "worker" {
                    "rotateWorkerToken"
                } else {
                    "rotateManagerToken"
                };
                client
                    .post(
                        &format!(
                            "/swarm/update?version={}&{flag}=true",
                            current.cluster.meta.version.index
                        ),
                        serde_json::to_value(&current.cluster.spec)?,
                    )
                    .await?;
                if !quiet {
                    println!("Successfully rotated {role} join token.\n");
                }
            }
            let tokens = swarm(client).await?.join_tokens;
            let token = if role == "worker" {
                tokens.worker
            } else {
                tokens.manager
            };
            if quiet {
                println!("{token}");
            } else {
                let addr = manager_addr(client).await?;
                println!("To add a {role} to this swarm, run the following command:\n");
                println!("    netctl swarm join --token {token} {addr}\n");
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
            // The cluster's settings, not its join tokens (`swarm join-token` shows those).
            let s = swarm(client).await?;
            println!("{}", serde_json::to_string_pretty(&vec![s.cluster])?);
        }
    }
    Ok(())
}
