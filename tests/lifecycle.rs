//! Process lifecycle of a service binary and of the local stack: clean exit
//! on SIGTERM, start-up refusal of bad configuration, and Ctrl-C on
//! `shop-stack` leaving nothing behind.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shop_testkit::{Postgres, Stack, eventually, tools};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn sigterm_goes_not_serving_drains_and_exits_zero() {
    let mut stack = Stack::start(&["catalog"]).await.unwrap();
    let catalog = stack.service_mut("catalog");

    let status = catalog.stop(Duration::from_secs(15)).await.unwrap();

    assert!(status.success(), "exit status {status}");
    let log = catalog.log();
    let not_serving = log
        .find("shutting down: NOT_SERVING")
        .expect("logged shutdown");
    let stopped = log.find("stopped").expect("logged the end of the drain");
    assert!(not_serving < stopped);
}

#[tokio::test]
async fn bad_configuration_is_refused_at_start_naming_the_key() {
    let postgres = Postgres::start().await.unwrap();
    let url = postgres.create_database("users").await.unwrap();
    let bin = tools::service_binary("users").unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("k1.pem");
    std::fs::write(&key_file, shop_auth::KeyPair::generate().private_pem).unwrap();
    let run = |extra: &[(&str, &str)]| {
        let out = Command::new(&bin)
            .env("DATABASE_URL", &url)
            .env("SHOP_USERS__SERVER__LISTEN", "127.0.0.1:0")
            .env("SHOP_USERS__AUTH__SIGNING_KEY_FILE", &key_file)
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stderr) = run(&[("SHOP_USERS__SERVER__LISTEN_BACKLOG", "5")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.to_lowercase().contains("listen_backlog"), "{stderr}");

    let (code, stderr) = run(&[("SHOP_USERS__AUTH__TOKEN_TTL", "forever")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.to_lowercase().contains("auth.token_ttl"), "{stderr}");

    let (code, stderr) = run(&[("SHOP_CONFIG", "/nonexistent/users.toml")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/users.toml"), "{stderr}");
}

/// Whether a process with this PID still exists (a zombie counts as gone:
/// it has exited and only waits for its parent).
fn alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .trim_start()
        .chars()
        .next();
    !matches!(state, Some('Z') | None)
}

#[tokio::test]
async fn ctrl_c_on_the_local_stack_stops_every_process_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("stack.state");
    let mut child = Command::new(tools::workspace_bin_dir().unwrap().join("shop-stack"))
        .args(["--port-base", "0", "--state-file"])
        .arg(&state)
        .arg("--pki-dir")
        .arg(dir.path().join("pki"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, as a shell gives a foreground job; Ctrl-C
        // signals the whole group.
        .process_group(0)
        .spawn()
        .unwrap();
    let lines = eventually(Duration::from_secs(90), || async {
        std::fs::read_to_string(&state).map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    let pids: Vec<(String, i32)> = lines
        .lines()
        .map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next().unwrap().to_string();
            (name, parts.next().unwrap().parse().unwrap())
        })
        .collect();
    let names: Vec<_> = pids.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "postgres",
            "nats",
            "console",
            "analytics",
            "catalog",
            "gateway",
            "inventory",
            "notifications",
            "orders",
            "payments",
            "users"
        ]
    );
    assert!(pids.iter().all(|(_, pid)| alive(*pid)));

    kill(Pid::from_raw(-(child.id() as i32)), Signal::SIGINT).unwrap();

    let status = eventually(Duration::from_secs(30), || {
        let status = child.try_wait();
        async move {
            match status {
                Ok(Some(s)) => Ok(s),
                _ => Err("shop-stack still running"),
            }
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "shop-stack exit status {status}");
    for (name, pid) in &pids {
        assert!(!alive(*pid), "{name} (pid {pid}) survived Ctrl-C");
    }
}
