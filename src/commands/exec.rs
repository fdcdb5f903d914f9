//! `shipit STAGE exec -- CMD…`: runs one command line on the hosts (all at
//! once, or batch by batch with `--rolling`) and prints each host's output
//! as it comes, every line prefixed by the host's name.
//!
//! It does not take the deploy lock unless `--lock` is given: exec is for
//! ad-hoc, mostly read-only commands (look at logs, check a process), which
//! should work while a deploy runs and never be refused because someone
//! holds a manual lock. Commands that change what a deploy relies on
//! should use `--lock`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Mutex;

use futures::future::join_all;

use super::lock::{self, LockOptions};
use super::{Context, Signals, fleet};
use crate::cli::ExecArgs;
use crate::config::Host;
use crate::error::Error;
use crate::execute::Budget;
use crate::exit::Exit;
use crate::host::Layout;
use crate::host::lock::LockKind;
use crate::plan::roles;
use crate::plan::{OutOfService, PlanError, Service};
use crate::shell::Cmd;
use crate::transport::ssh::SshTransport;
use crate::transport::{ExecObserver, ExecRequest, Stream, Transport};

pub async fn run(ctx: &Context, args: &ExecArgs, signals: &Signals) -> Result<Exit, Error> {
    let stage = &ctx.stage;
    let line = args.command.join(" ");
    if line.trim().is_empty() {
        return Err(Error::Usage("exec: the command is empty".into()));
    }
    let cmd = Layout::new(&stage.app.deploy_to).exec(&line);

    if args.dry_run {
        // Without connecting, every host counts as in service.
        let rolling = Rolling::new(ctx, args.rolling, &Service::new())?;
        print!("{}", render_plan(ctx, &line, &rolling.batches, args));
        return Ok(Exit::Success);
    }
    if ctx.global.verbose {
        ctx.note(None, &format!("exec: {}", cmd.display()));
    }
    let transport = if args.rolling {
        fleet::connect_for_run(stage, &ctx.hosts).await?
    } else {
        fleet::connect(stage, &ctx.hosts).await?
    };
    let result = async {
        // A rolling exec takes hosts out of service in turn, like a
        // rollout: the same batches, within the same capacity budget.
        let service = if args.rolling {
            super::run::service(ctx, &transport, "running").await?
        } else {
            Service::new()
        };
        let rolling = Rolling::new(ctx, args.rolling, &service)?;
        if args.lock {
            let work = run_batches(ctx, &transport, &cmd, &rolling, signals);
            lock::holding(
                ctx,
                &transport,
                LockKind::Exec,
                &LockOptions::default(),
                Some(format!("exec: {line}")),
                &signals.cancel,
                work,
            )
            .await
        } else {
            run_batches(ctx, &transport, &cmd, &rolling, signals).await
        }
    }
    .await;
    transport.close().await;
    result
}

/// The batches of a run, and the budget each host asks before its turn.
struct Rolling {
    batches: Vec<Vec<Host>>,
    budget: Budget,
}

impl Rolling {
    /// All hosts at once, or (`rolling`) batches cut by the stage's
    /// rollout shape, counting the hosts `service` reports out.
    fn new(ctx: &Context, rolling: bool, service: &Service) -> Result<Rolling, Error> {
        let hosts = &ctx.hosts;
        if !rolling {
            return Ok(Rolling {
                batches: vec![hosts.clone()],
                budget: Budget::new(hosts.len().max(1), &BTreeMap::new()),
            });
        }
        let stage = &ctx.stage;
        let out: BTreeMap<String, OutOfService> = service
            .iter()
            .filter(|(_, s)| s.is_out())
            .map(|(h, s)| {
                let out = OutOfService {
                    state: *s,
                    returns: false,
                };
                (h.clone(), out)
            })
            .collect();
        // Each role by its own shape and within its own pool, as a rollout.
        let rolling: Vec<&Host> = hosts.iter().collect();
        let (parts, pools) = roles::parts(stage, &rolling)?;
        let batches = roles::cut(&parts, &pools, &out, &stage.hosts)
            .map_err(|e| match e {
                PlanError::Capacity(why) => {
                    Error::Unchanged(format!("not running; nothing was changed: {why}"))
                }
                other => other.into(),
            })?
            .into_iter()
            .map(|b| {
                b.hosts
                    .iter()
                    .filter_map(|name| hosts.iter().find(|h| &h.name == name).cloned())
                    .collect()
            })
            .collect();
        Ok(Rolling {
            batches,
            budget: Budget::pooled(pools, &out),
        })
    }
}

