//! The generated Python and TypeScript clients (`just clients`), run as a
//! user would run them, against a fresh stack through the gateway: the
//! shopping program to a settled order, and the failure cases (no token,
//! a forged token, a bad request whose field violations the client
//! decodes).

mod common;

use common::gateway::Shop;
use shop_testkit::tools;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

/// How each language's programs are run, and the file `just clients`
/// builds that they need.
struct Language {
    name: &'static str,
    program: Vec<String>,
    built: PathBuf,
    shop: &'static str,
    failures: &'static str,
}

fn python() -> Language {
    let root = tools::repo_root();
    Language {
        name: "python",
        program: vec![root.join(".tools/venv/bin/python").display().to_string()],
        built: root.join("target/clients/python/shop/gateway/v1/gateway_pb2_grpc.py"),
        shop: "tests/clients/python/shop_client.py",
        failures: "tests/clients/python/failures.py",
    }
}

fn typescript() -> Language {
    let root = tools::repo_root();
    Language {
        name: "typescript",
        program: vec!["node".into()],
        built: root.join("tests/clients/ts/dist/src/client.js"),
        shop: "tests/clients/ts/dist/src/client.js",
        failures: "tests/clients/ts/dist/src/failures.js",
    }
}

fn run_with(
    language: &Language,
    script: &str,
    target: &str,
    ca: &std::path::Path,
    extra: &[&str],
) -> Output {
    assert!(
        language.built.exists(),
        "{} is missing: run `just clients` first",
        language.built.display()
    );
    let (program, args) = language.program.split_first().unwrap();
    let out = Command::new(program)
        .args(args)
        .arg(script)
        .args(["--target", target])
        .arg("--ca")
        .arg(ca)
        .args(extra)
        .current_dir(tools::repo_root())
        .output()
        .unwrap();
    eprintln!(
        "== {} {script}\n{}{}",
        language.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn the_programs_work(language: Language) {
    the_programs_work_over(language, &[]).await;
}

async fn the_programs_work_over(language: Language, extra: &[&str]) {
    let shop = Shop::start(BTreeMap::new()).await;
    shop.product("A book to buy", 1999, 5).await;
    shop.product("Something out of stock", 999, 0).await;
    let target = shop.stack.service("gateway").addr().to_string();
    // The gateway's port is TLS; the programs trust the stack's CA and
    // present no certificate, as an end user's would.
    let ca = shop_testkit::identities::Identities::dir_in(shop.stack.dir(), "operator")
        .join(shop_identity::files::CA);

    let out = run_with(&language, language.shop, &target, &ca, extra);
    assert!(out.status.success(), "{} shop client failed", language.name);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("order ") && last.ends_with(" CONFIRMED"),
        "{last}"
    );
    assert!(stdout.contains("available: 5"), "availability is shown");
    assert!(stdout.contains("missing parts: none"), "{stdout}");

    let out = run_with(&language, language.failures, &target, &ca, extra);
    assert!(
        out.status.success(),
        "{} failure cases failed",
        language.name
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "ok no_token",
        "ok forged_token",
        "ok bad_request",
        "violation email: must contain an @",
        "violation password: must be at least 8 characters",
    ] {
        assert!(stdout.contains(line), "{line} in\n{stdout}");
    }
}

#[tokio::test]
async fn the_python_client_shops_and_decodes_errors() {
    the_programs_work(python()).await;
}

#[tokio::test]
async fn the_typescript_client_shops_and_decodes_errors() {
    the_programs_work(typescript()).await;
}

/// The same programs over gRPC-Web (`@connectrpc/connect-web`, fetch over
/// HTTP/1.1, as a browser sends it) on the gateway's same port: the same
/// order, the same decoded errors and field violations.
#[tokio::test]
async fn the_typescript_client_over_grpc_web_shops_and_decodes_errors() {
    the_programs_work_over(typescript(), &["--transport", "grpc-web"]).await;
}
