//! The HTTP listener of every role ([`fleet_service::serve`]) on real sockets: slow clients
//! are cut off by the header-read, idle and whole-request timeouts, the connection cap
//! holds, and HTTPS serves a certificate that is reloaded when its files change.
//!
//! Timing: the timeouts are set to 1 s and every assertion waits up to [`WAIT`] for
//! something to happen (or, for the cap, checks that something did not happen while
//! the cap was full); no assertion measures how long anything took.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use fleet_service::serve::{HttpServer, HttpSettings, OpenConnections};
use fleet_test_support::pki::TestCa;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Generous bound for something expected to happen.
const WAIT: Duration = Duration::from_secs(30);

fn app() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/metrics", get(|| async { "fleet_requests_total 1" }))
        .route("/echo", post(|body: axum::body::Bytes| async move { body }))
        .route(
            "/forever",
            get(|| async {
                // A response body that never ends (a long-lived event stream).
                let ticks = futures::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((Ok::<_, std::convert::Infallible>("tick\n"), ()))
                });
                axum::body::Body::from_stream(ticks)
            }),
        )
}

struct Running {
    addr: SocketAddr,
    open: OpenConnections,
    cert: Option<std::sync::Arc<fleet_service::serve::ReloadableCert>>,
    _stop: oneshot::Sender<()>,
}

async fn start(settings: HttpSettings) -> anyhow::Result<Running> {
    start_named("test", settings).await
}

async fn start_named(name: &'static str, settings: HttpSettings) -> anyhow::Result<Running> {
    let server = HttpServer::bind(name, "127.0.0.1:0".parse()?, &settings).await?;
    let addr = server.local_addr()?;
    let open = server.open_connections();
    let cert = server.certificate();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(server.serve(app(), async {
        let _ = rx.await;
    }));
    Ok(Running {
        addr,
        open,
        cert,
        _stop: tx,
    })
}

fn short_timeouts() -> HttpSettings {
    HttpSettings {
        header_read_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        ..HttpSettings::default()
    }
}

/// Waits until `check` holds, up to [`WAIT`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Reads until the server closes the connection (EOF or reset); returns what was read,
/// or fails when it stays open for [`WAIT`].
async fn read_until_closed(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    anyhow::ensure!(read.is_ok(), "the server kept the connection open");
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The slowloris of the audit: many connections sending one header line every 2 s. With
/// a 1 s header-read timeout each is closed by the server, and the count of open
/// connections comes back to zero. On the old `axum::serve` they stayed open.
#[tokio::test]
async fn metrics_token_guards_metrics_and_nothing_else() -> anyhow::Result<()> {
    let token = "metrics-token-0123456789abcdef";
    let open = start(HttpSettings::default()).await?;
    let guarded = start(HttpSettings {
        metrics_token: Some(token.into()),
        ..HttpSettings::default()
    })
    .await?;
    let client = reqwest::Client::new();
    let get = |addr: SocketAddr, path: &str, bearer: Option<&str>| {
        let mut r = client.get(format!("http://{addr}{path}"));
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        r.send()
    };
    assert_eq!(get(open.addr, "/metrics", None).await?.status(), 200);
    let refused = get(guarded.addr, "/metrics", None).await?;
    assert_eq!(refused.status(), 401);
    let body: serde_json::Value = refused.json().await?;
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert_eq!(
        get(
            guarded.addr,
            "/metrics",
            Some("metrics-token-0123456789abcdeX")
        )
        .await?
        .status(),
        401
    );
    let ok = get(guarded.addr, "/metrics", Some(token)).await?;
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await?.contains("fleet_requests_total"));
    // Other routes are not the token's business.
    assert_eq!(get(guarded.addr, "/hello", None).await?.status(), 200);
    Ok(())
}

#[tokio::test]
async fn slow_header_senders_are_disconnected() -> anyhow::Result<()> {
    let server = start(short_timeouts()).await?;
    let clients = 40;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(b"GET /hello HTTP/1.1\r\nHost: test\r\n")
                .await?;
            let deadline = tokio::time::Instant::now() + WAIT;
            let mut buf = [0u8; 256];
            loop {
                // One more header line every 2 s, until the server hangs up.
                tokio::select! {
                    r = s.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return Ok::<bool, anyhow::Error>(true),
                        Ok(_) => {}
                    },
                    () = tokio::time::sleep(Duration::from_secs(2)) => {
                        if s.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes()).await.is_err() {
                            return Ok(true);
                        }
                    }
                }
                if tokio::time::Instant::now() > deadline {
                    return Ok(false);
                }
            }
        }));
    }
    let mut closed = 0;
    for t in tasks {
        if t.await?? {
            closed += 1;
        }
    }
    assert_eq!(
        closed, clients,
        "every slow connection is closed by the server"
    );
    eventually("open connections back to 0", || server.open.count() == 0).await?;
    Ok(())
}

/// A kept-alive connection that sends nothing after its first answer is closed.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed() -> anyhow::Result<()> {
    let server = start(short_timeouts()).await?;
    let mut s = TcpStream::connect(server.addr).await?;
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n")
        .await?;
    let answer = read_until_closed(&mut s).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello"), "{answer}");
    Ok(())
}

