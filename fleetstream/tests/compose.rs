//! The compose stack (`compose/docker-compose.yml`) agrees with the binary and its
//! configurations: no Docker engine needed. Each role's mounted config is loaded the way
//! the binary loads it (`fleet_service::config::load`, deny_unknown_fields), with the
//! `FLEET_<ROLE>__*` variables the compose file sets applied on top; each service's
//! `command:` is run through the binary's own argument parser (`fleetstream <command>
//! --help`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fleet_ingest_gateway::GatewayConfig;
use fleet_notifier::NotifierConfig;
use fleet_projections::ProjectionsConfig;
use fleet_query_api::ApiConfig;
use fleet_stream_processors::ProcessorsConfig;
use serde_norway::Value;

/// The server subcommands of `fleetstream` and the configuration each reads: `api` reads
/// a projections configuration (and its `FLEET_PROJECTIONS__*` variables).
const ROLES: [(&str, &str); 5] = [
    ("gateway", "gateway"),
    ("processors", "processors"),
    ("projections", "projections"),
    ("api", "projections"),
    ("notifier", "notifier"),
];

/// The configuration (and environment prefix) a subcommand reads.
fn config_role(subcommand: &str) -> &'static str {
    ROLES
        .iter()
        .find(|(cmd, _)| *cmd == subcommand)
        .map(|(_, cfg)| *cfg)
        .unwrap_or_else(|| panic!("`{subcommand}` is not a server role of fleetstream"))
}

/// The `fleetstream` binary of this build.
fn fleetstream() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_fleetstream"))
}

/// Whether the binary's argument parser accepts `args` (with `--help` appended, so that
/// nothing runs): exit status and the combined output.
fn binary_accepts(args: &[String]) -> (bool, String) {
    let out = fleetstream()
        .args(args)
        .arg("--help")
        .output()
        .expect("runs fleetstream");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn compose_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../compose")).to_path_buf()
}

/// `compose/.env`: KEY=VALUE lines.
fn dotenv() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(compose_dir().join(".env")).expect("compose/.env");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("bad .env line {l:?}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

/// Compose interpolation against `.env`: `$$`, `${VAR}`, `${VAR:-default}`,
/// `${VAR:?message}` (a test value stands in for a required variable left empty).
fn interpolate(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$$") {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix("${") {
            let end = r
                .find('}')
                .unwrap_or_else(|| panic!("unclosed ${{ in {s:?}"));
            let expr = &r[..end];
            let value = if let Some((var, default)) = expr.split_once(":-") {
                env.get(var)
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .unwrap_or_else(|| default.to_owned())
            } else if let Some((var, _)) = expr.split_once(":?") {
                let v = env
                    .get(var)
                    .unwrap_or_else(|| panic!("{var} (required in {s:?}) is not in .env"));
                if v.is_empty() {
                    format!("test-value-of-{var}")
                } else {
                    v.clone()
                }
            } else {
                env.get(expr)
                    .unwrap_or_else(|| panic!("${{{expr}}} in {s:?} is not defined in .env"))
                    .clone()
            };
            out.push_str(&value);
            rest = &r[end + 1..];
        } else {
            panic!("bare $ in {s:?}: write $$ or ${{VAR}}");
        }
    }
    out.push_str(rest);
    out
}

fn compose() -> Value {
    let text = std::fs::read_to_string(compose_dir().join("docker-compose.yml"))
        .expect("compose/docker-compose.yml");
    let mut doc: Value = serde_norway::from_str(&text).expect("valid YAML");
    doc.apply_merge().expect("merge keys");
    doc
}

fn services(doc: &Value) -> BTreeMap<String, Value> {
    doc["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_owned(), v.clone()))
        .collect()
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A string or a list of strings (command, healthcheck test, ...).
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().map(str_of).collect(),
        Value::Null => Vec::new(),
        other => vec![str_of(other)],
    }
}

