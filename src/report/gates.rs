//! What gate evaluations report: the verdict and the values measured, for
//! the `gate-evaluated` event and the per-batch lines of the final table.

use std::time::Duration;

use serde::Serialize;

/// How one evaluation of a gate came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    Fail,
    /// Too little to judge: too few answers, no data, a measurement that
    /// could not be made. The bake's last evaluation turns it into a pass
    /// or a fail by the gate's `on_inconclusive`.
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// The values an evaluation measured, by gate type.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Measured {
    Haproxy {
        /// Answers of the measured servers within the window.
        answers: u64,
        /// Of those, answers with a 5xx status.
        errors: u64,
        /// `errors / answers`; absent without answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        error_rate: Option<f64>,
        /// The window the counts cover (ms).
        #[serde(serialize_with = "super::millis")]
        window: Duration,
        /// Measured hosts the load balancer did not list.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        missing: Vec<String>,
        /// Load balancers whose counters went back since the previous
        /// sample (HAProxy was reloaded): their counts start again from 0.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        resets: Vec<String>,
    },
    Prometheus {
        /// The value judged: the one furthest outside the limits, or else
        /// the one closest to them. Absent without data.
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<f64>,
        /// How many series the query returned.
        series: usize,
    },
    Command {
        runs: Vec<CommandRun>,
    },
    /// The measurement could not be made (the load balancer or Prometheus
    /// did not answer, the answer made no sense).
    Error {
        error: String,
    },
}

/// One command of a command gate, as it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandRun {
    /// The host it ran on; absent: the machine running shipit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `ok`, `exit status 3`, `timed out`, `connection lost`…
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u32>,
    /// The last lines of its stderr (or stdout) when it did not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// What a gate decided for a batch, for the final table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateSummary {
    /// 1-based.
    pub batch: usize,
    pub of: usize,
    /// Its place in `[[gates]]`, 0-based.
    pub gate: usize,
    #[serde(rename = "type")]
    pub kind: String,
    /// `pass` or `fail` (an inconclusive end already turned into one of
    /// them by `on_inconclusive`); `inconclusive` only when the bake was
    /// cut short before the gate decided.
    pub outcome: Verdict,
    pub measured: Measured,
    /// What passes, in words.
    pub limit: String,
    /// The last evaluation in words.
    pub message: String,
}

impl Measured {
    /// With `f` applied to texts that can carry command output.
    pub fn map_text(&self, f: &dyn Fn(&str) -> String) -> Measured {
        match self {
            Measured::Command { runs } => Measured::Command {
                runs: runs
                    .iter()
                    .map(|r| CommandRun {
                        output: r.output.as_deref().map(f),
                        ..r.clone()
                    })
                    .collect(),
            },
            Measured::Error { error } => Measured::Error { error: f(error) },
            other => other.clone(),
        }
    }
}
