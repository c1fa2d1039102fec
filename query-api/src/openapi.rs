//! The OpenAPI document of the query and admin API, generated from the handlers'
//! `#[utoipa::path]` annotations and the types' `ToSchema` derives, served at
//! `GET /api/openapi.json` (no key needed: it describes, it does not disclose).

use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The body of every error answer (`fleet_service::ApiError`):
/// `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code (`invalid_field`, `not_found`, `forbidden`, `conflict`, ...).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// The request field at fault, when there is one (a body path such as `args.script`,
    /// a query parameter, or a header such as `Idempotency-Key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub field: Option<String>,
}

#[derive(Debug)]
struct BearerAuth;

/// The error answers every route may give, each with an [`ErrorBody`].
#[derive(Debug, utoipa::IntoResponses)]
pub enum ApiErrors {
    /// Bad input.
    #[response(
        status = 400,
        description = "Bad input; the JSON error names the field"
    )]
    BadRequest(ErrorBody),
    /// No key.
    #[response(
        status = 401,
        description = "No, unknown or revoked API key, or a disabled user"
    )]
    Unauthorized(ErrorBody),
    /// Role or tenant.
    #[response(status = 403, description = "The key may not do this (role or tenant)")]
    Forbidden(ErrorBody),
    /// Not found.
    #[response(status = 404, description = "Not found (also another tenant's)")]
    NotFound(ErrorBody),
    /// Conflict.
    #[response(
        status = 409,
        description = "Conflicts with what exists (a duplicate name, a reused Idempotency-Key, a state that does not allow it)"
    )]
    Conflict(ErrorBody),
    /// Too large.
    #[response(status = 413, description = "The body is larger than the limit")]
    TooLarge(ErrorBody),
    /// Not JSON.
    #[response(status = 415, description = "The body is not sent as application/json")]
    UnsupportedMediaType(ErrorBody),
    /// Fields that contradict each other.
    #[response(
        status = 422,
        description = "Each field is valid but they contradict each other (for example a critical threshold below the warning one, or a range with too many buckets); the error names a field"
    )]
    Unprocessable(ErrorBody),
    /// Rate limited.
    #[response(
        status = 429,
        description = "Too many failed authentications from this address, or too many requests for this user; retry after Retry-After seconds"
    )]
    TooManyRequests(ErrorBody),
    /// Unavailable.
    #[response(
        status = 503,
        description = "A store or the event log is unavailable; retry after Retry-After seconds"
    )]
    Unavailable(ErrorBody),
}

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The bootstrap admin key (`admin-api-key`) or a user's API key (`fsu_...`)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Fleetstream API",
        description = "Query and administration API of Fleetstream. Every route is scoped to a tenant: operators and viewers see their own; admins every tenant. The Prometheus HTTP API (`/api/v1/query`, `/api/v1/query_range`, `/api/v1/series`, `/api/v1/labels`, `/api/v1/label/{name}/values`, `/api/v1/status/buildinfo`) is served beside it with Prometheus' parameters and answers, documented in docs/PROMQL.md."
    ),
    modifiers(&BearerAuth),
    paths(
        crate::routes::fleet::me,
        crate::routes::fleet::overview,
        crate::routes::agents::list_agents,
        crate::routes::agents::get_agent,
        crate::routes::agents::agent_metrics,
        crate::routes::rules::list_alerts,
        crate::routes::fleet::list_audit,
        crate::routes::commands::agent_commands,
        crate::routes::commands::get_command,
        crate::routes::command_output::command_output,
        crate::routes::command_output::stream_command,
        crate::routes::tickets::agent_software,
        crate::routes::tickets::list_tickets,
        crate::routes::events::list_events,
        crate::routes::events::agent_events,
        crate::routes::tenants::create_tenant,
        crate::routes::tenants::list_tenants,
        crate::routes::tenants::create_location,
        crate::routes::tenants::list_locations,
        crate::routes::tenants::create_token,
        crate::routes::tenants::list_tokens,
        crate::routes::agents::deactivate,
        crate::routes::tags::put_tags,
        crate::routes::remote_config::put_agent_config,
        crate::routes::remote_config::get_agent_config,
        crate::routes::remote_config::put_tag_config,
        crate::routes::remote_config::put_location_config,
        crate::routes::commands::request_command,
        crate::routes::commands::approve_command,
        crate::routes::commands::reject_command,
        crate::routes::commands::cancel_command,
        crate::routes::command_groups::request_group,
        crate::routes::command_groups::list_groups,
        crate::routes::command_groups::get_group,
        crate::routes::command_groups::group_commands,
        crate::routes::command_groups::approve_group,
        crate::routes::command_groups::reject_group,
        crate::routes::command_groups::cancel_group,
        crate::routes::users::create_user,
        crate::routes::users::list_users,
        crate::routes::users::create_key,
        crate::routes::users::list_keys,
        crate::routes::users::revoke_key,
        crate::routes::users::disable_user,
        crate::routes::users::enable_user,
        crate::routes::ingest_keys::create_ingest_key,
        crate::routes::ingest_keys::list_ingest_keys,
        crate::routes::ingest_keys::revoke_ingest_key,
        crate::routes::rules::create_rule,
        crate::routes::rules::list_rules,
        crate::routes::rules::write_defaults,
        crate::routes::rules::update_rule,
        crate::routes::rules::delete_rule,
        crate::routes::rules::disable_rule,
        crate::routes::rules::enable_rule,
        crate::routes::rules::acknowledge_alert,
        crate::routes::rules::resolve_alert,
        crate::routes::notifications::create_channel,
        crate::routes::notifications::list_channels,
        crate::routes::notifications::delete_channel,
        crate::routes::notifications::test_channel,
        crate::routes::notifications::create_route,
        crate::routes::notifications::list_routes,
        crate::routes::notifications::delete_route,
        crate::routes::notifications::create_silence,
        crate::routes::notifications::list_silences,
        crate::routes::notifications::delete_silence,
        crate::routes::notifications::list_deliveries,
    ),
    components(schemas(ErrorBody, ErrorDetail))
)]
pub struct ApiDoc;

