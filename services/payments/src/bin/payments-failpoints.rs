//! `payments` with fail points compiled in (feature `failpoints`), for
//! crash tests only: it reads them from `FAILPOINTS`
//! (`payments::charge::after-processor=return`). The `payments` binary
//! never has them.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _failpoints = fail::FailScenario::setup();
    shop_runtime::run("payments", payments::build).await
}
