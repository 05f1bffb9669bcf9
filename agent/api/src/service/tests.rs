//! The docker shape of services against the model: what the docker CLI sends, warnings, refusals.

use super::*;

/// What `docker service create --name web --replicas 3 --network X busybox httpd -f -p 80`
/// sends (CLI 28.2).
const DOCKER_CREATE: &str = r#"{"Name":"web","Labels":{},"TaskTemplate":{"ContainerSpec":{"Image":"busybox:latest","Args":["httpd","-f","-p","80"],"Init":false,"DNSConfig":{}},"Resources":{"Limits":{},"Reservations":{}},"Placement":{},"Networks":[{"Target":"netid123"}],"ForceUpdate":0},"Mode":{"Replicated":{"Replicas":3}},"EndpointSpec":{"Mode":"vip"}}"#;

#[test]
fn docker_cli_create_maps_to_a_process() {
    let spec: ServiceSpec = serde_json::from_str(DOCKER_CREATE).unwrap();
    let (m, warnings) = spec_to_model(&spec).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(m.task.argv(), ["busybox", "httpd", "-f", "-p", "80"]);
    assert_eq!(m.mode, ServiceMode::Replicated { replicas: 3 });
    assert_eq!(m.networks[0].target, "netid123");
    // Inspect gives it back as given.
    let svc = model::Service {
        meta: model::Meta::new(),
        spec: m,
        virtual_ips: Vec::new(),
        ports: vec![],
    };
    let back = service(&svc, None);
    let c = back.spec.task_template.container_spec.unwrap();
    assert_eq!(c.image, "busybox:latest");
    assert_eq!(c.args, ["httpd", "-f", "-p", "80"]);
    assert!(c.command.is_empty());
    assert_eq!(back.spec.mode.replicated.unwrap().replicas, Some(3));
}

#[test]
fn update_config_keeps_the_parallelism_and_warns_about_what_differs_from_docker() {
    let plain: ServiceSpec = serde_json::from_str(DOCKER_CREATE).unwrap();
    assert_eq!(spec_to_model(&plain).unwrap().0.update.parallelism, 1);
    // What `docker service create --update-parallelism 2` adds (the CLI's defaults for
    // the rest): no warning.
    let with = DOCKER_CREATE.replacen(
        r#""Name":"web","#,
        r#""Name":"web","UpdateConfig":{"Parallelism":2,"FailureAction":"pause","Monitor":5000000000,"MaxFailureRatio":0,"Order":"stop-first"},"#,
        1,
    );
    let spec: ServiceSpec = serde_json::from_str(&with).unwrap();
    let (m, w) = spec_to_model(&spec).unwrap();
    assert_eq!(m.update.parallelism, 2);
    assert!(w.is_empty(), "{w:?}");
    let svc = model::Service {
        meta: model::Meta::new(),
        spec: m,
        virtual_ips: Vec::new(),
        ports: vec![],
    };
    let back = serde_json::to_value(service(&svc, None)).unwrap();
    assert_eq!(back["Spec"]["UpdateConfig"]["Parallelism"], 2);
    assert_eq!(back["Spec"]["UpdateConfig"]["Order"], "start-first");
    // 0 is docker's "all at once"; what netagent does not do is named.
    let other = with
        .replace(r#""Parallelism":2"#, r#""Parallelism":0"#)
        .replace(
            r#""Order":"stop-first""#,
            r#""Order":"never","Delay":1000000000"#,
        );
    let spec: ServiceSpec = serde_json::from_str(&other).unwrap();
    let (m, w) = spec_to_model(&spec).unwrap();
    assert_eq!(m.update.parallelism, 0);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w.iter()
            .any(|w| w.starts_with("UpdateConfig.Order is ignored"))
    );
    assert!(
        w.iter()
            .any(|w| w.starts_with("UpdateConfig.Delay is ignored"))
    );
}

#[test]
fn meaningless_fields_warn_and_bad_ones_fail() {
    let mut spec: ServiceSpec = serde_json::from_str(DOCKER_CREATE).unwrap();
    let c = spec.task_template.container_spec.as_mut().unwrap();
    c.other
        .insert("Mounts".into(), serde_json::json!([{"Source": "/x"}]));
    spec.task_template.other.insert(
        "RestartPolicy".into(),
        serde_json::json!({"Condition": "none"}),
    );
    spec.endpoint_spec = Some(EndpointSpec {
        mode: "vip".into(),
        ports: vec![PortConfig {
            target_port: 80,
            published_port: 8080,
            ..Default::default()
        }],
    });
    let (m, w) = spec_to_model(&spec).unwrap();
    assert_eq!(m.endpoint.ports[0].published, 8080);
    assert!(
        w.iter()
            .any(|w| w.contains("ContainerSpec.Mounts is ignored")),
        "{w:?}"
    );
    assert!(
        w.iter().any(|w| w.contains("RestartPolicy is ignored")),
        "{w:?}"
    );
    assert!(!w.iter().any(|w| w.contains("8080")), "{w:?}");
    let mut far = spec.clone();
    far.endpoint_spec.as_mut().unwrap().ports[0].published_port = 70000;
    assert_eq!(
        spec_to_model(&far).unwrap_err().0,
        "invalid published port 70000: give a port between 1 and 65535"
    );
    let mut bad = spec.clone();
    bad.mode.replicated = Some(Replicated { replicas: Some(-1) });
    assert_eq!(
        spec_to_model(&bad).unwrap_err().0,
        "invalid replicas value -1: must be a non-negative integer"
    );
    let mut job = spec.clone();
    job.mode = Mode {
        replicated_job: Some(serde_json::json!({})),
        ..Default::default()
    };
    assert!(spec_to_model(&job).is_err());
    let mut sctp = spec.clone();
    sctp.endpoint_spec.as_mut().unwrap().ports[0].protocol = "sctp".into();
    assert!(spec_to_model(&sctp).is_err());
    let mut dnsrr = spec.clone();
    dnsrr.endpoint_spec.as_mut().unwrap().mode = "dnsrr".into();
    assert!(spec_to_model(&dnsrr).is_err());
    let mut none = spec;
    none.task_template.container_spec = None;
    assert!(
        spec_to_model(&none)
            .unwrap_err()
            .0
            .contains("needs a program")
    );
    // Wrong types are decoding errors.
    assert!(serde_json::from_str::<ServiceSpec>(r#"{"Name": 3}"#).is_err());
}
