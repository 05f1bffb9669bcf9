//! Tasks: one running instance of a service on a node. Owned by the orchestrator; the node's
//! executor reports the observed status.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::Meta;
use crate::service::TaskTemplate;
use chrono::{DateTime, Utc};

/// Task states in swarmkit's order: a task only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Remove,
    Orphaned,
}

impl TaskState {
    /// The lowercase name docker prints ("running", "shutdown", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }

    /// Whether the task has stopped for good.
    pub fn is_terminal(self) -> bool {
        self > TaskState::Running
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    pub timestamp: DateTime<Utc>,
    /// Human-readable progress ("scheduled", "started", ...).
    pub message: String,
    /// Why the task failed or cannot be placed (shown in `service ps` ERROR).
    pub err: Option<String>,
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    pub network_id: String,
    /// Addresses with their network's prefix length, e.g. 10.0.1.5/24.
    pub addresses: Vec<IpNet>,
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub meta: Meta,
    pub service_id: String,
    /// Replica slot (1-based) for replicated services; 0 for global ones.
    pub slot: u64,
    /// Set by the scheduler; None while pending.
    pub node_id: Option<String>,
    pub desired_state: TaskState,
    pub status: TaskStatus,
    pub spec: TaskTemplate,
    /// Addresses allocated by the leader, one attachment per network.
    pub networks: Vec<NetworkAttachment>,
}
