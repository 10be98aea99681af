//! The front door, end to end: real users, catalog, inventory, orders and
//! payments processes behind the real gateway.
//!
//! - every token attack is one UNAUTHENTICATED;
//! - a user only ever sees, cancels and places their own orders;
//! - bad input to every RPC is INVALID_ARGUMENT naming the fields;
//! - log-in attempts are limited per email, without locking others out.

mod common;

use base64::Engine as _;
use common::gateway::Shop;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use shop_auth::Claims;
use shop_proto::shop::gateway::v1::*;
use shop_proto::shop::orders::v1::{NewOrderLine, OrderStatus};
use shop_proto::shop::users::v1::DeactivateUserRequest;
use shop_proto::shop::users::v1::user_service_client::UserServiceClient;
use shop_testkit::status::violated_fields;
use shop_testkit::with_bearer;
use std::collections::BTreeMap;
use tonic::Code;
use uuid::Uuid;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Claims the gateway accepts, for `sub`, valid now.
fn good_claims(sub: &str) -> Claims {
    let now = chrono_now();
    Claims {
        sub: sub.into(),
        iss: "shop-users".into(),
        aud: "shop-gateway".into(),
        exp: now + 600,
        nbf: now - 1,
        iat: now - 1,
        jti: Uuid::now_v7().to_string(),
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign(claims: &Claims, kid: &str, private_pem: &str) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_ed_pem(private_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn every_token_attack_is_one_unauthenticated() {
    let shop = Shop::start(BTreeMap::new()).await;
    let ada = shop.user("ada").await;
    let key = shop.stack.keys().signing_key_pem();
    let public_pem =
        std::fs::read_to_string(shop.stack.keys().public_keys_dir.join("k1.pem")).unwrap();
    let mut gateway = shop.gateway().await;

    // The real token works: the attacks below are refused for what they
    // change, not because the gateway refuses everything.
    gateway
        .list_orders(with_bearer(&ada.token, ListOrdersRequest::default()))
        .await
        .expect("a genuine token is accepted");
    let forged_ok = sign(&good_claims(&ada.user_id), "k1", &key);
    gateway
        .list_orders(with_bearer(&forged_ok, ListOrdersRequest::default()))
        .await
        .expect("a token built here with the real key and claims is accepted");

    let tampered = {
        let mut parts: Vec<String> = ada.token.split('.').map(str::to_string).collect();
        let mut claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&parts[1])
                .unwrap(),
        )
        .unwrap();
        claims["sub"] = serde_json::Value::String(Uuid::now_v7().to_string());
        parts[1] = b64(&serde_json::to_vec(&claims).unwrap());
        parts.join(".")
    };
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
        b64(&serde_json::to_vec(&good_claims(&ada.user_id)).unwrap())
    );
    let key_confusion = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &good_claims(&ada.user_id),
            &EncodingKey::from_secret(public_pem.as_bytes()),
        )
        .unwrap()
    };
    let with = |edit: fn(&mut Claims)| {
        let mut claims = good_claims(&ada.user_id);
        edit(&mut claims);
        sign(&claims, "k1", &key)
    };
    let unknown_key = shop_auth::KeyPair::generate().private_pem;
    let attacks: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("alg: none", Some(alg_none)),
        (
            "HS256 signed with the public key (key confusion)",
            Some(key_confusion),
        ),
        (
            "expired",
            Some(with(|c| {
                c.exp = chrono_now() - 3600;
                c.iat = c.exp - 600;
                c.nbf = c.iat;
            })),
        ),
        ("not yet valid", Some(with(|c| c.nbf = chrono_now() + 3600))),
        ("wrong iss", Some(with(|c| c.iss = "someone-else".into()))),
        (
            "wrong aud",
            Some(with(|c| c.aud = "another-service".into())),
        ),
        ("payload changed after signing", Some(tampered)),
        (
            "signed by an unknown key",
            Some(sign(&good_claims(&ada.user_id), "k1", &unknown_key)),
        ),
        (
            "a kid the verifier does not have",
            Some(sign(&good_claims(&ada.user_id), "k9", &key)),
        ),
        (
            "a user id that does not exist",
            Some(sign(&good_claims(&Uuid::now_v7().to_string()), "k1", &key)),
        ),
        ("not a bearer token", Some("Basic YWRhOnBhc3N3b3Jk".into())),
    ];
    let mut answers = Vec::new();
    for (name, token) in &attacks {
        let request = match token {
            Some(t) if t.starts_with("Basic ") => {
                let mut r = tonic::Request::new(ListOrdersRequest::default());
                r.metadata_mut().insert("authorization", t.parse().unwrap());
                r
            }
            Some(t) => with_bearer(t, ListOrdersRequest::default()),
            None => tonic::Request::new(ListOrdersRequest::default()),
        };
        let status = gateway.list_orders(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
        let challenge = status
            .metadata()
            .get("www-authenticate")
            .unwrap_or_else(|| panic!("{name}: no www-authenticate"))
            .to_str()
            .unwrap()
            .to_string();
        answers.push((*name, status.message().to_string(), challenge));
    }
    // Nothing in the answer tells one failed check from another.
    let invalid: Vec<_> = answers.iter().filter(|(n, ..)| *n != "no token").collect();
    for (name, message, challenge) in &invalid {
        assert_eq!(
            (message.as_str(), challenge.as_str()),
            (
                "invalid access token",
                "Bearer realm=\"shop\", error=\"invalid_token\""
            ),
            "{name}"
        );
    }
    assert_eq!(answers[0].2, "Bearer realm=\"shop\"");

    // A deactivated user's token stops working, and they cannot log in.
    UserServiceClient::new(shop.stack.service("users").channel().await.unwrap())
        .deactivate_user(DeactivateUserRequest {
            user_id: ada.user_id.clone(),
        })
        .await
        .unwrap();
    let status = gateway
        .list_orders(with_bearer(&ada.token, ListOrdersRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = gateway
        .log_in(LogInRequest {
            email: ada.email.clone(),
            password: "correct horse battery".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // The gateway's port asks for no client certificate (end users have
    // tokens), but MeshAdmin there is still the operator's: without a
    // certificate UNAUTHENTICATED, with another workload's
    // PERMISSION_DENIED, with the operator's answered.
    use shop_proto::shop::mesh::v1::GetStatsRequest;
    use shop_proto::shop::mesh::v1::mesh_admin_service_client::MeshAdminServiceClient;
    let gw = shop.stack.service("gateway");
    let status = MeshAdminServiceClient::new(gw.public_channel().await.unwrap())
        .get_stats(GetStatsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let orders = shop_testkit::identities::Identities::dir_in(shop.stack.dir(), "orders");
    let as_orders = tonic::transport::Endpoint::from_shared(gw.url())
        .unwrap()
        .tls_config(shop_testkit::identities::client_tls(&orders).unwrap())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = MeshAdminServiceClient::new(as_orders)
        .get_stats(GetStatsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let stats = MeshAdminServiceClient::new(gw.channel().await.unwrap())
        .get_stats(GetStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.server.unwrap().unauthenticated, 1);
    assert!(
        stats.denials.iter().any(|d| d.caller.is_empty()
            && d.code == Code::Unauthenticated as i32
            && d.method == "/shop.mesh.v1.MeshAdminService/GetStats"),
        "{:?}",
        stats.denials
    );
}

#[tokio::test]
async fn a_signing_key_rotates_at_the_gateway_without_a_restart() {
    let shop = Shop::start(BTreeMap::new()).await;
    let ada = shop.user("ada").await;
    let keys = shop.stack.keys();
    let old_token = ada.token.clone();
    let mut gateway = shop.gateway().await;
    let lists = |token: String| {
        let mut gateway = gateway.clone();
        async move {
            gateway
                .list_orders(with_bearer(&token, ListOrdersRequest::default()))
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }
    };

    // 1. The new key's public half joins the gateway's directory.
    let k2 = shop_auth::KeyPair::generate();
    let new_token = sign(&good_claims(&ada.user_id), "k2", &k2.private_pem);
    assert_eq!(lists(new_token.clone()).await, Err(Code::Unauthenticated));
    std::fs::write(keys.public_keys_dir.join("k2.pem"), &k2.public_pem).unwrap();
    shop_testkit::eventually(std::time::Duration::from_secs(10), || async {
        lists(new_token.clone()).await.map_err(|c| format!("{c:?}"))
    })
    .await
    .expect("the gateway picks the new key up without a restart");
    // 2. While both are trusted, tokens of either key work.
    assert_eq!(lists(old_token.clone()).await, Ok(()));

    // 3. Once the old tokens have expired, the old key goes.
    std::fs::remove_file(keys.public_keys_dir.join("k1.pem")).unwrap();
    shop_testkit::eventually(std::time::Duration::from_secs(10), || async {
        match lists(old_token.clone()).await {
            Err(Code::Unauthenticated) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .expect("tokens of a removed key are refused");
    assert_eq!(lists(new_token).await, Ok(()));

    // A bad file in the directory changes nothing.
    std::fs::write(keys.public_keys_dir.join("k3.pem"), "not a key").unwrap();
    shop_testkit::eventually(std::time::Duration::from_secs(10), || async {
        let log = shop.stack.service("gateway").log();
        if log.contains("k3.pem") {
            Ok(())
        } else {
            Err("the gateway has not looked at k3.pem yet")
        }
    })
    .await
    .expect("the refused change is logged, naming the file");
    gateway
        .list_orders(with_bearer(
            &sign(&good_claims(&ada.user_id), "k2", &k2.private_pem),
            ListOrdersRequest::default(),
        ))
        .await
        .expect("the keys in force stay when a change cannot be read");
}

#[tokio::test]
async fn a_user_only_sees_cancels_and_places_their_own_orders() {
    let shop = Shop::start(BTreeMap::new()).await;
    let ada = shop.user("ada").await;
    let mallory = shop.user("mallory").await;
    let book = shop.product("A book", 1500, 10).await;
    let mut gateway = shop.gateway().await;

    let order = shop.order(&ada, &book, "tok_approve").await;
    assert_eq!(order.user_id, ada.user_id, "the order is the caller's");
    let settled = shop.settled(&ada, &order.order_id).await;
    assert_eq!(settled.status(), OrderStatus::Confirmed);

    let id = order.order_id.clone();
    let expect_not_found = |status: tonic::Status, rpc: &str| {
        assert_eq!(status.code(), Code::NotFound, "{rpc}: {status:?}");
        assert_eq!(status.message(), format!("order {id} not found"), "{rpc}");
    };
    expect_not_found(
        gateway
            .get_order(with_bearer(
                &mallory.token,
                GetOrderRequest {
                    order_id: id.clone(),
                },
            ))
            .await
            .unwrap_err(),
        "GetOrder",
    );
    expect_not_found(
        gateway
            .get_order_details(with_bearer(
                &mallory.token,
                GetOrderDetailsRequest {
                    order_id: id.clone(),
                },
            ))
            .await
            .unwrap_err(),
        "GetOrderDetails",
    );
    expect_not_found(
        gateway
            .cancel_order(with_bearer(
                &mallory.token,
                CancelOrderRequest {
                    order_id: id.clone(),
                    detail: "not mine".into(),
                },
            ))
            .await
            .unwrap_err(),
        "CancelOrder",
    );
    // The same answer as for an order that does not exist at all.
    let nobody = Uuid::now_v7().to_string();
    let status = gateway
        .get_order(with_bearer(
            &mallory.token,
            GetOrderRequest {
                order_id: nobody.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), format!("order {nobody} not found"));

    let mine = gateway
        .list_orders(with_bearer(&mallory.token, ListOrdersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(mine.orders.is_empty(), "mallory lists no order of ada's");
    let theirs = gateway
        .list_orders(with_bearer(&ada.token, ListOrdersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(theirs.orders.len(), 1);

    // Mallory's failed cancel changed nothing; ada's own cancel works.
    let still = shop.settled(&ada, &id).await;
    assert_eq!(still.status(), OrderStatus::Confirmed);
    let cancelled = gateway
        .cancel_order(with_bearer(
            &ada.token,
            CancelOrderRequest {
                order_id: id.clone(),
                detail: "changed my mind".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(cancelled.status(), OrderStatus::Cancelled);

    // Reusing ada's idempotency key cannot hand mallory ada's order.
    let key = order.idempotency_key.clone();
    let status = gateway
        .place_order(with_bearer(
            &mallory.token,
            PlaceOrderRequest {
                lines: vec![NewOrderLine {
                    product_id: book.clone(),
                    quantity: 1,
                }],
                payment_token: "tok_approve".into(),
                idempotency_key: key,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
}

#[tokio::test]
async fn bad_input_to_every_rpc_names_the_fields() {
    let shop = Shop::start(BTreeMap::new()).await;
    let ada = shop.user("ada").await;
    let mut gateway = shop.gateway().await;
    let token = ada.token.clone();

    let status = gateway
        .sign_up(SignUpRequest {
            email: "nope".into(),
            password: "short".into(),
            display_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["email", "password", "display_name"]
    );

    let status = gateway.log_in(LogInRequest::default()).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["email", "password"]);

    let status = gateway
        .list_products(ListProductsRequest {
            page_size: -1,
            page_token: "forged".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        violated_fields(&status).contains(&"page_size".to_string()),
        "{status:?}"
    );

    let status = gateway
        .get_product(GetProductRequest {
            product_id: "42".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["product_id"]);

    let status = gateway
        .place_order(with_bearer(
            &token,
            PlaceOrderRequest {
                lines: vec![],
                payment_token: String::new(),
                idempotency_key: "not-a-uuid".into(),
            },
        ))
        .await
        .unwrap_err();
    let fields = violated_fields(&status);
    for field in ["lines", "payment_token", "idempotency_key"] {
        assert!(fields.contains(&field.to_string()), "{field} in {fields:?}");
    }
    assert!(!fields.contains(&"user_id".to_string()), "{fields:?}");

    let status = gateway
        .place_order(with_bearer(
            &token,
            PlaceOrderRequest {
                lines: vec![NewOrderLine {
                    product_id: "x".into(),
                    quantity: 0,
                }],
                payment_token: "tok_approve".into(),
                idempotency_key: Uuid::new_v4().to_string(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        violated_fields(&status)
            .iter()
            .all(|f| f.starts_with("lines")),
        "{status:?}"
    );

    for (rpc, status) in [
        (
            "CancelOrder",
            gateway
                .cancel_order(with_bearer(
                    &token,
                    CancelOrderRequest {
                        order_id: "x".into(),
                        detail: String::new(),
                    },
                ))
                .await
                .unwrap_err(),
        ),
        (
            "GetOrder",
            gateway
                .get_order(with_bearer(
                    &token,
                    GetOrderRequest {
                        order_id: "x".into(),
                    },
                ))
                .await
                .unwrap_err(),
        ),
        (
            "GetOrderDetails",
            gateway
                .get_order_details(with_bearer(
                    &token,
                    GetOrderDetailsRequest {
                        order_id: "x".into(),
                    },
                ))
                .await
                .unwrap_err(),
        ),
    ] {
        assert_eq!(violated_fields(&status), ["order_id"], "{rpc}");
    }

    let status = gateway
        .list_orders(with_bearer(
            &token,
            ListOrdersRequest {
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_size"]);
    let status = gateway
        .list_orders(with_bearer(
            &token,
            ListOrdersRequest {
                page_token: "forged".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_token"]);
}

#[tokio::test]
async fn log_in_attempts_are_limited_per_email_without_locking_others_out() {
    // The address's bucket is made small enough to empty here too.
    let shop = Shop::start(BTreeMap::from([(
        "gateway".to_string(),
        vec![
            (
                "SHOP_GATEWAY__LIMITS__LOGIN__PER_PEER__BURST".to_string(),
                "20".to_string(),
            ),
            (
                "SHOP_GATEWAY__LIMITS__LOGIN__PER_PEER__REFILL".to_string(),
                "1h".to_string(),
            ),
        ],
    )]))
    .await;
    let ada = shop.user("ada").await;
    let grace = shop.user("grace").await;
    let mut gateway = shop.gateway().await;

    // 50 attempts in one second for one email, as a password-guessing
    // script would make them.
    let mut refused = Vec::new();
    let mut accepted = 0;
    let started = tokio::time::Instant::now();
    for i in 0..50 {
        let answer = gateway
            .log_in(LogInRequest {
                email: ada.email.clone(),
                password: format!("guess number {i}"),
            })
            .await;
        match answer {
            Err(s) if s.code() == Code::ResourceExhausted => refused.push(s),
            Err(s) => {
                assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
                accepted += 1;
            }
            Ok(_) => panic!("a wrong password logged in"),
        }
        tokio::time::sleep_until(started + std::time::Duration::from_millis(20 * (i + 1))).await;
    }
    // The default bucket holds 5 attempts and gets one back every 12 s;
    // ada's own log-in after signing up took one.
    assert_eq!(
        accepted, 4,
        "the rest of the bucket's attempts reached users"
    );
    assert_eq!(refused.len(), 46);
    let retry = tonic_types::StatusExt::get_details_retry_info(&refused[0])
        .expect("RetryInfo says when to come back");
    let delay = retry.retry_delay.unwrap();
    assert!(
        delay >= std::time::Duration::from_secs(1) && delay <= std::time::Duration::from_secs(12),
        "{delay:?}"
    );

    // The right password for ada is refused too while the bucket is empty...
    let status = gateway
        .log_in(LogInRequest {
            email: ada.email.clone(),
            password: "correct horse battery".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // ...while another user, from the same address, logs in unaffected.
    gateway
        .log_in(LogInRequest {
            email: grace.email.clone(),
            password: "correct horse battery".into(),
        })
        .await
        .expect("another user logs in");

    // Many emails from one address empty the address's bucket: 20 tokens,
    // of which the two log-ins after sign-up, ada's 4 attempts and grace's
    // log-in took 7 (refused attempts take none).
    for i in 0..13 {
        let status = gateway
            .log_in(LogInRequest {
                email: format!("sprayed-{i}@example.com"),
                password: "password123456".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "attempt {i}: {status:?}"
        );
    }
    let status = gateway
        .log_in(LogInRequest {
            email: "sprayed-13@example.com".into(),
            password: "password123456".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("from this address"), "{status:?}");
    assert!(tonic_types::StatusExt::get_details_retry_info(&status).is_some());
}
