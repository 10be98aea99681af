//! `gateway`: serves `shop.gateway.v1.ShopGatewayService`, the shop's one
//! public entry point. Configuration: see [`gateway::Config`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_runtime::run("gateway", gateway::build).await
}
