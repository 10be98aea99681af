//! The deployment, checked where no cluster can run (no Docker engine, kind
//! or API server here): `k8s/overlays/kind` rendered offline, validated
//! against the Kubernetes 1.32 schemas, checked for what its pods need, and
//! booted from exactly the configuration it gives each workload.
//!
//! Booting: NATS runs as the three-node JetStream cluster its StatefulSet
//! describes, every service with its ConfigMap, environment, arguments and
//! mounted Secrets (minted by `shop_testkit::secrets`, as `just kind-up`
//! mints them); only addresses (cluster DNS names to loopback endpoints) and
//! paths (mount points to directories here) are rewritten. Postgres is the
//! test's own, with each service's role and password from its Secret. A
//! typo in a manifest's configuration fails here as it would fail the pod.

mod common;
#[path = "deploy/manifests.rs"]
mod manifests;
#[path = "deploy/pods.rs"]
mod pods;
#[path = "deploy/service_catalog.rs"]
mod service_catalog;

use common::gateway::{end_user, place_order, settled};
use manifests::{KIND_OVERLAY, Rendered, problems, provided_secrets};
use pods::{Rewrites, materialize};
use serde_json::Value;
use service_catalog::{Catalog, Observed};
use shop_proto::shop::events::v1::ListConsumersRequest;
use shop_proto::shop::events::v1::events_admin_service_client::EventsAdminServiceClient;
use shop_proto::shop::flags::v1::ListFlagsRequest;
use shop_proto::shop::flags::v1::flags_admin_service_client::FlagsAdminServiceClient;
use shop_proto::shop::gateway::v1::shop_gateway_service_client::ShopGatewayServiceClient;
use shop_proto::shop::mesh::v1::mesh_admin_service_client::MeshAdminServiceClient;
use shop_proto::shop::mesh::v1::{GetPolicyRequest, ListUpstreamsRequest};
use shop_proto::shop::orders::v1::OrderStatus;
use shop_testkit::secrets::{OPERATOR, Secrets};
use shop_testkit::stack::{NO_EVENTS, SERVICES, STATELESS};
use shop_testkit::{Postgres, ServiceProcess, eventually, tools};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The services that consume events (and mount EventsAdminService).
const CONSUMING: [&str; 5] = [
    "inventory",
    "payments",
    "orders",
    "notifications",
    "analytics",
];

/// The cluster's namespace and DNS suffix.
const CLUSTER: &str = "shop.svc.cluster.local";

fn root() -> PathBuf {
    tools::repo_root()
}

fn rendered() -> Rendered {
    Rendered::of(&root(), KIND_OVERLAY).expect("the kind overlay renders")
}

