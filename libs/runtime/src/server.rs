//! The gRPC server every service runs: its own services plus
//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha, since
//! grpcurl 1.8 only speaks v1alpha), with truthful health and a graceful,
//! bounded drain.
//!
//! Health is SERVING only while the service's dependencies answer: with a
//! database attached, a probe flips every registered service (and the
//! overall `""` entry) to NOT_SERVING when the database stops answering and
//! back when it returns. On shutdown everything goes NOT_SERVING first, then
//! the listener closes and in-flight calls get `shutdown_grace` to finish.
//! The entry `liveness` alone stays SERVING while the process runs: what a
//! liveness probe asks (restarting the pods does not bring a database back).
//!
//! With `[server.tls]` the port is mutual TLS (see [`crate::listener`]):
//! callers present certificates of the trust bundle, the mesh authorizes
//! each call by the caller's SPIFFE ID, and the identity is re-read from
//! disk when it rotates. `server.health_listen` adds a plaintext port that
//! serves health and nothing else, for probes that cannot speak TLS.

use crate::config::{ConfigSource, ServerSettings};
use crate::mesh::MeshRuntime;
use anyhow::Context as _;
use futures::future::BoxFuture;
use shop_identity::Identity;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Service;

/// A bound, not yet serving, gRPC server.
pub struct Application {
    name: &'static str,
    listener: TcpListener,
    local_addr: SocketAddr,
    routes: Routes,
    service_names: Vec<&'static str>,
    database: Option<crate::db::Database>,
    tasks: Vec<(&'static str, BackgroundTask)>,
    grace: Duration,
    mesh: Arc<MeshRuntime>,
    identity: Option<(Identity, Duration)>,
    health_listener: Option<TcpListener>,
    flags: shop_flags::Flags,
    connections: crate::listener::ConnectionLimits,
    reflection: bool,
    http: Option<shop_http::HttpFace>,
}

/// Work a service runs beside its server (an outbox relay, a consumer):
/// given a token that is cancelled once the server has drained.
pub type BackgroundTask = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>;

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("name", &self.name)
            .field("local_addr", &self.local_addr)
            .field("services", &self.service_names)
            .finish_non_exhaustive()
    }
}

/// Static facts about a service, for logs.
#[derive(Debug, Clone, Copy)]
pub struct ServiceInfo {
    /// Short name (`users`), also the config prefix.
    pub name: &'static str,
}

