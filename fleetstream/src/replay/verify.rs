//! `fleetstream verify`: compares a rebuilt projection with the live one and reports every
//! difference; exits with status 1 when there is any. What is compared, and what not, is
//! [`fleet_replay::verify`]'s.

use std::path::PathBuf;

use anyhow::bail;
use clap::ValueEnum;
use fleet_read_model::NOT_PROJECTED_TABLES;
use fleet_registry::REGISTRY_TABLES;
use fleet_replay::rfc3339;
use fleet_replay::verify::{describe_column, series_name, BucketDiff, RowDiff, SeriesDiff};
use fleet_service::config::redact_url;

use super::{load_config, parse_time};

/// Which projection `verify` compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum VerifyKind {
    /// Two read models (postgres://..., sqlite://path or a path).
    ReadModel,
    /// Two time-series stores (file:///dir or a directory, scylla://...).
    Timeseries,
}

/// Options of `fleetstream verify`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Compare a rebuilt projection with the live one and report every difference",
    long_about = "Compare two stores of one projection (typically the live one and one \
`fleetstream replay` rebuilt) and report every difference on stdout; exit with status 1 \
when there is any (or on an error), 0 when they are equal.\n\n\
Read model: every row of every projected table (agents, alerts, alert_rules, \
commands, command_audit, command_output, software_inventory, software, tickets, sample_series, agent_events), matched by primary key: \
missing rows (live only), extra rows (rebuilt only) and rows whose columns differ, with both \
values. Not compared: projection_offsets (shown as a hint), the registry (tenants, locations, \
registration tokens, agent credentials, users, API keys) and the audit log: they are not \
derived from topics.\n\n\
Time series: the series lists, then for every series in both the 1h rollup buckets over the \
window, and for each hour with data the 5m and 1m rollup buckets and the raw samples (in 1 s \
buckets). The window defaults to the raw retention (from the configuration) back from now: \
beyond it a rebuild legitimately keeps less.\n\n\
Stop the processes that hold embedded stores (file://, sqlite with `fleetstream up`) open \
for writing first, so that the live store does not change under the comparison.",
    after_help = "Examples:\n  \
fleetstream verify --projection read-model \\\n      \
--live fleetstream-data/readmodel.db --rebuilt rebuilt.db\n  \
fleetstream verify --projection timeseries \\\n      \
--live file://fleetstream-data/timeseries --rebuilt file://rebuilt-ts"
)]
pub(crate) struct VerifyArgs {
    /// The projection to compare.
    #[arg(long, value_enum)]
    projection: VerifyKind,
    /// The live store's URL.
    #[arg(long, value_name = "URL")]
    live: String,
    /// The rebuilt store's URL.
    #[arg(long, value_name = "URL")]
    rebuilt: String,
    /// The projections' TOML file: its `timeseries-retention` sets the default window.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Time series: compare from TIME (RFC 3339 or a duration back from now, like 30d).
    #[arg(long, value_name = "TIME")]
    start: Option<String>,
    /// Time series: compare up to TIME (default: a day from now).
    #[arg(long, value_name = "TIME")]
    end: Option<String>,
}

/// `fleetstream verify`.
pub(crate) async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    match args.projection {
        VerifyKind::ReadModel => verify_read_model(&args).await,
        VerifyKind::Timeseries => verify_timeseries(&args).await,
    }
}