/// A copy of `k8s/` to break, and the root it is under.
fn broken_copy(edit: impl FnOnce(&Path)) -> (tempfile::TempDir, Rendered) {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(root().join("k8s"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(
        root().join(manifests::PROVIDED_SECRETS),
        dir.path().join(manifests::PROVIDED_SECRETS),
    )
    .unwrap();
    edit(dir.path());
    let r = Rendered::of(dir.path(), KIND_OVERLAY).expect("the broken copy still renders");
    (dir, r)
}

/// Replaces the one occurrence of `from` in the file at `path`.
fn edit_once(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} occurs once in {}",
        path.display()
    );
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn the_kind_overlay_is_valid_and_gives_every_pod_what_it_reads() {
    let r = rendered();
    if let Err(complaints) = r.validate().unwrap() {
        panic!("kubernetes-validate --strict refuses the overlay:\n{complaints}");
    }
    let provided = provided_secrets(&root()).unwrap();
    let found = problems(&r, &provided);
    assert!(found.is_empty(), "the manifests:\n{}", found.join("\n"));

    // Every service is deployed, from its image, with a PodDisruptionBudget.
    for service in SERVICES {
        let d = r.get("Deployment", service).unwrap();
        let image = d["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap();
        assert!(
            image.starts_with(&format!("shop/{service}:")),
            "{service} runs {image}"
        );
        assert!(
            r.all("PodDisruptionBudget").any(|p| {
                p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == *service
            }),
            "{service} has a PodDisruptionBudget"
        );
    }
    // The Dockerfile builds every service.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for service in SERVICES {
        assert!(
            dockerfile.contains(&format!("-p {service} "))
                || dockerfile.contains(&format!("-p {service}\n")),
            "the Dockerfile builds {service}"
        );
    }

    // What `just kind-up` mints is what the manifests say is provided.
    let minted = tempfile::tempdir().unwrap();
    let secrets = Secrets::mint(minted.path()).unwrap();
    let mut minted: BTreeSet<String> = secrets.names().unwrap().into_iter().collect();
    minted.remove(&format!("{OPERATOR}-identity"));
    assert_eq!(
        minted,
        provided,
        "shop-secrets mints exactly the Secrets {} lists",
        manifests::PROVIDED_SECRETS
    );

    // Every key a workload reads of a provided Secret is one shop-secrets
    // mints (a misspelt key is CreateContainerConfigError in a cluster).
    for w in r.all("Deployment").chain(r.all("StatefulSet")) {
        let spec = manifests::pod_spec(w);
        for c in spec["containers"].as_array().unwrap() {
            for e in c["env"].as_array().into_iter().flatten() {
                let key_ref = &e["valueFrom"]["secretKeyRef"];
                if let (Some(name), Some(key)) = (key_ref["name"].as_str(), key_ref["key"].as_str())
                {
                    assert!(
                        secrets.get(name, key).is_ok(),
                        "{} reads key {key} of Secret {name}, which shop-secrets does not mint",
                        w["metadata"]["name"]
                    );
                }
            }
        }
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let name = v["secret"]["secretName"].as_str();
            for item in v["secret"]["items"].as_array().into_iter().flatten() {
                let key = item["key"].as_str().unwrap();
                assert!(
                    secrets.get(name.unwrap(), key).is_ok(),
                    "{} mounts key {key} of Secret {name:?}, which shop-secrets does not mint",
                    w["metadata"]["name"]
                );
            }
        }
    }

    // NATS's users and permissions are the code's.
    let with_events: Vec<&str> = SERVICES
        .iter()
        .copied()
        .filter(|s| !NO_EVENTS.contains(s))
        .collect();
    let expected = shop_testkit::nats::deployed_authorization(&with_events);
    let auth = root().join("k8s/base/nats/auth.conf");
    if std::env::var_os("SHOP_BLESS").is_some() {
        std::fs::write(&auth, format!("# generated by tests/deploy.rs from shop_events::permissions (SHOP_BLESS=1 to rewrite)\n{expected}")).unwrap();
    }
    let committed = std::fs::read_to_string(&auth).unwrap();
    assert_eq!(
        committed
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
        expected,
        "k8s/base/nats/auth.conf is shop_events::permissions' (run this test with SHOP_BLESS=1 to rewrite it)"
    );
}

