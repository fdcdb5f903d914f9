//! The command gate: the user's own check. Exit 0 passes, another exit
//! status fails; a command that times out or cannot be run (its host
//! unreachable) measured nothing: inconclusive. With `run_on = "hosts"`
//! every command must pass.

use crate::report::{CommandRun, Measured, Verdict};
use crate::transport::{self, Exit, Output, TransportError};

/// One command's outcome.
pub fn judge_run(
    host: Option<&str>,
    output: Result<Output, TransportError>,
) -> (Verdict, CommandRun) {
    let run = |result: String, exit_code, output| CommandRun {
        host: host.map(str::to_string),
        result,
        exit_code,
        output,
    };
    match output {
        Ok(out) if out.exit.success() => (Verdict::Pass, run("ok".into(), Some(0), None)),
        Ok(out) => {
            let tail = match out.stderr_tail(4) {
                tail if tail.is_empty() => transport::tail(&out.stdout, 4),
                tail => tail,
            };
            let code = match out.exit {
                Exit::Code(code) => Some(code),
                _ => None,
            };
            (
                Verdict::Fail,
                run(
                    out.exit.to_string(),
                    code,
                    (!tail.is_empty()).then_some(tail),
                ),
            )
        }
        Err(e) => {
            let result = match &e {
                TransportError::Timeout { after, .. } => {
                    format!("timed out after {}", humantime::format_duration(*after))
                }
                _ => e.to_string(),
            };
            (Verdict::Inconclusive, run(result, None, None))
        }
    }
}

/// All commands together: any failure fails, else anything inconclusive
/// (or nothing run at all) is inconclusive.
pub fn judge(runs: Vec<(Verdict, CommandRun)>) -> (Verdict, Measured, String) {
    let verdict = if runs.is_empty() {
        Verdict::Inconclusive
    } else if runs.iter().any(|(v, _)| *v == Verdict::Fail) {
        Verdict::Fail
    } else if runs.iter().any(|(v, _)| *v == Verdict::Inconclusive) {
        Verdict::Inconclusive
    } else {
        Verdict::Pass
    };
    let words: Vec<String> = runs
        .iter()
        .map(|(_, r)| {
            let mut text = format!("{}: {}", r.host.as_deref().unwrap_or("local"), r.result);
            if let Some(output) = &r.output {
                text.push_str(&format!(" ({})", output.replace('\n', " / ")));
            }
            text
        })
        .collect();
    let message = if words.is_empty() {
        "no command to run: no measured host is left".to_string()
    } else {
        words.join("; ")
    };
    let measured = Measured::Command {
        runs: runs.into_iter().map(|(_, r)| r).collect(),
    };
    (verdict, measured, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::result_large_err)] // the transport's own error type
    fn out(code: u32, stderr: &str) -> Result<Output, TransportError> {
        Ok(Output {
            exit: Exit::Code(code),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        })
    }

    #[test]
    fn exit_statuses_decide() {
        let pass = judge_run(Some("web1"), out(0, ""));
        let fail = judge_run(Some("web2"), out(3, "p99 420ms > 300ms\n"));
        assert_eq!(fail.0, Verdict::Fail);
        assert_eq!(fail.1.exit_code, Some(3));
        let (verdict, _, message) = judge(vec![pass.clone(), fail]);
        assert_eq!(verdict, Verdict::Fail);
        assert_eq!(message, "web1: ok; web2: exit status 3 (p99 420ms > 300ms)");
        let lost = judge_run(
            None,
            Err(TransportError::Timeout {
                host: "local".into(),
                what: "x".into(),
                after: std::time::Duration::from_secs(30),
            }),
        );
        assert_eq!(lost.1.result, "timed out after 30s");
        let (verdict, _, _) = judge(vec![pass.clone(), lost]);
        assert_eq!(verdict, Verdict::Inconclusive);
        assert_eq!(judge(vec![pass]).0, Verdict::Pass);
        assert_eq!(judge(Vec::new()).0, Verdict::Inconclusive);
    }
}
