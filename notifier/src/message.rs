//! What a notification says: the webhook's JSON body (versioned), its signature, the
//! Slack-compatible text and the email's subject and body. Pure: no I/O.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use fleet_read_model::WEBHOOK_BODY_VERSION;

/// Header carrying the signature: `sha256=<hex>` of HMAC-SHA256 over
/// `timestamp + "." + body` with the channel's secret.
pub const SIGNATURE_HEADER: &str = "X-Fleet-Signature";
/// Header carrying the signing time, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "X-Fleet-Timestamp";
/// Header carrying the idempotency key (the alert event id, or a group's key).
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// One message: one or more alerts for one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The idempotency key: the alert event id of a message of one alert; for a group,
    /// UUIDv5 of its event ids in order ([`group_key`]).
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Channel.
    pub channel_id: String,
    /// Route (none: a channel test).
    pub route_id: Option<String>,
    /// Whether it is a channel test.
    pub test: bool,
    /// The alerts (`fleet_read_model::alert_payload`), in the order they came.
    pub alerts: Vec<Value>,
}

/// The idempotency key of a group of alert event ids: the one id alone, or UUIDv5 of all
/// of them sorted (the same group gives the same key on every attempt).
pub fn group_key(event_ids: &[&str]) -> String {
    match event_ids {
        [one] => (*one).to_owned(),
        many => {
            let mut sorted = many.to_vec();
            sorted.sort_unstable();
            let mut parts = vec!["notification-group"];
            parts.extend(sorted);
            fleet_schemas::ids::v5(&parts).to_string()
        }
    }
}

impl Message {
    /// The webhook body (version [`WEBHOOK_BODY_VERSION`]).
    pub fn webhook_body(&self, sent_at_micros: i64) -> Value {
        serde_json::json!({
            "version": WEBHOOK_BODY_VERSION,
            "id": self.id,
            "idempotency_key": self.id,
            "tenant_id": self.tenant_id,
            "channel_id": self.channel_id,
            "route_id": self.route_id,
            "test": self.test,
            "sent_at": fleet_schemas::time::from_micros(sent_at_micros).to_rfc3339(),
            "alerts": self.alerts,
        })
    }

    /// One line per alert: `[CRITICAL] RAISED cpu high on agent-1: cpu.percent = 97 (> 90)`.
    pub fn lines(&self) -> Vec<String> {
        self.alerts.iter().map(alert_line).collect()
    }

    /// The Slack-compatible body: `{"text": ...}`.
    pub fn slack_body(&self) -> Value {
        let mut text = String::new();
        if self.test {
            text.push_str("Fleetstream test notification\n");
        }
        text.push_str(&self.lines().join("\n"));
        serde_json::json!({ "text": text })
    }

    /// The email's subject.
    pub fn email_subject(&self) -> String {
        match self.lines().as_slice() {
            _ if self.test => "[Fleetstream] test notification".to_owned(),
            [one] => format!("[Fleetstream] {one}"),
            many => format!("[Fleetstream] {} alerts", many.len()),
        }
    }

    /// The email's plain-text body.
    pub fn email_body(&self) -> String {
        let mut body = self.lines().join("\n");
        body.push_str("\n\n");
        for a in &self.alerts {
            let field = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
            body.push_str(&format!(
                "alert {} event {} agent {} rule {} at {}\n",
                field("alert_id"),
                field("event_id"),
                field("agent_id"),
                field("rule_id"),
                field("occurred_at"),
            ));
        }
        body.push_str(&format!("\nIdempotency key: {}\n", self.id));
        body
    }
}

fn alert_line(a: &Value) -> String {
    let s = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let n = |k: &str| {
        a.get(k)
            .and_then(Value::as_f64)
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    let subject = match a.get("subject").and_then(Value::as_str) {
        Some(sub) => format!(" [{sub}]"),
        None => String::new(),
    };
    format!(
        "[{}] {} {} on {}: {}{subject} = {} ({} {})",
        s("severity").to_uppercase(),
        s("kind").to_uppercase(),
        s("rule_name"),
        s("agent_id"),
        s("metric"),
        n("value"),
        s("operator"),
        n("threshold"),
    )
}

/// `sha256=<hex>`: HMAC-SHA256 with `secret` over `timestamp + "." + body`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(e) => unreachable!("HMAC accepts any key length: {e}"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a signature as a receiver does (constant time): for tests and documentation.
pub fn verify(secret: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize) -> Message {
        let alerts = (0..n)
            .map(|i| {
                let mut a =
                    fleet_schemas::fixtures::alert_raised("t1", &format!("a{i}"), 1_000_000);
                a.event_id = format!("e{i}");
                fleet_read_model::alert_payload(&a)
            })
            .collect();
        Message {
            id: "e0".into(),
            tenant_id: "t1".into(),
            channel_id: "c1".into(),
            route_id: Some("r1".into()),
            test: false,
            alerts,
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Reference value: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        let sig = signature("secret", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert!(verify("secret", "1700000000", br#"{"a":1}"#, &sig));
        assert!(
            !verify("secret", "1700000001", br#"{"a":1}"#, &sig),
            "timestamp is signed"
        );
        assert!(
            !verify("secret", "1700000000", br#"{"a":2}"#, &sig),
            "body is signed"
        );
        assert!(
            !verify("other", "1700000000", br#"{"a":1}"#, &sig),
            "secret matters"
        );
        assert!(!verify("secret", "1700000000", br#"{"a":1}"#, "md5=00"));
    }

    #[test]
    fn bodies_name_every_alert_and_the_key() {
        let m = message(2);
        let body = m.webhook_body(1_700_000_000_000_000);
        assert_eq!(body["version"], 1);
        assert_eq!(body["id"], "e0");
        assert_eq!(body["alerts"].as_array().map(Vec::len), Some(2));
        assert_eq!(body["alerts"][1]["event_id"], "e1");
        assert_eq!(body["sent_at"], "2023-11-14T22:13:20+00:00");
        let text = m.slack_body()["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            text.contains("on a1") && text.contains("[CRITICAL] RAISED"),
            "{text}"
        );
        assert_eq!(m.email_subject(), "[Fleetstream] 2 alerts");
        assert!(message(1).email_subject().contains("RAISED"));
        assert!(m.email_body().contains("Idempotency key: e0"));
    }

    #[test]
    fn group_keys_are_the_event_id_alone_or_stable_over_order() {
        assert_eq!(group_key(&["e1"]), "e1");
        assert_eq!(group_key(&["e1", "e2"]), group_key(&["e2", "e1"]));
        assert_ne!(group_key(&["e1", "e2"]), group_key(&["e1", "e3"]));
    }
}
