//! The gateway: the shop's one public entry point, stateless.
//!
//! - [`config`]: settings (`[auth]` keys and checks, `[limits]`,
//!   `[details]`, `[upstreams.*]` mesh policies).
//! - `auth`: bearer tokens verified (`shop_auth`) and their subjects
//!   checked against users.
//! - `limits`: token buckets per email and per peer on LogIn and SignUp.
//! - `parts`: optional parts of an answer, each within its share of the
//!   caller's deadline, missing with a reason when late or failed.
//! - `upstream`: mesh clients of users, catalog, inventory, orders and
//!   payments, and how their failures are answered.
//! - `watch`: WatchOrder's streams, bounded in number and time.
//! - `api`: `shop.gateway.v1.ShopGatewayService`.

pub mod config;

mod api;
mod auth;
mod limits;
mod parts;
mod upstream;
mod watch;

pub use config::Config;

use anyhow::Context as _;
use shop_auth::{KeyDir, Verifier};
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_proto::shop::gateway::v1::shop_gateway_service_server::ShopGatewayServiceServer;
use shop_proto::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
use shop_proto::shop::orders::v1::order_service_client::OrderServiceClient;
use shop_proto::shop::payments::v1::payment_service_client::PaymentServiceClient;
use shop_proto::shop::users::v1::user_service_client::UserServiceClient;
use shop_runtime::Application;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often buckets of idle callers are dropped.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

/// The public contract's REST/JSON face, checked against its messages.
fn http_face(settings: &config::HttpSettings) -> anyhow::Result<shop_http::HttpFace> {
    let pool = shop_http::descriptor_pool(shop_proto::FILE_DESCRIPTOR_SET)?;
    let limits = shop_http::Limits {
        max_request_bytes: settings.max_request_bytes,
        ..shop_http::Limits::default()
    };
    let service = <ShopGatewayServiceServer<api::GatewayApi> as tonic::server::NamedService>::NAME;
    // The document committed under docs/openapi, generated again from the
    // same descriptors (a unit test of shop-http keeps the two equal).
    let openapi = shop_http::openapi::shop::gateway_document()?;
    let face = shop_http::HttpFace::new(pool, service, limits)?.with_openapi(openapi);
    Ok(match &settings.site_dir {
        Some(dir) => {
            let site = shop_http::Site::load(dir).context("http.site_dir")?;
            tracing::info!(dir = %dir.display(), files = site.len(), "the storefront at /");
            face.with_site(site)
        }
        None => face,
    })
}

/// Loads the token keys, builds the upstream clients and binds the server.
pub async fn build(config: Config) -> anyhow::Result<Application> {
    config.validate()?;
    let auth = &config.auth;
    let key_dir = KeyDir::new(&auth.public_keys_dir);
    let keys = key_dir.load().context("auth.public_keys_dir")?;
    tracing::info!(kids = ?keys.keys().collect::<Vec<_>>(), "token verification keys loaded");
    let keys = Arc::new(RwLock::new(Arc::new(keys)));
    let verifier = Verifier::new(keys.clone(), &auth.issuer, &auth.audience, auth.leeway);

    let app = Application::bind("gateway", &config.server).await?;
    let mesh = app.mesh();
    let u = &config.upstreams;
    let up = upstream::Upstreams {
        users: UserServiceClient::new(mesh.upstream("users", &u.users)?),
        catalog: CatalogServiceClient::new(mesh.upstream("catalog", &u.catalog)?),
        inventory: InventoryServiceClient::new(mesh.upstream("inventory", &u.inventory)?),
        orders: OrderServiceClient::new(mesh.upstream("orders", &u.orders)?),
        payments: PaymentServiceClient::new(mesh.upstream("payments", &u.payments)?),
    };
    let max_tracked = config.limits.max_tracked;
    let login = Arc::new(limits::Limiter::new(
        "log-in",
        &config.limits.login,
        max_tracked,
    ));
    let signup = Arc::new(limits::Limiter::new(
        "sign-up",
        &config.limits.signup,
        max_tracked,
    ));
    let api = api::GatewayApi {
        auth: auth::Authenticator::new(verifier, up.users.clone(), auth.subject_cache_ttl),
        up,
        login: login.clone(),
        signup: signup.clone(),
        budget: parts::Budget::new(config.details.part_share, config.details.part_timeout),
        flags: app.flags(),
        watches: watch::Watches::new(&config.watch),
    };
    let refresh = auth.keys_refresh;
    let face = http_face(&config.http)?;
    tracing::info!(
        operations = face.routes(),
        "REST/JSON and gRPC-Web on the same port"
    );
    Ok(app
        .add_service(ShopGatewayServiceServer::new(api))
        .with_http_face(face)
        .with_task("token-keys", move |shutdown| {
            Box::pin(key_dir.watch(keys, refresh, shutdown))
        })
        .with_task("limits-gc", move |shutdown| {
            Box::pin(async move {
                let mut every = tokio::time::interval(FORGET_IDLE_EVERY);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        _ = every.tick() => {
                            login.forget_idle();
                            signup.forget_idle();
                        }
                    }
                }
            })
        }))
}
