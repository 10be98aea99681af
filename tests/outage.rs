//! A database outage, for real: `kill -9` of Postgres under running
//! services. Health must turn NOT_SERVING, calls must fail fast with
//! UNAVAILABLE (not hang), and both must recover on their own once Postgres
//! is back, without restarting the services.

use shop_proto::shop::catalog::v1::ListProductsRequest;
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_proto::shop::users::v1::GetUserRequest;
use shop_proto::shop::users::v1::user_service_client::UserServiceClient;
use shop_testkit::{Stack, eventually};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;
use tonic_health::ServingStatus;

// Multi-threaded: the stack is stopped by a blocking Drop, and our client
// connections must still be able to answer the servers' GOAWAY meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_report_a_killed_database_and_recover_when_it_returns() {
    let mut stack = Stack::start(&["users", "catalog"]).await.unwrap();
    let pids_before: Vec<_> = stack.services().map(|s| s.pid()).collect();
    let mut users = UserServiceClient::new(stack.service("users").channel().await.unwrap());
    let mut catalog = CatalogServiceClient::new(stack.service("catalog").channel().await.unwrap());
    catalog
        .list_products(ListProductsRequest::default())
        .await
        .expect("works before the outage");

    stack.postgres.kill().unwrap();

    for name in ["users", "catalog"] {
        let service = stack.service(name);
        eventually(Duration::from_secs(10), || async {
            match service.health().await {
                Ok(ServingStatus::NotServing) => Ok(()),
                other => Err(format!("{name} health is {other:?}")),
            }
        })
        .await
        .unwrap();
        // Alive all the same: restarting it would not bring Postgres back.
        assert_eq!(
            service.health_of("liveness").await.unwrap(),
            ServingStatus::Serving,
            "{name} stays live"
        );
    }
    let started = Instant::now();
    let err = users
        .get_user(GetUserRequest {
            user_id: "01a2068d-3890-7218-bed6-af9372788acd".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = catalog
        .list_products(ListProductsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "calls fail fast instead of hanging ({:?})",
        started.elapsed()
    );

    stack.postgres.restart().await.unwrap();

    for name in ["users", "catalog"] {
        let service = stack.service(name);
        eventually(Duration::from_secs(20), || async {
            match service.health().await {
                Ok(ServingStatus::Serving) => Ok(()),
                other => Err(format!("{name} health is {other:?}")),
            }
        })
        .await
        .unwrap();
    }
    eventually(Duration::from_secs(10), || {
        let mut catalog = catalog.clone();
        async move { catalog.list_products(ListProductsRequest::default()).await }
    })
    .await
    .expect("calls succeed again");
    let pids_after: Vec<_> = stack.services().map(|s| s.pid()).collect();
    assert_eq!(pids_before, pids_after, "recovered without a restart");
}
