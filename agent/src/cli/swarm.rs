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
        /// Period of data-path (IPsec) key rotation, e.g. 12h, 30m, 90s (default 12h).
        #[arg(long, value_parser = duration_ms)]
        data_key_rotation: Option<u64>,
        /// Validity period for node certificates, e.g. 2160h (default 90 days).
        #[arg(long, value_parser = duration_ms)]
        cert_expiry: Option<u64>,
    },
    /// Update the swarm.
    Update {
        /// Dispatcher heartbeat period, e.g. 5s.
        #[arg(long, value_parser = duration_ms)]
        dispatcher_heartbeat: Option<u64>,
        /// Period of data-path (IPsec) key rotation, e.g. 12h, 30m, 90s.
        #[arg(long, value_parser = duration_ms)]
        data_key_rotation: Option<u64>,
        /// Rotate the data-path (IPsec) keys of encrypted networks now.
        #[arg(long)]
        rotate_data_key: bool,
        /// Validity period for node certificates, e.g. 2160h.
        #[arg(long, value_parser = duration_ms)]
        cert_expiry: Option<u64>,
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
    /// Display and rotate the root CA.
    Ca {
        /// Rotate the swarm CA: a new root, every node moved to it without downtime.
        #[arg(long)]
        rotate: bool,
        /// Exit immediately instead of waiting for the rotation to complete.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Suppress progress output.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Display the cluster's settings.
    Inspect,
}

/// A duration like `12h`, `1h30m`, `90s` or `500ms`, in milliseconds.
fn duration_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {s:?}: use e.g. 12h, 30m, 90s or 500ms");
    let (mut total, mut num) = (0u64, String::new());
    let mut chars = s.trim().chars().peekable();
    if chars.peek().is_none() {
        return Err(bad());
    }
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek().filter(|n| n.is_ascii_alphabetic()) {
            unit.push(n);
            chars.next();
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        let per = match unit.as_str() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(per)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(total)
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
            data_key_rotation,
            cert_expiry,
        } => {
            let mut req = InitRequest {
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
            req.spec.encryption_config.data_key_rotation =
                data_key_rotation.unwrap_or(0).saturating_mul(1_000_000);
            req.spec.ca_config.node_cert_expiry =
                cert_expiry.unwrap_or(0).saturating_mul(1_000_000);
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
        SwarmCmd::Update {
            dispatcher_heartbeat,
            data_key_rotation,
            rotate_data_key,
            cert_expiry,
        } => {
            let current = swarm(client).await?;
            let mut spec = current.cluster.spec.clone();
            if let Some(ms) = dispatcher_heartbeat {
                spec.dispatcher.heartbeat_period = ms.saturating_mul(1_000_000);
            }
            if let Some(ms) = data_key_rotation {
                spec.encryption_config.data_key_rotation = ms.saturating_mul(1_000_000);
            }
            if let Some(ms) = cert_expiry {
                spec.ca_config.node_cert_expiry = ms.saturating_mul(1_000_000);
            }
            client
                .post(
                    &format!(
                        "/swarm/update?version={}&rotateDataKey={rotate_data_key}",
                        current.cluster.meta.version.index
                    ),
                    serde_json::to_value(&spec)?,
                )
                .await?;
            println!("Swarm updated.");
        }
        SwarmCmd::Ca {
            rotate,
            detach,
            quiet,
        } => super::swarm_ca::run(client, rotate, detach, quiet).await?,
        SwarmCmd::Inspect => {
            // The cluster's settings, not its join tokens (`swarm join-token` shows those).
            let s = swarm(client).await?;
            println!("{}", serde_json::to_string_pretty(&vec![s.cluster])?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::duration_ms;

    #[test]
    fn durations() {
        assert_eq!(duration_ms("12h"), Ok(12 * 3_600_000));
        assert_eq!(duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(duration_ms("90s"), Ok(90_000));
        assert_eq!(duration_ms("500ms"), Ok(500));
        for bad in ["", "12", "h", "5d", "1.5h", "99999999999999999999h"] {
            assert!(duration_ms(bad).is_err(), "{bad}");
        }
    }
}
