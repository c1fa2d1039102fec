//! Sending one message to one channel: webhook (signed JSON), Slack-compatible webhook
//! (`{"text"}`) and email over SMTP (`lettre`, tokio transport).
//!
//! Outbound targets are hostile input: only `http`/`https` URLs, no redirects followed, a
//! whole-request timeout, at most `max-response-bytes` of the answer read, and unless
//! `allow-private-targets` no connection to a loopback, private, link-local, CGNAT,
//! multicast or unspecified address, checked on every address a host name resolves to
//! (the resolver below, so a DNS answer cannot point the notifier inside).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_read_model::{ChannelKind, NotificationChannel, SmtpTls};
use lettre::transport::smtp::client::Certificate;

use crate::message::{signature, Message, IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::NotifierConfig;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the receiver acknowledged it.
    pub ok: bool,
    /// HTTP status or SMTP reply code, when the receiver answered.
    pub status_code: Option<u16>,
    /// What went wrong.
    pub error: Option<String>,
    /// The receiver refused it for good (a 4xx other than 408/425/429, a bad target):
    /// no retry.
    pub permanent: bool,
    /// How long it took.
    pub latency: Duration,
}

impl Outcome {
    fn failed(error: impl Into<String>, permanent: bool, started: Instant) -> Outcome {
        Outcome {
            ok: false,
            status_code: None,
            error: Some(error.into()),
            permanent,
            latency: started.elapsed(),
        }
    }
}

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xC0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Resolves a host name and refuses it when an address is not public.
#[derive(Debug, Clone)]
struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = public_addrs(&host, 0).await?;
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TargetError(String);

async fn public_addrs(
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if addrs.is_empty() {
        return Err(Box::new(TargetError(format!(
            "{host} resolves to no address"
        ))));
    }
    if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(Box::new(TargetError(format!(
            "{host} resolves to {}, which is not a public address (notifier.allow-private-targets is off)",
            bad.ip()
        ))));
    }
    Ok(addrs)
}

/// Checks a channel URL: `http` or `https`, a host, at most `max_len` bytes.
pub fn check_url(url: &str, max_len: usize) -> Result<url::Url, String> {
    if url.len() > max_len {
        return Err(format!("longer than {max_len} bytes"));
    }
    let u = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err("the scheme must be http or https".into());
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err("the URL names no host".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("credentials in the URL are not allowed".into());
    }
    Ok(u)
}

/// Why `notifier.smtp-ca-file` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SmtpCaError {
    /// The file cannot be read.
    #[error("notifier.smtp-ca-file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: std::io::Error,
    },
    /// The file holds no PEM certificate.
    #[error("notifier.smtp-ca-file {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A certificate in it does not parse.
    #[error("notifier.smtp-ca-file {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: lettre::transport::smtp::Error,
    },
}

