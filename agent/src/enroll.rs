//! Enrollment: trade a one-time registration token for an agent id and a permanent
//! credential, and keep them in `{state-dir}/credentials.json` (mode 0600).
//!
//! [`enroll`] collects the machine's [`MachineFacts`], POSTs a [`RegisterRequest`] to
//! `{server}/api/v1/agents/register` and stores the [`RegisterResponse`] as an
//! [`Enrollment`]. The run loop loads it with [`Enrollment::load`]: when present, every
//! request carries `Authorization: Bearer <credential>`, the agent reports under the id the
//! server gave, and intervals come from the server's [`RemoteConfig`] unless the
//! configuration file sets them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_schemas::api::{
    ErrorBody, MachineFacts, RegisterRequest, RegisterResponse, RemoteConfig,
};
use serde::{Deserialize, Serialize};
use sysinfo::{CpuRefreshKind, Networks, System};
use tracing::{info, warn};

use crate::state;
use crate::tls::ClientTls;
use crate::transport::{api_url, base_url, http_client};

/// File name of the enrollment inside the state directory.
pub const CREDENTIALS_FILE: &str = "credentials.json";

/// Timeout of the registration request.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a successful enrollment stored: the server's answer plus the URL it came from.
///
/// `Debug` never shows the credential.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Enrollment {
    /// The gateway URL the agent enrolled with.
    pub server_url: String,
    /// The agent id the server assigned.
    pub agent_id: String,
    /// The permanent credential, sent as `Authorization: Bearer <credential>`.
    pub credential: String,
    /// Tenant the agent belongs to.
    pub tenant_id: String,
    /// Location, if the token named one.
    #[serde(default)]
    pub location_id: Option<String>,
    /// Device name, if the token named one.
    #[serde(default)]
    pub device_name: Option<String>,
    /// The server's settings for this agent.
    pub config: RemoteConfig,
    /// When the agent enrolled.
    pub enrolled_at: DateTime<Utc>,
}

impl fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enrollment")
            .field("server_url", &self.server_url)
            .field("agent_id", &self.agent_id)
            .field("credential", &"<redacted>")
            .field("tenant_id", &self.tenant_id)
            .field("location_id", &self.location_id)
            .field("device_name", &self.device_name)
            .field("config", &self.config)
            .field("enrolled_at", &self.enrolled_at)
            .finish()
    }
}

/// Why enrollment failed, or why a stored enrollment cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The server URL cannot be used.
    #[error("invalid server URL {url:?}: {message}")]
    InvalidServerUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The token is empty.
    #[error("the registration token is empty")]
    EmptyToken,
    /// The server could not be reached.
    #[error("cannot reach {url}: {message}; check the server URL and the network, then try again")]
    Unreachable {
        /// The registration URL.
        url: String,
        /// The transport error.
        message: String,
    },
    /// The server refused the registration (4xx): the token is unknown, expired or used,
    /// or the request was invalid. Trying again with the same token will not help.
    #[error("registration refused ({status} {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's error code (`token_expired`, ...), empty when it sent none.
        code: String,
        /// The server's message, e.g. "registration token expired".
        message: String,
        /// The offending field, when the server named one.
        field: Option<String>,
    },
    /// The server failed or is overloaded (5xx, 429): try again later.
    #[error("the server could not register the agent now ({status}): {message}; try again later")]
    Unavailable {
        /// HTTP status.
        status: u16,
        /// The server's message or body.
        message: String,
    },
    /// The server answered something that is not a registration.
    #[error("unexpected answer from the server ({status}): {message}")]
    UnexpectedResponse {
        /// HTTP status.
        status: u16,
        /// What was wrong with it.
        message: String,
    },
    /// The enrollment could not be written, read or understood.
    #[error("{path}: {message}")]
    State {
        /// The file or directory at fault.
        path: PathBuf,
        /// What failed and what to do.
        message: String,
    },
}

