//! The methods the contracts define, from the descriptor set, and method
//! paths.

use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The methods of every service in the descriptor set (`shop_proto::methods`),
/// by service and by package.
pub(super) struct Descriptors {
    /// Package segment (`catalog`) -> full service names.
    pub(super) packages: BTreeMap<String, Vec<String>>,
    /// Full service name -> method paths.
    pub(super) services: BTreeMap<String, Vec<String>>,
}

pub(super) fn descriptors() -> &'static Descriptors {
    static DESCRIPTORS: OnceLock<Descriptors> = OnceLock::new();
    DESCRIPTORS.get_or_init(|| {
        let mut d = Descriptors {
            packages: BTreeMap::new(),
            services: BTreeMap::new(),
        };
        for method in shop_proto::methods() {
            let paths = d.services.entry(method.service.clone()).or_default();
            let first_of_service = paths.is_empty();
            paths.push(method.path.clone());
            let segment = method
                .package
                .strip_prefix("shop.")
                .and_then(|p| p.split('.').next());
            if let (Some(segment), true) = (segment, first_of_service) {
                d.packages
                    .entry(segment.to_string())
                    .or_default()
                    .push(method.service.clone());
            }
        }
        d
    })
}

pub(super) fn method_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

/// `/package.Service/Method`.
pub(super) fn is_method_path(s: &str) -> bool {
    let mut parts = s.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(""), Some(service), Some(method), None) if !service.is_empty() && !method.is_empty()
    )
}
