//! The operator console: one web page showing what the shop's services
//! report about themselves (health, mesh upstreams and endpoints, retry
//! budgets, refused and shed calls, event consumers and dead letters,
//! feature flags), with the two actions an operator takes there (replay or
//! discard a dead letter).
//!
//! The services' internal ports want the operator's client certificate,
//! which a browser should not hold: this process holds it, calls
//! MeshAdmin, EventsAdmin, FlagsAdmin and the health service of each
//! service over mutual TLS, and serves the page and a JSON API on loopback
//! only. Who may use it: whoever can open a connection to 127.0.0.1 on this
//! machine (the operator's own). The page's origin is the only one
//! allowed: other Host headers are refused (DNS rebinding), and actions
//! need the page's CSRF token, an Origin of the console itself and a JSON
//! body (see [`guard`]).
//!
//! - [`admin`]: the services and the operator's channels to them.
//! - [`overview`]: everything the page shows, gathered in parallel, each
//!   part with its own deadline and error.
//! - [`actions`]: replay and discard, with the operator's reason logged.
//! - [`guard`]: loopback, Host, Origin and CSRF checks.
//! - [`json`]: admin answers as proto3 JSON (the descriptors' own mapping).
//! - [`app`]: the routes.

pub mod actions;
pub mod admin;
pub mod app;
pub mod guard;
pub mod json;
pub mod overview;

pub use admin::{Service, Services};
pub use app::{Console, router};