/// The services built from the Fleetstream image.
fn role_services(doc: &Value) -> BTreeMap<String, Value> {
    services(doc)
        .into_iter()
        .filter(|(_, s)| s["image"].as_str() == Some("${FLEETSTREAM_IMAGE}"))
        .collect()
}

/// The subcommand and the in-container config path of a role service.
fn role_command(name: &str, svc: &Value) -> (String, String) {
    let cmd = strings(&svc["command"]);
    assert!(
        cmd.len() == 3 && cmd[1] == "--config",
        "{name}: command must be `<role> --config <file>`, got {cmd:?}"
    );
    assert!(
        ROLES.iter().any(|(c, _)| *c == cmd[0]),
        "{name}: `{}` is not a server role of fleetstream ({ROLES:?})",
        cmd[0]
    );
    (cmd[0].clone(), cmd[2].clone())
}

/// Short-syntax volumes: (source, target, read-only).
fn volumes(svc: &Value) -> Vec<(String, String, bool)> {
    strings(&svc["volumes"])
        .iter()
        .map(|v| {
            let parts: Vec<&str> = v.split(':').collect();
            assert!(parts.len() >= 2, "volume {v:?}: use source:target[:ro]");
            (
                parts[0].to_owned(),
                parts[1].to_owned(),
                parts
                    .get(2)
                    .is_some_and(|m| m.split(',').any(|o| o == "ro")),
            )
        })
        .collect()
}

/// The host file mounted (read-only) at the config path of a role service.
fn mounted_config(name: &str, svc: &Value) -> PathBuf {
    let (_, target) = role_command(name, svc);
    let (source, _, ro) = volumes(svc)
        .into_iter()
        .find(|(_, t, _)| *t == target)
        .unwrap_or_else(|| panic!("{name}: --config {target} is not mounted"));
    assert!(ro, "{name}: {target} must be mounted read-only");
    let rel = source
        .strip_prefix("./config/")
        .unwrap_or_else(|| panic!("{name}: {source} must come from compose/config/"));
    let path = compose_dir().join("config").join(rel);
    assert!(path.is_file(), "{name}: {} does not exist", path.display());
    path
}

