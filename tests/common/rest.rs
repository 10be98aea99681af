//! The gateway's REST face from a test: requests as an end user, answers
//! compared with the gRPC call's, errors checked as `google.rpc.Status`.

use super::gateway::EndUser;
use http::Method;
use serde_json::Value;
use shop_testkit::rest::{Answer, Rest};
use tonic::Code;

/// The gRPC answer `message` as the HTTP face prints it.
pub fn as_json<M: prost::Message>(name: &str, message: &M) -> Value {
    let pool = shop_http::descriptor_pool(shop_proto::FILE_DESCRIPTOR_SET).unwrap();
    let desc = pool.get_message_by_name(name).unwrap();
    let dynamic =
        prost_reflect::DynamicMessage::decode(desc, message.encode_to_vec().as_slice()).unwrap();
    serde_json::from_slice(&shop_http::to_json(&dynamic)).unwrap()
}

pub fn bearer(user: &EndUser) -> String {
    format!("Bearer {}", user.token)
}

pub async fn get(rest: &Rest, path: &str, user: Option<&EndUser>) -> Answer {
    let auth = user.map(bearer);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    rest.send(Method::GET, path, &headers, None).await.unwrap()
}

pub async fn send(
    rest: &Rest,
    method: Method,
    path: &str,
    user: Option<&EndUser>,
    body: Value,
) -> Answer {
    let auth = user.map(bearer);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    rest.send(method, path, &headers, Some(&body))
        .await
        .unwrap()
}

/// `answer` is the error `code` with its HTTP status and a
/// `google.rpc.Status` body.
pub fn assert_error(answer: &Answer, http: u16, code: Code) {
    assert_eq!(answer.status, http, "{}", answer.text);
    assert_eq!(answer.header("content-type"), "application/json");
    assert_eq!(answer.json["code"], code as i32, "{}", answer.text);
    assert!(answer.json["message"].is_string(), "{}", answer.text);
}

/// `answer` is INVALID_ARGUMENT (400) naming exactly `fields`.
pub fn assert_invalid(answer: &Answer, fields: &[&str]) {
    assert_error(answer, 400, Code::InvalidArgument);
    assert_eq!(answer.violated_fields(), fields, "{}", answer.text);
}
