//! The command line: `shipit STAGE COMMAND [OPTIONS]`, plus the few
//! commands that need no stage (`init`, `completions`). Only clap types
//! live here; `lib.rs` turns them into calls into `commands`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Options accepted before the stage and after the command alike.
#[derive(Debug, Clone, Default, Args)]
pub struct Global {
    /// The deploy file.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        env = "SHIPIT_CONFIG",
        global = true
    )]
    pub config: Option<PathBuf>,
    /// Show every remote command and its output.
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    pub verbose: bool,
    /// Only errors and the final summary.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Write every event as a line of JSON on stdout (docs/events.md);
    /// human output stays on stderr.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Global {
    /// Options given after the command win over those given before it.
    pub fn merge(self, later: Global) -> Global {
        Global {
            config: later.config.or(self.config),
            verbose: self.verbose || later.verbose,
            quiet: self.quiet || later.quiet,
            json: self.json || later.json,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "shipit",
    version,
    about = "Agentless SSH deploys: rolling, health-gated, load-balancer aware",
    override_usage = "shipit [OPTIONS] STAGE COMMAND [ARGS]\n       shipit init | completions SHELL | man",
    subcommand_help_heading = "Commands without a stage",
    after_help = "Run `shipit STAGE --help` for what a stage can do, e.g. `shipit production --help`.\n\
                  Exit codes: 0 ok, 1 failed with no host changed, 2 usage or config error, \
                  3 cannot connect, 4 failed and rolled back, 5 failed and hosts left changed, \
                  6 lock held, 130 interrupted."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: TopCommand,
}

#[derive(Debug, Subcommand)]
pub enum TopCommand {
    /// Write a commented starter deploy.toml for the project in this
    /// directory (or -c FILE); never overwrites.
    Init,
    /// Print a completion script for SHELL, e.g. `shipit completions bash`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout: `shipit man | man -l -`.
    Man,
    /// STAGE COMMAND: deploy, rollback, releases… on one stage of deploy.toml.
    #[command(external_subcommand)]
    Stage(Vec<OsString>),
}

/// `shipit STAGE …`, parsed once the stage name is known.
#[derive(Debug, Parser)]
#[command(
    no_binary_name = true,
    about = "What shipit can do on this stage of deploy.toml",
    after_help = "Exit codes: 0 ok, 1 failed with no host changed, 2 usage or config error, \
                  3 cannot connect, 4 failed and rolled back, 5 failed and hosts left changed, \
                  6 lock held, 130 interrupted."
)]
pub struct StageCli {
    #[command(flatten)]
    pub global: Global,
    #[command(flatten)]
    pub select: Select,
    #[command(subcommand)]
    pub command: StageCommand,
}

/// Which hosts of the stage a command works on. Comma = union within one
/// flag (repeating the flag adds to it); both flags = intersection (see
/// `config::select`). Given both before and after the command, the later
/// one wins, as with every option.
#[derive(Debug, Clone, Default, Args)]
pub struct Select {
    /// Only these hosts (their deploy.toml names), comma-separated.
    #[arg(
        long,
        value_name = "NAMES",
        value_delimiter = ',',
        global = true,
        help_heading = "Host selection"
    )]
    pub hosts: Vec<String>,
    /// Only hosts with any of these roles, comma-separated. With --hosts:
    /// the hosts that match both.
    #[arg(
        long,
        value_name = "ROLES",
        value_delimiter = ',',
        global = true,
        help_heading = "Host selection"
    )]
    pub roles: Vec<String>,
}

