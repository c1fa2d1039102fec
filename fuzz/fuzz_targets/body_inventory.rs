//! `POST /api/v1/agents/{id}/inventory`: the body parsed and checked as the handler does.
//! A refusal names the field; an accepted inventory holds exactly the packages sent,
//! sorted, within the documented bounds, with the digest of that set (the same whatever
//! the order sent), and encodes to the record written to the log.
#![no_main]

use fleet_fuzz::*;
use fleet_ingest_gateway::fuzzing::{self, AGENT, TENANT};
use fleet_ingest_gateway::validate::{inventory_digest, MAX_PACKAGES, MAX_PACKAGE_FIELD_LEN};
use fleet_schemas::api::{InventoryIn, PackageIn};
use libfuzzer_sys::fuzz_target;

fn text(what: &str, v: &str, min: usize) {
    assert!(
        v.len() >= min && v.len() <= MAX_PACKAGE_FIELD_LEN && !v.chars().any(char::is_control),
        "{what} = {v:?}"
    );
}

fuzz_target!(init: init("body_inventory"), |data: &[u8]| {
    let rec = match fuzzing::inventory(data, NOW) {
        Ok(rec) => rec,
        Err((status, e)) => return assert_refusal(status, &e, &[400]),
    };
    let sent: InventoryIn = serde_json::from_slice(data).expect("the gateway parsed it");
    assert_eq!((rec.tenant_id.as_str(), rec.agent_id.as_str()), (TENANT, AGENT));
    assert_uuid("event_id", &rec.event_id);
    assert_eq!(rec.ingested_at, NOW);
    assert_eq!(rec.occurred_at, sent.collected_at.timestamp_micros());
    assert_in_window("collected_at", rec.occurred_at);
    assert!(["dpkg", "rpm", "none"].contains(&rec.source.as_str()));
    assert_eq!(rec.source, sent.source);
    assert!(rec.packages.len() <= MAX_PACKAGES);
    let written: Vec<PackageIn> = rec
        .packages
        .iter()
        .map(|p| PackageIn {
            name: p.name.clone(),
            version: p.version.clone(),
            arch: p.arch.clone(),
        })
        .collect();
    for p in &written {
        text("name", &p.name, 1);
        text("version", &p.version, 0);
        if let Some(a) = &p.arch {
            text("arch", a, 0);
        }
    }
    let mut sorted = sent.packages.clone();
    sorted.sort();
    let mut got = written.clone();
    got.sort();
    assert_eq!(got, sorted, "the packages sent, no more, no fewer");
    // The digest is of the set: the reverse order gives the same.
    assert_eq!(rec.digest, inventory_digest(&sent.packages));
    let mut reversed = sent.packages.clone();
    reversed.reverse();
    assert_eq!(rec.digest, inventory_digest(&reversed));
    assert_writes(&rec);
});
