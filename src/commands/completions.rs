//! `shipit completions SHELL`: a completion script generated from the clap
//! definitions (through `cli::reference`, which shows the stage commands as
//! subcommands), printed to stdout.

use clap_complete::Shell;

use crate::error::Error;
use crate::exit::Exit;

pub fn run(shell: Shell) -> Result<Exit, Error> {
    use std::io::Write as _;
    let script = render(shell);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .map_err(|e| Error::Unchanged(format!("cannot write the completion script: {e}")))?;
    Ok(Exit::Success)
}

pub fn render(shell: Shell) -> Vec<u8> {
    let mut cmd = crate::cli::reference();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "shipit", &mut script);
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_with_the_stage_commands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(render(shell)).unwrap();
            for word in [
                "deploy",
                "rollback",
                "cleanup",
                "exec",
                "init",
                "--hosts",
                "--dry-run",
            ] {
                let word = if shell == Shell::Fish {
                    word.trim_start_matches('-')
                } else {
                    word
                };
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
    }
}
