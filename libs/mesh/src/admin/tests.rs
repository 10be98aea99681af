use super::descriptors::*;
use super::*;
use crate::policy::FaultPolicy;
use crate::policy::{GrpcCode, HedgePolicy, MethodPolicy};
use crate::stats::{self, EjectionReason, EndpointState};
use pb::mesh_admin_service_server::MeshAdminService as _;
use shop_proto::shop::mesh::v1 as pb;
use std::time::Duration;
use tonic::Request;

const GET: &str = "/shop.catalog.v1.CatalogService/GetProduct";
const CREATE: &str = "/shop.catalog.v1.CatalogService/CreateProduct";

fn catalog_policy() -> UpstreamPolicy {
    UpstreamPolicy {
        keepalive: crate::policy::KeepalivePolicy::default(),
        throttle: Default::default(),
        adaptive_concurrency: Default::default(),
        identity: None,
        endpoints: vec!["http://10.0.0.1:7000".into(), "http://10.0.0.2:7000".into()],
        dns: None,
        dns_refresh: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(500),
        ewma_decay: Duration::from_secs(10),
        retry: Default::default(),
        hedge: Some(HedgePolicy {
            delay: Duration::from_millis(50),
            max_hedges: 1,
        }),
        outlier: Default::default(),
        subsets: vec![],
        fault: FaultPolicy::default(),
        methods: [(
            "ListProducts".to_string(),
            MethodPolicy {
                fault: Some(FaultPolicy {
                    abort_percent: 5.0,
                    abort_code: GrpcCode(tonic::Code::Unavailable),
                    ..FaultPolicy::default()
                }),
                ..MethodPolicy::default()
            },
        )]
        .into(),
    }
}

/// An admin with upstream `catalog`: 10.0.0.1 healthy, 10.0.0.2
/// ejected for consecutive failures since `since`.
fn admin(since: SystemTime) -> (MeshAdmin, watch::Sender<Arc<UpstreamPolicy>>) {
    let stats = Arc::new(MeshStats::default());
    let catalog = stats.upstream("catalog");
    catalog.endpoint("http://10.0.0.1:7000");
    catalog
        .endpoint("http://10.0.0.2:7000")
        .set_state(EndpointState::Ejected {
            since,
            until: since + Duration::from_secs(600),
            reason: EjectionReason::ConsecutiveFailures,
            count: 2,
        });
    stats::incr(&catalog.counters.ejections);
    let (_server_tx, server_rx) = watch::channel(Arc::new(ServerPolicy::default()));
    let admin = MeshAdmin::new(stats, server_rx);
    let (tx, rx) = watch::channel(Arc::new(catalog_policy()));
    admin.register_upstream("catalog", rx);
    (admin, tx)
}

