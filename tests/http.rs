//! The gateway's HTTP face, end to end: every annotated operation over
//! REST/JSON on the public TLS port answers as the same call over gRPC
//! does, errors included (HTTP's own refusals, health and gRPC-Web:
//! `tests/http_refusals.rs`).

mod common;

use common::gateway::{EndUser, Shop};
use common::rest::{as_json, assert_error, assert_invalid, bearer, get, send};
use http::Method;
use serde_json::{Value, json};
use shop_proto::shop::gateway::v1::*;
use shop_testkit::rest::{Answer, Rest, Version};
use shop_testkit::status::violated_fields;
use shop_testkit::with_bearer;
use std::collections::BTreeMap;
use tonic::Code;

/// `PATCH /api/users/me` as `user`.
async fn patch_me(rest: &Rest, user: &EndUser, body: Value) -> Answer {
    send(rest, Method::PATCH, "/api/users/me", Some(user), body).await
}

/// SignUp and LogIn.
#[tokio::test]
async fn sign_up_and_log_in_answer_as_over_grpc() {
    let shop = Shop::start(BTreeMap::new()).await;
    let rest = shop.stack.service("gateway").rest(Version::Http1).unwrap();
    let mut grpc = shop.gateway().await;
    // SignUp and LogIn (public).
    let email = format!("rest-{}@example.com", uuid::Uuid::new_v4().simple());
    let signed = send(
        &rest,
        Method::POST,
        "/api/users",
        None,
        json!({
            "email": email, "password": "correct horse battery", "displayName": "Rest"
        }),
    )
    .await;
    assert_eq!(signed.status, 200, "{}", signed.text);
    assert_eq!(signed.json["user"]["email"], email.as_str());
    assert_eq!(signed.json["user"]["status"], "USER_STATUS_ACTIVE");
    let again = send(
        &rest,
        Method::POST,
        "/api/users",
        None,
        json!({
            "email": email, "password": "correct horse battery", "displayName": "Rest"
        }),
    )
    .await;
    assert_error(&again, 409, Code::AlreadyExists);
    let bad = send(
        &rest,
        Method::POST,
        "/api/users",
        None,
        json!({
            "email": "nope", "password": "short", "displayName": ""
        }),
    )
    .await;
    assert_error(&bad, 400, Code::InvalidArgument);
    let grpc_bad = grpc
        .sign_up(SignUpRequest {
            email: "nope".into(),
            password: "short".into(),
            display_name: String::new(),
        })
        .await
        .unwrap_err();
    let mut grpc_fields = violated_fields(&grpc_bad);
    grpc_fields.sort();
    assert_eq!(
        bad.violated_fields(),
        grpc_fields,
        "the same violations both ways"
    );
    assert_eq!(bad.json["message"], grpc_bad.message());

    let logged = send(
        &rest,
        Method::POST,
        "/api/sessions",
        None,
        json!({
            "email": email, "password": "correct horse battery"
        }),
    )
    .await;
    assert_eq!(logged.status, 200, "{}", logged.text);
    assert_eq!(logged.json["tokenType"], "Bearer");
    let user = EndUser {
        user_id: signed.json["user"]["userId"].as_str().unwrap().into(),
        email: email.clone(),
        token: logged.json["accessToken"].as_str().unwrap().into(),
    };
    let wrong = send(
        &rest,
        Method::POST,
        "/api/sessions",
        None,
        json!({
            "email": email, "password": "wrong password!"
        }),
    )
    .await;
    assert_error(&wrong, 401, Code::Unauthenticated);
    // The token from the REST log-in is the account's.
    let me = get(&rest, "/api/users/me", Some(&user)).await;
    assert_eq!(
        me.json["user"]["userId"],
        user.user_id.as_str(),
        "{}",
        me.text
    );
}

