//! The agent's Prometheus metrics (`GET /metrics` on the API socket, and on TCP with
//! `--metrics-addr`), in the text format of the `prometheus-client` crate. Names are
//! `netagent_<component>_<what>[_total|_seconds]`.
//!
//! One registry per process, built once by [`global`]; one function per component below fills
//! its part. Counters the code bumps (store writes, executor passes) are fields of [`Metrics`];
//! values that already live elsewhere (Raft's metrics, gossip's `Stats`, the store's tasks) are
//! read at scrape time by collectors from the agent [`attach`]ed at startup.
//!
//! Adding a component: write `fn dns(reg: &mut Registry) -> DnsMetrics`
//! here (register its counters, return them), add a `pub dns: DnsMetrics` field to [`Metrics`]
//! and one line in `Metrics::new`; the component bumps `metrics::global().dns.queries...`. For
//! values it keeps itself, register a [`Collector`] the same way `gossip` does.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use model::node::Role;
use model::task::TaskState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::agent::Agent;

/// Counters and histograms the agent's code updates.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pub store: StoreMetrics,
    pub executor: ExecutorMetrics,
    pub api: ApiMetrics,
    pub dispatcher: DispatcherMetrics,
}

#[derive(Debug, Clone)]
pub struct DispatcherMetrics {
    /// Assignment messages the leader sent, by node and kind (full, delta).
    pub sent: Family<[(&'static str, String); 2], Counter>,
    /// Their encoded size in bytes, by node.
    pub sent_bytes: Family<[(&'static str, String); 1], Counter>,
    /// Assignment messages this node received, by kind (full, delta).
    pub received: Family<[(&'static str, &'static str); 1], Counter>,
    /// Heartbeats this node sent to the leader.
    pub heartbeats: Counter,
}

#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// Batches written through this node (`Member::write`), by outcome.
    pub writes: Family<[(&'static str, &'static str); 1], Counter>,
    /// From the call to the batch applied (or refused), forwarding to the leader included.
    pub write_seconds: Histogram,
}

#[derive(Debug, Clone)]
pub struct ExecutorMetrics {
    pub reconcile_passes: Family<[(&'static str, &'static str); 2], Counter>,
    pub reconcile_seconds: Histogram,
    /// Task states this node's executor reported ("starting", "running", "failed", ...).
    pub task_reports: Family<[(&'static str, &'static str); 1], Counter>,
    /// Failures of the node runtime's supervised components (gossip, executor, session).
    pub runtime_failures: Family<[(&'static str, &'static str); 1], Counter>,
}

#[derive(Debug, Clone)]
pub struct ApiMetrics {
    /// API requests by method and status class ("2xx", "4xx", "5xx").
    pub requests: Family<[(&'static str, String); 2], Counter>,
    /// Calls refused on the cluster port (2377) by the store's authorization, by service and code.
    pub cluster_port_refused: Family<[(&'static str, String); 2], Counter>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();
static AGENT: OnceLock<Weak<Agent>> = OnceLock::new();

/// The process's metrics.
pub fn global() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// Gives the scrape-time collectors (Raft, gossip, tasks, kernel writes) the agent to read.
pub fn attach(agent: &Arc<Agent>) {
    let _ = AGENT.set(Arc::downgrade(agent));
    global();
}

fn agent() -> Option<Arc<Agent>> {
    AGENT.get()?.upgrade()
}

impl Metrics {
    fn new() -> Metrics {
        let mut reg = Registry::with_prefix("netagent");
        let store = store(&mut reg);
        let executor = executor(&mut reg);
        let api = api(&mut reg);
        let dispatcher = dispatcher(&mut reg);
        raft(&mut reg);
        gossip(&mut reg);
        dns(&mut reg);
        lb(&mut reg);
        tasks(&mut reg);
        reg.register_collector(Box::new(Process));
        Metrics {
            registry: Mutex::new(reg),
            store,
            executor,
            api,
            dispatcher,
        }
    }

    /// Registers more metrics (a component started later).
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            tracing::warn!(error = %e, "could not encode the metrics");
        }
        out
    }
}

/// `GET /metrics`.
pub fn response() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        global().encode(),
    )
        .into_response()
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 0.5 ms .. ~16 s.
    exponential_buckets(0.0005, 2.0, 16)
}

fn store(reg: &mut Registry) -> StoreMetrics {
    let m = StoreMetrics {
        writes: Family::default(),
        write_seconds: Histogram::new(seconds_buckets()),
    };
    reg.register(
        "store_writes",
        "Batches written to the Raft store through this node, by result (ok, refused, failed)",
        m.writes.clone(),
    );
    reg.register(
        "store_write_seconds",
        "Time from a write to its batch applied by Raft (forwarding to the leader included)",
        m.write_seconds.clone(),
    );
    m
}

fn executor(reg: &mut Registry) -> ExecutorMetrics {
    let m = ExecutorMetrics {
        reconcile_passes: Family::default(),
        reconcile_seconds: Histogram::new(seconds_buckets()),
        task_reports: Family::default(),
        runtime_failures: Family::default(),
    };
    reg.register(
        "executor_reconcile_passes",
        "Reconcile passes of this node's executor, by kind (full, incremental) and result (ok, failed)",
        m.reconcile_passes.clone(),
    );
    reg.register(
        "executor_reconcile_seconds",
        "Duration of the executor's reconcile passes",
        m.reconcile_seconds.clone(),
    );
    reg.register(
        "executor_task_reports",
        "Task states this node's executor reported, by state",
        m.task_reports.clone(),
    );
    reg.register(
        "runtime_failures",
        "Failures (errors, panics, failing passes) of this node's supervised runtime components, by component",
        m.runtime_failures.clone(),
    );
    reg.register_collector(Box::new(KernelWrites));
    m
}

fn api(reg: &mut Registry) -> ApiMetrics {
    let m = ApiMetrics {
        requests: Family::default(),
        cluster_port_refused: Family::default(),
    };
    reg.register(
        "api_requests",
        "API requests answered, by method and status class",
        m.requests.clone(),
    );
    reg.register(
        "cluster_port_refused",
        "Calls refused on the cluster port (certificate or store authorization), by service and gRPC code",
        m.cluster_port_refused.clone(),
    );
    m
}

/// Records a call refused on the cluster port.
pub fn cluster_port_refused(service: &'static str, code: tonic::Code) {
    global()
        .api
        .cluster_port_refused
        .get_or_create(&[
            ("service", service.to_string()),
            ("code", format!("{code:?}")),
        ])
        .inc();
}

fn dispatcher(reg: &mut Registry) -> DispatcherMetrics {
    let m = DispatcherMetrics {
        sent: Family::default(),
        sent_bytes: Family::default(),
        received: Family::default(),
        heartbeats: Counter::default(),
    };
    reg.register(
        "dispatcher_assignments_sent",
        "Assignment messages the leader sent to nodes, by node and kind (full set, delta)",
        m.sent.clone(),
    );
    reg.register(
        "dispatcher_assignments_sent_bytes",
        "Encoded bytes of the assignment messages the leader sent, by node",
        m.sent_bytes.clone(),
    );
    reg.register(
        "dispatcher_assignments_received",
        "Assignment messages this node received, by kind (full set, delta)",
        m.received.clone(),
    );
    reg.register(
        "dispatcher_heartbeats_sent",
        "Heartbeats this node sent to the leader (one per dispatcher heartbeat period)",
        m.heartbeats.clone(),
    );
    m
}

/// Records an assignment message sent to `node` (on the leader).
pub fn assignments_sent(node: &str, full: bool, bytes: usize) {
    let m = &global().dispatcher;
    let kind = if full { "full" } else { "delta" };
    m.sent
        .get_or_create(&[("node", node.to_string()), ("kind", kind.to_string())])
        .inc();
    m.sent_bytes
        .get_or_create(&[("node", node.to_string())])
        .inc_by(bytes as u64);
}

/// Records a heartbeat this node sent.
pub fn heartbeat_sent() {
    global().dispatcher.heartbeats.inc();
}

/// Records an assignment message this node received.
pub fn assignments_received(full: bool) {
    let kind = if full { "full" } else { "delta" };
    global()
        .dispatcher
        .received
        .get_or_create(&[("kind", kind)])
        .inc();
}

fn raft(reg: &mut Registry) {
    reg.register_collector(Box::new(Raft));
}

fn gossip(reg: &mut Registry) {
    reg.register_collector(Box::new(Gossip));
}

fn dns(reg: &mut Registry) {
    reg.register_collector(Box::new(Dns));
}

/// The node's embedded DNS resolver (its own counters, read at scrape time).
#[derive(Debug)]
struct Dns;

impl Collector for Dns {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let r = agent()
            .and_then(|a| a.member())
            .and_then(|m| m.resolver.get());
        let Some(r) = r else {
            return Ok(());
        };
        for (name, help, v) in r.stats().fields() {
            counter(&mut e, &format!("dns_{name}"), help, v)?;
        }
        let (networks, services, tasks) = r.counts();
        gauge(
            &mut e,
            "dns_networks",
            "Networks the node's resolver serves names of",
            networks as i64,
        )?;
        gauge(
            &mut e,
            "dns_services",
            "Service records the node's resolver holds",
            services as i64,
        )?;
        gauge(
            &mut e,
            "dns_tasks",
            "Task records the node's resolver holds",
            tasks as i64,
        )
    }
}

fn lb(reg: &mut Registry) {
    reg.register_collector(Box::new(Lb));
}

/// The node's service load balancer: what the kernel holds and counted, read at scrape time
/// (eBPF: the pinned maps; IPVS: each network's service stats and refusal rules). Labelled
/// with the mode (ebpf, ipvs).
#[derive(Debug)]
struct Lb;

impl Collector for Lb {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let Some(lb) = agent().and_then(|a| a.member()).and_then(|m| m.lb.get()) else {
            return Ok(());
        };
        let c = match lb.read() {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(error = %err, "could not read the load balancer's counters");
                return Ok(());
            }
        };
        let mode = [("mode", lb.kind().as_str())];
        for (name, help, v) in [
            (
                "lb_services",
                "Service VIPs the node's load balancer holds (one per service and network)",
                c.services,
            ),
            (
                "lb_backends",
                "Backends over those VIPs (a running task counts once per VIP it serves)",
                c.backends,
            ),
        ] {
            let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
            g.encode(
                e.encode_descriptor(name, help, None, g.metric_type())?
                    .encode_family(&mode)?,
            )?;
        }
        for (name, help, v) in [
            (
                "lb_balanced",
                "Connections (and with eBPF unconnected UDP datagrams) to a VIP sent to a backend by this node",
                c.balanced,
            ),
            (
                "lb_refused",
                "Connections and datagrams to a VIP refused by this node because it had no running backend",
                c.refused,
            ),
        ] {
            let k = ConstCounter::new(v);
            k.encode(
                e.encode_descriptor(name, help, None, k.metric_type())?
                    .encode_family(&mode)?,
            )?;
        }
        Ok(())
    }
}

fn tasks(reg: &mut Registry) {
    reg.register_collector(Box::new(Tasks));
}

/// Records one executor pass, full or incremental (called from the node's runtime).
pub fn executor_pass(full: bool, took: Duration, ok: bool) {
    let m = &global().executor;
    m.reconcile_passes
        .get_or_create(&[
            ("kind", if full { "full" } else { "incremental" }),
            ("result", if ok { "ok" } else { "failed" }),
        ])
        .inc();
    m.reconcile_seconds.observe(took.as_secs_f64());
}

/// Records a failure of a supervised runtime component (see `crate::supervisor`).
pub fn runtime_failure(component: &'static str) {
    global()
        .executor
        .runtime_failures
        .get_or_create(&[("component", component)])
        .inc();
}

/// Records a task state this node's executor reported.
pub fn task_report(state: TaskState) {
    global()
        .executor
        .task_reports
        .get_or_create(&[("state", state.as_str())])
        .inc();
}

/// Records one store write (called by `Member::write`).
pub fn store_write(took: Duration, result: &'static str) {
    let m = &global().store;
    m.writes.get_or_create(&[("result", result)]).inc();
    m.write_seconds.observe(took.as_secs_f64());
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// Kernel writes of this node's overlay data plane (the executor's count).
#[derive(Debug)]
struct KernelWrites;

impl Collector for KernelWrites {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let n = agent()
            .and_then(|a| a.member())
            .map(|m| {
                m.dataplane_writes
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .unwrap_or(0);
        counter(
            &mut e,
            "executor_kernel_writes",
            "Mutating kernel requests (netlink, namespaces, nftables) of this node's data plane since the agent started",
            n,
        )
    }
}

/// Raft, as this manager sees it.
#[derive(Debug)]
struct Raft;

impl Collector for Raft {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let member = agent().and_then(|a| a.member());
        let store = member
            .as_ref()
            .and_then(|m| m.manager.as_ref())
            .map(|m| &m.store);
        let Some(store) = store else {
            return gauge(
                &mut e,
                "raft_member",
                "1 on a manager (a Raft member), 0 elsewhere",
                0,
            );
        };
        let m = store.metrics().borrow().clone();
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        let last = m.last_log_index.unwrap_or(0);
        gauge(
            &mut e,
            "raft_member",
            "1 on a manager (a Raft member), 0 elsewhere",
            1,
        )?;
        gauge(
            &mut e,
            "raft_term",
            "Current Raft term",
            m.current_term as i64,
        )?;
        gauge(
            &mut e,
            "raft_leader",
            "1 while this manager is the Raft leader",
            i64::from(store.is_leader()),
        )?;
        gauge(
            &mut e,
            "raft_has_leader",
            "1 while this manager knows a leader",
            i64::from(m.current_leader.is_some()),
        )?;
        gauge(
            &mut e,
            "raft_last_log_index",
            "Index of the last entry in this manager's Raft log",
            last as i64,
        )?;
        gauge(
            &mut e,
            "raft_commit_index",
            "Index of the last committed entry, as applied to this manager's store (openraft applies on commit)",
            applied as i64,
        )?;
        gauge(
            &mut e,
            "raft_apply_lag",
            "Log entries this manager has but has not applied yet",
            last.saturating_sub(applied) as i64,
        )?;
        let (_, voters) = store.members();
        gauge(
            &mut e,
            "raft_voters",
            "Raft voters (managers)",
            voters.len() as i64,
        )
    }
}

/// Gossip on 7946: members, traffic, drops by reason.
#[derive(Debug)]
struct Gossip;

impl Collector for Gossip {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let g = agent()
            .and_then(|a| a.member())
            .and_then(|m| m.gossip.get());
        let Some(g) = g else {
            return Ok(());
        };
        let s = g.stats();
        gauge(
            &mut e,
            "gossip_members",
            "Live gossip members, this node included",
            g.members().len() as i64,
        )?;
        for (name, help, v) in [
            (
                "gossip_messages_sent",
                "Gossip messages sent",
                s.messages_sent,
            ),
            (
                "gossip_messages_received",
                "Gossip messages received",
                s.messages_received,
            ),
            (
                "gossip_datagrams_sent",
                "Gossip UDP datagrams sent",
                s.datagrams_sent,
            ),
            (
                "gossip_datagrams_received",
                "Gossip UDP datagrams received",
                s.datagrams_received,
            ),
            ("gossip_sent_bytes", "Gossip bytes sent", s.bytes_sent),
            (
                "gossip_received_bytes",
                "Gossip bytes received",
                s.bytes_received,
            ),
            (
                "gossip_send_errors",
                "Gossip sends that failed",
                s.send_errors,
            ),
            (
                "gossip_streams_sent",
                "Large gossip messages sent over TCP",
                s.streams_sent,
            ),
            (
                "gossip_streams_received",
                "Large gossip messages received over TCP",
                s.streams_received,
            ),
            (
                "gossip_stream_fallbacks",
                "Large gossip messages sent as UDP fragments instead of TCP",
                s.stream_fallbacks,
            ),
        ] {
            counter(&mut e, name, help, v)?;
        }
        let c = ConstCounter::new(0u64);
        let mut fam = e.encode_descriptor(
            "gossip_dropped",
            "Gossip messages dropped, by reason",
            None,
            c.metric_type(),
        )?;
        for (reason, v) in [
            ("unknown_key", s.dropped_unknown_key),
            ("bad_auth", s.dropped_bad_auth),
            ("replay", s.dropped_replay),
            ("malformed", s.dropped_malformed),
            ("incomplete", s.dropped_incomplete),
        ] {
            ConstCounter::new(v).encode(fam.encode_family(&[("reason", reason)])?)?;
        }
        Ok(())
    }
}

/// Tasks by observed state: the whole swarm's on a manager, a worker's own elsewhere.
#[derive(Debug)]
struct Tasks;

impl Collector for Tasks {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let Some(member) = agent().and_then(|a| a.member()) else {
            return Ok(());
        };
        // A manager counts its replica's tasks where they are (a scrape copies nothing).
        let mut counts = std::collections::BTreeMap::new();
        let mut count = |t: &model::Task| {
            *counts.entry(t.status.state.as_str()).or_insert(0i64) += 1;
        };
        if member.role() == Role::Manager {
            let Ok(store) = member.store() else {
                return Ok(());
            };
            let counted = store.scan(model::Kind::Task, |objects| {
                for o in objects {
                    if let model::Object::Task(t) = o {
                        count(t);
                    }
                }
            });
            if counted.is_err() {
                return Ok(());
            }
        } else if let Some(a) = member.assignments.borrow().as_ref() {
            a.tasks.iter().for_each(&mut count);
        }
        let g = ConstGauge::new(0i64);
        let mut fam = e.encode_descriptor(
            "tasks",
            "Tasks by observed state (a manager: the swarm's; a worker: its own)",
            None,
            g.metric_type(),
        )?;
        for (state, n) in counts {
            ConstGauge::new(n).encode(fam.encode_family(&[("state", state)])?)?;
        }
        Ok(())
    }
}

/// The agent's own memory (from /proc/self/status), so a bound can be checked from outside.
#[derive(Debug)]
struct Process;

impl Process {
    /// A `/proc/self/status` field in kB, as bytes.
    fn status_bytes(status: &str, field: &str) -> i64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

impl Collector for Process {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        gauge(
            &mut e,
            "process_resident_memory_bytes",
            "The agent's resident memory (VmRSS)",
            Self::status_bytes(&status, "VmRSS"),
        )?;
        gauge(
            &mut e,
            "process_resident_memory_peak_bytes",
            "The agent's peak resident memory since it started (VmHWM)",
            Self::status_bytes(&status, "VmHWM"),
        )
    }
}
