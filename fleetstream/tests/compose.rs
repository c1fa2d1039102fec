//! The compose stack (`compose/docker-compose.yml`) agrees with the binary and its
//! configurations: no Docker engine needed. Each role's mounted config is loaded the way
//! the binary loads it (`fleet_ops::config::load`, deny_unknown_fields), with the
//! `FLEET_<ROLE>__*` variables the compose file sets applied on top.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fleet_ingest_gateway::GatewayConfig;
use fleet_projections::ProjectionsConfig;
use fleet_stream_processors::ProcessorsConfig;
use serde_norway::Value;

const ROLES: [&str; 3] = ["gateway", "processors", "projections"];

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
        ROLES.contains(&cmd[0].as_str()),
        "{name}: `{}` is not a subcommand of fleetstream ({ROLES:?})",
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
    Projections(Box<ProjectionsConfig>),
}

impl RoleConfig {
    fn listen(&self) -> SocketAddr {
        match self {
            RoleConfig::Gateway(c) => c.listen,
            RoleConfig::Processors(c) => c.listen,
            RoleConfig::Projections(c) => c.listen,
        }
    }
    fn event_log(&self) -> &str {
        match self {
            RoleConfig::Gateway(c) => &c.event_log,
            RoleConfig::Processors(c) => &c.event_log,
            RoleConfig::Projections(c) => &c.event_log,
        }
    }
}

/// Loads the mounted config with `fleet_ops::config::load`, like the binary; the
/// service's `FLEET_<ROLE>__*` variables are applied under a prefix unique to `tag`
/// and the service (tests run in parallel in one process).
fn load_role(tag: &str, name: &str, svc: &Value) -> RoleConfig {
    let env = dotenv();
    let (role, _) = role_command(name, svc);
    let file = mounted_config(name, svc);
    let own = fleet_ops::config::env_prefix(&role);
    let test_role = format!("compose-{tag}-{name}");
    let test_prefix = fleet_ops::config::env_prefix(&test_role);
    for (k, v) in environment(svc, &env) {
        if let Some(key) = k.strip_prefix(&own) {
            std::env::set_var(format!("{test_prefix}{key}"), v);
        } else {
            assert!(
                !k.starts_with("FLEET_") || k == "FLEET_LOG_FORMAT",
                "{name}: {k} is not read by the {role} role (its prefix is {own})"
            );
        }
    }
    let f = Some(file.as_path());
    let loaded = match role.as_str() {
        "gateway" => fleet_ops::config::load(&test_role, f).map(RoleConfig::Gateway),
        "processors" => fleet_ops::config::load(&test_role, f).map(RoleConfig::Processors),
        _ => fleet_ops::config::load(&test_role, f).map(RoleConfig::Projections),
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
        let (_, tag) = value
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{name}: {var}={value} has no tag"));
        assert!(
            !tag.is_empty() && tag != "latest",
            "{name}: {var}={value} must pin a version"
        );
        if var == "FLEETSTREAM_IMAGE" {
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
        }
    }
    let dockerfile = std::fs::read_to_string(compose_dir().join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/fleetstream\"]"),
        "the image's entrypoint must be the fleetstream binary (commands are subcommands)"
    );
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
    assert_eq!(
        count("projections"),
        1,
        "one projections (file:// time series)"
    );
    for (name, svc) in &roles {
        mounted_config(name, svc);
    }
}

#[test]
fn role_configs_load_and_match_the_stack() {
    let doc = compose();
    let all = services(&doc);
    let env = dotenv();
    let service_with_image = |prefix: &str| -> Vec<String> {
        all.iter()
            .filter(|(_, s)| {
                s["image"]
                    .as_str()
                    .and_then(|i| i.strip_prefix("${").and_then(|r| r.strip_suffix('}')))
                    .and_then(|var| env.get(var))
                    .is_some_and(|img| img.starts_with(prefix))
            })
            .map(|(n, _)| n.clone())
            .collect()
    };
    let kafka = service_with_image("apache/kafka:");
    let postgres = service_with_image("postgres:");
    assert_eq!(kafka.len(), 1, "one apache/kafka service");
    assert_eq!(postgres.len(), 1, "one postgres service");
    let kafka_env = environment(&all[&kafka[0]], &env);
    let advertised = kafka_env
        .get("KAFKA_ADVERTISED_LISTENERS")
        .expect("KAFKA_ADVERTISED_LISTENERS");
    for (name, svc) in role_services(&doc) {
        let cfg = load_role("stack", &name, &svc);
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
        assert_eq!(
            host, kafka[0],
            "{name}: event log must name the kafka service"
        );
        assert!(
            advertised.contains(&format!("://{host}:{port}")),
            "{name}: {host}:{port} is not an advertised listener ({advertised})"
        );
        let sql = match &cfg {
            RoleConfig::Gateway(c) => {
                assert_eq!(c.auth, fleet_ingest_gateway::AuthMode::Required, "{name}");
                Some(c.registry.clone())
            }
            RoleConfig::Projections(c) => {
                assert!(
                    c.timeseries.starts_with("file:///var/lib/fleetstream/"),
                    "{name}: time series {} must be on the volume",
                    c.timeseries
                );
                assert!(
                    volumes(&svc)
                        .iter()
                        .any(|(_, t, ro)| t == "/var/lib/fleetstream" && !ro),
                    "{name}: /var/lib/fleetstream must be a writable volume"
                );
                assert!(!c.admin_api_key.is_empty(), "{name}: admin-api-key unset");
                Some(c.read_model.clone())
            }
            RoleConfig::Processors(_) => None,
        };
        if let Some(url) = sql {
            let (host, port) = host_port(&url, "postgres://");
            assert_eq!(
                host, postgres[0],
                "{name}: {url} must name the postgres service"
            );
            assert_eq!(port, 5432, "{name}: postgres port");
        }
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
                    c.group.clone(),
                    c.ticketer_group.clone(),
                    c.liveness_group.clone(),
                    c.command_timeouts_group.clone(),
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
    for (name, svc) in role_services(&doc) {
        let deps = svc["depends_on"].as_mapping().cloned().unwrap_or_default();
        assert!(
            deps.contains_key("kafka"),
            "{name} must wait for the event log"
        );
    }
}
