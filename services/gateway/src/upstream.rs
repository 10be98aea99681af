//! The services behind the gateway, and what the gateway answers when one
//! of them fails.
//!
//! Every client is a mesh channel built from `[upstreams.<name>]`: the
//! caller's deadline is propagated, and retries happen only for methods
//! the contract marks safe (the mesh reads `idempotency_level`).

use shop_mesh::client::MeshChannel;
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_proto::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
use shop_proto::shop::orders::v1::order_service_client::OrderServiceClient;
use shop_proto::shop::payments::v1::payment_service_client::PaymentServiceClient;
use shop_proto::shop::users::v1::user_service_client::UserServiceClient;
use tonic::{Code, Status};

/// Generated clients over the mesh, one per upstream. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Upstreams {
    pub(crate) users: UserServiceClient<MeshChannel>,
    pub(crate) catalog: CatalogServiceClient<MeshChannel>,
    pub(crate) inventory: InventoryServiceClient<MeshChannel>,
    pub(crate) orders: OrderServiceClient<MeshChannel>,
    pub(crate) payments: PaymentServiceClient<MeshChannel>,
}

/// The gateway's answer for a failed call to `upstream`.
///
/// What the caller can act on passes through unchanged, message and
/// details (the `google.rpc.BadRequest` of a validation error, the
/// `RetryInfo` of a shed call): the gateway's request fields have the
/// upstreams' names, so field violations name the caller's fields. An
/// upstream's own failure (`INTERNAL`, `UNKNOWN`...) or a refusal of the
/// gateway itself (`PERMISSION_DENIED`, `UNAUTHENTICATED` from anything but
/// log-in) is logged here and answered as the gateway's internal error:
/// it is not the caller's mistake and says nothing useful to them. An
/// upstream that cannot be reached or answers too late is named, and the
/// mesh's own text (endpoint addresses, identities) goes to the log only.
pub(crate) fn relay(upstream: &'static str, status: Status) -> Status {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => {
            tracing::warn!(upstream, code = ?status.code(), message = status.message(), "upstream did not answer");
            let message = if status.code() == Code::Unavailable {
                format!("{upstream} is unavailable; retry later")
            } else {
                format!("{upstream} did not answer in time")
            };
            Status::with_details(status.code(), message, status.details().to_vec().into())
        }
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::ResourceExhausted
        | Code::Aborted => Status::with_details(
            status.code(),
            status.message(),
            status.details().to_vec().into(),
        ),
        Code::Unauthenticated if upstream == "users" => {
            Status::unauthenticated(status.message().to_string())
        }
        // The connection to the upstream was reset under the call.
        Code::Cancelled => Status::unavailable(format!("{upstream} did not answer; retry later")),
        _ => {
            tracing::error!(upstream, code = ?status.code(), message = status.message(), "upstream failed");
            Status::internal("internal error")
        }
    }
}

/// `status` with its field violations of `from` naming `to` instead: the
/// gateway's field where an upstream's has another name.
pub(crate) fn rename_field(status: Status, from: &str, to: &str) -> Status {
    use tonic_types::StatusExt as _;
    let mut details = status.get_error_details();
    let Some(bad) = details.bad_request() else {
        return status;
    };
    let mut violations = bad.field_violations.clone();
    for violation in &mut violations {
        if violation.field == from {
            violation.field = to.to_string();
        }
    }
    details.set_bad_request(violations);
    Status::with_error_details(status.code(), status.message(), details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt as _};

    #[test]
    fn field_violations_pass_through_and_internal_causes_do_not() {
        let bad = Status::with_error_details(
            Code::InvalidArgument,
            "lines: must not be empty",
            ErrorDetails::with_bad_request_violation("lines", "must not be empty"),
        );
        let relayed = relay("orders", bad);
        assert_eq!(relayed.code(), Code::InvalidArgument);
        let violations = relayed.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "lines");

        let internal = relay(
            "orders",
            Status::internal("relation \"orders\" does not exist"),
        );
        assert_eq!(internal.code(), Code::Internal);
        assert!(!internal.message().contains("relation"));

        assert_eq!(
            relay("orders", Status::unauthenticated("x")).code(),
            Code::Internal
        );
        assert_eq!(
            relay("users", Status::unauthenticated("x")).code(),
            Code::Unauthenticated
        );
        assert_eq!(
            relay("catalog", Status::cancelled("reset")).code(),
            Code::Unavailable
        );
    }

    #[test]
    fn an_unreachable_upstream_is_named_without_the_meshs_own_text() {
        let down = relay(
            "inventory",
            Status::unavailable(
                "no endpoint: 10.244.1.7:7000 ejected (spiffe://shop.local/ns/shop/sa/inventory)",
            ),
        );
        assert_eq!(down.code(), Code::Unavailable);
        assert_eq!(down.message(), "inventory is unavailable; retry later");
        let late = relay(
            "orders",
            Status::deadline_exceeded(
                "deadline passed calling /shop.orders.v1.OrderService/GetOrder",
            ),
        );
        assert_eq!(late.code(), Code::DeadlineExceeded);
        assert_eq!(late.message(), "orders did not answer in time");
    }
}
