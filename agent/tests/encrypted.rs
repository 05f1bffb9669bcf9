//! Encrypted overlay networks through the operator's tools, on this host's kernel, which has no
//! ESP and no GCM (the traffic itself is tested in the kernel lab: vxlan/tests/esp.rs):
//! `--opt encrypted` is accepted and shown as docker shows it, nodes say they cannot carry it,
//! its tasks stay pending with the reason and nothing of the network is built, keys never show,
//! and the key rotation settings go through `swarm init/update`.

mod common;

use common::*;
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// No key material in an output: no field named like a key, no long hex string.
fn keyless(what: &str, text: &str) {
    let lower = text.to_lowercase();
    for word in ["network_keys", "\"key\"", "ipsec_keys", "gossip_keys"] {
        assert!(!lower.contains(word), "{what} shows {word}: {text}");
    }
    let longest_hex = text
        .split(|c: char| !c.is_ascii_hexdigit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(
        longest_hex < 32,
        "{what} holds a key-sized hex string: {text}"
    );
}

#[test]
fn encrypted_network_on_a_kernel_without_esp() {
    if skip() {
        return;
    }
    if vxlan::ipsec::probe().is_ok() {
        eprintln!("skipped: this kernel has ESP (the kernel lab covers encrypted traffic)");
        return;
    }
    let s = Swarm::start(1, 1);

    // Created, and inspect shows the option as docker does.
    let id = s.ctl(
        1,
        &[
            "network",
            "create",
            "--driver",
            "overlay",
            "--opt",
            "encrypted",
            "--subnet",
            "10.61.0.0/24",
            "secret",
        ],
    );
    let id = id.trim().to_string();
    let inspect = s.ctl(1, &["network", "inspect", "secret"]);
    let net = &json(&inspect)[0];
    assert_eq!(net["Options"]["encrypted"], "", "{inspect}");
    keyless("network inspect", &inspect);

    // Every node says it cannot carry encrypted networks, and why.
    for i in 1..=2 {
        let n = s.ctl(1, &["node", "inspect", s.lab.node(i).name()]);
        let d = &json(&n)[0]["Description"];
        assert_eq!(
            d["EncryptedNetworks"], "unsupported: kernel lacks esp4 / rfc4106(gcm(aes))",
            "{n}"
        );
        keyless("node inspect", &n);
    }

    // Its tasks stay pending with the reason; a plain service runs.
    s.ctl(
        1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "enc",
            "--replicas",
            "2",
            "--network",
            "secret",
            "--",
            "sleep",
            "3600",
        ],
    );
    s.ctl(
        1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "plain",
            "--replicas",
            "1",
            "--",
            "sleep",
            "3600",
        ],
    );
    s.wait("the encrypted service's tasks say why they wait", || {
        let ps = s.service_ps(1, "enc");
        ps.len() == 2
            && ps.iter().all(|t| {
                t["CurrentState"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Pending")
                    && t["Error"]
                        .as_str()
                        .unwrap_or("")
                        .contains("kernel lacks esp4 / rfc4106(gcm(aes)) on 2 nodes")
            })
    });
    s.wait("the plain service runs", || {
        s.running(1, "plain").len() == 1
    });

    // Nothing of the network exists on any node: no sandbox, no VXLAN device, no firewall
    // table, no IPsec state: nothing could flow, encrypted or not.
    for i in 1..=2 {
        let node = s.lab.node(i);
        let sandbox = format!("{}-n{i}-1-{}", s.lab.prefix(), &id[..10]);
        assert!(!netns::exists(&sandbox), "node {i} built {sandbox}");
        let links = node
            .run_ok(&["ip", "-d", "link", "show", "type", "vxlan"])
            .unwrap();
        assert!(links.trim().is_empty(), "node {i}: {links}");
        assert_eq!(node.run_ok(&["ip", "xfrm", "state"]).unwrap().trim(), "");
        let tables = node.run_ok(&["nft", "list", "tables"]).unwrap();
        assert!(
            !tables.contains(vxlan::ipsec_nft::TABLE),
            "node {i}: {tables}"
        );
    }
    assert!(s.task_namespaces(1).len() + s.task_namespaces(2).len() <= 1);

    // Key rotation: the period is set at update and shown; a forced rotation is accepted; the
    // keys themselves never show.
    s.ctl(1, &["swarm", "update", "--data-key-rotation", "1h"]);
    let before = json(&s.ctl(1, &["swarm", "inspect"]));
    assert_eq!(
        before[0]["Spec"]["EncryptionConfig"]["DataKeyRotation"],
        3_600_000_000_000u64
    );
    let version = before[0]["Version"]["Index"].as_u64().unwrap();
    s.ctl(1, &["swarm", "update", "--rotate-data-key"]);
    let after = s.ctl(1, &["swarm", "inspect"]);
    assert!(
        json(&after)[0]["Version"]["Index"].as_u64().unwrap() > version,
        "the rotation changed the cluster: {after}"
    );
    keyless("swarm inspect", &after);
    let (_, info) = s.api(1, "GET", "/info", "");
    keyless("info", &info);
    let err = s.ctl_err(1, &["swarm", "update", "--data-key-rotation", "5d"]);
    assert!(err.contains("invalid duration"), "{err}");
}