#[test]
fn a_broken_manifest_fails_the_checks() {
    let provided = provided_secrets(&root()).unwrap();

    // A probe on a port the container does not declare.
    let (_dir, r) = broken_copy(|k8s| {
        let path = k8s.join("k8s/base/orders/deployment.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let broken = text.replacen("port: 8081", "port: 9081", 1);
        assert_ne!(text, broken, "the orders Deployment has a probe on 8081");
        std::fs::write(&path, broken).unwrap();
    });
    let found = problems(&r, &provided);
    assert!(
        found
            .iter()
            .any(|p| p.contains("Deployment orders") && p.contains("port 9081")),
        "{found:?}"
    );

    // A misspelt field: the schema refuses it.
    let (_dir, r) = broken_copy(|k8s| {
        edit_once(
            &k8s.join("k8s/base/orders/deployment.yaml"),
            "readinessProbe:",
            "readinesProbe:",
        );
    });
    let complaints = r.validate().unwrap().expect_err("a misspelt field fails");
    assert!(complaints.contains("readinesProbe"), "{complaints}");

    // A Secret nobody creates.
    let (_dir, r) = broken_copy(|k8s| {
        edit_once(
            &k8s.join("k8s/base/orders/deployment.yaml"),
            "name: orders-database",
            "name: orders-db",
        );
    });
    let found = problems(&r, &provided);
    assert!(
        found.iter().any(|p| p.contains("Secret orders-db")),
        "{found:?}"
    );
}

#[tokio::test]
async fn a_misspelt_configuration_key_stops_the_service_naming_the_key() {
    let (dir, r) = broken_copy(|k8s| {
        edit_once(
            &k8s.join("k8s/base/orders/orders.toml"),
            "shutdown_grace",
            "shutdown_grase",
        );
    });
    let secrets = Secrets::mint(&dir.path().join("secrets")).unwrap();
    let pod = materialize(
        &r,
        r.workload("orders").unwrap(),
        "orders",
        &dir.path().join("pod"),
        &secrets,
        &Rewrites::default(),
    )
    .unwrap();
    let err = ServiceProcess::start_deployed("orders", pod.args, pod.env, dir.path(), None)
        .await
        .expect_err("orders refuses the configuration");
    assert!(format!("{err:#}").contains("shutdown_grase"), "{err:#}");
}

/// A process started here, stopped by its PID when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain HTTP GET on loopback: the status code.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut head = String::new();
    let _ = s.take(64).read_to_string(&mut head);
    head.split_whitespace().nth(1)?.parse().ok()
}

/// The port a container declares under `name`.
fn port_named(container: &Value, name: &str) -> u16 {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("the container declares no port {name}")) as u16
}