impl Application {
    /// Binds `settings.listen` (port 0 picks a free port) and, when
    /// configured, writes the bound address to `settings.addr_file`.
    pub async fn bind(name: &'static str, settings: &ServerSettings) -> anyhow::Result<Self> {
        settings.mesh.validate()?;
        settings.connections.validate()?;
        raise_open_files_limit();
        let identity = match &settings.tls {
            Some(tls) => {
                let identity = Identity::load(&tls.dir, tls.client_certificates)
                    .with_context(|| format!("server.tls.dir = {}", tls.dir.display()))?;
                tracing::info!(id = %identity.id(), client_certificates = ?tls.client_certificates, "mutual TLS with a workload identity");
                Some((identity, tls.reload_interval))
            }
            None => {
                tracing::warn!(
                    "no server.tls: plaintext, no caller identities, no authorization (a development server)"
                );
                None
            }
        };
        let listener = bind_writing(
            settings.listen,
            settings.addr_file.as_deref(),
            "server.listen",
        )
        .await?;
        let local_addr = listener.local_addr()?;
        let health_listener = match settings.health_listen {
            Some(addr) => Some(
                bind_writing(
                    addr,
                    settings.health_addr_file.as_deref(),
                    "server.health_listen",
                )
                .await?,
            ),
            None => None,
        };
        let flags = shop_flags::Flags::load(&settings.flags)
            .await
            .context("server.flags")?;
        let mesh = MeshRuntime::new(
            settings.mesh.clone(),
            identity.as_ref().map(|(identity, _)| identity.clone()),
        );
        Ok(Self {
            name,
            listener,
            local_addr,
            routes: Routes::default(),
            service_names: Vec::new(),
            database: None,
            tasks: Vec::new(),
            grace: settings.shutdown_grace,
            mesh,
            identity,
            health_listener,
            flags,
            connections: settings.connections.clone(),
            reflection: settings.reflection,
            http: None,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The service's mesh: build upstream clients with
    /// [`MeshRuntime::upstream`].
    pub fn mesh(&self) -> Arc<MeshRuntime> {
        self.mesh.clone()
    }

    /// The service's feature flags (`[server.flags]`), reloaded live and
    /// explained by `shop.flags.v1.FlagsAdminService`, which every server
    /// serves.
    pub fn flags(&self) -> shop_flags::Flags {
        self.flags.clone()
    }

    /// Watches the configuration file and applies changed mesh policies
    /// without a restart; an invalid change is logged and ignored.
    pub fn watch_config(self, source: ConfigSource) -> Self {
        let mesh = self.mesh.clone();
        self.with_task("config-watch", move |shutdown| {
            Box::pin(watch_config(source, mesh, shutdown))
        })
    }

    /// Serves a generated tonic service; its health entry follows the
    /// service's dependencies.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes = self.routes.add_service(service);
        self.service_names.push(S::NAME);
        // MeshAdmin's GetPolicy lists its methods, each with who may call it.
        self.mesh.admin().register_service(S::NAME);
        self
    }

    /// Also serves HTTP/1.1 on the port (ALPN `http/1.1` besides `h2`
    /// under TLS): REST/JSON by `face`'s rules, and gRPC-Web (tonic-web),
    /// both turned into gRPC calls in front of the same stack, so they meet
    /// the same authorization, limits, deadlines, metrics and handlers.
    pub fn with_http_face(mut self, face: shop_http::HttpFace) -> Self {
        self.http = Some(face);
        self
    }

    /// Ties health to `database`, probed every `database.probe_interval`,
    /// and tells each call what the last probe found (a busy pool is then
    /// overload, not an outage).
    pub fn with_database(mut self, database: crate::db::Database) -> Self {
        self.database = Some(database);
        self
    }

    /// Runs `task` beside the server from the start; on shutdown it is
    /// cancelled after the server has drained, and awaited (within the
    /// grace period).
    pub fn with_task<F>(mut self, name: &'static str, task: F) -> Self
    where
        F: FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send + 'static,
    {
        self.tasks.push((name, Box::new(task)));
        self
    }

    /// Serves until `shutdown` resolves, then drains (bounded by the grace
    /// period) and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application {
            name,
            listener,
            local_addr,
            routes,
            service_names,
            database,
            tasks,
            grace,
            mesh,
            identity,
            health_listener,
            flags,
            connections,
            reflection,
            http,
        } = self;

        mesh.admin().register_service(FLAGS_ADMIN);
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let mut routes = routes;
        if reflection {
            routes = routes
                .add_service(reflection_service(&service_names).build_v1()?)
                .add_service(reflection_service(&service_names).build_v1alpha()?);
        }
        let routes = routes
            .add_service(
                shop_proto::shop::mesh::v1::mesh_admin_service_server::MeshAdminServiceServer::from_arc(
                    mesh.admin(),
                ),
            )
            .add_service(flags.admin())
            .add_service(health_service.clone());

        let health = Health {
            reporter,
            names: service_names,
        };
        // Not serving until the first probe says the dependencies answer.
        health.set(ServingStatus::NotServing).await;
        // Liveness: the process answers; its dependencies are readiness's
        // business (a database outage must not get every pod restarted).
        health
            .reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        let reachability = database
            .as_ref()
            .map(crate::db::Database::reachability)
            .unwrap_or_default();
        let probe = match database {
            Some(database) => tokio::spawn(probe_loop(health.clone(), database)),
            None => {
                health.set(ServingStatus::Serving).await;
                tokio::spawn(std::future::pending())
            }
        };

        let stop_tasks = CancellationToken::new();
        let mut running = tokio::task::JoinSet::new();
        if let Some((identity, interval)) = &identity {
            running.spawn(identity.clone().watch(*interval, stop_tasks.clone()));
        }
        running.spawn(flags.watch(stop_tasks.clone()));
        let stop_health = CancellationToken::new();
        if let Some(listener) = health_listener {
            let stop = stop_health.clone();
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            running.spawn(async move {
                let served = tonic::transport::Server::builder()
                    .add_service(health_service)
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, "health port stopped");
                }
            });
        }
        for (task_name, task) in tasks {
            let future = task(stop_tasks.clone());
            running.spawn(async move {
                future.await;
                tracing::debug!(task = task_name, "background task stopped");
            });
        }

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let protocols = if http.is_some() {
            crate::listener::Protocols::Http2AndHttp1
        } else {
            crate::listener::Protocols::Http2
        };
        let incoming = crate::listener::incoming_with(
            listener,
            identity.map(|(identity, _)| identity),
            connections.clone(),
            protocols,
        );
        let grpc_web = http.as_ref().map(|_| tonic_web::GrpcWebLayer::new());
        let server = tonic::transport::Server::builder()
            .accept_http1(http.is_some())
            // HTTP/2 limits: a client opening more streams than this gets
            // them refused, and header lists beyond the limit are refused,
            // so one connection cannot take the whole process.
            .max_concurrent_streams(connections.max_concurrent_streams)
            .http2_max_header_list_size(connections.max_header_list_size)
            .http2_max_pending_accept_reset_streams(Some(
                connections.max_pending_accept_reset_streams,
            ))
            // tonic passes no bound here unless told, which lifts h2's own.
            .http2_max_local_error_reset_streams(Some(connections.max_local_error_reset_streams))
            // A span per call, a child of the caller's (its `traceparent`,
            // sent by the mesh client) when there is one, naming the caller.
            .trace_fn(|req| {
                // The caller's SPIFFE ID, verified at the handshake, on every
                // line logged for the call (empty over plaintext).
                let caller = req
                    .extensions()
                    .get::<shop_identity::Peer>()
                    .and_then(|p| p.identity.as_ref())
                    .map_or("", |id| id.as_str());
                let span = shop_mesh::span::server(req.uri().path(), caller);
                if let Some(parent) = req
                    .headers()
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                {
                    crate::telemetry::set_remote_parent(&span, parent);
                }
                span
            })
            // The mesh's server side: deadline from grpc-timeout, concurrency
            // limit with shedding, fault injection (health and reflection
            // are never shed or faulted).
            // Each call also learns whether the database answers.
            // With an HTTP face: REST/JSON becomes gRPC, then gRPC-Web
            // becomes gRPC, both before the mesh sees the call (tonic-web
            // refuses any other HTTP/1.1 request, so the face goes first).
            .layer(
                tower::ServiceBuilder::new()
                    .option_layer(http)
                    .option_layer(grpc_web)
                    .layer(mesh.server_layer())
                    .layer(crate::db::reachability::ReachabilityLayer(reachability)),
            )
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            });
        tokio::pin!(server);
        tracing::info!(service = name, addr = %local_addr, "serving");

        tokio::select! {
            result = &mut server => {
                probe.abort();
                stop_tasks.cancel();
                stop_health.cancel();
                return result.context("server stopped unexpectedly");
            }
            () = shutdown => {}
        }

        tracing::info!(grace = ?grace, "shutting down: NOT_SERVING, draining");
        probe.abort();
        health.set(ServingStatus::NotServing).await;
        let _ = stop_tx.send(());
        let deadline = tokio::time::Instant::now() + grace;
        match tokio::time::timeout_at(deadline, server).await {
            Ok(result) => result.context("server failed while draining")?,
            Err(_) => tracing::warn!("grace period over; abandoning calls still in flight"),
        }
        // Consumers and relays stop after the calls that may have written
        // outbox rows have finished; the health port goes with them.
        stop_tasks.cancel();
        stop_health.cancel();
        if tokio::time::timeout_at(deadline, async {
            while running.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("grace period over; abandoning background tasks");
            running.abort_all();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Raises the soft limit on open files to the hard one: every connection
/// is a file, and the connection limits, not the default soft limit of
/// 1024, should be what refuses clients.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "could not raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not read the open files limit"),
    }
}

