//! The `google.api.http` rules of a service, read from a descriptor pool
//! and checked against the request and response messages once, at start.

use crate::template::{Template, TemplateError};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
};

/// Where a request's HTTP body goes.
#[derive(Debug, Clone)]
pub enum BodyRule {
    /// No body: fields not bound by the path come from the query string.
    None,
    /// `body: "*"`: the whole request message, less the path's fields.
    All,
    /// `body: "field"`: that message field; the rest from the query.
    Field(FieldDescriptor),
}

/// One HTTP binding of a gRPC method.
#[derive(Debug, Clone)]
pub struct Route {
    /// The HTTP method.
    pub method: http::Method,
    /// The path template.
    pub template: Template,
    /// The method it maps onto.
    pub rpc: MethodDescriptor,
    /// The gRPC path, `/shop.gateway.v1.ShopGatewayService/GetOrder`.
    pub grpc_path: String,
    /// Where the body goes.
    pub body: BodyRule,
    /// The response field sent as the body; `None` for the whole message.
    pub response_body: Option<FieldDescriptor>,
}

/// Why a service's rules are not usable.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// No such service in the pool.
    #[error("service {0} is not in the descriptor set")]
    NoService(String),
    /// A template that does not parse or is not supported.
    #[error("{method}: {source}")]
    Template {
        /// The method.
        method: String,
        /// What is wrong.
        source: TemplateError,
    },
    /// A rule that does not fit the method's messages.
    #[error("{method}: {reason}")]
    Invalid {
        /// The method.
        method: String,
        /// What is wrong.
        reason: String,
    },
}

/// The routes of `service`, every binding of every annotated method, in
/// declaration order. Methods without a rule are gRPC only.
pub fn routes(pool: &DescriptorPool, service: &str) -> Result<Vec<Route>, RuleError> {
    let svc = pool
        .get_service_by_name(service)
        .ok_or_else(|| RuleError::NoService(service.to_string()))?;
    let Some(http) = pool.get_extension_by_name("google.api.http") else {
        return Ok(Vec::new());
    };
    let mut routes = Vec::new();
    for method in svc.methods() {
        let options = method.options();
        if !options.has_extension(&http) {
            continue;
        }
        let Value::Message(rule) = options.get_extension(&http).into_owned() else {
            continue;
        };
        let mut rules = vec![rule.clone()];
        if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
            rules.extend(more.iter().filter_map(|v| v.as_message().cloned()));
        }
        for rule in rules {
            routes.push(route(&method, &rule)?);
        }
    }
    Ok(routes)
}

fn text(rule: &DynamicMessage, field: &str) -> String {
    rule.get_field_by_name(field)
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn route(method: &MethodDescriptor, rule: &DynamicMessage) -> Result<Route, RuleError> {
    let name = method.full_name().to_string();
    let invalid = |reason: String| RuleError::Invalid {
        method: name.clone(),
        reason,
    };
    if method.is_client_streaming() || method.is_server_streaming() {
        return Err(invalid("streaming methods are not transcoded".into()));
    }
    let mut verb = None;
    for (field, m) in [
        ("get", http::Method::GET),
        ("put", http::Method::PUT),
        ("post", http::Method::POST),
        ("delete", http::Method::DELETE),
        ("patch", http::Method::PATCH),
    ] {
        if rule.has_field_by_name(field) {
            verb = Some((m, text(rule, field)));
        }
    }
    if rule.has_field_by_name("custom")
        && let Some(Value::Message(custom)) = rule.get_field_by_name("custom").as_deref()
    {
        let kind = http::Method::from_bytes(text(custom, "kind").as_bytes())
            .map_err(|e| invalid(format!("custom kind: {e}")))?;
        verb = Some((kind, text(custom, "path")));
    }
    let (http_method, path) = verb.ok_or_else(|| invalid("a rule without a pattern".into()))?;
    let template = Template::parse(&path).map_err(|source| RuleError::Template {
        method: name.clone(),
        source,
    })?;
    let input = method.input();
    for variable in template.variables() {
        let leaf = field_path(&input, variable).map_err(&invalid)?;
        if leaf.is_list() || leaf.is_map() || matches!(leaf.kind(), Kind::Message(_)) {
            return Err(invalid(format!(
                "path variable {} must be a singular scalar field",
                variable.join(".")
            )));
        }
    }
    let body =
        match text(rule, "body").as_str() {
            "" => BodyRule::None,
            "*" => BodyRule::All,
            field => BodyRule::Field(input.get_field_by_name(field).ok_or_else(|| {
                invalid(format!("body field {field} is not in {}", input.name()))
            })?),
        };
    let response_body = match text(rule, "response_body").as_str() {
        "" => None,
        field => Some(method.output().get_field_by_name(field).ok_or_else(|| {
            invalid(format!(
                "response_body field {field} is not in {}",
                method.output().name()
            ))
        })?),
    };
    Ok(Route {
        method: http_method,
        template,
        grpc_path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
        rpc: method.clone(),
        body,
        response_body,
    })
}

/// The field a dotted path names, through singular message fields.
pub(crate) fn field_path(
    message: &MessageDescriptor,
    path: &[String],
) -> Result<FieldDescriptor, String> {
    let mut current = message.clone();
    let mut found = None;
    for (i, name) in path.iter().enumerate() {
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))
            .ok_or_else(|| format!("{} has no field {name}", current.name()))?;
        if i + 1 < path.len() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
                _ => return Err(format!("{name} is not a singular message field")),
            }
        }
        found = Some(field);
    }
    found.ok_or_else(|| "empty field path".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET).unwrap()
    }

    #[test]
    fn the_gateways_rules_are_read_from_its_contract() {
        let routes = routes(&pool(), "shop.gateway.v1.ShopGatewayService").unwrap();
        let find = |grpc: &str| {
            routes
                .iter()
                .find(|r| r.grpc_path.ends_with(grpc))
                .unwrap_or_else(|| panic!("{grpc}"))
        };
        let cancel = find("/CancelOrder");
        assert_eq!(cancel.method, http::Method::POST);
        assert_eq!(cancel.template.to_string(), "/api/orders/{order_id}:cancel");
        assert!(matches!(cancel.body, BodyRule::All));
        let get = find("/GetProduct");
        assert_eq!(get.method, http::Method::GET);
        assert!(matches!(get.body, BodyRule::None));
        assert_eq!(find("/DeactivateAccount").method, http::Method::DELETE);
        assert_eq!(find("/UpdateAccount").method, http::Method::PATCH);
        // Every unary method of the public contract has a binding; the
        // streaming one (WatchOrder) is gRPC and gRPC-Web only.
        let service = pool()
            .get_service_by_name("shop.gateway.v1.ShopGatewayService")
            .unwrap();
        let unary = service.methods().filter(|m| !m.is_server_streaming());
        assert_eq!(routes.len(), unary.count());
        assert!(!routes.iter().any(|r| r.grpc_path.ends_with("/WatchOrder")));
    }

    #[test]
    fn a_service_without_rules_has_no_routes() {
        assert!(
            routes(&pool(), "shop.users.v1.UserService")
                .unwrap()
                .is_empty()
        );
        assert!(routes(&pool(), "shop.nope.v1.Nope").is_err());
    }
}
