//! `netctl service ...`: create, ls, ps, inspect, update, scale, rm — docker's flags and output,
//! including the convergence progress of create, update and scale.
//!
//! There are no images: a service runs its command directly on the nodes, so where docker shows
//! an IMAGE, netctl shows the COMMAND.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use model::task::TaskState;

use super::Format;
use super::client::{Client, esc};
use super::network::{key_values, short};
use super::table::{render, title};
use crate::api::networks::NetworkView;
use crate::api::services::{
    Created, NetworkRef, ServiceView, TaskView, Updated, desired_state_matches, sort_tasks,
};

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a new service.
    Create(CreateArgs),
    /// List services.
    #[command(alias = "list")]
    Ls {
        /// Only display IDs.
        #[arg(long, short = 'q')]
        quiet: bool,
        /// Filter output based on conditions provided (id=, name=, mode=, label=).
        #[arg(long, short = 'f')]
        filter: Vec<String>,
        /// table, or json: one object per line with the table's fields.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// List the tasks of one or more services.
    Ps {
        #[command(flatten)]
        args: PsArgs,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Display detailed information on one or more services.
    Inspect {
        /// Print the information in a human friendly format.
        #[arg(long)]
        pretty: bool,
        #[arg(long, short = 'f', value_enum)]
        format: Option<Format>,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Update a service.
    Update(UpdateArgs),
    /// Scale one or multiple replicated services (SERVICE=REPLICAS...).
    Scale {
        #[command(flatten)]
        wait: WaitArgs,
        #[arg(required = true)]
        scales: Vec<String>,
    },
    /// Remove one or more services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// The options of `service ps` and `node ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only display task IDs.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Do not truncate output.
    #[arg(long)]
    no_trunc: bool,
    /// Filter output (desired-state=running|shutdown|accepted, node=NODE, name=NAME, id=ID).
    #[arg(long, short = 'f')]
    filter: Vec<String>,
    /// table, or json: one object per line with the table's fields.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// How create, update and scale wait for the service to converge.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Exit immediately instead of waiting for the service to converge.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Suppress progress output.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// How long every task must stay running before the service counts as converged (ms).
    #[arg(long, hide = true, env = "NETCTL_VERIFY_MS", default_value_t = 1000)]
    verify_ms: u64,
    /// Give up waiting after this long (ms); docker waits until converged or Ctrl-C.
    #[arg(long, hide = true, env = "NETCTL_WAIT_TIMEOUT_MS")]
    wait_timeout_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name.
    #[arg(long)]
    name: Option<String>,
    /// Number of tasks (replicated mode).
    #[arg(long, allow_hyphen_values = true)]
    replicas: Option<String>,
    /// Service mode (replicated or global).
    #[arg(long)]
    mode: Option<String>,
    /// Network attachments: NAME, or name=NAME,alias=ALIAS... (repeatable).
    #[arg(long)]
    network: Vec<String>,
    /// Endpoint mode (vip or dnsrr).
    #[arg(long = "endpoint-mode")]
    endpoint_mode: Option<String>,
    /// Placement constraints, e.g. node.role==worker (repeatable).
    #[arg(long)]
    constraint: Vec<String>,
    /// Set environment variables (KEY=VALUE, or KEY to take netctl's value), repeatable.
    #[arg(long, short = 'e')]
    env: Vec<String>,
    /// Service labels (key=value), repeatable.
    #[arg(long, short = 'l')]
    label: Vec<String>,
    #[command(flatten)]
    wait: WaitArgs,
    /// The command every task runs, and its arguments (after `--` if they look like options).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Number of tasks.
    #[arg(long, allow_hyphen_values = true)]
    replicas: Option<String>,
    /// Add a network (NAME, or name=NAME,alias=ALIAS...), repeatable.
    #[arg(long = "network-add")]
    network_add: Vec<String>,
    /// Remove a network, repeatable.
    #[arg(long = "network-rm")]
    network_rm: Vec<String>,
    /// Add or update a placement constraint, repeatable.
    #[arg(long = "constraint-add")]
    constraint_add: Vec<String>,
    /// Remove a constraint, repeatable.
    #[arg(long = "constraint-rm")]
    constraint_rm: Vec<String>,
    /// Add or update an environment variable (KEY=VALUE), repeatable.
    #[arg(long = "env-add")]
    env_add: Vec<String>,
    /// Remove an environment variable (KEY), repeatable.
    #[arg(long = "env-rm")]
    env_rm: Vec<String>,
    /// Add or update a service label (key=value), repeatable.
    #[arg(long = "label-add")]
    label_add: Vec<String>,
    /// Remove a label by its key, repeatable.
    #[arg(long = "label-rm")]
    label_rm: Vec<String>,
    /// Endpoint mode (vip or dnsrr).
    #[arg(long = "endpoint-mode")]
    endpoint_mode: Option<String>,
    /// Replace the command (the whole argv, as one shell-like string split on spaces).
    #[arg(long)]
    args: Option<String>,
    /// Force update even if no changes require it (every task is replaced).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    wait: WaitArgs,
    service: String,
}

/// `--replicas` as docker checks it, with the API's wording.
pub fn parse_replicas(s: &str) -> Result<i64> {
    let n: i64 = s
        .trim()
        .parse()
        .map_err(|_| anyhow!("invalid replicas value {s}: must be a non-negative integer"))?;
    if n < 0 {
        bail!("invalid replicas value {n}: must be a non-negative integer");
    }
    Ok(n)
}

/// `--network NAME` or docker's long form `--network name=NAME,alias=A,alias=B`.
pub fn network_ref(s: &str) -> Result<NetworkRef> {
    if !s.contains('=') {
        if s.is_empty() {
            bail!("--network needs a network name");
        }
        return Ok(NetworkRef {
            target: s.to_string(),
            aliases: Vec::new(),
        });
    }
    let mut r = NetworkRef::default();
    for field in s.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid field {field:?} in --network {s:?}: use key=value"))?;
        match k.trim().to_ascii_lowercase().as_str() {
            "name" | "target" => r.target = v.to_string(),
            "alias" => r.aliases.push(v.to_string()),
            other => bail!(
                "invalid field key {other:?} in --network {s:?}: use name=NETWORK and alias=ALIAS"
            ),
        }
    }
    if r.target.is_empty() {
        bail!("--network {s:?} names no network: add name=NETWORK");
    }
    Ok(r)
}

/// `--env KEY=VALUE`, or `--env KEY` taking netctl's own value, as docker does.
fn env_values(items: &[String]) -> Result<Vec<String>> {
    items
        .iter()
        .map(|e| {
            if e.contains('=') {
                return Ok(e.clone());
            }
            match std::env::var(e) {
                Ok(v) => Ok(format!("{e}={v}")),
                Err(_) => bail!(
                    "invalid environment variable {e:?}: use KEY=VALUE (KEY alone takes netctl's own value, and {e} is not set)"
                ),
            }
        })
        .collect()
}

// ---- formatting ----

/// go-units' HumanDuration, as docker prints ages (lowercased by the caller).
pub fn human_duration(d: chrono::Duration) -> String {
    let seconds = d.num_seconds();
    if seconds < 1 {
        return "Less than a second".into();
    }
    if seconds == 1 {
        return "1 second".into();
    }
    if seconds < 60 {
        return format!("{seconds} seconds");
    }
    let minutes = d.num_minutes();
    if minutes == 1 {
        return "About a minute".into();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    let hours = (d.num_seconds() as f64 / 3600.0).round() as i64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", d.num_hours() / 24 / 365)
}

/// CURRENT STATE of `service ps`: "Running 5 seconds ago".
pub fn current_state(state: TaskState, since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "{} {} ago",
        title(state.as_str()),
        human_duration(now - since).to_lowercase()
    )
}

/// Docker's Ellipsis: at most `max` characters, the last one "…" when cut.
pub fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// ERROR of `service ps`: quoted, cut at 30 characters unless --no-trunc.
pub fn error_cell(err: &str, trunc: bool) -> String {
    if err.is_empty() {
        return String::new();
    }
    let e = if trunc {
        ellipsis(err, 30)
    } else {
        err.to_string()
    };
    format!("\"{e}\"")
}

/// The step of a state on docker's progress bars (running is the last of 9).
fn state_step(s: TaskState) -> Option<u32> {
    Some(match s {
        TaskState::New => 1,
        TaskState::Pending => 3,
        TaskState::Assigned => 4,
        TaskState::Accepted => 5,
        TaskState::Preparing => 6,
        TaskState::Starting => 8,
        TaskState::Running => 9,
        _ => return None,
    })
}

/// Docker's progress bar: 50 cells for 9 steps, "[=====>      ]".
pub fn bar(step: u32, total: u32) -> String {
    let pct = ((f64::from(step) / f64::from(total) * 100.0) as usize / 2).min(50);
    format!("[{}>{}]", "=".repeat(pct), " ".repeat(50 - pct))
}

/// Docker's truncError: one line, at most 75 characters.
fn trunc_error(e: &str) -> String {
    let mut e = match e.split_once('\n') {
        Some((first, _)) => format!("{first}…"),
        None => e.to_string(),
    };
    if e.chars().count() > 75 {
        e = e.chars().take(74).collect::<String>() + "…";
    }
    e
}

/// One task's progress: its state (padded as docker's), then its error or its bar.
pub fn task_progress(t: &TaskView) -> String {
    let state = t.status.state.as_str();
    if !t.status.err.is_empty() {
        return format!("{state:<9} {}", trunc_error(&t.status.err));
    }
    match state_step(t.status.state) {
        Some(step) => format!("{state:<9} {}", bar(step, 9)),
        None => state.to_string(),
    }
}

/// Whether a task runs the service's current spec (so an update has reached it).
fn up_to_date(svc: &ServiceView, t: &TaskView) -> bool {
    let tpl = &svc.spec.task_template;
    if t.spec.container_spec != tpl.container_spec
        || t.spec.placement != tpl.placement
        || t.spec.force_update != tpl.force_update
    {
        return false;
    }
    let want: BTreeSet<&str> = tpl.networks.iter().map(|n| n.target.as_str()).collect();
    let has: BTreeSet<&str> = t
        .networks_attachments
        .iter()
        .map(|a| a.network.id.as_str())
        .collect();
    want == has || matches!(t.status.state, TaskState::New | TaskState::Pending)
}

fn is_live(t: &TaskView) -> bool {
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

pub fn progress(svc: &ServiceView, tasks: &[TaskView]) -> Frame {
    let mine: Vec<&TaskView> = tasks.iter().filter(|t| t.service_id == svc.id).collect();
    let ok = |t: &TaskView| t.status.state == TaskState::Running && up_to_date(svc, t);
    let mut lines = Vec::new();
    if let Some(r) = &svc.spec.mode.replicated {
        let n = r.replicas;
        let mut running = 0;
        let mut slots = Vec::new();
        for slot in 1..=n.min(10_000) {
            let of_slot: Vec<&&TaskView> = mine.iter().filter(|t| t.slot == slot).collect();
            let newest = |only_live: bool| {
                of_slot
                    .iter()
                    .filter(|t| !only_live || is_live(t))
                    .max_by_key(|t| t.created_at)
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
    let desired = svc.service_status.desired_tasks;
    let mut by_node: BTreeMap<&str, &TaskView> = BTreeMap::new();
    for t in mine.iter().filter(|t| is_live(t)) {
        let node = t.node_id.as_str();
        if by_node
            .get(node)
            .is_none_or(|o| o.created_at < t.created_at)
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

/// A progress line within `width` columns: without its bar if that is too wide (as docker on
/// narrow terminals), else cut.
fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    match line.find(" [") {
        Some(i) if line.ends_with(']') => ellipsis(line[..i].trim_end(), width),
        _ => ellipsis(line, width),
    }
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
async fn wait_converged(client: &Client, service: &str, w: &WaitArgs) -> Result<()> {
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
            let svc: ServiceView = client
                .get(&format!("/services/{}", esc(service)))
                .await?
                .parse()?;
            let tasks: Vec<TaskView> = client
                .get(&format!("/tasks?service={}", esc(&svc.id)))
                .await?
                .parse()?;
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

fn replicas_cell(s: &ServiceView) -> String {
    format!(
        "{}/{}",
        s.service_status.running_tasks, s.service_status.desired_tasks
    )
}

fn mode_name(s: &ServiceView) -> &'static str {
    if s.spec.mode.global.is_some() {
        "global"
    } else {
        "replicated"
    }
}

fn command_cell(s: &ServiceView) -> String {
    ellipsis(&s.spec.task_template.container_spec.command.join(" "), 40)
}

/// docker's `service inspect --pretty`.
pub fn pretty(s: &ServiceView, network_names: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        if v.is_empty() {
            out.push_str(&format!("{k}\n"));
        } else {
            out.push_str(&format!("{k:<16}{v}\n"));
        }
    };
    line("ID:", &s.id);
    line("Name:", &s.spec.name);
    if !s.spec.labels.is_empty() {
        line("Labels:", "");
        for (k, v) in &s.spec.labels {
            if v.is_empty() {
                line(&format!(" {k}"), "");
            } else {
                line(&format!(" {k}={v}"), "");
            }
        }
    }
    match &s.spec.mode.replicated {
        Some(r) => {
            line("Service Mode:", "Replicated");
            line(" Replicas:", &r.replicas.to_string());
        }
        None => line("Service Mode:", "Global"),
    }
    line("Placement:", "");
    let constraints = &s.spec.task_template.placement.constraints;
    if !constraints.is_empty() {
        line(" Constraints:", &format!("[{}]", constraints.join(" ")));
    }
    line("ContainerSpec:", "");
    let spec = &s.spec.task_template.container_spec;
    line(" Command:", &spec.command.join(" "));
    if !spec.env.is_empty() {
        line(" Env:", &spec.env.join(" "));
    }
    let name = |id: &str| network_names.get(id).cloned().unwrap_or(id.to_string());
    let nets = &s.spec.task_template.networks;
    if !nets.is_empty() {
        let names: Vec<String> = nets
            .iter()
            .map(|n| {
                if n.aliases.is_empty() {
                    name(&n.target)
                } else {
                    format!("{} (aliases: {})", name(&n.target), n.aliases.join(", "))
                }
            })
            .collect();
        line(&format!("Networks: {}", names.join(" ")), "");
    }
    line("Endpoint Mode:", &s.spec.endpoint_spec.mode);
    if !s.endpoint.virtual_ips.is_empty() {
        line("Virtual IPs:", "");
        for v in &s.endpoint.virtual_ips {
            line(&format!(" {}:", name(&v.network_id)), &v.addr);
        }
    }
    out
}

fn parse_filters(filters: &[String], keys: &[&str]) -> Result<Vec<(String, String)>> {
    filters
        .iter()
        .map(|f| {
            let Some((k, v)) = f.split_once('=') else {
                bail!("bad format of filter (expected name=value): {f}");
            };
            if !keys.contains(&k) {
                bail!("invalid filter '{k}': use {}", keys.join(", "));
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Docker's rule: values of one key are alternatives, all keys must match.
fn all_match(filters: &[(String, String)], f: impl Fn(&str, &str) -> bool) -> bool {
    let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in filters {
        by_key.entry(k).or_default().push(v);
    }
    by_key.iter().all(|(k, vals)| vals.iter().any(|v| f(k, v)))
}

/// Prints every error but the last, which becomes netctl's (as docker reports several).
pub(super) fn collect_errors(mut failed: Vec<anyhow::Error>) -> Result<()> {
    if let Some(last) = failed.pop() {
        for e in failed {
            eprintln!("{e:#}");
        }
        return Err(last);
    }
    Ok(())
}

async fn create(client: &Client, a: CreateArgs) -> Result<()> {
    let replicas = a.replicas.as_deref().map(parse_replicas).transpose()?;
    if replicas.is_some() && a.mode.as_deref() == Some("global") {
        bail!(
            "replicas can only be used with replicated mode: drop --replicas, or use --mode replicated"
        );
    }
    let networks = a
        .network
        .iter()
        .map(|n| network_ref(n))
        .collect::<Result<Vec<_>>>()?;
    let body = serde_json::json!({
        "name": a.name.unwrap_or_default(),
        "mode": a.mode,
        "replicas": replicas,
        "networks": networks,
        "endpoint_mode": a.endpoint_mode,
        "constraints": a.constraint,
        "env": env_values(&a.env)?,
        "labels": key_values(&a.label, "label (--label)")?,
        "command": a.command,
    });
    let created: Created = client.post("/services/create", body).await?.parse()?;
    for w in &created.warnings {
        super::warn(w);
    }
    println!("{}", created.id);
    if !a.wait.detach {
        wait_converged(client, &created.id, &a.wait).await?;
    }
    Ok(())
}

async fn update(client: &Client, a: UpdateArgs) -> Result<()> {
    let replicas = a.replicas.as_deref().map(parse_replicas).transpose()?;
    let network_add = a
        .network_add
        .iter()
        .map(|n| network_ref(n))
        .collect::<Result<Vec<_>>>()?;
    let command = a
        .args
        .as_deref()
        .map(|s| s.split_whitespace().map(str::to_string).collect::<Vec<_>>());
    let body = serde_json::json!({
        "replicas": replicas,
        "network_add": network_add,
        "network_rm": a.network_rm,
        "constraint_add": a.constraint_add,
        "constraint_rm": a.constraint_rm,
        "env_add": env_values(&a.env_add)?,
        "env_rm": a.env_rm,
        "label_add": key_values(&a.label_add, "label (--label-add)")?,
        "label_rm": a.label_rm,
        "endpoint_mode": a.endpoint_mode,
        "command": command,
        "force": a.force,
    });
    let u: Updated = client
        .post(&format!("/services/{}/update", esc(&a.service)), body)
        .await?
        .parse()?;
    for w in &u.warnings {
        super::warn(w);
    }
    println!("{}", a.service);
    if !a.wait.detach {
        wait_converged(client, &a.service, &a.wait).await?;
    }
    Ok(())
}

async fn scale(client: &Client, wait: WaitArgs, scales: Vec<String>) -> Result<()> {
    let mut wanted = Vec::new();
    for s in &scales {
        let Some((name, n)) = s.split_once('=') else {
            bail!("invalid scale specifier {s:?}: use SERVICE=REPLICAS, e.g. web=3");
        };
        if name.is_empty() {
            bail!("invalid scale specifier {s:?}: use SERVICE=REPLICAS, e.g. web=3");
        }
        wanted.push((name.to_string(), parse_replicas(n)?));
    }
    let mut failed = Vec::new();
    let mut scaled = Vec::new();
    for (name, n) in wanted {
        let body = serde_json::json!({ "replicas": n });
        match client
            .post(&format!("/services/{}/update", esc(&name)), body)
            .await
        {
            Ok(_) => {
                println!("{name} scaled to {n}");
                scaled.push(name);
            }
            Err(e) => failed.push(anyhow!("{name}: {e:#}")),
        }
    }
    if !wait.detach {
        for name in &scaled {
            if let Err(e) = wait_converged(client, name, &wait).await {
                failed.push(e);
            }
        }
    }
    collect_errors(failed)
}

/// `service ps` (`by` = "service") and `node ps` (`by` = "node"): the tasks of each reference,
/// in docker's table.
pub(super) async fn ps(client: &Client, by: &str, refs: Vec<String>, a: PsArgs) -> Result<()> {
    let PsArgs {
        quiet,
        no_trunc,
        filter,
        format,
    } = a;
    let filters = parse_filters(&filter, &["desired-state", "node", "name", "id"])?;
    for (k, v) in &filters {
        if k == "desired-state" {
            desired_state_matches(v, TaskState::Running).map_err(|e| anyhow!(e.message))?;
        }
    }
    let mut tasks: Vec<TaskView> = Vec::new();
    let mut seen = BTreeSet::new();
    for s in &refs {
        let r = client.get(&format!("/tasks?{by}={}", esc(s))).await?;
        if let Some(why) = &r.stale {
            super::warn(why);
        }
        for t in r.parse::<Vec<TaskView>>()? {
            if seen.insert(t.id.clone()) {
                tasks.push(t);
            }
        }
    }
    tasks.retain(|t| {
        all_match(&filters, |k, v| match k {
            "desired-state" => desired_state_matches(v, t.desired_state).unwrap_or(false),
            "node" => t.node_name == v || (!v.is_empty() && t.node_id.starts_with(v)),
            "name" => t.name.contains(v),
            "id" => t.id.starts_with(v),
            _ => false,
        })
    });
    sort_tasks(&mut tasks);
    let now = Utc::now();
    let id = |t: &TaskView| {
        if no_trunc { t.id.clone() } else { short(&t.id) }
    };
    if quiet {
        for t in &tasks {
            println!("{}", id(t));
        }
        return Ok(());
    }
    // Older tasks of the same slot are indented under the newest, as docker does.
    let mut prev = String::new();
    let mut rows = Vec::new();
    for t in &tasks {
        let slot_key = format!("{}/{}", t.service_id, t.name);
        let name = if slot_key == prev && format == Format::Table {
            format!(" \\_ {}", t.name)
        } else {
            t.name.clone()
        };
        prev = slot_key;
        let current = current_state(t.status.state, t.status.timestamp, now);
        let desired = title(t.desired_state.as_str());
        if format == Format::Json {
            let row = serde_json::json!({
                "ID": id(t),
                "Name": t.name,
                "Command": t.spec.container_spec.command.join(" "),
                "Node": t.node_name,
                "DesiredState": desired,
                "CurrentState": current,
                "Error": t.status.err,
                "Ports": "",
            });
            println!("{row}");
        } else {
            rows.push(vec![
                id(t),
                name,
                t.node_name.clone(),
                desired,
                current,
                error_cell(&t.status.err, !no_trunc),
            ]);
        }
    }
    if format == Format::Table {
        print!(
            "{}",
            render(
                &[
                    "ID",
                    "NAME",
                    "NODE",
                    "DESIRED STATE",
                    "CURRENT STATE",
                    "ERROR"
                ],
                &rows
            )
        );
    }
    Ok(())
}

pub async fn run(client: &Client, cmd: ServiceCmd) -> Result<()> {
    match cmd {
        ServiceCmd::Create(a) => create(client, a).await,
        ServiceCmd::Update(a) => update(client, a).await,
        ServiceCmd::Scale { wait, scales } => scale(client, wait, scales).await,
        ServiceCmd::Ps { args, services } => ps(client, "service", services, args).await,
        ServiceCmd::Ls {
            quiet,
            filter,
            format,
        } => {
            let filters = parse_filters(&filter, &["id", "name", "mode", "label"])?;
            let r = client.get("/services").await?;
            if let Some(why) = &r.stale {
                super::warn(why);
            }
            let all: Vec<ServiceView> = r.parse()?;
            let services: Vec<&ServiceView> = all
                .iter()
                .filter(|s| {
                    all_match(&filters, |k, v| match k {
                        "id" => s.id.starts_with(v),
                        "name" => s.spec.name.starts_with(v),
                        "mode" => mode_name(s) == v,
                        "label" => match v.split_once('=') {
                            Some((lk, lv)) => s.spec.labels.get(lk).is_some_and(|x| x == lv),
                            None => s.spec.labels.contains_key(v),
                        },
                        _ => false,
                    })
                })
                .collect();
            if quiet {
                for s in &services {
                    println!("{}", short(&s.id));
                }
            } else if format == Format::Json {
                for s in &services {
                    let row = serde_json::json!({
                        "ID": short(&s.id),
                        "Name": s.spec.name,
                        "Mode": mode_name(s),
                        "Replicas": replicas_cell(s),
                        "Command": s.spec.task_template.container_spec.command.join(" "),
                        "Ports": "",
                    });
                    println!("{row}");
                }
            } else {
                let rows: Vec<Vec<String>> = services
                    .iter()
                    .map(|s| {
                        vec![
                            short(&s.id),
                            s.spec.name.clone(),
                            mode_name(s).to_string(),
                            replicas_cell(s),
                            command_cell(s),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(&["ID", "NAME", "MODE", "REPLICAS", "COMMAND"], &rows)
                );
            }
            Ok(())
        }
        ServiceCmd::Inspect {
            pretty: human,
            format,
            services,
        } => {
            let mut views = Vec::new();
            let mut failed = None;
            for s in &services {
                match client.get(&format!("/services/{}", esc(s))).await {
                    Ok(r) => {
                        if let Some(why) = &r.stale {
                            super::warn(why);
                        }
                        views.push(r.parse::<ServiceView>()?);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if human && format != Some(Format::Json) {
                let nets: Vec<NetworkView> = match client.get("/networks").await {
                    Ok(r) => r.parse()?,
                    Err(_) => Vec::new(),
                };
                let names: HashMap<String, String> =
                    nets.into_iter().map(|n| (n.id, n.name)).collect();
                let texts: Vec<String> = views.iter().map(|v| pretty(v, &names)).collect();
                print!("{}", texts.join("\n"));
            } else {
                println!("{}", serde_json::to_string_pretty(&views)?);
            }
            if let Some(e) = failed {
                return Err(e);
            }
            Ok(())
        }
        ServiceCmd::Rm { services } => {
            let mut failed = Vec::new();
            for s in &services {
                match client.delete(&format!("/services/{}", esc(s))).await {
                    Ok(_) => println!("{s}"),
                    Err(e) => failed.push(e),
                }
            }
            collect_errors(failed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::services::{
        ContainerSpecView, EndpointSpecView, GlobalView, ModeView, NetworkAttachmentTaskView,
        NetworkAttachmentView, PlacementView, ReplicatedView, ServiceEndpointView, ServiceSpecView,
        ServiceStatusView, TaskStatusView, TaskTemplateView,
    };
    use crate::api::views::Version;

    #[test]
    fn humanized_states() {
        let now = Utc::now();
        let ago = |s: i64| now - chrono::Duration::seconds(s);
        assert_eq!(
            current_state(TaskState::Running, ago(0), now),
            "Running less than a second ago"
        );
        assert_eq!(
            current_state(TaskState::Running, ago(1), now),
            "Running 1 second ago"
        );
        assert_eq!(
            current_state(TaskState::Running, ago(5), now),
            "Running 5 seconds ago"
        );
        assert_eq!(
            current_state(TaskState::Pending, ago(90), now),
            "Pending about a minute ago"
        );
        assert_eq!(
            current_state(TaskState::Pending, ago(150), now),
            "Pending 2 minutes ago"
        );
        assert_eq!(
            current_state(TaskState::Failed, ago(3600), now),
            "Failed about an hour ago"
        );
        assert_eq!(
            current_state(TaskState::Shutdown, ago(5 * 3600), now),
            "Shutdown 5 hours ago"
        );
        assert_eq!(
            current_state(TaskState::Complete, ago(3 * 86400), now),
            "Complete 3 days ago"
        );
        // A clock behind the manager's: never negative.
        assert_eq!(
            current_state(TaskState::Running, now + chrono::Duration::seconds(3), now),
            "Running less than a second ago"
        );
    }

    #[test]
    fn error_cells() {
        assert_eq!(error_cell("", true), "");
        assert_eq!(
            error_cell("task: non-zero exit (1)", true),
            "\"task: non-zero exit (1)\""
        );
        let long = "no suitable node (scheduling constraints not satisfied on 2 nodes)";
        let cut = error_cell(long, true);
        assert_eq!(cut.chars().count(), 32, "{cut}");
        assert!(cut.ends_with("…\""), "{cut}");
        assert_eq!(error_cell(long, false), format!("\"{long}\""));
    }

    #[test]
    fn bars() {
        assert_eq!(bar(9, 9), format!("[{}>]", "=".repeat(50)));
        assert_eq!(
            bar(3, 9),
            format!("[{}>{}]", "=".repeat(16), " ".repeat(34))
        );
        assert_eq!(bar(0, 9), format!("[>{}]", " ".repeat(50)));
    }

    #[test]
    fn narrow_terminals() {
        let l = format!("1/3: running   {}", bar(9, 9));
        assert_eq!(fit(&l, 200), l);
        assert_eq!(fit(&l, 40), "1/3: running");
        assert_eq!(
            fit("1/3: pending   no available IP addresses", 20),
            "1/3: pending   no a…"
        );
    }

    #[test]
    fn replicas_and_networks_flags() {
        assert_eq!(parse_replicas("3").unwrap(), 3);
        assert_eq!(parse_replicas("0").unwrap(), 0);
        assert_eq!(
            parse_replicas("-1").unwrap_err().to_string(),
            "invalid replicas value -1: must be a non-negative integer"
        );
        assert!(parse_replicas("x").is_err());
        assert_eq!(network_ref("red").unwrap().target, "red");
        let r = network_ref("name=red,alias=a,alias=b").unwrap();
        assert_eq!((r.target.as_str(), r.aliases.len()), ("red", 2));
        assert!(network_ref("alias=a").is_err());
        assert!(network_ref("name=red,driver=x").is_err());
    }

    fn service(replicas: Option<u64>, desired: u64) -> ServiceView {
        let now = Utc::now();
        ServiceView {
            id: "svc".into(),
            version: Version { index: 1 },
            created_at: now,
            updated_at: now,
            spec: ServiceSpecView {
                name: "web".into(),
                labels: BTreeMap::new(),
                task_template: TaskTemplateView {
                    container_spec: ContainerSpecView {
                        command: vec!["sleep".into(), "1".into()],
                        env: Vec::new(),
                    },
                    placement: PlacementView::default(),
                    networks: vec![NetworkAttachmentView {
                        target: "net".into(),
                        aliases: Vec::new(),
                    }],
                    force_update: 0,
                },
                mode: ModeView {
                    replicated: replicas.map(|replicas| ReplicatedView { replicas }),
                    global: replicas.is_none().then_some(GlobalView {}),
                },
                endpoint_spec: EndpointSpecView {
                    mode: "vip".into(),
                    ports: Vec::new(),
                },
            },
            endpoint: ServiceEndpointView {
                spec: EndpointSpecView {
                    mode: "vip".into(),
                    ports: Vec::new(),
                },
                ports: Vec::new(),
                virtual_ips: Vec::new(),
            },
            service_status: ServiceStatusView {
                running_tasks: 0,
                desired_tasks: desired,
            },
        }
    }

    fn task(slot: u64, node: &str, state: TaskState, err: &str, age: i64) -> TaskView {
        let now = Utc::now();
        TaskView {
            id: format!("t{slot}{node}{age}"),
            version: Version { index: 1 },
            created_at: now - chrono::Duration::seconds(age),
            updated_at: now,
            name: format!("web.{slot}"),
            spec: TaskTemplateView {
                container_spec: ContainerSpecView {
                    command: vec!["sleep".into(), "1".into()],
                    env: Vec::new(),
                },
                placement: PlacementView::default(),
                networks: Vec::new(),
                force_update: 0,
            },
            service_id: "svc".into(),
            service_name: "web".into(),
            slot,
            node_id: node.into(),
            node_name: node.into(),
            status: TaskStatusView {
                timestamp: now,
                state,
                message: String::new(),
                err: err.into(),
                container_status: None,
            },
            desired_state: TaskState::Running,
            networks_attachments: vec![NetworkAttachmentTaskView {
                network: crate::api::services::AttachedNetwork {
                    id: "net".into(),
                    spec: crate::api::services::AttachedNetworkSpec { name: "n".into() },
                },
                addresses: vec!["10.0.0.3/24".into()],
                aliases: Vec::new(),
            }],
        }
    }

    #[test]
    fn replicated_progress() {
        let svc = service(Some(3), 3);
        let full = format!("running   [{}>]", "=".repeat(50));
        let mut pending = task(
            3,
            "",
            TaskState::Pending,
            "no available IP addresses on network tiny: the subnet is full",
            1,
        );
        pending.networks_attachments.clear();
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
        let done: Vec<TaskView> = (1..=3)
            .map(|s| task(s, "n1", TaskState::Running, "", 1))
            .collect();
        let f = progress(&svc, &done);
        assert!(f.converged, "{f:?}");
        assert_eq!(f.lines[0], "overall progress: 3 out of 3 tasks");
        // A task of an older spec does not count (an update has not reached it yet).
        let mut stale = done.clone();
        stale[0].spec.container_spec.env = vec!["A=1".into()];
        assert!(!progress(&svc, &stale).converged);
        // Nor does one from before a `--force`.
        let mut forced = svc.clone();
        forced.spec.task_template.force_update = 1;
        assert!(!progress(&forced, &done).converged);
        // Scaled down: converged once the extra slot is being shut down.
        let svc2 = service(Some(2), 2);
        assert!(!progress(&svc2, &done).converged);
        let mut shutting = done.clone();
        shutting[2].desired_state = TaskState::Shutdown;
        assert!(progress(&svc2, &shutting).converged);
        // No task yet.
        let f = progress(&service(Some(1), 1), &[]);
        assert_eq!(
            f.lines,
            ["overall progress: 0 out of 1 tasks", "1/1: no task yet"]
        );
        assert!(progress(&service(Some(0), 0), &[]).converged);
        // Many replicas: the overall line only.
        assert_eq!(progress(&service(Some(30), 30), &[]).lines.len(), 1);
    }

    #[test]
    fn global_progress() {
        let svc = service(None, 2);
        let mut a = task(0, "nodeaaaaaaaaaaaaaaaaaaaa1", TaskState::Running, "", 3);
        a.name = "web.nodeaaaaaaaaaaaaaaaaaaaa1".into();
        let b = task(0, "nodebbbbbbbbbbbbbbbbbbbb2", TaskState::Assigned, "", 3);
        let f = progress(&svc, &[a.clone(), b]);
        assert_eq!(f.lines[0], "overall progress: 1 out of 2 tasks");
        assert!(f.lines[1].starts_with("nodeaaaaaaaa: running   ["), "{f:?}");
        assert!(f.lines[2].starts_with("nodebbbbbbbb: assigned  ["), "{f:?}");
        assert!(!f.converged);
        let c = task(0, "nodebbbbbbbbbbbbbbbbbbbb2", TaskState::Running, "", 1);
        assert!(progress(&svc, &[a, c]).converged);
    }

    #[test]
    fn pretty_text() {
        let mut svc = service(Some(3), 3);
        svc.spec.task_template.placement.constraints = vec!["node.role==worker".into()];
        let names = HashMap::from([("net".to_string(), "red".to_string())]);
        let p = pretty(&svc, &names);
        assert!(
            p.contains("Service Mode:   Replicated\n Replicas:      3\n"),
            "{p}"
        );
        assert!(p.contains(" Constraints:   [node.role==worker]"), "{p}");
        assert!(p.contains("Networks: red\n"), "{p}");
        assert!(p.contains("Endpoint Mode:  vip\n"), "{p}");
    }
}
