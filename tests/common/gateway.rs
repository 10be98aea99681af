//! A stack behind the gateway, and an end user's view of it.

use super::fast_env;
use shop_proto::shop::gateway::v1::shop_gateway_service_client::ShopGatewayServiceClient;
use shop_proto::shop::gateway::v1::{
    GetOrderRequest, LogInRequest, PlaceOrderRequest, SignUpRequest,
};
use shop_proto::shop::mesh::v1::ListUpstreamsRequest;
use shop_proto::shop::mesh::v1::mesh_admin_service_client::MeshAdminServiceClient;
use shop_proto::shop::orders::v1::{NewOrderLine, Order, OrderStatus};
use shop_testkit::stack::{Stack, StackOptions};
use shop_testkit::{eventually, with_bearer};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::transport::Channel;

/// Everything the gateway calls, then the gateway (callees first).
pub const GATEWAY_STACK: &[&str] = &[
    "users",
    "catalog",
    "inventory",
    "payments",
    "orders",
    "gateway",
];

pub struct Shop {
    pub stack: Stack,
}

/// A signed-up, logged-in end user.
#[derive(Debug, Clone)]
pub struct EndUser {
    pub user_id: String,
    pub email: String,
    pub token: String,
}

impl Shop {
    /// The stack with `extra` environment per service on top of the fast
    /// saga settings; the gateway asks users about every token's subject
    /// (no cache) and allows many sign-ups from 127.0.0.1.
    pub async fn start(extra: BTreeMap<String, Vec<(String, String)>>) -> Self {
        let mut service_env: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        service_env.insert(
            "gateway".into(),
            vec![
                ("SHOP_GATEWAY__AUTH__SUBJECT_CACHE_TTL".into(), "0s".into()),
                (
                    "SHOP_GATEWAY__LIMITS__SIGNUP__PER_PEER__BURST".into(),
                    "1000".into(),
                ),
                (
                    "SHOP_GATEWAY__LIMITS__SIGNUP__PER_EMAIL__BURST".into(),
                    "1000".into(),
                ),
            ],
        );
        for (service, env) in extra {
            service_env.entry(service).or_default().extend(env);
        }
        let stack = Stack::start_with(StackOptions {
            services: GATEWAY_STACK.iter().map(|s| s.to_string()).collect(),
            env: fast_env(),
            service_env,
            ..StackOptions::default()
        })
        .await
        .expect("the gateway stack starts");
        Shop { stack }
    }

    pub async fn gateway(&self) -> ShopGatewayServiceClient<Channel> {
        ShopGatewayServiceClient::new(
            self.stack
                .service("gateway")
                .public_channel()
                .await
                .unwrap(),
        )
    }

    /// Calls the gateway has made to `upstream` so far (its MeshAdmin
    /// counters).
    pub async fn calls_to(&self, upstream: &str) -> i64 {
        MeshAdminServiceClient::new(self.stack.service("gateway").channel().await.unwrap())
            .list_upstreams(ListUpstreamsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .upstreams
            .into_iter()
            .find(|u| u.upstream == upstream)
            .and_then(|u| u.counters)
            .map_or(0, |c| c.calls)
    }

    /// Signs up and logs in a new user.
    pub async fn user(&self, name: &str) -> EndUser {
        end_user(self.gateway().await, name).await
    }

    /// A product priced `price_minor` EUR, stocked with `stock` units (as
    /// an operator, on catalog and inventory directly).
    pub async fn product(&self, name: &str, price_minor: i64, stock: i64) -> String {
        super::stocked_product(&self.stack, Some(name), price_minor, stock).await
    }

    /// `user` orders one unit of `product` through the gateway.
    pub async fn order(&self, user: &EndUser, product: &str, payment: &str) -> Order {
        place_order(self.gateway().await, user, product, payment).await
    }

    /// Waits until `user`'s order is CONFIRMED or CANCELLED.
    pub async fn settled(&self, user: &EndUser, order_id: &str) -> Order {
        settled(self.gateway().await, user, order_id).await
    }
}

/// Signs up and logs in a new user through `gateway`.
pub async fn end_user(mut gateway: ShopGatewayServiceClient<Channel>, name: &str) -> EndUser {
    let email = format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "correct horse battery".to_string();
    let user = gateway
        .sign_up(SignUpRequest {
            email: email.clone(),
            password: password.clone(),
            display_name: name.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let token = gateway
        .log_in(LogInRequest {
            email: email.clone(),
            password,
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    EndUser {
        user_id: user.user_id,
        email,
        token,
    }
}

/// `user` orders one unit of `product` through `gateway`.
pub async fn place_order(
    gateway: ShopGatewayServiceClient<Channel>,
    user: &EndUser,
    product: &str,
    payment: &str,
) -> Order {
    try_place_order(gateway, user, product, payment)
        .await
        .unwrap()
}

/// The same, with the gateway's refusal as it came.
pub async fn try_place_order(
    mut gateway: ShopGatewayServiceClient<Channel>,
    user: &EndUser,
    product: &str,
    payment: &str,
) -> Result<Order, tonic::Status> {
    Ok(gateway
        .place_order(with_bearer(
            &user.token,
            PlaceOrderRequest {
                lines: vec![NewOrderLine {
                    product_id: product.into(),
                    quantity: 1,
                }],
                payment_token: payment.into(),
                idempotency_key: uuid::Uuid::new_v4().to_string(),
            },
        ))
        .await?
        .into_inner()
        .order
        .expect("an accepted order is in the answer"))
}

/// Waits until `user`'s order is CONFIRMED or CANCELLED, asking `gateway`.
pub async fn settled(
    gateway: ShopGatewayServiceClient<Channel>,
    user: &EndUser,
    order_id: &str,
) -> Order {
    order_when(gateway, user, order_id, "settled", |o| {
        o.status() != OrderStatus::Pending
    })
    .await
}

/// Waits (60 s at most) until `user`'s order, read through `gateway`, is
/// as `ready` says (`what` names the wait in a failure).
pub async fn order_when(
    gateway: ShopGatewayServiceClient<Channel>,
    user: &EndUser,
    order_id: &str,
    what: &str,
    ready: fn(&Order) -> bool,
) -> Order {
    eventually(Duration::from_secs(60), || {
        let mut gateway = gateway.clone();
        let request = with_bearer(
            &user.token,
            GetOrderRequest {
                order_id: order_id.into(),
            },
        );
        async move {
            let order = gateway
                .get_order(request)
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .order
                .ok_or("no order")?;
            if ready(&order) {
                Ok(order)
            } else {
                Err(format!("not {what} yet: {order:?}"))
            }
        }
    })
    .await
    .unwrap()
}
