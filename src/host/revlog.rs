//! `revisions.log`: one JSON object per line, appended on every host for
//! every deploy and rollback, and for every request that steered a run
//! (`pause`, `abort`…: who asked, and what came of it), so `grep`, `jq`
//! and `shipit releases` can all read it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// UTC, RFC 3339.
    pub time: String,
    /// `deploy` or `rollback`; for a request that steered a run, its
    /// command: `pause`, `resume`, `promote`, `abort`, `rollback`, `tune`.
    pub action: String,
    pub release: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    /// Who ran it: `user@machine`, or the CI actor.
    pub by: String,
    /// `success`, or what went wrong on this host; for a request, what
    /// came of it.
    pub result: String,
    /// A request's `-m` text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The run a request steered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

impl Entry {
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("an Entry always serializes")
    }

    pub fn parse_log(text: &str) -> Vec<Entry> {
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_one_line_per_entry() {
        let entry = Entry {
            time: "2026-11-22T10:15:00Z".into(),
            action: "deploy".into(),
            release: "20261122101500".into(),
            previous: Some("20261121000000".into()),
            revision: "abc\nnewline".into(),
            by: "ana@laptop".into(),
            result: "success".into(),
            message: None,
            run: None,
        };
        let line = entry.to_line();
        assert!(!line.contains('\n'));
        let log = format!("{line}\nnot json\n{line}\n");
        assert_eq!(Entry::parse_log(&log), vec![entry.clone(), entry]);
    }
}
