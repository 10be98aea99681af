//! The README's grpcurl walkthrough and every runbook's commands, run as
//! written with the real grpcurl against the real local stack
//! (`shop-stack`, free ports).

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shop_testkit::{eventually, tools};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The local stack as `just up` runs it, stopped with SIGINT on drop.
struct LocalStack {
    child: Child,
    addrs: HashMap<String, String>,
    /// Health-only plaintext ports, by service.
    health: HashMap<String, String>,
    /// The CA certificate and the operator's identity.
    pki: std::path::PathBuf,
    flags: std::path::PathBuf,
    // Holds the state file until the stack is stopped.
    _dir: tempfile::TempDir,
}

impl LocalStack {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("stack.state");
        let pki = dir.path().join("pki");
        let flags = dir.path().join("flags/flags.json");
        let child = Command::new(tools::workspace_bin_dir().unwrap().join("shop-stack"))
            .args(["--port-base", "0", "--state-file"])
            .arg(&state)
            .arg("--pki-dir")
            .arg(&pki)
            .arg("--flags-file")
            .arg(&flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = eventually(Duration::from_secs(90), || async {
            std::fs::read_to_string(&state).map_err(|e| e.to_string())
        })
        .await
        .unwrap();
        let rows: Vec<Vec<String>> = lines
            .lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect();
        let addrs = rows.iter().map(|r| (r[0].clone(), r[2].clone())).collect();
        let health = rows
            .iter()
            .filter(|r| r.len() > 3)
            .map(|r| (r[0].clone(), r[3].clone()))
            .collect();
        LocalStack {
            child,
            addrs,
            health,
            pki,
            flags,
            _dir: dir,
        }
    }

    /// grpcurl's flags to call as the operator.
    fn operator(&self) -> Vec<String> {
        let p = |f: &str| self.pki.join(f).display().to_string();
        vec![
            "-cacert".into(),
            p("ca.crt"),
            "-cert".into(),
            p("operator/tls.crt"),
            "-key".into(),
            p("operator/tls.key"),
        ]
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let _ = self.child.wait();
    }
}

