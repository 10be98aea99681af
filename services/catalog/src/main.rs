//! `catalog`: serves `shop.catalog.v1.CatalogService`. Configuration: see
//! [`catalog::Config`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_runtime::run("catalog", catalog::build).await
}
