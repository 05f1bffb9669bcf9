//! The convergence display of `service create / update / scale`: docker's progress bars, fed by
//! the service and its up-to-date tasks (`_up-to-date`), until every desired task runs and stays
//! running for the verify period.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use ::api::Filters;
use ::api::service::Service;
use ::api::task::Task;
use anyhow::{Result, bail};
use clap::Args;
use model::task::TaskState;

use super::format::{fit, task_progress};
use crate::cli::client::{Client, esc, filters_query};
use crate::cli::network::short;

/// How create, update and scale wait for the service to converge.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Exit immediately instead of waiting for the service to converge.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Suppress progress output.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// How long every task must stay running before the service counts as converged (ms).
    #[arg(long, hide = true, env = "NETCTL_VERIFY_MS", default_value_t = 1000)]
    pub verify_ms: u64,
    /// Give up waiting after this long (ms); docker waits until converged or Ctrl-C.
    #[arg(long, hide = true, env = "NETCTL_WAIT_TIMEOUT_MS")]
    pub wait_timeout_ms: Option<u64>,
}

fn is_live(t: &Task) -> bool {
    t.desired_state <= TaskState::Running
}

/// The lines of docker's progress display and whether the service has converged right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub lines: Vec<String>,
    pub converged: bool,
}

/// Docker shows bars for at most this many tasks, only the overall line above.
const MAX_BARS: u64 = 20;

pub fn progress(svc: &Service, tasks: &[Task]) -> Frame {
    let mine: Vec<&Task> = tasks.iter().filter(|t| t.service_id == svc.id).collect();
    // The tasks are those of the service's current spec (`_up-to-date`).
    let ok = |t: &Task| t.status.state == TaskState::Running;
    let mut lines = Vec::new();
    if let Some(r) = &svc.spec.mode.replicated {
        let n = r.replicas.and_then(|n| u64::try_from(n).ok()).unwrap_or(1);
        let mut running = 0;
        let mut slots = Vec::new();
        for slot in 1..=n.min(10_000) {
            let of_slot: Vec<&&Task> = mine.iter().filter(|t| t.slot == slot).collect();
            let newest = |only_live: bool| {
                of_slot
                    .iter()
                    .filter(|t| !only_live || is_live(t))
                    .max_by_key(|t| t.meta.created_at)
                    .map(|t| **t)
            };
            let shown = newest(true).or_else(|| newest(false));
            if shown.is_some_and(|t| is_live(t) && ok(t)) {
                running += 1;
            }
            slots.push(format!(
                "{slot}/{n}: {}",
                shown
                    .map(task_progress)
                    .unwrap_or_else(|| "no task yet".into())
            ));
        }
        let extra = mine
            .iter()
            .any(|t| is_live(t) && (t.slot > n || t.slot == 0));
        lines.push(format!("overall progress: {running} out of {n} tasks"));
        if n <= MAX_BARS {
            lines.extend(slots);
        }
        return Frame {
            lines,
            converged: running == n && !extra,
        };
    }
    // Global: one line per node that has a task.
    let desired = svc.service_status.map(|s| s.desired_tasks).unwrap_or(0);
    let mut by_node: BTreeMap<&str, &Task> = BTreeMap::new();
    for t in mine.iter().filter(|t| is_live(t)) {
        let node = t.node_id.as_str();
        if by_node
            .get(node)
            .is_none_or(|o| o.meta.created_at < t.meta.created_at)
        {
            by_node.insert(node, t);
        }
    }
    let running = by_node.values().filter(|t| ok(t)).count() as u64;
    lines.push(format!(
        "overall progress: {running} out of {desired} tasks"
    ));
    if desired <= MAX_BARS {
        for (node, t) in &by_node {
            lines.push(format!("{}: {}", short(node), task_progress(t)));
        }
    }
    let all_ok = mine.iter().filter(|t| is_live(t)).all(|t| ok(t));
    Frame {
        lines,
        converged: running == desired && all_ok,
    }
}

/// Columns of the terminal on stdout, if it is one.
fn terminal_width() -> Option<usize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ only writes a `winsize` into the pointer given, which is valid.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}

/// Draws frames: redrawn in place on a terminal, changed lines only otherwise.
struct Screen {
    tty: bool,
    quiet: bool,
    drawn: usize,
    frame: Vec<String>,
    last: HashMap<String, String>,
}

