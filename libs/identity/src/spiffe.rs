//! SPIFFE IDs (`spiffe://<trust-domain>/<path>`) and the short names
//! configuration uses for the workloads of one trust domain.

use std::fmt;

/// A SPIFFE ID: the trust domain and a non-empty path, as the SPIFFE ID
/// specification allows them (lower-case trust domain; path segments of
/// letters, digits, `.`, `-` and `_`, none of them `.` or `..`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    /// Byte offset of the path (after the trust domain).
    path_at: usize,
}

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a SPIFFE ID: {reason}")]
pub struct InvalidSpiffeId {
    /// The string given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    /// Parses `spiffe://<trust-domain>/<path>`.
    pub fn parse(value: &str) -> Result<Self, InvalidSpiffeId> {
        let fail = |reason| InvalidSpiffeId {
            value: value.to_string(),
            reason,
        };
        let rest = value
            .strip_prefix(SCHEME)
            .ok_or_else(|| fail("it does not start with spiffe://"))?;
        let (domain, path) = rest
            .find('/')
            .map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
        if domain.is_empty() {
            return Err(fail("the trust domain is empty"));
        }
        if !domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(fail(
                "the trust domain may only hold lower-case letters, digits, '-', '.' and '_'",
            ));
        }
        if path.is_empty() {
            return Err(fail("a workload's ID needs a path"));
        }
        for segment in path[1..].split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(fail(
                    "path segments may not be empty, '.' or '..' (and no trailing '/')",
                ));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(fail(
                    "path segments may only hold letters, digits, '-', '.' and '_'",
                ));
            }
        }
        Ok(Self {
            uri: value.to_string(),
            path_at: SCHEME.len() + domain.len(),
        })
    }

    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`,
    /// Istio's form.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, InvalidSpiffeId> {
        Self::parse(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The trust domain (`cluster.local`).
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_at]
    }

    /// The path, with its leading `/`.
    pub fn path(&self) -> &str {
        &self.uri[self.path_at..]
    }

    /// The namespace of an Istio-form ID.
    pub fn namespace(&self) -> Option<&str> {
        self.istio().map(|(ns, _)| ns)
    }

    /// The service account of an Istio-form ID (`/ns/<ns>/sa/<sa>`): the
    /// workload's short name (`gateway`, `operator`).
    pub fn service_account(&self) -> Option<&str> {
        self.istio().map(|(_, sa)| sa)
    }

    fn istio(&self) -> Option<(&str, &str)> {
        let mut parts = self.path()[1..].split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa)) if parts.next().is_none() => {
                Some((ns, sa))
            }
            _ => None,
        }
    }

    /// The same namespace and trust domain, another service account.
    pub fn sibling(&self, service_account: &str) -> Result<Self, InvalidSpiffeId> {
        let namespace = self.namespace().ok_or_else(|| InvalidSpiffeId {
            value: self.uri.clone(),
            reason: "not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>",
        })?;
        Self::workload(self.trust_domain(), namespace, service_account)
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = InvalidSpiffeId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The workloads of a shop deployment, by service account: the services,
/// and `operator` (people and tools with grpcurl). Configuration names
/// callers with these; anything else is refused at start.
pub const WORKLOADS: &[&str] = &[
    "gateway",
    "users",
    "catalog",
    "inventory",
    "orders",
    "payments",
    "notifications",
    "analytics",
    "operator",
];

/// Whether `name` is a known workload's service account.
pub fn is_workload(name: &str) -> bool {
    WORKLOADS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_form_round_trips() {
        let id = SpiffeId::workload("shop.local", "shop", "orders").unwrap();
        assert_eq!(id.as_str(), "spiffe://shop.local/ns/shop/sa/orders");
        assert_eq!(id.trust_domain(), "shop.local");
        assert_eq!(id.path(), "/ns/shop/sa/orders");
        assert_eq!(id.namespace(), Some("shop"));
        assert_eq!(id.service_account(), Some("orders"));
        assert_eq!(
            id.sibling("catalog").unwrap().as_str(),
            "spiffe://shop.local/ns/shop/sa/catalog"
        );
        assert_eq!(SpiffeId::parse(id.as_str()).unwrap(), id);
    }

    #[test]
    fn malformed_ids_are_refused_with_the_reason() {
        for (value, reason) in [
            ("https://shop.local/ns/a/sa/b", "spiffe://"),
            ("spiffe:///ns/a", "trust domain is empty"),
            ("spiffe://Shop.Local/ns/a", "lower-case"),
            ("spiffe://shop.local", "needs a path"),
            ("spiffe://shop.local/ns//sa/b", "may not be empty"),
            ("spiffe://shop.local/ns/a/", "may not be empty"),
            ("spiffe://shop.local/ns/../sa/b", "'..'"),
            ("spiffe://shop.local/ns/a b", "letters, digits"),
        ] {
            let err = SpiffeId::parse(value).unwrap_err();
            assert!(err.to_string().contains(reason), "{value}: {err}");
        }
    }

    #[test]
    fn only_the_istio_form_has_a_service_account() {
        let id = SpiffeId::parse("spiffe://shop.local/workload/orders").unwrap();
        assert_eq!(id.service_account(), None);
        let id = SpiffeId::parse("spiffe://shop.local/ns/a/sa/b/c").unwrap();
        assert_eq!(id.service_account(), None);
    }
}
