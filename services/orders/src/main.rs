//! `orders`: serves `shop.orders.v1.OrderService` and runs the order saga's
//! consumers. Configuration: see [`orders::Config`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_runtime::run("orders", orders::build).await
}
