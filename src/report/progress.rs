//! Progress at a terminal: a header with the batch bar and the elapsed
//! time, one live line per host of the current phase (its step, or bytes
//! and rate while it uploads), and a one-line summary per host once it is
//! through. Errors, notes and the final table print above the bars, so they
//! stay in the scrollback when the bars are gone.
//!
//! ```text
//! deploy demo 20261122103000 to production: 3 hosts, 2 batches
//! ✓ web1      prepared, 1.2 MiB uploaded  (0.6s)
//! ✓ web2      prepared, 1.2 MiB uploaded  (0.7s)
//! ✓ web1      20261122101500 → 20261122103000  (3.1s)
//! ⠙ deploy demo 20261122103000 to production · batch 2/2  [██████████░░░░░░░░░░] 1/2  12s
//!   ⠚ web2      health · GET http://10.0.0.12:8080/health           2s
//! ```
//!
//! While a batch bakes, a line counts the bake down and shows each gate's
//! latest measurement (the error rate of a haproxy gate):
//!
//! ```text
//!   ⠹ bake 1/4 · web1 · 4m 12s left · gates[0] haproxy 5xx 0.4% of 512
//! ```
//!
//! With `-q` no bars are drawn: only errors, notes and the table.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::plain::{Verbosity, human_bytes};
use super::table::{self, seconds};
use super::{Event, HostResult, Measured, Phase, Reporter, Verdict};
use crate::host::ReleaseId;
use crate::plan::StepKind;

pub struct Progress {
    inner: Arc<Inner>,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

struct Inner {
    multi: MultiProgress,
    verbosity: Verbosity,
    colors: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    header: Option<ProgressBar>,
    /// Live lines of the hosts of the current phase.
    hosts: BTreeMap<String, HostLine>,
    host_width: usize,
    run: Option<Run>,
    /// The batch baking now, if one is.
    bake: Option<BakeLine>,
}

/// The live line of a bake: its countdown and its gates' latest values.
struct BakeLine {
    bar: ProgressBar,
    title: String,
    ends: Instant,
    /// Per gate (by its index), its latest measurement in a few words.
    gates: BTreeMap<usize, String>,
}

impl BakeLine {
    /// Redraws the countdown (the ticker calls this too).
    fn refresh(&self) {
        let left = self.ends.saturating_duration_since(Instant::now());
        let mut text = format!(
            "{} · {} left",
            self.title,
            humantime::format_duration(Duration::from_secs(left.as_secs()))
        );
        for gate in self.gates.values() {
            text.push_str(" · ");
            text.push_str(gate);
        }
        self.bar.set_message(text);
    }
}

struct Run {
    title: String,
    release: ReleaseId,
    before: BTreeMap<String, Option<ReleaseId>>,
}

struct HostLine {
    bar: ProgressBar,
    uploading: bool,
    /// Archive bytes sent in this phase.
    uploaded: u64,
    /// Steps done in this phase, for the summary line.
    steps: Vec<StepKind>,
}

const MIN_HOST_WIDTH: usize = 8;

/// How often spinners and clocks move.
const TICK: Duration = Duration::from_millis(120);

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("progress templates are valid")
}

fn header_style() -> ProgressStyle {
    style("{spinner} {wide_msg} [{bar:20}] {pos}/{len} {elapsed:>4}").progress_chars("█▉▊▋▌▍▎▏ ")
}

fn host_style() -> ProgressStyle {
    style("  {spinner} {prefix} {wide_msg} {elapsed:>4}")
}

fn upload_style() -> ProgressStyle {
    style(
        "  {spinner} {prefix} upload [{bar:24}] {binary_bytes}/{binary_total_bytes}  {binary_bytes_per_sec:>12} {elapsed:>4}",
    )
    .progress_chars("█▉▊▋▌▍▎▏ ")
}

