//! Serving a role's HTTP listener: one accept loop for the gateway, the query API and the
//! ops endpoints of every role, with bounds a slow or hostile client cannot stretch.
//!
//! * [`HttpSettings`]: the `[http]` section of the gateway and projections configurations
//!   (timeouts, connection cap, TLS files), one struct so every listener is bounded the
//!   same way;
//! * [`HttpServer`]: binds, loads the certificate, and serves a [`Router`] until shutdown:
//!   - a connection cap: a semaphore permit per accepted connection, held for the
//!     connection's life (WebSockets included); when all are taken the loop stops
//!     accepting and new connections wait in the kernel's accept queue;
//!   - a header-read timeout (hyper's), which also bounds the TLS handshake and the idle
//!     time of a kept-alive connection (hyper starts it whenever it waits for a request);
//!   - a whole-request timeout covering a slowly sent body: 408 in the API error format;
//!   - HTTP/1.1 with upgrades (WebSockets); each request carries
//!     [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo) of the peer;
//!   - graceful shutdown: stop accepting, let open requests finish, for at most the
//!     whole-request timeout (every handler answers within it, so only a response body
//!     still streaming after it, such as a command's Server-Sent Events, is cut; without
//!     the bound a stop waited for such a stream to end).
//! * [`ReloadableCert`]: the certificate and key (PEM), re-read on SIGHUP and when their
//!   modification times change; a failed reload keeps the old pair and logs why.
//!
//! HTTP/2 is not offered: agents (reqwest without `http2`, tungstenite) and browsers use
//! HTTP/1.1 here, and only HTTP/1 gets hyper's header-read timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::{metrics, ApiError};

/// Settings of one HTTP listener (`[http]` in the gateway and projections
/// configurations). Every key has a default; see `config/*.example.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct HttpSettings {
    /// How long a client has to send a request's headers once the server waits for them:
    /// from the connection's start (the TLS handshake has the same bound), and after each
    /// answer on a kept-alive connection, so it is also the idle keep-alive timeout.
    /// Past it the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time from a request's headers to its answer, reading the body included; past it
    /// the server answers 408 and the connection is closed. Does not bound a WebSocket
    /// once upgraded (the gateway's `ws-idle-timeout` does).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most connections open at once, WebSockets included. When all are taken the server
    /// stops accepting until one closes (new ones wait in the kernel's accept queue).
    /// Keep it below the process's open-file limit (`LimitNOFILE`).
    pub max_connections: usize,
    /// PEM file with the certificate chain (leaf first). With `tls-key`, the listener
    /// serves HTTPS only; both unset: plain HTTP (a warning when the address is not
    /// loopback).
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// Time between checks of the certificate and key files' modification times; a
    /// change reloads them, as SIGHUP does. 0: on SIGHUP only.
    #[serde(with = "humantime_serde")]
    pub tls_reload_check: Duration,
    /// When set, `/metrics` answers only a request with `Authorization: Bearer <token>`
    /// (Prometheus: `authorization: {credentials: ...}` in the scrape config); others get
    /// 401. Unset: `/metrics` is open, with a warning at start when the address is not
    /// loopback. At least 16 characters.
    pub metrics_token: Option<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            tls_cert: None,
            tls_key: None,
            tls_reload_check: Duration::from_secs(5),
            metrics_token: None,
        }
    }
}

impl HttpSettings {
    /// The same settings with another connection cap (a role's own default).
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Whether certificate and key are both set.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// Checks ranges and that the TLS files come as a pair.
    pub fn validate(&self) -> Result<(), ServeError> {
        let invalid =
            |key: &str, message: &str| Err(ServeError::Config(format!("http.{key} {message}")));
        if self.header_read_timeout < Duration::from_millis(1) {
            return invalid("header-read-timeout", "must be at least 1ms");
        }
        if self.request_timeout < Duration::from_millis(1) {
            return invalid("request-timeout", "must be at least 1ms");
        }
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS {
            return invalid("max-connections", "must be at least 1");
        }
        if self
            .metrics_token
            .as_ref()
            .is_some_and(|t| t.chars().count() < MIN_METRICS_TOKEN_CHARS)
        {
            return invalid(
                "metrics-token",
                "must be at least 16 characters (generate one: `openssl rand -base64 32`)",
            );
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => invalid("tls-cert", "is set without http.tls-key: set both"),
            (None, Some(_)) => invalid("tls-key", "is set without http.tls-cert: set both"),
            _ => Ok(()),
        }
    }
}

