//! One request sent through both faces, and how the two answers compare.

use crate::common::gateway::EndUser;

use http::Method;
use serde_json::Value;
use shop_testkit::rest::{Answer, Rest};

/// Which face a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Face {
    Envoy,
    Gateway,
}

/// One request of the list: the same through both faces, but for a body
/// that must differ (two sign-ups), and with the JSON fields that may
/// differ (normalised after a check of their own).
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) token: Option<String>,
    pub(crate) body: Option<Value>,
    /// The body sent to the gateway's face when it must differ.
    pub(crate) gateway_body: Option<Value>,
    /// A body sent as is, with its content type, instead of JSON.
    pub(crate) raw: Option<(&'static str, &'static [u8])>,
    /// The status both must answer.
    pub(crate) status: u16,
    /// Checks both answers' volatile fields and replaces them.
    pub(crate) normalise: Option<fn(&mut Value, &mut Value)>,
}

impl Case {
    pub(crate) fn new(
        name: &'static str,
        method: Method,
        path: impl Into<String>,
        status: u16,
    ) -> Self {
        Case {
            name,
            method,
            path: path.into(),
            token: None,
            body: None,
            gateway_body: None,
            raw: None,
            status,
            normalise: None,
        }
    }

    pub(crate) fn get(name: &'static str, path: impl Into<String>, status: u16) -> Self {
        Self::new(name, Method::GET, path, status)
    }

    pub(crate) fn by(mut self, user: &EndUser) -> Self {
        self.token = Some(user.token.clone());
        self
    }

    pub(crate) fn bearer(mut self, token: &str) -> Self {
        self.token = Some(token.into());
        self
    }

    pub(crate) fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    pub(crate) fn raw(mut self, content_type: &'static str, body: &'static [u8]) -> Self {
        self.raw = Some((content_type, body));
        self
    }

    pub(crate) fn normalised(mut self, f: fn(&mut Value, &mut Value)) -> Self {
        self.normalise = Some(f);
        self
    }

    pub(crate) async fn send(&self, rest: &Rest, face: Face) -> Answer {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let json = match face {
            Face::Gateway => self.gateway_body.as_ref().or(self.body.as_ref()),
            Face::Envoy => self.body.as_ref(),
        };
        let body = match self.raw {
            Some((content_type, raw)) => {
                headers.push(("content-type", content_type));
                Some(raw.to_vec())
            }
            None => json.map(|b| b.to_string().into_bytes()),
        };
        rest.send_raw(self.method.clone(), &self.path, &headers, body)
            .await
            .unwrap_or_else(|e| panic!("{} through {face:?}: {e:#}", self.name))
    }
}

/// Replaces the value at `pointer` in both answers by `<name>` after
/// checking `check` of each.
pub(crate) fn replace(a: &mut Value, b: &mut Value, pointer: &str, check: fn(&Value) -> bool) {
    for v in [a, b] {
        let text = v.to_string();
        let slot = v
            .pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{pointer} in {text}"));
        assert!(check(slot), "{pointer}: {slot}");
        *slot = Value::String(format!("<{pointer}>"));
    }
}

pub(crate) fn non_empty(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.is_empty())
}

/// An RFC 3339 UTC timestamp as proto3 JSON prints it
/// (`2026-12-05T10:00:00.123Z`).
pub(crate) fn timestamp(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        let b = s.as_bytes();
        b.len() >= 20 && b[4] == b'-' && b[10] == b'T' && s.ends_with('Z')
    })
}

/// Two sign-ups of two emails: a new user each, with its own id, email
/// and times; the rest (display name, status, every field printed) equal.
pub(crate) fn new_user(a: &mut Value, b: &mut Value) {
    replace(a, b, "/user/userId", non_empty);
    replace(a, b, "/user/email", non_empty);
    replace(a, b, "/user/createTime", timestamp);
    replace(a, b, "/user/updateTime", timestamp);
}

/// Two log-ins of one user: two tokens, two expiry times.
pub(crate) fn new_session(a: &mut Value, b: &mut Value) {
    replace(a, b, "/accessToken", non_empty);
    replace(a, b, "/expireTime", timestamp);
}

/// Two refusals of one rate limit a few milliseconds apart: the whole
/// seconds until a token is back (in the message and the `RetryInfo`) may
/// be one apart when a second boundary falls between them.
pub(crate) fn retry_seconds(a: &mut Value, b: &mut Value) {
    let secs = |v: &Value| -> (u64, u64) {
        let message = v["message"].as_str().unwrap_or_default();
        let in_message = message
            .rsplit_once("retry in ")
            .and_then(|(_, s)| s.strip_suffix('s'))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("retry in Ns: {message}"));
        let delay = v["details"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
            .and_then(|d| d["retryDelay"].as_str())
            .and_then(|s| s.strip_suffix('s'))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a RetryInfo in whole seconds: {v}"));
        (in_message, delay)
    };
    let (a_msg, a_delay) = secs(a);
    let (b_msg, b_delay) = secs(b);
    assert_eq!(a_msg, a_delay, "{a}");
    assert_eq!(b_msg, b_delay, "{b}");
    assert!(a_msg.abs_diff(b_msg) <= 1, "{a} / {b}");
    for v in [a, b] {
        let message = v["message"].as_str().unwrap().to_string();
        let (head, _) = message.rsplit_once("retry in ").unwrap();
        v["message"] = Value::String(format!("{head}retry in <n>s"));
        for d in v["details"].as_array_mut().unwrap() {
            if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo" {
                d["retryDelay"] = Value::String("<n>s".into());
            }
        }
    }
}
