//! The shop's HTTP face, from the same contracts as its gRPC one.
//!
//! - [`rules`]: the `google.api.http` rules of a service, read from the
//!   descriptor set and checked at start.
//! - [`template`]: their path templates.
//! - [`HttpFace`]: a tower layer in front of a tonic server's routes that
//!   answers HTTP/JSON requests by calling the same service over gRPC
//!   in process (proto3 JSON mapping through prost-reflect), with errors
//!   as HTTP statuses and `google.rpc.Status` JSON bodies.
//! - [`openapi`]: OpenAPI 3.1 documents from the same descriptors.
//! - [`site`]: a web page's static files (the storefront), served beside
//!   the rules with a same-origin Content-Security-Policy.

pub mod openapi;
pub mod rules;
pub mod site;
pub mod template;

mod request;
mod service;
mod status;

pub use service::{HttpFace, Limits, Transcode, to_json};
pub use site::Site;
pub use status::http_status;

/// The descriptors the face needs: the shop's contracts, and the
/// `google.rpc` error details that error bodies carry.
pub fn descriptor_pool(
    contracts: &[u8],
) -> Result<prost_reflect::DescriptorPool, prost_reflect::DescriptorError> {
    let mut pool = prost_reflect::DescriptorPool::decode(contracts)?;
    pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)?;
    Ok(pool)
}
