//! Refusals: a wrong token, a token of another swarm, a worker token used with `--manager`, a
//! client without a certificate (or with a foreign one) on 2377, a worker certificate on the Raft
//! service, malformed API JSON. Each is refused with a clear error, nothing panics, nothing
//! changes.

mod common;

use std::time::Duration;

use common::*;
use netagent::rpc::generated::ca_client::CaClient;
use netagent::rpc::generated::control_client::ControlClient;
use netagent::rpc::generated::dispatcher_client::DispatcherClient;
use netagent::rpc::generated::raft_client::RaftClient;
use netagent::rpc::messages::{PingRequest, SessionUp};

/// Runs `f` on a tokio runtime on a thread inside lab node `i` (sockets are that node's).
fn in_node<T: Send>(s: &Swarm, i: usize, f: impl FnOnce() -> T + Send) -> T {
    s.lab.node(i).in_ns(f).expect("enter the node")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn refusals_change_nothing() {
    if skip() {
        return;
    }
    pki::install_crypto_provider();
    let s = Swarm::agents(3);
    s.ctl(
        1,
        &[
            "swarm",
            "init",
            "--advertise-addr",
            &s.lab.node(1).addr().to_string(),
        ],
    );
    let addr = format!("{}:2377", s.lab.node(1).addr());
    let worker = s
        .ctl(1, &["swarm", "join-token", "-q", "worker"])
        .trim()
        .to_string();
    let before = s.ctl(1, &["node", "ls", "--format", "json"]);

    // A wrong secret with the right CA digest.
    let digest = worker.split('-').nth(2).unwrap().to_string();
    let wrong = format!("SWMTKN-1-{digest}-{}", "a".repeat(25));
    let err = s.ctl_err(2, &["swarm", "join", "--token", &wrong, &addr]);
    assert!(err.contains("invalid join token"), "{err}");
    // A token of another swarm: the pinned CA does not match, the join never reaches the CA.
    let other = format!(
        "SWMTKN-1-{}-{}",
        "1".repeat(50),
        worker.rsplit('-').next().unwrap()
    );
    let err = s.ctl_err(2, &["swarm", "join", "--token", &other, &addr]);
    assert!(err.contains("does not match the CA digest"), "{err}");
    // A worker token never makes a manager.
    let err = s.ctl_err(
        2,
        &["swarm", "join", "--manager", "--token", &worker, &addr],
    );
    assert!(err.contains("worker token"), "{err}");
    // Garbage.
    let err = s.ctl_err(2, &["swarm", "join", "--token", "SWMTKN-nope", &addr]);
    assert!(err.contains("invalid join token"), "{err}");
    let out = s.ctl(2, &["info"]);
    assert!(
        out.contains("inactive"),
        "the refused node is in no swarm: {out}"
    );

    // Malformed API JSON, wrong types, unknown fields, unknown routes: 4xx with a message.
    for (method, path, body) in [
        ("POST", "/nodes/node1/update", "{not json"),
        (
            "POST",
            "/nodes/node1/update",
            r#"{"Availability": "sideways"}"#,
        ),
        ("POST", "/nodes/node1/update", r#"{"Labels": 3}"#),
        ("POST", "/swarm/init", r#"{"DataPathPort": "x"}"#),
        ("POST", "/swarm/join", r#"[1, 2]"#),
        ("GET", "/no/such/route", ""),
    ] {
        let (code, body) = s.api(1, method, path, body);
        assert!((400..500).contains(&code), "{method} {path}: {code} {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON error: {body}"));
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }

    // The cluster port: no certificate, a foreign certificate, a worker's certificate.
    let ca_pem = std::fs::read_to_string(s.lab.node(1).dir().join("state/certs/ca.pem")).unwrap();
    let codes = in_node(&s, 2, || {
        rt().block_on(async {
            let anon = pki::tls::anonymous_client_config(&ca_pem).unwrap();
            let ch =
                netagent::rpc::transport::channel(&addr, anon, Duration::from_secs(5)).unwrap();
            let ping = ControlClient::new(ch.clone())
                .ping(PingRequest {})
                .await
                .unwrap_err();
            let vote = RaftClient::new(ch.clone())
                .vote(openraft::raft::VoteRequest::new(
                    openraft::Vote::new(99, 1),
                    None,
                ))
                .await
                .unwrap_err();
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(SessionUp::Heartbeat { problem: None })
                .await
                .unwrap();
            let session = DispatcherClient::new(ch)
                .session(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap_err();
            // A certificate from another CA fails the TLS handshake.
            let foreign_ca = pki::Ca::generate("other").unwrap();
            let keys = foreign_ca
                .issue(
                    &pki::Identity {
                        node_id: "intruder".into(),
                        role: pki::Role::Manager,
                        cluster_id: "other".into(),
                    },
                    Duration::from_secs(3600),
                )
                .unwrap();
            let mut tls = (*pki::tls::client_config(&ca_pem, &keys).unwrap()).clone();
            tls.alpn_protocols = vec![b"h2".to_vec()];
            let ch = netagent::rpc::transport::channel(
                &addr,
                std::sync::Arc::new(tls),
                Duration::from_secs(5),
            )
            .unwrap();
            let foreign = ControlClient::new(ch)
                .ping(PingRequest {})
                .await
                .unwrap_err();
            (ping, vote, session, foreign)
        })
    });
    for st in [&codes.0, &codes.1, &codes.2] {
        assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
        assert!(st.message().contains("node certificate"), "{st:?}");
    }
    assert_ne!(codes.3.code(), tonic::Code::Ok);

    // Nothing changed.
    let after = s.ctl(1, &["node", "ls", "--format", "json"]);
    assert_eq!(before, after);

    // A worker certificate may not speak Raft.
    s.ctl(3, &["swarm", "join", "--token", &worker, &addr]);
    let wdir = s.lab.node(3).dir().join("state/certs");
    let keys = pki::NodeKeys {
        cert_pem: std::fs::read_to_string(wdir.join("node.pem")).unwrap(),
        key_pem: std::fs::read_to_string(wdir.join("node.key")).unwrap(),
    };
    let st = in_node(&s, 3, || {
        rt().block_on(async {
            let tls = pki::tls::client_config(&ca_pem, &keys).unwrap();
            let ch = netagent::rpc::transport::channel(&addr, tls, Duration::from_secs(5)).unwrap();
            RaftClient::new(ch)
                .vote(openraft::raft::VoteRequest::new(
                    openraft::Vote::new(99, 1),
                    None,
                ))
                .await
                .unwrap_err()
        })
    });
    assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");
    assert!(st.message().contains("worker certificate"), "{st:?}");
    // The manager is alive and well, with its term untouched.
    s.ctl(1, &["node", "update", "--label-add", "still=ok", "node1"]);

    // Join attempts from one address are limited (20 at once, then one every 2 s); another
    // address is not slowed (node2 joins below).
    let codes = in_node(&s, 1, || {
        rt().block_on(async {
            let anon = pki::tls::anonymous_client_config(&ca_pem).unwrap();
            let ch =
                netagent::rpc::transport::channel(&addr, anon, Duration::from_secs(5)).unwrap();
            let mut codes = Vec::new();
            for _ in 0..30 {
                let st = CaClient::new(ch.clone())
                    .join(netagent::rpc::messages::JoinRequest {
                        token: wrong.clone(),
                        csr_pem: String::new(),
                        want_manager: false,
                        hostname: "flood".into(),
                        advertise_addr: "10.0.0.9".into(),
                        data_path_addr: "10.0.0.9".into(),
                        description: Default::default(),
                    })
                    .await
                    .unwrap_err();
                codes.push(st.code());
            }
            codes
        })
    });
    let limited = codes
        .iter()
        .filter(|c| **c == tonic::Code::ResourceExhausted)
        .count();
    let checked = codes
        .iter()
        .filter(|c| **c == tonic::Code::PermissionDenied)
        .count();
    // (one more may pass for each 2 s the loop took)
    assert!(
        (20..=25).contains(&checked) && limited == 30 - checked,
        "{codes:?}"
    );

    // A rotated token replaces the old one.
    let rotated = s
        .ctl(1, &["swarm", "join-token", "--rotate", "-q", "worker"])
        .trim()
        .to_string();
    assert!(
        rotated.starts_with("SWMTKN-1-") && rotated != worker,
        "{rotated}"
    );
    let shown = s.ctl(1, &["swarm", "join-token", "worker"]);
    assert!(
        shown.contains(&rotated) && shown.contains("netctl swarm join --token"),
        "{shown}"
    );
    let err = s.ctl_err(2, &["swarm", "join", "--token", &worker, &addr]);
    assert!(err.contains("invalid join token"), "{err}");
    let out = s.ctl(2, &["swarm", "join", "--token", &rotated, &addr]);
    assert!(out.contains("as a worker"), "{out}");
}

/// The certificate files of node `i` (a copy: they are replaced when the node's role changes).
fn keys_of(s: &Swarm, i: usize) -> pki::NodeKeys {
    let dir = s.lab.node(i).dir().join("state/certs");
    pki::NodeKeys {
        cert_pem: std::fs::read_to_string(dir.join("node.pem")).unwrap(),
        key_pem: std::fs::read_to_string(dir.join("node.key")).unwrap(),
    }
}

fn node_id(s: &Swarm, hostname: &str) -> String {
    s.node_as_seen_by(1, hostname).unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Authorization comes from the store, not from the certificate alone: a demoted manager's
/// still-valid manager certificate no longer proposes writes, a removed node's certificate is
/// refused everywhere (dispatcher, renewal), and unauthenticated input is bounded (a 100 MiB
/// join message, 1,000 junk handshakes) while the manager keeps serving writes.
#[test]
fn demoted_and_removed_nodes_lose_the_cluster_port() {
    if skip() {
        return;
    }
    pki::install_crypto_provider();
    let s = Swarm::start(3, 1);
    let addr = format!("{}:2377", s.lab.node(1).addr());
    let ca_pem = std::fs::read_to_string(s.lab.node(1).dir().join("state/certs/ca.pem")).unwrap();
    let manager_keys = keys_of(&s, 3);
    let worker_keys = keys_of(&s, 4);
    let node1 = node_id(&s, "node1");
    let label = |value: &str| {
        store::Batch::one(store::Change::Patch {
            kind: model::Kind::Node,
            id: node1.clone(),
            patch: serde_json::json!({"spec": {"labels": {"by": value}}}),
            version: None,
        })
    };
    let propose = |i: usize, keys: &pki::NodeKeys, value: &str| {
        let batch = label(value);
        in_node(&s, i, || {
            rt().block_on(async {
                let tls = pki::tls::client_config(&ca_pem, keys).unwrap();
                let ch =
                    netagent::rpc::transport::channel(&addr, tls, Duration::from_secs(5)).unwrap();
                ControlClient::new(ch)
                    .propose(netagent::rpc::messages::ProposeRequest { batch })
                    .await
            })
        })
    };
    // Before: node3's manager certificate proposes (to the leader, node1).
    let ok = propose(3, &manager_keys, "node3").expect("a manager may propose");
    assert!(ok.into_inner().is_ok());

    // Demoted: the same certificate, still valid, is refused at once on Control, then on Raft
    // once the leader took it out of Raft.
    s.ctl(1, &["node", "demote", "node3"]);
    let st = propose(3, &manager_keys, "demoted").unwrap_err();
    assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");
    assert!(st.message().contains("demoted"), "{st:?}");
    s.wait("node3 out of Raft", || {
        s.node_as_seen_by(1, "node3")
            .is_some_and(|n| n["ManagerStatus"].is_null())
    });
    let vote = in_node(&s, 3, || {
        rt().block_on(async {
            let tls = pki::tls::client_config(&ca_pem, &manager_keys).unwrap();
            let ch = netagent::rpc::transport::channel(&addr, tls, Duration::from_secs(5)).unwrap();
            RaftClient::new(ch)
                .vote(openraft::raft::VoteRequest::new(
                    openraft::Vote::new(99, 3),
                    None,
                ))
                .await
                .unwrap_err()
        })
    });
    assert_eq!(vote.code(), tonic::Code::PermissionDenied, "{vote:?}");
    assert!(vote.message().contains("left Raft"), "{vote:?}");

    // Removed: the worker leaves and is removed; its certificate opens nothing any more.
    s.ctl(4, &["swarm", "leave"]);
    s.ctl(1, &["node", "rm", "--force", "node4"]);
    let (session, renew) = in_node(&s, 4, || {
        rt().block_on(async {
            let tls = pki::tls::client_config(&ca_pem, &worker_keys).unwrap();
            let ch = netagent::rpc::transport::channel(&addr, tls, Duration::from_secs(5)).unwrap();
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(SessionUp::Heartbeat { problem: None })
                .await
                .unwrap();
            let session = DispatcherClient::new(ch.clone())
                .session(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap_err();
            let renew = CaClient::new(ch)
                .renew(netagent::rpc::messages::RenewRequest {
                    csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
                })
                .await
                .unwrap_err();
            (session, renew)
        })
    });
    for st in [&session, &renew] {
        assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");
        assert!(
            st.message().contains("removed") || st.message().contains("revoked"),
            "{st:?}"
        );
    }

    // Unauthenticated input: a 100 MiB join request is refused unread; 1,000 junk handshakes
    // are dropped; the manager keeps serving writes throughout.
    let token = s
        .ctl(1, &["swarm", "join-token", "-q", "worker"])
        .trim()
        .to_string();
    let rss = |s: &Swarm| {
        let m = s.metrics(1);
        (
            metric(&m, "netagent_process_resident_memory_bytes", &[]),
            metric(&m, "netagent_process_resident_memory_peak_bytes", &[]),
        )
    };
    let (rss_before, _) = rss(&s);
    let (big, junk_sent) = in_node(&s, 4, || {
        rt().block_on(async {
            let anon = pki::tls::anonymous_client_config(&ca_pem).unwrap();
            let ch =
                netagent::rpc::transport::channel(&addr, anon, Duration::from_secs(20)).unwrap();
            let big = CaClient::new(ch)
                .max_encoding_message_size(usize::MAX)
                .join(netagent::rpc::messages::JoinRequest {
                    token: token.clone(),
                    csr_pem: "A".repeat(100 << 20),
                    want_manager: false,
                    hostname: "big".into(),
                    advertise_addr: "10.0.0.9".into(),
                    data_path_addr: "10.0.0.9".into(),
                    description: Default::default(),
                })
                .await
                .unwrap_err();
            let mut sent = 0;
            for _ in 0..1000 {
                use tokio::io::AsyncWriteExt;
                if let Ok(mut tcp) = tokio::net::TcpStream::connect(&addr).await {
                    let _ = tcp.write_all(b"\x16\x03\x01\x00\x05junk-not-a-hello").await;
                    sent += 1;
                }
            }
            (big, sent)
        })
    });
    println!("a 100 MiB join request: {:?} {}", big.code(), big.message());
    assert_ne!(big.code(), tonic::Code::Ok);
    assert!(
        matches!(
            big.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Cancelled
        ) || big.message().contains("message length too large"),
        "{big:?}"
    );
    assert_eq!(junk_sent, 1000);
    s.ctl(1, &["node", "update", "--label-add", "after=junk", "node1"]);
    // Memory stays bounded: the 100 MiB message was never buffered.
    let (rss_after, peak) = rss(&s);
    println!(
        "manager memory: {:.1} MiB before, {:.1} MiB after, peak {:.1} MiB",
        rss_before / 1048576.0,
        rss_after / 1048576.0,
        peak / 1048576.0
    );
    assert!(rss_before > 0.0 && peak > 0.0);
    assert!(
        peak < rss_before + 64.0 * 1048576.0,
        "the manager's memory grew by more than 64 MiB: {rss_before} -> peak {peak}"
    );
    let nodes = s.ctl(1, &["node", "ls"]);
    assert!(!nodes.contains("big"), "{nodes}");
    // Counted.
    let m = s.metrics(1);
    let refused: f64 = ["control", "raft", "member"]
        .iter()
        .map(|svc| {
            metric(
                &m,
                "netagent_cluster_port_refused_total",
                &[("service", svc), ("code", "PermissionDenied")],
            )
        })
        .sum();
    assert!(refused >= 4.0, "refusals counted: {refused}");
}

/// Node certificates live as long as the cluster says (`--cert-expiry`) and every node renews
/// its own before it ends, without leaving Ready; a node restarted after its first certificate
/// expired comes back on the renewed one. `swarm update --cert-expiry` changes the lifetime of
/// the next certificates.
#[test]
fn certificates_renew_before_they_expire() {
    if skip() {
        return;
    }
    let s = Swarm::agents(3);
    s.ctl(
        1,
        &[
            "swarm",
            "init",
            "--cert-expiry",
            "12s",
            "--advertise-addr",
            &s.lab.node(1).addr().to_string(),
        ],
    );
    // Readiness is judged on heartbeats; the lab's 200 ms ones miss under a loaded machine.
    s.ctl(1, &["swarm", "update", "--dispatcher-heartbeat", "1s"]);
    let addr = format!("{}:2377", s.lab.node(1).addr());
    let token = |role: &str| {
        s.ctl(1, &["swarm", "join-token", "-q", role])
            .trim()
            .to_string()
    };
    s.ctl(2, &["swarm", "join", "--token", &token("manager"), &addr]);
    s.ctl(3, &["swarm", "join", "--token", &token("worker"), &addr]);
    let life = |i: usize| {
        let (from, to) = pki::validity(&keys_of(&s, i).cert_pem).unwrap();
        to - from - pki::NODE_CERT_BACKDATE_SECS
    };
    assert_eq!(life(3), 12, "the worker's certificate lives --cert-expiry");
    let first: Vec<String> = (1..=3).map(|i| keys_of(&s, i).cert_pem).collect();
    let all_ready = || {
        s.nodes(1)
            .is_some_and(|n| n.len() == 3 && n.iter().all(|n| state(n) == "ready"))
    };
    s.wait("every node Ready", all_ready);

    // Two lifetimes: every node renews at least twice and nobody leaves Ready.
    let start = std::time::Instant::now();
    let mut renewals = [0usize; 3];
    let mut last = first.clone();
    let mut not_ready = 0;
    while start.elapsed() < Duration::from_secs(26) {
        if !all_ready() {
            not_ready += 1;
        }
        for i in 1..=3 {
            let now = keys_of(&s, i).cert_pem;
            if now != last[i - 1] {
                renewals[i - 1] += 1;
                last[i - 1] = now;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("renewals per node in 26 s: {renewals:?}; polls with a node not Ready: {not_ready}");
    assert!(renewals.iter().all(|r| *r >= 2), "{renewals:?}");
    assert_eq!(not_ready, 0, "a node left Ready while renewing");
    let pretty = s.ctl(1, &["node", "inspect", "--pretty", "node3"]);
    assert!(pretty.contains("Certificate Expiry:"), "{pretty}");

    // The first certificates have expired: a restarted worker and manager connect on the
    // renewed ones.
    s.restart(3);
    s.restart(2);
    s.wait("node2 and node3 Ready again after restarting", all_ready);
    // node2 reads its own replica, which may still be catching up after its restart.
    s.wait("node2's replica holds node3", || {
        s.node_as_seen_by(2, "node3").is_some()
    });
    s.ctl(
        2,
        &["node", "update", "--label-add", "renewed=yes", "node3"],
    );

    // A longer lifetime applies from the next renewal on.
    s.ctl(1, &["swarm", "update", "--cert-expiry", "1h"]);
    s.wait("node3's certificate lives an hour", || life(3) == 3600);
}