/// The document, as served: the generated one with the patterns that code computes put
/// in place of their placeholders (see [`refine`]). Built once.
pub fn document() -> &'static serde_json::Value {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        refine(&mut doc);
        doc
    })
}

/// Regex-escapes a metric name (they hold only letters, digits, `_` and `.`).
fn escaped(name: &str) -> String {
    name.replace('.', "\\.")
}

/// One series of the history's `metric` list, as `fleet_schemas::samples::check_series_name`
/// accepts it: a built-in metric or `custom.<name>`, then optionally `:` and a subject,
/// either a custom metric's labels `{k="v",...}` (commas inside them do not split the
/// list) or text without `,` and `{` (a mount or a service).
fn series_pattern(builtins: &str) -> String {
    let name = "[a-zA-Z_][a-zA-Z0-9_]*";
    let value = r#""(?:[^"\\]|\\[\\"ntr]|\\x[0-7][0-9a-fA-F])*""#;
    let labels = format!("\\{{{name}={value}(?:,{name}={value})*\\}}");
    format!("(?:{builtins}|custom\\.[A-Za-z0-9._-]{{1,128}})(?::(?:{labels}|[^,{{]*))?")
}

/// The rules the handlers enforce, as patterns, by the placeholder the annotations use:
///
/// * `fleet:name`: a name ([`fleet_schemas::text::check_name`]);
/// * `fleet:text`: text without hidden characters (command arguments);
/// * `fleet:rule-metric`: a rule's metric ([`fleet_schemas::rules::is_rule_metric`], or
///   [`fleet_schemas::rules::is_series_metric`] for a rule with `labels`);
/// * `fleet:metrics`: the history's `metric` list (1 to 20 series, comma-separated);
/// * `fleet:interval`: a bucket width ([`crate::query::parse_duration`], at least 1s);
/// * `fleet:time`: `start` and `end`, RFC 3339 (`format: date-time`) or `now` or a
///   duration before now ([`crate::query::parse_time`]).
fn placeholders() -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    let builtins: Vec<String> = fleet_schemas::samples::BUILTIN_METRICS
        .iter()
        .map(|m| escaped(m))
        .collect();
    let builtins = builtins.join("|");
    let item = series_pattern(&builtins);
    let event_kinds = format!("^(?:{})$", fleet_schemas::api::AGENT_EVENT_KINDS.join("|"));
    let event_metrics = fleet_schemas::api::AGENT_EVENT_KINDS
        .iter()
        .map(|k| escaped(&fleet_schemas::rules::event_metric(k)))
        .collect::<Vec<_>>()
        .join("|");
    let time = crate::query::duration_pattern(crate::query::TIME_UNITS, true, false);
    let time = format!("^(?:now|{})$", &time[1..time.len() - 1]);
    vec![
        (
            "fleet:name",
            json!({ "pattern": fleet_schemas::text::name_pattern() }),
        ),
        (
            "fleet:text",
            json!({ "pattern": fleet_schemas::text::visible_text_pattern() }),
        ),
        (
            "fleet:rule-metric",
            json!({ "pattern": format!(
                "^(?:{builtins}|{}|{event_metrics}|custom\\.[\\s\\S]+|[a-zA-Z_:][a-zA-Z0-9_:]{{0,255}})$",
                escaped(fleet_schemas::rules::HEARTBEAT_ABSENT)
            ) }),
        ),
        ("fleet:event-kind", json!({ "pattern": event_kinds })),
        (
            "fleet:metrics",
            json!({ "pattern": format!("^{item}(?:,{item}){{0,19}}$") }),
        ),
        (
            "fleet:interval",
            json!({ "pattern": crate::query::duration_pattern(crate::query::TIME_UNITS, false, true) }),
        ),
        (
            "fleet:time",
            json!({ "anyOf": [
                { "type": "string", "format": "date-time" },
                { "type": "string", "pattern": time },
            ] }),
        ),
    ]
}

