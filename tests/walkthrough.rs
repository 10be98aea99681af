//! The grpcurl walkthrough (README.md, then the pages of docs/ that go on
//! from it) and every runbook's commands, run as written with the real
//! grpcurl against the real local stack (`shop-stack`, free ports); and,
//! without a stack, that every page with examples is run and every relative
//! link of the documentation resolves.

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

/// The walkthrough's files in the order they run, as
/// `tests/readme_examples.sh` lists them (README.md first).
fn walkthrough_files() -> Vec<String> {
    let out = Command::new("bash")
        .arg(tools::repo_root().join("tests/readme_examples.sh"))
        .arg("--list")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Every file of the walkthrough, in order, against one fresh stack: a
/// later file sees what an earlier one left (users, products, orders), but
/// no variable (each file runs in a shell of its own).
#[tokio::test]
async fn the_readme_walkthrough_works_as_written() {
    let stack = LocalStack::start().await;
    let mut outputs = HashMap::new();
    for file in walkthrough_files() {
        let out = run_examples(&stack, &file);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "{file}:\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        outputs.insert(file, (stdout, stderr));
    }
    let output = |file: &str| {
        outputs
            .get(file)
            .unwrap_or_else(|| panic!("{file} is not in the walkthrough"))
    };

    // The gateway block of README.md: availability joined, details
    // complete, and the calls without a valid token refused.
    let (stdout, stderr) = output("README.md");
    assert!(
        stdout.contains("\"email\": \"lin@example.com\""),
        "{stdout}"
    );
    assert!(stdout.contains("\"availableQuantity\""), "{stdout}");
    assert!(stdout.contains("\"payments\""), "{stdout}");
    // ... and the same order over REST/JSON.
    assert!(stdout.contains(r#""orderId":"#), "{stdout}");
    assert_eq!(
        stderr.matches("Code: Unauthenticated").count(),
        2,
        "{stderr}"
    );

    // The same through REST/JSON with curl: ready, its OpenAPI document,
    // an order to CONFIRMED with nothing missing from its details, a
    // call without a token refused as 401, a bad sign-up naming fields.
    let (stdout, stderr) = output("docs/http.md");
    assert!(
        stdout.contains(r#"{"status":"SERVING"}"#),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ORDER_STATUS_CONFIRMED"), "{stdout}");
    assert!(stdout.contains("\n[]\n"), "details complete: {stdout}");
    assert!(stdout.contains("\n401\n"), "{stdout}");
    assert!(stdout.contains("'field': 'email'"), "{stdout}");

    // Behind the gateway: a product added and paged through, a mistake
    // named per field; the order's saga ran to CONFIRMED, and the
    // cancellation was accepted.
    let (stdout, stderr) = output("docs/walkthrough.md");
    assert!(stdout.contains("\"sku\": \"BK-SICP-01\""), "{stdout}");
    assert!(stdout.contains("\"nextPageToken\""), "{stdout}");
    assert!(stderr.contains("Code: InvalidArgument"), "{stderr}");
    assert!(stderr.contains("email: must contain an @"), "{stderr}");
    assert!(stdout.contains("ORDER_STATUS_CONFIRMED"), "{stdout}");
    assert!(
        stdout.contains("CANCELLATION_REASON_USER_REQUESTED"),
        "{stdout}"
    );

    // The mesh of orders: its catalog upstream's policy and endpoints.
    let (stdout, _) = output("docs/mesh.md");
    assert!(stdout.contains("\"upstream\": \"catalog\""), "{stdout}");

    // Feature flags: the kill switch flipped by a file edit, the rollout
    // explained, a mistake refused naming the flag.
    let (stdout, _) = output("docs/flags.md");
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
}

const EXAMPLES_START: &str = "<!-- readme-examples:start -->";
const EXAMPLES_END: &str = "<!-- readme-examples:end -->";

/// README.md and every page of docs/, as paths from the repository root.
fn documentation_pages() -> Vec<String> {
    let mut docs: Vec<String> = std::fs::read_dir(tools::repo_root().join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    [vec!["README.md".to_string()], docs].concat()
}

fn runbooks() -> Vec<String> {
    shop_testkit::stack::SERVICES
        .iter()
        .map(|service| format!("services/{service}/RUNBOOK.md"))
        .collect()
}

fn read(page: &str) -> String {
    std::fs::read_to_string(tools::repo_root().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"))
}

/// How many marked blocks `text` has, each a start marker, one ```sh block
/// and an end marker (what `tests/readme_examples.sh` runs), or what is
/// wrong with one.
fn marked_blocks(text: &str) -> Result<usize, &'static str> {
    let mut blocks = 0;
    let mut rest = text;
    while let Some(start) = rest.find(EXAMPLES_START) {
        let body = rest[start + EXAMPLES_START.len()..]
            .trim_start()
            .strip_prefix("```sh\n")
            .ok_or("a start marker not followed by a ```sh block")?;
        let end = body.find("```").ok_or("a ```sh block without its end")?;
        rest = body[end + 3..]
            .trim_start()
            .strip_prefix(EXAMPLES_END)
            .ok_or("a marked block without its end marker")?;
        blocks += 1;
    }
    if text.matches(EXAMPLES_END).count() != blocks {
        return Err("an end marker without its start marker");
    }
    Ok(blocks)
}

#[test]
fn every_page_with_examples_is_run() {
    let walkthrough = walkthrough_files();
    let pages = documentation_pages();
    assert_eq!(walkthrough.first().map(String::as_str), Some("README.md"));
    for file in &walkthrough {
        assert!(
            pages.contains(file),
            "{file}: in the walkthrough, but not README.md nor a page of docs/"
        );
    }
    for page in &pages {
        let blocks = marked_blocks(&read(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert_eq!(
            blocks > 0,
            walkthrough.contains(page),
            "{page}: {blocks} marked blocks; a page with examples must be in \
             tests/readme_examples.sh's WALKTHROUGH, and one in it must have examples"
        );
    }
    for runbook in runbooks() {
        let blocks = marked_blocks(&read(&runbook)).unwrap_or_else(|e| panic!("{runbook}: {e}"));
        assert!(blocks > 0, "{runbook}: no marked blocks");
    }
}

/// The targets of `[text](target)` links outside code blocks, other than
/// URLs.
fn relative_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(open) = rest.find("](") {
            let after = &rest[open + 2..];
            let Some(close) = after.find(')') else { break };
            let target = &after[..close];
            if !target.contains("://") && !target.starts_with("mailto:") {
                links.push(target.to_string());
            }
            rest = &after[close..];
        }
    }
    links
}

/// The anchors of a Markdown page's headings, as GitHub makes them: lower
/// case, spaces to hyphens, punctuation dropped, `-1`, `-2`... for repeats.
fn anchors(text: &str) -> Vec<String> {
    let mut anchors = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let heading = line.trim_start_matches('#');
        if fenced || heading.len() == line.len() || !heading.starts_with(' ') {
            continue;
        }
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let repeats = seen.entry(slug.clone()).or_default();
        anchors.push(match *repeats {
            0 => slug,
            n => format!("{slug}-{n}"),
        });
        *repeats += 1;
    }
    anchors
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = tools::repo_root();
    let pages = [
        documentation_pages(),
        runbooks(),
        vec!["k8s/README.md".into(), "tests/clients/README.md".into()],
    ]
    .concat();
    let mut broken = Vec::new();
    for page in &pages {
        let path = root.join(page);
        for link in relative_links(&read(page)) {
            let (file, anchor) = match link.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() {
                path.clone()
            } else {
                path.parent().unwrap().join(file)
            };
            if !target.exists() {
                broken.push(format!("{page}: {link}: no such file"));
            } else if let Some(anchor) = anchor.filter(|_| file.is_empty() || file.ends_with(".md"))
            {
                let text = std::fs::read_to_string(&target).unwrap();
                if !anchors(&text).iter().any(|a| a == anchor) {
                    broken.push(format!("{page}: {link}: no such heading"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
