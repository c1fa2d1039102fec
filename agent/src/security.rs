//! The machine's security posture: host firewall, pending package updates (all and
//! security), reboot required, the SSH server's root-login and password settings, and
//! ClamAV with its signature age.
//!
//! Collection runs external tools (`ufw`, `firewall-cmd`, `nft`, `iptables`,
//! `apt-get -s upgrade`, `dnf -C check-update`, `needs-restarting -r`, `sshd -T`,
//! `clamscan --version`) and reads a few files. Every tool runs with a timeout and a bound
//! on the output kept; a tool that is absent, fails or times out leaves its field empty
//! (never an error). Tools are found on `PATH`; files live where [`Sources`] says.
//!
//! The posture changes rarely and some probes are slow, so it is not collected with every
//! report: [`security_loop`] collects it every `security-interval` (default 1 h) and as
//! soon as one of the files that betray a change (package database, sshd configuration,
//! `reboot-required`, ClamAV database, firewall configuration) has a new modification
//! time; every report carries the last value ([`SecurityState`]).
//!
//! The parsers are pure functions, tested with sample outputs.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, NaiveDateTime, Utc};
use fleet_schemas::api::{
    SecurityIn, MAX_ANTIVIRUS_SIGNATURE_AGE_HOURS, SSH_PERMIT_ROOT_LOGIN_VALUES,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::process;
use crate::sync::lock;

/// Longest one probe may run before it is killed and its field left empty.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Most bytes of a probe's stdout, and of its stderr, kept (the rest is read and dropped).
pub const PROBE_MAX_OUTPUT: usize = 1 << 20;

/// Most bytes of one sshd configuration file read.
const MAX_CONFIG_FILE: u64 = 256 * 1024;

/// Deepest `Include` nesting followed in the sshd configuration (sshd allows 16).
const MAX_INCLUDE_DEPTH: usize = 16;

/// How often the change-trigger files are checked for a new modification time.
const CHANGE_POLL: Duration = Duration::from_secs(60);

/// What was found; `None` where nothing could tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Posture {
    /// A host firewall filters incoming traffic (ufw active, firewalld running, an nftables
    /// or iptables input chain with rules or a drop/reject policy).
    pub firewall_active: Option<bool>,
    /// Packages with a pending update (apt or dnf).
    pub pending_updates: Option<u32>,
    /// Of those, updates from a security source.
    pub pending_security_updates: Option<u32>,
    /// The system asks for a reboot (`/var/run/reboot-required`, `needs-restarting -r`).
    pub reboot_required: Option<bool>,
    /// Effective `PermitRootLogin` of sshd (`yes`, `no`, `prohibit-password`, ...).
    pub ssh_permit_root_login: Option<String>,
    /// Effective `PasswordAuthentication` of sshd.
    pub ssh_password_authentication: Option<bool>,
    /// ClamAV is installed (its database or `clamscan` found).
    pub antivirus_present: Option<bool>,
    /// Age of the newest ClamAV signature database, seconds.
    pub antivirus_signature_age_seconds: Option<u64>,
}

impl Posture {
    /// The report's `security` field (what the wire schema carries). The signature age
    /// goes in hours, at most [`MAX_ANTIVIRUS_SIGNATURE_AGE_HOURS`] (the gateway's bound:
    /// an older database, or a clock far off, says "ten years or more").
    pub fn to_report(&self) -> SecurityIn {
        SecurityIn {
            firewall_enabled: self.firewall_active,
            pending_updates: self.pending_updates,
            pending_security_updates: self.pending_security_updates,
            reboot_required: self.reboot_required,
            ssh_permit_root_login: self.ssh_permit_root_login.clone(),
            ssh_password_authentication: self.ssh_password_authentication,
            antivirus_present: self.antivirus_present,
            antivirus_signature_age_hours: self
                .antivirus_signature_age_seconds
                .map(|s| (s as f64 / 3600.0).min(MAX_ANTIVIRUS_SIGNATURE_AGE_HOURS)),
        }
    }
}

/// Debian/Ubuntu's reboot flag file.
pub const REBOOT_REQUIRED_FILE: &str = "/var/run/reboot-required";
/// The sshd configuration.
pub const SSHD_CONFIG: &str = "/etc/ssh/sshd_config";
/// ClamAV's database directory.
pub const CLAMAV_DATABASE: &str = "/var/lib/clamav";

/// Where the file-based probes look. [`Sources::default`] is the system's locations.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Debian/Ubuntu's reboot flag file.
    pub reboot_required: PathBuf,
    /// The sshd configuration (read when `sshd -T` cannot run).
    pub sshd_config: PathBuf,
    /// ClamAV's database directory (`*.cvd`, `*.cld`).
    pub clamav_db: PathBuf,
    /// Files and directories whose modification time changing triggers a collection.
    pub change_triggers: Vec<PathBuf>,
    /// Timeout of each probe.
    pub timeout: Duration,
}