/// Why a listener could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The settings are inconsistent.
    #[error("{0}")]
    Config(String),
    /// The address could not be bound.
    #[error("{server}: cannot listen on {addr} (in use? change `listen` in the config): {source}")]
    Bind {
        /// Which listener.
        server: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The accept loop failed.
    #[error("{server}: {source}")]
    Io {
        /// Which listener.
        server: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Modification times and sizes of the certificate and key files.
type Stamp = Option<[(SystemTime, u64); 2]>;

/// A certificate and key read from PEM files, swapped in place on reload: handshakes
/// after a reload present the new certificate, open connections keep theirs.
#[derive(Debug)]
pub struct ReloadableCert {
    server: &'static str,
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The files as last read (successfully or not), to notice a change.
    stamp: Mutex<Stamp>,
}

fn file_stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    Some([one(cert)?, one(key)?])
}

fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, ServeError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServeError::Tls(format!("certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "certificate {}: no CERTIFICATE block found",
            cert.display()
        )));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServeError::Tls(format!("private key {}: {e}", key.display())))?;
    CertifiedKey::from_der(certs, private, &rustls::crypto::ring::default_provider()).map_err(|e| {
        ServeError::Tls(format!(
            "certificate {} with key {}: {e}",
            cert.display(),
            key.display()
        ))
    })
}

impl ReloadableCert {
    /// Reads the certificate chain and key; fails when either is unreadable or they do not
    /// match.
    pub fn load(server: &'static str, cert: &Path, key: &Path) -> Result<Self, ServeError> {
        let stamp = file_stamp(cert, key);
        let loaded = load_certified_key(cert, key)?;
        Ok(ReloadableCert {
            server,
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            current: ArcSwap::from_pointee(loaded),
            stamp: Mutex::new(stamp),
        })
    }