fn grpcurl(args: &[&str]) -> String {
    let out = Command::new(tools::find("grpcurl").unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "grpcurl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn grpcurl_fails(args: &[&str]) -> String {
    let out = Command::new(tools::find("grpcurl").unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "grpcurl {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn grpcurl_lists_each_service_with_health_and_reflection() {
    let stack = LocalStack::start().await;
    let operator = stack.operator();
    let op: Vec<&str> = operator.iter().map(String::as_str).collect();
    let protoset = stack.pki.join("health.protoset");
    std::fs::write(&protoset, tonic_health::pb::FILE_DESCRIPTOR_SET).unwrap();
    let protoset = protoset.display().to_string();

    for (name, service) in [
        ("users", "shop.users.v1.UserService"),
        ("catalog", "shop.catalog.v1.CatalogService"),
        ("inventory", "shop.inventory.v1.InventoryService"),
        ("orders", "shop.orders.v1.OrderService"),
        ("payments", "shop.payments.v1.PaymentService"),
        ("notifications", "shop.notifications.v1.NotificationService"),
        ("analytics", "shop.analytics.v1.AnalyticsService"),
        ("gateway", "shop.gateway.v1.ShopGatewayService"),
    ] {
        let addr = stack.addrs[name].as_str();
        let list = grpcurl(&[&op[..], &[addr, "list"]].concat());
        let listed: Vec<&str> = list.lines().collect();
        let mut expected = vec![
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "shop.flags.v1.FlagsAdminService",
            "shop.mesh.v1.MeshAdminService",
            service,
        ];
        // Consumers of events also answer for them.
        if !["users", "catalog", "gateway"].contains(&name) {
            expected.push("shop.events.v1.EventsAdminService");
        }
        expected.sort();
        assert_eq!(listed, expected, "{name}");
        let health = grpcurl(&[&op[..], &[addr, "grpc.health.v1.Health/Check"]].concat());
        assert!(health.contains("\"SERVING\""), "{health}");
        let check = format!("{{\"service\":\"{service}\"}}");
        let health = grpcurl(
            &[
                &op[..],
                &["-d", &check, addr, "grpc.health.v1.Health/Check"],
            ]
            .concat(),
        );
        assert!(health.contains("\"SERVING\""), "{health}");

        // The plaintext port answers health, and nothing else (no
        // reflection either: grpcurl reads the health contract from a
        // descriptor set).
        let plain = stack.health[name].as_str();
        let health = grpcurl(&[
            "-plaintext",
            "-protoset",
            &protoset,
            plain,
            "grpc.health.v1.Health/Check",
        ]);
        assert!(health.contains("\"SERVING\""), "{health}");
        let refused = grpcurl_fails(&["-plaintext", plain, "list"]);
        assert!(
            refused.contains("Unimplemented")
                || refused.contains("does not support the reflection API"),
            "{name}: {refused}"
        );
        let refused = grpcurl_fails(&[
            "-plaintext",
            "-import-path",
            &tools::repo_root().join("proto").display().to_string(),
            "-proto",
            "shop/mesh/v1/admin.proto",
            plain,
            "shop.mesh.v1.MeshAdminService/GetStats",
        ]);
        assert!(refused.contains("Code: Unimplemented"), "{name}: {refused}");

        // The service port refuses plaintext at the handshake.
        if name != "gateway" {
            grpcurl_fails(&[
                "-plaintext",
                "-protoset",
                &protoset,
                addr,
                "grpc.health.v1.Health/Check",
            ]);
        }
    }
}

/// `tests/readme_examples.sh file` against `stack`.
fn run_examples(stack: &LocalStack, file: &str) -> std::process::Output {
    let mut script = Command::new("bash");
    script
        .arg(tools::repo_root().join("tests/readme_examples.sh"))
        .arg(file);
    for (name, addr) in &stack.addrs {
        script.env(format!("{}_ADDR", name.to_uppercase()), addr);
    }
    script.env("PKI_DIR", &stack.pki);
    script.env("FLAGS_FILE", &stack.flags);
    script.output().unwrap()
}

#[tokio::test]
async fn every_runbooks_commands_work_as_written() {
    let stack = LocalStack::start().await;
    for service in shop_testkit::stack::SERVICES {
        let runbook = format!("services/{service}/RUNBOOK.md");
        let out = run_examples(&stack, &runbook);
        assert!(
            out.status.success(),
            "{runbook}:\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn the_readme_walkthrough_works_as_written() {
    let stack = LocalStack::start().await;
    let out = run_examples(&stack, "README.md");

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("\"accessToken\""), "{stdout}");
    // Feature flags: the kill switch flipped by a file edit, the rollout
    // explained, a mistake refused naming the flag.
    assert!(
        stdout.contains("inventory is switched off (flag gateway.product-availability)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"reason\": \"TARGETING_MATCH\""),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            r#"flag \"orders.minimum-order-value\": targeting: unknown operator \"fractionall\""#
        ),
        "{stdout}"
    );
    // The gateway block: availability joined, details complete, and the
    // calls without a valid token refused.
    assert!(stdout.contains("\"availableQuantity\""), "{stdout}");
    assert!(stdout.contains("\"payments\""), "{stdout}");
    assert_eq!(
        stderr.matches("Code: Unauthenticated").count(),
        2,
        "{stderr}"
    );
    assert!(stdout.contains("\"sku\": \"BK-SICP-01\""), "{stdout}");
    assert!(stdout.contains("\"nextPageToken\""), "{stdout}");
    assert!(stderr.contains("Code: InvalidArgument"), "{stderr}");
    assert!(stderr.contains("email: must contain an @"), "{stderr}");
    // The order's saga ran to CONFIRMED, and the cancellation was accepted.
    assert!(stdout.contains("ORDER_STATUS_CONFIRMED"), "{stdout}");
    assert!(
        stdout.contains("CANCELLATION_REASON_USER_REQUESTED"),
        "{stdout}"
    );
}
