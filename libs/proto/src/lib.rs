//! Generated code for every shop contract, and the descriptor set behind it.
//!
//! - [`shop`]: one module per protobuf package (`shop::users::v1`, ...), with
//!   prost messages and tonic clients and servers. No logic lives here.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of every contract, for
//!   server reflection and for reading method options at run time.
//! - [`methods`]: every RPC of every contract, with [`idempotency_level`]:
//!   what a method's contract says about retrying it.

use prost::Message as _;
use std::collections::HashMap;
use std::sync::OnceLock;

#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rustdoc::all
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/packages.rs"));
}
pub use generated::shop;

/// Encoded `google.protobuf.FileDescriptorSet` of every file under `proto/`,
/// imports included.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/shop_descriptor.bin"));

/// The `idempotency_level` a contract declares for a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// The method may have side effects; repeating it is not known to be safe.
    Unknown,
    /// Repeating the call has the same effect as making it once.
    Idempotent,
    /// The call has no side effects at all (a read).
    NoSideEffects,
}

impl Idempotency {
    /// Whether a failed attempt may be sent again.
    pub fn is_retry_safe(self) -> bool {
        !matches!(self, Idempotency::Unknown)
    }
}

/// One RPC of a contract in [`FILE_DESCRIPTOR_SET`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    /// The HTTP/2 path: `/shop.users.v1.UserService/GetUser`.
    pub path: String,
    /// The full service name: `shop.users.v1.UserService`.
    pub service: String,
    /// The protobuf package: `shop.users.v1`.
    pub package: String,
    /// What the contract says about repeating it.
    pub idempotency: Idempotency,
}

/// Every method of every service in the descriptor set, in file order,
/// read once with prost's descriptor types.
pub fn methods() -> &'static [Method] {
    static TABLE: OnceLock<Vec<Method>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
            .expect("the descriptor set was encoded by build.rs");
        let mut table = Vec::new();
        for file in &fds.file {
            let package = file.package();
            for service in &file.service {
                let full = format!("{package}.{}", service.name());
                for method in &service.method {
                    let level = method
                        .options
                        .as_ref()
                        .map(|o| o.idempotency_level())
                        .unwrap_or_default();
                    use prost_types::method_options::IdempotencyLevel as L;
                    let idempotency = match level {
                        L::NoSideEffects => Idempotency::NoSideEffects,
                        L::Idempotent => Idempotency::Idempotent,
                        L::IdempotencyUnknown => Idempotency::Unknown,
                    };
                    table.push(Method {
                        path: format!("/{full}/{}", method.name()),
                        service: full.clone(),
                        package: package.to_string(),
                        idempotency,
                    });
                }
            }
        }
        table
    })
}

/// The idempotency level of a gRPC method, by its HTTP/2 path
/// (`/shop.users.v1.UserService/GetUser`); `None` for a method no contract
/// in this crate defines.
pub fn idempotency_level(path: &str) -> Option<Idempotency> {
    static BY_PATH: OnceLock<HashMap<&'static str, Idempotency>> = OnceLock::new();
    BY_PATH
        .get_or_init(|| {
            methods()
                .iter()
                .map(|m| (m.path.as_str(), m.idempotency))
                .collect()
        })
        .get(path)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_declared_idempotency_levels() {
        assert_eq!(
            idempotency_level("/shop.users.v1.UserService/GetUser"),
            Some(Idempotency::NoSideEffects)
        );
        assert_eq!(
            idempotency_level("/shop.users.v1.UserService/UpdateUser"),
            Some(Idempotency::Idempotent)
        );
        assert_eq!(
            idempotency_level("/shop.users.v1.UserService/CreateUser"),
            Some(Idempotency::Unknown)
        );
        assert_eq!(idempotency_level("/nope.v1.Nope/Nope"), None);
    }

    #[test]
    fn every_shop_method_declares_its_level_explicitly() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let mut missing = Vec::new();
        for file in fds.file.iter().filter(|f| f.package().starts_with("shop.")) {
            for service in &file.service {
                for method in &service.method {
                    let declared = method
                        .options
                        .as_ref()
                        .is_some_and(|o| o.idempotency_level.is_some());
                    if !declared {
                        missing.push(format!("{}/{}", service.name(), method.name()));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "methods without idempotency_level: {missing:?}"
        );
    }
}
