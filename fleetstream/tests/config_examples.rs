//! The shipped example configurations parse into the typed configs and equal the
//! defaults (so the documented defaults cannot drift from the code).

use std::path::Path;

use fleet_ingest_gateway::GatewayConfig;
use fleet_projections::ProjectionsConfig;
use fleet_stream_processors::ProcessorsConfig;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn gateway_example_is_the_default() {
    let cfg: GatewayConfig = fleet_service::config::load(
        "gateway-example-test",
        Some(&root().join("config/gateway.example.toml")),
    )
    .expect("parses");
    assert_eq!(cfg, GatewayConfig::default());
}

#[test]
fn processors_example_is_the_default() {
    let cfg: ProcessorsConfig = fleet_service::config::load(
        "processors-example-test",
        Some(&root().join("config/processors.example.toml")),
    )
    .expect("parses");
    assert_eq!(cfg, ProcessorsConfig::default());
}

#[test]
fn projections_example_is_the_default() {
    let cfg: ProjectionsConfig = fleet_service::config::load_part(
        "projections-example-test",
        Some(&root().join("config/projections.example.toml")),
        None,
        &["api"],
    )
    .expect("parses");
    assert_eq!(cfg, ProjectionsConfig::default());
    let api: fleet_query_api::ApiConfig = fleet_service::config::load_with_table(
        "api-example-test",
        Some(&root().join("config/projections.example.toml")),
        Some("api"),
    )
    .expect("parses");
    assert_eq!(api, fleet_query_api::ApiConfig::default());
}

#[test]
fn notifier_example_is_the_default() {
    let cfg: fleet_notifier::NotifierConfig = fleet_service::config::load(
        "notifier-example-test",
        Some(&root().join("config/notifier.example.toml")),
    )
    .expect("parses");
    assert_eq!(cfg, fleet_notifier::NotifierConfig::default());
    let up: fleet_notifier::NotifierConfig = fleet_service::config::load_with_table(
        "notifier-up-test",
        Some(&root().join("config/fleetstream.example.toml")),
        Some("notifier"),
    )
    .expect("the [notifier] table of up's example");
    assert_eq!(up, fleet_notifier::NotifierConfig::default());
}

#[test]
fn agent_example_is_the_default() {
    let cfg = fleet_agent::AgentConfig::load(Some(&root().join("agent/agent.example.toml")))
        .expect("parses");
    assert_eq!(cfg, fleet_agent::AgentConfig::default());
}

#[test]
fn up_example_parses_per_role() {
    let f = root().join("config/fleetstream.example.toml");
    let gw: GatewayConfig =
        fleet_service::config::load_with_table("gateway-up-test", Some(&f), Some("gateway"))
            .expect("gateway");
    assert_eq!(gw.listen.port(), 8080);
    let pj: ProjectionsConfig = fleet_service::config::load_with_table(
        "projections-up-test",
        Some(&f),
        Some("projections"),
    )
    .expect("projections");
    assert_eq!(pj.listen.port(), 8081);
    let pr: ProcessorsConfig =
        fleet_service::config::load_with_table("processors-up-test", Some(&f), Some("processors"))
            .expect("processors");
    assert_eq!(pr.rules, ProcessorsConfig::default().rules);
}

#[test]
fn unknown_keys_and_env_overrides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:1\"\nno-such-key = 1\n").expect("write");
    let err = fleet_service::config::load::<GatewayConfig>("gateway-bad-test", Some(&bad))
        .expect_err("unknown key");
    assert!(err.to_string().contains("no-such-key"), "{err}");
    // Environment overrides the file: FLEET_<ROLE>__<KEY>, `_` for `-`.
    std::env::set_var("FLEET_GATEWAY_ENV_TEST__MAX_BODY_BYTES", "4096");
    std::env::set_var("FLEET_GATEWAY_ENV_TEST__LISTEN", "127.0.0.1:9999");
    let cfg: GatewayConfig = fleet_service::config::load("gateway-env-test", None).expect("env");
    assert_eq!(cfg.max_body_bytes, 4096);
    assert_eq!(cfg.listen.port(), 9999);
}
