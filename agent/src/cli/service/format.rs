//! How docker prints task states, errors, ages and progress bars.

use chrono::{DateTime, Utc};
use model::task::TaskState;

use crate::cli::table::title;

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
pub fn task_progress(t: &::api::task::Task) -> String {
    let state = t.status.state.as_str();
    if !t.status.err.is_empty() {
        return format!("{state:<9} {}", trunc_error(&t.status.err));
    }
    match state_step(t.status.state) {
        Some(step) => format!("{state:<9} {}", bar(step, 9)),
        None => state.to_string(),
    }
}

/// A progress line within `width` columns: without its bar if that is too wide (as docker on
/// narrow terminals), else cut.
pub fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    match line.find(" [") {
        Some(i) if line.ends_with(']') => ellipsis(line[..i].trim_end(), width),
        _ => ellipsis(line, width),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