impl Select {
    pub fn filter(&self) -> crate::config::select::Filter {
        crate::config::select::Filter {
            hosts: self.hosts.clone(),
            roles: self.roles.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum StageCommand {
    /// Ship a new release to every host, batch by batch.
    Deploy(DeployArgs),
    /// Return the hosts to the release before the current one.
    Rollback(RollbackArgs),
    /// Per host: the releases, which is current, which are bad or unfinished.
    Releases,
    /// What is live on each host, the deploy lock, and the last run.
    Status,
    /// Take the deploy lock by hand, so no one deploys until `unlock`.
    Lock(LockArgs),
    /// Remove the deploy lock.
    Unlock(UnlockArgs),
    /// Check every host is ready for a deploy: a table of results. Changes
    /// nothing. Exit 1 if a check fails, 3 if a host cannot be reached.
    Check,
    /// Run a shell command on the hosts, in deploy_to/current when it
    /// exists, and print each host's output prefixed by its name.
    Exec(ExecArgs),
    /// Remove old releases now, keeping `app.keep_releases` (under the
    /// deploy lock).
    Cleanup(CleanupArgs),
    /// Pause the deploy or rollback running on this stage, from any
    /// machine: the batch in flight finishes, no new one starts until
    /// `resume`. Waits until the run is paused.
    Pause(PauseArgs),
    /// Let a paused deploy or rollback go on.
    Resume,
    /// End the bake under way now (its checks stop); with --all, skip
    /// every bake still to come too.
    Promote(PromoteArgs),
    /// Stop the running deploy or rollback once the batch in flight is
    /// back in service (a bake ends at once); rollout.on_failure applies
    /// (a deploy rolls back by default).
    Abort(AbortArgs),
    /// Change the batches of the running deploy or rollback that have not
    /// started yet: their size, their bake, or both (within
    /// rollout.max_unavailable).
    Tune(TuneArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PauseArgs {
    /// Why, shown by the running deploy and recorded in revisions.log.
    #[arg(long, short = 'm', value_name = "TEXT", value_parser = steer_message)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct AbortArgs {
    /// Why, shown by the running deploy and recorded in revisions.log.
    #[arg(long, short = 'm', value_name = "TEXT", value_parser = steer_message)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct PromoteArgs {
    /// Also skip every bake still to come.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = true)]
pub struct TuneArgs {
    /// Hosts per batch from the next batch on: a number or a share such
    /// as 25% (of the run's hosts).
    #[arg(long, value_name = "N", value_parser = batch_size)]
    pub batch_size: Option<String>,
    /// How long each of those batches is watched once back in service
    /// (0s: not at all).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub bake: Option<std::time::Duration>,
}

fn batch_size(text: &str) -> Result<String, String> {
    text.parse::<crate::config::BatchSize>()
        .map(|size| size.to_string())
}

fn steer_message(text: &str) -> Result<String, String> {
    let max = crate::host::steer::MAX_MESSAGE;
    if text.contains(char::is_control) {
        Err("the message must be one line of plain text".into())
    } else if text.chars().count() > max {
        Err(format!("the message is longer than {max} characters"))
    } else {
        Ok(text.to_string())
    }
}

/// Options about the deploy lock, shared by deploy and rollback.
#[derive(Debug, Clone, Args)]
pub struct LockWaitArgs {
    /// If another run holds the lock, wait up to this long for it (e.g. 10m).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub lock_wait: Option<std::time::Duration>,
    /// Take over a lock whose run died (its heartbeat stopped).
    #[arg(long)]
    pub break_stale_lock: bool,
    /// Shown to anyone who finds the lock taken (and, for a rollback that
    /// stops a running deploy, sent with the request).
    #[arg(long, short = 'm', value_name = "TEXT")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    /// Print the plan and stop; connects to nothing and changes nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// With --dry-run: show shipit's own scripts in full.
    #[arg(long, requires = "dry_run")]
    pub full: bool,
    /// Continue a deploy whose run was killed (see `shipit STAGE status`),
    /// under a run id and lock of its own; if it died rolling back, finish
    /// the rollback instead.
    #[arg(long, conflicts_with = "dry_run")]
    pub resume: bool,
    /// On Ctrl-C or SIGTERM, also return hosts already switched to the
    /// release they ran before.
    #[arg(long)]
    pub rollback_on_abort: bool,
    #[command(flatten)]
    pub lock: LockWaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// Roll back to this release instead of the one before current.
    #[arg(long, value_name = "RELEASE")]
    pub to: Option<String>,
    /// Print the plan and stop. Reads the hosts (to know what to roll back
    /// to) but changes nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// With --dry-run: show shipit's own scripts in full.
    #[arg(long, requires = "dry_run")]
    pub full: bool,
    #[command(flatten)]
    pub lock: LockWaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct LockArgs {
    /// Why deploys are held, shown to anyone who tries.
    #[arg(long, short = 'm', value_name = "TEXT")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct UnlockArgs {
    /// Also remove a lock held by a run that is still alive.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// One batch after another (rollout.rolling_batch_size), stopping after
    /// a batch in which a host failed. Default: all hosts at once.
    #[arg(long)]
    pub rolling: bool,
    /// Hold the deploy lock while the command runs (by default exec does
    /// not take it).
    #[arg(long)]
    pub lock: bool,
    /// Print where what would run; connects to nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// The command. Its words are joined with spaces into one line run by
    /// `sh -c` on each host, as ssh does: quote for your local shell what
    /// the remote shell should see, e.g. `-- 'tail -n 5 log/*.log'`.
    #[arg(
        value_name = "CMD",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// Print what would be removed; reads the hosts but changes nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[command(flatten)]
    pub lock: LockWaitArgs,
}

fn duration(text: &str) -> Result<std::time::Duration, String> {
    match crate::config::parse_duration(text) {
        Some(d) if d > crate::config::MAX_DURATION => Err(format!(
            "{text:?} is too long; wait at most {} days",
            crate::config::MAX_DURATION.as_secs() / 86_400
        )),
        Some(d) => Ok(d),
        None => Err(format!(
            "{text:?} is not a duration; write a number and a unit, such as 30s or 10m"
        )),
    }
}

/// The parsed command line.
pub enum Invocation {
    Init {
        global: Global,
    },
    Completions {
        shell: clap_complete::Shell,
    },
    Man,
    Stage {
        stage: String,
        global: Global,
        select: Select,
        command: StageCommand,
    },
}

/// Parses `args` (without the program name). Errors are clap's, with its
/// exit codes (2 for usage, 0 for --help/--version).
pub fn parse(args: Vec<OsString>) -> Result<Invocation, clap::Error> {
    let cli = Cli::try_parse_from(std::iter::once(OsString::from("shipit")).chain(args))?;
    match cli.command {
        TopCommand::Init => Ok(Invocation::Init { global: cli.global }),
        TopCommand::Completions { shell } => Ok(Invocation::Completions { shell }),
        TopCommand::Man => Ok(Invocation::Man),
        TopCommand::Stage(rest) => {
            let mut rest = rest.into_iter();
            let stage = rest
                .next()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            // Parsed by a command named `shipit STAGE`, so that usage lines
            // and `--help` of the stage and its commands say so.
            let parsed = stage_command(&stage)
                .try_get_matches_from(rest)
                .and_then(|m| <StageCli as clap::FromArgMatches>::from_arg_matches(&m))?;
            Ok(Invocation::Stage {
                stage,
                global: cli.global.merge(parsed.global),
                select: parsed.select,
                command: parsed.command,
            })
        }
    }
}

/// The whole command line as one clap tree, for completions and the man
/// page: the real parser splits `shipit [GLOBAL] STAGE COMMAND` in two (the
/// stage is an external subcommand, then `StageCli` parses the rest), which
/// generators cannot follow. Here `STAGE` is a positional and the stage
/// commands are subcommands next to `init`, `completions` and `man`. Only
/// for generation: never used to parse.
pub fn reference() -> clap::Command {
    use clap::CommandFactory;
    let stage = StageCli::command();
    let top = Cli::command();
    let own: Vec<clap::Id> = top.get_arguments().map(|a| a.get_id().clone()).collect();
    // --hosts/--roles: documented once, at the top, like the global options.
    let select: Vec<clap::Arg> = stage
        .get_arguments()
        .filter(|a| !own.contains(a.get_id()))
        .cloned()
        .collect();
    top.allow_external_subcommands(false)
        .subcommand_help_heading("Commands")
        .long_about(
            "shipit deploys web services to fleets of Linux hosts over SSH, with no agent on the \
             hosts. It reads deploy.toml (or -c FILE); STAGE is one of its [stages.NAME] tables, \
             such as production.\n\n\
             -c, -v and -q may be given anywhere. --hosts and --roles, given after the stage, \
             select hosts of the stage: a comma is a union within one flag, both flags together \
             are an intersection, and an unknown name or a selection matching no host is a usage \
             error (exit 2).",
        )
        .arg(
            clap::Arg::new("STAGE")
                .value_name("STAGE")
                .help("A stage of deploy.toml, such as production")
                // Completion cannot know the stages; hiding it keeps a
                // literal `STAGE` out of the candidates.
                .hide(true),
        )
        .args(select)
        .subcommands(stage.get_subcommands().cloned())
}

fn stage_command(stage: &str) -> clap::Command {
    use clap::CommandFactory;
    StageCli::command().bin_name(format!("shipit {stage}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn stage_first_with_options_anywhere() {
        let Ok(Invocation::Stage {
            stage,
            global,
            command,
            ..
        }) = parse(args("-c a.toml production deploy --dry-run -v --json"))
        else {
            panic!()
        };
        assert_eq!(stage, "production");
        assert_eq!(global.config, Some(PathBuf::from("a.toml")));
        assert!(global.verbose);
        assert!(global.json);
        assert!(matches!(
            command,
            StageCommand::Deploy(DeployArgs { dry_run: true, .. })
        ));

        let Ok(Invocation::Stage { command, .. }) =
            parse(args("staging rollback --to 20261122101500"))
        else {
            panic!()
        };
        assert!(matches!(
            command,
            StageCommand::Rollback(RollbackArgs { to: Some(_), .. })
        ));
    }

    #[test]
    fn host_filters() {
        let Ok(Invocation::Stage { select, .. }) = parse(args(
            "test --roles db deploy --hosts web1,web2 --dry-run --hosts web3",
        )) else {
            panic!()
        };
        assert_eq!(select.hosts, ["web1", "web2", "web3"]);
        assert_eq!(select.roles, ["db"]);

        // Like every option: given before and after the command, the later wins.
        let Ok(Invocation::Stage { select, .. }) =
            parse(args("test --hosts web1 status --hosts web2"))
        else {
            panic!()
        };
        assert_eq!(select.hosts, ["web2"]);
    }

    #[test]
    fn commands_without_a_stage() {
        assert!(matches!(parse(args("init")), Ok(Invocation::Init { .. })));
        assert!(matches!(
            parse(args("init -c x/ship.toml")),
            Ok(Invocation::Init {
                global: Global {
                    config: Some(_),
                    ..
                }
            })
        ));
        assert!(matches!(parse(args("man")), Ok(Invocation::Man)));
        assert!(matches!(
            parse(args("completions fish")),
            Ok(Invocation::Completions {
                shell: clap_complete::Shell::Fish
            })
        ));
        assert!(parse(args("completions tcsh")).is_err());
    }

    #[test]
    fn exec_and_cleanup() {
        let Ok(Invocation::Stage {
            select, command, ..
        }) = parse(args("test exec --hosts web1 --rolling -- ls -la"))
        else {
            panic!()
        };
        assert_eq!(select.hosts, ["web1"]);
        let StageCommand::Exec(exec) = command else {
            panic!()
        };
        assert!(exec.rolling && !exec.lock);
        assert_eq!(exec.command, ["ls", "-la"]);

        // Without `--`, and words that look like options belong to the command.
        let Ok(Invocation::Stage { command, .. }) = parse(args("test exec uptime -p --rolling"))
        else {
            panic!()
        };
        let StageCommand::Exec(exec) = command else {
            panic!()
        };
        assert!(!exec.rolling);
        assert_eq!(exec.command, ["uptime", "-p", "--rolling"]);
        assert!(parse(args("test exec")).is_err());

        assert!(matches!(
            parse(args("test cleanup -n")),
            Ok(Invocation::Stage {
                command: StageCommand::Cleanup(CleanupArgs { dry_run: true, .. }),
                ..
            })
        ));
    }

    #[test]
    fn the_reference_command_is_valid_and_complete() {
        let cmd = reference();
        cmd.clone().debug_assert();
        let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
        for name in [
            "init",
            "completions",
            "man",
            "deploy",
            "rollback",
            "releases",
            "status",
            "lock",
            "unlock",
            "check",
            "exec",
            "cleanup",
            "pause",
            "resume",
            "promote",
            "abort",
            "tune",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        for arg in ["hosts", "roles", "config", "verbose", "quiet"] {
            assert!(
                cmd.get_arguments().any(|a| a.get_id() == arg),
                "--{arg} missing"
            );
        }
    }

    #[test]
    fn steering_commands() {
        let Ok(Invocation::Stage { command, .. }) = parse(args("production pause -m dashboards"))
        else {
            panic!()
        };
        assert!(matches!(
            command,
            StageCommand::Pause(PauseArgs { message: Some(m) }) if m == "dashboards"
        ));
        assert!(matches!(
            parse(args("production promote --all")),
            Ok(Invocation::Stage {
                command: StageCommand::Promote(PromoteArgs { all: true }),
                ..
            })
        ));
        let Ok(Invocation::Stage {
            command: StageCommand::Tune(tune),
            ..
        }) = parse(args("production tune --batch-size 25% --bake 10s"))
        else {
            panic!()
        };
        assert_eq!(tune.batch_size.as_deref(), Some("25%"));
        assert_eq!(tune.bake, Some(std::time::Duration::from_secs(10)));
        // tune needs something to change; sizes are checked as in deploy.toml.
        assert_eq!(parse(args("production tune")).err().unwrap().exit_code(), 2);
        let err = parse(args("production tune --batch-size 0")).err().unwrap();
        assert!(err.to_string().contains("not a batch size"), "{err}");
        let err = parse(vec![
            "production".into(),
            "pause".into(),
            "-m".into(),
            "a\nb".into(),
        ])
        .err()
        .unwrap();
        assert!(err.to_string().contains("one line"), "{err}");
    }

    #[test]
    fn durations_too_long_for_a_clock_are_usage_errors() {
        let err = parse(args("production deploy --lock-wait 500000000000y"))
            .err()
            .expect("refused");
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string()
                .contains("\"500000000000y\" is too long; wait at most 365 days"),
            "{err}"
        );
        assert!(parse(args("production deploy --lock-wait 365d")).is_ok());
    }

    #[test]
    fn usage_errors() {
        assert!(parse(args("production")).is_err());
        assert!(parse(args("production deploy --bogus")).is_err());
        assert!(parse(args("production deploy --full")).is_err());
        let err = parse(args("production launch")).err().unwrap();
        assert_eq!(err.exit_code(), 2);
    }
}