/// The CA certificates of `path` (PEM, one or more), trusted for SMTP servers beside the
/// built-in roots.
pub fn load_smtp_ca(path: &Path) -> Result<Certificate, SmtpCaError> {
    let pem = std::fs::read(path).map_err(|source| SmtpCaError::Read {
        path: path.to_owned(),
        source,
    })?;
    // lettre's rustls parser skips what is not a certificate and may find none.
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(SmtpCaError::Empty {
            path: path.to_owned(),
        });
    }
    Certificate::from_pem(&pem).map_err(|source| SmtpCaError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Sends messages; one per notifier (its HTTP client is shared).
#[derive(Debug, Clone)]
pub struct Sender {
    http: reqwest::Client,
    config: Arc<NotifierConfig>,
    /// `smtp-ca-file`, read at start.
    smtp_ca: Option<Certificate>,
}

impl Sender {
    /// A sender with the notifier's timeouts and target guard.
    pub fn new(config: Arc<NotifierConfig>) -> anyhow::Result<Sender> {
        let mut b = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fleetstream-notifier/", env!("CARGO_PKG_VERSION")));
        if !config.allow_private_targets {
            b = b.dns_resolver(Arc::new(GuardedResolver));
        }
        let smtp_ca = config
            .smtp_ca_file
            .as_deref()
            .map(load_smtp_ca)
            .transpose()?;
        Ok(Sender {
            http: b.build()?,
            config,
            smtp_ca,
        })
    }

    /// Sends `message` to `channel` once.
    pub async fn send(&self, channel: &NotificationChannel, message: &Message) -> Outcome {
        match channel.kind {
            ChannelKind::Webhook => {
                let now = fleet_schemas::time::now_micros();
                let body = match serde_json::to_vec(&message.webhook_body(now)) {
                    Ok(b) => b,
                    Err(e) => return Outcome::failed(format!("encode: {e}"), true, Instant::now()),
                };
                let ts = now.div_euclid(1_000_000);
                let mut headers = vec![(TIMESTAMP_HEADER, ts.to_string())];
                if let Some(secret) = &channel.secret {
                    headers.push((SIGNATURE_HEADER, signature(secret, ts, &body)));
                }
                self.post(channel, message, body, headers).await
            }
            ChannelKind::Slack => {
                let body = match serde_json::to_vec(&message.slack_body()) {
                    Ok(b) => b,
                    Err(e) => return Outcome::failed(format!("encode: {e}"), true, Instant::now()),
                };
                self.post(channel, message, body, Vec::new()).await
            }
            ChannelKind::Email => self.email(channel, message).await,
        }
    }

    async fn post(
        &self,
        channel: &NotificationChannel,
        message: &Message,
        body: Vec<u8>,
        headers: Vec<(&str, String)>,
    ) -> Outcome {
        let started = Instant::now();
        let Some(url) = channel.settings.url.as_deref() else {
            return Outcome::failed("the channel has no URL", true, started);
        };
        let url = match check_url(url, usize::MAX) {
            Ok(u) => u,
            Err(e) => return Outcome::failed(format!("url: {e}"), true, started),
        };
        // An IP literal is not resolved: check it here.
        if !self.config.allow_private_targets {
            let literal = match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                _ => None,
            };
            if let Some(ip) = literal.filter(|ip| !is_public(*ip)) {
                return Outcome::failed(
                    format!("{ip} is not a public address (notifier.allow-private-targets is off)"),
                    true,
                    started,
                );
            }
        }
        let mut req = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_HEADER, message.id.as_str())
            .body(body);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let permanent = e.is_builder();
                return Outcome::failed(error_chain(&e), permanent, started);
            }
        };
        let status = resp.status();
        // Read at most max-response-bytes of the answer (for the error text), then drop it.
        let mut head = Vec::new();
        while head.len() < self.config.max_response_bytes {
            match resp.chunk().await {
                Ok(Some(c)) => head.extend_from_slice(&c),
                Ok(None) | Err(_) => break,
            }
        }
        head.truncate(self.config.max_response_bytes);
        let code = status.as_u16();
        if status.is_success() {
            return Outcome {
                ok: true,
                status_code: Some(code),
                error: None,
                permanent: false,
                latency: started.elapsed(),
            };
        }
        let text: String = String::from_utf8_lossy(&head).chars().take(200).collect();
        let permanent = status.is_client_error() && !matches!(code, 408 | 425 | 429);
        Outcome {
            ok: false,
            status_code: Some(code),
            error: Some(format!("HTTP {code}: {}", text.trim())),
            permanent,
            latency: started.elapsed(),
        }
    }

    async fn email(&self, channel: &NotificationChannel, message: &Message) -> Outcome {
        use lettre::message::{header::ContentType, Mailbox};
        use lettre::transport::smtp::authentication::Credentials;
        use lettre::transport::smtp::client::{Tls, TlsParameters};
        use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

        let started = Instant::now();
        let Some(e) = &channel.settings.email else {
            return Outcome::failed("the channel has no SMTP settings", true, started);
        };
        if !self.config.allow_private_targets {
            if let Err(err) = public_addrs(&e.host, e.port).await {
                return Outcome::failed(err.to_string(), false, started);
            }
        }
        let from: Mailbox = match e.from.parse() {
            Ok(m) => m,
            Err(err) => return Outcome::failed(format!("from: {err}"), true, started),
        };
        let mut builder = lettre::Message::builder()
            .from(from)
            .subject(message.email_subject())
            .message_id(Some(format!("<{}@fleetstream>", message.id)))
            .header(ContentType::TEXT_PLAIN);
        for to in &e.to {
            match to.parse::<Mailbox>() {
                Ok(m) => builder = builder.to(m),
                Err(err) => return Outcome::failed(format!("to {to}: {err}"), true, started),
            }
        }
        let mail = match builder.body(message.email_body()) {
            Ok(m) => m,
            Err(err) => return Outcome::failed(format!("message: {err}"), true, started),
        };
        let tls = match e.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls | SmtpTls::Tls => {
                // The built-in roots, and smtp-ca-file's CAs when set.
                let mut params = TlsParameters::builder(e.host.clone());
                if let Some(ca) = &self.smtp_ca {
                    params = params.add_root_certificate(ca.clone());
                }
                match params.build() {
                    Ok(p) if e.tls == SmtpTls::Tls => Tls::Wrapper(p),
                    Ok(p) => Tls::Required(p),
                    Err(err) => return Outcome::failed(format!("tls: {err}"), true, started),
                }
            }
        };
        let mut transport =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(e.host.as_str())
                .port(e.port)
                .tls(tls)
                .timeout(Some(self.config.request_timeout));
        if let (Some(user), Some(password)) = (&e.username, &channel.secret) {
            transport = transport.credentials(Credentials::new(user.clone(), password.clone()));
        }
        let transport = transport.build();
        let sent = tokio::time::timeout(self.config.request_timeout, transport.send(mail)).await;
        match sent {
            Ok(Ok(resp)) => Outcome {
                ok: true,
                status_code: Some(u16::from(resp.code())),
                error: None,
                permanent: false,
                latency: started.elapsed(),
            },
            Ok(Err(err)) => {
                let code = err.status().map(u16::from);
                let mode = match e.tls {
                    SmtpTls::Starttls => "starttls",
                    SmtpTls::Tls => "tls",
                    SmtpTls::None => "no TLS",
                };
                Outcome {
                    ok: false,
                    status_code: code,
                    error: Some(format!(
                        "SMTP {}:{} ({mode}): {}",
                        e.host,
                        e.port,
                        error_chain(&err)
                    )),
                    permanent: err.is_permanent(),
                    latency: started.elapsed(),
                }
            }
            Err(_) => Outcome::failed("SMTP timed out", false, started),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Some errors (lettre's) repeat their source in their own text: say it once.
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass_the_guard() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::",
        ] {
            let ip: IpAddr = private.parse().expect("ip");
            assert!(!is_public(ip), "{private} must be refused");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            let ip: IpAddr = public.parse().expect("ip");
            assert!(is_public(ip), "{public} is public");
        }
    }

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        assert!(check_url("https://hooks.example.com/x", 100).is_ok());
        assert!(check_url("http://127.0.0.1:9/x", 100).is_ok());
        for bad in [
            "ftp://x/y",
            "file:///etc/passwd",
            "https://",
            "not a url",
            "https://u:p@x/",
        ] {
            assert!(check_url(bad, 100).is_err(), "{bad}");
        }
        assert!(check_url("https://example.com/aaaaaaaa", 10).is_err());
    }

    #[test]
    fn an_unusable_smtp_ca_file_stops_the_sender_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let with = |path: std::path::PathBuf| {
            Sender::new(Arc::new(NotifierConfig {
                smtp_ca_file: Some(path),
                ..NotifierConfig::default()
            }))
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        let missing = with(dir.path().join("missing.pem")).expect_err("a missing file");
        assert!(
            missing.contains("notifier.smtp-ca-file") && missing.contains("missing.pem"),
            "{missing}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let empty = with(junk).expect_err("no certificate in it");
        assert!(empty.contains("no PEM certificate"), "{empty}");
        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        assert!(with(bad).is_err(), "a certificate that does not parse");
    }

    #[tokio::test]
    async fn a_private_target_fails_without_a_connection_unless_allowed() {
        let sender = Sender::new(Arc::new(NotifierConfig::default())).expect("sender");
        let channel = NotificationChannel {
            channel_id: "c".into(),
            tenant_id: "t".into(),
            name: "n".into(),
            kind: ChannelKind::Slack,
            settings: fleet_read_model::ChannelSettings {
                url: Some("http://127.0.0.1:9/hook".into()),
                email: None,
            },
            secret: None,
            created_at: 0,
            created_by: "x".into(),
        };
        let msg = Message {
            id: "e".into(),
            tenant_id: "t".into(),
            channel_id: "c".into(),
            route_id: None,
            test: true,
            alerts: Vec::new(),
        };
        let out = sender.send(&channel, &msg).await;
        assert!(!out.ok && out.permanent, "{out:?}");
        assert!(out
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("not a public address"));
        let mut named = channel.clone();
        named.settings.url = Some("http://localhost:9/hook".into());
        let out = sender.send(&named, &msg).await;
        assert!(!out.ok, "{out:?}");
        assert!(
            out.error
                .as_deref()
                .unwrap_or_default()
                .contains("not a public address"),
            "a name resolving to loopback is refused too: {out:?}"
        );
    }
}
