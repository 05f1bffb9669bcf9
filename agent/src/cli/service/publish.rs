//! `--publish`, `--publish-add`, `--publish-rm` as docker's CLI reads them, and the PORTS column
//! of `service ls`.
//!
//! Short syntax `[PUBLISHED:]TARGET[/PROTOCOL]` (ingress mode; a missing published port is
//! allocated by the swarm from 30000-32767), long syntax
//! `published=P,target=T,protocol=tcp|udp,mode=ingress|host`.

use ::api::service::{PortConfig, Service, ServiceSpec};
use anyhow::{Result, anyhow, bail};

fn port_number(what: &str, v: &str, spec: &str) -> Result<u32> {
    let n: u32 = v.trim().parse().map_err(|_| {
        anyhow!("invalid {what} {v:?} in --publish {spec:?}: give a port between 1 and 65535")
    })?;
    if n == 0 || n > 65535 {
        bail!("invalid {what} {n} in --publish {spec:?}: give a port between 1 and 65535");
    }
    Ok(n)
}

fn protocol(v: &str, spec: &str) -> Result<String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "tcp" => Ok("tcp".into()),
        "udp" => Ok("udp".into()),
        other => bail!(
            "invalid protocol {other:?} in --publish {spec:?}: use tcp or udp (sctp is not supported)"
        ),
    }
}

/// One `--publish` value in either syntax.
pub fn parse(spec: &str) -> Result<PortConfig> {
    let s = spec.trim();
    if s.is_empty() {
        bail!("--publish needs a port, e.g. 8080:80 or published=8080,target=80");
    }
    if s.contains('=') {
        return parse_long(s);
    }
    let (ports, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, protocol(proto, spec)?),
        None => (s, "tcp".to_string()),
    };
    if ports.contains('-') {
        bail!("port ranges in --publish {spec:?} are not supported: publish each port");
    }
    let (published, target) = match ports.split(':').collect::<Vec<_>>()[..] {
        [t] => (0, port_number("target port", t, spec)?),
        [p, t] => (
            port_number("published port", p, spec)?,
            port_number("target port", t, spec)?,
        ),
        _ => bail!(
            "invalid --publish {spec:?}: a published port cannot name a host address; use [PUBLISHED:]TARGET[/PROTOCOL]"
        ),
    };
    Ok(PortConfig {
        protocol: proto,
        target_port: target,
        published_port: published,
        publish_mode: "ingress".into(),
        ..Default::default()
    })
}

fn parse_long(spec: &str) -> Result<PortConfig> {
    let mut p = PortConfig {
        protocol: "tcp".into(),
        publish_mode: "ingress".into(),
        ..Default::default()
    };
    for field in spec.split(',') {
        let (k, v) = field.split_once('=').ok_or_else(|| {
            anyhow!("invalid field {field:?} in --publish {spec:?}: use key=value")
        })?;
        match k.trim().to_ascii_lowercase().as_str() {
            "published" => p.published_port = port_number("published port", v, spec)?,
            "target" => p.target_port = port_number("target port", v, spec)?,
            "protocol" => p.protocol = protocol(v, spec)?,
            "mode" => {
                p.publish_mode = match v.trim().to_ascii_lowercase().as_str() {
                    "ingress" => "ingress".into(),
                    "host" => "host".into(),
                    other => {
                        bail!("invalid mode {other:?} in --publish {spec:?}: use ingress or host")
                    }
                }
            }
            other => bail!(
                "invalid field key {other:?} in --publish {spec:?}: use published, target, protocol and mode"
            ),
        }
    }
    if p.target_port == 0 {
        bail!("--publish {spec:?} needs a target port: add target=PORT");
    }
    Ok(p)
}

/// One `--publish-rm` value: the published port (`8080`, `8080/udp`) or the long syntax.
pub fn parse_removal(spec: &str) -> Result<PortConfig> {
    let s = spec.trim();
    if s.contains('=') || s.contains(':') {
        let p = parse(s)?;
        if p.published_port == 0 {
            bail!("--publish-rm {spec:?} names no published port: add published=PORT");
        }
        return Ok(p);
    }
    let (port, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, protocol(proto, spec)?),
        None => (s, "tcp".to_string()),
    };
    Ok(PortConfig {
        protocol: proto,
        published_port: port_number("published port", port, spec)?,
        ..Default::default()
    })
}

fn same_port(a: &PortConfig, b: &PortConfig) -> bool {
    let proto = |p: &PortConfig| {
        if p.protocol.is_empty() {
            "tcp".to_string()
        } else {
            p.protocol.clone()
        }
    };
    a.published_port == b.published_port && proto(a) == proto(b)
}

