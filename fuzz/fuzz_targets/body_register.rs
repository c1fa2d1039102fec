//! `POST /api/v1/agents/register` up to the registry: the body parsed and checked as the
//! handler does. A refusal names the field; accepted facts keep what was sent within the
//! documented bounds (text lengths, no control characters, at most 64 addresses).
#![no_main]

use fleet_fuzz::*;
use fleet_ingest_gateway::fuzzing;
use fleet_schemas::api::RegisterRequest;
use libfuzzer_sys::fuzz_target;

fn text(what: &str, v: &str, max: usize) {
    assert!(
        v.len() <= max && !v.chars().any(char::is_control),
        "{what} = {v:?}"
    );
}

fuzz_target!(init: init("body_register"), |data: &[u8]| {
    let facts = match fuzzing::register(data) {
        Ok(f) => f,
        Err((status, e)) => return assert_refusal(status, &e, &[400]),
    };
    let sent: RegisterRequest = serde_json::from_slice(data).expect("the gateway parsed it");
    assert!(!sent.token.is_empty() && sent.token.len() <= 256);
    let f = &sent.facts;
    assert!(!facts.hostname.is_empty());
    for (what, got, want, max) in [
        ("hostname", &facts.hostname, &f.hostname, 255),
        ("os_type", &facts.os_type, &f.os_type, 64),
        ("os_version", &facts.os_version, &f.os_version, 255),
        ("kernel_version", &facts.kernel_version, &f.kernel_version, 255),
        ("architecture", &facts.architecture, &f.architecture, 64),
        ("cpu_model", &facts.cpu_model, &f.cpu_model, 255),
        ("agent_version", &facts.agent_version, &f.agent_version, 64),
    ] {
        text(what, got, max);
        assert_eq!(got, want, "{what}");
    }
    for (what, got, want) in [
        ("ip_addresses", &facts.ip_addresses, &f.ip_addresses),
        ("mac_addresses", &facts.mac_addresses, &f.mac_addresses),
    ] {
        assert!(got.len() <= 64, "{what}");
        assert_eq!(got, want, "{what}");
        for a in got {
            text(what, a, 64);
        }
    }
    assert_eq!(u32::try_from(facts.cpu_cores).ok(), Some(f.cpu_cores));
    assert_eq!(u64::try_from(facts.memory_total_bytes).ok(), Some(f.memory_total_bytes));
    assert_eq!(u64::try_from(facts.disk_total_bytes).ok(), Some(f.disk_total_bytes));
    // The facts go to the log in AgentRegistered.
    let mut registered = fleet_schemas::fixtures::agent_registered("t", "a", NOW);
    registered.facts = Some(facts);
    assert_writes(&registered);
});
