//! The routes: the page's files, `GET /api/session` (the CSRF token),
//! `GET /api/overview` (every service, gathered now) and
//! `POST /api/services/{service}/dead-letters/{id}/{replay|discard}`.

use crate::actions::{self, Body, Log, Verb};
use crate::admin::Services;
use crate::guard::{self, Guard};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::Uri;
use serde_json::{Value, json};
use shop_http::Site;
use std::sync::Arc;
use tonic::{Code, Status};

/// The console's state.
#[derive(Debug)]
pub struct Console {
    pub services: Services,
    pub site: Option<Site>,
    pub guard: Arc<Guard>,
    pub log: Log,
}

/// Requests served at once: the page asks for the next overview only
/// once the last one answered; more wait (each overview fans out to every
/// service, each call bounded by its deadline).
const MAX_CONCURRENT: usize = 8;

/// The routes, behind the guard, at most [`MAX_CONCURRENT`] at once.
pub fn router(console: Arc<Console>) -> axum::Router {
    let guard = console.guard.clone();
    axum::Router::new()
        .route("/api/session", get(session))
        .route("/api/overview", get(overview))
        .route(
            "/api/services/{service}/dead-letters/{id}/{verb}",
            post(action),
        )
        .fallback(page)
        .with_state(console)
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT,
        ))
}

/// A refusal as JSON (`{code, message}`), with the HTTP status of its code.
fn refused(status: &Status) -> Response {
    (
        shop_http::http_status(status.code()),
        Json(json!({ "code": status.code() as i32, "message": status.message() })),
    )
        .into_response()
}

async fn session(State(console): State<Arc<Console>>) -> Json<Value> {
    Json(json!({ "csrfToken": console.guard.token }))
}

async fn overview(State(console): State<Arc<Console>>) -> Json<Value> {
    let services =
        futures::future::join_all(console.services.0.iter().map(crate::overview::service)).await;
    Json(json!({ "services": services, "actions": console.log.recent() }))
}

async fn action(
    State(console): State<Arc<Console>>,
    Path((service, id, verb)): Path<(String, String, String)>,
    body: Result<Json<Body>, JsonRejection>,
) -> Response {
    let Some(verb) = Verb::parse(&verb) else {
        return refused(&Status::not_found(format!("no action {verb:?}")));
    };
    let Some(service) = console.services.get(&service) else {
        return refused(&Status::not_found(format!("no service {service:?}")));
    };
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => {
            return refused(&Status::invalid_argument(format!(
                "the body must be {{\"reason\": \"...\"}}: {rejection}"
            )));
        }
    };
    match actions::act(&console.log, service, &id, verb, &body.reason).await {
        Ok(letter) => Json(json!({ "deadLetter": letter })).into_response(),
        Err(status) => refused(&status),
    }
}

async fn page(State(console): State<Arc<Console>>, uri: Uri) -> Response {
    match console.site.as_ref().and_then(|site| site.get(uri.path())) {
        Some(file) => file.into_response(),
        None => refused(&Status::new(
            Code::NotFound,
            format!("no page at {}", uri.path()),
        )),
    }
}