/// NATS as its StatefulSet describes it: one `nats-server` per replica,
/// routes between them, JetStream clustered; the client port of each.
fn boot_nats(r: &Rendered, secrets: &Secrets, dir: &Path) -> (Vec<Started>, Vec<u16>) {
    let sts = r.get("StatefulSet", "nats").unwrap();
    let replicas = sts["spec"]["replicas"].as_u64().unwrap() as usize;
    assert_eq!(replicas, 3, "NATS runs three nodes");
    let headless = sts["spec"]["serviceName"].as_str().unwrap();
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let (client, cluster, monitor) = (
        port_named(container, "client"),
        port_named(container, "cluster"),
        port_named(container, "monitor"),
    );
    let ports: Vec<[u16; 3]> = (0..replicas)
        .map(|_| [(); 3].map(|_| tools::free_port().unwrap()))
        .collect();
    let mut nodes = Vec::new();
    for (i, [c, route, http]) in ports.iter().enumerate() {
        let mut addresses = Rewrites::default();
        for (j, [_, other_route, _]) in ports.iter().enumerate() {
            addresses.add(
                format!("nats-{j}.{headless}.{CLUSTER}:{cluster}"),
                format!("127.0.0.1:{other_route}"),
            );
        }
        // Its own listeners, on every interface in the pod: loopback here.
        addresses.add(format!("0.0.0.0:{client}"), format!("127.0.0.1:{c}"));
        addresses.add(format!("0.0.0.0:{cluster}"), format!("127.0.0.1:{route}"));
        addresses.add(format!("0.0.0.0:{monitor}"), format!("127.0.0.1:{http}"));
        let name = format!("nats-{i}");
        let pod = materialize(r, sts, &name, &dir.join(&name), secrets, &addresses).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let args = if pod.command.is_empty() {
            pod.args.clone()
        } else {
            // `nats-server <args>` as the command: the arguments after it.
            pod.command[1..].iter().chain(&pod.args).cloned().collect()
        };
        let child = Command::new(tools::find("nats-server").unwrap())
            .args(&args)
            .envs(pod.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        nodes.push(Started(child));
    }
    // Started as its startup probe says: JetStream current on every node
    // (a meta leader elected), which streams of three replicas need.
    let probe = &container["startupProbe"]["httpGet"];
    let path = probe["path"].as_str().unwrap_or("/healthz").to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for (i, [_, _, http]) in ports.iter().enumerate() {
        while http_status(*http, &path) != Some(200) {
            if let Some(status) = nodes[i].0.try_wait().unwrap() {
                panic!(
                    "nats-{i} exited ({status}); log:\n{}",
                    std::fs::read_to_string(dir.join(format!("nats-{i}.log"))).unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nats-{i} not ready on {path} after 60 s; log:\n{}",
                std::fs::read_to_string(dir.join(format!("nats-{i}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    (nodes, ports.iter().map(|p| p[0]).collect())
}

#[tokio::test]
async fn every_workload_boots_from_the_rendered_manifests_and_an_order_is_confirmed() {
    let r = rendered();
    let dir = tempfile::tempdir().unwrap();
    let secrets = Secrets::mint(&dir.path().join("secrets")).unwrap();
    let operator = secrets.dir(&format!("{OPERATOR}-identity"));

    let (_nats, nats_ports) = boot_nats(&r, &secrets, dir.path());
    let postgres = Postgres::start().await.unwrap();
    postgres
        .enable_tls(&secrets.dir("postgres-identity"))
        .await
        .unwrap();

    let mut addresses = Rewrites::default();
    addresses.add(
        format!("nats.{CLUSTER}:4222"),
        format!("127.0.0.1:{}", nats_ports[0]),
    );
    addresses.add(
        format!("postgres.{CLUSTER}:5432"),
        format!("127.0.0.1:{}", postgres.port()),
    );
    let mut running: BTreeMap<&str, ServiceProcess> = BTreeMap::new();
    for service in SERVICES {
        if !STATELESS.contains(service) {
            let password = secrets
                .get(&format!("{service}-database"), "password")
                .unwrap();
            postgres
                .create_service_database_with_password(
                    &format!("shop_{service}"),
                    service,
                    &password,
                )
                .await
                .unwrap();
        }
        let pod = materialize(
            &r,
            r.workload(service).unwrap(),
            service,
            &dir.path().join(service),
            &secrets,
            &addresses,
        )
        .unwrap();
        let process = ServiceProcess::start_deployed(
            service,
            pod.args,
            pod.env,
            dir.path(),
            Some(operator.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("{service} from its rendered manifests: {e:#}"));
        // Each probe, as the kubelet would send it, finds its entry SERVING.
        let container = &manifests::pod_spec(r.workload(service).unwrap())["containers"][0];
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let entry = container[probe]["grpc"]["service"].as_str().unwrap_or("");
            assert_eq!(
                process.health_of(entry).await.unwrap(),
                tonic_health::ServingStatus::Serving,
                "{service}'s {probe} (health entry {entry:?})"
            );
        }
        // Its callers find it where the cluster's DNS would send them.
        let service_port = r.get("Service", service).unwrap()["spec"]["ports"][0]["port"]
            .as_u64()
            .unwrap();
        addresses.add(
            format!("{service}.{CLUSTER}:{service_port}"),
            process.addr().to_string(),
        );
        running.insert(service, process);
    }

    // One order, end to end, through the gateway's public port.
    let product = common::stocked_product_on(
        &running["catalog"],
        &running["inventory"],
        Some("Deployed"),
        1_999,
        5,
    )
    .await;
    let gateway = ShopGatewayServiceClient::new(running["gateway"].public_channel().await.unwrap());
    let ada = end_user(gateway.clone(), "ada").await;
    let order = place_order(gateway.clone(), &ada, &product, "tok_approve").await;
    let order = settled(gateway, &ada, &order.order_id).await;
    assert_eq!(order.status(), OrderStatus::Confirmed, "{order:?}");

    // Every consuming service applied what the order published, and each
    // of its consumers has caught up with its stream.
    let mut observed = Observed::default();
    for service in CONSUMING {
        let admin = EventsAdminServiceClient::new(running[service].channel().await.unwrap());
        let consumers = eventually(Duration::from_secs(20), || {
            let mut admin = admin.clone();
            async move {
                let consumers = admin
                    .list_consumers(ListConsumersRequest::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .consumers;
                let caught_up = consumers
                    .iter()
                    .all(|c| c.pending == 0 && c.ack_pending == 0);
                if caught_up && consumers.iter().map(|c| c.applied).sum::<u64>() > 0 {
                    Ok(consumers)
                } else {
                    Err(format!("{service}: {consumers:?}"))
                }
            }
        })
        .await
        .unwrap();
        observed.consumers.insert(
            service.to_string(),
            consumers
                .into_iter()
                .map(|c| (c.name, c.subjects.into_iter().collect()))
                .collect(),
        );
    }
    // Who may call what, as each service enforces it: every method of its
    // own API listed with its callers.
    let policy = MeshAdminServiceClient::new(running["orders"].channel().await.unwrap())
        .get_policy(GetPolicyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .server
        .unwrap();
    assert!(policy.authorization_enforced, "{policy:?}");
    let place = policy
        .methods
        .iter()
        .find(|m| m.method == "/shop.orders.v1.OrderService/PlaceOrder")
        .unwrap_or_else(|| panic!("PlaceOrder is listed: {policy:?}"));
    assert_eq!(place.allowed_callers, ["gateway", "operator"]);
    let flags_admin = policy
        .methods
        .iter()
        .find(|m| m.method == "/shop.flags.v1.FlagsAdminService/EvaluateFlag")
        .unwrap_or_else(|| panic!("EvaluateFlag is listed: {policy:?}"));
    assert_eq!(flags_admin.allowed_callers, ["operator"]);
    // Every service evaluates the shipped flags from the mounted ConfigMap.
    for service in SERVICES {
        let flags = FlagsAdminServiceClient::new(running[service].channel().await.unwrap())
            .list_flags(ListFlagsRequest {})
            .await
            .unwrap()
            .into_inner();
        let keys: Vec<&str> = flags.flags.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(
            keys,
            ["gateway.product-availability", "orders.minimum-order-value"],
            "{service}"
        );
        assert!(
            flags.sources[0].path.ends_with("etc/shop-flags/flags.json")
                && flags.sources[0].last_error.is_empty(),
            "{service}: {:?}",
            flags.sources
        );
    }
    for service in SERVICES {
        let upstreams = MeshAdminServiceClient::new(running[service].channel().await.unwrap())
            .list_upstreams(ListUpstreamsRequest {
                page_size: 100,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .upstreams;
        observed.upstreams.insert(
            service.to_string(),
            upstreams.into_iter().map(|u| u.upstream).collect(),
        );
    }

    // The service catalog says what the running system does.
    let catalog = Catalog::load(&root()).unwrap();
    let found = service_catalog::problems(&catalog, &observed, &root());
    assert!(
        found.is_empty(),
        "{} disagrees with the system:\n{}",
        service_catalog::CATALOG,
        found.join("\n")
    );
    // A subscription dropped from a service's code but not from the
    // catalog is caught.
    let mut dropped = observed.clone();
    assert!(
        dropped
            .consumers
            .get_mut("orders")
            .unwrap()
            .get_mut("orders-payments")
            .unwrap()
            .remove("shop.payments.payment_refunded"),
        "orders-payments subscribes PaymentRefunded"
    );
    let found = service_catalog::problems(&catalog, &dropped, &root());
    assert!(
        found.iter().any(|p| p.starts_with("orders: consumes")),
        "{found:?}"
    );
    // And an upstream the catalog does not name.
    let mut extra = observed;
    extra
        .upstreams
        .get_mut("orders")
        .unwrap()
        .insert("payments".into());
    let found = service_catalog::problems(&catalog, &extra, &root());
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("orders: depends_on.sync")),
        "{found:?}"
    );
}
