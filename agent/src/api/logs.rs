//! `GET /services/{ref}/logs`: the output of the service's tasks, from the task directories of
//! the answering node's executor (stdout and stderr are one file per task, so everything comes
//! as stdout). Tasks on other nodes are named in one stderr line each: their output stays on
//! their node. docker's multiplexed stream: an 8-byte header (stream, 0, 0, 0, big-endian
//! length) before each line; with `details=1` each line starts with the task's context
//! (`com.docker.swarm.node.id=...,com.docker.swarm.service.id=...,com.docker.swarm.task.id=...`),
//! which `docker service logs` needs.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::networks::member;
use super::query::{ApiQuery, bool_value};
use super::services::lookup;
use crate::agent::Agent;
use crate::error::{Failure, Result};
use model::{Kind, Object};

#[derive(Debug, Default, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    stdout: Option<String>,
    #[serde(default)]
    stderr: Option<String>,
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    timestamps: Option<String>,
    #[serde(default)]
    details: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    tail: Option<String>,
}

const STDOUT: u8 = 1;
const STDERR: u8 = 2;

fn frame(out: &mut Vec<u8>, stream: u8, line: &[u8]) {
    let len = u32::try_from(line.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&[stream, 0, 0, 0]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&line[..len as usize]);
}

/// The last `tail` lines of `text` (all with None).
fn last_lines(text: &[u8], tail: Option<usize>) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
    if let Some(n) = tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    lines
}

pub async fn service_logs(
    State(agent): State<Arc<Agent>>,
    Path(reference): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Response> {
    if bool_value(q.follow.as_deref()) {
        return Err(Failure::bad_request(
            "following logs (--follow) is not supported: the output is read from the task files as it is now; run the command again",
        ));
    }
    if bool_value(q.timestamps.as_deref()) {
        return Err(Failure::bad_request(
            "timestamps (--timestamps) are not recorded for task output: leave the option out",
        ));
    }
    if q.since
        .as_deref()
        .is_some_and(|s| !s.is_empty() && s != "0")
    {
        return Err(Failure::bad_request(
            "--since is not supported: task output carries no timestamps; use --tail",
        ));
    }
    let tail = match q.tail.as_deref().map(str::trim) {
        None | Some("") | Some("all") => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            Failure::bad_request(format!("invalid tail {n:?}: give a number of lines or all"))
        })?),
    };
    let (stdout, stderr) = (
        bool_value(q.stdout.as_deref()),
        bool_value(q.stderr.as_deref()),
    );
    if !stdout && !stderr {
        return Err(Failure::bad_request(
            "you must choose at least one stream (stdout=1 or stderr=1)",
        ));
    }
    let details = bool_value(q.details.as_deref());
    let m = member(&agent)?;
    // One service's tasks, read in place: the logs of one service cost the same in a swarm of
    // 2,000 services as in one of 10 (no copy of the whole replica).
    let svc = lookup(&m, &reference)?;
    let store = m.store()?;
    let mut tasks: Vec<model::Task> = store.scan(Kind::Task, |objects| {
        objects
            .filter_map(|o| match o {
                Object::Task(t) if t.service_id == svc.meta.id => Some(t.clone()),
                _ => None,
            })
            .collect()
    })?;
    let me = m.node_id();
    let dir = agent.cfg.state_dir.join("executor").join("tasks");
    tasks.sort_by(|a, b| {
        a.slot
            .cmp(&b.slot)
            .then(a.meta.created_at.cmp(&b.meta.created_at))
    });
    let mut out = Vec::new();
    for t in tasks {
        let node = t.node_id.clone().unwrap_or_default();
        let context = format!(
            "com.docker.swarm.node.id={node},com.docker.swarm.service.id={},com.docker.swarm.task.id={} ",
            svc.meta.id, t.meta.id
        );
        let prefix = if details { context.as_str() } else { "" };
        if node != me {
            if stderr && !node.is_empty() {
                let host = match store.get(Kind::Node, &node)? {
                    Some(Object::Node(n)) => n.description.hostname,
                    _ => node.clone(),
                };
                let line = format!(
                    "{prefix}netagent: the output of task {} is on node {host}: ask that node's agent\n",
                    t.meta.id
                );
                frame(&mut out, STDERR, line.as_bytes());
            }
            continue;
        }
        let text = executor::tasklog::read(&dir.join(&t.meta.id));
        if !stdout {
            continue;
        }
        for line in last_lines(&text, tail) {
            let mut l = prefix.as_bytes().to_vec();
            l.extend_from_slice(line);
            if !l.ends_with(b"\n") {
                l.push(b'\n');
            }
            frame(&mut out, STDOUT, &l);
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/vnd.docker.multiplexed-stream",
        )],
        out,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_tails() {
        let mut out = Vec::new();
        frame(&mut out, STDOUT, b"hi\n");
        assert_eq!(out, [1, 0, 0, 0, 0, 0, 0, 3, b'h', b'i', b'\n']);
        let text = b"a\nb\nc";
        assert_eq!(last_lines(text, Some(2)), [&b"b\n"[..], &b"c"[..]]);
        assert_eq!(last_lines(text, None).len(), 3);
        assert_eq!(last_lines(b"", Some(3)).len(), 0);
    }
}
