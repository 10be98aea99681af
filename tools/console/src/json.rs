//! Admin answers as the JSON the page reads: proto3's canonical mapping
//! (lowerCamelCase, enums by name, durations as `"0.012s"`, every field
//! printed), from the contracts' descriptors, as the gateway's HTTP face
//! prints its answers.

use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;
use std::sync::LazyLock;

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    shop_http::descriptor_pool(shop_proto::FILE_DESCRIPTOR_SET)
        .expect("the contracts' descriptor set decodes")
});

/// `message`, of the protobuf type named `name`, as JSON.
pub fn to_json<M: prost::Message>(name: &str, message: &M) -> Value {
    let Some(descriptor) = POOL.get_message_by_name(name) else {
        return Value::Null;
    };
    match DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()) {
        Ok(dynamic) => serde_json::from_slice(&shop_http::to_json(&dynamic)).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shop_proto::shop::mesh::v1::{Endpoint, EndpointState};

    #[test]
    fn prints_every_field_with_enums_by_name() {
        let endpoint = Endpoint {
            address: "https://127.0.0.1:1".into(),
            state: EndpointState::Ejected as i32,
            in_flight: 3,
            ..Endpoint::default()
        };
        let json = to_json("shop.mesh.v1.Endpoint", &endpoint);
        assert_eq!(json["state"], "ENDPOINT_STATE_EJECTED");
        assert_eq!(json["inFlight"], "3");
        assert_eq!(json["ejectionCount"], 0);
        assert_eq!(to_json("no.such.Type", &endpoint), Value::Null);
    }
}