impl Default for Sources {
    fn default() -> Self {
        Self::at(
            Path::new(REBOOT_REQUIRED_FILE),
            Path::new(SSHD_CONFIG),
            Path::new(CLAMAV_DATABASE),
        )
    }
}

impl Sources {
    /// The file probes at these paths (the agent's `security-*` settings), watched with
    /// the `sshd_config.d` beside the sshd configuration and the package databases and
    /// firewall configurations at their system locations.
    pub fn at(reboot_required: &Path, sshd_config: &Path, clamav_db: &Path) -> Self {
        let system = [
            "/var/lib/dpkg/status",
            "/var/lib/apt/lists",
            "/var/lib/rpm",
            "/var/cache/dnf",
            "/etc/ufw/ufw.conf",
            "/etc/firewalld",
            "/etc/nftables.conf",
        ]
        .into_iter()
        .map(PathBuf::from);
        let sshd_dropins = sshd_config.with_file_name("sshd_config.d");
        Self {
            reboot_required: reboot_required.to_path_buf(),
            sshd_config: sshd_config.to_path_buf(),
            clamav_db: clamav_db.to_path_buf(),
            change_triggers: system
                .chain([
                    reboot_required.to_path_buf(),
                    sshd_config.to_path_buf(),
                    sshd_dropins,
                    clamav_db.to_path_buf(),
                ])
                .collect(),
            timeout: PROBE_TIMEOUT,
        }
    }
}

