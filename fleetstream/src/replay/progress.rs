//! Progress of a long read on stderr: on a terminal, an `indicatif` bar for the whole run
//! (records, records/s, ETA) and one per topic with each partition's position against the
//! end offset of its window; elsewhere (a pipe, a log file) a plain line every few seconds.
//! [`Shown`] is what the CLI gives the library's runs ([`fleet_replay::Progress`]).

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use fleet_event_log::ConsumedRecord;
use fleet_replay::{Forced, Span};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// One partition's window and how far it is done.
#[derive(Debug, Clone, Copy)]
struct Position {
    start: i64,
    next: i64,
    end: i64,
}

/// Tells what a run will read, once its windows are planned.
type Intro = Box<dyn FnMut(&[Span]) + Send>;

/// The progress of a run on stderr: what it will read (`intro`, once the windows are
/// planned), then the bars or plain lines.
pub(crate) struct Shown {
    label: &'static str,
    intro: Intro,
    progress: Option<Progress>,
}

impl std::fmt::Debug for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shown")
            .field("label", &self.label)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

impl Shown {
    /// A display for the run `label` (`replay`, `export`); `intro` tells what it reads.
    pub(crate) fn new(label: &'static str, intro: impl FnMut(&[Span]) + Send + 'static) -> Shown {
        Shown {
            label,
            intro: Box::new(intro),
            progress: None,
        }
    }
}

impl fleet_replay::Progress for Shown {
    fn forced(&mut self, forced: &Forced) {
        match forced {
            Forced::ReadModelEmptied { url, rows } => eprintln!(
                "--force: emptied the projected tables of {url} ({rows} rows); the registry and \
                 the audit log are kept."
            ),
            Forced::TimeSeriesWrittenOver { url } => eprintln!(
                "--force: writing over the time-series store {url}; what it holds and the topics \
                 do not is left as it is."
            ),
            other => eprintln!("--force: {other:?}"),
        }
    }

    fn planned(&mut self, spans: &[Span]) {
        (self.intro)(spans);
        self.progress = Some(Progress::new(self.label, spans));
    }

    fn advanced(&mut self, batch: &[ConsumedRecord]) {
        if let Some(p) = &mut self.progress {
            p.advance(batch);
        }
    }

    fn finished(&mut self) {
        if let Some(p) = &mut self.progress {
            p.finish();
        }
    }
}

/// The progress display of one run.
#[derive(Debug)]
struct Progress {
    label: String,
    bars: Option<(MultiProgress, ProgressBar, BTreeMap<String, ProgressBar>)>,
    positions: BTreeMap<(String, u32), Position>,
    total: u64,
    done: u64,
    started: Instant,
    last_plain: Instant,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Progress {
    /// A display for reading `spans`; `label` names the run (`replay`, `export`).
    fn new(label: &str, spans: &[Span]) -> Progress {
        let positions: BTreeMap<(String, u32), Position> = spans
            .iter()
            .map(|s| {
                (
                    (s.topic.clone(), s.partition),
                    Position {
                        start: s.start,
                        next: s.start,
                        end: s.end,
                    },
                )
            })
            .collect();
        let total: u64 = spans.iter().map(Span::len).sum();
        let bars = std::io::stderr().is_terminal().then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            let main = multi.add(ProgressBar::new(total));
            main.set_style(
                style(
                    "{prefix} [{elapsed_precise}] [{wide_bar}] {human_pos}/{human_len} records, {rate}, ETA {eta}",
                )
                .with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0} records/s", state.per_sec());
                    },
                ),
            );
            main.set_prefix(label.to_owned());
            let mut per_topic: BTreeMap<String, u64> = BTreeMap::new();
            for s in spans {
                *per_topic.entry(s.topic.clone()).or_default() += s.len();
            }
            let topic_bars = per_topic
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(topic, n)| {
                    let bar = multi.add(ProgressBar::new(n));
                    bar.set_style(style("  {prefix:<22} [{bar:24}] {pos:>9}/{len:<9} {msg}"));
                    bar.set_prefix(topic.clone());
                    (topic, bar)
                })
                .collect();
            (multi, main, topic_bars)
        });
        let now = Instant::now();
        let p = Progress {
            label: label.to_owned(),
            bars,
            positions,
            total,
            done: 0,
            started: now,
            last_plain: now,
        };
        p.refresh_messages();
        p
    }

    /// Counts a batch that was handled.
    fn advance(&mut self, batch: &[ConsumedRecord]) {
        let mut per_topic: BTreeMap<&str, u64> = BTreeMap::new();
        for r in batch {
            if let Some(pos) = self.positions.get_mut(&(r.topic.to_string(), r.partition)) {
                pos.next = pos.next.max(r.offset + 1);
            }
            *per_topic.entry(&r.topic).or_default() += 1;
        }
        self.done += batch.len() as u64;
        if let Some((_, main, topics)) = &self.bars {
            main.inc(batch.len() as u64);
            for (topic, n) in per_topic {
                if let Some(bar) = topics.get(topic) {
                    bar.inc(n);
                }
            }
        }
        self.refresh_messages();
        if self.bars.is_none() && self.last_plain.elapsed() >= PLAIN_EVERY {
            self.last_plain = Instant::now();
            self.print_plain();
        }
    }

    /// Time since the start.
    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records per second so far.
    fn rate(&self) -> f64 {
        let secs = self.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        }
    }

    /// Removes the bars (the summary follows on stdout).
    fn finish(&mut self) {
        match &self.bars {
            Some((multi, main, topics)) => {
                for bar in topics.values() {
                    bar.finish();
                }
                main.finish();
                let _ = multi.clear();
            }
            None => self.print_plain(),
        }
    }

    /// `p0 12/40 p1 40/40 ...`: each partition's next offset against its window's end.
    fn partitions_text(&self, topic: &str) -> String {
        self.positions
            .iter()
            .filter(|((t, _), pos)| t == topic && pos.end > pos.start)
            .map(|((_, p), pos)| format!("p{p} {}/{}", pos.next, pos.end))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn refresh_messages(&self) {
        if let Some((_, _, topics)) = &self.bars {
            for (topic, bar) in topics {
                bar.set_message(self.partitions_text(topic));
            }
        }
    }

    fn print_plain(&self) {
        let rate = self.rate();
        let remaining = self.total.saturating_sub(self.done);
        let eta = if remaining == 0 {
            "0 s".to_owned()
        } else if rate > 0.0 {
            format!("{:.0} s", remaining as f64 / rate)
        } else {
            "unknown".into()
        };
        let pct = if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        };
        let mut topics: Vec<&str> = self.positions.keys().map(|(t, _)| t.as_str()).collect();
        topics.dedup();
        let positions: Vec<String> = topics
            .into_iter()
            .map(|t| (t, self.partitions_text(t)))
            .filter(|(_, text)| !text.is_empty())
            .map(|(t, text)| format!("{t} [{text}]"))
            .collect();
        eprintln!(
            "{}: {}/{} records ({pct:.1}%), {rate:.0} records/s, ETA {eta}; positions (next/end): {}",
            self.label,
            self.done,
            self.total,
            positions.join(" ")
        );
    }
}