/// Puts each placeholder's schema in place: every schema object whose `pattern` is a
/// placeholder gets the placeholder's keywords instead (an `anyOf` replaces its `type`).
fn refine(doc: &mut serde_json::Value) {
    fn walk(v: &mut serde_json::Value, table: &[(&str, serde_json::Value)]) {
        match v {
            serde_json::Value::Object(map) => {
                let found = map
                    .get("pattern")
                    .and_then(|p| p.as_str())
                    .and_then(|p| table.iter().find(|(name, _)| *name == p));
                if let Some((_, with)) = found {
                    map.remove("pattern");
                    if let Some(with) = with.as_object() {
                        if with.contains_key("anyOf") {
                            map.remove("type");
                        }
                        for (k, val) in with {
                            map.insert(k.clone(), val.clone());
                        }
                    }
                }
                for child in map.values_mut() {
                    walk(child, table);
                }
            }
            serde_json::Value::Array(items) => {
                for child in items {
                    walk(child, table);
                }
            }
            _ => {}
        }
    }
    walk(doc, &placeholders());
}

/// `GET /api/openapi.json`.
pub fn router() -> Router {
    Router::new().route(
        "/api/openapi.json",
        get(|| async { Json(document()).into_response() }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document's pattern for the history's `metric` list accepts exactly what the
    /// handler accepts (the list split by `split_series_list`, each item checked by
    /// `check_series_name`).
    #[test]
    fn the_metrics_pattern_agrees_with_the_handler() {
        let builtins: Vec<String> = fleet_schemas::samples::BUILTIN_METRICS
            .iter()
            .map(|m| escaped(m))
            .collect();
        let item = series_pattern(&builtins.join("|"));
        let list = regex::Regex::new(&format!("^{item}(?:,{item}){{0,19}}$")).expect("regex");
        let handler = |v: &str| {
            let items = fleet_schemas::samples::split_series_list(v);
            items.len() <= 20
                && items
                    .iter()
                    .all(|m| fleet_schemas::samples::check_series_name(m).is_ok())
        };
        for v in [
            "cpu.percent",
            "cpu.percent,disk.percent:/var",
            r#"custom.q:{a="1",b="x,\"}y\n\x01"}"#,
            r#"custom.q:{a="1"},custom.r,service.up:nginx"#,
            "service.up:",
            "custom.q:{a",
            "custom.q:{a,b",
            r#"custom.q:{a="1""#,
            r#"custom.q:{a="\q"}"#,
            r#"custom.q:{a="\x+f"}"#,
            r#"custom.q:{a="\x80"}"#,
            "custom.a{b:x,cpu.percent",
            "disk.percent:a{b",
            "disk.percent:a}b\"c",
            "custom.",
            "cpu.bogus",
            ",",
            "",
        ] {
            assert_eq!(list.is_match(v), handler(v), "{v:?}");
        }
    }

    /// An agent's latest report is described field by field, its security posture (all of
    /// schema v2's fields) included.
    #[test]
    fn the_latest_report_and_its_posture_are_described() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let row = serde_json::to_string(&schemas["AgentRow"]["properties"]["latest_report"])
            .expect("json");
        assert!(row.contains("#/components/schemas/MetricReport"), "{row}");
        let report = &schemas["MetricReport"]["properties"];
        let security = serde_json::to_string(&report["security"]).expect("json");
        assert!(
            security.contains("#/components/schemas/SecurityPosture"),
            "{security}"
        );
        let posture = &schemas["SecurityPosture"]["properties"];
        for field in [
            "firewall_enabled",
            "pending_updates",
            "pending_security_updates",
            "reboot_required",
            "ssh_permit_root_login",
            "ssh_password_authentication",
            "antivirus_present",
            "antivirus_signature_age_hours",
        ] {
            assert!(posture.get(field).is_some(), "{field} in {posture}");
        }
        // The bounds the gateway enforces: sshd's values, the age's range.
        let ssh = serde_json::to_string(&posture["ssh_permit_root_login"]).expect("json");
        let pattern = "^(yes|no|prohibit-password|forced-commands-only)$";
        assert!(ssh.contains(pattern), "{ssh}");
        let re = regex::Regex::new(pattern).expect("regex");
        for v in fleet_schemas::api::SSH_PERMIT_ROOT_LOGIN_VALUES {
            assert!(re.is_match(v), "{v}");
        }
        assert!(!re.is_match("without-password"));
        let age = &posture["antivirus_signature_age_hours"];
        assert_eq!(
            age["maximum"].as_f64(),
            Some(fleet_schemas::api::MAX_ANTIVIRUS_SIGNATURE_AGE_HOURS),
            "{age}"
        );
        assert_eq!(age["minimum"].as_f64(), Some(0.0), "{age}");
    }
}