/// `--publish-rm` then `--publish-add` applied to a spec read from the API; `allocated` are the
/// service's ports as the swarm allocated them (a port it chose is removed by that number).
pub fn update(
    spec: &mut ServiceSpec,
    allocated: &[PortConfig],
    add: &[String],
    rm: &[String],
) -> Result<()> {
    if add.is_empty() && rm.is_empty() {
        return Ok(());
    }
    let endpoint = spec.endpoint_spec.get_or_insert_with(Default::default);
    for r in rm {
        let r = parse_removal(r)?;
        let before = endpoint.ports.len();
        endpoint.ports.retain(|p| !same_port(p, &r));
        if endpoint.ports.len() == before
            && let Some(a) = allocated.iter().find(|a| same_port(a, &r))
        {
            // A port the swarm chose: the spec names it by its target with no published port.
            let chosen = PortConfig {
                published_port: 0,
                ..a.clone()
            };
            if let Some(i) = endpoint
                .ports
                .iter()
                .position(|p| same_port(p, &chosen) && p.target_port == a.target_port)
            {
                endpoint.ports.remove(i);
            }
        }
        if endpoint.ports.len() == before {
            bail!(
                "service {} publishes no port {}/{}: see `netctl service inspect {}`",
                spec.name,
                r.published_port,
                r.protocol,
                spec.name
            );
        }
    }
    for a in add {
        let p = parse(a)?;
        // A port given again replaces the old one (same published port and protocol).
        if p.published_port != 0 {
            endpoint.ports.retain(|x| !same_port(x, &p));
        }
        endpoint.ports.push(p);
    }
    Ok(())
}

/// docker's PORTS cell: `*:8080->80/tcp`, host-mode ports as `8080->80/tcp` without the `*:`
/// (the allocated ports, from Endpoint.Ports).
pub fn ports_cell(s: &Service) -> String {
    let ports = if s.endpoint.ports.is_empty() {
        s.spec
            .endpoint_spec
            .as_ref()
            .map(|e| e.ports.clone())
            .unwrap_or_default()
    } else {
        s.endpoint.ports.clone()
    };
    ports
        .iter()
        .map(|p| {
            let proto = if p.protocol.is_empty() {
                "tcp"
            } else {
                &p.protocol
            };
            let star = if p.publish_mode == "host" { "" } else { "*:" };
            format!("{star}{}->{}/{proto}", p.published_port, p.target_port)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triple(p: &PortConfig) -> (u32, u32, &str, &str) {
        (
            p.published_port,
            p.target_port,
            p.protocol.as_str(),
            p.publish_mode.as_str(),
        )
    }

    #[test]
    fn both_syntaxes() {
        assert_eq!(
            triple(&parse("8080:80").unwrap()),
            (8080, 80, "tcp", "ingress")
        );
        assert_eq!(
            triple(&parse("8080:80/udp").unwrap()),
            (8080, 80, "udp", "ingress")
        );
        assert_eq!(triple(&parse("80").unwrap()), (0, 80, "tcp", "ingress"));
        assert_eq!(
            triple(&parse("published=8080,target=80,protocol=udp,mode=host").unwrap()),
            (8080, 80, "udp", "host")
        );
        assert_eq!(
            triple(&parse("target=80").unwrap()),
            (0, 80, "tcp", "ingress")
        );
        for (bad, says) in [
            ("70000:80", "invalid published port 70000"),
            ("8080:0", "invalid target port 0"),
            ("8080:80/sctp", "sctp is not supported"),
            ("1.2.3.4:8080:80", "host address"),
            ("8080-8081:80-81", "ranges"),
            ("published=8080", "needs a target port"),
            ("published=8080,target=80,mode=x", "use ingress or host"),
            ("published=8080,target=80,foo=1", "invalid field key"),
            ("", "needs a port"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn add_and_remove() {
        let mut spec = ServiceSpec {
            name: "web".into(),
            ..Default::default()
        };
        update(&mut spec, &[], &["8080:80".into(), "53:53/udp".into()], &[]).unwrap();
        assert_eq!(spec.endpoint_spec.as_ref().unwrap().ports.len(), 2);
        // Re-adding a published port replaces it.
        update(&mut spec, &[], &["8080:81".into()], &[]).unwrap();
        let ports = &spec.endpoint_spec.as_ref().unwrap().ports;
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[1].target_port, 81);
        update(&mut spec, &[], &[], &["53/udp".into()]).unwrap();
        assert_eq!(spec.endpoint_spec.as_ref().unwrap().ports.len(), 1);
        let e = update(&mut spec, &[], &[], &["53".into()]).unwrap_err();
        assert!(e.to_string().contains("publishes no port 53/tcp"), "{e}");
        update(&mut spec, &[], &[], &["published=8080,target=81".into()]).unwrap();
        assert!(spec.endpoint_spec.as_ref().unwrap().ports.is_empty());
        // A port the swarm allocated is removed by its number.
        update(&mut spec, &[], &["80".into()], &[]).unwrap();
        let allocated = vec![PortConfig {
            published_port: 30000,
            ..spec.endpoint_spec.as_ref().unwrap().ports[0].clone()
        }];
        update(&mut spec, &allocated, &[], &["30000".into()]).unwrap();
        assert!(spec.endpoint_spec.as_ref().unwrap().ports.is_empty());
    }
}