/// Modification times of the change triggers (absent → `None`).
pub fn change_fingerprint(sources: &Sources) -> Vec<Option<SystemTime>> {
    sources
        .change_triggers
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// The last collected posture, shared by the security loop and the collect loop.
#[derive(Debug, Default)]
pub struct SecurityState {
    current: Mutex<Option<SecurityIn>>,
}

impl SecurityState {
    /// The value the next report carries (`None` before the first collection).
    pub fn current(&self) -> Option<SecurityIn> {
        lock(&self.current).clone()
    }

    fn set(&self, value: SecurityIn) {
        *lock(&self.current) = Some(value);
    }
}

/// Collects the posture at start, then every `interval` and whenever a change trigger's
/// modification time changes, until cancelled. Probes run on the blocking pool.
pub async fn security_loop(
    state: Arc<SecurityState>,
    sources: Sources,
    interval: Duration,
    cancel: CancellationToken,
) {
    let sources = Arc::new(sources);
    let poll = CHANGE_POLL.min(interval);
    let mut last: Option<Posture> = None;
    let mut last_fp: Option<Vec<Option<SystemTime>>> = None;
    let mut last_at: Option<tokio::time::Instant> = None;
    loop {
        let due = last_at.is_none_or(|t| t.elapsed() >= interval);
        let job_sources = Arc::clone(&sources);
        let fp = tokio::select! {
            () = cancel.cancelled() => return,
            r = tokio::task::spawn_blocking(move || change_fingerprint(&job_sources)) => r.ok(),
        };
        let changed = fp.is_some() && last_fp.is_some() && fp != last_fp;
        if due || changed {
            let job_sources = Arc::clone(&sources);
            let job_cancel = cancel.clone();
            let job = tokio::task::spawn_blocking(move || collect_until(&job_sources, &job_cancel));
            let posture = tokio::select! {
                () = cancel.cancelled() => return,
                r = job => r,
            };
            match posture {
                Ok(p) => {
                    if last.as_ref() != Some(&p) {
                        info!(posture = ?p, trigger = if changed { "change" } else { "timer" }, "Security posture collected.");
                    }
                    state.set(p.to_report());
                    last = Some(p);
                }
                Err(e) => debug!(error = %e, "Security posture collection failed."),
            }
            last_at = Some(tokio::time::Instant::now());
            last_fp = fp;
        } else if last_fp.is_none() {
            last_fp = fp;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// Runs every probe now (blocking: tools and file reads).
pub fn collect(sources: &Sources) -> Posture {
    collect_until(sources, &CancellationToken::new())
}

/// [`collect`], giving up (remaining fields empty, a running tool killed) once `cancel`
/// fires, so an agent that stops never waits for a slow probe.
pub fn collect_until(sources: &Sources, cancel: &CancellationToken) -> Posture {
    let p = &Probe {
        timeout: sources.timeout,
        cancel,
    };
    let (pending_updates, pending_security_updates, apt) = pending_updates(p);
    let mut reboot_required = if sources.reboot_required.exists() {
        Some(true)
    } else {
        None
    };
    if reboot_required.is_none() {
        reboot_required = p
            .run("needs-restarting", &["-r"])
            .and_then(|o| match o.code {
                Some(0) => Some(false),
                Some(1) => Some(true),
                _ => None,
            });
    }
    if reboot_required.is_none() && apt {
        // On apt systems the flag file is how a reboot is asked for: no file, no reboot.
        reboot_required = Some(false);
    }
    let ssh = p
        .run("sshd", &["-T"])
        .filter(|o| o.code == Some(0))
        .map(|o| parse_sshd_t(&o.stdout))
        .filter(|s| s.permit_root_login.is_some() || s.password_authentication.is_some())
        .or_else(|| {
            sources.sshd_config.exists().then(|| {
                let mut s = parse_sshd_config_file(&sources.sshd_config);
                s.apply_defaults();
                s
            })
        })
        .unwrap_or_default();
    let (antivirus_present, antivirus_signature_age_seconds) = clamav(sources, p);
    Posture {
        firewall_active: firewall_active(p),
        pending_updates,
        pending_security_updates,
        reboot_required,
        ssh_permit_root_login: ssh.permit_root_login,
        ssh_password_authentication: ssh.password_authentication,
        antivirus_present,
        antivirus_signature_age_seconds,
    }
}

fn firewall_active(p: &Probe<'_>) -> Option<bool> {
    let answers = [
        p.run("ufw", &["status"])
            .filter(|o| o.code == Some(0))
            .and_then(|o| parse_ufw_status(&o.stdout)),
        // `firewall-cmd --state`: "running" (0) or "not running" (252).
        p.run("firewall-cmd", &["--state"])
            .and_then(|o| match o.code {
                Some(0) => Some(o.stdout.trim() == "running"),
                Some(252) => Some(false),
                _ => None,
            }),
        p.run("nft", &["list", "ruleset"])
            .filter(|o| o.code == Some(0))
            .map(|o| parse_nft_ruleset(&o.stdout)),
        p.run("iptables", &["-S", "INPUT"])
            .filter(|o| o.code == Some(0))
            .and_then(|o| parse_iptables_input(&o.stdout)),
    ];
    answers.iter().flatten().copied().reduce(|a, b| a || b)
}

/// (pending, pending security, whether apt answered).
fn pending_updates(p: &Probe<'_>) -> (Option<u32>, Option<u32>, bool) {
    if let Some(o) = p
        .run("apt-get", &["-s", "-o", "Debug::NoLocking=1", "upgrade"])
        .filter(|o| o.code == Some(0))
    {
        let (all, security) = parse_apt_simulation(&o.stdout);
        return (Some(all), Some(security), true);
    }
    let Some(all) = p
        .run("dnf", &["-q", "-C", "check-update"])
        .and_then(|o| parse_dnf_check_update(o.code, &o.stdout))
    else {
        return (None, None, false);
    };
    let security = p
        .run(
            "dnf",
            &["-q", "-C", "updateinfo", "list", "--security", "--updates"],
        )
        .filter(|o| o.code == Some(0))
        .map(|o| parse_dnf_updateinfo(&o.stdout));
    (Some(all), security, false)
}

fn clamav(sources: &Sources, p: &Probe<'_>) -> (Option<bool>, Option<u64>) {
    let now = SystemTime::now();
    let newest = newest_signature_db(&sources.clamav_db);
    if let Some(mtime) = newest {
        let age = now.duration_since(mtime).map_or(0, |d| d.as_secs());
        return (Some(true), Some(age));
    }
    match p
        .run("clamscan", &["--version"])
        .filter(|o| o.code == Some(0))
    {
        Some(o) => {
            let age = parse_clamav_version_date(&o.stdout)
                .map(|d| u64::try_from((Utc::now() - d).num_seconds().max(0)).unwrap_or(0));
            (Some(true), age)
        }
        None => (None, None),
    }
}

/// Newest modification time of the `*.cvd` and `*.cld` files in `dir`.
fn newest_signature_db(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".cvd") || name.ends_with(".cld")
        })
        .take(1024)
        .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
        .max()
}

/// A probe's outcome: exit code (`None` if killed by a signal) and bounded output.
#[derive(Debug)]
pub struct ProbeOutput {
    /// Exit code.
    pub code: Option<i32>,
    /// Stdout, at most [`PROBE_MAX_OUTPUT`] bytes, lossily decoded.
    pub stdout: String,
    /// Stderr, likewise.
    pub stderr: String,
}

/// Runs `program args` found on `PATH` with `LC_ALL=C`; `None` when it cannot start or
/// exceeds `timeout` (then it is killed with its process group).
pub fn run(program: &str, args: &[&str], timeout: Duration) -> Option<ProbeOutput> {
    Probe {
        timeout,
        cancel: &CancellationToken::new(),
    }
    .run(program, args)
}

/// How probes run: their timeout, and the agent's stop.
struct Probe<'a> {
    timeout: Duration,
    cancel: &'a CancellationToken,
}