#[allow(clippy::print_stdout)] // the report is the command's output
async fn verify_read_model(args: &VerifyArgs) -> anyhow::Result<()> {
    let report = fleet_replay::verify::read_models(&args.live, &args.rebuilt).await?;
    println!(
        "Comparing read models: live {} ({}), rebuilt {} ({}).",
        redact_url(&args.live),
        report.live_engine,
        redact_url(&args.rebuilt),
        report.rebuilt_engine
    );
    println!(
        "Not compared (not derived from topics): the registry ({}), the audit log; and {}.",
        REGISTRY_TABLES.join(", "),
        NOT_PROJECTED_TABLES[0]
    );
    for table in &report.tables {
        let unknown = if table.known {
            ""
        } else {
            " (a table this build does not know: compared by whole rows)"
        };
        let (missing, extra, different) = table.counts();
        println!(
            "{}: {} rows live, {} rebuilt: {}{unknown}",
            table.name,
            table.live_rows,
            table.rebuilt_rows,
            if table.diffs.is_empty() {
                "equal".to_owned()
            } else {
                format!("{missing} missing, {extra} extra, {different} different")
            }
        );
        for d in &table.diffs {
            match d {
                RowDiff::Missing(key) => println!("  missing {key} (in live, not in rebuilt)"),
                RowDiff::Extra(key) => println!("  extra {key} (in rebuilt, not in live)"),
                RowDiff::Different(key, columns) => {
                    println!("  different {key}:");
                    for (c, x, y) in columns {
                        println!("    {}", describe_column(c, x, y));
                    }
                }
            }
        }
    }
    if let Some((lo, ro)) = &report.offsets {
        let text = |o: &[fleet_read_model::StoredOffset]| {
            o.iter()
                .map(|o| format!("{}/{}={}", o.topic, o.partition, o.next_offset))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "Note: the stores applied different offsets (live: {}; rebuilt: {}); records between them are in one only.",
            text(lo),
            text(ro)
        );
    }
    let differences = report.differences();
    if differences > 0 {
        println!("Result: {differences} differences.");
        bail!("the rebuilt read model differs from the live one ({differences} differences)");
    }
    println!(
        "Result: the rebuilt read model equals the live one ({} rows in {} tables).",
        report.rows_compared(),
        report.tables.len()
    );
    Ok(())
}

#[allow(clippy::print_stdout)] // the report is the command's output
async fn verify_timeseries(args: &VerifyArgs) -> anyhow::Result<()> {
    let cfg = load_config(args.config.as_deref(), None)?;
    let retention = cfg.timeseries_retention;
    let now = fleet_schemas::time::now_micros();
    let start = parse_time("--start", args.start.as_deref(), now)?;
    let end = parse_time("--end", args.end.as_deref(), now)?;
    let window = fleet_replay::verify::window(retention, start, end, now)?;
    let report =
        fleet_replay::verify::time_series(&args.live, &args.rebuilt, retention, window).await?;
    println!(
        "Comparing time-series stores: live {} ({}), rebuilt {} ({}), window {} to {}.",
        args.live,
        report.live_engine,
        args.rebuilt,
        report.rebuilt_engine,
        rfc3339(report.from),
        rfc3339(report.to)
    );
    println!(
        "series: {} live, {} rebuilt",
        report.live_series, report.rebuilt_series
    );
    for d in &report.diffs {
        match d {
            SeriesDiff::MissingSeries(k) => println!(
                "  missing series {} (in live, not in rebuilt)",
                series_name(k)
            ),
            SeriesDiff::ExtraSeries(k) => println!(
                "  extra series {} (in rebuilt, not in live)",
                series_name(k)
            ),
            SeriesDiff::Bucket {
                key,
                what,
                start,
                diff,
            } => {
                let (at, name) = (rfc3339(*start), series_name(key));
                match diff {
                    BucketDiff::Missing(count) => {
                        println!("  missing {what} bucket {at} of {name} (live count {count})")
                    }
                    BucketDiff::Extra(count) => {
                        println!("  extra {what} bucket {at} of {name} (rebuilt count {count})")
                    }
                    BucketDiff::Different(fields) => println!(
                        "  different {what} bucket {at} of {name}: {}",
                        fields.join(", ")
                    ),
                }
            }
        }
    }
    let differences = report.diffs.len();
    if differences > 0 {
        println!("Result: {differences} differences.");
        bail!("the rebuilt time series differ from the live ones ({differences} differences)");
    }
    println!(
        "Result: the rebuilt time series equal the live ones ({} series, {} series-hours, {} samples in the window; raw samples, 5m and 1h rollups compared).",
        report.live_series, report.hours, report.samples
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_arguments_parse() {
        use crate::{parse, Command};
        let Ok(Command::Verify(args)) = parse(
            "verify --projection timeseries --live file:///a --rebuilt file:///b --start 30d",
        ) else {
            panic!("not a verify");
        };
        assert_eq!(args.projection, VerifyKind::Timeseries);
        assert_eq!(args.start.as_deref(), Some("30d"));
        assert!(parse("verify --projection all --live a --rebuilt b").is_err());
        assert!(parse("verify --projection read-model --live a").is_err());
    }
}
