//! Authoritative prices: the catalog service's BatchGetProducts.

use shop_mesh::client::MeshChannel;
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_proto::shop::catalog::v1::{BatchGetProductsRequest, Product};
use shop_runtime::ServiceError;

#[derive(Clone)]
pub(crate) struct Catalog {
    client: CatalogServiceClient<MeshChannel>,
}

impl Catalog {
    /// Calls go through `channel`: the mesh client of upstream `catalog`
    /// (deadline, retries, balancing over every replica, ejection).
    pub(crate) fn new(channel: MeshChannel) -> Self {
        Self {
            client: CatalogServiceClient::new(channel),
        }
    }

    /// The products the catalog knows among `ids` (unknown ones are absent).
    pub(crate) async fn products(&self, ids: Vec<String>) -> Result<Vec<Product>, ServiceError> {
        let response = self
            .client
            .clone()
            .batch_get_products(BatchGetProductsRequest { product_ids: ids })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::DeadlineExceeded => {
                    ServiceError::DeadlineExceeded(format!("catalog: {}", status.message()))
                }
                tonic::Code::Unavailable
                | tonic::Code::ResourceExhausted
                | tonic::Code::Cancelled => {
                    ServiceError::Unavailable(anyhow::anyhow!("catalog: {}", status.message()))
                }
                _ => {
                    ServiceError::Internal(anyhow::anyhow!("catalog BatchGetProducts: {status:?}"))
                }
            })?
            .into_inner();
        Ok(response.products)
    }
}
