//! schemathesis against the live gateway: every operation of the OpenAPI
//! document the gateway serves, called over TLS with a real user's token,
//! with generated requests (schemathesis's coverage, fuzzing and stateful
//! phases, a fixed seed, no example database), each answer checked against
//! the document.
//!
//! Choices, and why:
//!
//! - The tool is `.tools/bin/schemathesis`, the version
//!   `libs/testkit/bootstrap.py` pins ([`VERSION`]). It loads the document
//!   as `GET /openapi.json` served it, from a file with `--url` (loaded
//!   from the URL, schemathesis leaves out the operation at that URL).
//! - Checks ([`CHECKS`]): no 5xx; status codes, content types, headers
//!   and bodies as documented; required headers; 405 with a true `Allow`
//!   for undeclared methods; authentication not ignored; stateful
//!   resource checks; answers within [`MAX_RESPONSE_SECS`]. Two checks
//!   are left out because the document does not claim what they test:
//!   `positive_data_acceptance` wants every schema-valid request
//!   accepted, but the handlers' rules (UUID ids, page sizes, email and
//!   password shape, required fields) live in code, answered 400 with the
//!   fields named, not in the proto3 JSON schemas; `negative_data_rejection`
//!   wants every schema-violating request refused, but the proto3 JSON
//!   mapping reads `null` as a field's default and an absent body as the
//!   empty message, so `PATCH /api/users/me` with `{"displayName": null}`
//!   or no body is rightly a no-op 200.
//! - DeactivateAccount would log the user out of every later call (401),
//!   so the main run leaves it out and a second run tests it alone with a
//!   user of its own: its first call deactivates that account, the others
//!   are 401 as documented, and the account is checked deactivated after.
//! - LogIn's limits (also spent by UpdateAccount with `currentPassword`)
//!   are raised so generated cases reach the handler; 429 stays a
//!   documented answer, and the limits have their own tests
//!   (`tests/gateway.rs`, `tests/abuse.rs`).
//! - At least [`MIN_CASES`] cases per operation that takes input. An
//!   operation without parameters or body (GetAccount, DeactivateAccount,
//!   the health paths, the document itself) is one possible request, so
//!   Hypothesis sends it once; those get that plus the coverage phase's
//!   probes (other methods, no token).
//! - Beside schemathesis's verdict (exit status 0 and no failure or error
//!   in its JUnit report), the test reads every answer from its NDJSON
//!   report: none 5xx, none with gRPC code INTERNAL, and no service of the
//!   stack logged a panic.

mod common;

use common::gateway::{GATEWAY_STACK, Shop};
use http::Method;
use serde_json::Value;
use shop_testkit::rest::Version;
use shop_testkit::tools;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The pinned schemathesis (libs/testkit/bootstrap.py).
const VERSION: &str = "4.32.5";
/// The checks run on every answer.
const CHECKS: &[&str] = &[
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
];
/// Cases per operation that takes input.
const MIN_CASES: usize = 100;
/// The slowest answer accepted (debug builds on a shared machine).
const MAX_RESPONSE_SECS: u32 = 5;
/// Bound of one schemathesis run.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// One run's outcome: what schemathesis printed and its reports.
struct Run {
    output: String,
    success: bool,
    junit: String,
    events: Vec<Value>,
}

