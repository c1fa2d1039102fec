//! Per-request limits, one set for every protocol.

use serde::{Deserialize, Serialize};

use crate::ProtocolError;

/// What one request may carry. Defaults sit well above what Prometheus (2,000 samples per
/// send), the OpenTelemetry Collector (8,192 per batch) and Telegraf (1,000 metrics per
/// batch) send by default, and bound the memory a request can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Limits {
    /// Body size after decompression, bytes (default 16 MiB). Snappy bodies are refused on
    /// their declared length, before anything is allocated for them.
    pub max_body_bytes: usize,
    /// Samples per request (default 100,000).
    pub max_samples: usize,
    /// Series per request, as the request lists them (default 50,000).
    pub max_series: usize,
    /// Labels per series, the metric name included (default 64).
    pub max_labels_per_series: usize,
    /// Label name length, bytes (default 256).
    pub max_label_name_bytes: usize,
    /// Label value length, bytes (default 2,048).
    pub max_label_value_bytes: usize,
    /// Metric name length, bytes (default 256).
    pub max_metric_name_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 << 20,
            max_samples: 100_000,
            max_series: 50_000,
            max_labels_per_series: 64,
            max_label_name_bytes: 256,
            max_label_value_bytes: 2_048,
            max_metric_name_bytes: 256,
        }
    }
}

impl Limits {
    /// Refuses a body of `len` bytes (after decompression) above `max-body-bytes`.
    pub fn check_body(&self, field: &str, len: usize) -> Result<(), ProtocolError> {
        if len > self.max_body_bytes {
            return Err(ProtocolError::limit(
                field,
                format!("{len} bytes"),
                "max-body-bytes",
                self.max_body_bytes,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_kebab_case_with_defaults_and_refuse_unknown_keys() {
        let l: Limits = serde_json::from_str(r#"{"max-samples": 10, "max-label-value-bytes": 99}"#)
            .expect("valid");
        assert_eq!((l.max_samples, l.max_label_value_bytes), (10, 99));
        assert_eq!(l.max_series, Limits::default().max_series);
        assert!(serde_json::from_str::<Limits>(r#"{"max_samples": 1}"#).is_err());
        let err = l.check_body("body", 17 << 20).unwrap_err();
        assert_eq!(err.status(), 413);
        assert!(l.check_body("body", 16 << 20).is_ok());
    }
}
