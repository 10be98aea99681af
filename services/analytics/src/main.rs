//! `analytics`: serves `shop.analytics.v1.AnalyticsService` and projects
//! every event stream. Configuration: see [`analytics::Config`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_runtime::run("analytics", analytics::build).await
}
