//! The products a benchmark's stack sells: made as an operator would, on
//! catalog and inventory directly, with stock that never runs out.

use anyhow::Context as _;
use shop_proto::shop::catalog::v1::CreateProductRequest;
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_proto::shop::common::v1::Money;
use shop_proto::shop::inventory::v1::SetStockRequest;
use shop_proto::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
use shop_testkit::stack::Stack;

/// `count` products of `stack` priced `price_minor` EUR, each with a
/// billion units in stock; their ids.
pub async fn stocked_products(
    stack: &Stack,
    count: usize,
    price_minor: i64,
) -> anyhow::Result<Vec<String>> {
    let mut catalog = CatalogServiceClient::new(stack.service("catalog").channel().await?);
    let mut inventory = InventoryServiceClient::new(stack.service("inventory").channel().await?);
    let mut products = Vec::with_capacity(count);
    for i in 0..count {
        let product = catalog
            .create_product(CreateProductRequest {
                sku: format!("BENCH-{i:04}-{}", uuid::Uuid::new_v4().simple()),
                name: format!("Bench product {i}"),
                description: String::new(),
                category: "bench".into(),
                price: Some(Money {
                    amount_minor: price_minor,
                    currency_code: "EUR".into(),
                }),
            })
            .await?
            .into_inner()
            .product
            .context("no product")?;
        inventory
            .set_stock(SetStockRequest {
                product_id: product.product_id.clone(),
                available: 1_000_000_000,
            })
            .await?;
        products.push(product.product_id);
    }
    Ok(products)
}
