//! `netctl network ...`: create, ls, inspect, rm — docker's flags and output.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ::api::network::{
    CreateRequest, CreateResponse, Ipam, IpamConfig, NetworkResource, cidr_contains, parse_cidr,
};
use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use super::Format;
use super::client::{Client, esc, filters_query, parse_filters};
use super::table::render;

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a network.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Only display network IDs.
        #[arg(long, short = 'q')]
        quiet: bool,
        /// Do not truncate the output.
        #[arg(long)]
        no_trunc: bool,
        /// Filter output based on conditions provided (driver=, id=, label=, name=, scope=).
        #[arg(long, short = 'f')]
        filter: Vec<String>,
        /// table, or json: one object per line with the table's fields.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Display detailed information on one or more networks.
    Inspect {
        /// json (the default): a JSON array.
        #[arg(long, short = 'f', value_enum)]
        format: Option<Format>,
        /// Also the services on the network with their VIP and running tasks, and the DNS
        /// records this node serves for it.
        #[arg(long, short = 'v')]
        verbose: bool,
        /// Network names, ids or unique id prefixes.
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove one or more networks.
    #[command(alias = "remove")]
    Rm {
        /// Network names, ids or unique id prefixes.
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Driver to manage the Network (overlay is the only one).
    #[arg(long, short = 'd', default_value = "overlay")]
    driver: String,
    /// Subnet in CIDR format that represents a network segment (repeatable).
    #[arg(long)]
    subnet: Vec<String>,
    /// IPv4 or IPv6 Gateway for the master subnet (repeatable, one per subnet).
    #[arg(long)]
    gateway: Vec<String>,
    /// Allocate container ip from a sub-range (repeatable, one per subnet).
    #[arg(long = "ip-range")]
    ip_range: Vec<String>,
    /// Set driver specific options (key=value), e.g. com.docker.network.driver.mtu=1400.
    #[arg(long, short = 'o')]
    opt: Vec<String>,
    /// Enable manual container attachment.
    #[arg(long)]
    attachable: bool,
    /// Restrict external access to the network.
    #[arg(long)]
    internal: bool,
    /// Create swarm routing-mesh network.
    #[arg(long)]
    ingress: bool,
    /// Enable IPv6 networking (needs an IPv6 --subnet).
    #[arg(long)]
    ipv6: bool,
    /// Set metadata on a network (key=value), repeatable.
    #[arg(long)]
    label: Vec<String>,
    /// Control the network's scope (swarm is the only one).
    #[arg(long)]
    scope: Option<String>,
    /// IP Address Management Driver (default is the only one).
    #[arg(long = "ipam-driver")]
    ipam_driver: Option<String>,
    /// The network's name.
    name: String,
}

/// "k=v" (or "k") into a map; `what` names the flag in errors.
pub(super) fn key_values(items: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
        if k.is_empty() {
            bail!("invalid {what} {item:?}: use key=value");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// First 12 characters of an id, as docker shows it.
pub(super) fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Pairs --subnet, --gateway and --ip-range as docker does: each gateway and ip-range goes with
/// the subnet that contains it. A single subnet takes them as given (the allocator checks).
pub fn pair_ipam(
    subnets: &[String],
    gateways: &[String],
    ranges: &[String],
) -> Result<Vec<IpamConfig>> {
    if subnets.len() < gateways.len() || subnets.len() < ranges.len() {
        bail!("every ip-range or gateway must have a corresponding subnet (--subnet)");
    }
    if subnets.len() <= 1 {
        return Ok(subnets
            .iter()
            .map(|s| IpamConfig {
                subnet: s.clone(),
                gateway: gateways.first().cloned().unwrap_or_default(),
                ip_range: ranges.first().cloned().unwrap_or_default(),
                ..Default::default()
            })
            .collect());
    }
    let mut parsed = Vec::new();
    for s in subnets {
        let Some(p) = parse_cidr(s) else {
            bail!("invalid subnet {s:?}: give a CIDR such as 10.0.9.0/24");
        };
        parsed.push(p);
    }
    for i in 0..subnets.len() {
        for j in i + 1..subnets.len() {
            let (a, b) = (&subnets[i], &subnets[j]);
            if cidr_contains(a, parsed[j].0) || cidr_contains(b, parsed[i].0) {
                bail!("subnets {a} and {b} overlap: give subnets that do not overlap");
            }
        }
    }
    let mut out: Vec<IpamConfig> = subnets
        .iter()
        .map(|s| IpamConfig {
            subnet: s.clone(),
            ..Default::default()
        })
        .collect();
    for r in ranges {
        let Some((addr, _)) = parse_cidr(r) else {
            bail!("invalid ip-range {r:?}: give a CIDR such as 10.0.9.128/25");
        };
        let Some(c) = out.iter_mut().find(|c| cidr_contains(&c.subnet, addr)) else {
            bail!("no matching subnet for range {r}");
        };
        if !c.ip_range.is_empty() {
            bail!(
                "cannot configure multiple ranges ({r}, {}) on the same subnet ({})",
                c.ip_range,
                c.subnet
            );
        }
        c.ip_range = r.clone();
    }
    for g in gateways {
        let Ok(addr) = g.trim().parse::<IpAddr>() else {
            bail!("invalid gateway {g:?}: give an IP address such as 10.0.9.1");
        };
        let Some(c) = out.iter_mut().find(|c| cidr_contains(&c.subnet, addr)) else {
            bail!("no matching subnet for gateway {g}");
        };
        if !c.gateway.is_empty() {
            bail!(
                "cannot configure multiple gateways ({g}, {}) for the same subnet ({})",
                c.gateway,
                c.subnet
            );
        }
        c.gateway = g.clone();
    }
    Ok(out)
}

async fn create(client: &Client, a: CreateArgs) -> Result<()> {
    let config = pair_ipam(&a.subnet, &a.gateway, &a.ip_range)?;
    let req = CreateRequest {
        name: a.name,
        check_duplicate: true,
        driver: a.driver,
        scope: a.scope.unwrap_or_default(),
        enable_ipv6: a.ipv6,
        ipam: Some(Ipam {
            driver: a.ipam_driver.unwrap_or_else(|| "default".into()),
            options: None,
            config,
        }),
        internal: a.internal,
        attachable: a.attachable,
        ingress: a.ingress,
        options: key_values(&a.opt, "option (--opt)")?,
        labels: key_values(&a.label, "label (--label)")?,
        ..Default::default()
    };
    let created: CreateResponse = client
        .post("/networks/create", serde_json::to_value(req)?)
        .await?
        .parse()?;
    if !created.warning.is_empty() {
        super::warn(&created.warning);
    }
    println!("{}", created.id);
    Ok(())
}

pub async fn run(client: &Client, cmd: NetworkCmd) -> Result<()> {
    match cmd {
        NetworkCmd::Create(a) => create(client, a).await?,
        NetworkCmd::Ls {
            quiet,
            no_trunc,
            filter,
            format,
        } => {
            let filters = parse_filters(&filter)?;
            let r = client
                .get(&format!("/networks?{}", filters_query(&filters)))
                .await?;
            if let Some(why) = &r.stale {
                super::warn(why);
            }
            let nets: Vec<NetworkResource> = r.parse()?;
            let id = |n: &NetworkResource| if no_trunc { n.id.clone() } else { short(&n.id) };
            if quiet {
                for n in &nets {
                    println!("{}", id(n));
                }
            } else if format == Format::Json {
                for n in &nets {
                    let labels: Vec<String> =
                        n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let row = serde_json::json!({
                        "CreatedAt": n.created.to_string(),
                        "Driver": n.driver,
                        "ID": id(n),
                        "IPv6": n.enable_ipv6.to_string(),
                        "Internal": n.internal.to_string(),
                        "Labels": labels.join(","),
                        "Name": n.name,
                        "Scope": n.scope,
                    });
                    println!("{row}");
                }
            } else {
                let rows: Vec<Vec<String>> = nets
                    .iter()
                    .map(|n| vec![id(n), n.name.clone(), n.driver.clone(), n.scope.clone()])
                    .collect();
                print!(
                    "{}",
                    render(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows)
                );
            }
        }
        NetworkCmd::Inspect {
            format,
            verbose,
            networks,
        } => {
            if format == Some(Format::Table) {
                bail!("network inspect prints JSON; --format json is the only format");
            }
            let mut views = Vec::new();
            let mut failed = None;
            for n in &networks {
                let q = if verbose { "?verbose=true" } else { "" };
                match client.get(&format!("/networks/{}{q}", esc(n))).await {
                    Ok(r) => {
                        if let Some(why) = &r.stale {
                            super::warn(why);
                        }
                        views.push(r.parse::<NetworkResource>()?);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            println!("{}", serde_json::to_string_pretty(&views)?);
            if let Some(e) = failed {
                return Err(e);
            }
        }
        NetworkCmd::Rm { networks } => {
            let mut failed = Vec::new();
            for n in &networks {
                match client.delete(&format!("/networks/{}", esc(n))).await {
                    Ok(_) => println!("{n}"),
                    Err(e) => failed.push(e),
                }
            }
            super::collect_errors(failed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn ipam_pairs_by_containment() {
        let c = pair_ipam(
            &v(&["10.1.0.0/24", "10.2.0.0/24"]),
            &v(&["10.2.0.254", "10.1.0.254"]),
            &v(&["10.2.0.128/25"]),
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].gateway, "10.1.0.254");
        assert_eq!(c[0].ip_range, "");
        assert_eq!(c[1].gateway, "10.2.0.254");
        assert_eq!(c[1].ip_range, "10.2.0.128/25");
        // One subnet: as given, the allocator checks.
        let c = pair_ipam(&v(&["bogus"]), &v(&["x"]), &[]).unwrap();
        assert_eq!(c[0].gateway, "x");
        assert!(pair_ipam(&[], &v(&["10.0.0.1"]), &[]).is_err());
        let e = pair_ipam(&v(&["10.1.0.0/16", "10.1.2.0/24"]), &[], &[]).unwrap_err();
        assert!(e.to_string().contains("10.1.0.0/16 and 10.1.2.0/24"), "{e}");
        let e = pair_ipam(&v(&["10.1.0.0/24", "10.2.0.0/24"]), &v(&["10.3.0.1"]), &[]).unwrap_err();
        assert!(e.to_string().contains("no matching subnet"), "{e}");
        let e = pair_ipam(
            &v(&["10.1.0.0/24", "10.2.0.0/24"]),
            &v(&["10.1.0.1", "10.1.0.2"]),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("multiple gateways"), "{e}");
        // IPv6 next to IPv4.
        let c = pair_ipam(&v(&["10.1.0.0/24", "fd00:1::/64"]), &v(&["fd00:1::1"]), &[]).unwrap();
        assert_eq!(c[1].gateway, "fd00:1::1");
    }

    #[test]
    fn options_and_labels() {
        let m = key_values(&v(&["encrypted", "a=b=c"]), "option").unwrap();
        assert_eq!(m["encrypted"], "");
        assert_eq!(m["a"], "b=c");
        assert!(key_values(&v(&["=x"]), "option").is_err());
    }
}