/// How the command ended on one host.
enum Outcome {
    Ok,
    Failed(String),
    NotRun,
}

async fn run_batches(
    ctx: &Context,
    transport: &SshTransport,
    cmd: &Cmd,
    rolling: &Rolling,
    signals: &Signals,
) -> Result<Exit, Error> {
    let width = ctx.hosts.iter().map(|h| h.name.len()).max().unwrap_or(0);
    let mut outcomes: Vec<(String, Outcome)> = Vec::new();
    let mut stopped = false;
    let budget = &rolling.budget;
    for batch in &rolling.batches {
        if stopped || signals.cancel.is_cancelled() {
            outcomes.extend(batch.iter().map(|h| (h.name.clone(), Outcome::NotRun)));
            continue;
        }
        let runs = join_all(batch.iter().map(|host| async move {
            if let Err(refused) = budget.take(&host.name).await {
                return (host.name.clone(), Outcome::Failed(refused.to_string()));
            }
            let observer = Prefixed::new(&host.name, width);
            let request = ExecRequest {
                command: cmd.render(),
                stdin: None,
                timeout: ctx.stage.ssh.command_timeout,
            };
            // Ctrl-C abandons the command, which stops it on the host.
            let result = tokio::select! {
                result = transport.exec(&host.name, request, &observer) => Some(result),
                () = signals.cancel.cancelled() => None,
            };
            observer.finish();
            let outcome = match result {
                Some(Ok(out)) if out.exit.success() => Outcome::Ok,
                Some(Ok(out)) => Outcome::Failed(out.exit.to_string()),
                Some(Err(e)) => Outcome::Failed(e.to_string()),
                None => Outcome::Failed("interrupted".into()),
            };
            // A host whose command failed may be out of service: it keeps
            // its room.
            match outcome {
                Outcome::Ok => budget.put_back(&host.name),
                _ => budget.stuck(&host.name),
            }
            (host.name.clone(), outcome)
        }))
        .await;
        stopped = runs.iter().any(|(_, o)| matches!(o, Outcome::Failed(_)));
        outcomes.extend(runs);
    }
    if signals.cancel.is_cancelled() {
        // The abandoned commands are being stopped on their hosts (TERM,
        // then KILL after 5 s); wait for that unless told to hurry.
        tokio::select! {
            () = transport.settle(std::time::Duration::from_secs(15)) => {}
            () = signals.hurry.cancelled() => {}
        }
    }
    verdict(ctx, &outcomes, signals.cancel.is_cancelled())
}

fn verdict(
    ctx: &Context,
    outcomes: &[(String, Outcome)],
    interrupted: bool,
) -> Result<Exit, Error> {
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(h, o)| match o {
            Outcome::Failed(why) => Some(format!("{h} ({why})")),
            _ => None,
        })
        .collect();
    let not_run: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::NotRun))
        .map(|(h, _)| h.as_str())
        .collect();
    let ok = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Ok))
        .count();
    if failed.is_empty() && not_run.is_empty() {
        if !ctx.global.quiet {
            ctx.note(
                None,
                &format!("exec: ok on {ok} host{}", if ok == 1 { "" } else { "s" }),
            );
        }
        return Ok(Exit::Success);
    }
    let mut message = String::from("exec ");
    if interrupted {
        message.push_str("interrupted; the command was stopped where it still ran");
    } else {
        message.push_str(&format!("failed on {}", failed.join(", ")));
    }
    if ok > 0 {
        message.push_str(&format!(
            "; ok on {ok} host{}",
            if ok == 1 { "" } else { "s" }
        ));
    }
    if !not_run.is_empty() {
        message.push_str(&format!(
            "; not run on {} ({})",
            not_run.join(", "),
            if interrupted {
                "interrupted"
            } else {
                "--rolling stops after a batch with a failure"
            }
        ));
    }
    Err(Error::Run {
        exit: if interrupted {
            Exit::Interrupted
        } else {
            Exit::FailedUnchanged
        },
        message,
    })
}

