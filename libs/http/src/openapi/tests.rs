use super::http::needs_token;
use super::schema::INT64;
use super::*;
use prost_reflect::DescriptorPool;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn pool() -> DescriptorPool {
    shop::pool().unwrap()
}

fn gateway() -> Value {
    let pool = pool();
    let service = pool.get_service_by_name(shop::GATEWAY).unwrap();
    document(&pool, shop::GATEWAY, &Info::of(&service)).unwrap()
}

fn committed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi")
}

/// The value a local `$ref` points at.
fn resolve<'d>(doc: &'d Value, reference: &str) -> Option<&'d Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(target)) => out.push(target.clone()),
                    _ => references(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, out)),
        _ => {}
    }
}

#[test]
fn every_route_is_an_operation_at_its_path_and_method() {
    let doc = gateway();
    let routes = rules::routes(&pool(), shop::GATEWAY).unwrap();
    assert!(!routes.is_empty());
    for route in &routes {
        let method = route.method.as_str().to_ascii_lowercase();
        let operation = &doc["paths"][route.template.to_string()][&method];
        assert_eq!(operation["operationId"], route.rpc.name(), "{route:?}");
        assert_eq!(operation["x-grpc-method"], route.grpc_path);
        assert_eq!(operation["tags"], json!(["ShopGatewayService"]));
        assert!(operation["summary"].is_string());
    }
    let cancel = &doc["paths"]["/api/orders/{order_id}:cancel"]["post"];
    assert_eq!(cancel["operationId"], "CancelOrder");
    assert_eq!(
        doc["paths"]["/api/users/me"]["patch"]["operationId"],
        "UpdateAccount"
    );
    assert_eq!(
        doc["paths"]["/api/users/me"]["delete"]["operationId"],
        "DeactivateAccount"
    );
    // The face's own paths.
    for path in ["/openapi.json", "/health/live", "/health/ready"] {
        assert_eq!(doc["paths"][path]["get"]["security"], json!([]), "{path}");
    }
    assert_eq!(doc["openapi"], "3.1.0");
}

#[test]
fn only_authenticated_methods_need_the_bearer_token() {
    let doc = gateway();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"],
        json!({
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"],
        })
    );
    let bearer = json!([{ "bearerAuth": [] }]);
    let public = ["SignUp", "LogIn", "ListProducts", "GetProduct"];
    let mut seen = 0;
    for item in doc["paths"].as_object().unwrap().values() {
        for operation in item.as_object().unwrap().values() {
            let Some(id) = operation["x-grpc-method"].as_str() else {
                continue;
            };
            let name = id.rsplit('/').next().unwrap();
            let want = if public.contains(&name) {
                json!([])
            } else {
                bearer.clone()
            };
            assert_eq!(operation["security"], want, "{name}");
            let has_401 = operation["responses"].get("401").is_some();
            assert_eq!(has_401, !public.contains(&name), "{name}");
            seen += 1;
        }
    }
    assert_eq!(seen, 12);
}

#[test]
fn the_access_marker_is_one_of_two_words() {
    assert_eq!(
        needs_token("Places an order. Authenticated. Safe to repeat."),
        Some(true)
    );
    assert_eq!(
        needs_token("Creates an account (UserService.CreateUser). Public."),
        Some(false)
    );
    assert_eq!(
        needs_token("Returns a thing for authenticated callers."),
        None
    );
    assert_eq!(needs_token("Public. Authenticated."), None);
}

