//! The operator's side of networks and services, in a swarm of 1 manager + 1 worker: `network
//! create / ls / inspect / rm` and their refusals, `service create / ls / inspect / update /
//! scale / ps / rm` and their validation, the API's answers to malformed requests, and the
//! progress display. Nothing here waits for tasks to run (that is tests/services.rs).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use common::*;
use serde_json::Value;

/// A raw request to node `i`'s API socket: (status, body).
fn api(s: &Swarm, i: usize, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut stream = UnixStream::connect(sock(&s.lab, i)).expect("API socket");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: netagent\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn lines(text: &str) -> Vec<Value> {
    text.lines().map(json).collect()
}

fn is_id(s: &str) -> bool {
    s.len() == 25
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// The single error line of a failed netctl.
fn one_line(err: &str) -> &str {
    let e = err.trim();
    assert_eq!(e.lines().count(), 1, "one line expected: {e}");
    e
}

#[test]
fn networks_round_trip_and_refusals() {
    if skip() {
        return;
    }
    let s = Swarm::start(1, 1);

    // create prints the full id.
    let front = s
        .ctl(
            1,
            &[
                "network",
                "create",
                "--driver",
                "overlay",
                "--subnet",
                "10.50.0.0/24",
                "--gateway",
                "10.50.0.254",
                "--ip-range",
                "10.50.0.128/25",
                "--opt",
                "com.docker.network.driver.mtu=1400",
                "--opt",
                "custom=1",
                "--label",
                "team=a",
                "--attachable",
                "front",
            ],
        )
        .trim()
        .to_string();
    assert!(is_id(&front), "{front}");
    let back = s.ctl(1, &["network", "create", "-d", "overlay", "back"]);
    assert!(is_id(back.trim()), "{back}");
    let multi = s.ctl(
        1,
        &["network", "create", "--subnet", "10.60.0.0/24", "multi"],
    );
    assert!(is_id(multi.trim()), "{multi}");
    // Several subnets and IPv6 are not carried end to end yet: refused at create, with one
    // clear line, through netctl and through the Docker API (the bodies the docker CLI sends
    // for `--subnet a --subnet b` and `--ipv6 --subnet fd00:50::/64`); nothing is stored.
    for (args, want) in [
        (
            "--subnet 10.62.0.0/24 --subnet 10.63.0.0/24 --gateway 10.63.0.1 two",
            "more than one subnet",
        ),
        ("--subnet fd00:50::/64 --ipv6 six", "IPv6"),
        ("--subnet fd00:50::/64 six", "IPv6"),
        (
            "--subnet 10.64.0.0/24 --subnet fd00:51::/64 --ipv6 dual",
            "IPv6",
        ),
    ] {
        let mut argv = vec!["network", "create"];
        argv.extend(args.split(' '));
        let err = s.ctl_err(1, &argv);
        let e = one_line(&err);
        assert!(
            e.contains(want) && e.contains("not supported yet"),
            "{argv:?}: {e}"
        );
    }
    for (body, want) in [
        (
            r#"{"Name":"two","Driver":"overlay","IPAM":{"Driver":"default","Options":{},"Config":[{"Subnet":"10.62.0.0/24"},{"Subnet":"10.63.0.0/24","Gateway":"10.63.0.1"}]},"Options":{},"Labels":{},"CheckDuplicate":true}"#,
            "more than one subnet",
        ),
        (
            r#"{"Name":"six","Driver":"overlay","EnableIPv6":true,"IPAM":{"Driver":"default","Options":{},"Config":[{"Subnet":"fd00:50::/64"}]},"Options":{},"Labels":{},"CheckDuplicate":true}"#,
            "IPv6",
        ),
    ] {
        let (code, v) = api(&s, 1, "POST", "/v1.41/networks/create", body);
        assert_eq!(code, 400, "{v}");
        let m = v["message"].as_str().unwrap_or_else(|| panic!("{v}"));
        assert!(m.contains(want) && m.contains("not supported yet"), "{m}");
    }
    for name in ["two", "six", "dual"] {
        let err = s.ctl_err(1, &["network", "inspect", name]);
        assert!(err.contains("not found"), "{name} was stored: {err}");
    }

    // ls: docker's columns, sorted by name, 12-character ids.
    let table = s.ctl(1, &["network", "ls"]);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(
        rows[0].split_whitespace().collect::<Vec<_>>(),
        ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"],
        "{table}"
    );
    let names: Vec<&str> = rows[1..]
        .iter()
        .map(|r| r.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(
        names,
        ["back", "front", "ingress", "multi"],
        "swarm init made ingress: {table}"
    );
    let front_row = rows.iter().find(|r| r.contains(" front ")).unwrap();
    assert_eq!(
        front_row.split_whitespace().collect::<Vec<_>>(),
        [&front[..12], "front", "overlay", "swarm"]
    );
    let q = s.ctl(1, &["network", "ls", "-q"]);
    assert_eq!(q.lines().count(), 4, "three and ingress: {q}");
    assert!(q.lines().all(|l| l.len() == 12), "{q}");
    let rows = lines(&s.ctl(1, &["network", "ls", "--format", "json"]));
    assert_eq!(rows[1]["Name"], "front");
    assert_eq!(rows[1]["Driver"], "overlay");
    assert_eq!(rows[1]["Scope"], "swarm");
    let filtered = s.ctl(1, &["network", "ls", "-q", "--filter", "label=team=a"]);
    assert_eq!(filtered.trim(), &front[..12]);

    // inspect: docker's shape, by name, by id prefix, a JSON array.
    let v = json(&s.ctl(1, &["network", "inspect", "front"]));
    let n = &v[0];
    assert_eq!(n["Name"], "front");
    assert_eq!(n["Id"], front.as_str());
    assert_eq!(n["Scope"], "swarm");
    assert_eq!(n["Driver"], "overlay");
    assert_eq!(n["EnableIPv6"], false);
    assert_eq!(n["IPAM"]["Driver"], "default");
    assert!(n["IPAM"]["Options"].is_null());
    assert_eq!(n["IPAM"]["Config"][0]["Subnet"], "10.50.0.0/24");
    assert_eq!(n["IPAM"]["Config"][0]["Gateway"], "10.50.0.254");
    assert_eq!(n["IPAM"]["Config"][0]["IPRange"], "10.50.0.128/25");
    assert_eq!(n["Attachable"], true);
    assert_eq!(n["Internal"], false);
    assert_eq!(n["Ingress"], false);
    assert_eq!(n["ConfigOnly"], false);
    assert!(n["Containers"].is_object());
    assert_eq!(n["Options"]["com.docker.network.driver.mtu"], "1400");
    assert_eq!(n["Options"]["custom"], "1");
    let vni = n["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .unwrap();
    assert!(vni.parse::<u32>().is_ok_and(|v| v >= 4096), "{vni}");
    assert_eq!(n["Labels"]["team"], "a");
    assert!(n["Peers"].is_array() && n["Endpoints"].is_array(), "{n}");
    let by_prefix = json(&s.ctl(1, &["network", "inspect", &front[..6], "back"]));
    assert_eq!(by_prefix[0]["Id"], front.as_str());
    assert_eq!(by_prefix[1]["Name"], "back");
    let m = &json(&s.ctl(1, &["network", "inspect", "multi"]))[0];
    assert_eq!(m["IPAM"]["Config"][0]["Subnet"], "10.60.0.0/24");
    assert_eq!(m["IPAM"]["Config"][0]["Gateway"], "10.60.0.1");
    assert_eq!(m["IPAM"]["Config"].as_array().map(Vec::len), Some(1));
    let vnis = m["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .unwrap();
    assert_eq!(vnis.split(',').count(), 1, "{vnis}");
    let err = s.ctl_err(1, &["network", "inspect", "nope"]);
    assert!(err.contains("network nope not found"), "{err}");
    // A worker knows only the networks its tasks use (none here), as docker shows it.
    let err = s.ctl_err(2, &["network", "inspect", "front"]);
    assert!(
        err.contains("network front not found on this worker"),
        "{err}"
    );
    assert_eq!(s.ctl(2, &["network", "ls", "-q"]).trim(), "");

    // Refusals, each one clear line, nothing created.
    let refused = |args: &[&str], want: &[&str]| {
        let mut argv = vec!["network", "create"];
        argv.extend_from_slice(args);
        let err = s.ctl_err(1, &argv);
        let e = one_line(&err);
        for w in want {
            assert!(e.contains(w), "{argv:?}: {w:?} not in {e}");
        }
    };
    refused(&["front"], &["network with name front already exists"]);
    refused(
        &["--subnet", "10.50.0.0/16", "wide"],
        &["10.50.0.0/16", "10.50.0.0/24", "front"],
    );
    refused(
        &["--subnet", "10.50.0.0/24", "same"],
        &["10.50.0.0/24", "front"],
    );
    refused(
        &["--subnet", "10.0.0.300/24", "bad"],
        &["invalid subnet", "10.0.0.300/24"],
    );
    refused(
        &["--subnet", "10.70.0.0/24", "--gateway", "10.71.0.1", "gw"],
        &["gateway 10.71.0.1", "outside"],
    );
    refused(&["--driver", "bridge", "br"], &["bridge", "overlay"]);
    refused(
        &["--opt", "com.docker.network.driver.mtu=10", "tinymtu"],
        &["MTU", "68"],
    );
    refused(&["bad name"], &["invalid network name"]);
    refused(&["--ipv6", "v6only"], &["IPv6", "not supported yet"]);
    assert_eq!(
        s.ctl(1, &["network", "ls", "-q"]).lines().count(),
        4,
        "three and ingress"
    );

    // rm: refused while a service uses the network; names printed like docker.
    s.ctl(
        1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "user",
            "--network",
            "front",
            "--",
            "sleep",
            "3600",
        ],
    );
    let err = s.ctl_err(1, &["network", "rm", "front"]);
    assert!(
        one_line(&err).contains("network front is in use by service user"),
        "{err}"
    );
    s.ctl(1, &["service", "rm", "user"]);
    // Its tasks may hold addresses until the leader loop stopped them.
    s.wait("front can be removed", || {
        s.netctl(1, &["network", "rm", "front"]).status.success()
    });
    let out = s.ctl(1, &["network", "rm", "back", &multi.trim()[..8]]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["back", &multi.trim()[..8]]
    );
    let left = s.ctl(1, &["network", "ls"]);
    assert_eq!(left.lines().count(), 2, "only ingress is left: {left}");
    assert!(left.contains(" ingress "), "{left}");
    let err = s.ctl_err(1, &["network", "rm", "front"]);
    assert!(err.contains("not found"), "{err}");

    // Concurrent creations: distinct subnets and VNIs (allocation holds the leader's lock), and
    // of two creations of one name exactly one wins.
    let outs: Vec<std::process::Output> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let name = if i < 4 {
                    format!("p{i}")
                } else {
                    "twin".into()
                };
                let s = &s;
                sc.spawn(move || s.netctl(1, &["network", "create", &name]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(outs.iter().filter(|o| o.status.success()).count(), 5);
    let nets = json(&s.ctl(1, &["network", "inspect", "p0", "p1", "p2", "p3", "twin"]));
    let subnets: std::collections::BTreeSet<&str> = nets
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["IPAM"]["Config"][0]["Subnet"].as_str().unwrap())
        .collect();
    assert_eq!(subnets.len(), 5, "{nets}");
    let vnis: std::collections::BTreeSet<&str> = nets
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            n["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(vnis.len(), 5, "{nets}");
    s.ctl(1, &["network", "rm", "p0", "p1", "p2", "p3", "twin"]);

    // A network may be called like a route ("create").
    let id = s.ctl(1, &["network", "create", "create"]);
    let v = json(&s.ctl(1, &["network", "inspect", "create"]));
    assert_eq!(v[0]["Id"], id.trim());
    assert_eq!(s.ctl(1, &["network", "rm", "create"]).trim(), "create");
}

#[test]
fn services_api_validation_update_scale_rm() {
    if skip() {
        return;
    }
    let s = Swarm::start(1, 1);
    let red = s.ctl(1, &["network", "create", "--subnet", "10.80.0.0/24", "red"]);
    let red = red.trim();
    let blue = s.ctl(1, &["network", "create", "blue"]);
    let blue = blue.trim();

    // Validation: one clear line, non-zero exit, nothing created.
    let refused = |args: &[&str], want: &str| {
        let mut argv = vec!["service", "create", "--detach"];
        argv.extend_from_slice(args);
        let err = s.ctl_err(1, &argv);
        let e = one_line(&err);
        assert!(e.contains(want), "{argv:?}: {want:?} not in {e}");
    };
    refused(
        &["--name", "a", "--network", "nope", "sleep", "1"],
        "network nope not found",
    );
    refused(
        &[
            "--name",
            "a",
            "--constraint",
            "node.colour==red",
            "sleep",
            "1",
        ],
        "invalid constraint",
    );
    refused(
        &[
            "--name",
            "a",
            "--constraint",
            "node.hostname=x",
            "sleep",
            "1",
        ],
        "invalid constraint",
    );
    refused(
        &["--name", "a", "--replicas", "-1", "sleep", "1"],
        "invalid replicas value -1: must be a non-negative integer",
    );
    refused(
        &["--name", "a", "--replicas", "two", "sleep", "1"],
        "invalid replicas value two",
    );
    refused(
        &[
            "--name",
            "a",
            "--mode",
            "global",
            "--replicas",
            "2",
            "sleep",
            "1",
        ],
        "replicas can only be used with replicated mode",
    );
    refused(
        &["--name", "a", "--mode", "job", "sleep", "1"],
        "invalid mode",
    );
    refused(&["--name", "a"], "needs a command");
    refused(&["sleep", "1"], "needs a name");
    refused(&["--name", "a b", "sleep", "1"], "invalid service name");
    refused(
        &["--name", "a", "--endpoint-mode", "x", "sleep", "1"],
        "invalid endpoint mode",
    );
    refused(
        &[
            "--name",
            "a",
            "--network",
            "red",
            "--network",
            "red",
            "sleep",
            "1",
        ],
        "more than once",
    );
    assert_eq!(s.ctl(1, &["service", "ls", "-q"]), "");

    // The API itself refuses what netctl would have caught, and malformed JSON.
    let (status, body) = api(
        &s,
        1,
        "POST",
        "/services/create",
        r#"{"Name":"a","Mode":{"Replicated":{"Replicas":-1}},"TaskTemplate":{"ContainerSpec":{"Command":["sleep","1"]}}}"#,
    );
    assert_eq!(status, 400);
    assert_eq!(
        body["message"],
        "invalid replicas value -1: must be a non-negative integer"
    );
    for bad in [r#"{"Name":"#, r#"{"Name":["a"]}"#, r#"[1,2]"#] {
        let (status, body) = api(&s, 1, "POST", "/services/create", bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("malformed request body"),
            "{body}"
        );
        let (status, _) = api(&s, 1, "POST", "/networks/create", bad);
        assert_eq!(status, 400, "{bad}");
    }
    let (status, _) = api(
        &s,
        1,
        "POST",
        "/services/nope/update",
        r#"{"Mode":{"Replicated":{"Replicas":"x"}}}"#,
    );
    assert_eq!(status, 400);
    let (status, body) = api(
        &s,
        1,
        "GET",
        "/tasks?filters=%7B%22colour%22%3A%7B%22red%22%3Atrue%7D%7D",
        "",
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(s.ctl(1, &["service", "ls", "-q"]), "");

    // create --detach prints only the id.
    let out = s.ctl(
        1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "web",
            "--replicas",
            "2",
            "--network",
            "name=red,alias=www",
            "--env",
            "A=1",
            "--label",
            "tier=front",
            "--constraint",
            "node.role==worker",
            "--",
            "sleep",
            "1000",
        ],
    );
    let web = out.trim();
    assert!(is_id(web), "{out}");
    refused(
        &["--name", "web", "sleep", "1"],
        "service with name web already exists",
    );

    // ls
    let table = s.ctl(1, &["service", "ls"]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["ID", "NAME", "MODE", "REPLICAS", "COMMAND", "PORTS"],
        "{table}"
    );
    assert_eq!(rows[1][..3], [&web[..12], "web", "replicated"], "{table}");
    assert!(rows[1][3].ends_with("/2"), "{table}");
    assert_eq!(rows[1][4..], ["sleep", "1000"], "{table}");
    let row = &lines(&s.ctl(1, &["service", "ls", "--format", "json"]))[0];
    assert_eq!(row["Name"], "web");
    assert_eq!(row["Mode"], "replicated");

    // inspect: docker's shape.
    let v = &json(&s.ctl(1, &["service", "inspect", "web"]))[0];
    assert_eq!(v["ID"], web);
    assert_eq!(v["Spec"]["Name"], "web");
    assert_eq!(v["Spec"]["Labels"]["tier"], "front");
    assert_eq!(v["Spec"]["Mode"]["Replicated"]["Replicas"], 2);
    let tpl = &v["Spec"]["TaskTemplate"];
    assert_eq!(
        tpl["ContainerSpec"]["Command"],
        serde_json::json!(["sleep", "1000"])
    );
    assert_eq!(tpl["ContainerSpec"]["Env"], serde_json::json!(["A=1"]));
    assert_eq!(
        tpl["Placement"]["Constraints"],
        serde_json::json!(["node.role==worker"])
    );
    assert_eq!(tpl["Networks"][0]["Target"], red);
    assert_eq!(tpl["Networks"][0]["Aliases"], serde_json::json!(["www"]));
    assert_eq!(v["Spec"]["EndpointSpec"]["Mode"], "vip");
    assert_eq!(v["Endpoint"]["Spec"]["Mode"], "vip");
    assert_eq!(v["Endpoint"]["VirtualIPs"][0]["NetworkID"], red);
    let vip = v["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().unwrap();
    assert!(vip.starts_with("10.80.0.") && vip.ends_with("/24"), "{vip}");
    let version = v["Version"]["Index"].as_u64().unwrap();
    let by_prefix = &json(&s.ctl(1, &["service", "inspect", &web[..5]]))[0];
    assert_eq!(by_prefix["ID"], web);
    let pretty = s.ctl(1, &["service", "inspect", "--pretty", "web"]);
    for want in [
        &format!("ID:             {web}"),
        "Name:           web",
        "Service Mode:   Replicated",
        " Replicas:      2",
        " Constraints:   [node.role==worker]",
        " Command:       sleep 1000",
        "Networks: red",
        "Endpoint Mode:  vip",
    ] {
        assert!(pretty.contains(want), "{want:?} not in\n{pretty}");
    }
    let err = s.ctl_err(1, &["service", "inspect", "nope"]);
    assert!(err.contains("no such service: nope"), "{err}");

    // update: replicas, networks, env, constraints, labels; version checked on the leader.
    let out = s.ctl(
        1,
        &[
            "service",
            "update",
            "--detach",
            "--replicas",
            "3",
            "--network-add",
            "blue",
            "--env-add",
            "B=2",
            "--env-rm",
            "A",
            "--constraint-rm",
            "node.role == worker",
            "--label-add",
            "z=1",
            "--label-rm",
            "tier",
            "--update-parallelism",
            "2",
            "web",
        ],
    );
    assert_eq!(out.trim(), "web");
    let v = &json(&s.ctl(1, &["service", "inspect", "web"]))[0];
    assert!(v["Version"]["Index"].as_u64().unwrap() > version);
    assert_eq!(v["Spec"]["Mode"]["Replicated"]["Replicas"], 3);
    let tpl = &v["Spec"]["TaskTemplate"];
    assert_eq!(tpl["ContainerSpec"]["Env"], serde_json::json!(["B=2"]));
    assert!(tpl["Placement"]["Constraints"].is_null(), "{tpl}");
    assert_eq!(tpl["Networks"][1]["Target"], blue);
    assert_eq!(v["Spec"]["Labels"], serde_json::json!({"z": "1"}));
    assert_eq!(v["Spec"]["UpdateConfig"]["Parallelism"], 2);
    let vips = v["Endpoint"]["VirtualIPs"].as_array().unwrap();
    assert_eq!(vips.len(), 2, "{v}");
    assert_eq!(vips[0]["Addr"], vip, "the VIP on red is kept");
    let err = s.ctl_err(
        1,
        &[
            "service",
            "update",
            "--detach",
            "--network-add",
            "red",
            "web",
        ],
    );
    assert!(
        one_line(&err).contains("already attached to network red"),
        "{err}"
    );
    let err = s.ctl_err(
        1,
        &["service", "update", "--detach", "--replicas", "-2", "web"],
    );
    assert!(err.contains("invalid replicas value -2"), "{err}");
    s.ctl(
        1,
        &["service", "update", "-d", "--network-rm", "red", "web"],
    );
    let v = &json(&s.ctl(1, &["service", "inspect", "web"]))[0];
    let vips = v["Endpoint"]["VirtualIPs"].as_array().unwrap();
    assert_eq!(vips.len(), 1);
    assert_eq!(vips[0]["NetworkID"], blue);
    let (status, body) = api(
        &s,
        1,
        "POST",
        "/services/web/update?version=1",
        r#"{"Name":"web","Mode":{"Replicated":{"Replicas":1}},"TaskTemplate":{"ContainerSpec":{"Command":["sleep","1"]}}}"#,
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("out of sequence")
    );

    // scale
    let out = s.ctl(1, &["service", "scale", "--detach", "web=0"]);
    assert_eq!(out.trim(), "web scaled to 0");
    let v = &json(&s.ctl(1, &["service", "inspect", "web"]))[0];
    assert_eq!(v["Spec"]["Mode"]["Replicated"]["Replicas"], 0);
    let err = s.ctl_err(1, &["service", "scale", "web"]);
    assert!(err.contains("invalid scale specifier"), "{err}");
    let err = s.ctl_err(1, &["service", "scale", "-d", "web=-1"]);
    assert!(err.contains("invalid replicas value -1"), "{err}");

    // global and dnsrr services.
    s.ctl(
        1,
        &[
            "service", "create", "-d", "--mode", "global", "--name", "g", "sleep", "1000",
        ],
    );
    s.ctl(
        1,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "d",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            "red",
            "sleep",
            "1000",
        ],
    );
    let rows = lines(&s.ctl(1, &["service", "ls", "--format", "json"]));
    let names: Vec<&str> = rows.iter().map(|r| r["Name"].as_str().unwrap()).collect();
    assert_eq!(names, ["d", "g", "web"]);
    assert_eq!(rows[1]["Mode"], "global");
    let d = &json(&s.ctl(1, &["service", "inspect", "d"]))[0];
    assert!(d["Endpoint"]["VirtualIPs"].is_null(), "{d}");
    let err = s.ctl_err(1, &["service", "scale", "-d", "g=2"]);
    assert!(err.contains("global"), "{err}");
    let g = &json(&s.ctl(1, &["service", "inspect", "--format", "json", "g"]))[0];
    assert!(g["Spec"]["Mode"]["Global"].is_object(), "{g}");

    // ps: the table's header whatever the leader loop did so far; unknown service refused.
    let ps = s.ctl(1, &["service", "ps", "web", "g"]);
    assert_eq!(
        ps.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        [
            "ID", "NAME", "NODE", "DESIRED", "STATE", "CURRENT", "STATE", "ERROR"
        ]
    );
    s.ctl(
        1,
        &[
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            "g",
        ],
    );
    let err = s.ctl_err(1, &["service", "ps", "nope"]);
    assert!(err.contains("no such service: nope"), "{err}");
    let err = s.ctl_err(1, &["service", "ps", "--filter", "colour=red", "g"]);
    assert!(err.contains("invalid filter"), "{err}");

    // A worker cannot manage services.
    let err = s.ctl_err(2, &["service", "ls"]);
    assert!(err.contains("not a swarm manager"), "{err}");
    let err = s.ctl_err(2, &["service", "create", "-d", "--name", "w", "sleep", "1"]);
    assert!(err.contains("not a swarm manager"), "{err}");

    // Progress without --detach: zero replicas converge at once; an unplaceable task keeps
    // netctl waiting (bounded here), showing the slot.
    let out = s.ctl(
        1,
        &[
            "service",
            "create",
            "--name",
            "zero",
            "--replicas",
            "0",
            "--verify-ms",
            "300",
            "sleep",
            "1",
        ],
    );
    let out: Vec<&str> = out.lines().collect();
    assert!(is_id(out[0]), "{out:?}");
    assert!(
        out.contains(&"overall progress: 0 out of 0 tasks"),
        "{out:?}"
    );
    assert!(out.contains(&"verify: Service converged"), "{out:?}");
    let o = s.netctl(
        1,
        &[
            "service",
            "create",
            "--name",
            "nowhere",
            "--constraint",
            "node.hostname==nowhere",
            "--wait-timeout-ms",
            "1500",
            "sleep",
            "1",
        ],
    );
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("overall progress: 0 out of 1 tasks"), "{out}");
    assert!(out.contains("1/1: "), "{out}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("did not converge"),
        "{o:?}"
    );

    // rm prints the names; everything is gone.
    let out = s.ctl(1, &["service", "rm", "web", "g", "d", "zero", "nowhere"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["web", "g", "d", "zero", "nowhere"]
    );
    assert_eq!(s.ctl(1, &["service", "ls", "-q"]), "");
    let err = s.ctl_err(1, &["service", "rm", "web"]);
    assert!(err.contains("no such service: web"), "{err}");

    // A service may be called like a route ("create").
    let id = s.ctl(
        1,
        &["service", "create", "-d", "--name", "create", "sleep", "1"],
    );
    let v = json(&s.ctl(1, &["service", "inspect", "create"]));
    assert_eq!(v[0]["ID"], id.trim());
    assert_eq!(s.ctl(1, &["service", "rm", "create"]).trim(), "create");
}
