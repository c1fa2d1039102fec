//! `POST /api/v1/agents/{id}/events`: the body parsed and checked as the handler does.
//! A refusal names the field; every event is accepted or refused by index; an accepted
//! event keeps what was sent, respects the documented bounds (kind, severity, message and
//! attribute sizes, the time window) and encodes to the record written to the log.
#![no_main]

use std::collections::{HashMap, HashSet};

use fleet_fuzz::*;
use fleet_ingest_gateway::fuzzing::{self, AGENT, TENANT};
use fleet_ingest_gateway::validate::{MAX_ATTRIBUTES, MAX_MESSAGE_LEN, MAX_NAME_LEN};
use fleet_ingest_gateway::GatewayConfig;
use fleet_schemas::api::EventBatch;
use fleet_schemas::EventSeverity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: init("body_events"), |data: &[u8]| {
    let (valid, rejected) = match fuzzing::events(data, NOW) {
        Ok(v) => v,
        Err((status, e)) => return assert_refusal(status, &e, &[400, 422]),
    };
    let batch: EventBatch = serde_json::from_slice(data).expect("the gateway parsed it");
    assert!(!valid.is_empty());
    assert!(batch.events.len() <= GatewayConfig::default().max_reports_per_batch);
    assert_batch("events", batch.events.len(), valid.len(), &rejected);
    let refused: HashSet<usize> = rejected.iter().map(|r| r.index).collect();
    let sent = (0..batch.events.len()).filter(|i| !refused.contains(i));
    for (i, rec) in sent.zip(&valid) {
        let e = &batch.events[i];
        assert_eq!((rec.tenant_id.as_str(), rec.agent_id.as_str()), (TENANT, AGENT));
        assert_uuid("event_id", &rec.event_id);
        assert_eq!(rec.ingested_at, NOW);
        assert_eq!(rec.occurred_at, e.occurred_at.timestamp_micros());
        assert_in_window("occurred_at", rec.occurred_at);
        assert!(
            !rec.kind.is_empty()
                && rec.kind.len() <= 64
                && rec
                    .kind
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.".contains(&b)),
            "kind {:?}",
            rec.kind
        );
        assert_eq!(rec.kind, e.kind);
        let severity = match rec.severity {
            EventSeverity::Info => "info",
            EventSeverity::Warning => "warning",
            EventSeverity::Critical => "critical",
        };
        assert_eq!(severity, e.severity);
        assert!(rec.message.len() <= MAX_MESSAGE_LEN);
        assert_eq!(rec.message, e.message);
        assert!(rec.attributes.len() <= MAX_ATTRIBUTES);
        let sent: HashMap<&String, &String> = e.attributes.iter().collect();
        assert_eq!(rec.attributes.iter().collect::<HashMap<_, _>>(), sent);
        for (k, v) in &rec.attributes {
            assert_name("attribute", k, MAX_NAME_LEN);
            assert!(v.len() <= MAX_NAME_LEN);
        }
        assert_writes(rec);
    }
});
