//! HTTP helpers: JSON documents and the query API's client.

use anyhow::{bail, Context as _};

/// GET a JSON document; `None` on 404.
pub async fn get_json(
    client: &reqwest::Client,
    url: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    let resp = client.get(url).send().await?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let status = resp.status();
    let body: serde_json::Value = resp.json().await?;
    if !status.is_success() {
        bail!("GET {url}: {status} {body}");
    }
    Ok(Some(body))
}

/// A client for the query API: every request carries `Authorization: Bearer <admin_key>`
/// unless it sets its own (reqwest adds a default header only when the request has none,
/// so `.bearer_auth(agent credential)` for the gateway keeps the agent's).
pub fn api_client(admin_key: &str) -> anyhow::Result<reqwest::Client> {
    let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {admin_key}"))
        .context("the admin key is not a valid header value")?;
    auth.set_sensitive(true);
    let headers = reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, auth)]);
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}
