//! OpenAPI 3.1 documents from the same descriptors the services run on.
//!
//! [`document`] describes one service. A service with `google.api.http`
//! rules gets the document of its HTTP face ([`crate::HttpFace`]): one
//! operation per binding, the face's own paths (`/openapi.json`,
//! `/health/live`, `/health/ready`), its error answers and the bearer
//! scheme. A service without rules gets a document that only shows its
//! messages: one `POST /package.Service/Method` per method, as gRPC names
//! it, said plainly to be gRPC only (the JSON is the shape `grpcurl` takes
//! and prints).
//!
//! Schemas follow the proto3 JSON mapping as prost-reflect writes it:
//! lowerCamelCase names, 64-bit integers as strings, enums by name,
//! well-known types in their JSON forms. No schema lists `required`
//! fields: the same schema serves requests (where every field may be left
//! out) and answers (where fields with presence are left out when unset),
//! and none forbids extra properties, so that answers may grow.
//!
//! Descriptions are the contracts' leading comments. Whether a gateway
//! operation needs the bearer token is read from its method's comment: it
//! must say either "Authenticated." or "Public." (the convention of
//! `gateway.proto`), and a method that says neither, or both, is refused
//! rather than guessed.
//!
//! Every gateway operation lists the error answers any call may meet (400,
//! 429, 500, 503, 504) and those its shape makes likely: 401 when it needs
//! the token, 404 when its path names something, 409 when it changes state
//! (an `idempotency_level` other than `NO_SIDE_EFFECTS`), 413 and 415 when
//! it takes a body, and the answer of any status code its comment names
//! (`UNAUTHENTICATED`, `PERMISSION_DENIED`, `NOT_FOUND`, `ALREADY_EXISTS`,
//! `ABORTED`). `default` covers the rest; all are `google.rpc.Status`.
//!
//! [`shop`] applies this to the shop's contracts: the documents committed
//! under `docs/openapi/`, the check that keeps them in step, and the bytes
//! the gateway serves.
mod errors;
mod grpc;
mod http;
mod schema;
pub mod shop;
#[cfg(test)]
mod tests;
mod text;
mod well_known;

use self::grpc::grpc_document;
use self::http::http_document;
use self::schema::Generator;
use self::text::Sorted;
use crate::rules::{self, RuleError};
use bytes::Bytes;
use prost_reflect::{DescriptorPool, ServiceDescriptor};
use serde_json::Value;

/// The OpenAPI version of every document.
pub const OPENAPI_VERSION: &str = "3.1.0";

/// The document's `info`, less its description (the service's comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// `info.title`.
    pub title: String,
    /// `info.version`.
    pub version: String,
}

impl Info {
    /// The service's full name as the title and its package's version
    /// (`v1` of `shop.users.v1`) as the version.
    pub fn of(service: &ServiceDescriptor) -> Info {
        let version = service
            .package_name()
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        Info {
            title: service.full_name().to_string(),
            version,
        }
    }
}

/// Why a document cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    /// No such service in the pool.
    #[error("service {0} is not in the descriptor set")]
    NoService(String),
    /// The service's HTTP rules are not usable.
    #[error(transparent)]
    Rules(#[from] RuleError),
    /// A method of an HTTP service whose comment does not say who may
    /// call it.
    #[error(
        "{method}: its comment must say either \"Authenticated.\" or \"Public.\" (it decides the operation's security)"
    )]
    Access {
        /// The method.
        method: String,
    },
    /// A type the documents refer to is missing from the pool.
    #[error("{0} is not in the descriptor set (build the pool with shop_http::descriptor_pool)")]
    MissingType(&'static str),
    /// The descriptor set does not decode.
    #[error("descriptor set: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    /// Reading or writing a document.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// The OpenAPI document of `service` in `pool`; see the module's
/// documentation for what each kind of service gets. The pool must hold the
/// `google.rpc` types of error bodies ([`crate::descriptor_pool`]).
pub fn document(pool: &DescriptorPool, service: &str, info: &Info) -> Result<Value, OpenApiError> {
    let svc = pool
        .get_service_by_name(service)
        .ok_or_else(|| OpenApiError::NoService(service.to_string()))?;
    let routes = rules::routes(pool, service)?;
    let mut walk = Generator::new(pool);
    walk.error_schemas()?;
    let mut doc = if routes.is_empty() {
        grpc_document(&mut walk, &svc, info)
    } else {
        http_document(&mut walk, &svc, &routes, info)?
    };
    walk.finish();
    doc["components"]["schemas"] = Value::Object(walk.schemas.into_iter().collect());
    Ok(doc)
}

/// `document` as committed and served: pretty-printed with sorted keys
/// (whatever the features of serde_json) and a final newline.
pub fn to_bytes(document: &Value) -> Bytes {
    let mut out = serde_json::to_vec_pretty(&Sorted(document)).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}
