//! `[[gates]]` as typed values: checks on what live traffic sees, evaluated
//! every `interval` while a batch bakes (see docs/rollout.md). The rules
//! that turn the raw entries into these live in `validate/gates.rs`.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::{RunOn, Template};

/// One `[[gates]]` entry.
#[derive(Debug, Clone)]
pub struct Gate {
    pub check: GateCheck,
    /// How often the gate is evaluated during a bake; it is evaluated once
    /// more when the bake ends, and that evaluation decides.
    pub interval: Duration,
    /// What a final evaluation that could not decide (too few requests, no
    /// data) means.
    pub on_inconclusive: OnInconclusive,
}

/// What a gate measures and against what limit.
#[derive(Debug, Clone)]
pub enum GateCheck {
    /// The share of 5xx among the answers of the switched servers, from
    /// HAProxy's per-server counters (through `[lb]`).
    Haproxy {
        /// 0.0 to 1.0: a share above it fails.
        max_error_rate: f64,
        /// Fewer answers than this in the window say too little: inconclusive.
        min_requests: u64,
        /// Only the last this long counts; `None`: the whole bake so far.
        window: Option<Duration>,
    },
    /// A PromQL query through Prometheus's HTTP API; every value it returns
    /// must lie within `min`..=`max`.
    Prometheus {
        /// Base URL, such as `http://127.0.0.1:9090`.
        url: String,
        query: GateQuery,
        max: Option<f64>,
        min: Option<f64>,
        timeout: Duration,
    },
    /// A command: exit 0 passes, another status fails; one that times out
    /// or cannot be run is inconclusive.
    Command {
        run: Template,
        run_on: RunOn,
        timeout: Duration,
    },
}

impl GateCheck {
    /// The `type = "..."` of the entry.
    pub fn kind(&self) -> &'static str {
        match self {
            GateCheck::Haproxy { .. } => "haproxy",
            GateCheck::Prometheus { .. } => "prometheus",
            GateCheck::Command { .. } => "command",
        }
    }
}

/// `on_inconclusive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnInconclusive {
    /// A gate that could not measure does not let the rollout go on.
    Fail,
    Pass,
}

impl OnInconclusive {
    pub fn as_str(self) -> &'static str {
        match self {
            OnInconclusive::Fail => "fail",
            OnInconclusive::Pass => "pass",
        }
    }
}

/// A Prometheus gate's `query`: PromQL with placeholders for the hosts a
/// batch's gate measures. PromQL's own braces (`{code="5xx"}`) are left
/// alone, as in every template; `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateQuery {
    source: String,
    pieces: Vec<QueryPiece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum QueryPiece {
    Text(String),
    Placeholder(QueryVar),
}

/// What a query may refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryVar {
    /// A regular expression matching exactly the measured hosts' names in
    /// the load balancer (`lb.server`), or their host names without one.
    ServersRegex,
    /// A regular expression matching exactly the measured hosts' names.
    HostsRegex,
    App,
    Stage,
    Release,
}

impl QueryVar {
    const ALL: [QueryVar; 5] = [
        QueryVar::ServersRegex,
        QueryVar::HostsRegex,
        QueryVar::App,
        QueryVar::Stage,
        QueryVar::Release,
    ];

    fn key(self) -> &'static str {
        match self {
            QueryVar::ServersRegex => "servers_regex",
            QueryVar::HostsRegex => "hosts_regex",
            QueryVar::App => "app",
            QueryVar::Stage => "stage",
            QueryVar::Release => "release",
        }
    }
}

/// An unknown `{word}` in a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError(pub String);

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let allowed: Vec<String> = QueryVar::ALL
            .iter()
            .map(|v| format!("{{{}}}", v.key()))
            .collect();
        write!(
            f,
            "unknown placeholder {{{}}}; allowed in a query: {} (write {{{{ and }}}} for literal braces)",
            self.0,
            allowed.join(", ")
        )
    }
}

impl GateQuery {
    pub fn parse(source: &str) -> Result<GateQuery, QueryError> {
        let chars: Vec<char> = source.chars().collect();
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '{' if chars.get(i + 1) == Some(&'{') => {
                    text.push('{');
                    i += 2;
                }
                '}' if chars.get(i + 1) == Some(&'}') => {
                    text.push('}');
                    i += 2;
                }
                '{' => {
                    let word: String = chars[i + 1..]
                        .iter()
                        .take_while(|c| c.is_ascii_lowercase() || **c == '_')
                        .collect();
                    let close = i + 1 + word.chars().count();
                    if word.is_empty() || chars.get(close) != Some(&'}') {
                        text.push('{');
                        i += 1;
                        continue;
                    }
                    let var = QueryVar::ALL
                        .into_iter()
                        .find(|v| v.key() == word)
                        .ok_or(QueryError(word))?;
                    if !text.is_empty() {
                        pieces.push(QueryPiece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(QueryPiece::Placeholder(var));
                    i = close + 1;
                }
                c => {
                    text.push(c);
                    i += 1;
                }
            }
        }
        if !text.is_empty() {
            pieces.push(QueryPiece::Text(text));
        }
        Ok(GateQuery {
            source: source.to_string(),
            pieces,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The query with every placeholder replaced by `value(var)`.
    pub fn render(&self, value: impl Fn(QueryVar) -> String) -> String {
        self.pieces
            .iter()
            .map(|p| match p {
                QueryPiece::Text(text) => text.clone(),
                QueryPiece::Placeholder(var) => value(*var),
            })
            .collect()
    }
}

/// A regular expression (RE2, as Prometheus uses, which anchors it) that
/// matches exactly `names`: `web1` or `(?:web1|web2)`, grouped so that it
/// can be combined (`({servers_regex}):8080`). Characters other than
/// letters, digits, `_`, `-` and `:` go in a class (`web[.]1`), never
/// behind a backslash: the expression is pasted into a PromQL string whose
/// quoting (`"…"`, `'…'` or raw `` `…` ``) decides what a backslash means.
pub fn exact_regex(names: &[String]) -> String {
    let alternatives: Vec<String> = names
        .iter()
        .map(|name| {
            name.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':') {
                        c.to_string()
                    } else {
                        format!("[{c}]")
                    }
                })
                .collect::<String>()
        })
        .collect();
    match alternatives.as_slice() {
        [one] => one.clone(),
        _ => format!("(?:{})", alternatives.join("|")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_keep_promql_braces_and_fill_placeholders() {
        let q = GateQuery::parse(
            r#"sum(rate(haproxy_server_http_responses_total{code="5xx",server=~"{servers_regex}"}[30s])) {{x}}"#,
        )
        .unwrap();
        let text = q.render(|v| match v {
            QueryVar::ServersRegex => exact_regex(&["web1".into(), "web.2".into()]),
            _ => "?".into(),
        });
        assert_eq!(
            text,
            r#"sum(rate(haproxy_server_http_responses_total{code="5xx",server=~"(?:web1|web[.]2)"}[30s])) {x}"#
        );
        let err = GateQuery::parse("up{job=\"{job}\"}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown placeholder {job}; allowed in a query: {servers_regex}, {hosts_regex}, {app}, {stage}, {release} \
             (write {{ and }} for literal braces)"
        );
        assert_eq!(exact_regex(&["a-b:c_d".into()]), "a-b:c_d");
    }
}