/// Runs schemathesis on `document` against `base`, trusting `ca`,
/// authenticated by `token`, with `filter` (schemathesis's operation
/// filter arguments), in `dir` (its caches and reports stay there).
async fn schemathesis(
    dir: &Path,
    document: &Path,
    base: &str,
    ca: &Path,
    token: &str,
    filter: &[&str],
) -> Run {
    let junit = dir.join("junit.xml");
    let ndjson = dir.join("events.ndjson");
    let program = tools::find("schemathesis").unwrap();
    let mut command = tokio::process::Command::new(&program);
    command
        .arg("run")
        .arg(document)
        .args(["--url", base])
        .arg("--tls-verify")
        .arg(ca)
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", &CHECKS.join(",")])
        .args(["--max-response-time", &MAX_RESPONSE_SECS.to_string()])
        .args(["--phases", "coverage,fuzzing,stateful"])
        .args(["--max-examples", &MIN_CASES.to_string()])
        .args(["--seed", "20"])
        .args(["--generation-database", "none"])
        // One worker: two share the machine's two cores with the stack,
        // and CPython 3.11.7's parser is not safe across the threads
        // Hypothesis describes strategies from ("AST constructor
        // recursion depth mismatch").
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .args(["--report", "junit,ndjson"])
        .arg("--report-junit-path")
        .arg(&junit)
        .arg("--report-ndjson-path")
        .arg(&ndjson)
        .arg("--no-color")
        .args(filter)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran past {RUN_TIMEOUT:?} (and was killed)"))
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "== schemathesis {filter:?} ({:.1}s)\n{output}",
        started.elapsed().as_secs_f64()
    );
    let events = std::fs::read_to_string(&ndjson)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("an NDJSON event"))
        .collect();
    Run {
        output,
        success: out.status.success(),
        junit: std::fs::read_to_string(&junit).unwrap_or_default(),
        events,
    }
}

/// An operation of the document: `METHOD /path`, and whether it takes
/// any input (parameters or a body).
fn operations(document: &Value) -> BTreeMap<String, bool> {
    let mut found = BTreeMap::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let inputs = operation["parameters"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
                || operation.get("requestBody").is_some();
            found.insert(format!("{} {path}", method.to_uppercase()), inputs);
        }
    }
    found
}

/// What a run sent and got: cases per `METHOD /path` (every phase), each
/// answer's status with its body, and the slowest answer's seconds.
#[derive(Default)]
struct Tally {
    cases: BTreeMap<String, usize>,
    answers: Vec<(String, u16, Value)>,
    slowest: f64,
}

fn tally(events: &[Value]) -> Tally {
    let mut tally = Tally::default();
    for event in events {
        let Some(recorder) = event["ScenarioFinished"].get("recorder") else {
            continue;
        };
        let mut labels = BTreeMap::new();
        for (id, case) in recorder["cases"].as_object().into_iter().flatten() {
            let value = &case["value"];
            let label = format!(
                "{} {}",
                value["method"].as_str().unwrap_or("?"),
                value["path"].as_str().unwrap_or("?")
            );
            *tally.cases.entry(label.clone()).or_default() += 1;
            labels.insert(id.clone(), label);
        }
        for (id, interaction) in recorder["interactions"].as_object().into_iter().flatten() {
            let response = &interaction["response"];
            let Some(status) = response["status_code"].as_u64() else {
                continue;
            };
            let body = response["content"]["$base64"]
                .as_str()
                .and_then(|b| {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.decode(b).ok()
                })
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or(Value::Null);
            let label = interaction["request"]["method"].as_str().map_or_else(
                || labels.get(id).cloned().unwrap_or_default(),
                |m| {
                    format!(
                        "{m} {}",
                        interaction["request"]["uri"].as_str().unwrap_or("?")
                    )
                },
            );
            tally.answers.push((label, status as u16, body));
            let elapsed = response["elapsed"].as_f64().unwrap_or(0.0);
            tally.slowest = tally.slowest.max(elapsed);
        }
    }
    tally
}

/// Schemathesis's own verdict: exit status 0, and a JUnit report with
/// tests and no failure or error.
fn assert_passed(run: &Run) {
    assert!(
        run.output.contains(&format!("Schemathesis v{VERSION}")),
        "the pinned schemathesis {VERSION} ran:\n{}",
        run.output
    );
    assert!(run.success, "schemathesis found failures:\n{}", run.output);
    assert!(run.junit.contains("<testsuites"), "{}", run.junit);
    for clean in [r#"errors="0""#, r#"failures="0""#] {
        assert!(run.junit.contains(clean), "{clean} in\n{}", run.junit);
    }
}

/// No answer was 5xx or carried gRPC's INTERNAL.
fn assert_no_server_error(tally: &Tally) {
    assert!(!tally.answers.is_empty(), "the report records the answers");
    for (request, status, body) in &tally.answers {
        assert!(*status < 500, "{request}: {status} {body}");
        assert_ne!(body["code"], 13, "{request}: INTERNAL {body}");
    }
}