/// Environment of a service, interpolated.
fn environment(svc: &Value, env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    match &svc["environment"] {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| (str_of(k), interpolate(&str_of(v), env)))
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|i| {
                let s = str_of(i);
                let (k, v) = s.split_once('=').expect("KEY=VALUE");
                (k.to_owned(), interpolate(v, env))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A role's configuration as the binary in that service sees it.
#[derive(Debug)]
enum RoleConfig {
    Gateway(Box<GatewayConfig>),
    Processors(Box<ProcessorsConfig>),
    /// A projections file: the projections' settings and its `[api]` table.
    Projections(Box<ProjectionsConfig>, Box<ApiConfig>),
    Notifier(Box<NotifierConfig>),
}

impl RoleConfig {
    fn listen(&self) -> SocketAddr {
        match self {
            RoleConfig::Gateway(c) => c.listen,
            RoleConfig::Processors(c) => c.listen,
            RoleConfig::Projections(c, _) => c.listen,
            RoleConfig::Notifier(c) => c.listen,
        }
    }
    fn event_log(&self) -> &str {
        match self {
            RoleConfig::Gateway(c) => &c.event_log.url,
            RoleConfig::Processors(c) => &c.event_log.url,
            RoleConfig::Projections(c, _) => &c.event_log.url,
            RoleConfig::Notifier(c) => &c.event_log.url,
        }
    }
}

/// Loads the mounted config with `fleet_service::config::load`, like the binary; the
/// service's `FLEET_<ROLE>__*` variables are applied under a prefix unique to `tag`
/// and the service (tests run in parallel in one process).
fn load_role(tag: &str, name: &str, svc: &Value) -> RoleConfig {
    let env = dotenv();
    let (subcommand, _) = role_command(name, svc);
    let role = config_role(&subcommand);
    let file = mounted_config(name, svc);
    let own = fleet_service::config::env_prefix(role);
    let test_role = format!("compose-{tag}-{name}");
    let test_prefix = fleet_service::config::env_prefix(&test_role);
    // A projections file also holds the query API's [api] table (FLEET_API__*).
    let api_own = fleet_service::config::env_prefix("api");
    let api_role = format!("{test_role}-api");
    let api_prefix = fleet_service::config::env_prefix(&api_role);
    for (k, v) in environment(svc, &env) {
        if let Some(key) = k.strip_prefix(&own) {
            std::env::set_var(format!("{test_prefix}{key}"), v);
        } else if let Some(key) = k.strip_prefix(&api_own).filter(|_| role == "projections") {
            std::env::set_var(format!("{api_prefix}{key}"), v);
        } else {
            assert!(
                !k.starts_with("FLEET_") || k == "FLEET_LOG_FORMAT",
                "{name}: {k} is not read by the {role} role (its prefix is {own})"
            );
        }
    }
    let f = Some(file.as_path());
    let loaded = match role {
        "gateway" => fleet_service::config::load(&test_role, f).map(RoleConfig::Gateway),
        "processors" => fleet_service::config::load(&test_role, f).map(RoleConfig::Processors),
        "notifier" => fleet_service::config::load(&test_role, f).map(RoleConfig::Notifier),
        _ => fleet_service::config::load_part(&test_role, f, None, &["api"]).and_then(|c| {
            let api = fleet_service::config::load_with_table(&api_role, f, Some("api"))?;
            Ok(RoleConfig::Projections(Box::new(c), Box::new(api)))
        }),
    };
    loaded.unwrap_or_else(|e| panic!("{name}: {}: {e}", file.display()))
}

/// `host:port` of a `scheme://host:port[/...]` URL (the first host of a list).
fn host_port(url: &str, scheme: &str) -> (String, u16) {
    let rest = url
        .strip_prefix(scheme)
        .unwrap_or_else(|| panic!("{url} does not start with {scheme}"));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split(['/', '?', ',']).next().unwrap_or_default();
    let (host, port) = hostport
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url}: no port"));
    (host.to_owned(), port.parse().expect("port"))
}

/// The port a healthcheck probes on 127.0.0.1 / localhost.
fn healthcheck_port(name: &str, svc: &Value) -> u16 {
    let test = strings(&svc["healthcheck"]["test"]).join(" ");
    let at = test
        .find("127.0.0.1:")
        .map(|i| i + "127.0.0.1:".len())
        .or_else(|| test.find("localhost:").map(|i| i + "localhost:".len()))
        .unwrap_or_else(|| panic!("{name}: healthcheck {test:?} probes no local port"));
    let digits: String = test[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let rest = &test[at + digits.len()..];
    assert!(
        rest.starts_with("/healthz") || rest.starts_with("/readyz"),
        "{name}: healthcheck must probe /healthz or /readyz, got {test:?}"
    );
    digits.parse().expect("port")
}

/// Container ports a service publishes (`ports`) or exposes (`expose`).
fn container_ports(svc: &Value) -> BTreeSet<u16> {
    let env = dotenv();
    let mut ports = BTreeSet::new();
    for p in strings(&svc["ports"]) {
        let p = interpolate(&p, &env);
        let container = p.rsplit(':').next().unwrap_or_default();
        let container = container.split('/').next().unwrap_or_default();
        ports.insert(container.parse().expect("container port"));
    }
    for p in strings(&svc["expose"]) {
        ports.insert(
            p.split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .expect("port"),
        );
    }
    ports
}

/// Host ports a service publishes (`ports`: `HOST:CONTAINER`).
fn host_ports(svc: &Value) -> Vec<u16> {
    let env = dotenv();
    strings(&svc["ports"])
        .iter()
        .map(|p| {
            let p = interpolate(p, &env);
            let parts: Vec<&str> = p.split(':').collect();
            assert!(
                parts.len() >= 2,
                "port {p:?}: publish as HOST:CONTAINER (a fixed host port)"
            );
            parts[parts.len() - 2].parse().expect("host port")
        })
        .collect()
}

/// The services whose image (resolved from `.env`) starts with `prefix`.
fn services_with_image(doc: &Value, prefix: &str) -> Vec<String> {
    let env = dotenv();
    services(doc)
        .into_iter()
        .filter(|(_, s)| {
            s["image"]
                .as_str()
                .and_then(|i| i.strip_prefix("${").and_then(|r| r.strip_suffix('}')))
                .and_then(|var| env.get(var))
                .is_some_and(|img| img.starts_with(prefix))
        })
        .map(|(n, _)| n)
        .collect()
}

/// The one service running `prefix` images (`apache/kafka:`, ...).
fn the_service_with_image(doc: &Value, prefix: &str) -> String {
    let found = services_with_image(doc, prefix);
    assert_eq!(found.len(), 1, "one {prefix} service, found {found:?}");
    found[0].clone()
}

/// Names in a service's `depends_on` whose condition is `service_healthy`.
fn waits_for_healthy(svc: &Value) -> BTreeSet<String> {
    svc["depends_on"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .filter(|(_, spec)| spec["condition"].as_str() == Some("service_healthy"))
                .map(|(k, _)| str_of(k))
                .collect()
        })
        .unwrap_or_default()
}

/// An image reference is pinned: a tag that starts with a version (`15.10`, `6.2.3`,
/// `1.90.0-bookworm`), never `latest` or a bare major version or name.
fn assert_pinned(what: &str, image: &str) {
    let (_, tag) = image
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{what}: {image} has no tag"));
    let version: Vec<&str> = tag
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .unwrap_or_default()
        .split('.')
        .collect();
    assert!(
        tag != "latest" && version.len() >= 2 && version.iter().all(|v| !v.is_empty()),
        "{what}: {image} must pin a version (major.minor at least), not {tag:?}"
    );
}

fn dockerfile() -> String {
    std::fs::read_to_string(compose_dir().join("Dockerfile")).expect("Dockerfile")
}

/// `ARG NAME=default` lines of the Dockerfile.
fn dockerfile_args() -> BTreeMap<String, String> {
    dockerfile()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ARG "))
        .filter_map(|a| a.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn every_service_has_a_healthcheck() {
    let doc = compose();
    for (name, svc) in services(&doc) {
        let hc = &svc["healthcheck"];
        assert!(
            hc.is_mapping(),
            "{name}: no healthcheck (every service needs one)"
        );
        assert_ne!(hc["disable"].as_bool(), Some(true), "{name}: disabled");
        let test = strings(&hc["test"]);
        assert!(
            test.len() >= 2 && (test[0] == "CMD" || test[0] == "CMD-SHELL"),
            "{name}: healthcheck test must be [CMD, ...] or [CMD-SHELL, ...], got {test:?}"
        );
    }
}

#[test]
fn images_are_pinned_in_env() {
    let doc = compose();
    let env = dotenv();
    for (name, svc) in services(&doc) {
        let image = svc["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no image"));
        let var = image
            .strip_prefix("${")
            .and_then(|r| r.strip_suffix('}'))
            .filter(|v| v.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            .unwrap_or_else(|| panic!("{name}: image {image:?} must be ${{VAR}} from .env"));
        let value = env
            .get(var)
            .unwrap_or_else(|| panic!("{name}: {var} is not defined in compose/.env"));
        assert_pinned(&format!("{name} ({var})"), value);
        if var == "FLEETSTREAM_IMAGE" {
            assert_eq!(
                value.rsplit_once(':').map(|(_, t)| t),
                Some(env!("CARGO_PKG_VERSION")),
                "{name}: tag the Fleetstream image with the workspace version"
            );
            let build = &svc["build"];
            assert_eq!(
                build["context"].as_str(),
                Some(".."),
                "{name}: build context"
            );
            assert_eq!(
                build["dockerfile"].as_str(),
                Some("compose/Dockerfile"),
                "{name}: dockerfile"
            );
            // The base images come from .env as build args.
            for (arg, default) in dockerfile_args() {
                assert_eq!(
                    build["args"][arg.as_str()]
                        .as_str()
                        .map(|v| interpolate(v, &env)),
                    Some(default.clone()),
                    "{name}: build arg {arg} must be passed from .env and equal the \
                     Dockerfile's default"
                );
            }
        }
    }
}

#[test]
fn the_dockerfile_builds_the_binary_from_pinned_images() {
    let text = dockerfile();
    let args = dockerfile_args();
    let env = dotenv();
    let froms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage");
    for from in &froms {
        let image = from.split_whitespace().next().unwrap_or_default();
        let image = match image.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            Some(arg) => {
                let default = args
                    .get(arg)
                    .unwrap_or_else(|| panic!("FROM {image}: no ARG {arg}=... default"));
                assert_eq!(
                    env.get(arg),
                    Some(default),
                    "ARG {arg} of the Dockerfile and {arg} in compose/.env must agree"
                );
                default.clone()
            }
            None => image.to_owned(),
        };
        assert_pinned(&format!("Dockerfile FROM {from}"), &image);
    }
    // The toolchain is the workspace's rust-version.
    let rust = &args["RUST_IMAGE"];
    let version = rust
        .strip_prefix("rust:")
        .unwrap_or_else(|| panic!("RUST_IMAGE={rust} is not the rust image"));
    assert!(
        version.starts_with(&format!("{}.", env!("CARGO_PKG_RUST_VERSION")))
            || version.starts_with(&format!("{}-", env!("CARGO_PKG_RUST_VERSION"))),
        "RUST_IMAGE={rust}: use the workspace rust-version {}",
        env!("CARGO_PKG_RUST_VERSION")
    );
    let build = text
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("a cargo build step");
    assert!(
        build.contains("--release")
            && build.contains("--locked")
            && build.contains("-p fleetstream"),
        "the image must build the fleetstream binary (release, locked): {build}"
    );
    assert!(
        text.contains("install -D -m 0755 target/release/fleetstream /out/fleetstream")
            && text.contains("COPY --from=builder /out/fleetstream"),
        "the fleetstream binary must reach the runtime image"
    );
    assert!(
        text.contains("ENTRYPOINT [\"/usr/local/bin/fleetstream\"]"),
        "the image's entrypoint must be the fleetstream binary (commands are subcommands)"
    );
    assert!(
        text.contains("curl"),
        "the runtime image needs curl for the healthchecks"
    );
}

#[test]
fn commands_are_subcommands_of_the_binary() {
    // The check can fail: the parser refuses an unknown subcommand or option.
    let (ok, _) = binary_accepts(&["no-such-role".to_owned()]);
    assert!(!ok, "fleetstream accepted an unknown subcommand");
    let (ok, _) = binary_accepts(&["gateway".into(), "--konfig".into(), "x".into()]);
    assert!(!ok, "fleetstream accepted an unknown option");
    let doc = compose();
    let roles = role_services(&doc);
    assert!(!roles.is_empty(), "no Fleetstream services");
    for (name, svc) in &roles {
        let cmd = strings(&svc["command"]);
        let (ok, out) = binary_accepts(&cmd);
        assert!(
            ok,
            "{name}: `fleetstream {}` is refused:\n{out}",
            cmd.join(" ")
        );
        assert!(
            out.contains("--config"),
            "{name}: `fleetstream {} --help` does not describe --config:\n{out}",
            cmd[0]
        );
    }
}

#[test]
fn every_role_runs_with_a_mounted_config() {
    let doc = compose();
    let roles = role_services(&doc);
    let count = |role: &str| {
        roles
            .iter()
            .filter(|(n, s)| role_command(n, s).0 == role)
            .count()
    };
    assert_eq!(count("gateway"), 2, "two gateways");
    assert_eq!(count("processors"), 2, "two processors");
    assert_eq!(count("projections"), 1, "one projections");
    assert!(count("api") >= 1, "an api service");
    assert!(count("notifier") >= 1, "a notifier service");
    for (name, svc) in &roles {
        mounted_config(name, svc);
    }
}

#[test]
fn role_configs_load_and_match_the_stack() {
    let doc = compose();
    let all = services(&doc);
    let env = dotenv();
    let kafka = the_service_with_image(&doc, "apache/kafka:");
    let postgres = the_service_with_image(&doc, "postgres:");
    let kafka_env = environment(&all[&kafka], &env);
    let advertised = kafka_env
        .get("KAFKA_ADVERTISED_LISTENERS")
        .expect("KAFKA_ADVERTISED_LISTENERS");
    for (name, svc) in role_services(&doc) {
        let cfg = load_role("stack", &name, &svc);
        let waits = waits_for_healthy(&svc);
        let listen = cfg.listen();
        assert!(
            listen.ip().is_unspecified(),
            "{name}: listen {listen} must be 0.0.0.0 inside the network"
        );
        assert_eq!(
            healthcheck_port(&name, &svc),
            listen.port(),
            "{name}: healthcheck port vs listen"
        );
        assert!(
            container_ports(&svc).contains(&listen.port()),
            "{name}: listen port {} is not published or exposed",
            listen.port()
        );
        let (host, port) = host_port(cfg.event_log(), "kafka://");
        assert_eq!(host, kafka, "{name}: event log must name the kafka service");
        assert!(
            advertised.contains(&format!("://{host}:{port}")),
            "{name}: {host}:{port} is not an advertised listener ({advertised})"
        );
        assert!(waits.contains(&kafka), "{name} must wait for {kafka}");
        let sql = match &cfg {
            RoleConfig::Gateway(c) => {
                assert_eq!(c.auth, fleet_ingest_gateway::AuthMode::Required, "{name}");
                Some(c.registry.clone())
            }
            RoleConfig::Projections(c, _) => Some(c.read_model.clone()),
            RoleConfig::Notifier(c) => Some(c.read_model.clone()),
            RoleConfig::Processors(_) => None,
        };
        if let Some(url) = sql {
            let (host, port) = host_port(&url, "postgres://");
            assert_eq!(
                host, postgres,
                "{name}: {url} must name the postgres service"
            );
            assert_eq!(port, 5432, "{name}: postgres port");
            assert!(waits.contains(&postgres), "{name} must wait for {postgres}");
        }
    }
}

/// The projections and api services' configurations, by service name.
fn projections_configs(doc: &Value) -> BTreeMap<String, (String, ProjectionsConfig, ApiConfig)> {
    role_services(doc)
        .into_iter()
        .filter_map(|(n, s)| match load_role("ts", &n, &s) {
            RoleConfig::Projections(c, api) => {
                Some((n.clone(), (role_command(&n, &s).0, *c, *api)))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn time_series_live_in_the_scylla_service() {
    let doc = compose();
    let all = services(&doc);
    let scylla = the_service_with_image(&doc, "scylladb/scylla:");
    let configs = projections_configs(&doc);
    assert!(configs.len() >= 2, "projections and api: {configs:?}");
    for (name, (_, c, _)) in &configs {
        let url = &c.timeseries;
        let rest = url
            .strip_prefix("scylla://")
            .unwrap_or_else(|| panic!("{name}: timeseries = {url:?} must be scylla://"));
        let (hosts, keyspace) = rest
            .split_once('/')
            .unwrap_or_else(|| panic!("{name}: {url} names no keyspace"));
        for hostport in hosts.split(',') {
            let (host, port) = hostport
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("{name}: {url}: {hostport} has no port"));
            assert_eq!(host, scylla, "{name}: {url} must name the {scylla} service");
            assert_eq!(port, "9042", "{name}: {url}: the CQL port is 9042");
        }
        assert!(
            !keyspace.is_empty()
                && keyspace.len() <= 48
                && keyspace.starts_with(|ch: char| ch.is_ascii_alphabetic())
                && keyspace
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_'),
            "{name}: keyspace {keyspace:?} is not a CQL identifier"
        );
        c.timeseries_retention
            .validate()
            .unwrap_or_else(|e| panic!("{name}: [timeseries-retention]: {e}"));
        assert!(
            waits_for_healthy(&all[name]).contains(&scylla),
            "{name} must wait for {scylla}"
        );
        assert!(
            !volumes(&all[name]).iter().any(|(_, _, ro)| !ro),
            "{name}: no writable volume (the stores are services)"
        );
    }
    // One set of stores: the API reads what the projections write, with one retention.
    let stores: BTreeSet<_> = configs
        .values()
        .map(|(_, c, _)| {
            (
                c.timeseries.clone(),
                c.read_model.clone(),
                format!("{:?}", c.timeseries_retention),
            )
        })
        .collect();
    assert_eq!(
        stores.len(),
        1,
        "projections and api open different stores: {stores:?}"
    );
}

#[test]
fn the_api_runs_apart_from_the_projections() {
    let doc = compose();
    let all = services(&doc);
    let configs = projections_configs(&doc);
    let of = |cmd: &str| -> Vec<(&String, &ProjectionsConfig, &ApiConfig)> {
        configs
            .iter()
            .filter(|(_, (c, _, _))| c == cmd)
            .map(|(n, (_, cfg, api))| (n, cfg, api))
            .collect()
    };
    for (name, c, _) in of("projections") {
        assert!(
            !c.serve_api,
            "{name}: serve-api must be false (the api service serves the API)"
        );
        assert!(
            host_ports(&all[name]).is_empty(),
            "{name}: publishes a host port but serves no API"
        );
        assert!(
            c.retention_sweep_interval >= std::time::Duration::from_secs(1),
            "{name}: retention-sweep-interval"
        );
    }
    let apis = of("api");
    assert!(!apis.is_empty(), "an api service");
    for (name, _, c) in apis {
        assert!(!c.admin_api_key.is_empty(), "{name}: admin-api-key unset");
        assert!(
            c.gateway_url.starts_with("http://") || c.gateway_url.starts_with("https://"),
            "{name}: gateway-url {}",
            c.gateway_url
        );
        assert_eq!(
            host_ports(&all[name]).len(),
            1,
            "{name}: publish the API port"
        );
        let projections: Vec<String> = of("projections")
            .into_iter()
            .map(|(n, _, _)| n.clone())
            .collect();
        assert!(
            projections
                .iter()
                .all(|p| waits_for_healthy(&all[name]).contains(p)),
            "{name}: must start after {projections:?} created the schema"
        );
    }
}

#[test]
fn the_notifier_reads_the_read_model_the_projections_write() {
    let doc = compose();
    let all = services(&doc);
    let configs = projections_configs(&doc);
    let projections: Vec<(&String, &ProjectionsConfig)> = configs
        .iter()
        .filter(|(_, (cmd, _, _))| cmd == "projections")
        .map(|(n, (_, c, _))| (n, c))
        .collect();
    assert!(!projections.is_empty(), "a projections service");
    let notifiers: Vec<(String, NotifierConfig)> = role_services(&doc)
        .into_iter()
        .filter(|(n, s)| role_command(n, s).0 == "notifier")
        .map(|(n, s)| match load_role("notifier", &n, &s) {
            RoleConfig::Notifier(c) => (n, *c),
            other => panic!("{n}: {other:?}"),
        })
        .collect();
    assert!(!notifiers.is_empty(), "a notifier service");
    for (name, c) in &notifiers {
        c.check().unwrap_or_else(|e| panic!("{name}: {e}"));
        for (p, pc) in &projections {
            assert_eq!(
                c.read_model, pc.read_model,
                "{name} must read the channels and routes {p} serves (one read model)"
            );
            assert!(
                waits_for_healthy(&all[name]).contains(*p),
                "{name}: must start after {p} created the schema"
            );
        }
        assert!(
            host_ports(&all[name]).is_empty(),
            "{name}: serves only /healthz, /readyz and /metrics; publish no host port"
        );
    }
    let groups: BTreeSet<&str> = notifiers.iter().map(|(_, c)| c.group.as_str()).collect();
    assert_eq!(
        groups.len(),
        1,
        "notifiers share one consumer group: {groups:?}"
    );
}

#[test]
fn published_host_ports_are_distinct() {
    let doc = compose();
    let mut seen: BTreeMap<u16, String> = BTreeMap::new();
    for (name, svc) in services(&doc) {
        for port in host_ports(&svc) {
            if let Some(other) = seen.insert(port, name.clone()) {
                panic!("{name} and {other} both publish host port {port}");
            }
        }
    }
    let gateways: Vec<String> = role_services(&doc)
        .into_iter()
        .filter(|(n, s)| role_command(n, s).0 == "gateway")
        .map(|(n, _)| n)
        .collect();
    for g in &gateways {
        assert!(
            seen.values().any(|n| n == g),
            "{g}: publish a host port for agents"
        );
    }
}

#[test]
fn gateways_share_no_state() {
    let doc = compose();
    let gateways: Vec<(String, Value)> = role_services(&doc)
        .into_iter()
        .filter(|(n, s)| role_command(n, s).0 == "gateway")
        .collect();
    assert!(gateways.len() >= 2, "two gateways");
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (name, svc) in &gateways {
        for (source, _, ro) in volumes(svc) {
            // Read-only config files may be shared; anything writable is state.
            if ro {
                continue;
            }
            if let Some(other) = seen.insert(source.clone(), name.clone()) {
                panic!("{name} and {other} share the volume {source}");
            }
        }
    }
}

#[test]
fn processors_share_their_consumer_groups() {
    let doc = compose();
    let groups: Vec<(String, [String; 4])> = role_services(&doc)
        .into_iter()
        .filter(|(n, s)| role_command(n, s).0 == "processors")
        .map(|(n, s)| match load_role("groups", &n, &s) {
            RoleConfig::Processors(c) => (
                n,
                [
                    c.alert_evaluator.group.clone(),
                    c.ticketer.group.clone(),
                    c.liveness.group.clone(),
                    c.command_timeouts.group.clone(),
                ],
            ),
            other => panic!("{n}: {other:?}"),
        })
        .collect();
    assert!(groups.len() >= 2, "two processors");
    for (name, g) in &groups[1..] {
        assert_eq!(
            g, &groups[0].1,
            "{name} and {} must use the same consumer groups",
            groups[0].0
        );
    }
}

#[test]
fn depends_on_points_at_healthy_services() {
    let doc = compose();
    let all = services(&doc);
    for (name, svc) in &all {
        let Some(deps) = svc["depends_on"].as_mapping() else {
            assert!(
                svc["depends_on"].is_null(),
                "{name}: depends_on must be a mapping with conditions"
            );
            continue;
        };
        for (dep, spec) in deps {
            let dep = str_of(dep);
            let target = all
                .get(&dep)
                .unwrap_or_else(|| panic!("{name} depends on {dep}, which is not a service"));
            assert_eq!(
                spec["condition"].as_str(),
                Some("service_healthy"),
                "{name} -> {dep}: condition must be service_healthy"
            );
            assert!(
                target["healthcheck"].is_mapping(),
                "{name} -> {dep}: {dep} has no healthcheck"
            );
        }
    }
}
