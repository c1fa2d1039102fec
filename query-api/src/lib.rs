//! The query and admin HTTP API over the stores, and the web dashboard.
//!
//! It answers from the read model and the time-series store only (it never reads a topic
//! on a request), checks every caller's key ([`auth`]), and writes the events operators
//! cause (commands, rules, alert handling, tags, deactivation) to their topics.
//!
//! * [`app::app`] builds the router and [`openapi::document`] the OpenAPI document;
//! * [`state::AppState`] is what every handler gets, configured by [`config::ApiConfig`];
//! * [`auth::Principal`] is the caller, extracted (and the key checked) in one place;
//! * [`query::Params`] extracts a route's typed query parameters, refusing unknown ones;
//! * [`routes`] holds one module per resource;
//! * [`metrics`] counts and times every request by its route, in one middleware.

pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod input;
pub mod metrics;
pub mod openapi;
pub mod query;
pub mod routes;
pub mod samples;
pub mod state;

pub use app::app;
pub use auth::AuthLimits;
pub use config::ApiConfig;
pub use state::AppState;
