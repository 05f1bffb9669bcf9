//! `netctl ingress recreate`: the ingress network with new options, while services publish
//! through it (docker makes you remove them first). In place when the subnet stays (MTU,
//! encryption); otherwise a new network, the publishing services' tasks moved to it, with
//! progress like `service update`, until the old network is removed.

use anyhow::Result;
use clap::{Args, Subcommand};

use ::api::Filters;

use crate::cli::client::{Client, esc, filters_query};
use crate::cli::service::progress::WaitArgs;
use crate::ingress::{IngressOptions, Recreated};

#[derive(Debug, Subcommand)]
pub enum IngressCmd {
    /// Replace the ingress network's options; publishing services keep answering.
    Recreate(RecreateArgs),
}

#[derive(Debug, Args)]
pub struct RecreateArgs {
    /// MTU of the ingress network (default: derived from the underlay).
    #[arg(long)]
    mtu: Option<u32>,
    /// Subnet in CIDR format (default: the current one).
    #[arg(long)]
    subnet: Option<String>,
    /// Gateway of the subnet.
    #[arg(long)]
    gateway: Option<String>,
    /// Driver options: `encrypted` (repeatable).
    #[arg(long = "opt", short = 'o')]
    opt: Vec<String>,
    #[command(flatten)]
    wait: WaitArgs,
}

pub async fn run(client: &Client, cmd: IngressCmd) -> Result<()> {
    let IngressCmd::Recreate(a) = cmd;
    let mut encrypted = false;
    for o in &a.opt {
        match o.split_once('=').map_or(o.as_str(), |(k, _)| k) {
            "encrypted" => encrypted = true,
            other => anyhow::bail!(
                "option {other:?} is not an ingress option: use --mtu, --subnet, --gateway or --opt encrypted"
            ),
        }
    }
    let req = IngressOptions {
        subnet: a.subnet,
        gateway: a.gateway,
        mtu: a.mtu,
        encrypted,
    };
    let r: Recreated = client
        .post("/ingress/recreate", serde_json::to_value(&req)?)
        .await?
        .parse()?;
    if r.in_place {
        println!("ingress network {} changed in place", short(&r.id));
        return Ok(());
    }
    println!("ingress network {} created", short(&r.id));
    if a.wait.detach {
        return Ok(());
    }
    for s in &r.moved {
        wait_moved(client, s, &r.id, &a.wait).await?;
    }
    if let Some(old) = &r.retiring {
        wait_removed(client, old, &a.wait).await?;
    }
    Ok(())
}

/// Waits until the leader removed the old ingress network (no task runs on it any more).
async fn wait_removed(client: &Client, old: &str, w: &WaitArgs) -> Result<()> {
    let deadline = w
        .wait_timeout_ms
        .map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms));
    loop {
        let nets: Vec<serde_json::Value> = client.get("/networks").await?.parse()?;
        if !nets.iter().any(|n| n["Id"] == old) {
            if !w.quiet {
                println!("old ingress network {} removed", short(old));
            }
            return Ok(());
        }
        if deadline.is_some_and(|d| std::time::Instant::now() > d) {
            anyhow::bail!(
                "the old ingress network {} is still there (a task on it has not stopped yet); the leader removes it once none runs",
                short(old)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Waits until every task the service should run is running with an address on the new
/// ingress network `net` (its tasks on the old one are replaced by the orchestrator).
async fn wait_moved(client: &Client, service: &str, net: &str, w: &WaitArgs) -> Result<()> {
    let deadline = w
        .wait_timeout_ms
        .map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms));
    let mut last = String::new();
    loop {
        let svc: serde_json::Value = client
            .get(&format!("/services/{}", esc(service)))
            .await?
            .parse()?;
        let id = svc["ID"].as_str().unwrap_or_default().to_string();
        let filters = Filters::new().with("service", &id);
        let tasks: Vec<serde_json::Value> = client
            .get(&format!("/tasks?{}", filters_query(&filters)))
            .await?
            .parse()?;
        let is = |v: &serde_json::Value, what: &str| {
            v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(what))
        };
        let live: Vec<&serde_json::Value> = tasks
            .iter()
            .filter(|t| is(&t["DesiredState"], "running"))
            .collect();
        let moved = live
            .iter()
            .filter(|t| {
                is(&t["Status"]["State"], "running")
                    && t["NetworksAttachments"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|n| n["Network"]["ID"] == net))
            })
            .count();
        let old_running = tasks
            .iter()
            .filter(|t| !is(&t["DesiredState"], "running") && is(&t["Status"]["State"], "running"))
            .count();
        // Out of the service's places (slots, or nodes for a global service): while a
        // replacement starts beside its old task, both are live.
        let places: std::collections::BTreeSet<(u64, String)> = live
            .iter()
            .map(|t| match t["Slot"].as_u64().unwrap_or(0) {
                0 => (0, t["NodeID"].as_str().unwrap_or_default().to_string()),
                slot => (slot, String::new()),
            })
            .collect();
        let line = format!(
            "{service}: {moved}/{} tasks running on the new ingress network",
            places.len()
        );
        if !w.quiet && line != last {
            println!("{line}");
            last = line;
        }
        if moved == live.len() && !live.is_empty() && old_running == 0 {
            return Ok(());
        }
        if deadline.is_some_and(|d| std::time::Instant::now() > d) {
            anyhow::bail!(
                "service {service} did not move in time; it keeps moving in the background: see `netctl service ps {service}`"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