impl Probe<'_> {
    /// [`run`], also killing the tool (and answering `None`) once `cancel` fires.
    fn run(&self, program: &str, args: &[&str]) -> Option<ProbeOutput> {
        let limits = process::Limits {
            timeout: self.timeout,
            max_output: PROBE_MAX_OUTPUT,
        };
        match process::run(program, args, limits, self.cancel) {
            Ok(o) => Some(ProbeOutput {
                code: o.code,
                stdout: o.stdout,
                stderr: o.stderr,
            }),
            Err(e) => {
                debug!(program, error = %e, "Security probe gave nothing.");
                None
            }
        }
    }
}

/// `ufw status`: `Status: active` / `Status: inactive`.
pub fn parse_ufw_status(output: &str) -> Option<bool> {
    output.lines().find_map(|l| {
        let v = l.trim().strip_prefix("Status:")?.trim();
        match v {
            "active" => Some(true),
            "inactive" => Some(false),
            _ => None,
        }
    })
}

/// `nft list ruleset`: active when a base chain hooked on `input` has a rule or a drop
/// (or reject) policy.
pub fn parse_nft_ruleset(output: &str) -> bool {
    let mut in_chain = false;
    let mut input_chain = false;
    for line in output.lines().map(str::trim) {
        if line.starts_with("chain ") && line.ends_with('{') {
            in_chain = true;
            input_chain = false;
            continue;
        }
        if !in_chain {
            continue;
        }
        if line == "}" {
            in_chain = false;
            continue;
        }
        if line.starts_with("type ") && line.contains(" hook ") {
            input_chain = line.contains("hook input");
            if input_chain && (line.contains("policy drop") || line.contains("policy reject")) {
                return true;
            }
            continue;
        }
        if input_chain && !line.is_empty() && !line.starts_with("comment ") {
            return true;
        }
    }
    false
}

/// `iptables -S INPUT`: active when the policy is not ACCEPT or a rule is appended.
pub fn parse_iptables_input(output: &str) -> Option<bool> {
    let mut seen = false;
    for line in output.lines().map(str::trim) {
        if let Some(policy) = line.strip_prefix("-P INPUT ") {
            seen = true;
            if policy.trim() != "ACCEPT" {
                return Some(true);
            }
        } else if line.starts_with("-A INPUT ") {
            return Some(true);
        }
    }
    seen.then_some(false)
}

/// `apt-get -s upgrade`: (upgrades, upgrades from a `*-security` source). Each
/// `Inst name [old] (new origin [arch])` line is one package.
pub fn parse_apt_simulation(output: &str) -> (u32, u32) {
    let mut all = 0u32;
    let mut security = 0u32;
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("Inst ") else {
            continue;
        };
        all = all.saturating_add(1);
        let origin = rest.split_once('(').map_or("", |(_, o)| o);
        if origin.to_ascii_lowercase().contains("-security") {
            security = security.saturating_add(1);
        }
    }
    (all, security)
}

/// `dnf check-update`: exit 0 = none, 100 = the listed packages (`name.arch version
/// repo`), until the `Obsoleting Packages` section. Any other exit: `None`.
pub fn parse_dnf_check_update(code: Option<i32>, output: &str) -> Option<u32> {
    match code {
        Some(0) => Some(0),
        Some(100) => {
            let mut names = BTreeSet::new();
            for line in output.lines() {
                if line.starts_with("Obsoleting") {
                    break;
                }
                let fields: Vec<&str> = line.split_whitespace().collect();
                // Continuation lines (a long name wraps) have fewer fields; skip them.
                if fields.len() == 3 && fields[0].contains('.') && !line.starts_with(' ') {
                    names.insert(fields[0]);
                }
            }
            Some(u32::try_from(names.len()).unwrap_or(u32::MAX))
        }
        _ => None,
    }
}

/// `dnf updateinfo list --security`: lines `ADVISORY SEVERITY/Sec. package-nevra`;
/// counts distinct packages.
pub fn parse_dnf_updateinfo(output: &str) -> u32 {
    let packages: BTreeSet<&str> = output
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.len() >= 3 && fields[0].contains('-') && !l.starts_with("Last metadata"))
                .then(|| fields[fields.len() - 1])
        })
        .collect();
    u32::try_from(packages.len()).unwrap_or(u32::MAX)
}