impl Enrollment {
    /// `{state_dir}/credentials.json`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(CREDENTIALS_FILE)
    }

    /// Reads the enrollment stored in `state_dir`; `None` when the agent never enrolled
    /// there. Warns when the file is readable by others than its owner.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, EnrollError> {
        let path = Self::path(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(EnrollError::State {
                    message: format!("cannot read the enrollment: {e}"),
                    path,
                })
            }
        };
        warn_if_shared(&path);
        let enrollment: Self = serde_json::from_str(&text).map_err(|e| EnrollError::State {
            message: format!(
                "not a valid enrollment ({e}); enroll again with `fleetstream agent enroll`"
            ),
            path: path.clone(),
        })?;
        enrollment.check().map_err(|message| EnrollError::State {
            message: format!("{message}; enroll again with `fleetstream agent enroll`"),
            path,
        })?;
        Ok(Some(enrollment))
    }

    /// Writes the enrollment to `{state_dir}/credentials.json`, atomically and with mode
    /// 0600 from the start; creates `state_dir` (mode 0700) when missing.
    pub fn save(&self, state_dir: &Path) -> Result<(), EnrollError> {
        let path = Self::path(state_dir);
        state::ensure_dir(state_dir).map_err(|e| EnrollError::State {
            path: state_dir.to_owned(),
            message: format!("cannot create the state directory: {e}"),
        })?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| EnrollError::State {
            path: path.clone(),
            message: format!("cannot encode the enrollment: {e}"),
        })?;
        state::write_atomic(&path, &json, 0o600).map_err(|e| EnrollError::State {
            message: format!("cannot write the enrollment: {e}"),
            path,
        })
    }

    /// Checks what the rest of the agent relies on.
    fn check(&self) -> Result<(), String> {
        crate::config::validate_agent_id(&self.agent_id)
            .map_err(|_| format!("the agent id {:?} is not usable", self.agent_id))?;
        if self.credential.is_empty()
            || !self
                .credential
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err("the credential is empty or not printable ASCII".to_owned());
        }
        base_url(&self.server_url).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Registers this machine with the server at `server_url` using the one-time `token`,
/// stores the result in `{state_dir}/credentials.json` (mode 0600) and returns it.
///
/// The state directory is checked to be writable before the token is spent. A 4xx answer
/// becomes [`EnrollError::Refused`] carrying the server's message (for example
/// "registration token expired").
pub async fn enroll(
    server_url: &str,
    token: &str,
    state_dir: &Path,
) -> Result<Enrollment, EnrollError> {
    let tls = ClientTls::system_roots().map_err(|e| EnrollError::InvalidServerUrl {
        url: server_url.to_owned(),
        message: e.to_string(),
    })?;
    enroll_with_tls(server_url, token, state_dir, &tls).await
}

/// [`enroll`], checking an `https://` server's certificate with `tls` (for example only
/// the CA of the configuration's `ca-file`: [`ClientTls::for_config`]).
pub async fn enroll_with_tls(
    server_url: &str,
    token: &str,
    state_dir: &Path,
    tls: &ClientTls,
) -> Result<Enrollment, EnrollError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(EnrollError::EmptyToken);
    }
    let invalid_url = |message: String| EnrollError::InvalidServerUrl {
        url: server_url.to_owned(),
        message,
    };
    let base = base_url(server_url).map_err(|e| invalid_url(e.to_string()))?;
    let url = api_url(&base, &["agents", "register"]).map_err(|e| invalid_url(e.to_string()))?;
    check_writable(state_dir)?;

    let facts = tokio::task::spawn_blocking(machine_facts)
        .await
        .map_err(|e| EnrollError::State {
            path: state_dir.to_owned(),
            message: format!("collecting the machine facts failed: {e}"),
        })?;
    let client = http_client(REGISTER_TIMEOUT, tls).map_err(|e| invalid_url(e.to_string()))?;
    let request = RegisterRequest {
        token: token.to_owned(),
        facts,
    };
    let response = client
        .post(url.clone())
        .json(&request)
        .send()
        .await
        .map_err(|e| EnrollError::Unreachable {
            url: url.to_string(),
            message: error_chain(&e),
        })?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| EnrollError::Unreachable {
            url: url.to_string(),
            message: format!("status {status}, answer unreadable: {}", error_chain(&e)),
        })?;
    let registered = parse_register_answer(status.as_u16(), &body)?;

    let enrollment = Enrollment {
        server_url: server_url.to_owned(),
        agent_id: registered.agent_id,
        credential: registered.credential,
        tenant_id: registered.tenant_id,
        location_id: registered.location_id,
        device_name: registered.device_name,
        config: registered.config,
        enrolled_at: Utc::now(),
    };
    enrollment
        .check()
        .map_err(|message| EnrollError::UnexpectedResponse {
            status: status.as_u16(),
            message,
        })?;
    if let Ok(Some(previous)) = Enrollment::load(state_dir) {
        if previous.agent_id != enrollment.agent_id {
            warn!(
                previous = %previous.agent_id,
                new = %enrollment.agent_id,
                "Replacing the previous enrollment of this state directory."
            );
        }
    }
    enrollment.save(state_dir).map_err(|e| EnrollError::State {
        path: Enrollment::path(state_dir),
        message: format!(
            "registered as agent {} but could not store the credential ({e}); the token is \
             spent: fix the state directory and enroll again with a new token",
            enrollment.agent_id
        ),
    })?;
    info!(
        agent_id = %enrollment.agent_id,
        tenant_id = %enrollment.tenant_id,
        path = %Enrollment::path(state_dir).display(),
        "Agent enrolled."
    );
    Ok(enrollment)
}

