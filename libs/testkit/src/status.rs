//! Assertions on gRPC statuses.

use tonic_types::StatusExt as _;

/// The fields an `INVALID_ARGUMENT` status names in its
/// `google.rpc.BadRequest`, in order; panics for any other status.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("INVALID_ARGUMENT carries a BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}
