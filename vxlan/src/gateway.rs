//! The gateway bridge (`docker_gwbridge`) and the task interfaces on it: [`Dataplane`]'s
//! egress half.

use std::path::Path;

use super::*;

impl Dataplane {
    /// Ensures the gateway bridge: a bridge in the node namespace with the gateway address,
    /// IPv4 forwarding on, masquerade of its subnet and no traffic between its ports.
    pub fn ensure_gwbridge(&mut self, gw: &GwBridge) -> Result<()> {
        gw.validate()?;
        let mtu = gw.mtu.unwrap_or(self.ctx.underlay_mtu);
        let nl = &mut self.nl;
        let br = match kernel::link_by_name(nl, &gw.name)? {
            Some(l) if l.is("bridge") => {
                let c = LinkChange {
                    mtu: (l.mtu != mtu).then_some(mtu),
                    up: !l.up,
                    ..Default::default()
                };
                if !c.is_empty() {
                    nl.request(kernel::set_link(&l, &c))?;
                }
                l
            }
            Some(l) => {
                return Err(Error::NameTaken {
                    name: gw.name.clone(),
                    ns: self.ctx.node.name().to_string(),
                    found: l.kind_name(),
                    want: "bridge",
                });
            }
            None => create_link(nl, kernel::new_bridge(&gw.name, mtu), &gw.name)?,
        };
        ensure_addrs(
            nl,
            br.index,
            &gw.name,
            &[Addr {
                index: br.index,
                addr: gw.gateway(),
                prefix: gw.subnet.prefix_len(),
            }],
        )?;
        if nft::ensure_sysctl(&self.ctx.node, "net/ipv4/ip_forward", "1")? {
            self.ctx.counter.add(1);
        }
        let (script, tag) = nft::script(&gw.name, &gw.subnet);
        if !nft::is_current(&self.ctx.node, &tag)? {
            nft::apply(&self.ctx.node, &script)?;
            self.ctx.counter.add(1);
        }
        self.gw = Some(gw.clone());
        Ok(())
    }

    /// Removes the gateway bridge, every gateway endpoint and the nftables table.
    pub fn remove_gwbridge(&mut self) -> Result<()> {
        let name = self
            .gw
            .take()
            .map(|g| g.name)
            .unwrap_or_else(|| DEFAULT_GWBRIDGE.to_string());
        let links = kernel::links(&mut self.nl)?;
        let veths: Vec<Link> = links.iter().filter(|l| is_gw_veth(l)).cloned().collect();
        delete_links_in_parallel(&self.ctx, &self.ctx.node, veths)?;
        if let Some(br) = links.iter().find(|l| l.name == name && l.is("bridge")) {
            delete_link(&mut self.nl, br)?;
        }
        if nft::exists(&self.ctx.node)? {
            nft::delete(&self.ctx.node)?;
            self.ctx.counter.add(1);
        }
        Ok(())
    }

    /// Ensures a task's interface on the gateway bridge (isolated from the other tasks) and,
    /// with `default_route`, the task's default route via the bridge's address.
    pub fn ensure_gateway_endpoint(&mut self, ep: &GatewayEndpoint) -> Result<()> {
        check_ifname(&ep.ifname)?;
        let gw = self.gw.clone().ok_or_else(|| Error::NoGwBridge {
            path: ep.netns.clone(),
        })?;
        check_host("a gateway endpoint", &gw.subnet, ep.address)?;
        if ep.address == gw.gateway() {
            return Err(Error::invalid(
                format!("gateway endpoint address {}", ep.address),
                "it is the gateway bridge's own address",
            ));
        }
        let task = open_task(&ep.netns)?;
        let br = kernel::link_by_name(&mut self.nl, &gw.name)?
            .filter(|l| l.is("bridge"))
            .ok_or_else(|| Error::NoGwBridge {
                path: ep.netns.clone(),
            })?;
        ensure_veth(
            &mut self.nl,
            &self.ctx.counter,
            &VethWant {
                host_name: veth_name(GW_TAG, &ep.netns, &ep.ifname),
                master: br.index,
                isolated: true,
                mtu: gw.mtu.unwrap_or(self.ctx.underlay_mtu),
                task: &task,
                ifname: &ep.ifname,
                mac: ep.mac(),
                addr: ep.address,
                prefix: gw.subnet.prefix_len(),
                route: if ep.default_route {
                    RouteWant::Via(gw.gateway())
                } else {
                    RouteWant::Without
                },
            },
        )
    }

    /// Removes a task's gateway endpoint; an absent one is not an error.
    pub fn remove_gateway_endpoint(&mut self, netns: &Path, ifname: &str) -> Result<()> {
        check_ifname(ifname)?;
        let name = veth_name(GW_TAG, netns, ifname);
        if let Some(l) = kernel::link_by_name(&mut self.nl, &name)? {
            delete_link(&mut self.nl, &l)?;
        }
        Ok(())
    }
}