/// Maps the registration answer to a response or an error. Pure, so every case is tested.
fn parse_register_answer(status: u16, body: &str) -> Result<RegisterResponse, EnrollError> {
    let server_error = || {
        serde_json::from_str::<ErrorBody>(body)
            .ok()
            .map(|b| b.error)
    };
    let short = |s: &str| s.chars().take(300).collect::<String>();
    match status {
        200..=299 => serde_json::from_str(body).map_err(|e| EnrollError::UnexpectedResponse {
            status,
            message: format!("not a registration answer ({e}): {}", short(body)),
        }),
        429 | 500..=599 => Err(EnrollError::Unavailable {
            status,
            message: server_error().map_or_else(|| short(body), |e| e.message),
        }),
        400..=499 => Err(match server_error() {
            Some(e) => EnrollError::Refused {
                status,
                code: e.code,
                message: e.message,
                field: e.field,
            },
            None => EnrollError::Refused {
                status,
                code: String::new(),
                message: if body.trim().is_empty() {
                    "no reason given".to_owned()
                } else {
                    short(body)
                },
                field: None,
            },
        }),
        _ => Err(EnrollError::UnexpectedResponse {
            status,
            message: short(body),
        }),
    }
}

/// Creates the state directory and proves a file can be written in it, so a token is
/// never spent on a machine that cannot keep the credential.
fn check_writable(state_dir: &Path) -> Result<(), EnrollError> {
    let fail = |e: std::io::Error| EnrollError::State {
        path: state_dir.to_owned(),
        message: format!(
            "the state directory is not writable ({e}); run as root or set `state-dir`"
        ),
    };
    state::ensure_dir(state_dir).map_err(fail)?;
    let probe = state_dir.join(".enroll-probe");
    state::write_atomic(&probe, b"", 0o600).map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)
}

/// Warns when a credentials file is readable by group or others.
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "Credentials file is readable by other users; run `chmod 600` on it."
            );
        }
    }
}

