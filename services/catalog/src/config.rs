//! Settings of the catalog service.

shop_runtime::service_config! {
    /// Everything the catalog service reads at start.
    pub struct Config {
        database;
    }
    defaults = r#"
        [server]
        listen = "127.0.0.1:7102"
        # Who may call what (mTLS identities; see shop_mesh::authz): the
        # operator everything, the services only what they need.
        [server.mesh.authorization]
        "shop.catalog.v1.CatalogService" = ["operator"]
        "shop.catalog.v1.CatalogService/GetProduct" = ["gateway", "orders", "operator"]
        "shop.catalog.v1.CatalogService/BatchGetProducts" = ["gateway", "orders", "operator"]
        "shop.catalog.v1.CatalogService/ListProducts" = ["gateway", "orders", "operator"]
    "#;
}