    /// Reads the files again; on failure the current pair stays and the error is
    /// returned (and counted).
    pub fn reload(&self) -> Result<(), ServeError> {
        let stamp = file_stamp(&self.cert_path, &self.key_path);
        *self.stamp.lock().unwrap_or_else(PoisonError::into_inner) = stamp;
        match load_certified_key(&self.cert_path, &self.key_path) {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded));
                metrics::tls_reload(self.server, "ok");
                tracing::info!(server = self.server, cert = %self.cert_path.display(), "TLS certificate reloaded.");
                Ok(())
            }
            Err(e) => {
                metrics::tls_reload(self.server, "failed");
                tracing::error!(server = self.server, error = %e, "TLS certificate reload failed; keeping the previous certificate.");
                Err(e)
            }
        }
    }

    /// Whether the files changed since they were last read.
    fn changed(&self) -> bool {
        let now = file_stamp(&self.cert_path, &self.key_path);
        *self.stamp.lock().unwrap_or_else(PoisonError::into_inner) != now
    }

    /// The certificate chain served now (leaf first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }

    /// Reloads on SIGHUP and, every `check` (unless zero), when the files changed; runs
    /// until dropped with its task.
    async fn watch(self: Arc<Self>, check: Duration) {
        #[cfg(unix)]
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot watch SIGHUP; the certificate reloads on file change only.");
                None
            }
        };
        let poll = !check.is_zero();
        let mut tick = tokio::time::interval(if poll {
            check
        } else {
            Duration::from_secs(3600)
        });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<()>();
            tokio::select! {
                () = signalled => {
                    tracing::info!(server = self.server, "SIGHUP: reloading the TLS certificate.");
                    let _ = self.reload();
                }
                _ = tick.tick(), if poll => {
                    if self.changed() {
                        let _ = self.reload();
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls server configuration over a reloadable certificate: TLS 1.2 and 1.3, ring
/// (the provider the agent's reqwest and tungstenite use), ALPN `http/1.1`.
fn tls_acceptor(cert: Arc<ReloadableCert>) -> Result<TlsAcceptor, ServeError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ServeError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How many connections a server holds open now.
#[derive(Debug, Clone, Default)]
pub struct OpenConnections(Arc<AtomicUsize>);

impl OpenConnections {
    /// Connections open now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts one open connection (in [`OpenConnections`] and `fleet_http_connections`)
/// while it lives.
struct ConnectionGauge(&'static str, OpenConnections);

impl ConnectionGauge {
    fn open(server: &'static str, open: &OpenConnections) -> Self {
        open.0.fetch_add(1, Ordering::Relaxed);
        metrics::connection_opened(server);
        ConnectionGauge(server, open.clone())
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.1 .0.fetch_sub(1, Ordering::Relaxed);
        metrics::connection_closed(self.0);
    }
}

/// A bound listener, ready to [`serve`](HttpServer::serve).
#[derive(Debug)]
pub struct HttpServer {
    server: &'static str,
    listener: TcpListener,
    settings: HttpSettings,
    cert: Option<Arc<ReloadableCert>>,
    open: OpenConnections,
}

/// Shortest `metrics-token`.
const MIN_METRICS_TOKEN_CHARS: usize = 16;

/// The warning at start of a listener serving `/metrics` to anyone on an address other
/// than loopback; `None` when a token guards it or the address is loopback.
fn open_metrics_warning(addr: SocketAddr, token: bool) -> Option<&'static str> {
    (!token && !addr.ip().is_loopback()).then_some(
        "/metrics is open to anyone who reaches this address (request and record counts, \
         no secrets): set http.metrics-token, or firewall it.",
    )
}

/// `/metrics` behind `metrics-token`: other paths pass; a request without the token is
/// 401 (compared in constant time).
async fn guard_metrics(
    axum::extract::State(token): axum::extract::State<Arc<str>>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path() != "/metrics" {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "/metrics needs Authorization: Bearer <metrics-token>",
        )
        .into_response()
    }
}

/// Whether `a` and `b` are equal, in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The warning at start of a listener serving plain HTTP (`tls` false) on an address other
/// than loopback; `None` for HTTPS or loopback.
fn plain_http_warning(addr: SocketAddr, tls: bool) -> Option<&'static str> {
    (!tls && !addr.ip().is_loopback()).then_some(
        "Serving plain HTTP on a non-loopback address: credentials and data cross the \
         network unencrypted. Set http.tls-cert and http.tls-key, or put a TLS reverse \
         proxy in front.",
    )
}

impl HttpServer {
    /// Validates `settings`, loads the certificate (when set) and binds `addr`. Warns
    /// when it will serve plain HTTP on an address other than loopback.
    pub async fn bind(
        server: &'static str,
        addr: SocketAddr,
        settings: &HttpSettings,
    ) -> Result<Self, ServeError> {
        settings.validate()?;
        let cert = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(ReloadableCert::load(server, cert, key)?)),
            _ => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind {
                server,
                addr,
                source,
            })?;
        if let Some(warning) = plain_http_warning(addr, cert.is_some()) {
            tracing::warn!(server, %addr, "{warning}");
        }
        if let Some(warning) = open_metrics_warning(addr, settings.metrics_token.is_some()) {
            tracing::warn!(server, %addr, "{warning}");
        }
        Ok(HttpServer {
            server,
            listener,
            open: OpenConnections::default(),
            settings: settings.clone(),
            cert,
        })
    }

    /// The bound address (the port chosen for `:0`).
    pub fn local_addr(&self) -> Result<SocketAddr, ServeError> {
        self.listener.local_addr().map_err(|source| ServeError::Io {
            server: self.server,
            source,
        })
    }

    /// The certificate served, when this is an HTTPS listener.
    pub fn certificate(&self) -> Option<Arc<ReloadableCert>> {
        self.cert.clone()
    }

    /// A handle counting the connections open now.
    pub fn open_connections(&self) -> OpenConnections {
        self.open.clone()
    }

    /// Serves `app` until `shutdown` completes, then stops accepting and waits for open
    /// requests to finish (upgraded WebSockets are the application's to close).
    pub async fn serve(
        self,
        app: Router,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let HttpServer {
            server,
            listener,
            settings,
            cert,
            open,
        } = self;
        // One permit per open connection: when none is left, the loop stops accepting.
        let permits = Arc::new(Semaphore::new(settings.max_connections));
        let addr = listener.local_addr().ok();
        let tls = match &cert {
            Some(c) => Some(tls_acceptor(c.clone())?),
            None => None,
        };
        let _watch = cert.map(|c| AbortOnDrop(tokio::spawn(c.watch(settings.tls_reload_check))));
        let header_timeout = settings.header_read_timeout;
        let drain = settings.request_timeout;
        let app = match &settings.metrics_token {
            Some(token) => app.layer(axum::middleware::from_fn_with_state(
                Arc::<str>::from(token.as_str()),
                guard_metrics,
            )),
            None => app,
        };
        let app = app.layer(axum::middleware::from_fn_with_state(
            RequestLimit {
                server,
                limit: settings.request_timeout,
            },
            request_timeout,
        ));
        let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
        // Fired when open requests outlive the stop's deadline: their connections end.
        let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
        tracing::info!(server, addr = ?addr, tls = tls.is_some(), max_connections = settings.max_connections, "Listening.");
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) if is_connection_error(&e) => continue,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, as axum::serve does.
                        tracing::error!(server, error = %e, "Accept failed.");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = tcp.set_nodelay(true);
            let gauge = ConnectionGauge::open(server, &open);
            let service =
                app.clone()
                    .map_request(move |mut req: Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(peer));
                        req.map(axum::body::Body::new)
                    });
            let service = TowerToHyperService::new(service);
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let tls = tls.clone();
            let mut cut = cut_rx.clone();
            let connection = async move {
                let _permit = permit;
                let _gauge = gauge;
                let result = match tls {
                    None => {
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(tls) => {
                        let stream = match tokio::time::timeout(header_timeout, tls.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                metrics::tls_handshake_failed(server);
                                tracing::debug!(server, %peer, error = %e, "TLS handshake failed.");
                                return;
                            }
                            Err(_) => {
                                metrics::tls_handshake_failed(server);
                                tracing::debug!(server, %peer, "TLS handshake timed out.");
                                return;
                            }
                        };
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(server, %peer, error = %e, "Connection ended with an error.");
                }
            };
            tokio::spawn(async move {
                tokio::select! {
                    () = connection => {}
                    _ = cut.wait_for(|cut| *cut) => {
                        tracing::debug!(server, %peer, "Connection cut at the stop's deadline.");
                    }
                }
            });
        }
        drop(listener);
        tracing::info!(server, "Stopped accepting; waiting for open requests.");
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::info!(
                server,
                drain_secs = drain.as_secs(),
                "Responses still streaming at the deadline were cut."
            );
            let _ = cut_tx.send(true);
        }
        Ok(())
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Errors of one connection that say nothing about the listener (as axum::serve).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[derive(Debug, Clone, Copy)]
struct RequestLimit {
    server: &'static str,
    limit: Duration,
}