/// ListProducts and GetProduct.
#[tokio::test]
async fn browsing_answers_as_over_grpc() {
    let shop = Shop::start(BTreeMap::new()).await;
    let rest = shop.stack.service("gateway").rest(Version::Http1).unwrap();
    let mut grpc = shop.gateway().await;
    let product = shop.product("lamp", 1999, 50).await;

    // Browsing (public): the same JSON as the gRPC answer.
    let one = get(&rest, &format!("/api/products/{product}"), None).await;
    assert_eq!(one.status, 200, "{}", one.text);
    let grpc_one = grpc
        .get_product(GetProductRequest {
            product_id: product.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        one.json,
        as_json("shop.gateway.v1.GetProductResponse", &grpc_one)
    );
    assert_eq!(
        one.json["item"]["availableQuantity"], "50",
        "int64 as a string"
    );
    let page = get(&rest, "/api/products?pageSize=5&nameContains=lamp", None).await;
    assert_eq!(page.status, 200, "{}", page.text);
    let grpc_page = grpc
        .list_products(ListProductsRequest {
            page_size: 5,
            name_contains: "lamp".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.json,
        as_json("shop.gateway.v1.ListProductsResponse", &grpc_page)
    );
    // Proto names work in the query too.
    let snake = get(&rest, "/api/products?page_size=5&name_contains=lamp", None).await;
    assert_eq!(snake.json, page.json);
    assert_error(
        &get(&rest, "/api/products?pageSize=1000", None).await,
        400,
        Code::InvalidArgument,
    );
    assert_error(
        &get(&rest, "/api/products?pageSize=ten", None).await,
        400,
        Code::InvalidArgument,
    );
    assert_error(
        &get(&rest, "/api/products?colour=red", None).await,
        400,
        Code::InvalidArgument,
    );
    assert_error(
        &get(&rest, "/api/products/not-a-uuid", None).await,
        400,
        Code::InvalidArgument,
    );
    let unknown = uuid::Uuid::new_v4();
    assert_error(
        &get(&rest, &format!("/api/products/{unknown}"), None).await,
        404,
        Code::NotFound,
    );
}

/// PlaceOrder, GetOrder, ListOrders, GetOrderDetails and CancelOrder.
#[tokio::test]
async fn orders_answer_as_over_grpc() {
    let shop = Shop::start(BTreeMap::new()).await;
    let rest = shop.stack.service("gateway").rest(Version::Http1).unwrap();
    let mut grpc = shop.gateway().await;
    let product = shop.product("lamp", 1999, 50).await;
    let user = shop.user("ada").await;

    // Orders (authenticated).
    let key = uuid::Uuid::new_v4().to_string();
    let order_body = json!({
        "lines": [{"productId": product, "quantity": 2}],
        "paymentToken": "tok_approve"
    });
    let no_token = send(&rest, Method::POST, "/api/orders", None, order_body.clone()).await;
    assert_error(&no_token, 401, Code::Unauthenticated);
    assert!(
        no_token.header("www-authenticate").starts_with("Bearer"),
        "{:?}",
        no_token.headers
    );
    let auth = bearer(&user);
    let placed = rest
        .send(
            Method::POST,
            "/api/orders",
            &[("authorization", &auth), ("idempotency-key", &key)],
            Some(&order_body),
        )
        .await
        .unwrap();
    assert_eq!(placed.status, 200, "{}", placed.text);
    let order_id = placed.json["order"]["orderId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(placed.json["order"]["status"], "ORDER_STATUS_PENDING");
    // The Idempotency-Key header makes the call safe to repeat.
    let replay = rest
        .send(
            Method::POST,
            "/api/orders",
            &[("authorization", &auth), ("idempotency-key", &key)],
            Some(&order_body),
        )
        .await
        .unwrap();
    assert_eq!(replay.json["order"]["orderId"], order_id.as_str());
    let other_body =
        json!({"lines": [{"productId": product, "quantity": 1}], "paymentToken": "tok_approve"});
    let conflict = rest
        .send(
            Method::POST,
            "/api/orders",
            &[("authorization", &auth), ("idempotency-key", &key)],
            Some(&other_body),
        )
        .await
        .unwrap();
    assert_error(&conflict, 409, Code::AlreadyExists);
    let empty = send(
        &rest,
        Method::POST,
        "/api/orders",
        Some(&user),
        json!({"paymentToken": "tok_approve", "idempotencyKey": uuid::Uuid::new_v4().to_string()}),
    )
    .await;
    assert_error(&empty, 400, Code::InvalidArgument);
    assert!(
        empty.violated_fields().contains(&"lines".to_string()),
        "{}",
        empty.text
    );

    let settled = shop.settled(&user, &order_id).await;
    let read = get(&rest, &format!("/api/orders/{order_id}"), Some(&user)).await;
    assert_eq!(read.status, 200, "{}", read.text);
    let grpc_read = grpc
        .get_order(with_bearer(
            &user.token,
            GetOrderRequest {
                order_id: order_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        read.json,
        as_json("shop.gateway.v1.GetOrderResponse", &grpc_read)
    );
    assert_eq!(grpc_read.order.unwrap().status, settled.status);
    let list = get(
        &rest,
        "/api/orders?status=ORDER_STATUS_CONFIRMED",
        Some(&user),
    )
    .await;
    let grpc_list = grpc
        .list_orders(with_bearer(
            &user.token,
            ListOrdersRequest {
                status: shop_proto::shop::orders::v1::OrderStatus::Confirmed as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.json,
        as_json("shop.gateway.v1.ListOrdersResponse", &grpc_list)
    );
    assert_error(
        &get(&rest, "/api/orders?status=SHIPPED", Some(&user)).await,
        400,
        Code::InvalidArgument,
    );
    let details = get(
        &rest,
        &format!("/api/orders/{order_id}/details"),
        Some(&user),
    )
    .await;
    assert_eq!(details.status, 200, "{}", details.text);
    let grpc_details = grpc
        .get_order_details(with_bearer(
            &user.token,
            GetOrderDetailsRequest {
                order_id: order_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        details.json,
        as_json("shop.gateway.v1.GetOrderDetailsResponse", &grpc_details)
    );
    assert_eq!(details.json["missing"], json!([]));

    // Another user's order does not exist for them.
    let eve = shop.user("eve").await;
    assert_error(
        &get(&rest, &format!("/api/orders/{order_id}"), Some(&eve)).await,
        404,
        Code::NotFound,
    );
    let cancel_other = send(
        &rest,
        Method::POST,
        &format!("/api/orders/{order_id}:cancel"),
        Some(&eve),
        json!({}),
    )
    .await;
    assert_error(&cancel_other, 404, Code::NotFound);
    // A confirmed order cannot be cancelled: the same refusal both ways.
    let cancel = send(
        &rest,
        Method::POST,
        &format!("/api/orders/{order_id}:cancel"),
        Some(&user),
        json!({"detail": "changed my mind"}),
    )
    .await;
    let grpc_cancel = grpc
        .cancel_order(with_bearer(
            &user.token,
            CancelOrderRequest {
                order_id: order_id.clone(),
                detail: String::new(),
            },
        ))
        .await;
    match grpc_cancel {
        Ok(_) => assert_eq!(cancel.status, 200, "{}", cancel.text),
        Err(status) => {
            assert_eq!(cancel.json["code"], status.code() as i32, "{}", cancel.text);
            assert_eq!(cancel.status, shop_http::http_status(status.code()));
        }
    }
    let pending = rest
        .send(
            Method::POST,
            "/api/orders",
            &[("authorization", &auth)],
            Some(&json!({
                "lines": [{"productId": product, "quantity": 1}],
                "paymentToken": "tok_approve_slow",
                "idempotencyKey": uuid::Uuid::new_v4().to_string()
            })),
        )
        .await
        .unwrap();
    assert_eq!(pending.status, 200, "{}", pending.text);
    let pending_id = pending.json["order"]["orderId"].as_str().unwrap();
    let cancelled = send(
        &rest,
        Method::POST,
        &format!("/api/orders/{pending_id}:cancel"),
        Some(&user),
        json!({"detail": "changed my mind"}),
    )
    .await;
    if cancelled.status == 200 {
        assert_eq!(cancelled.json["order"]["status"], "ORDER_STATUS_CANCELLED");
    } else {
        // The saga got there first: a precise refusal, never a 5xx.
        assert_error(&cancelled, 400, Code::FailedPrecondition);
    }
}

/// GetAccount, UpdateAccount and DeactivateAccount: always the caller's.
#[tokio::test]
async fn the_account_answers_as_over_grpc() {
    let shop = Shop::start(BTreeMap::new()).await;
    let rest = shop.stack.service("gateway").rest(Version::Http1).unwrap();
    let mut grpc = shop.gateway().await;
    let user = shop.user("ada").await;
    let email = user.email.clone();
    let auth = bearer(&user);

    // The account (authenticated, always the caller's).
    let me = get(&rest, "/api/users/me", Some(&user)).await;
    let grpc_me = grpc
        .get_account(with_bearer(&user.token, GetAccountRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        me.json,
        as_json("shop.gateway.v1.GetAccountResponse", &grpc_me)
    );
    assert_eq!(me.json["user"]["userId"], user.user_id.as_str());
    let renamed = patch_me(&rest, &user, json!({"displayName": "Ada L."})).await;
    assert_eq!(renamed.status, 200, "{}", renamed.text);
    assert_eq!(renamed.json["user"]["displayName"], "Ada L.");
    let unguarded = patch_me(
        &rest,
        &user,
        json!({"newPassword": "another horse battery"}),
    )
    .await;
    assert_invalid(&unguarded, &["current_password"]);
    let wrong_current = patch_me(
        &rest,
        &user,
        json!({
            "newPassword": "another horse battery", "currentPassword": "not it at all"
        }),
    )
    .await;
    assert_invalid(&wrong_current, &["current_password"]);
    let short = patch_me(
        &rest,
        &user,
        json!({
            "newPassword": "short", "currentPassword": "correct horse battery"
        }),
    )
    .await;
    assert_eq!(
        short.violated_fields(),
        vec!["new_password".to_string()],
        "{}",
        short.text
    );
    let changed = patch_me(
        &rest,
        &user,
        json!({
            "newPassword": "another horse battery", "currentPassword": "correct horse battery"
        }),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    let old = send(
        &rest,
        Method::POST,
        "/api/sessions",
        None,
        json!({"email": email, "password": "correct horse battery"}),
    )
    .await;
    assert_error(&old, 401, Code::Unauthenticated);
    let new = send(
        &rest,
        Method::POST,
        "/api/sessions",
        None,
        json!({"email": email, "password": "another horse battery"}),
    )
    .await;
    assert_eq!(new.status, 200, "{}", new.text);

    let gone = rest
        .send(
            Method::DELETE,
            "/api/users/me",
            &[("authorization", &auth)],
            None,
        )
        .await
        .unwrap();
    assert_eq!(gone.status, 200, "{}", gone.text);
    assert_eq!(gone.json["user"]["status"], "USER_STATUS_DEACTIVATED");
    assert_error(
        &get(&rest, "/api/users/me", Some(&user)).await,
        401,
        Code::Unauthenticated,
    );
    let locked = send(
        &rest,
        Method::POST,
        "/api/sessions",
        None,
        json!({"email": email, "password": "another horse battery"}),
    )
    .await;
    assert_error(&locked, 401, Code::Unauthenticated);
}
