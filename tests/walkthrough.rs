//! The README's grpcurl walkthrough, run as written with the real grpcurl
//! against the real local stack (`shop-stack`, free ports).

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
    // Holds the state file until the stack is stopped.
    _dir: tempfile::TempDir,
}

impl LocalStack {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("stack.state");
        let child = Command::new(tools::workspace_bin_dir().unwrap().join("shop-stack"))
            .args(["--port-base", "0", "--state-file"])
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = eventually(Duration::from_secs(90), || async {
            std::fs::read_to_string(&state).map_err(|e| e.to_string())
        })
        .await
        .unwrap();
        let addrs = lines
            .lines()
            .map(|l| {
                let parts: Vec<_> = l.split_whitespace().collect();
                (parts[0].to_string(), parts[2].to_string())
            })
            .collect();
        LocalStack {
            child,
            addrs,
            _dir: dir,
        }
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

#[tokio::test]
async fn grpcurl_lists_each_service_with_health_and_reflection() {
    let stack = LocalStack::start().await;

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
        let addr = &stack.addrs[name];
        let list = grpcurl(&["-plaintext", addr, "list"]);
        let listed: Vec<&str> = list.lines().collect();
        let mut expected = vec![
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "shop.mesh.v1.MeshAdminService",
            service,
        ];
        expected.sort();
        assert_eq!(listed, expected, "{name}");
        let health = grpcurl(&["-plaintext", addr, "grpc.health.v1.Health/Check"]);
        assert!(health.contains("\"SERVING\""), "{health}");
        let health = grpcurl(&[
            "-plaintext",
            "-d",
            &format!("{{\"service\":\"{service}\"}}"),
            addr,
            "grpc.health.v1.Health/Check",
        ]);
        assert!(health.contains("\"SERVING\""), "{health}");
    }
}

#[tokio::test]
async fn the_readme_walkthrough_works_as_written() {
    let stack = LocalStack::start().await;

    let mut script = Command::new("bash");
    script.arg(tools::repo_root().join("tests/readme_examples.sh"));
    for (name, addr) in &stack.addrs {
        script.env(format!("{}_ADDR", name.to_uppercase()), addr);
    }
    let out = script.output().unwrap();

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("\"accessToken\""), "{stdout}");
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