/// The whole-request bound: the handler, reading the body included, must answer within
/// `limit`, else 408.
async fn request_timeout(
    axum::extract::State(RequestLimit { server, limit }): axum::extract::State<RequestLimit>,
    req: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::request_timed_out(server);
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request was not received and answered within {}s",
                    limit.as_secs()
                ),
            )
            .into_response();
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_metrics_off_loopback_is_warned_about_and_short_tokens_refused() {
        let addr = |a: &str| a.parse::<SocketAddr>().expect("address");
        assert!(open_metrics_warning(addr("0.0.0.0:8080"), false).is_some());
        assert_eq!(open_metrics_warning(addr("0.0.0.0:8080"), true), None);
        assert_eq!(open_metrics_warning(addr("127.0.0.1:8080"), false), None);
        let short = HttpSettings {
            metrics_token: Some("short".into()),
            ..HttpSettings::default()
        };
        assert!(short.validate().is_err());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn plain_http_off_loopback_is_warned_about() {
        let addr = |a: &str| a.parse::<SocketAddr>().expect("address");
        for public in ["0.0.0.0:8080", "[::]:8080", "192.0.2.7:443"] {
            let warning = plain_http_warning(addr(public), false);
            assert!(warning.is_some_and(|w| w.contains("tls-cert")), "{public}");
            assert_eq!(
                plain_http_warning(addr(public), true),
                None,
                "{public} with TLS"
            );
        }
        for local in ["127.0.0.1:8080", "[::1]:8080"] {
            assert_eq!(plain_http_warning(addr(local), false), None, "{local}");
        }
    }
}
