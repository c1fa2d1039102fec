//! Load generation: reports as agents send them, and concurrent posting of prepared
//! request bodies.

use std::sync::Arc;

use anyhow::{bail, Context as _};
use fleet_schemas::api::{DiskIn, InterfaceIn, MetricBatch, ReportIn, SecurityIn, ServiceIn};
use fleet_schemas::MetricReport;

/// The body an agent would have sent for `r` (the gateway turns it back into `r`, with
/// the agent and tenant from the request and the times it stamps).
pub fn report_in(r: &MetricReport) -> anyhow::Result<ReportIn> {
    let u = |v: i64, what: &str| u64::try_from(v).with_context(|| format!("{what} = {v}"));
    Ok(ReportIn {
        collected_at: chrono::DateTime::from_timestamp_micros(r.occurred_at)
            .context("occurred_at out of range")?,
        cpu_percent: r.cpu_percent,
        cpu_per_core: r.cpu_per_core.clone(),
        memory_used_bytes: u(r.memory_used_bytes, "memory_used_bytes")?,
        memory_total_bytes: u(r.memory_total_bytes, "memory_total_bytes")?,
        memory_percent: r.memory_percent,
        swap_used_bytes: u(r.swap_used_bytes, "swap_used_bytes")?,
        swap_total_bytes: u(r.swap_total_bytes, "swap_total_bytes")?,
        disks: r
            .disks
            .iter()
            .map(|d| {
                Ok(DiskIn {
                    mount: d.mount.clone(),
                    used_bytes: u(d.used_bytes, "disk used_bytes")?,
                    total_bytes: u(d.total_bytes, "disk total_bytes")?,
                    percent: d.percent,
                })
            })
            .collect::<anyhow::Result<_>>()?,
        disk_read_bytes: u(r.disk_read_bytes, "disk_read_bytes")?,
        disk_write_bytes: u(r.disk_write_bytes, "disk_write_bytes")?,
        load_1: r.load_1,
        load_5: r.load_5,
        load_15: r.load_15,
        uptime_seconds: u(r.uptime_seconds, "uptime_seconds")?,
        net_rx_bytes: u(r.net_rx_bytes, "net_rx_bytes")?,
        net_tx_bytes: u(r.net_tx_bytes, "net_tx_bytes")?,
        interfaces: r
            .interfaces
            .iter()
            .map(|i| {
                Ok(InterfaceIn {
                    name: i.name.clone(),
                    rx_bytes: u(i.rx_bytes, "rx_bytes")?,
                    tx_bytes: u(i.tx_bytes, "tx_bytes")?,
                })
            })
            .collect::<anyhow::Result<_>>()?,
        process_count: u32::try_from(r.process_count).context("process_count")?,
        services: r
            .services
            .iter()
            .map(|s| ServiceIn {
                name: s.name.clone(),
                status: s.status.clone(),
                pid: s.pid.and_then(|p| u32::try_from(p).ok()),
            })
            .collect(),
        security: r.security.as_ref().map(|s| SecurityIn {
            firewall_enabled: s.firewall_enabled,
            pending_updates: s.pending_updates.and_then(|v| u32::try_from(v).ok()),
            pending_security_updates: s
                .pending_security_updates
                .and_then(|v| u32::try_from(v).ok()),
            reboot_required: s.reboot_required,
            ssh_permit_root_login: s.ssh_permit_root_login.clone(),
            ssh_password_authentication: s.ssh_password_authentication,
            antivirus_present: s.antivirus_present,
            antivirus_signature_age_hours: s.antivirus_signature_age_hours,
        }),
        custom: r.custom.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    })
}

/// A prepared request: where to POST and the body.
#[derive(Debug, Clone)]
pub struct Request {
    /// Full URL.
    pub url: String,
    /// Body bytes.
    pub body: bytes::Bytes,
    /// Content type.
    pub content_type: &'static str,
    /// Requests of one lane (an agent) are sent one after the other, in order, never two
    /// at once, as one agent sends: [`lane_of`] of the agent id.
    pub lane: u64,
}

/// The lane of an agent's requests.
pub fn lane_of(agent_id: &str) -> u64 {
    // FNV-1a: fixed, so every run spreads the agents alike.
    agent_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// POSTs every request with `clients` concurrent connections: client `c` sends, in the
/// slice's order, the requests whose lane is `c` modulo `clients` (so one agent's requests
/// are never in flight together), retrying a 429/503 after 200 ms (100 times at most).
/// Fails on any other non-2xx answer. Returns once every request was accepted.
pub async fn post_all(
    client: &reqwest::Client,
    requests: Arc<Vec<Request>>,
    clients: usize,
    headers: &[(&str, &str)],
) -> anyhow::Result<()> {
    let clients = clients.max(1);
    let headers: Arc<Vec<(String, String)>> = Arc::new(
        headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    let mut tasks = Vec::with_capacity(clients);
    for lane in 0..clients {
        let (client, requests, headers) = (client.clone(), requests.clone(), headers.clone());
        tasks.push(tokio::spawn(async move {
            let mine = requests
                .iter()
                .filter(|r| r.lane % clients as u64 == lane as u64);
            for req in mine {
                let mut attempt = 0u32;
                loop {
                    let mut b = client
                        .post(&req.url)
                        .header("content-type", req.content_type)
                        .body(req.body.clone());
                    for (k, v) in headers.iter() {
                        b = b.header(k, v);
                    }
                    let resp = b
                        .send()
                        .await
                        .with_context(|| format!("POST {}", req.url))?;
                    let status = resp.status();
                    if status.is_success() {
                        break;
                    }
                    attempt += 1;
                    if (status.as_u16() == 429 || status.as_u16() == 503) && attempt < 100 {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        continue;
                    }
                    let text = resp.text().await.unwrap_or_default();
                    bail!("POST {} answered {status}: {text}", req.url);
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await.context("a load task panicked")??;
    }
    Ok(())
}

/// Groups reports into requests of up to `batch` consecutive reports of one agent, in
/// the order the reports come (a request is sent when its agent's batch is full).
pub fn batches(reports: &[MetricReport], batch: usize) -> Vec<Vec<&MetricReport>> {
    let mut open: std::collections::HashMap<&str, Vec<&MetricReport>> =
        std::collections::HashMap::new();
    let mut out = Vec::new();
    for r in reports {
        let b = open.entry(&r.agent_id).or_default();
        b.push(r);
        if b.len() == batch {
            out.push(std::mem::take(b));
        }
    }
    let mut rest: Vec<_> = open.into_values().filter(|b| !b.is_empty()).collect();
    rest.sort_by(|a, b| a[0].agent_id.cmp(&b[0].agent_id));
    out.extend(rest);
    out
}

/// One gateway request (`POST /api/v1/agents/{id}/metrics`, JSON) per group.
pub fn gateway_requests(
    gateway: &str,
    groups: &[Vec<&MetricReport>],
) -> anyhow::Result<Vec<Request>> {
    groups
        .iter()
        .map(|g| {
            let body = MetricBatch {
                reports: g
                    .iter()
                    .map(|r| report_in(r))
                    .collect::<anyhow::Result<_>>()?,
            };
            Ok(Request {
                url: format!("{gateway}/api/v1/agents/{}/metrics", g[0].agent_id),
                body: serde_json::to_vec(&body)?.into(),
                content_type: "application/json",
                lane: lane_of(&g[0].agent_id),
            })
        })
        .collect()
}