/// `clamscan --version`: `ClamAV 1.0.3/27099/Tue Nov 14 09:28:39 2023` → the date of
/// the signatures.
pub fn parse_clamav_version_date(output: &str) -> Option<DateTime<Utc>> {
    let line = output.lines().next()?;
    let date = line.splitn(3, '/').nth(2)?.trim();
    NaiveDateTime::parse_from_str(date, "%a %b %e %H:%M:%S %Y")
        .ok()
        .map(|d| d.and_utc())
}

/// The two sshd settings the posture reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshSettings {
    /// `permitrootlogin`, lowercase.
    pub permit_root_login: Option<String>,
    /// `passwordauthentication`.
    pub password_authentication: Option<bool>,
}

impl SshSettings {
    /// OpenSSH's defaults for what the files left unset.
    pub fn apply_defaults(&mut self) {
        self.permit_root_login
            .get_or_insert_with(|| "prohibit-password".to_owned());
        self.password_authentication.get_or_insert(true);
    }

    /// Takes `key value` if the key is one of ours and still unset (first value wins).
    fn offer(&mut self, key: &str, value: &str) {
        let value = value.trim().trim_matches('"').to_ascii_lowercase();
        match key.to_ascii_lowercase().as_str() {
            "permitrootlogin" if self.permit_root_login.is_none() => {
                // "without-password" is the old spelling of prohibit-password; a value
                // sshd does not know (it would refuse to start) tells nothing.
                let v = if value == "without-password" {
                    "prohibit-password".to_owned()
                } else {
                    value
                };
                self.permit_root_login = SSH_PERMIT_ROOT_LOGIN_VALUES
                    .contains(&v.as_str())
                    .then_some(v);
            }
            "passwordauthentication" if self.password_authentication.is_none() => {
                self.password_authentication = match value.as_str() {
                    "yes" => Some(true),
                    "no" => Some(false),
                    _ => None,
                };
            }
            _ => {}
        }
    }
}

/// `sshd -T`: one `key value` per line, keys lowercase, effective values.
pub fn parse_sshd_t(output: &str) -> SshSettings {
    let mut s = SshSettings::default();
    for line in output.lines() {
        if let Some((k, v)) = split_directive(line) {
            s.offer(k, v);
        }
    }
    s
}

/// `Key value`, `Key=value` or `Key = value`; `None` for blanks and comments.
fn split_directive(line: &str) -> Option<(&str, &str)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line.find(|c: char| c.is_whitespace() || c == '=')?;
    let (key, rest) = line.split_at(end);
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
    Some((key, rest))
}

/// Reads an sshd configuration file as sshd does for the global settings: the first
/// value of a keyword wins, `Include` files are read in place (globs sorted, relative
/// paths under the main file's directory, `/etc/ssh`), and `Match` blocks (which
/// apply only to some connections) are skipped up to a `Match all`.
pub fn parse_sshd_config_file(path: &Path) -> SshSettings {
    let mut s = SshSettings::default();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut in_match = false;
    read_config(path, &base, 0, &mut in_match, &mut s);
    s
}

/// Parses configuration text (no includes): the pure core of
/// [`parse_sshd_config_file`], with `include` resolving an `Include` argument to texts.
pub fn parse_sshd_config_text(
    text: &str,
    include: &mut dyn FnMut(&str) -> Vec<String>,
) -> SshSettings {
    let mut s = SshSettings::default();
    let mut in_match = false;
    walk_text(text, include, &mut in_match, &mut s);
    s
}

fn walk_text(
    text: &str,
    include: &mut dyn FnMut(&str) -> Vec<String>,
    in_match: &mut bool,
    s: &mut SshSettings,
) {
    for line in text.lines() {
        let Some((key, value)) = split_directive(line) else {
            continue;
        };
        if key.eq_ignore_ascii_case("match") {
            *in_match = !value.eq_ignore_ascii_case("all");
            continue;
        }
        if *in_match {
            continue;
        }
        if key.eq_ignore_ascii_case("include") {
            for arg in value.split_whitespace() {
                for t in include(arg) {
                    walk_text(&t, include, in_match, s);
                }
            }
            continue;
        }
        s.offer(key, value);
    }
}

fn read_config(path: &Path, base: &Path, depth: usize, in_match: &mut bool, s: &mut SshSettings) {
    if depth > MAX_INCLUDE_DEPTH {
        return;
    }
    let Some(text) = read_small(path) else {
        return;
    };
    let mut include = |arg: &str| -> Vec<String> {
        let pattern = if Path::new(arg).is_absolute() {
            PathBuf::from(arg)
        } else {
            base.join(arg)
        };
        let mut texts = Vec::new();
        for file in expand_glob(&pattern) {
            // Nested includes: read recursively, collecting their effective text order.
            let mut nested = SshSettings::default();
            let mut nested_match = false;
            read_config(&file, base, depth + 1, &mut nested_match, &mut nested);
            // Re-express the nested result as directives (first value wins upstream).
            let mut t = String::new();
            if let Some(v) = &nested.permit_root_login {
                t.push_str(&format!("PermitRootLogin {v}\n"));
            }
            if let Some(v) = nested.password_authentication {
                t.push_str(&format!(
                    "PasswordAuthentication {}\n",
                    if v { "yes" } else { "no" }
                ));
            }
            texts.push(t);
        }
        texts
    };
    walk_text(&text, &mut include, in_match, s);
}

