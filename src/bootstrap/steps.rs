//! The step runner: every change bootstrap or reset makes on a host is one named step with a
//! check ("already done?") and an action, both constant root scripts.
//!
//! Why: a rerun must change nothing and say so ("unchanged" for every step whose check passes),
//! and a failed run must say which step failed so that the operator can fix that and rerun — the
//! steps before it pass their checks and are skipped. `--dry-run` prints the same list without
//! connecting.

use std::time::Duration;

use super::remote::{Output, Remote, RemoteError};

/// One step. `check` exits 0 when the step has nothing to do; `action` does it.
pub struct Step {
    pub name: &'static str,
    /// What the action does, in a line (the dry-run prints it).
    pub about: String,
    pub check: &'static str,
    pub check_input: Vec<u8>,
    pub action: &'static str,
    pub action_input: Vec<u8>,
    /// A change here needs the service restarted (binary, config, unit, groups).
    pub needs_restart: bool,
    /// The service step: its action also runs when an earlier step needed a restart.
    pub restart_on_change: bool,
    pub timeout: Duration,
}

impl Step {
    pub fn new(name: &'static str, about: impl Into<String>) -> Step {
        Step {
            name,
            about: about.into(),
            check: "false",
            check_input: Vec::new(),
            action: "true",
            action_input: Vec::new(),
            needs_restart: false,
            restart_on_change: false,
            timeout: Duration::from_secs(120),
        }
    }
    pub fn check(mut self, script: &'static str, input: impl Into<Vec<u8>>) -> Step {
        self.check = script;
        self.check_input = input.into();
        self
    }
    pub fn action(mut self, script: &'static str, input: impl Into<Vec<u8>>) -> Step {
        self.action = script;
        self.action_input = input.into();
        self
    }
    pub fn restarts(mut self) -> Step {
        self.needs_restart = true;
        self
    }
    pub fn timeout(mut self, t: Duration) -> Step {
        self.timeout = t;
        self
    }
}

/// Run on the host before the action of a step that needs the service restarted: the mark
/// outlives a run that fails before the service step (the next run's service check sees it and
/// restarts), and goes with a reboot, which restarts the service anyway.
pub const MARK_RESTART: &str = ": >/run/paygress-restart-pending";

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Changed,
}

/// A step that failed: its name and what the host said.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("step {step} failed: {err}")]
    Remote {
        step: &'static str,
        err: RemoteError,
    },
    #[error("step {step} failed: its action ran but its check still fails afterwards{}", if detail.is_empty() { String::new() } else { format!(": {detail}") })]
    NotDone { step: &'static str, detail: String },
    #[error("step {step} failed (exit {code}): {detail}")]
    Failed {
        step: &'static str,
        code: String,
        detail: String,
    },
}

/// The last lines of a command's error output (the part worth showing).
pub fn tail(o: &Output) -> String {
    let text = if o.stderr.trim().is_empty() {
        &o.stdout
    } else {
        &o.stderr
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

/// Print the plan (`--dry-run`).
pub fn print_plan(what: &str, steps: &[Step]) {
    println!("{what}: dry run, nothing is done; the steps, each skipped when its check passes:");
    for (i, s) in steps.iter().enumerate() {
        println!("  [{}/{}] {}: {}", i + 1, steps.len(), s.name, s.about);
    }
}

/// Run `steps` in order; stop at the first failure. After an action the step's check runs again
/// and must pass: an action that exits 0 without doing its job fails its step. Prints one line
/// per step.
pub async fn run(
    what: &str,
    remote: &Remote,
    steps: &[Step],
) -> Result<Vec<(&'static str, Outcome)>, StepError> {
    run_after(what, remote, steps, false).await
}

/// [`run`], continuing a list whose earlier part (run before) changed something that needs
/// the service restarted when `restart` is true.
pub async fn run_after(
    what: &str,
    remote: &Remote,
    steps: &[Step],
    restart: bool,
) -> Result<Vec<(&'static str, Outcome)>, StepError> {
    let mut done = Vec::new();
    let mut restart = restart;
    for (i, s) in steps.iter().enumerate() {
        let forced = s.restart_on_change && restart;
        let skip = !forced
            && remote
                .root(s.check, &s.check_input, s.timeout)
                .await
                .map_err(|err| StepError::Remote { step: s.name, err })?
                .ok();
        let outcome = if skip {
            Outcome::Unchanged
        } else {
            if s.needs_restart {
                let m = remote
                    .root(MARK_RESTART, &[], s.timeout)
                    .await
                    .map_err(|err| StepError::Remote { step: s.name, err })?;
                if !m.ok() {
                    return Err(StepError::Failed {
                        step: s.name,
                        code: m.code.map_or("by signal".into(), |c| c.to_string()),
                        detail: tail(&m),
                    });
                }
            }
            let o = remote
                .root(s.action, &s.action_input, s.timeout)
                .await
                .map_err(|err| StepError::Remote { step: s.name, err })?;
            if !o.ok() {
                println!("{what}: [{}/{}] {}: FAILED", i + 1, steps.len(), s.name);
                return Err(StepError::Failed {
                    step: s.name,
                    code: o.code.map_or("by signal".into(), |c| c.to_string()),
                    detail: tail(&o),
                });
            }
            // The action said it worked; the check says whether it did.
            let after = remote
                .root(s.check, &s.check_input, s.timeout)
                .await
                .map_err(|err| StepError::Remote { step: s.name, err })?;
            if !after.ok() {
                println!("{what}: [{}/{}] {}: FAILED", i + 1, steps.len(), s.name);
                return Err(StepError::NotDone {
                    step: s.name,
                    detail: tail(&after),
                });
            }
            restart |= s.needs_restart;
            Outcome::Changed
        };
        let word = match outcome {
            Outcome::Unchanged => "unchanged".to_string(),
            Outcome::Changed => format!("done ({})", s.about),
        };
        println!("{what}: [{}/{}] {}: {word}", i + 1, steps.len(), s.name);
        done.push((s.name, outcome));
    }
    Ok(done)
}
