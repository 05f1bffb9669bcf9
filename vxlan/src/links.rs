//! Link helpers of the data plane: opening a task's namespace, batched and single link
//! requests, addresses, and the veth pair between a sandbox and a task.

use super::*;

pub(crate) fn open_task(path: &Path) -> Result<NetNs> {
    match NetNs::open_path(&path.to_string_lossy(), path) {
        Ok(ns) => Ok(ns),
        Err(netns::Error::NotFound(_)) => Err(Error::TaskNamespaceMissing {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Applies requests whose failure with one of `ignore` (e.g. ENOENT on delete) is fine.
pub(crate) fn batch_ignoring(nl: &mut Nl, reqs: Vec<Req>, ignore: &[i32]) -> Result<()> {
    let whats: Vec<String> = reqs.iter().map(|r| r.what.clone()).collect();
    for (r, what) in nl.batch(reqs)?.into_iter().zip(whats) {
        if let Err(e) = r
            && !ignore.contains(&e.errno)
        {
            return Err(Error::refused(what, nl.ns_name(), e));
        }
    }
    Ok(())
}

pub(crate) fn delete_link(nl: &mut Nl, l: &Link) -> Result<()> {
    batch_ignoring(
        nl,
        vec![kernel::del_link(l.index, &l.name)],
        &[libc::ENODEV],
    )
}

pub(crate) fn create_link(nl: &mut Nl, req: Req, name: &str) -> Result<Link> {
    nl.request(req)?;
    kernel::link_by_name(nl, name)?.ok_or_else(|| Error::Netlink {
        op: format!("find {name} after creating it"),
        ns: nl.ns_name().to_string(),
        detail: "it vanished".into(),
        errno: libc::ENODEV,
    })
}

/// Makes the IPv4 addresses of link `index` exactly `want`.
pub(crate) fn ensure_addrs(nl: &mut Nl, index: u32, dev: &str, want: &[Addr]) -> Result<()> {
    ensure_addrs_keeping(nl, index, dev, want, |_| false)
}

/// Makes the IPv4 addresses of link `index` `want`, plus those others that `keep` says belong
/// to someone else.
pub(crate) fn ensure_addrs_keeping(
    nl: &mut Nl,
    index: u32,
    dev: &str,
    want: &[Addr],
    keep: impl Fn(&Addr) -> bool,
) -> Result<()> {
    let have: Vec<Addr> = kernel::addrs(nl)?
        .into_iter()
        .filter(|a| a.index == index)
        .collect();
    let mut reqs = Vec::new();
    for a in &have {
        if !want.contains(a) && !keep(a) {
            reqs.push(kernel::del_addr(a, dev));
        }
    }
    for a in want {
        if !have.contains(a) {
            reqs.push(kernel::new_addr(a, dev));
        }
    }
    if reqs.is_empty() {
        return Ok(());
    }
    batch_ignoring(nl, reqs, &[libc::EADDRNOTAVAIL])
}

/// Which default route a task interface should carry.
#[derive(Clone, Copy)]
pub(crate) enum RouteWant {
    /// Leave the task's routes alone (overlay endpoints).
    Leave,
    /// Default route via this gateway on the interface.
    Via(Ipv4Addr),
    /// No default route through the interface.
    Without,
}

/// A veth pair from a bridge (in the namespace of `host_nl`) into a task namespace.
pub(crate) struct VethWant<'a> {
    pub(crate) host_name: String,
    pub(crate) master: u32,
    pub(crate) isolated: bool,
    pub(crate) mtu: u32,
    pub(crate) task: &'a NetNs,
    pub(crate) ifname: &'a str,
    pub(crate) mac: Mac,
    pub(crate) addr: Ipv4Addr,
    pub(crate) prefix: u8,
    pub(crate) route: RouteWant,
}

pub(crate) fn ensure_veth(host_nl: &mut Nl, counter: &Arc<Counter>, w: &VethWant) -> Result<()> {
    let host = kernel::link_by_name(host_nl, &w.host_name)?;
    let mut task_nl = Nl::open(w.task, counter.clone())?;
    // The task's loopback is up too (its DNS resolver listens on 127.0.0.11).
    if let Some(lo) = kernel::link_by_name(&mut task_nl, "lo")?
        && !lo.up
    {
        task_nl.request(kernel::set_link(
            &lo,
            &LinkChange {
                up: true,
                ..Default::default()
            },
        ))?;
    }
    let tl = kernel::link_by_name(&mut task_nl, w.ifname)?;
    let paired = match (&host, &tl) {
        (Some(h), Some(t)) => {
            h.is("veth") && t.is("veth") && h.link == Some(t.index) && t.link == Some(h.index)
        }
        _ => false,
    };
    let (host, tl) = if paired {
        let (h, t) = (host.expect("paired"), tl.expect("paired"));
        let hc = LinkChange {
            mtu: (h.mtu != w.mtu).then_some(w.mtu),
            up: !h.up,
            master: (h.master != Some(w.master)).then_some(w.master),
            mac: None,
        };
        if !hc.is_empty() {
            host_nl.request(kernel::set_link(&h, &hc))?;
        }
        let tc = LinkChange {
            mtu: (t.mtu != w.mtu).then_some(w.mtu),
            up: !t.up,
            master: None,
            mac: (t.mac != w.mac.0).then_some(w.mac),
        };
        if !tc.is_empty() {
            task_nl.request(kernel::set_link(&t, &tc))?;
        }
        (h, t)
    } else {
        // Replace whatever half-made or foreign pair holds the names (a crash left it).
        if let Some(h) = &host {
            delete_link(host_nl, h)?;
        }
        if let Some(t) = kernel::link_by_name(&mut task_nl, w.ifname)? {
            delete_link(&mut task_nl, &t)?;
        }
        let req = kernel::new_veth(&kernel::VethSpec {
            name: &w.host_name,
            master: w.master,
            mtu: w.mtu,
            peer_name: w.ifname,
            peer_mac: w.mac,
            peer_ns: w.task,
        });
        let h = create_link(host_nl, req, &w.host_name)?;
        let t = kernel::link_by_name(&mut task_nl, w.ifname)?.ok_or_else(|| Error::Netlink {
            op: format!("find {} in the task after creating it", w.ifname),
            ns: w.task.name().to_string(),
            detail: "it is not there".into(),
            errno: libc::ENODEV,
        })?;
        if !t.up {
            task_nl.request(kernel::set_link(
                &t,
                &LinkChange {
                    up: true,
                    ..Default::default()
                },
            ))?;
        }
        (h, t)
    };
    if w.isolated && host.isolated != Some(true) {
        host_nl.request(kernel::set_isolated(&host))?;
    }
    // The endpoint's own address; /32s next to it are the load balancer's (IPVS puts the VIPs
    // of a network on its load-balancer endpoint) and are not this reconcile's to remove.
    let own_prefix = w.prefix;
    ensure_addrs_keeping(
        &mut task_nl,
        tl.index,
        w.ifname,
        &[Addr {
            index: tl.index,
            addr: w.addr,
            prefix: w.prefix,
        }],
        |a| a.prefix == 32 && own_prefix != 32,
    )?;
    match w.route {
        RouteWant::Leave => {}
        RouteWant::Via(gw) => {
            let routes = kernel::default_routes(&mut task_nl)?;
            let ok = routes
                .iter()
                .any(|r| r.gateway == Some(gw) && r.oif == Some(tl.index) && r.metric == 0);
            if !ok {
                task_nl.request(kernel::replace_default_route(gw, tl.index))?;
            }
        }
        RouteWant::Without => {
            let reqs: Vec<Req> = kernel::default_routes(&mut task_nl)?
                .iter()
                .filter(|r| r.oif == Some(tl.index))
                .map(kernel::del_default_route)
                .collect();
            if !reqs.is_empty() {
                batch_ignoring(&mut task_nl, reqs, &[libc::ESRCH, libc::ENOENT])?;
            }
        }
    }
    Ok(())
}