fn read_small(path: &Path) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(MAX_CONFIG_FILE).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Files matching `pattern`, whose last component may hold `*` and `?`; sorted.
fn expand_glob(pattern: &Path) -> Vec<PathBuf> {
    let Some(name) = pattern
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    else {
        return Vec::new();
    };
    if !name.contains(['*', '?']) {
        return if pattern.is_file() {
            vec![pattern.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    let dir = pattern.parent().unwrap_or(Path::new("/"));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .take(4096)
        .filter(|e| wildcard(&name, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Shell-style match of `*` and `?`.
pub fn wildcard(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn ufw_status() {
        let active = "Status: active\n\nTo                         Action      From\n--                         ------      ----\n22/tcp                     ALLOW       Anywhere\n";
        assert_eq!(parse_ufw_status(active), Some(true));
        assert_eq!(parse_ufw_status("Status: inactive\n"), Some(false));
        assert_eq!(
            parse_ufw_status("ERROR: You need to be root to run this script\n"),
            None
        );
    }

    #[test]
    fn nft_ruleset_counts_only_input_filtering() {
        let empty = "";
        assert!(!parse_nft_ruleset(empty));
        let accept_only = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tct state established accept\n\t}\n}\n";
        assert!(!parse_nft_ruleset(accept_only), "forward rules only");
        let drop_policy = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t}\n}\n";
        assert!(parse_nft_ruleset(drop_policy));
        let with_rule = "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tiifname \"lo\" accept\n\t\ttcp dport 22 accept\n\t}\n}\n";
        assert!(parse_nft_ruleset(with_rule));
        let nat_only = "table ip nat {\n\tchain POSTROUTING {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\toifname \"eth0\" masquerade\n\t}\n}\n";
        assert!(!parse_nft_ruleset(nat_only));
    }

    #[test]
    fn iptables_input() {
        assert_eq!(parse_iptables_input("-P INPUT ACCEPT\n"), Some(false));
        assert_eq!(parse_iptables_input("-P INPUT DROP\n"), Some(true));
        assert_eq!(
            parse_iptables_input("-P INPUT ACCEPT\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n"),
            Some(true)
        );
        assert_eq!(parse_iptables_input("iptables: Permission denied\n"), None);
    }

    #[test]
    fn apt_simulation_counts_security_origins() {
        let out = "NOTE: This is only a simulation!\n\
Reading package lists...\n\
The following packages will be upgraded:\n  libssl3 openssl tzdata\n\
3 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n\
Inst libssl3 [3.0.2-0ubuntu1.10] (3.0.2-0ubuntu1.12 Ubuntu:22.04/jammy-updates, Ubuntu:22.04/jammy-security [amd64])\n\
Inst openssl [3.0.2-0ubuntu1.10] (3.0.2-0ubuntu1.12 Debian-Security:12/stable-security [amd64])\n\
Inst tzdata [2023c-0ubuntu0.22.04.1] (2024a-0ubuntu0.22.04 Ubuntu:22.04/jammy-updates [all])\n\
Conf libssl3 (3.0.2-0ubuntu1.12 Ubuntu:22.04/jammy-updates [amd64])\n\
Conf openssl (3.0.2-0ubuntu1.12 Ubuntu:22.04/jammy-updates [amd64])\n";
        assert_eq!(parse_apt_simulation(out), (3, 2));
        assert_eq!(
            parse_apt_simulation(
                "0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n"
            ),
            (0, 0)
        );
    }

    #[test]
    fn dnf_check_update() {
        let out = "\n\
kernel.x86_64                         5.14.0-362.13.1.el9_3          baseos\n\
openssl-libs.x86_64                   1:3.0.7-25.el9_3               baseos\n\
a-very-long-package-name-that-wraps.noarch\n\
                                      1.2-3.el9                      appstream\n\
Obsoleting Packages\n\
grub2-tools.x86_64                    1:2.06-70.el9_3.1              baseos\n";
        assert_eq!(parse_dnf_check_update(Some(100), out), Some(2));
        assert_eq!(parse_dnf_check_update(Some(0), ""), Some(0));
        assert_eq!(parse_dnf_check_update(Some(1), "Error: cache empty"), None);
        assert_eq!(parse_dnf_check_update(None, out), None);
    }

    #[test]
    fn dnf_updateinfo_counts_distinct_packages() {
        let out = "Last metadata expiration check: 0:10:00 ago on Mon 04 Dec 2023.\n\
RHSA-2023:7549 Important/Sec. kernel-5.14.0-362.13.1.el9_3.x86_64\n\
RHSA-2023:7549 Important/Sec. kernel-core-5.14.0-362.13.1.el9_3.x86_64\n\
RHSA-2023:7877 Low/Sec.       openssl-libs-1:3.0.7-25.el9_3.x86_64\n\
RHSA-2023:7999 Low/Sec.       openssl-libs-1:3.0.7-25.el9_3.x86_64\n";
        assert_eq!(parse_dnf_updateinfo(out), 3);
        assert_eq!(parse_dnf_updateinfo(""), 0);
    }

    #[test]
    fn clamav_version_date() {
        let d = parse_clamav_version_date("ClamAV 1.0.3/27099/Tue Nov 14 09:28:39 2023\n");
        assert_eq!(
            d.map(|d| d.to_rfc3339()),
            Some("2023-11-14T09:28:39+00:00".to_owned())
        );
        assert_eq!(parse_clamav_version_date("ClamAV 1.0.3\n"), None);
        assert_eq!(parse_clamav_version_date(""), None);
    }

    #[test]
    fn sshd_t_output() {
        let out = "port 22\naddressfamily any\npermitrootlogin without-password\npubkeyauthentication yes\npasswordauthentication no\n";
        assert_eq!(
            parse_sshd_t(out),
            SshSettings {
                permit_root_login: Some("prohibit-password".into()),
                password_authentication: Some(false),
            }
        );
        assert_eq!(parse_sshd_t(""), SshSettings::default());
    }

    #[test]
    fn sshd_config_first_value_wins_and_match_blocks_are_skipped() {
        let main = "# comment\n\
Include /etc/ssh/sshd_config.d/*.conf\n\
PermitRootLogin yes\n\
Match User backup\n\
    PasswordAuthentication no\n\
    PermitRootLogin no\n";
        let mut asked = Vec::new();
        let s = parse_sshd_config_text(main, &mut |arg| {
            asked.push(arg.to_owned());
            vec!["# drop-in\nPermitRootLogin=no\n".to_owned()]
        });
        assert_eq!(asked, vec!["/etc/ssh/sshd_config.d/*.conf"]);
        // The include comes first, so its value wins; the Match block does not count.
        assert_eq!(s.permit_root_login.as_deref(), Some("no"));
        assert_eq!(s.password_authentication, None);
        let mut s2 = s.clone();
        s2.apply_defaults();
        assert_eq!(s2.password_authentication, Some(true), "OpenSSH default");

        let after_match_all = "Match Address 10.0.0.0/8\nPasswordAuthentication yes\nMatch all\nPasswordAuthentication   no\n";
        let s = parse_sshd_config_text(after_match_all, &mut |_| Vec::new());
        assert_eq!(s.password_authentication, Some(false));
    }

    #[test]
    fn sshd_config_files_with_includes() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().join("sshd_config.d");
        std::fs::create_dir(&d)?;
        std::fs::write(
            dir.path().join("sshd_config"),
            "Include sshd_config.d/*.conf\nPermitRootLogin yes\nPasswordAuthentication yes\n",
        )?;
        // Read in sorted order: 10- before 50-; a Match block inside an include ends there.
        std::fs::write(
            d.join("50-cloud.conf"),
            "PasswordAuthentication no\nPermitRootLogin prohibit-password\n",
        )?;
        std::fs::write(
            d.join("10-admin.conf"),
            "Match Group admins\nPermitRootLogin no\n",
        )?;
        std::fs::write(d.join("ignored.txt"), "PermitRootLogin no\n")?;
        let s = parse_sshd_config_file(&dir.path().join("sshd_config"));
        assert_eq!(s.permit_root_login.as_deref(), Some("prohibit-password"));
        assert_eq!(s.password_authentication, Some(false));

        // A file including itself stops at the depth bound instead of looping.
        std::fs::write(
            dir.path().join("loop"),
            "Include loop\nPermitRootLogin no\n",
        )?;
        let s = parse_sshd_config_file(&dir.path().join("loop"));
        assert_eq!(s.permit_root_login.as_deref(), Some("no"));
        Ok(())
    }

    #[test]
    fn the_report_carries_every_finding_with_the_age_in_hours() {
        let p = Posture {
            firewall_active: Some(false),
            pending_updates: Some(4),
            pending_security_updates: Some(2),
            reboot_required: Some(true),
            ssh_permit_root_login: Some("forced-commands-only".into()),
            ssh_password_authentication: Some(true),
            antivirus_present: Some(true),
            antivirus_signature_age_seconds: Some(5400),
        };
        assert_eq!(
            p.to_report(),
            SecurityIn {
                firewall_enabled: Some(false),
                pending_updates: Some(4),
                pending_security_updates: Some(2),
                reboot_required: Some(true),
                ssh_permit_root_login: Some("forced-commands-only".into()),
                ssh_password_authentication: Some(true),
                antivirus_present: Some(true),
                antivirus_signature_age_hours: Some(1.5),
            }
        );
        // A database dated decades back (a clock far off) stays within the gateway's bound.
        let ancient = Posture {
            antivirus_signature_age_seconds: Some(u64::MAX),
            ..Posture::default()
        };
        assert_eq!(
            ancient.to_report().antivirus_signature_age_hours,
            Some(MAX_ANTIVIRUS_SIGNATURE_AGE_HOURS)
        );
        // Unknown findings are left out of the JSON, so older gateways take the report.
        let json = serde_json::to_value(Posture::default().to_report()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"firewall_enabled": null, "pending_updates": null, "pending_security_updates": null})
        );
    }

    #[test]
    fn an_unknown_permit_root_login_value_tells_nothing() {
        let s = parse_sshd_t("permitrootlogin sometimes\npasswordauthentication maybe\n");
        assert_eq!(s, SshSettings::default());
        let s = parse_sshd_config_text("PermitRootLogin Forced-Commands-Only\n", &mut |_| {
            Vec::new()
        });
        assert_eq!(s.permit_root_login.as_deref(), Some("forced-commands-only"));
    }

    #[test]
    fn configured_paths_are_probed_and_watched() {
        let s = Sources::at(
            Path::new("/srv/fx/reboot-required"),
            Path::new("/srv/fx/ssh/sshd_config"),
            Path::new("/srv/fx/clamav"),
        );
        assert_eq!(s.sshd_config, Path::new("/srv/fx/ssh/sshd_config"));
        for watched in [
            "/srv/fx/reboot-required",
            "/srv/fx/ssh/sshd_config",
            "/srv/fx/ssh/sshd_config.d",
            "/srv/fx/clamav",
            "/var/lib/dpkg/status",
        ] {
            assert!(
                s.change_triggers.iter().any(|p| p == Path::new(watched)),
                "{watched} is watched"
            );
        }
        assert!(!s
            .change_triggers
            .iter()
            .any(|p| p == Path::new(SSHD_CONFIG)));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("*.conf", "50-cloud.conf"));
        assert!(!wildcard("*.conf", "50-cloud.conf.bak"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("a?c", "ac"));
        assert!(wildcard("*", ""));
    }

    #[test]
    fn probes_of_absent_tools_and_timeouts_give_nothing() {
        assert!(run("fleet-no-such-tool-xyz", &[], Duration::from_secs(1)).is_none());
        let started = Instant::now();
        assert!(run("sleep", &["5"], Duration::from_millis(200)).is_none());
        assert!(started.elapsed() < Duration::from_secs(3));
        let o = run(
            "sh",
            &["-c", "head -c 3000000 /dev/zero; exit 3"],
            Duration::from_secs(10),
        );
        let o = o.expect("sh runs");
        assert_eq!(o.code, Some(3));
        assert_eq!(o.stdout.len(), PROBE_MAX_OUTPUT, "output is bounded");
    }

    #[test]
    fn a_stopping_agent_does_not_wait_for_a_probe() {
        let token = CancellationToken::new();
        let stopper = token.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            stopper.cancel();
        });
        let probe = Probe {
            timeout: Duration::from_secs(20),
            cancel: &token,
        };
        let started = Instant::now();
        assert!(probe.run("sleep", &["10"]).is_none());
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(
            probe.run("true", &[]).is_none(),
            "nothing starts once stopped"
        );
    }

    #[test]
    fn clamav_database_age() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let sources = Sources {
            clamav_db: dir.path().to_path_buf(),
            ..Sources::default()
        };
        std::fs::write(dir.path().join("freshclam.dat"), "x")?;
        let old = SystemTime::now() - Duration::from_secs(7200);
        let f = std::fs::File::create(dir.path().join("main.cvd"))?;
        f.set_modified(old)?;
        let f = std::fs::File::create(dir.path().join("daily.cld"))?;
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))?;
        let token = CancellationToken::new();
        let probe = Probe {
            timeout: Duration::from_secs(1),
            cancel: &token,
        };
        let (present, age) = clamav(&sources, &probe);
        assert_eq!(present, Some(true));
        let age = age.expect("an age");
        assert!((3600..3700).contains(&age), "newest file counts: {age}");
        Ok(())
    }
}
