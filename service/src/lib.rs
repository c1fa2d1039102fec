//! What every Fleetstream service shares: layered configuration ([`config`]), the
//! `/healthz`, `/readyz` and `/metrics` endpoints ([`endpoints`]), the HTTP error format
//! and a JSON extractor that names the offending field ([`error`]), the HTTP listener every
//! role serves on, with its timeouts, connection cap and TLS ([`serve`]), who the client is
//! behind trusted proxies ([`client`]) and the per-address and per-key limits ([`limit`]),
//! tracing setup and
//! the shutdown signal. Consuming topics is `fleet-consumer`'s, the schema registry client
//! `fleet-schema-registry`'s.

pub mod client;
pub mod config;
pub mod endpoints;
pub mod error;
pub mod limit;
mod metrics;
pub mod serve;

pub use error::{ApiError, FieldJson};

/// Initializes `tracing` once: `RUST_LOG`-style filter (default `info`), JSON lines when
/// `json` is true, human-readable otherwise. Later calls do nothing.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("Shutdown requested.");
}
