//! The routing mesh's lab helpers: a 3-agent swarm with a client namespace, a web task that
//! says who answered and whom it saw, requests through a node, and the checks that keep the
//! ingress network out of service discovery.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use lab::Lab;

use super::{Swarm, agent_spec};

/// Every task serves `task=NAME peer=ADDR` at /cgi-bin/who (busybox httpd's CGI) and logs the
/// client's address on stderr.
pub const WEB: &str = r#"mkdir -p www/cgi-bin && printf '#!/bin/sh\necho "client $REMOTE_ADDR" >&2\nprintf "Content-Type: text/plain\\r\\n\\r\\ntask=%%s peer=%%s\\n" "$NETAGENT_TASK_NAME" "$REMOTE_ADDR"\n' > www/cgi-bin/who && chmod +x www/cgi-bin/who && exec busybox httpd -f -p 80 -h www"#;

/// A 3-agent swarm in a 4-node lab: node 4 is the client.
pub fn swarm_with_client() -> Swarm {
    let s = Swarm::agents_in(Lab::new(4).expect("lab"), 3, agent_spec);
    s.form(1, 2);
    s
}

/// One HTTP GET of /cgi-bin/who from the client: the answer's `task=.. peer=..` line.
pub fn who(s: &Swarm, addr: Ipv4Addr, port: u16) -> Result<String, String> {
    s.lab
        .node(4)
        .in_ns(move || {
            let to = SocketAddr::from((addr, port));
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(3))
                .map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            c.write_all(b"GET /cgi-bin/who HTTP/1.0\r\nHost: x\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut body = String::new();
            c.read_to_string(&mut body).map_err(|e| e.to_string())?;
            body.lines()
                .find(|l| l.starts_with("task="))
                .map(str::to_string)
                .ok_or_else(|| format!("no answer line in {body:?}"))
        })
        .expect("client namespace")
}

/// The mesh's tables on every node and in every sbox, for failure messages.
pub fn diag(s: &Swarm) -> String {
    let mut out = String::new();
    for i in 1..=3 {
        let node = s.lab.node(i);
        out += &format!("== node{i}\n{}", node.sh("nft list table ip netagent_ingress; ls /run/netns | grep -- \"-n$(hostname)\" ; true").unwrap_or_default());
        for ns in netns::list().unwrap_or_default() {
            if ns.starts_with(&format!("{}-n{i}-lb-", s.lab.prefix()))
                || ns.starts_with(&format!("{}-n{i}-t-", s.lab.prefix()))
            {
                let o = std::process::Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &ns,
                        "sh",
                        "-c",
                        "ip -br a; ip rule; nft list ruleset; cat /proc/net/nf_conntrack | tail -5",
                    ])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                out += &format!("-- {ns}\n{o}");
            }
        }
    }
    out
}

/// `count` requests through `addr:port`: (tasks that answered, peers they saw, failures).
pub fn load(
    s: &Swarm,
    addr: Ipv4Addr,
    port: u16,
    count: usize,
) -> (BTreeSet<String>, BTreeSet<String>, Vec<String>) {
    let mut tasks = BTreeSet::new();
    let mut peers = BTreeSet::new();
    let mut failed = Vec::new();
    for _ in 0..count {
        match who(s, addr, port) {
            Ok(line) => {
                for f in line.split_whitespace() {
                    if let Some(t) = f.strip_prefix("task=") {
                        tasks.insert(t.split('.').take(2).collect::<Vec<_>>().join("."));
                    }
                    if let Some(p) = f.strip_prefix("peer=") {
                        peers.insert(p.to_string());
                    }
                }
            }
            Err(e) => failed.push(e),
        }
    }
    (tasks, peers, failed)
}

/// Node `i`'s first task namespace and its address on the ingress network (`ingress`: the
/// subnet's prefix, e.g. "10.0.0.").
pub fn task_on_ingress(s: &Swarm, i: usize, ingress: &str) -> (super::tasks::TaskNs, Ipv4Addr) {
    let t = s
        .task_namespaces(i)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("a task on node{i}"));
    let addr = (0..4)
        .filter_map(|k| s.task_ip(&t, &format!("eth{k}")))
        .find(|a| a.to_string().starts_with(ingress))
        .unwrap_or_else(|| panic!("the task on node{i} has no ingress address"));
    (t, addr)
}

/// What the resolver of a task answers for `dig +short ARGS`, one answer a line.
pub fn dig_from_task(s: &Swarm, t: &super::tasks::TaskNs, args: &[&str]) -> Vec<String> {
    let mut argv = vec!["dig", "@127.0.0.11", "+time=5", "+tries=2", "+short"];
    argv.extend_from_slice(args);
    let out = s.in_task(t, &argv);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect()
}

/// Docker leaves the ingress network out of service discovery: a task's names answer its
/// addresses on its user networks only, and an ingress address has no name.
pub fn no_ingress_names(s: &Swarm, i: usize, names: &[&str], ingress: &str) {
    let (t, addr) = task_on_ingress(s, i, ingress);
    for name in names {
        let answer = dig_from_task(s, &t, &[name]);
        eprintln!("dig {name} from a task on node{i}: {answer:?}");
        assert!(
            answer.iter().all(|a| !a.starts_with(ingress)),
            "{name} resolves to an ingress address from node{i}: {answer:?}"
        );
    }
    let ptr = dig_from_task(s, &t, &["-x", &addr.to_string()]);
    assert!(
        ptr.is_empty(),
        "the ingress address {addr} has a name from node{i}: {ptr:?}"
    );
}