fn render_plan(ctx: &Context, line: &str, batches: &[Vec<Host>], args: &ExecArgs) -> String {
    let stage = &ctx.stage;
    let mut out = format!(
        "Plan: exec on {} host{} of stage {}: sh -c {}\n",
        ctx.hosts.len(),
        if ctx.hosts.len() == 1 { "" } else { "s" },
        stage.name,
        crate::shell::quote(line)
    );
    out.push_str(&format!(
        "  in {}/current when it exists (else the login directory){}\n",
        stage.app.deploy_to,
        if args.lock {
            ", holding the deploy lock"
        } else {
            "; the deploy lock is not taken (--lock takes it)"
        }
    ));
    for (i, batch) in batches.iter().enumerate() {
        let names: Vec<&str> = batch.iter().map(|h| h.name.as_str()).collect();
        out.push_str(&format!(
            "  batch {} of {}: {}\n",
            i + 1,
            batches.len(),
            names.join(", ")
        ));
    }
    if batches.len() > 1 {
        out.push_str("  a batch starts only if every host of the one before succeeded\n");
    }
    out
}

/// Writes a host's output line by line, each line prefixed by the host's
/// name: stdout to stdout, stderr to stderr. A last line without a newline
/// is written by `finish`.
struct Prefixed {
    prefix: String,
    pending: Mutex<[Vec<u8>; 2]>,
}

impl Prefixed {
    fn new(host: &str, width: usize) -> Prefixed {
        Prefixed {
            prefix: format!("{host:<width$} | "),
            pending: Mutex::new([Vec::new(), Vec::new()]),
        }
    }

    /// Complete lines of `buffer` after adding `data`, each prefixed; the
    /// rest stays in `buffer`.
    fn lines(&self, buffer: &mut Vec<u8>, data: &[u8]) -> Vec<u8> {
        buffer.extend_from_slice(data);
        let Some(end) = buffer.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = buffer.split_off(end + 1);
        let complete = std::mem::replace(buffer, rest);
        let mut out = Vec::new();
        for line in complete.split_inclusive(|b| *b == b'\n') {
            out.extend_from_slice(self.prefix.as_bytes());
            out.extend_from_slice(line);
        }
        out
    }

    fn finish(&self) {
        let mut pending = self.pending.lock().expect("output buffer");
        for (i, buffer) in pending.iter_mut().enumerate() {
            if !buffer.is_empty() {
                buffer.push(b'\n');
                let text = self.lines(&mut Vec::new(), buffer);
                buffer.clear();
                write(
                    if i == 0 {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    },
                    &text,
                );
            }
        }
    }
}

impl ExecObserver for Prefixed {
    fn output(&self, stream: Stream, data: &[u8]) {
        let text = {
            let mut pending = self.pending.lock().expect("output buffer");
            let buffer = match stream {
                Stream::Stdout => &mut pending[0],
                Stream::Stderr => &mut pending[1],
            };
            self.lines(buffer, data)
        };
        write(stream, &text);
    }
}

fn write(stream: Stream, text: &[u8]) {
    if text.is_empty() {
        return;
    }
    // Output nobody can read has nowhere to go; the exit status still tells.
    let _ = match stream {
        Stream::Stdout => std::io::stdout().lock().write_all(text),
        Stream::Stderr => std::io::stderr().lock().write_all(text),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_into_prefixed_lines() {
        let p = Prefixed::new("web1", 6);
        let mut buffer = Vec::new();
        assert_eq!(p.lines(&mut buffer, b"one\ntw"), b"web1   | one\n");
        assert_eq!(p.lines(&mut buffer, b"o"), b"");
        assert_eq!(
            p.lines(&mut buffer, b"\nthree\n\nfour"),
            b"web1   | two\nweb1   | three\nweb1   | \n"
        );
        assert_eq!(buffer, b"four");
    }
}
