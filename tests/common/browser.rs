//! The browser suites' scripts (web/test/*.mjs: headless Chromium over
//! WebDriver), run by Node from the repository; each prints one JSON line
//! of what it saw, or why it failed.

use serde_json::Value;
use shop_testkit::tools::repo_root;
use std::time::Duration;

/// Runs `node web/test/{script} {args}` for at most `limit`; panics unless
/// it succeeds; returns its last line of output, as JSON.
pub async fn run(script: &str, args: &[&str], limit: Duration) -> Value {
    let run = tokio::process::Command::new("node")
        .arg(format!("web/test/{script}"))
        .args(args)
        .current_dir(repo_root())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{script} took more than {limit:?}"))
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "== {script} {args:?}\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed");
    serde_json::from_str(stdout.lines().last().expect("a line of results")).unwrap()
}