/// A body sent one byte every 2 s gets 408 in the API error format, then the close.
#[tokio::test]
async fn slow_bodies_get_408() -> anyhow::Result<()> {
    let server = start(short_timeouts()).await?;
    let mut s = TcpStream::connect(server.addr).await?;
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n")
        .await?;
    let (mut r, mut w) = s.into_split();
    let trickle = tokio::spawn(async move {
        while w.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let mut out = Vec::new();
    let read = tokio::time::timeout(WAIT, r.read_to_end(&mut out)).await;
    trickle.abort();
    assert!(
        read.is_ok(),
        "the server kept the slow body's connection open"
    );
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    Ok(())
}

/// A stop waits for open requests at most the whole-request timeout: a response body that
/// never ends is cut then, and the server returns.
#[tokio::test]
async fn a_stop_cuts_endless_responses_after_the_request_timeout() -> anyhow::Result<()> {
    let server = HttpServer::bind("test", "127.0.0.1:0".parse()?, &short_timeouts()).await?;
    let addr = server.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let served = tokio::spawn(server.serve(app(), async {
        let _ = rx.await;
    }));
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /forever HTTP/1.1\r\nHost: test\r\n\r\n")
        .await?;
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await??;
    anyhow::ensure!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "the stream started"
    );
    drop(tx);
    let stopped = tokio::time::timeout(WAIT, served).await;
    anyhow::ensure!(
        stopped.is_ok(),
        "the server waited for the endless response"
    );
    stopped???;
    read_until_closed(&mut s).await?;
    Ok(())
}

/// With the cap full, one more connection is not served (nothing is read from it) until
/// one of the others closes; the count of open connections never passes the cap.
#[tokio::test]
async fn the_connection_cap_holds() -> anyhow::Result<()> {
    let metrics = fleet_service::endpoints::metrics_handle();
    let cap = 4;
    let server = start_named(
        "cap",
        HttpSettings {
            max_connections: cap,
            header_read_timeout: Duration::from_secs(600),
            ..HttpSettings::default()
        },
    )
    .await?;
    let mut idle = Vec::new();
    for _ in 0..cap {
        idle.push(TcpStream::connect(server.addr).await?);
    }
    eventually("the idle connections are accepted", || {
        server.open.count() == cap
    })
    .await?;

    let mut extra = TcpStream::connect(server.addr).await?;
    extra
        .write_all(b"GET /hello HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a connection past the cap was served: {early:?}"
    );
    assert_eq!(server.open.count(), cap, "the cap holds");
    let text = metrics.render();
    assert!(
        text.contains(&format!("fleet_http_connections{{server=\"cap\"}} {cap}")),
        "{text}"
    );

    drop(idle.pop());
    let answer = read_until_closed(&mut extra).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(server.open.count() <= cap);
    Ok(())
}

/// A client trusting only `ca`, showing the certificate it was served.
fn tls_client(ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .tls_info(true)
        .build()?)
}

/// GET /hello over TLS on a new connection of a new client (no session to resume, so the
/// server presents its certificate); the DER of that certificate.
async fn served_cert(ca_pem: &str, addr: SocketAddr) -> anyhow::Result<Vec<u8>> {
    let response = tls_client(ca_pem)?
        .get(format!("https://localhost:{}/hello", addr.port()))
        .send()
        .await?;
    let der = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
        .ok_or_else(|| anyhow::anyhow!("no peer certificate"))?;
    anyhow::ensure!(response.text().await? == "hello");
    Ok(der)
}

fn fingerprint(der: &[u8]) -> String {
    use std::fmt::Write as _;
    der.iter().rev().take(8).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// HTTPS with the configured certificate; new files are picked up by the modification
/// time check; a broken pair keeps the previous certificate.
#[tokio::test]
async fn https_serves_the_certificate_and_reloads_it_when_the_files_change() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("fleet test CA")?;
    let first = ca.server_cert(&["localhost", "127.0.0.1"])?;
    let (cert, key) = first.write(dir.path())?;
    let server = start(HttpSettings {
        tls_cert: Some(cert.clone()),
        tls_key: Some(key.clone()),
        tls_reload_check: Duration::from_secs(1),
        ..HttpSettings::default()
    })
    .await?;
    let ca_pem = ca.cert_pem();
    assert_eq!(
        fingerprint(&served_cert(&ca_pem, server.addr).await?),
        fingerprint(&first.der)
    );

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/hello", server.addr))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    let second = ca.server_cert(&["localhost", "127.0.0.1"])?;
    second.write(dir.path())?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = served_cert(&ca_pem, server.addr).await?;
        if seen == second.der {
            break;
        }
        assert_eq!(fingerprint(&seen), fingerprint(&first.der));
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "new certificate not served within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broken certificate file: the reload fails, the second certificate stays.
    std::fs::write(&cert, "not a certificate")?;
    let cert_handle = server.cert.as_ref().expect("TLS server");
    let err = cert_handle.reload().expect_err("a broken file cannot load");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert_eq!(
        fingerprint(&served_cert(&ca_pem, server.addr).await?),
        fingerprint(&second.der)
    );
    Ok(())
}

/// A certificate and key that do not belong together are refused at start.
#[tokio::test]
async fn mismatched_key_is_refused_at_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("fleet test CA")?;
    let a = ca.server_cert(&["localhost"])?;
    let b = ca.server_cert(&["localhost"])?;
    let (cert, _) = a.write(dir.path())?;
    let other_key = dir.path().join("other-key.pem");
    std::fs::write(&other_key, &b.key_pem)?;
    let err = HttpServer::bind(
        "test",
        "127.0.0.1:0".parse()?,
        &HttpSettings {
            tls_cert: Some(cert),
            tls_key: Some(other_key),
            ..HttpSettings::default()
        },
    )
    .await
    .expect_err("mismatched pair");
    assert!(err.to_string().contains("TLS"), "{err}");

    let half = HttpSettings {
        tls_cert: Some(dir.path().join("cert.pem")),
        ..HttpSettings::default()
    };
    assert!(half.validate().is_err());
    Ok(())
}
