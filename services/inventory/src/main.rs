//! `inventory`: serves `shop.inventory.v1.InventoryService` and reserves,
//! commits and releases stock as the order saga's events arrive.
//! Configuration: see [`inventory::Config`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_runtime::run("inventory", inventory::build).await
}
