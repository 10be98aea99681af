//! Pact over HTTP/JSON, without plugins: the REST interactions a client
//! relies on, as the consumer test of the Python client wrote them
//! (`tests/clients/python/pact_consumer.py`, pact-python against the Pact
//! FFI's mock server), verified against the live gateway by the Pact CLI's
//! verifier (`pact verifier`, from pact-python-cli) over TLS, trusting the
//! stack's CA.
//!
//! Provider states are set up here. The verifier POSTs each interaction's
//! states (`{"state", "params", "action"}`) to a small HTTP endpoint this
//! test serves on 127.0.0.1 while the verifier runs; it makes products as
//! the operator (catalog and inventory directly, over mTLS) and users and
//! orders as end users (through the gateway), and answers the values the
//! interaction takes from the state: a product's id, an email, a bearer
//! token, an order's id. The verifier puts them into the requests
//! (`generate.provider_state("${productId}")` in the consumer test).

mod common;

use common::gateway::Shop;
use serde_json::{Value, json};
use shop_proto::shop::orders::v1::OrderStatus;
use shop_testkit::tools;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// The file the consumer test writes: `<consumer>-<provider>.json`.
const PACT_FILE: &str = "shop-rest-client-shop-gateway.json";
const PROVIDER: &str = "shop-gateway";
/// How many interactions the consumer test describes.
const INTERACTIONS: usize = 11;
/// A state set-up request is a small JSON document.
const MAX_STATE_REQUEST: usize = 64 * 1024;

/// Writes the pact into `dir`: the consumer test, run as a user runs it.
async fn write_pact(dir: &Path) -> PathBuf {
    let root = tools::repo_root();
    let python = root.join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `python3 libs/testkit/bootstrap.py`",
        python.display()
    );
    let run = tokio::process::Command::new(&python)
        .arg("tests/clients/python/pact_consumer.py")
        .arg("--out")
        .arg(dir)
        .current_dir(&root)
        .env("PACT_DO_NOT_TRACK", "true")
        .kill_on_drop(true)
        .output();
    let out = timeout(Duration::from_secs(60), run)
        .await
        .expect("the consumer test ends within 60 s")
        .unwrap();
    eprintln!(
        "== pact_consumer.py\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the consumer test failed");
    dir.join(PACT_FILE)
}

/// The verifier's run against the gateway for the pact in `file` (with
/// `extra` arguments), serving the provider states while it runs: its exit
/// and output, and its JSON report.
async fn verify(shop: &Shop, file: &Path, extra: &[&str]) -> (Output, Value) {
    let states = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let states_url = format!("http://{}/", states.local_addr().unwrap());
    let gateway = shop.stack.service("gateway").addr();
    let ca = shop_testkit::identities::Identities::dir_in(shop.stack.dir(), "operator")
        .join(shop_identity::files::CA);
    let report = file.with_extension(format!("report-{}.json", uuid::Uuid::new_v4().simple()));
    let run = tokio::process::Command::new(tools::repo_root().join(".tools/bin/pact"))
        .arg("verifier")
        .arg("--file")
        .arg(file)
        .args(["--provider-name", PROVIDER, "--transport", "https"])
        .args(["--hostname", &gateway.ip().to_string()])
        .args(["--port", &gateway.port().to_string()])
        .args(["--state-change-url", &states_url])
        .args(["--request-timeout", "20000", "--no-colour"])
        .arg("--json")
        .arg(&report)
        .args(extra)
        // The verifier's TLS (OpenSSL) trusts the certificates in this file.
        .env("SSL_CERT_FILE", &ca)
        .env_remove("SSL_CERT_DIR")
        // Without it the verifier reports usage to a remote host.
        .env("PACT_DO_NOT_TRACK", "true")
        .kill_on_drop(true)
        .output();
    let out = tokio::select! {
        out = timeout(Duration::from_secs(120), run) => {
            out.expect("the verifier ends within 120 s").unwrap()
        }
        never = serve_states(&states, shop) => match never {},
    };
    eprintln!(
        "== pact verifier {}\n{}{}",
        extra.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = std::fs::read(&report)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null);
    (out, report)
}