impl Screen {
    fn new(quiet: bool) -> Screen {
        Screen {
            tty: std::io::stdout().is_terminal(),
            quiet,
            drawn: 0,
            frame: Vec::new(),
            last: HashMap::new(),
        }
    }

    fn show(&mut self, lines: &[String]) {
        if self.quiet {
            return;
        }
        let mut out = String::new();
        if self.tty {
            if self.frame == lines {
                return;
            }
            self.frame = lines.to_vec();
            // A wrapped line would break the redraw: keep each within the terminal.
            let width = terminal_width().unwrap_or(200).max(10) - 1;
            if self.drawn > 0 {
                out.push_str(&format!("\x1b[{}A", self.drawn));
            }
            for l in lines {
                out.push_str("\x1b[2K");
                out.push_str(&fit(l, width));
                out.push('\n');
            }
            for _ in lines.len()..self.drawn {
                out.push_str("\x1b[2K\n");
            }
            self.drawn = self.drawn.max(lines.len());
        } else {
            for l in lines {
                let key = l.split(": ").next().unwrap_or(l).to_string();
                if self.last.get(&key) != Some(l) {
                    out.push_str(l);
                    out.push('\n');
                    self.last.insert(key, l.clone());
                }
            }
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }
}

/// Polls the service and its tasks until every desired task runs the current spec and stays
/// running for the verify period, drawing docker's progress. Ctrl-C stops waiting, not the
/// service.
pub async fn wait_converged(client: &Client, service: &str, w: &WaitArgs) -> Result<()> {
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    tokio::select! {
        r = converge_loop(client, service, w) => r,
        _ = &mut interrupted => {
            println!(
                "\nOperation continuing in background.\nUse `netctl service ps {service}` to check progress."
            );
            Ok(())
        }
    }
}

async fn converge_loop(client: &Client, service: &str, w: &WaitArgs) -> Result<()> {
    let verify = Duration::from_millis(w.verify_ms);
    let deadline = w
        .wait_timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut screen = Screen::new(w.quiet);
    let mut stable_since: Option<Instant> = None;
    let mut failures = 0;
    loop {
        let polled = async {
            let svc: Service = client
                .get(&format!("/services/{}", esc(service)))
                .await?
                .parse()?;
            let filters = Filters::new()
                .with("service", &svc.id)
                .with("_up-to-date", "true");
            let tasks: Vec<Task> = client
                .get(&format!("/tasks?{}", filters_query(&filters)))
                .await?
                .parse()?;
            // A global service's desired count comes with `status=true`.
            let status = if svc.spec.mode.global.is_some() {
                let f = Filters::new().with("id", &svc.id);
                let all: Vec<Service> = client
                    .get(&format!("/services?status=true&{}", filters_query(&f)))
                    .await?
                    .parse()?;
                all.into_iter()
                    .find(|s| s.id == svc.id)
                    .and_then(|s| s.service_status)
            } else {
                None
            };
            let svc = Service {
                service_status: status,
                ..svc
            };
            anyhow::Ok((svc, tasks))
        }
        .await;
        let (svc, tasks) = match polled {
            Ok(x) => {
                failures = 0;
                x
            }
            Err(e) if e.to_string().contains("no such service") => {
                bail!("service {service} was removed while waiting for it to converge: {e:#}");
            }
            Err(e) => {
                failures += 1;
                if failures >= 5 {
                    bail!("cannot follow the service's progress: {e:#}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut frame = progress(&svc, &tasks);
        let now = Instant::now();
        if frame.converged {
            let since = *stable_since.get_or_insert(now);
            let left = verify.saturating_sub(now - since);
            if left.is_zero() {
                frame.lines.push("verify: Service converged".into());
                screen.show(&frame.lines);
                return Ok(());
            }
            frame.lines.push(format!(
                "verify: Waiting {} seconds to verify that tasks are stable...",
                left.as_secs_f64().ceil() as u64
            ));
        } else {
            stable_since = None;
        }
        screen.show(&frame.lines);
        if deadline.is_some_and(|d| now > d) {
            bail!(
                "service {service} did not converge in time; it keeps converging in the background: see `netctl service ps {service}`"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::service::format::bar;
    use chrono::Utc;
    use model::task::TaskStatus;

    fn service(replicas: Option<u64>, desired: u64) -> Service {
        let m = model::Service {
            meta: model::Meta::with_id("svc".into()),
            spec: model::service::ServiceSpec {
                name: "web".into(),
                labels: Default::default(),
                mode: match replicas {
                    Some(replicas) => model::service::ServiceMode::Replicated { replicas },
                    None => model::service::ServiceMode::Global,
                },
                task: model::service::TaskTemplate {
                    command: vec!["sleep".into(), "1".into()],
                    ..Default::default()
                },
                networks: vec![],
                endpoint: Default::default(),
                update: Default::default(),
            },
            virtual_ips: vec![],
            ports: vec![],
        };
        ::api::service::service(
            &m,
            Some(::api::service::ServiceStatus {
                running_tasks: 0,
                desired_tasks: desired,
                completed_tasks: 0,
            }),
        )
    }

    fn task(slot: u64, node: &str, state: TaskState, err: &str, age: i64) -> Task {
        let mut t = model::Task {
            meta: model::Meta::with_id(format!("t{slot}{node}{age}")),
            service_id: "svc".into(),
            slot,
            node_id: (!node.is_empty()).then(|| node.to_string()),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state,
                timestamp: Utc::now(),
                message: String::new(),
                err: (!err.is_empty()).then(|| err.to_string()),
                exit_code: None,
            },
            spec: Default::default(),
            networks: vec![],
        };
        t.meta.created_at = Utc::now() - chrono::Duration::seconds(age);
        ::api::task::task(&t, |_| None)
    }

    #[test]
    fn replicated_progress() {
        let svc = service(Some(3), 3);
        let full = format!("running   [{}>]", "=".repeat(50));
        let pending = task(
            3,
            "",
            TaskState::Pending,
            "no available IP addresses on network tiny: the subnet is full",
            1,
        );
        let mut old = task(2, "n1", TaskState::Failed, "task: non-zero exit (1)", 30);
        old.desired_state = TaskState::Shutdown;
        let tasks = vec![
            task(1, "n1", TaskState::Running, "", 5),
            old,
            task(2, "n2", TaskState::Starting, "", 2),
            pending,
        ];
        let f = progress(&svc, &tasks);
        assert!(!f.converged);
        assert_eq!(f.lines[0], "overall progress: 1 out of 3 tasks");
        assert_eq!(f.lines[1], format!("1/3: {full}"));
        assert_eq!(
            f.lines[2],
            format!("2/3: starting  [{}>{}]", "=".repeat(44), " ".repeat(6))
        );
        assert_eq!(
            f.lines[3],
            "3/3: pending   no available IP addresses on network tiny: the subnet is full"
        );
        let done: Vec<Task> = (1..=3)
            .map(|s| task(s, "n1", TaskState::Running, "", 1))
            .collect();
        let f = progress(&svc, &done);
        assert!(f.converged, "{f:?}");
        // Scaled down: converged once the extra slot is being shut down.
        let svc2 = service(Some(2), 2);
        assert!(!progress(&svc2, &done).converged);
        let mut shutting = done.clone();
        shutting[2].desired_state = TaskState::Shutdown;
        assert!(progress(&svc2, &shutting).converged);
        let f = progress(&service(Some(1), 1), &[]);
        assert_eq!(
            f.lines,
            ["overall progress: 0 out of 1 tasks", "1/1: no task yet"]
        );
        assert!(progress(&service(Some(0), 0), &[]).converged);
        assert_eq!(progress(&service(Some(30), 30), &[]).lines.len(), 1);
        assert_eq!(bar(9, 9), format!("[{}>]", "=".repeat(50)));
    }

    #[test]
    fn global_progress() {
        let svc = service(None, 2);
        let a = task(0, "nodeaaaaaaaaaaaaaaaaaaaa1", TaskState::Running, "", 3);
        let b = task(0, "nodebbbbbbbbbbbbbbbbbbbb2", TaskState::Assigned, "", 3);
        let f = progress(&svc, &[a.clone(), b]);
        assert_eq!(f.lines[0], "overall progress: 1 out of 2 tasks");
        assert!(f.lines[1].starts_with("nodeaaaaaaaa: running   ["), "{f:?}");
        assert!(f.lines[2].starts_with("nodebbbbbbbb: assigned  ["), "{f:?}");
        assert!(!f.converged);
        let c = task(0, "nodebbbbbbbbbbbbbbbbbbbb2", TaskState::Running, "", 1);
        assert!(progress(&svc, &[a, c]).converged);
    }
}
