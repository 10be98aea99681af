use super::upstream::*;
use super::*;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn the_readme_example_is_a_valid_policy() {
    #[derive(Deserialize)]
    struct Example {
        upstreams: BTreeMap<String, UpstreamPolicy>,
        server: Server,
    }
    #[derive(Deserialize)]
    struct Server {
        mesh: ServerPolicy,
    }
    // The policy example of the mesh's page (docs/mesh.md), as written.
    let readme = include_str!("../../../../docs/mesh.md");
    let start = readme
        .find("[upstreams.catalog]                      # orders.toml")
        .expect("the policy example of docs/mesh.md");
    let block = &readme[start..];
    let block = &block[..block.find("```").expect("the end of the block")];
    let example: Example = toml::from_str(block).unwrap();
    for (name, upstream) in &example.upstreams {
        upstream.validate(name).unwrap();
    }
    example.server.mesh.validate().unwrap();
    assert!(example.server.mesh.rate_limit.identity.is_some());
}

fn policy() -> UpstreamPolicy {
    UpstreamPolicy {
        keepalive: KeepalivePolicy::default(),
        throttle: Default::default(),
        adaptive_concurrency: Default::default(),
        identity: None,
        endpoints: vec!["http://127.0.0.1:7102".into()],
        dns: None,
        dns_refresh: d_dns_refresh(),
        timeout: d_timeout(),
        connect_timeout: d_connect_timeout(),
        ewma_decay: d_ewma_decay(),
        retry: RetryPolicy::default(),
        hedge: Some(HedgePolicy {
            delay: Duration::from_millis(50),
            max_hedges: 1,
        }),
        outlier: OutlierPolicy::default(),
        subsets: vec![],
        fault: FaultPolicy::default(),
        methods: BTreeMap::from([(
            "ListProducts".to_string(),
            MethodPolicy {
                timeout: Some(Duration::from_millis(500)),
                ..MethodPolicy::default()
            },
        )]),
    }
}

#[test]
fn only_methods_the_contract_marks_safe_are_retried_or_hedged() {
    let p = policy();
    let read = p.effective("/shop.catalog.v1.CatalogService/GetProduct");
    assert_eq!(read.retry.max_attempts, 3);
    assert!(read.hedge.is_some());
    let idempotent = p.effective("/shop.catalog.v1.CatalogService/UpdateProduct");
    assert_eq!(idempotent.retry.max_attempts, 3);
    assert!(idempotent.hedge.is_none(), "hedging is for reads only");
    let create = p.effective("/shop.catalog.v1.CatalogService/CreateProduct");
    assert_eq!(create.retry.max_attempts, 1);
    let unknown = p.effective("/other.v1.Other/Do");
    assert_eq!(unknown.retry.max_attempts, 1);
}

#[test]
fn the_cache_follows_policy_versions() {
    let cache = EffectiveCache::default();
    let path = "/shop.catalog.v1.CatalogService/ListProducts";
    let first = Arc::new(policy());
    let a = cache.get(&first, path);
    assert!(Arc::ptr_eq(&a, &cache.get(&first, path)), "remembered");
    assert_eq!(*a, first.effective(path));
    let mut changed = policy();
    changed.methods.clear();
    let second = Arc::new(changed);
    assert_eq!(cache.get(&second, path).timeout, Duration::from_secs(2));
    for i in 0..EffectiveCache::CAPACITY + 10 {
        cache.get(&second, &format!("/x.v1.X/M{i}"));
    }
    assert!(cache.inner.lock().unwrap().by_path.len() <= EffectiveCache::CAPACITY);
}

#[test]
fn method_overrides_apply() {
    let p = policy();
    assert_eq!(
        p.effective("/shop.catalog.v1.CatalogService/ListProducts")
            .timeout,
        Duration::from_millis(500)
    );
    assert_eq!(
        p.effective("/shop.catalog.v1.CatalogService/GetProduct")
            .timeout,
        Duration::from_secs(2)
    );
}

#[test]
fn invalid_policies_name_the_key() {
    let mut p = policy();
    p.retry.max_attempts = 0;
    assert_eq!(
        p.validate("catalog").unwrap_err().key,
        "upstreams.catalog.retry.max_attempts"
    );
    let mut p = policy();
    p.outlier.max_ejected_percent = 150;
    assert_eq!(
        p.validate("catalog").unwrap_err().key,
        "upstreams.catalog.outlier.max_ejected_percent"
    );
    let mut p = policy();
    p.endpoints = vec!["not a uri".into()];
    assert_eq!(
        p.validate("catalog").unwrap_err().key,
        "upstreams.catalog.endpoints"
    );
    assert!(policy().validate("catalog").is_ok());
}

