//! What every child process the testkit starts needs: a bounded stop, and
//! the end of its log for error messages.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

/// Sends `signal`, waits up to `grace` for the exit, then SIGKILLs; always
/// reaps. Blocking: used from `Drop`.
pub(crate) fn terminate(mut child: Child, signal: Signal, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), signal);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last lines of a log file, for error messages.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