/// Answers the verifier's state set-up calls, one connection at a time (it
/// makes one call at a time), until the verifier is done.
async fn serve_states(listener: &TcpListener, shop: &Shop) -> std::convert::Infallible {
    loop {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (status, body) = match read_request(&mut stream).await {
            Ok(request) => match set_up(shop, &request).await {
                Ok(values) => (200, values),
                Err(e) => (400, json!({ "error": e })),
            },
            Err(e) => (400, json!({ "error": e })),
        };
        let body = body.to_string();
        let reason = if status == 200 { "OK" } else { "Bad Request" };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        // A verifier that went away sees no answer; nothing else to do.
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

/// The JSON body of one HTTP/1.1 request with a `content-length` (what the
/// verifier sends), read within 10 s.
async fn read_request(stream: &mut TcpStream) -> Result<Value, String> {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head_len, body_len) = loop {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the connection closed before the request ended".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_STATE_REQUEST {
                return Err("request too large".to_string());
            }
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                if head.contains("transfer-encoding:") {
                    return Err("a chunked request; expected a content-length".to_string());
                }
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(Ok(0), |v| v.trim().parse::<usize>())
                    .map_err(|e| e.to_string())?;
                break (end + 4, len);
            }
        };
        if head_len + body_len > MAX_STATE_REQUEST {
            return Err("request too large".to_string());
        }
        while buf.len() < head_len + body_len {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the connection closed inside the body".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = &buf[head_len..head_len + body_len];
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))
    };
    timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| "no whole request within 10 s".to_string())?
}

/// Sets up the provider state the verifier names, and answers the values
/// its interaction uses. No state (`""`) and teardown need nothing: every
/// state is made of new rows that no other interaction sees.
async fn set_up(shop: &Shop, request: &Value) -> Result<Value, String> {
    let state = request["state"].as_str().unwrap_or_default();
    if request["action"].as_str().unwrap_or("setup") != "setup" || state.is_empty() {
        return Ok(json!({}));
    }
    Ok(match state {
        "an email nobody has signed up with" => json!({
            "email": format!("pact-{}@example.com", uuid::Uuid::new_v4().simple())
        }),
        // Signed up through the gateway with the password the consumer test
        // logs in with (`correct horse battery`, as `end_user` sets it).
        "an account with a known password" => json!({ "email": shop.user("pact").await.email }),
        "a product in stock" => json!({
            "productId": shop.product("Pact desk lamp", 1999, 50).await
        }),
        "a logged-in user" => json!({ "token": shop.user("pact").await.token }),
        "a logged-in user with a confirmed order" => {
            let user = shop.user("pact").await;
            let product = shop.product("Pact desk lamp", 1999, 50).await;
            let placed = shop.order(&user, &product, "tok_approve").await;
            let order = shop.settled(&user, &placed.order_id).await;
            if order.status() != OrderStatus::Confirmed {
                return Err(format!("the order ended {:?}", order.status()));
            }
            json!({ "token": user.token, "orderId": order.order_id })
        }
        other => return Err(format!("unknown provider state {other:?}")),
    })
}

/// The report's interaction results: description -> result.
fn interaction_results(report: &Value) -> BTreeMap<String, String> {
    report["interactionResults"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["description"].as_str().unwrap_or_default().to_string(),
                r["result"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_gateway_honours_the_rest_clients_pact() {
    let started = Instant::now();
    let target = tools::repo_root().join("target");
    std::fs::create_dir_all(&target).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("pact-")
        .tempdir_in(&target)
        .unwrap();

    // The consumer's side: the pact, from the Python client's test.
    let file = write_pact(dir.path()).await;
    let pact: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(pact["provider"]["name"], PROVIDER);
    assert_eq!(
        pact["interactions"].as_array().map(Vec::len),
        Some(INTERACTIONS)
    );

    // The provider's side: every interaction against the live gateway.
    let shop = Shop::start(BTreeMap::new()).await;
    let (out, report) = verify(&shop, &file, &[]).await;
    assert!(out.status.success(), "the pact verification failed");
    let results = interaction_results(&report);
    assert_eq!(results.len(), INTERACTIONS, "{report}");
    assert!(
        results.values().all(|r| r == "OK"),
        "every interaction verified: {results:?}"
    );

    // The verifier compares with what the gateway answers: the same pact
    // expecting another status for an unknown order fails, on that
    // interaction.
    let mut changed = pact.clone();
    let unknown = changed["interactions"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|i| i["description"] == "an order that does not exist")
        .expect("the pact has the unknown order");
    unknown["response"]["status"] = json!(410);
    let changed_file = dir.path().join("changed").join(PACT_FILE);
    std::fs::create_dir_all(changed_file.parent().unwrap()).unwrap();
    std::fs::write(&changed_file, changed.to_string()).unwrap();
    let (out, report) = verify(
        &shop,
        &changed_file,
        &["--filter-description", "^an order that does not exist$"],
    )
    .await;
    assert!(!out.status.success(), "a wrong status must fail");
    let results = interaction_results(&report);
    assert_eq!(
        results.keys().collect::<Vec<_>>(),
        ["an order that does not exist"],
        "{report}"
    );
    let mismatch = &report["errors"][0]["mismatch"]["mismatches"][0];
    assert_eq!(mismatch["type"], "StatusMismatch", "{report}");
    assert_eq!(
        (&mismatch["expected"], &mismatch["actual"]),
        (&json!(410), &json!(404)),
        "{report}"
    );

    assert!(
        started.elapsed() < Duration::from_secs(180),
        "took {:?}",
        started.elapsed()
    );
}