#[test]
fn a_reload_applies_what_a_running_client_can_and_names_the_rest() {
    let mut running = policy();
    running.endpoints = vec!["http://10.0.0.1:7000".into(), "http://10.0.0.2:7000".into()];
    running.subsets = vec![
        Subset {
            name: "v1".into(),
            weight: 90,
            endpoints: vec!["http://10.0.0.1:7000".into()],
        },
        Subset {
            name: "v2".into(),
            weight: 10,
            endpoints: vec!["http://10.0.0.2:7000".into()],
        },
    ];
    let mut next = running.clone();
    next.timeout = Duration::from_millis(700);
    next.endpoints.push("http://10.0.0.3:7000".into());
    next.connect_timeout = Duration::from_secs(3);
    next.subsets[0].weight = 50;
    next.subsets[1].endpoints = vec!["http://10.0.0.3:7000".into()];
    next.subsets.push(Subset {
        name: "v3".into(),
        weight: 5,
        endpoints: vec!["http://10.0.0.3:7000".into()],
    });

    let (in_force, pending) = running.reloadable(&next);
    assert_eq!(
        pending,
        [
            "endpoints",
            "connect_timeout",
            "subsets.v2.endpoints",
            "subsets.v3"
        ]
    );
    assert_eq!(in_force.timeout, Duration::from_millis(700), "applied live");
    assert_eq!(in_force.endpoints, running.endpoints, "kept");
    assert_eq!(in_force.connect_timeout, running.connect_timeout, "kept");
    let weights: Vec<(&str, u32)> = in_force
        .subsets
        .iter()
        .map(|s| (s.name.as_str(), s.weight))
        .collect();
    assert_eq!(weights, [("v1", 50), ("v2", 10)]);
    assert_eq!(in_force.subsets[1].endpoints, running.subsets[1].endpoints);

    let (_, none) = running.reloadable(&running);
    assert!(none.is_empty());
    let mut dropped = running.clone();
    dropped.subsets.truncate(1);
    let (in_force, pending) = running.reloadable(&dropped);
    assert!(pending.is_empty());
    assert_eq!(
        in_force.subsets[1].weight, 0,
        "a dropped subset gets no traffic"
    );
}

#[test]
fn hedging_is_bounded_and_a_method_has_no_budget_of_its_own() {
    let mut p = policy();
    p.hedge = Some(HedgePolicy {
        delay: Duration::from_millis(20),
        max_hedges: MAX_HEDGES + 1,
    });
    assert_eq!(
        p.validate("catalog").unwrap_err().key,
        "upstreams.catalog.hedge.max_hedges"
    );
    let mut p = policy();
    p.methods.insert(
        "GetProduct".into(),
        MethodPolicy {
            hedge: Some(HedgePolicy {
                delay: Duration::ZERO,
                max_hedges: 1,
            }),
            ..MethodPolicy::default()
        },
    );
    assert_eq!(
        p.validate("catalog").unwrap_err().key,
        "upstreams.catalog.methods.GetProduct.hedge.delay"
    );

    // A method's retry runs under the upstream's budget; a budget
    // written under a method is refused, not silently ignored.
    let mut p = policy();
    p.retry.budget.ratio = 0.5;
    p.methods.insert(
        "GetProduct".into(),
        MethodPolicy {
            retry: Some(MethodRetryPolicy {
                max_attempts: 5,
                per_try_timeout: None,
                on: d_retry_on(),
                backoff: BackoffPolicy::default(),
                max_buffered_bytes: d_max_buffered(),
            }),
            ..MethodPolicy::default()
        },
    );
    let effective = p.effective("/shop.catalog.v1.CatalogService/GetProduct");
    assert_eq!(effective.retry.max_attempts, 5);
    assert_eq!(effective.retry.budget.ratio, 0.5);
    let refused = serde_json::from_str::<MethodPolicy>(r#"{"retry": {"budget": {"ratio": 1.0}}}"#);
    assert!(refused.unwrap_err().to_string().contains("budget"));
}

#[test]
fn codes_are_written_by_name() {
    let code: GrpcCode = serde_json_like("\"resource_exhausted\"");
    assert_eq!(code.0, tonic::Code::ResourceExhausted);
}

fn serde_json_like(s: &str) -> GrpcCode {
    use serde::de::IntoDeserializer;
    let name = s.trim_matches('"').to_string();
    let d: serde::de::value::StringDeserializer<serde::de::value::Error> = name.into_deserializer();
    GrpcCode::deserialize(d).unwrap()
}
