//! The calls every server answers for its own operation, which the
//! server stack never sheds or faults and metrics name as they are: an
//! overloaded or deliberately faulty server must still say how it is.

/// Paths that are never shed or faulted: health, reflection (v1 and
/// v1alpha), mesh admin, flags admin (an operator asks why users see what
/// they see during an incident, when shedding is most likely).
pub fn is_infrastructure(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.")
        || path.starts_with("/shop.mesh.v1.MeshAdminService/")
        || path.starts_with("/shop.flags.v1.FlagsAdminService/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reflection_and_admin_are_infrastructure_and_services_are_not() {
        assert!(is_infrastructure("/grpc.health.v1.Health/Check"));
        assert!(is_infrastructure(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        ));
        assert!(is_infrastructure("/shop.mesh.v1.MeshAdminService/GetStats"));
        assert!(!is_infrastructure(
            "/shop.orders.v1.OrderService/PlaceOrder"
        ));
    }
}