impl Progress {
    /// Bars on stderr, redrawn at most 15 times a second.
    pub fn stderr(verbosity: Verbosity, colors: bool) -> Progress {
        Progress::new(
            ProgressDrawTarget::stderr_with_hz(15),
            verbosity,
            colors,
            true,
        )
    }

    /// Bars on `target`. Without `tick`, bars move only when events come
    /// (tests draw into a fake terminal that way).
    pub fn new(
        target: ProgressDrawTarget,
        verbosity: Verbosity,
        colors: bool,
        tick: bool,
    ) -> Progress {
        let inner = Arc::new(Inner {
            multi: MultiProgress::with_draw_target(target),
            verbosity,
            colors,
            state: Mutex::new(State {
                host_width: MIN_HOST_WIDTH,
                ..State::default()
            }),
        });
        // One thread moves every spinner and clock, however many hosts.
        let ticker = tick.then(|| {
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let stop = stop.clone();
                let inner = Arc::downgrade(&inner);
                std::thread::spawn(move || {
                    loop {
                        // Woken early when the reporter is dropped.
                        std::thread::park_timeout(TICK);
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let Some(inner) = inner.upgrade() else { break };
                        let state = inner.lock();
                        if let Some(header) = &state.header {
                            header.tick();
                        }
                        if let Some(bake) = &state.bake {
                            bake.refresh();
                            bake.bar.tick();
                        }
                        for line in state.hosts.values() {
                            line.bar.tick();
                        }
                    }
                })
            };
            (stop, thread)
        });
        Progress { inner, ticker }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.ticker.take() {
            stop.store(true, Ordering::Relaxed);
            thread.thread().unpark();
            let _ = thread.join();
        }
        let _ = self.inner.multi.clear();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("progress reporter lock")
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colors {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn red(&self, text: &str) -> String {
        self.paint("31", text)
    }

    fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }

    fn yellow(&self, text: &str) -> String {
        self.paint("33", text)
    }

    fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }

    fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    /// A line above the bars (kept in the scrollback).
    fn println(&self, text: &str) {
        // A terminal that cannot be written to has nowhere to say so.
        let _ = self.multi.println(text);
    }

    fn bars(&self) -> bool {
        self.verbosity >= Verbosity::Normal
    }

    /// Removes the bake's line, if there is one.
    fn end_bake(&self, state: &mut State) {
        if let Some(bake) = state.bake.take() {
            bake.bar.finish_and_clear();
            self.multi.remove(&bake.bar);
        }
    }

    /// Removes every live line (before the table or an error).
    fn clear_all(&self, state: &mut State) {
        self.end_bake(state);
        for (_, line) in std::mem::take(&mut state.hosts) {
            line.bar.finish_and_clear();
            self.multi.remove(&line.bar);
        }
        if let Some(header) = state.header.take() {
            header.finish_and_clear();
            self.multi.remove(&header);
        }
    }

    fn host(&self, state: &State, host: &str) -> String {
        format!("{host:<w$}", w = state.host_width)
    }
}