#[tokio::test]
async fn an_ejected_endpoint_shows_as_ejected_with_its_reason_and_since() {
    let since = SystemTime::now() - Duration::from_secs(3);
    let (admin, _tx) = admin(since);

    let rsp = admin
        .list_endpoints(Request::new(pb::ListEndpointsRequest {
            upstream: "catalog".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(rsp.endpoints.len(), 2);
    assert!(rsp.next_page_token.is_empty());
    let healthy = &rsp.endpoints[0];
    assert_eq!(healthy.address, "http://10.0.0.1:7000");
    assert_eq!(healthy.state(), pb::EndpointState::Healthy);
    assert_eq!(healthy.ejection_reason(), pb::EjectionReason::Unspecified);
    let ejected = &rsp.endpoints[1];
    assert_eq!(ejected.address, "http://10.0.0.2:7000");
    assert_eq!(ejected.state(), pb::EndpointState::Ejected);
    assert_eq!(
        ejected.ejection_reason(),
        pb::EjectionReason::ConsecutiveFailures
    );
    assert_eq!(ejected.state_change_time, Some(since.into()));
    assert_eq!(
        ejected.ejection_end_time,
        Some((since + Duration::from_secs(600)).into())
    );
    assert_eq!(ejected.ejection_count, 2);
    assert_eq!(
        ejected.ejection_detail,
        "5 consecutive failures (ejection 2)"
    );

    let upstreams = admin
        .list_upstreams(Request::new(Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(upstreams.upstreams.len(), 1);
    let catalog = &upstreams.upstreams[0];
    assert_eq!(
        (
            catalog.endpoint_count,
            catalog.healthy_endpoint_count,
            catalog.ejected_endpoint_count
        ),
        (2, 1, 1)
    );
    assert_eq!(catalog.counters.as_ref().unwrap().ejections, 1);
    assert_eq!(catalog.retry_budget.as_ref().unwrap().ratio, 0.2);
}

#[tokio::test]
async fn an_ejection_whose_time_has_passed_shows_as_healthy() {
    let (admin, _tx) = admin(SystemTime::now() - Duration::from_secs(3600));
    let rsp = admin
        .list_endpoints(Request::new(Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        rsp.endpoints
            .iter()
            .all(|e| e.state() == pb::EndpointState::Healthy)
    );
}

#[tokio::test]
async fn get_policy_of_an_unknown_upstream_is_not_found() {
    let (admin, _tx) = admin(SystemTime::now());
    let err = admin
        .get_policy(Request::new(pb::GetPolicyRequest {
            upstream: "nope".into(),
            method: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let err = admin
        .get_policy(Request::new(pb::GetPolicyRequest {
            upstream: "catalog".into(),
            method: "GetProduct".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn get_policy_lists_every_method_of_the_upstream_with_its_effective_policy() {
    let (admin, tx) = admin(SystemTime::now());
    let get = |upstream: &str, method: &str| {
        admin.get_policy(Request::new(pb::GetPolicyRequest {
            upstream: upstream.into(),
            method: method.into(),
        }))
    };

    let rsp = get("catalog", "").await.unwrap().into_inner();
    assert_eq!(rsp.generation, 1);
    let catalog = &rsp.upstreams[0];
    let paths: Vec<&str> = catalog.methods.iter().map(|m| m.method.as_str()).collect();
    for m in [
        "GetProduct",
        "CreateProduct",
        "UpdateProduct",
        "ListProducts",
        "BatchGetProducts",
    ] {
        assert!(
            paths.contains(&format!("/shop.catalog.v1.CatalogService/{m}").as_str()),
            "{m} missing from {paths:?}"
        );
    }
    let by_path = |p: &str| {
        catalog
            .methods
            .iter()
            .find(|m| m.method == p)
            .unwrap()
            .clone()
    };
    let read = by_path(GET);
    assert_eq!(
        read.idempotency_level(),
        pb::IdempotencyLevel::NoSideEffects
    );
    assert!(read.retry_enabled && read.hedge_enabled);
    let create = by_path(CREATE);
    assert_eq!(create.idempotency_level(), pb::IdempotencyLevel::Unknown);
    assert!(!create.retry_enabled && !create.hedge_enabled);
    assert_eq!(
        create.retry.as_ref().unwrap().max_attempts,
        3,
        "configured, not enabled"
    );
    let list = by_path("/shop.catalog.v1.CatalogService/ListProducts");
    assert_eq!(list.fault.as_ref().unwrap().abort_percent, 5.0);
    assert!(read.fault.is_none());

    let one = get("catalog", GET).await.unwrap().into_inner();
    assert_eq!(one.upstreams[0].methods.len(), 1);

    let mut changed = catalog_policy();
    changed.hedge = None;
    tx.send(Arc::new(changed)).unwrap();
    let after = get("catalog", GET).await.unwrap().into_inner();
    assert!(
        !after.upstreams[0].methods[0].hedge_enabled,
        "the live policy is shown"
    );

    let err = get("catalog", "/shop.catalog.v1.CatalogService/Nope")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn endpoints_page_in_order_and_page_sizes_are_checked() {
    let (admin, _tx) = admin(SystemTime::now());
    let list = |page_size: i32, page_token: String| {
        admin.list_endpoints(Request::new(pb::ListEndpointsRequest {
            page_size,
            page_token,
            upstream: String::new(),
        }))
    };
    let first = list(1, String::new()).await.unwrap().into_inner();
    assert_eq!(first.endpoints[0].address, "http://10.0.0.1:7000");
    assert!(!first.next_page_token.is_empty());
    let second = list(1, first.next_page_token).await.unwrap().into_inner();
    assert_eq!(second.endpoints[0].address, "http://10.0.0.2:7000");
    assert!(second.next_page_token.is_empty());

    for bad in [-1, 101] {
        let err = list(bad, String::new()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
    let err = list(0, "zz".into()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = admin
        .list_endpoints(Request::new(pb::ListEndpointsRequest {
            upstream: "nope".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn stats_report_server_and_upstream_counters() {
    let (admin, _tx) = admin(SystemTime::now());
    stats::incr(&admin.stats.server.shed);
    let rsp = admin
        .get_stats(Request::new(pb::GetStatsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rsp.server.unwrap().shed, 1);
    assert_eq!(rsp.upstreams[0].upstream, "catalog");
    assert_eq!(rsp.upstreams[0].counters.as_ref().unwrap().ejections, 1);
    assert!(rsp.start_time.is_some());
}

#[test]
fn the_descriptor_set_yields_every_method_of_every_service() {
    let d = descriptors();
    assert_eq!(
        d.services["shop.mesh.v1.MeshAdminService"],
        [
            "/shop.mesh.v1.MeshAdminService/GetPolicy",
            "/shop.mesh.v1.MeshAdminService/ListUpstreams",
            "/shop.mesh.v1.MeshAdminService/ListEndpoints",
            "/shop.mesh.v1.MeshAdminService/GetStats",
        ]
    );
    assert_eq!(d.packages["catalog"], ["shop.catalog.v1.CatalogService"]);
    for path in d.services.values().flatten() {
        assert!(
            shop_proto::idempotency_level(path).is_some(),
            "{path} is not a method the contracts define"
        );
    }
}