/// Facts about this machine for registration. Blocking (reads `/proc`, `/sys`, the mount
/// table): call it from `spawn_blocking` in async code.
pub fn machine_facts() -> MachineFacts {
    let mut system = System::new();
    system.refresh_cpu_list(CpuRefreshKind::nothing());
    system.refresh_memory();
    let cpu_model = system
        .cpus()
        .iter()
        .map(|c| c.brand().trim())
        .find(|b| !b.is_empty())
        .unwrap_or_default()
        .to_owned();
    let networks = Networks::new_with_refreshed_list();
    let (ip_addresses, mac_addresses) = addresses(networks.list().iter().map(|(name, data)| {
        (
            name.as_str(),
            data.ip_networks()
                .iter()
                .map(|n| n.addr)
                .collect::<Vec<_>>(),
            data.mac_address().0,
        )
    }));
    MachineFacts {
        hostname: System::host_name().unwrap_or_default(),
        os_type: std::env::consts::OS.to_owned(),
        os_version: System::long_os_version()
            .or_else(System::os_version)
            .unwrap_or_default(),
        kernel_version: System::kernel_version().unwrap_or_default(),
        architecture: std::env::consts::ARCH.to_owned(),
        ip_addresses,
        mac_addresses,
        cpu_model,
        cpu_cores: u32::try_from(system.cpus().len()).unwrap_or(u32::MAX),
        memory_total_bytes: system.total_memory(),
        disk_total_bytes: crate::collect::current_disks()
            .iter()
            .map(|d| d.total_bytes)
            .fold(0, u64::saturating_add),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// IP and MAC addresses worth showing: loopback interfaces and addresses, IPv6 link-local
/// addresses and all-zero MACs left out; sorted, without duplicates.
fn addresses<'a>(
    interfaces: impl Iterator<Item = (&'a str, Vec<std::net::IpAddr>, [u8; 6])>,
) -> (Vec<String>, Vec<String>) {
    let mut ips = std::collections::BTreeSet::new();
    let mut macs = std::collections::BTreeSet::new();
    for (name, addrs, mac) in interfaces {
        if name == "lo" {
            continue;
        }
        for ip in addrs {
            let link_local_v6 =
                matches!(ip, std::net::IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
            if !ip.is_loopback() && !ip.is_unspecified() && !link_local_v6 {
                ips.insert(ip.to_string());
            }
        }
        if mac != [0; 6] {
            macs.insert(
                mac.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            );
        }
    }
    (ips.into_iter().collect(), macs.into_iter().collect())
}

/// The error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn register_answers_map_to_clear_errors() {
        let ok = r#"{"agent_id":"a-1","credential":"c","tenant_id":"t","location_id":null,
            "device_name":null,"config":{"heartbeat_interval_secs":30.0,
            "metrics_interval_secs":10.0,"websocket_url":"ws://gw/ws"}}"#;
        assert_eq!(parse_register_answer(201, ok).unwrap().agent_id, "a-1");
        let expired = r#"{"error":{"code":"token_expired","message":"registration token expired","field":"token"}}"#;
        let err = parse_register_answer(410, expired).unwrap_err();
        assert_eq!(
            err.to_string(),
            "registration refused (410 token_expired): registration token expired"
        );
        assert!(matches!(err, EnrollError::Refused { field: Some(f), .. } if f == "token"));
        let err = parse_register_answer(400, "").unwrap_err();
        assert!(err.to_string().contains("no reason given"), "{err}");
        let err = parse_register_answer(503, "busy").unwrap_err();
        assert!(
            matches!(err, EnrollError::Unavailable { status: 503, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("try again later"), "{err}");
        let err = parse_register_answer(201, "{}").unwrap_err();
        assert!(
            matches!(err, EnrollError::UnexpectedResponse { .. }),
            "{err}"
        );
        assert!(matches!(
            parse_register_answer(302, "").unwrap_err(),
            EnrollError::UnexpectedResponse { status: 302, .. }
        ));
    }

    #[test]
    fn addresses_skip_loopback_link_local_and_zero_macs() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (ips, macs) = addresses(
            [
                ("lo", vec![ip("127.0.0.1")], [0; 6]),
                (
                    "eth0",
                    vec![ip("10.0.0.5"), ip("fe80::1"), ip("2001:db8::5")],
                    [0x02, 0x42, 0xac, 0x11, 0, 0x02],
                ),
                ("tun0", vec![ip("10.8.0.1")], [0; 6]),
                (
                    "eth1",
                    vec![ip("10.0.0.5")],
                    [0x02, 0x42, 0xac, 0x11, 0, 0x02],
                ),
            ]
            .into_iter(),
        );
        assert_eq!(ips, vec!["10.0.0.5", "10.8.0.1", "2001:db8::5"]);
        assert_eq!(macs, vec!["02:42:ac:11:00:02"]);
    }

    #[test]
    fn facts_describe_this_machine() {
        let f = machine_facts();
        assert_eq!(f.os_type, std::env::consts::OS);
        assert_eq!(f.architecture, std::env::consts::ARCH);
        assert!(f.cpu_cores > 0);
        assert!(f.memory_total_bytes > 0);
        assert!(f.disk_total_bytes > 0);
        assert_eq!(f.agent_version, env!("CARGO_PKG_VERSION"));
        // Round-trips through the wire type (deny_unknown_fields on the server).
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<MachineFacts>(&json).unwrap(), f);
    }

    #[test]
    fn debug_redacts_the_credential() {
        let e = Enrollment {
            server_url: "http://gw:8080".into(),
            agent_id: "a-1".into(),
            credential: "s3cret-credential".into(),
            tenant_id: "t".into(),
            location_id: None,
            device_name: None,
            config: RemoteConfig {
                heartbeat_interval_secs: 30.0,
                metrics_interval_secs: 10.0,
                websocket_url: String::new(),
            },
            enrolled_at: Utc::now(),
        };
        assert!(!format!("{e:?}").contains("s3cret"));
        let dir = tempfile::tempdir().unwrap();
        e.save(dir.path()).unwrap();
        assert_eq!(Enrollment::load(dir.path()).unwrap(), Some(e));
        assert_eq!(Enrollment::load(&dir.path().join("none")).unwrap(), None);
        std::fs::write(Enrollment::path(dir.path()), "{").unwrap();
        let err = Enrollment::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("enroll again"), "{err}");
    }
}