impl Reporter for Progress {
    fn event(&self, event: &Event) {
        let me = &*self.inner;
        let normal = me.verbosity >= Verbosity::Normal;
        let verbose = me.verbosity >= Verbosity::Verbose;
        let mut state = me.lock();
        match event {
            Event::BuildStarted { command } if normal => {
                // No spinner while building: the build writes to the
                // terminal itself.
                me.println(&format!("building: {command}"));
            }
            Event::BuildFinished { ok: true, duration } if normal => {
                me.println(&me.dim(&format!("built  ({})", seconds(*duration))));
            }
            Event::Packed {
                source,
                bytes,
                files,
                duration,
            } if normal => {
                let files = if *files == 0 {
                    String::new()
                } else {
                    format!(" ({files} files)")
                };
                me.println(&me.dim(&format!(
                    "packed {source}: {}{files}  ({})",
                    human_bytes(*bytes),
                    seconds(*duration)
                )));
            }
            Event::Warning { message } if normal => {
                me.println(&me.yellow(&format!("warning: {message}")));
            }
            Event::PhaseStarted {
                phase: Phase::Connect,
                hosts,
            } if normal => {
                // A line, not a spinner: connecting may ask for a key's
                // passphrase on the terminal.
                me.println(&me.dim(&format!("connecting to {}", hosts.join(", "))));
            }
            Event::RunStarted {
                operation,
                app,
                stage,
                release,
                hosts,
                batches,
                before,
                ..
            } => {
                state.host_width = before
                    .keys()
                    .map(|h| h.chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(MIN_HOST_WIDTH);
                let title = format!("{} {app} {release} to {stage}", operation.as_str());
                if normal {
                    me.println(&me.bold(&format!(
                        "{title}: {} host{}, {} batch{}",
                        hosts.len(),
                        if hosts.len() == 1 { "" } else { "s" },
                        batches.len(),
                        if batches.len() == 1 { "" } else { "es" },
                    )));
                    let header = me.multi.add(
                        ProgressBar::new(batches.len() as u64)
                            .with_style(header_style())
                            .with_message(title.clone()),
                    );
                    header.tick();
                    state.header = Some(header);
                }
                state.run = Some(Run {
                    title,
                    release: release.clone(),
                    before: before.clone(),
                });
            }
            Event::PhaseStarted { phase, hosts } if me.bars() => {
                if let (Some(header), Some(run)) = (&state.header, &state.run) {
                    if let Phase::Batch { number, .. } = phase {
                        header.set_position(*number as u64 - 1);
                    }
                    header.set_message(format!("{} · {}", run.title, phase.label()));
                }
                for host in hosts {
                    let bar = me.multi.add(
                        ProgressBar::new_spinner()
                            .with_style(host_style())
                            .with_prefix(me.host(&state, host))
                            .with_message(me.dim("waiting")),
                    );
                    bar.tick();
                    if let Some(old) = state.hosts.insert(
                        host.clone(),
                        HostLine {
                            bar,
                            uploading: false,
                            uploaded: 0,
                            steps: Vec::new(),
                        },
                    ) {
                        old.bar.finish_and_clear();
                        me.multi.remove(&old.bar);
                    }
                }
            }
            Event::StepStarted { host, step, action } => {
                if verbose {
                    let line =
                        format!("{} {:<12} $ {action}", me.host(&state, host), step.as_str());
                    me.println(&me.dim(&line));
                }
                if let Some(line) = state.hosts.get_mut(host) {
                    if line.uploading {
                        line.bar.set_style(host_style());
                        line.uploading = false;
                    }
                    line.bar.reset_elapsed();
                    line.bar.set_message(format!(
                        "{} · {}",
                        step.as_str(),
                        me.dim(&short_action(action))
                    ));
                }
            }
            Event::UploadProgress { host, sent, total } => {
                if let Some(line) = state.hosts.get_mut(host) {
                    if !line.uploading {
                        line.bar.set_style(upload_style());
                        line.bar.set_length(*total);
                        line.uploading = true;
                    }
                    line.uploaded = *sent;
                    line.bar.set_position(*sent);
                }
            }
            Event::Output {
                host, step, line, ..
            } if verbose => {
                let text = format!("{} {:<12} | {line}", me.host(&state, host), step.as_str());
                me.println(&text);
            }
            Event::StepFinished {
                host,
                step,
                ok,
                duration,
                result,
                error,
                ..
            } => {
                if !ok {
                    let mut text = format!(
                        "✗ {} {:<12} FAILED  ({})",
                        me.host(&state, host),
                        step.as_str(),
                        seconds(*duration)
                    );
                    if let Some(error) = error {
                        text.push_str("  ");
                        text.push_str(&error.replace('\n', "\n    "));
                    }
                    me.println(&me.red(&text));
                } else if verbose {
                    me.println(&me.dim(&format!(
                        "{} {:<12} {result}  ({})",
                        me.host(&state, host),
                        step.as_str(),
                        seconds(*duration)
                    )));
                }
                if let Some(line) = state.hosts.get_mut(host) {
                    line.steps.push(*step);
                }
            }
            Event::HostFinished {
                host,
                phase,
                ok,
                duration,
                step,
                drained,
                ..
            } => {
                let line = state.hosts.remove(host);
                if let Some(line) = &line {
                    line.bar.finish_and_clear();
                    me.multi.remove(&line.bar);
                }
                if !normal {
                    return;
                }
                let name = me.host(&state, host);
                let time = seconds(*duration);
                let text = if *ok {
                    let what = match phase {
                        Phase::Prepare => match line.as_ref().map(|l| l.uploaded) {
                            Some(bytes) if bytes > 0 => {
                                format!("prepared, {} uploaded", human_bytes(bytes))
                            }
                            _ => "prepared".to_string(),
                        },
                        Phase::Batch { .. } => match &state.run {
                            Some(run) => table::release_change(
                                run.before.get(host).and_then(Option::as_ref),
                                Some(&run.release),
                            ),
                            None => "done".to_string(),
                        },
                        Phase::Undo { .. } => "rolled back".to_string(),
                        Phase::Connect | Phase::Repair | Phase::Finish => line
                            .as_ref()
                            .map(|l| {
                                l.steps
                                    .iter()
                                    .map(|s| s.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            })
                            .filter(|s| !s.is_empty())
                            .unwrap_or_else(|| "done".to_string()),
                    };
                    format!(
                        "{} {name} {what}  {}",
                        me.green("✓"),
                        me.dim(&format!("({time})"))
                    )
                } else {
                    let step = step.map_or("?", StepKind::as_str);
                    let drained = if *drained { ", left drained" } else { "" };
                    me.red(&format!("✗ {name} FAILED at {step}{drained}  ({time})"))
                };
                me.println(&text);
            }
            Event::BakeStarted {
                batch,
                of,
                hosts,
                duration,
            } if me.bars() => {
                me.end_bake(&mut state);
                let bar = me.multi.add(
                    ProgressBar::new_spinner()
                        .with_style(style("  {spinner} {wide_msg}"))
                        .with_message(String::new()),
                );
                let line = BakeLine {
                    bar,
                    title: format!("bake {batch}/{of} · {}", hosts.join(" ")),
                    ends: Instant::now() + *duration,
                    gates: BTreeMap::new(),
                };
                line.refresh();
                line.bar.tick();
                state.bake = Some(line);
            }
            Event::BakeFinished {
                batch,
                of,
                ok,
                duration,
                ended_by,
                ..
            } => {
                me.end_bake(&mut state);
                if normal {
                    let verdict = match (ok, ended_by) {
                        (true, None) => me.green("passed"),
                        (true, Some(by)) => me.yellow(&format!("ended early ({by})")),
                        (false, _) => me.red("FAILED"),
                    };
                    me.println(&format!(
                        "{} bake {batch}/{of} {verdict}  {}",
                        if *ok { me.green("✓") } else { me.red("✗") },
                        me.dim(&format!("({})", seconds(*duration)))
                    ));
                }
            }
            Event::GateEvaluated {
                batch,
                of,
                gate,
                kind,
                outcome,
                measured,
                message,
                ..
            } => {
                if let Some(bake) = &mut state.bake {
                    bake.gates.insert(
                        *gate,
                        format!("gates[{gate}] {kind} {}", at_a_glance(measured)),
                    );
                    bake.refresh();
                }
                match outcome {
                    Some(Verdict::Fail) => me.println(&me.red(&format!(
                        "✗ gate {batch}/{of} gates[{gate}] {kind} FAILED: {message}"
                    ))),
                    Some(_) if normal => me.println(&format!(
                        "{} {}",
                        me.green("✓"),
                        me.dim(&format!(
                            "gate {batch}/{of} gates[{gate}] {kind} passed: {message}"
                        ))
                    )),
                    _ => {}
                }
            }
            Event::Note { host, message } => {
                let who = me.host(&state, host.as_deref().unwrap_or("shipit"));
                me.println(&me.yellow(&format!("{who} {message}")));
            }
            Event::Steer {
                detail, outcome, ..
            } => {
                let who = me.host(&state, "shipit");
                me.println(&me.bold(&format!("{who} {detail}")));
                // The header says whether the run waits, and for whom.
                if let (Some(header), Some(run)) = (&state.header, &state.run)
                    && *outcome == crate::host::steer::Outcome::Done
                    && detail.starts_with("paused by ")
                {
                    header.set_message(format!("{} · PAUSED", run.title));
                }
            }
            Event::Retuned { batches, .. } => {
                if let Some(header) = &state.header {
                    header.set_length(batches.len() as u64);
                }
            }
            Event::RunFinished { hosts, gates, .. } => {
                me.clear_all(&mut state);
                me.println("");
                let paint = |result: &HostResult, cell: &str| match result {
                    HostResult::Done => me.green(cell),
                    HostResult::Failed { .. } => me.red(cell),
                    HostResult::RolledBack => me.yellow(cell),
                    HostResult::Unchanged | HostResult::NotReached => me.dim(cell),
                };
                let lines = table::render(hosts, &paint);
                for (i, line) in lines.iter().enumerate() {
                    me.println(&if i == 0 { me.bold(line) } else { line.clone() });
                }
                let gate_lines = table::gates(gates);
                if !gate_lines.is_empty() {
                    me.println("");
                    for (i, line) in gate_lines.iter().enumerate() {
                        me.println(&if i == 0 { me.bold(line) } else { line.clone() });
                    }
                }
                for failure in table::failures(hosts) {
                    me.println("");
                    me.println(&failure);
                }
            }
            Event::Result { ok, message, .. } => {
                me.clear_all(&mut state);
                if let (false, Some(message)) = (ok, message) {
                    me.println(&me.red(&format!("error: {message}")));
                }
            }
            _ => {}
        }
    }
}

/// A measurement in a few words, for the bake's line: `5xx 0.4% of 512`.
fn at_a_glance(measured: &Measured) -> String {
    match measured {
        Measured::Haproxy {
            answers,
            error_rate,
            ..
        } => match error_rate {
            Some(rate) => format!("5xx {} of {answers}", crate::plan::gates::percent(*rate)),
            None => "no answers yet".to_string(),
        },
        Measured::Prometheus { value, .. } => {
            value.map_or_else(|| "no data".to_string(), |v| format!("{v}"))
        }
        Measured::Command { runs } => {
            let failed = runs.iter().filter(|r| r.exit_code != Some(0)).count();
            if failed == 0 {
                "ok".to_string()
            } else {
                format!("{failed} of {} not ok", runs.len())
            }
        }
        Measured::Error { .. } => "cannot measure".to_string(),
    }
}

/// The part of an action worth a glance on a host's line: the user's
/// command without the `cd DIR &&` and `NAME=value` prefixes shipit adds,
/// and `sh -c LINE` as just LINE. `-v` shows actions whole.
fn short_action(action: &str) -> String {
    let (local, rest) = match action.strip_prefix("local: ") {
        Some(rest) => ("local: ", rest),
        None => ("", action),
    };
    let Some(words) = shlex::split(rest) else {
        return action.to_string();
    };
    let mut words = &words[..];
    if words.len() > 3 && words[0] == "cd" && words[2] == "&&" {
        words = &words[3..];
    }
    while let Some((first, more)) = words.split_first()
        && first
            .split_once('=')
            .is_some_and(|(name, _)| crate::shell::valid_env_name(name))
    {
        words = more;
    }
    let text = match words {
        [sh, c, line] if sh == "sh" && c == "-c" => line.clone(),
        [] => return action.to_string(),
        _ => shlex::try_join(words.iter().map(String::as_str)).unwrap_or_else(|_| rest.to_string()),
    };
    format!("{local}{text}")
}

#[cfg(test)]
mod tests;
