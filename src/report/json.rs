//! `--json`: every event as one line of JSON (docs/events.md).
//!
//! ```text
//! {"v":1,"ts":"2026-11-22T10:15:02.123Z","event":"step-started","host":"web1","step":"upload","action":"shipit:unpack /srv/shop 20261122101500"}
//! ```

use std::io::Write;
use std::sync::Mutex;

use serde::Serialize;

use super::{Event, Reporter};

/// The `v` of every line. Adding events or fields keeps it; renaming or
/// removing either, or changing what one means, bumps it.
pub const SCHEMA_VERSION: u32 = 1;

pub struct Json<W: Write + Send> {
    out: Mutex<W>,
}

#[derive(Serialize)]
struct Line<'a> {
    v: u32,
    /// RFC 3339, UTC, milliseconds.
    ts: String,
    #[serde(flatten)]
    event: &'a Event,
}

impl<W: Write + Send> Json<W> {
    pub fn new(out: W) -> Self {
        Json {
            out: Mutex::new(out),
        }
    }

    pub fn into_inner(self) -> W {
        self.out.into_inner().expect("json reporter lock")
    }
}

/// One event as its line of JSON (without the newline).
pub fn line(event: &Event) -> String {
    let line = Line {
        v: SCHEMA_VERSION,
        ts: format!("{:.3}", jiff::Timestamp::now()),
        event,
    };
    // Events are plain data (strings, numbers, lists, string-keyed maps):
    // serializing one cannot fail.
    serde_json::to_string(&line).expect("events serialize to JSON")
}

impl<W: Write + Send> Reporter for Json<W> {
    fn event(&self, event: &Event) {
        // Stamped under the lock, so lines come out in time order.
        let mut out = self.out.lock().expect("json reporter lock");
        let text = line(event);
        // Whole lines, flushed at once: a consumer reading the pipe never
        // sees half an event. A closed stdout has nobody to tell.
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::exit::Exit;
    use crate::plan::{Operation, StepKind};
    use crate::report::Phase;

    #[test]
    fn every_line_is_versioned_timestamped_and_tagged() {
        let json = Json::new(Vec::new());
        json.event(&Event::RunStarted {
            operation: Operation::Deploy,
            app: "shop".into(),
            stage: "production".into(),
            release: "20261122101500".parse().unwrap(),
            revision: "abc".into(),
            hosts: vec!["web1".into()],
            batches: vec![vec!["web1".into()]],
            before: BTreeMap::from([("web1".to_string(), None)]),
        });
        json.event(&Event::HostFinished {
            host: "web1".into(),
            phase: Phase::Batch { number: 1, of: 2 },
            ok: false,
            duration: Duration::from_millis(1500),
            step: Some(StepKind::Health),
            error: Some("not healthy".into()),
            drained: true,
        });
        json.event(&Event::Result {
            ok: false,
            exit_code: 5,
            exit: Exit::Partial,
            message: Some("deploy failed".into()),
        });
        let text = String::from_utf8(json.into_inner()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        for l in &lines {
            assert_eq!(l["v"], 1);
            let ts = l["ts"].as_str().unwrap();
            assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{ts}");
            assert!(ts.ends_with('Z'), "{ts}");
        }
        assert_eq!(lines[0]["event"], "run-started");
        assert_eq!(lines[0]["before"]["web1"], serde_json::Value::Null);
        assert_eq!(lines[1]["event"], "host-finished");
        assert_eq!(lines[1]["phase"]["name"], "batch");
        assert_eq!(lines[1]["phase"]["number"], 1);
        assert_eq!(lines[1]["duration"], 1500);
        assert_eq!(lines[1]["step"], "health");
        assert_eq!(lines[2]["event"], "result");
        assert_eq!(lines[2]["exit_code"], 5);
        assert_eq!(lines[2]["exit"], "partial");
    }
}