#[test]
fn path_variables_query_fields_and_bodies_are_parameters() {
    let doc = gateway();
    let get = &doc["paths"]["/api/orders/{order_id}"]["get"];
    assert_eq!(
        get["parameters"],
        json!([{
            "name": "order_id",
            "in": "path",
            "required": true,
            "description": "Identifier of the caller's order (UUID).",
            "schema": { "type": "string" },
        }])
    );
    assert!(get.get("requestBody").is_none());
    assert!(get["responses"].get("404").is_some());

    // A rule without a body takes the other fields from the query, by JSON name.
    let list = &doc["paths"]["/api/orders"]["get"];
    let names: Vec<&str> = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["in"], "query");
            p["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names, ["pageSize", "pageToken", "status"]);
    assert_eq!(
        list["parameters"][2]["schema"]["$ref"],
        "#/components/schemas/shop.orders.v1.OrderStatus"
    );

    // body "*" with a path variable: the body has the other fields only.
    let cancel = &doc["paths"]["/api/orders/{order_id}:cancel"]["post"];
    let body = &cancel["requestBody"];
    // A missing body is the empty message, as the face reads it.
    assert_eq!(body["required"], false);
    let properties = &body["content"]["application/json"]["schema"]["properties"];
    assert!(properties.get("detail").is_some());
    assert!(properties.get("orderId").is_none());
    for code in ["413", "415"] {
        assert!(cancel["responses"].get(code).is_some(), "{code}");
    }

    // A request that has an idempotency key also takes the header.
    let place = &doc["paths"]["/api/orders"]["post"];
    assert_eq!(place["parameters"][0]["name"], "Idempotency-Key");
    assert_eq!(place["parameters"][0]["in"], "header");
    assert_eq!(
        place["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/shop.gateway.v1.PlaceOrderRequest"
    );
}

#[test]
fn errors_are_google_rpc_status_bodies() {
    let doc = gateway();
    let status = &doc["components"]["schemas"]["google.rpc.Status"];
    for field in ["code", "message", "details"] {
        assert!(status["properties"].get(field).is_some(), "{field}");
    }
    assert_eq!(
        status["properties"]["details"]["items"]["required"],
        json!(["@type"])
    );
    for detail in [
        "google.rpc.BadRequest",
        "google.rpc.RetryInfo",
        "google.rpc.PreconditionFailure",
    ] {
        assert!(
            doc["components"]["schemas"].get(detail).is_some(),
            "{detail}"
        );
    }
    let responses = doc["components"]["responses"].as_object().unwrap();
    for (name, answer) in responses {
        assert_eq!(
            answer["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/google.rpc.Status",
            "{name}"
        );
    }
    for name in ["TooManyRequests", "Unavailable"] {
        assert_eq!(
            responses[name]["headers"]["Retry-After"]["$ref"],
            "#/components/headers/Retry-After"
        );
    }
    assert!(
        responses["Unauthorized"]["headers"]
            .get("WWW-Authenticate")
            .is_some()
    );
    // Every operation of the rules has a default error answer.
    let ops = doc["paths"].as_object().unwrap().values().flat_map(|item| {
        item.as_object()
            .unwrap()
            .values()
            .filter(|op| op.get("x-grpc-method").is_some())
    });
    for op in ops {
        assert_eq!(
            op["responses"]["default"]["$ref"],
            "#/components/responses/Error"
        );
        assert_eq!(
            op["responses"]["429"]["$ref"],
            "#/components/responses/TooManyRequests"
        );
    }
}

#[test]
fn comments_become_descriptions() {
    let doc = gateway();
    let schemas = &doc["components"]["schemas"];
    let missing = &schemas["shop.gateway.v1.MissingPart"];
    assert!(
        missing["description"]
            .as_str()
            .unwrap()
            .starts_with("A part of an aggregated answer that is missing")
    );
    assert_eq!(
        missing["properties"]["part"]["description"],
        "Which part is absent."
    );
    let part = &schemas["shop.gateway.v1.Part"];
    assert_eq!(part["type"], "string");
    assert_eq!(part["enum"][1], "PART_USER");
    assert!(
        part["description"]
            .as_str()
            .unwrap()
            .contains("- `PART_USER`: The caller's account (users).")
    );
    let sign_up = &doc["paths"]["/api/users"]["post"];
    assert_eq!(
        sign_up["summary"],
        "Creates an account (UserService.CreateUser)"
    );
    assert_eq!(
        sign_up["description"],
        "Creates an account (UserService.CreateUser). Public."
    );
    assert!(
        doc["info"]["description"]
            .as_str()
            .unwrap()
            .starts_with("The public entry point of the shop")
    );
}

#[test]
fn fields_have_their_proto3_json_types() {
    let doc = gateway();
    let schemas = &doc["components"]["schemas"];
    let item = &schemas["shop.gateway.v1.CatalogItem"]["properties"];
    // int64 is a string in the JSON mapping.
    assert_eq!(item["availableQuantity"]["type"], "string");
    assert_eq!(item["availableQuantity"]["pattern"], INT64);
    assert_eq!(
        item["product"]["$ref"],
        "#/components/schemas/shop.catalog.v1.Product"
    );
    let log_in = &schemas["shop.gateway.v1.LogInResponse"]["properties"];
    assert_eq!(log_in["expireTime"]["type"], "string");
    assert_eq!(log_in["expireTime"]["format"], "date-time");
    let list = &schemas["shop.gateway.v1.ListProductsResponse"]["properties"];
    assert_eq!(list["items"]["type"], "array");
    assert_eq!(list["nextPageToken"]["type"], "string");
    let missing = &schemas["shop.gateway.v1.MissingPart"]["properties"]["code"];
    assert_eq!(missing["type"], "integer");
    // No schema forbids more fields or requires any.
    for (name, schema) in schemas.as_object().unwrap() {
        assert!(
            schema.get("additionalProperties") != Some(&json!(false)),
            "{name}"
        );
        if name.starts_with("shop.") {
            assert!(schema.get("required").is_none(), "{name}");
        }
    }
}

#[test]
fn every_reference_resolves() {
    for (name, bytes) in shop::documents().unwrap() {
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        let mut refs = Vec::new();
        references(&doc, &mut refs);
        assert!(!refs.is_empty(), "{name}");
        for target in refs {
            assert!(resolve(&doc, &target).is_some(), "{name}: {target}");
        }
    }
}

#[test]
fn internal_services_are_documented_as_grpc_only() {
    let pool = pool();
    let services = shop::services(&pool);
    assert!(services.contains(&"shop.users.v1.UserService".to_string()));
    assert!(services.contains(&shop::GATEWAY.to_string()));
    assert!(!services.iter().any(|s| s.starts_with("shop.bench.")));
    let users = pool
        .get_service_by_name("shop.users.v1.UserService")
        .unwrap();
    let doc = document(&pool, users.full_name(), &Info::of(&users)).unwrap();
    assert_eq!(doc["x-grpc-only"], true);
    assert!(
        doc["info"]["description"]
            .as_str()
            .unwrap()
            .contains("gRPC only")
    );
    assert_eq!(doc["info"]["version"], "v1");
    assert!(doc["components"].get("securitySchemes").is_none());
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), users.methods().len());
    let create = &paths["/shop.users.v1.UserService/CreateUser"]["post"];
    assert_eq!(create["operationId"], "CreateUser");
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/shop.users.v1.CreateUserRequest"
    );
    assert_eq!(
        create["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/google.rpc.Status"
    );
}

