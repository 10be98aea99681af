//! Requests refused before any gRPC call: what each face answers.

use crate::common::gateway::EndUser;

use http::Method;
use serde_json::json;
use shop_testkit::rest::Answer;

use super::case::Case;
/// A request refused before any gRPC call, and what each face answers:
/// its status, and whether the body is a `google.rpc.Status` JSON.
pub(crate) struct Refusal {
    pub(crate) case: Case,
    pub(crate) envoy: (u16, Body),
    pub(crate) gateway: (u16, Body),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// `text/plain`, Envoy's words.
    Text,
    /// A `google.rpc.Status` JSON with `code`.
    Status(i64),
    /// An answer (the request was not refused).
    Answer,
}

impl Body {
    pub(crate) fn of(answer: &Answer) -> Body {
        let kind = answer.header("content-type");
        if kind.starts_with("text/plain") {
            Body::Text
        } else if answer.status.is_success() {
            Body::Answer
        } else {
            Body::Status(answer.json["code"].as_i64().unwrap_or(-1))
        }
    }
}

/// What each face does, itself, with requests that do not become a gRPC
/// call (or, in Envoy, become one without what it could not map): found
/// by this suite, and documented in docs/http.md's "Checked by".
pub(crate) fn refusals(user: &EndUser) -> Vec<Refusal> {
    let r = |case: Case, envoy: (u16, Body), gateway: (u16, Body)| Refusal {
        case,
        envoy,
        gateway,
    };
    vec![
        r(
            Case::get("no operation at the path", "/api/nothing-here", 404),
            (404, Body::Text),
            (404, Body::Status(5)),
        ),
        // Envoy does not tell an unknown method from an unknown path.
        r(
            Case::new("PUT on a GET path", Method::PUT, "/api/products", 405),
            (404, Body::Text),
            (405, Body::Status(12)),
        ),
        r(
            Case::get(
                "a query value of the wrong type",
                "/api/products?pageSize=ten",
                400,
            ),
            (400, Body::Text),
            (400, Body::Status(3)),
        ),
        r(
            Case::get(
                "an unknown query parameter",
                "/api/products?colour=red",
                400,
            ),
            (400, Body::Text),
            (400, Body::Status(3)),
        ),
        r(
            Case::get("an unknown enum name", "/api/orders?status=SHIPPED", 400).by(user),
            (400, Body::Text),
            (400, Body::Status(3)),
        ),
        // Envoy drops a body field the message does not have, and calls.
        r(
            Case::new("an unknown body field", Method::POST, "/api/sessions", 400).body(json!({
                "email": user.email, "password": "correct horse battery", "remember": true
            })),
            (200, Body::Answer),
            (400, Body::Status(3)),
        ),
        // Envoy ignores a body where the rule takes none, and calls.
        r(
            Case::get("a body on a GET", "/api/products?pageSize=1", 400)
                .body(json!({"pageSize": 2})),
            (200, Body::Answer),
            (400, Body::Status(3)),
        ),
        r(
            Case::new("malformed JSON", Method::POST, "/api/sessions", 400)
                .raw("application/json", b"{\"email\":"),
            (400, Body::Text),
            (400, Body::Status(3)),
        ),
        // Envoy reads any body as JSON; the face refuses another type.
        r(
            Case::new(
                "a body that is not JSON",
                Method::POST,
                "/api/sessions",
                415,
            )
            .raw("text/plain", b"hi"),
            (400, Body::Text),
            (415, Body::Status(3)),
        ),
    ]
}
