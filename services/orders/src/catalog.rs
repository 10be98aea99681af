//! Authoritative prices: the catalog service's BatchGetProducts.

use crate::config::CatalogSettings;
use anyhow::Context as _;
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_proto::shop::catalog::v1::{BatchGetProductsRequest, Product};
use shop_runtime::ServiceError;
use tonic::transport::{Channel, Endpoint};

#[derive(Clone)]
pub(crate) struct Catalog {
    client: CatalogServiceClient<Channel>,
}

impl Catalog {
    pub(crate) fn new(settings: &CatalogSettings) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(settings.endpoint.clone())
            .context("catalog.endpoint is not a URI")?
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .connect_lazy();
        Ok(Self {
            client: CatalogServiceClient::new(channel),
        })
    }

    /// The products the catalog knows among `ids` (unknown ones are absent).
    pub(crate) async fn products(&self, ids: Vec<String>) -> Result<Vec<Product>, ServiceError> {
        let response = self
            .client
            .clone()
            .batch_get_products(BatchGetProductsRequest { product_ids: ids })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
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