/// Binds `addr` and, when asked, writes the bound address to `file` (write
/// then rename, so a reader never sees half an address); `key` names the
/// setting in errors.
async fn bind_writing(
    addr: SocketAddr,
    file: Option<&std::path::Path>,
    key: &str,
) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {key} = {addr}"))?;
    if let Some(path) = file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, listener.local_addr()?.to_string())
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("writing the address of {key} to {}", path.display()))?;
    }
    Ok(listener)
}

/// Reflection over what this server really serves: its own services,
/// health and reflection itself. Descriptors of every contract are
/// registered, so message types of other packages (and `google.rpc` error
/// details, which grpcurl then decodes) resolve.
fn reflection_service(
    service_names: &[&'static str],
) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(shop_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .include_reflection_service(false)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
        .with_service_name("shop.mesh.v1.MeshAdminService")
        .with_service_name(FLAGS_ADMIN);
    for name in service_names {
        builder = builder.with_service_name(*name);
    }
    builder
}

const FLAGS_ADMIN: &str = "shop.flags.v1.FlagsAdminService";

/// The health entry that is SERVING while the process runs, whatever its
/// dependencies say (a liveness probe's `service`).
pub const LIVENESS: &str = "liveness";

#[derive(Clone)]
struct Health {
    reporter: HealthReporter,
    names: Vec<&'static str>,
}

impl Health {
    async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for name in &self.names {
            self.reporter.set_service_status(*name, status).await;
        }
    }
}

async fn probe_loop(health: Health, database: crate::db::Database) {
    let mut current = None;
    let mut ticker = tokio::time::interval(database.probe_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let up = database.probe().await;
        if current != Some(up) {
            if up {
                tracing::info!("database answers: SERVING");
                health.set(ServingStatus::Serving).await;
            } else {
                tracing::warn!("database does not answer: NOT_SERVING");
                health.set(ServingStatus::NotServing).await;
            }
            current = Some(up);
        }
    }
}

/// Polls the configuration file's modification time; on a change, reads the
/// mesh policies again and applies them.
async fn watch_config(source: ConfigSource, mesh: Arc<MeshRuntime>, shutdown: CancellationToken) {
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut last = modified(&source.file);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = modified(&source.file);
        if now == last {
            continue;
        }
        last = now;
        let view = crate::config::load_mesh_view(
            source.service,
            source.defaults,
            source.aliases,
            Some(&source.file),
        );
        match view.map_err(|e| e.to_string()).and_then(|v| {
            mesh.apply(v.server.mesh, &v.upstreams)
                .map_err(|e| e.to_string())
        }) {
            Ok(changed) => {
                tracing::info!(changed, file = %source.file.display(), "mesh policy reloaded")
            }
            Err(e) => {
                tracing::error!(error = %e, file = %source.file.display(), "invalid mesh policy change ignored; keeping the previous policy")
            }
        }
    }
}
