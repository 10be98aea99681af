//! Who may use the console: its page, from the machine it runs on.
//!
//! - It listens on loopback only ([`loopback_only`]).
//! - Every request must name the console itself in `Host` (127.0.0.1,
//!   localhost or [::1] with its port): a page on another origin that
//!   rebinds its DNS name to 127.0.0.1 sends its own name and is refused.
//! - An action (any POST) must carry the CSRF token of this process (which
//!   only a page of the console's own origin can read, from
//!   `GET /api/session`: no CORS header is ever sent), an `Origin` of the
//!   console itself, and a JSON body (which a cross-origin form cannot
//!   send without a preflight this server never grants).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use http::{HeaderMap, Method, StatusCode, header};
use rand::RngCore as _;
use std::net::SocketAddr;
use std::sync::Arc;

/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Refuses to serve anywhere but on loopback.
pub fn loopback_only(addr: SocketAddr) -> anyhow::Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "the console serves on loopback only (127.0.0.1 or ::1), not {addr}: it holds the operator's identity"
    );
    Ok(())
}

/// A fresh random token (256 bits, URL-safe base64).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the checks need to know about this process.
#[derive(Debug)]
pub struct Guard {
    /// The address it serves on.
    pub local: SocketAddr,
    /// The CSRF token of this process.
    pub token: String,
}

impl Guard {
    /// The `Host` values that name this console.
    fn hosts(&self) -> [String; 4] {
        let port = self.local.port();
        [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
            // The address it listens on (127.0.0.2, say).
            self.local.to_string(),
        ]
    }

    fn own_host<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        let host = headers.get(header::HOST)?.to_str().ok()?;
        self.hosts().iter().any(|h| h == host).then_some(host)
    }

    /// Why `request` may not proceed, if it may not.
    pub fn refusal(&self, method: &Method, headers: &HeaderMap) -> Option<&'static str> {
        let Some(host) = self.own_host(headers) else {
            return Some("the Host header does not name this console");
        };
        if method == Method::GET || method == Method::HEAD {
            return None;
        }
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        if origin != Some(format!("http://{host}").as_str()) {
            return Some("an action must come from the console's own page (Origin)");
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/json"));
        if !json {
            return Some("an action's body must be JSON");
        }
        let token = headers.get(CSRF_HEADER).map(|v| v.as_bytes());
        if !token.is_some_and(|t| constant_time_eq(t, self.token.as_bytes())) {
            return Some("an action needs the console's CSRF token");
        }
        None
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The axum middleware applying [`Guard::refusal`] to every request.
pub async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    match guard.refusal(request.method(), request.headers()) {
        None => next.run(request).await,
        Some(why) => {
            tracing::warn!(method = %request.method(), path = request.uri().path(), why, "refused");
            (
                StatusCode::FORBIDDEN,
                axum::Json(serde_json::json!({ "code": 7, "message": why })),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn guard() -> Guard {
        Guard {
            local: "127.0.0.1:9000".parse().unwrap(),
            token: "secret".into(),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn reads_need_the_console_s_own_host() {
        let g = guard();
        assert_eq!(
            g.refusal(&Method::GET, &headers(&[("host", "127.0.0.1:9000")])),
            None
        );
        assert_eq!(
            g.refusal(&Method::GET, &headers(&[("host", "localhost:9000")])),
            None
        );
        for host in ["evil.example:9000", "127.0.0.1:9001", "127.0.0.1"] {
            assert!(
                g.refusal(&Method::GET, &headers(&[("host", host)]))
                    .is_some(),
                "{host}"
            );
        }
        assert!(g.refusal(&Method::GET, &HeaderMap::new()).is_some());
    }

    #[test]
    fn actions_need_origin_json_and_the_token() {
        let g = guard();
        let good = [
            ("host", "127.0.0.1:9000"),
            ("origin", "http://127.0.0.1:9000"),
            ("content-type", "application/json"),
            ("x-csrf-token", "secret"),
        ];
        assert_eq!(g.refusal(&Method::POST, &headers(&good)), None);
        for (i, bad) in [
            ("origin", "http://evil.example"),
            ("content-type", "text/plain"),
            ("x-csrf-token", "guess"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut h = good;
            h[i + 1] = bad;
            assert!(g.refusal(&Method::POST, &headers(&h)).is_some(), "{bad:?}");
        }
        let without_token: Vec<_> = good[..3].to_vec();
        assert!(g.refusal(&Method::POST, &headers(&without_token)).is_some());
    }
}
