//! The per-network sandbox below the [`crate::Dataplane`] API: its reconcile (bridge, VXLAN
//! device, then the peers' entries: [`crate::peers`]), VNI hand-over, removal, the fast path's
//! map sync, and the parallel helpers they use.

use super::*;

/// Runs `f` on every item on up to [`REMOVERS`] threads; returns the first error.
pub(crate) fn in_parallel<T: Send>(
    items: Vec<T>,
    f: impl Fn(T) -> Result<()> + Sync,
) -> Result<()> {
    if items.len() <= 1 {
        return items.into_iter().try_for_each(f);
    }
    let workers = items.len().min(REMOVERS);
    let queue = std::sync::Mutex::new(items);
    let first_err = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let item = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    let Some(item) = item else { break };
                    if let Err(e) = f(item) {
                        first_err
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Deletes links of namespace `ns` from several sockets at once.
pub(crate) fn delete_links_in_parallel(ctx: &Ctx, ns: &NetNs, links: Vec<Link>) -> Result<()> {
    in_parallel(links, |l| {
        let mut nl = Nl::open(ns, ctx.counter.clone())?;
        delete_link(&mut nl, &l)
    })
}

pub(crate) fn is_gw_veth(l: &Link) -> bool {
    l.is("veth")
        && l.name.len() == GW_TAG.len() + 12
        && l.name.starts_with(GW_TAG)
        && l.name[GW_TAG.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn peer_map(ctx: &Ctx, peers: &[Peer]) -> BTreeMap<Ipv4Addr, Peer> {
    peers
        .iter()
        .filter(|p| p.vtep != ctx.vtep)
        .map(|p| (p.ip, *p))
        .collect()
}

/// Makes an open sandbox match its network: lo up, `br0`, `vxlan0`, the gateway address and
/// the peers.
pub(crate) fn reconcile_sandbox(ctx: &Ctx, node_nl: &mut Nl, net: &mut Net) -> Result<PeerChanges> {
    let mtu = ctx.mtu(&net.spec);
    let sbox = net.sbox.as_mut().expect("sandbox is open");
    let links = kernel::links(&mut sbox.nl)?;
    if let Some(lo) = links.iter().find(|l| l.name == "lo")
        && !lo.up
    {
        sbox.nl.request(kernel::set_link(
            lo,
            &LinkChange {
                up: true,
                ..Default::default()
            },
        ))?;
    }
    let br = match links.iter().find(|l| l.name == BRIDGE) {
        Some(l) if l.is("bridge") => {
            let c = LinkChange {
                mtu: (l.mtu != mtu).then_some(mtu),
                up: !l.up,
                ..Default::default()
            };
            if !c.is_empty() {
                sbox.nl.request(kernel::set_link(l, &c))?;
            }
            l.clone()
        }
        other => {
            if let Some(l) = other {
                delete_link(&mut sbox.nl, l)?;
            }
            create_link(&mut sbox.nl, kernel::new_bridge(BRIDGE, mtu), BRIDGE)?
        }
    };
    let want = kernel::VxInfo {
        vni: net.spec.vni,
        port: ctx.port,
        local: Some(ctx.vtep),
        learning: false,
        proxy: true,
    };
    let vx = match links.iter().find(|l| l.name == VXLAN) {
        Some(l) if l.is("vxlan") && l.vxlan.as_ref() == Some(&want) => {
            let c = LinkChange {
                mtu: (l.mtu != mtu).then_some(mtu),
                up: !l.up,
                master: (l.master != Some(br.index)).then_some(br.index),
                mac: None,
            };
            if !c.is_empty() {
                sbox.nl.request(kernel::set_link(l, &c))?;
            }
            Some(l.clone())
        }
        other => {
            if let Some(l) = other {
                delete_link(&mut sbox.nl, l)?;
            }
            None
        }
    };
    let vx = match vx {
        Some(l) => l,
        None => {
            let spec = kernel::VxSpec {
                name: VXLAN,
                vni: net.spec.vni,
                port: ctx.port,
                local: ctx.vtep,
                mtu,
                target: &sbox.ns,
                master: Some(br.index),
            };
            match node_nl.try_request(kernel::new_vxlan(&spec))? {
                Ok(()) => {}
                Err(e) if e.errno == libc::EEXIST => {
                    free_vni(ctx, node_nl, net.spec.vni, sbox.ns.name())?;
                    node_nl
                        .try_request(kernel::new_vxlan(&spec))?
                        .map_err(|e| {
                            Error::refused(
                                format!("create {VXLAN} for network {}", net.spec.id),
                                ctx.node.name(),
                                e,
                            )
                        })?;
                }
                Err(e) => {
                    return Err(Error::refused(
                        format!("create {VXLAN} for network {}", net.spec.id),
                        ctx.node.name(),
                        e,
                    ));
                }
            }
            kernel::link_by_name(&mut sbox.nl, VXLAN)?.ok_or_else(|| Error::Netlink {
                op: format!("find {VXLAN} after creating it"),
                ns: sbox.ns.name().to_string(),
                detail: "it vanished".into(),
                errno: libc::ENODEV,
            })?
        }
    };
    ensure_addrs(
        &mut sbox.nl,
        br.index,
        BRIDGE,
        &[Addr {
            index: br.index,
            addr: net.spec.gateway,
            prefix: net.spec.subnet.prefix_len(),
        }],
    )?;
    // A reconcile reads the peers' entries back from the kernel (it repairs drift); a change
    // of the peer set alone ([`crate::Dataplane::set_peers`]) is written by difference.
    sbox.peers = None;
    match &net.peers {
        Some(peers) => apply_peers(sbox, vx.index, peers),
        None => Ok(PeerChanges::default()),
    }
}

/// The VNI is taken on the node's data-path port. Removes VXLAN devices with it from
/// netagent's own (stale) sandboxes; if another holds it, says which.
pub(crate) fn free_vni(ctx: &Ctx, node_nl: &mut Nl, vni: u32, own: &str) -> Result<()> {
    let holds = |l: &Link| {
        l.vxlan
            .as_ref()
            .is_some_and(|v| v.vni == vni && v.port == ctx.port)
    };
    let mut freed = false;
    for name in netns::list()? {
        if name == own || !name.starts_with(&ctx.sandbox_prefix()) {
            continue;
        }
        let Ok(ns) = NetNs::open(&name) else { continue };
        let Ok(mut nl) = Nl::open(&ns, ctx.counter.clone()) else {
            continue;
        };
        for l in kernel::links(&mut nl)? {
            if holds(&l) {
                tracing::warn!(vni, sandbox = %name, device = %l.name, "removing a stale VXLAN device that holds the VNI");
                delete_link(&mut nl, &l)?;
                freed = true;
            }
        }
    }
    if freed {
        return Ok(());
    }
    let holder = kernel::links(node_nl)?
        .into_iter()
        .find(|l| holds(l))
        .map(|l| {
            format!(
                "device {} in network namespace {:?}",
                l.name,
                ctx.node.name()
            )
        })
        .unwrap_or_else(|| {
            format!(
                "a VXLAN device created from network namespace {:?} and moved to a namespace \
                 netagent does not own",
                ctx.node.name()
            )
        });
    Err(Error::VniInUse {
        vni,
        port: ctx.port,
        holder,
    })
}

/// Removes a sandbox: its links first (the VNI is free at once and task interfaces go now,
/// not when the namespace is torn down later), then the namespace.
pub(crate) fn remove_sandbox(ctx: &Ctx, name: &str, sbox: Option<Sbox>) -> Result<()> {
    if !netns::exists(name) {
        return Ok(());
    }
    let sbox = match sbox {
        Some(s) => Some(s),
        None => NetNs::open(name).ok().and_then(|ns| {
            Nl::open(&ns, ctx.counter.clone())
                .ok()
                .map(|nl| Sbox::new(ns, nl))
        }),
    };
    if let Some(mut s) = sbox {
        let links = kernel::links(&mut s.nl)?;
        let reqs: Vec<Req> = links
            .iter()
            .filter(|l| l.name != "lo" && (l.is("veth") || l.is("vxlan")))
            .map(|l| kernel::del_link(l.index, &l.name))
            .collect();
        if !reqs.is_empty() {
            batch_ignoring(&mut s.nl, reqs, &[libc::ENODEV])?;
        }
        // Socket and namespace handle go before the name, so the namespace dies now.
        drop(s);
    }
    netns::delete(name)?;
    ctx.counter.add(1);
    if let Some(dir) = &ctx.bpf_dir {
        ctx.counter
            .add(fastpath::remove_pins(&fastpath::pin_dir(dir, name))?);
    }
    Ok(())
}

/// Whether this process uses the fast path: wanted and the kernel can run it (probed once per
/// process; what `node inspect` shows).
pub fn fast_path_status(wanted: bool) -> FastPathStatus {
    static PROBE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    if !wanted {
        return FastPathStatus::Disabled;
    }
    match PROBE.get_or_init(fastpath::probe) {
        Ok(()) => FastPathStatus::Ebpf,
        Err(why) => {
            tracing::warn!(reason = %why, "the overlay fast path is off: frames take the sandbox bridge");
            FastPathStatus::Unsupported(why.clone())
        }
    }
}

/// Makes a sandbox's fast path match: programs on `vxlan0` and every task veth, the map holding
/// the network's remote endpoints and local tasks. A failure is logged, not returned: frames the
/// fast path does not take go through the bridge, so the network keeps working.
pub(crate) fn sync_fast_path(ctx: &Ctx, net: &mut Net) -> Result<()> {
    if !ctx.fast.is_active() {
        // Switched off (or not possible any more): what an earlier run pinned goes, so no
        // program keeps redirecting with a map nobody updates.
        if let (Some(dir), Some(sbox)) = (&ctx.bpf_dir, net.sbox.as_ref()) {
            let pins = fastpath::pin_dir(dir, sbox.ns.name());
            if pins.exists() {
                crate::tcx::remove_link_pins(&sbox.ns, &pins);
                ctx.counter.add(fastpath::remove_pins(&pins)?);
                tracing::info!(network = %net.spec.id, "overlay fast path removed from the sandbox ({})", ctx.fast);
            }
        }
        return Ok(());
    }
    if let Err(e) = sync_fast_path_inner(ctx, net) {
        fast_path_not_updated(net, &e);
    }
    Ok(())
}

/// A fast path that could not be updated is logged, not returned: frames it does not take go
/// through the bridge, so the network keeps working.
fn fast_path_not_updated(net: &Net, e: &Error) {
    tracing::warn!(network = %net.spec.id, error = %e, "overlay fast path not updated; frames it does not know take the sandbox bridge");
}

/// After one local endpoint was added (its veth `veth`, its task's MAC): that veth attached and
/// its entry written, nothing dumped. Before a first full sync, does one.
pub(crate) fn sync_fast_path_local(ctx: &Ctx, net: &mut Net, veth: &Link, mac: Mac) -> Result<()> {
    if !ctx.fast.is_active() {
        return Ok(());
    }
    let Some(sbox) = net.sbox.as_mut() else {
        return Ok(());
    };
    let ns = &sbox.ns;
    match sbox.fp.as_mut() {
        Some(fp) if fp.serves(VXLAN) => {
            if let Err(e) = fp.add_local(ns, veth, mac) {
                fast_path_not_updated(net, &e);
            }
            Ok(())
        }
        _ => sync_fast_path(ctx, net),
    }
}

/// After one local endpoint was removed (its veth `veth`, its task's MAC `mac`): its entry and
/// link gone, nothing dumped. A MAC that is also a remote peer's (an address that moved to
/// another node) or a fast path not fully synced yet takes a full sync.
pub(crate) fn sync_fast_path_removed(ctx: &Ctx, net: &mut Net, veth: &str, mac: Mac) -> Result<()> {
    if !ctx.fast.is_active() {
        return Ok(());
    }
    let remote = net
        .peers
        .as_ref()
        .is_some_and(|p| p.values().any(|p| p.mac == mac));
    match net.sbox.as_mut().and_then(|s| s.fp.as_mut()) {
        Some(fp) if fp.serves(VXLAN) && !remote => {
            if let Err(e) = fp.remove_local(veth, mac) {
                fast_path_not_updated(net, &e);
            }
            Ok(())
        }
        _ => sync_fast_path(ctx, net),
    }
}

/// After a change of the peers alone: the fast path's remote entries follow them, for the MACs
/// `macs` (those of the changed peers) or for all. Its local entries and attachments stay as the
/// last full sync left them (local endpoints change through [`sync_fast_path`] and
/// [`sync_fast_path_local`]), so no link is dumped. Before a first full sync, does one.
pub(crate) fn sync_fast_path_peers(
    ctx: &Ctx,
    net: &mut Net,
    vx: u32,
    macs: Option<&BTreeSet<Mac>>,
) -> Result<()> {
    if !ctx.fast.is_active() {
        return Ok(());
    }
    let Some(fp) = net.sbox.as_mut().and_then(|s| s.fp.as_mut()) else {
        return sync_fast_path(ctx, net);
    };
    let Some(peers) = &net.peers else {
        return Ok(());
    };
    let r = match macs {
        Some(macs) => macs.iter().try_for_each(|mac| {
            let remote = peers.values().any(|p| p.mac == *mac).then_some(vx);
            fp.set_remote(*mac, remote)
        }),
        None => fp.sync(&fastpath::with_peers(
            fp.entries(),
            vx,
            peers.values().map(|p| p.mac),
        )),
    };
    if let Err(e) = r {
        fast_path_not_updated(net, &e);
    }
    Ok(())
}

pub(crate) fn sync_fast_path_inner(ctx: &Ctx, net: &mut Net) -> Result<()> {
    let Net {
        sbox, peers, local, ..
    } = net;
    let Some(sbox) = sbox.as_mut() else {
        return Ok(());
    };
    let links = kernel::links(&mut sbox.nl)?;
    let Some(vx) = links.iter().find(|l| l.name == VXLAN && l.is("vxlan")) else {
        return Ok(());
    };
    let veths: Vec<&Link> = links
        .iter()
        .filter(|l| l.name.starts_with(EP_TAG) && l.is("veth"))
        .collect();
    if sbox.fp.is_none() {
        let pin = ctx
            .bpf_dir
            .as_ref()
            .map(|d| fastpath::pin_dir(d, sbox.ns.name()));
        sbox.fp = Some(fastpath::Sandbox::open(&sbox.ns, pin, ctx.counter.clone())?);
    }
    let fp = sbox.fp.as_mut().expect("opened above");
    let mut devs = vec![(vx, fastpath::Hook::Vxlan)];
    devs.extend(veths.iter().map(|l| (*l, fastpath::Hook::Veth)));
    fp.ensure_attached(&sbox.ns, &devs)?;
    let peer_macs = peers.as_ref().map(|p| p.values().map(|p| p.mac).collect());
    let want = fastpath::wanted(fp.entries(), vx.index, peer_macs, local, &veths);
    fp.sync(&want)
}
