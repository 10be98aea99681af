//! [`GrpcCode`]: a gRPC status code as configuration writes it.

use serde::{Deserialize, Serialize};

/// A gRPC status code, written in configuration as its lower-case name
/// (`unavailable`, `resource_exhausted`, `deadline_exceeded`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCode(pub tonic::Code);

const CODES: &[(&str, tonic::Code)] = &[
    ("ok", tonic::Code::Ok),
    ("cancelled", tonic::Code::Cancelled),
    ("unknown", tonic::Code::Unknown),
    ("invalid_argument", tonic::Code::InvalidArgument),
    ("deadline_exceeded", tonic::Code::DeadlineExceeded),
    ("not_found", tonic::Code::NotFound),
    ("already_exists", tonic::Code::AlreadyExists),
    ("permission_denied", tonic::Code::PermissionDenied),
    ("resource_exhausted", tonic::Code::ResourceExhausted),
    ("failed_precondition", tonic::Code::FailedPrecondition),
    ("aborted", tonic::Code::Aborted),
    ("out_of_range", tonic::Code::OutOfRange),
    ("unimplemented", tonic::Code::Unimplemented),
    ("internal", tonic::Code::Internal),
    ("unavailable", tonic::Code::Unavailable),
    ("data_loss", tonic::Code::DataLoss),
    ("unauthenticated", tonic::Code::Unauthenticated),
];

impl Default for GrpcCode {
    /// `unavailable`, the usual code of an injected abort.
    fn default() -> Self {
        GrpcCode(tonic::Code::Unavailable)
    }
}

impl GrpcCode {
    /// The configuration name of the code.
    pub fn name(self) -> &'static str {
        CODES
            .iter()
            .find(|(_, c)| *c == self.0)
            .map_or("unknown", |(n, _)| n)
    }
}

impl Serialize for GrpcCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for GrpcCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        CODES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, c)| GrpcCode(*c))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown gRPC code {name:?}; expected one of {}",
                    CODES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ))
            })
    }
}
