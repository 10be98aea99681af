//! `notifications`: serves `shop.notifications.v1.NotificationService` and
//! turns order and user events into notifications. Configuration: see
//! [`notifications::Config`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_runtime::run("notifications", notifications::build).await
}
