//! Reading a Prometheus text exposition (`/metrics`).

/// Sum of every sample of a Prometheus metric (all label sets) in a `/metrics` text.
pub fn prometheus_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            // `name{labels} value` or `name value`, not `name_bucket ...`.
            let value = match rest.chars().next()? {
                '{' => rest.rsplit_once('}')?.1,
                ' ' => rest,
                _ => return None,
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Sum of a Prometheus metric's samples whose labels include every `labels` pair.
pub fn prometheus_sum_labeled(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (label_text, value) = match rest.chars().next()? {
                '{' => rest[1..].rsplit_once('}')?,
                ' ' => ("", rest),
                _ => return None,
            };
            labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
                .then_some(value)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum()
}
