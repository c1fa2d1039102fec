//! `POST /api/v1/agents/{id}/heartbeat`: the body parsed and checked as the handler does.
//! A refusal names the field; an accepted heartbeat keeps what was sent, is inside the
//! time window and the documented bounds, and encodes to the record written to the log.
#![no_main]

use fleet_fuzz::*;
use fleet_ingest_gateway::fuzzing::{self, AGENT, TENANT};
use fleet_schemas::api::HeartbeatIn;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: init("body_heartbeat"), |data: &[u8]| {
    let rec = match fuzzing::heartbeat(data, NOW) {
        Ok(rec) => rec,
        Err((status, e)) => return assert_refusal(status, &e, &[400]),
    };
    let sent: HeartbeatIn = serde_json::from_slice(data).expect("the gateway parsed it");
    assert_eq!((rec.tenant_id.as_str(), rec.agent_id.as_str()), (TENANT, AGENT));
    assert_uuid("event_id", &rec.event_id);
    assert_eq!(rec.ingested_at, NOW);
    assert_eq!(rec.occurred_at, sent.sent_at.timestamp_micros());
    assert_in_window("sent_at", rec.occurred_at);
    assert_count("sequence", rec.sequence);
    assert_count("uptime_seconds", rec.uptime_seconds);
    assert_eq!(u64::try_from(rec.sequence).ok(), Some(sent.sequence));
    assert_eq!(u64::try_from(rec.uptime_seconds).ok(), Some(sent.uptime_seconds));
    assert!(!rec.agent_version.is_empty() && rec.agent_version.len() <= 64);
    assert_eq!(rec.agent_version, sent.agent_version);
    assert_writes(&rec);
});
