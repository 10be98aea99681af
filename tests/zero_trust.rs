//! Zero trust inside, attacked with real processes: every hop is mutual
//! TLS between workload identities (SPIFFE IDs in certificates of the
//! stack's CA), and every method is authorized by caller. Each attack is a
//! separate assertion; the NATS and Postgres ones are in
//! `libs/events/tests/permissions.rs` and `libs/testkit/tests/postgres_roles.rs`.

use shop_identity::mint::{Authority, Leaf};
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_proto::shop::catalog::v1::{CreateProductRequest, GetProductRequest};
use shop_proto::shop::inventory::v1::SetStockRequest;
use shop_proto::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
use shop_proto::shop::mesh::v1::mesh_admin_service_client::MeshAdminServiceClient;
use shop_proto::shop::mesh::v1::{GetStatsRequest, ListEndpointsRequest};
use shop_proto::shop::orders::v1::order_service_client::OrderServiceClient;
use shop_proto::shop::orders::v1::{NewOrderLine, PlaceOrderRequest};
use shop_testkit::eventually;
use shop_testkit::identities::Identities;
use shop_testkit::stack::{Stack, StackOptions};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

async fn health(channel: Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(drop)
}

fn new_product() -> CreateProductRequest {
    CreateProductRequest {
        sku: format!("ZT-{}", uuid::Uuid::new_v4().simple()),
        name: "Forged".into(),
        description: String::new(),
        category: "test".into(),
        price: Some(shop_proto::shop::common::v1::Money {
            amount_minor: 1,
            currency_code: "EUR".into(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_on_the_internal_ports_is_refused() {
    let stack = Stack::start(&["catalog", "inventory", "orders"])
        .await
        .unwrap();
    let catalog = stack.service("catalog");
    let inventory = stack.service("inventory");
    let scratch = tempfile::tempdir().unwrap();

    // 1. Plaintext to an internal port: refused at the handshake.
    let plain = Endpoint::from_shared(format!("http://{}", catalog.addr()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => health(channel).await.is_err(),
    };
    assert!(refused, "plaintext gRPC reached an mTLS port");

    // 2. A client certificate of a foreign CA (naming a real workload, and
    //    trusting our CA so that it would accept the server): refused.
    let foreign = scratch.path().join("foreign");
    Authority::generate("shop.local")
        .unwrap()
        .write(
            &foreign,
            &Identities::id("operator"),
            &Leaf::local(Duration::from_secs(3600)),
        )
        .unwrap();
    std::fs::write(foreign.join("ca.crt"), stack.identities().ca_pem()).unwrap();
    let attempt = match catalog.channel_as(&foreign).await {
        Err(_) => Err(()),
        Ok(channel) => health(channel).await.map_err(drop),
    };
    assert!(attempt.is_err(), "a foreign CA's certificate was accepted");

    // 3. An expired certificate of our own CA: refused.
    let expired = scratch.path().join("expired");
    let now = time::OffsetDateTime::now_utc();
    stack
        .identities()
        .mint_into(
            &expired,
            &Identities::id("operator"),
            &Leaf {
                not_before: now - time::Duration::days(2),
                not_after: now - time::Duration::days(1),
                ..Leaf::local(Duration::ZERO)
            },
        )
        .unwrap();
    let attempt = match catalog.channel_as(&expired).await {
        Err(_) => Err(()),
        Ok(channel) => health(channel).await.map_err(drop),
    };
    assert!(attempt.is_err(), "an expired certificate was accepted");

    // 4. A valid certificate with another service's identity: orders may
    //    read the catalog, and nothing else it does not need.
    let orders_identity = Identities::dir_in(stack.dir(), "orders");
    let as_orders = catalog.channel_as(&orders_identity).await.unwrap();
    let read = CatalogServiceClient::new(as_orders.clone())
        .get_product(GetProductRequest {
            product_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(read.code(), Code::NotFound, "orders may read: {read:?}");
    let write = CatalogServiceClient::new(as_orders.clone())
        .create_product(new_product())
        .await
        .unwrap_err();
    assert_eq!(write.code(), Code::PermissionDenied, "{write:?}");
    assert!(
        write
            .message()
            .contains("sa/orders may not call /shop.catalog.v1.CatalogService/CreateProduct"),
        "{write:?}"
    );
    let stock = InventoryServiceClient::new(inventory.channel_as(&orders_identity).await.unwrap())
        .set_stock(SetStockRequest {
            product_id: uuid::Uuid::new_v4().to_string(),
            available: 1_000_000,
        })
        .await
        .unwrap_err();
    assert_eq!(stock.code(), Code::PermissionDenied, "{stock:?}");
    let admin = MeshAdminServiceClient::new(as_orders)
        .get_stats(GetStatsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        admin.code(),
        Code::PermissionDenied,
        "MeshAdmin is the operator's: {admin:?}"
    );

    // The operator may; and MeshAdmin counts each refusal by method and
    // caller.
    let stats = MeshAdminServiceClient::new(catalog.channel().await.unwrap())
        .get_stats(GetStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let server = stats.server.unwrap();
    assert_eq!(server.permission_denied, 2, "{server:?}");
    assert_eq!(server.unauthenticated, 0, "{server:?}");
    let orders_id = Identities::id("orders").to_string();
    for method in [
        "/shop.catalog.v1.CatalogService/CreateProduct",
        "/shop.mesh.v1.MeshAdminService/GetStats",
    ] {
        assert!(
            stats.denials.iter().any(|d| d.method == method
                && d.caller == orders_id
                && d.code == Code::PermissionDenied as i32
                && d.count == 1),
            "{method}: {:?}",
            stats.denials
        );
    }
    CatalogServiceClient::new(catalog.channel().await.unwrap())
        .create_product(new_product())
        .await
        .expect("the operator may create products");

    // 5. The plaintext health port answers health and nothing else.
    let health_port = Endpoint::from_shared(format!("http://{}", catalog.health_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    health(health_port.clone()).await.expect("health is served");
    let status = CatalogServiceClient::new(health_port.clone())
        .create_product(new_product())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let status = MeshAdminServiceClient::new(health_port.clone())
        .get_stats(GetStatsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    for path in [
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ] {
        assert_eq!(
            code_at(health_port.clone(), path).await,
            Code::Unimplemented,
            "{path}"
        );
    }
}

/// The code a call to `path` gets on `channel` (with an empty message: any
/// server that serves the path answers something other than
/// UNIMPLEMENTED).
async fn code_at(channel: Channel, path: &'static str) -> Code {
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let answer = client
        .unary::<_, GetStatsRequest, _>(
            tonic::Request::new(GetStatsRequest::default()),
            http::uri::PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    match answer {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_refuses_an_upstream_with_another_identity() {
    // orders' "catalog" endpoint is really inventory: a valid certificate
    // of the same CA, naming the wrong workload. Inventory's port is fixed
    // so that orders can be pointed at it before it starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let impostor = format!("[\"https://127.0.0.1:{port}\"]");
    let stack = Stack::start_with(StackOptions {
        services: vec!["inventory".into(), "catalog".into(), "orders".into()],
        listen: BTreeMap::from([("inventory".to_string(), ([127, 0, 0, 1], port).into())]),
        service_env: BTreeMap::from([(
            "orders".to_string(),
            vec![(
                "SHOP_ORDERS__UPSTREAMS__CATALOG__ENDPOINTS".to_string(),
                impostor,
            )],
        )]),
        ..StackOptions::default()
    })
    .await
    .unwrap();

    let orders = OrderServiceClient::new(stack.service("orders").channel().await.unwrap());
    let place = || {
        let mut orders = orders.clone();
        async move {
            orders
                .place_order(PlaceOrderRequest {
                    user_id: uuid::Uuid::new_v4().to_string(),
                    lines: vec![NewOrderLine {
                        product_id: uuid::Uuid::new_v4().to_string(),
                        quantity: 1,
                    }],
                    payment_token: "tok_approve".into(),
                    idempotency_key: uuid::Uuid::new_v4().to_string(),
                })
                .await
        }
    };
    let status = place().await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "{status:?}\n{}",
        stack.service("orders").log()
    );

    // MeshAdmin says why, by kind: the endpoint's certificate names
    // inventory. (It is not ejected: the only endpoint of its upstream,
    // and max_ejected_percent keeps one in.)
    let admin = MeshAdminServiceClient::new(stack.service("orders").channel().await.unwrap());
    let detail = eventually(Duration::from_secs(20), || {
        let mut admin = admin.clone();
        let place = place();
        async move {
            let endpoints = admin
                .list_endpoints(ListEndpointsRequest {
                    upstream: "catalog".into(),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .endpoints;
            match endpoints.first() {
                Some(e) if e.last_transport_error_kind == "peer_identity_mismatch" => {
                    Ok(e.last_transport_error.clone())
                }
                _ => {
                    // Keep calling, so the mesh connects again.
                    let _ = place.await;
                    Err(format!("no identity mismatch seen yet: {endpoints:?}"))
                }
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.service("orders").log()));
    assert!(
        detail.contains("spiffe://shop.local/ns/shop/sa/catalog"),
        "{detail}"
    );
    assert!(
        detail.contains("spiffe://shop.local/ns/shop/sa/inventory"),
        "{detail}"
    );
}