#[test]
fn documents_are_stable_bytes() {
    let once = shop::gateway_document().unwrap();
    assert_eq!(once, shop::gateway_document().unwrap());
    assert_eq!(
        Some(&once),
        shop::documents()
            .unwrap()
            .get(&shop::file_name(shop::GATEWAY))
    );
    assert!(once.ends_with(b"}\n"));
    let text = std::str::from_utf8(&once).unwrap();
    // Keys sorted: "components" comes before "info", "openapi", "paths".
    let at = |key: &str| text.find(&format!("\n  \"{key}\":")).unwrap();
    assert!(at("components") < at("info") && at("info") < at("openapi"));
    assert!(at("openapi") < at("paths"));
}

#[test]
fn the_committed_documents_are_those_of_the_contracts() {
    let drift = shop::check(&committed()).unwrap();
    assert!(
        drift.is_empty(),
        "docs/openapi is not in step with the contracts: {}\nregenerate: cargo run -p shop-http --bin shop-openapi -- write docs/openapi",
        drift
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    // What the gateway serves is the committed file.
    let served = shop::gateway_document().unwrap();
    let file = std::fs::read(committed().join(shop::file_name(shop::GATEWAY))).unwrap();
    assert_eq!(served.as_ref(), file.as_slice());
}

#[test]
fn check_names_missing_differing_and_extra_files() {
    let dir = std::env::temp_dir().join(format!("shop-openapi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        shop::write(&dir).unwrap().len(),
        shop::services(&pool()).len()
    );
    assert_eq!(shop::check(&dir).unwrap(), []);

    let users = shop::file_name("shop.users.v1.UserService");
    let orders = shop::file_name("shop.orders.v1.OrderService");
    std::fs::write(dir.join(&users), b"{}\n").unwrap();
    std::fs::remove_file(dir.join(&orders)).unwrap();
    std::fs::write(dir.join("shop.old.v1.Gone.json"), b"{}\n").unwrap();
    std::fs::write(dir.join("README.md"), b"not a document\n").unwrap();
    let mut drift = shop::check(&dir).unwrap();
    drift.sort_by_key(ToString::to_string);
    assert_eq!(
        drift,
        [
            shop::Drift::Extra("shop.old.v1.Gone.json".to_string()),
            shop::Drift::Missing(orders),
            shop::Drift::Differs(users),
        ]
    );
    // Writing again puts the directory in step, other files untouched.
    shop::write(&dir).unwrap();
    assert_eq!(shop::check(&dir).unwrap(), []);
    assert!(dir.join("README.md").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What the face emits fits the schemas.
mod conformance;
