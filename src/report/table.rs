//! The final per-host table, shared by the plain and progress reporters.
//!
//! ```text
//! HOST  RELEASE                           RESULT             TIME
//! web1  20261122101500 → 20261122103000   ok                 3.2s
//! web2  20261122101500                    FAILED at health   2.3s
//! ```

use super::{GateSummary, HostResult, HostSummary, Verdict};
use crate::host::ReleaseId;

/// One row per host; `paint` may colour a result cell (it gets the padded
/// text, so colour codes do not upset the alignment).
pub fn render(hosts: &[HostSummary], paint: &dyn Fn(&HostResult, &str) -> String) -> Vec<String> {
    let header = [
        "HOST".to_string(),
        "RELEASE".into(),
        "RESULT".into(),
        "TIME".into(),
    ];
    let rows: Vec<[String; 4]> = hosts
        .iter()
        .map(|h| {
            let mut result = h.result.label();
            if h.drained {
                result.push_str(", left drained");
            }
            if let Some(state) = h.left_out {
                result.push_str(&format!(", left in {} as found", state.as_str()));
            }
            [
                h.host.clone(),
                release_change(h.before.as_ref(), h.now.as_ref()),
                result,
                seconds(h.duration),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String; 4], result: &dyn Fn(String) -> String| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                let cell = format!("{c:<w$}");
                if i == 2 { result(cell) } else { cell }
            })
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(&header, &|c| c)];
    for (h, row) in hosts.iter().zip(&rows) {
        out.push(line(row, &|c| paint(&h.result, &c)));
    }
    out
}

/// One row per gate and batch that was gated: what the gate decided and
/// what it measured.
///
/// ```text
/// BATCH  GATE              RESULT  MEASURED
/// 1/4    gates[0] haproxy  pass    5xx 0% (0 of 212 answers from web1 in 30s) ≤ max_error_rate 5%
/// ```
pub fn gates(gates: &[GateSummary]) -> Vec<String> {
    if gates.is_empty() {
        return Vec::new();
    }
    let rows: Vec<[String; 4]> = gates
        .iter()
        .map(|g| {
            [
                format!("{}/{}", g.batch, g.of),
                format!("gates[{}] {}", g.gate, g.kind),
                match g.outcome {
                    Verdict::Pass => "pass".to_string(),
                    Verdict::Fail => "FAILED".to_string(),
                    Verdict::Inconclusive => "undecided".to_string(),
                },
                g.message.clone(),
            ]
        })
        .collect();
    let header = [
        "BATCH".to_string(),
        "GATE".into(),
        "RESULT".into(),
        "MEASURED".into(),
    ];
    let widths: Vec<usize> = (0..3)
        .map(|i| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    std::iter::once(&header)
        .chain(&rows)
        .map(|r| {
            format!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )
            .trim_end()
            .to_string()
        })
        .collect()
}

/// `old → new`, or just the release when it did not change.
pub fn release_change(before: Option<&ReleaseId>, now: Option<&ReleaseId>) -> String {
    let show = |r: Option<&ReleaseId>| r.map_or("-".to_string(), ToString::to_string);
    if before == now {
        show(now)
    } else {
        format!("{} → {}", show(before), show(now))
    }
}

/// The details of every failed host, for after the table.
pub fn failures(hosts: &[HostSummary]) -> Vec<String> {
    hosts
        .iter()
        .filter_map(|h| match &h.result {
            HostResult::Failed { step, error, .. } => Some(format!(
                "{}: {} failed:\n  {}",
                h.host,
                step.as_str(),
                error.replace('\n', "\n  ")
            )),
            _ => None,
        })
        .collect()
}

pub fn seconds(d: std::time::Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