#[tokio::test]
async fn schemathesis_finds_no_failure_in_any_operation() {
    // Arrange: a stack whose LogIn limits let generated cases through, a
    // product, a user with an order (so id paths have something real),
    // and a second user for DeactivateAccount.
    let login = |limit: &str, value: &str| {
        (
            format!("SHOP_GATEWAY__LIMITS__LOGIN__{limit}"),
            value.to_string(),
        )
    };
    let shop = Shop::start(BTreeMap::from([(
        "gateway".to_string(),
        vec![
            login("PER_PEER__BURST", "100000"),
            login("PER_PEER__REFILL", "1ms"),
            login("PER_EMAIL__BURST", "100000"),
            login("PER_EMAIL__REFILL", "1ms"),
        ],
    )]))
    .await;
    let product = shop.product("fuzzed lamp", 1999, 1000).await;
    let user = shop.user("fuzz").await;
    let order = shop.order(&user, &product, "tok_approve").await;
    shop.settled(&user, &order.order_id).await;
    let leaving = shop.user("leaving").await;

    let gateway = shop.stack.service("gateway");
    let base = format!("https://{}", gateway.addr());
    let ca = shop_testkit::identities::Identities::dir_in(shop.stack.dir(), "operator")
        .join(shop_identity::files::CA);
    let rest = gateway.rest(Version::Http1).unwrap();
    let served = rest
        .send(Method::GET, "/openapi.json", &[], None)
        .await
        .unwrap();
    assert_eq!(served.status, 200, "{}", served.text);
    let work = tempfile::tempdir().unwrap();
    let document: PathBuf = work.path().join("openapi.json");
    std::fs::write(&document, &served.bytes).unwrap();
    let operations = operations(&served.json);
    assert!(operations.contains_key("DELETE /api/users/me"));

    // Act: every operation but DeactivateAccount as `user`; then
    // DeactivateAccount alone as `leaving`.
    let main_dir = work.path().join("main");
    let alone_dir = work.path().join("deactivate");
    std::fs::create_dir_all(&main_dir).unwrap();
    std::fs::create_dir_all(&alone_dir).unwrap();
    let started = Instant::now();
    let main = schemathesis(
        &main_dir,
        &document,
        &base,
        &ca,
        &user.token,
        &["--exclude-operation-id", "DeactivateAccount"],
    )
    .await;
    let alone = schemathesis(
        &alone_dir,
        &document,
        &base,
        &ca,
        &leaving.token,
        &["--include-operation-id", "DeactivateAccount"],
    )
    .await;
    eprintln!("both runs: {:.1}s", started.elapsed().as_secs_f64());

    // Assert: schemathesis's verdicts, then what its reports recorded.
    assert_passed(&main);
    assert_passed(&alone);
    let mut cases: BTreeMap<String, usize> = BTreeMap::new();
    for run in [&main, &alone] {
        let tally = tally(&run.events);
        assert_no_server_error(&tally);
        eprintln!(
            "{} answers, the slowest in {:.3}s",
            tally.answers.len(),
            tally.slowest
        );
        for (label, n) in tally.cases {
            *cases.entry(label).or_default() += n;
        }
    }
    for (operation, inputs) in &operations {
        let n = cases.get(operation).copied().unwrap_or(0);
        eprintln!("{n:>5} cases: {operation}");
        let least = if *inputs { MIN_CASES } else { 1 };
        assert!(
            n >= least,
            "{operation}: {n} cases, fewer than {least}: {cases:#?}"
        );
    }
    let probes: usize = cases
        .iter()
        .filter(|(label, _)| !operations.contains_key(*label))
        .map(|(_, n)| n)
        .sum();
    eprintln!("and {probes} probes of undeclared methods");

    let me = rest
        .send(
            Method::GET,
            "/api/users/me",
            &[("authorization", &format!("Bearer {}", leaving.token))],
            None,
        )
        .await
        .unwrap();
    assert_eq!(me.status, 401, "DeactivateAccount took effect: {}", me.text);

    for service in GATEWAY_STACK {
        let log = shop.stack.service(service).log();
        assert!(!log.contains("panicked"), "{service} panicked:\n{log}");
    }
}
