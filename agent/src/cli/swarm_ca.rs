//! `netctl swarm ca [--rotate [--detach] [-q]]`: the swarm's root CA certificate, and its
//! rotation (docker's `swarm ca`): the rotation is asked for as docker does (`/swarm/update`
//! with `CAConfig.ForceRotate` raised), then followed until every node holds a certificate of
//! the new root and trusts it alone.

use std::time::Duration;

use ::api::node::Node;
use ::api::swarm::Swarm;
use anyhow::Result;

use super::client::Client;

/// How many nodes hold a certificate issued by the wanted root, and how many trust it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    nodes: usize,
    certificates: usize,
    trust: usize,
    in_progress: bool,
}

impl Progress {
    fn done(&self) -> bool {
        !self.in_progress && self.certificates == self.nodes && self.trust == self.nodes
    }
}

fn progress(s: &Swarm, nodes: &[Node]) -> Progress {
    let c = &s.cluster;
    // During the rotation certificates come from the new root; the trust moves to it alone
    // once the rotation completed.
    let issuer = c.root_rotation.as_ref().unwrap_or(&c.tls_info);
    let root = c.tls_info.trust_root.trim();
    fn tls(n: &Node) -> &::api::swarm::TlsInfo {
        &n.description.tls_info
    }
    Progress {
        nodes: nodes.len(),
        certificates: nodes
            .iter()
            .filter(|n| {
                !issuer.cert_issuer_public_key.is_empty()
                    && tls(n).cert_issuer_public_key == issuer.cert_issuer_public_key
            })
            .count(),
        trust: nodes
            .iter()
            .filter(|n| !c.root_rotation_in_progress && tls(n).trust_root.trim() == root)
            .count(),
        in_progress: c.root_rotation_in_progress,
    }
}

async fn read(client: &Client) -> Result<(Swarm, Vec<Node>)> {
    let s: Swarm = client.get("/swarm").await?.parse()?;
    let nodes: Vec<Node> = client.get("/nodes").await?.parse()?;
    Ok((s, nodes))
}

pub async fn run(client: &Client, rotate: bool, detach: bool, quiet: bool) -> Result<()> {
    let current: Swarm = client.get("/swarm").await?.parse()?;
    if !rotate {
        if detach || quiet {
            anyhow::bail!("--detach and --quiet go with --rotate");
        }
        print!("{}", current.cluster.tls_info.trust_root);
        return Ok(());
    }
    let mut spec = current.cluster.spec.clone();
    spec.ca_config.force_rotate = spec.ca_config.force_rotate.wrapping_add(1);
    client
        .post(
            &format!(
                "/swarm/update?version={}",
                current.cluster.meta.version.index
            ),
            serde_json::to_value(&spec)?,
        )
        .await?;
    if detach {
        if !quiet {
            println!(
                "CA rotation started; `netctl swarm ca` shows the root CA, `netctl swarm inspect` whether the rotation is in progress."
            );
        }
        return Ok(());
    }
    let mut last: Option<Progress> = None;
    loop {
        let (s, nodes) = read(client).await?;
        let p = progress(&s, &nodes);
        let changed = last.is_none_or(|l| {
            (l.certificates, l.trust, l.nodes) != (p.certificates, p.trust, p.nodes)
        });
        if !quiet && changed {
            println!(
                "rotated TLS certificates: {}/{} nodes",
                p.certificates, p.nodes
            );
            println!("rotated CA certificates: {}/{} nodes", p.trust, p.nodes);
            if p.in_progress && p.certificates < p.nodes && last.is_none() {
                println!(
                    "(waiting for every node; a node that is down holds the rotation up: bring it back or remove it. Ctrl-C stops waiting, not the rotation)"
                );
            }
        }
        last = Some(p);
        if p.done() {
            if !quiet {
                print!("{}", s.cluster.tls_info.trust_root);
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::api::swarm::TlsInfo;

    const META: &str = r#""Version": {"Index": 1}, "CreatedAt": "2026-01-01T00:00:00Z", "UpdatedAt": "2026-01-01T00:00:00Z""#;

    fn tls(root: &str, key: &str) -> TlsInfo {
        TlsInfo {
            trust_root: root.into(),
            cert_issuer_subject: String::new(),
            cert_issuer_public_key: key.into(),
        }
    }

    fn node(t: TlsInfo) -> Node {
        let mut n: Node =
            serde_json::from_str(&format!(r#"{{"ID": "n", {META}, "Spec": {{}}}}"#)).unwrap();
        n.description.tls_info = t;
        n
    }

    #[test]
    fn progress_counts_certificates_then_trust() {
        let mut s: Swarm =
            serde_json::from_str(&format!(r#"{{"ID": "c", {META}, "JoinTokens": {{}}}}"#)).unwrap();
        s.cluster.tls_info = tls("OLD", "old-key");
        s.cluster.root_rotation_in_progress = true;
        s.cluster.root_rotation = Some(tls("NEW", "new-key"));
        let nodes = [
            node(tls("OLD\nNEW", "new-key")),
            node(tls("OLD\nNEW", "old-key")),
        ];
        let p = progress(&s, &nodes);
        assert_eq!((p.certificates, p.trust, p.done()), (1, 0, false));
        s.cluster.tls_info = tls("NEW\n", "new-key");
        s.cluster.root_rotation_in_progress = false;
        s.cluster.root_rotation = None;
        let nodes = [
            node(tls("NEW", "new-key")),
            node(tls("OLD\nNEW", "new-key")),
        ];
        let p = progress(&s, &nodes);
        assert_eq!((p.certificates, p.trust, p.done()), (2, 1, false));
        let p = progress(&s, &nodes[..1]);
        assert!(p.done());
    }
}
