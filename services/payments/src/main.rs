//! `payments`: serves `shop.payments.v1.PaymentService` and charges orders
//! from inventory's events. Configuration: see [`payments::Config`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_runtime::run("payments", payments::build).await
}
