//! Many services at once, through the API (scale tests and benchmarks).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Swarm;

/// Creates `n` services `s0000..` of one `sleep` task each on network `net`, from a few
/// threads at once (the API serializes what must be).
pub fn create_services(s: &Swarm, n: usize, net: &str) {
    create_range(s, 0..n, net)
}

/// Creates services `sNNNN` for every index of `range` (one `sleep` task each) on `net`.
pub fn create_range(s: &Swarm, range: std::ops::Range<usize>, net: &str) {
    let n = range.end;
    let next = AtomicUsize::new(range.start);
    std::thread::scope(|sc| {
        for _ in 0..8 {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let body = serde_json::json!({
                        "Name": format!("s{i:04}"),
                        "TaskTemplate": {
                            "ContainerSpec": {"Image": "sleep", "Args": ["3600"]},
                            "Networks": [{"Target": net}],
                        },
                        "Mode": {"Replicated": {"Replicas": 1}},
                    });
                    let (code, out) = s.api(1, "POST", "/services/create", &body.to_string());
                    assert_eq!(code, 201, "create s{i:04}: {out}");
                }
            });
        }
    });
}

/// How many tasks are running, per the store.
pub fn running_tasks(s: &Swarm) -> usize {
    let filters = r#"{"desired-state":{"running":true}}"#;
    let (code, body) = s.api(
        1,
        "GET",
        &format!("/tasks?filters={}", urlencode(filters)),
        "",
    );
    if code != 200 {
        return 0;
    }
    let tasks: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
    tasks
        .iter()
        .filter(|t| t["Status"]["State"] == "running")
        .count()
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
