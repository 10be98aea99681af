//! The gateway's HTTP face beyond the contract's operations: HTTP's own
//! refusals (404, 405, 413, 415, a body where none is taken, bad JSON),
//! 429 with Retry-After, health and the OpenAPI document over HTTP/1.1 and
//! HTTP/2, and gRPC-Web on the same port.

mod common;

use common::gateway::Shop;
use common::rest::{assert_error, get, send};
use http::Method;
use prost::Message as _;
use serde_json::json;
use shop_proto::shop::gateway::v1::*;
use shop_testkit::rest::Version;
use std::collections::BTreeMap;
use tonic::Code;

#[tokio::test]
async fn http_refusals_are_precise_and_health_answers_over_http() {
    let shop = Shop::start(BTreeMap::new()).await;
    let gateway = shop.stack.service("gateway");
    for version in [Version::Http1, Version::Http2] {
        let rest = gateway.rest(version).unwrap();
        let live = get(&rest, "/health/live", None).await;
        assert_eq!(
            (live.status.as_u16(), live.json.clone()),
            (200, json!({"status": "SERVING"}))
        );
        let ready = get(&rest, "/health/ready", None).await;
        assert_eq!(
            (ready.status.as_u16(), ready.json.clone()),
            (200, json!({"status": "SERVING"}))
        );

        let openapi = get(&rest, "/openapi.json", None).await;
        assert_eq!(openapi.status, 200);
        let committed = std::fs::read(
            shop_testkit::tools::repo_root()
                .join("docs/openapi/shop.gateway.v1.ShopGatewayService.json"),
        )
        .unwrap();
        assert_eq!(openapi.bytes, committed, "the committed document is served");

        assert_error(
            &get(&rest, "/api/nothing-here", None).await,
            404,
            Code::NotFound,
        );
        let verb = rest
            .send(Method::PUT, "/api/products", &[], None)
            .await
            .unwrap();
        assert_error(&verb, 405, Code::Unimplemented);
        assert_eq!(verb.header("allow"), "GET");
        let text = rest
            .send_raw(
                Method::POST,
                "/api/sessions",
                &[("content-type", "text/plain")],
                Some(b"hi".to_vec()),
            )
            .await
            .unwrap();
        assert_error(&text, 415, Code::InvalidArgument);
        let broken = rest
            .send_raw(
                Method::POST,
                "/api/sessions",
                &[],
                Some(b"{\"email\":".to_vec()),
            )
            .await
            .unwrap();
        assert_error(&broken, 400, Code::InvalidArgument);
        let unknown = send(
            &rest,
            Method::POST,
            "/api/sessions",
            None,
            json!({"email": "a@b.c", "pasword": "x"}),
        )
        .await;
        assert_error(&unknown, 400, Code::InvalidArgument);
        let huge = "x".repeat(100 * 1024);
        let big = send(
            &rest,
            Method::POST,
            "/api/sessions",
            None,
            json!({"email": huge, "password": "x"}),
        )
        .await;
        assert_error(&big, 413, Code::InvalidArgument);
        let body_on_get = rest
            .send(
                Method::GET,
                "/api/products",
                &[],
                Some(&json!({"pageSize": 1})),
            )
            .await
            .unwrap();
        assert_error(&body_on_get, 400, Code::InvalidArgument);
    }

    // Past LogIn's limit for one email: 429 with Retry-After.
    let rest = gateway.rest(Version::Http1).unwrap();
    let email = format!("limited-{}@example.com", uuid::Uuid::new_v4().simple());
    let mut last = None;
    for _ in 0..20 {
        let answer = send(
            &rest,
            Method::POST,
            "/api/sessions",
            None,
            json!({"email": email, "password": "wrong password!"}),
        )
        .await;
        if answer.status == 429 {
            last = Some(answer);
            break;
        }
        assert_error(&answer, 401, Code::Unauthenticated);
    }
    let limited = last.expect("refused as too many within 20 attempts");
    assert_error(&limited, 429, Code::ResourceExhausted);
    let retry_after: u64 = limited
        .header("retry-after")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1, "{retry_after}");
    assert!(
        limited.json["details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"),
        "{}",
        limited.text
    );
}

#[tokio::test]
async fn grpc_web_is_served_on_the_same_port() {
    let shop = Shop::start(BTreeMap::new()).await;
    let product = shop.product("kettle", 2500, 3).await;
    let rest = shop.stack.service("gateway").rest(Version::Http1).unwrap();
    let message = GetProductRequest {
        product_id: product.clone(),
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let answer = rest
        .send_raw(
            Method::POST,
            "/shop.gateway.v1.ShopGatewayService/GetProduct",
            &[
                ("content-type", "application/grpc-web+proto"),
                ("x-grpc-web", "1"),
            ],
            Some(frame),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), "application/grpc-web+proto");
    // One message frame, then the trailers frame (flag 0x80) with grpc-status 0.
    let raw = answer.bytes.to_vec();
    assert_eq!(raw[0], 0, "a message frame first");
    let len = u32::from_be_bytes(raw[1..5].try_into().unwrap()) as usize;
    let got = GetProductResponse::decode(&raw[5..5 + len]).unwrap();
    assert_eq!(got.item.unwrap().product.unwrap().product_id, product);
    let trailers = &raw[5 + len..];
    assert_eq!(trailers[0], 0x80);
    let text = String::from_utf8_lossy(&trailers[5..]).to_lowercase();
    assert!(text.contains("grpc-status:0"), "{text}");
}
