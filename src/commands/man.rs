//! `shipit man`: the manual page, generated from the clap definitions and
//! printed as roff (`shipit man | man -l -`). One page: the global options
//! and host selection, then every command with its own options.

use std::io::Write as _;

use clap_mangen::Man;
use roff::{Roff, bold, roman};

use crate::error::Error;
use crate::exit::Exit;

pub fn run() -> Result<Exit, Error> {
    let cannot = |e: std::io::Error| Error::Unchanged(format!("cannot write the man page: {e}"));
    let page = render().map_err(cannot)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&page)
        .and_then(|()| out.flush())
        .map_err(cannot)?;
    Ok(Exit::Success)
}

pub fn render() -> std::io::Result<Vec<u8>> {
    use clap::CommandFactory;
    let reference = crate::cli::reference();
    let stage_commands: Vec<String> = crate::cli::StageCli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    let man = Man::new(reference.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;

    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in reference.get_subcommands() {
        let name = sub.get_name();
        let title = if stage_commands.iter().any(|s| s == name) {
            format!("shipit STAGE {name}")
        } else {
            format!("shipit {name}")
        };
        roff.control("SS", [title.as_str()]);
        let usage = sub
            .clone()
            .bin_name(&title)
            .disable_help_flag(true)
            .render_usage()
            .to_string();
        roff.text([bold(usage.trim_start_matches("Usage: ").trim())]);
        roff.control("PP", []);
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            roff.text([roman(about.to_string())]);
        }
        roff.to_writer(&mut out)?;
        roff = Roff::new();
        // The command's own options, without the section heading.
        let mut options = Vec::new();
        Man::new(sub.clone().disable_help_flag(true)).render_options_section(&mut options)?;
        let options = String::from_utf8_lossy(&options);
        for line in options.lines().filter(|l| !l.starts_with(".SH")) {
            writeln!(out, "{line}")?;
        }
    }

    roff.control("SH", ["FILES"]);
    roff.text([
        bold("deploy.toml"),
        roman(
            " in the current directory, or the file given with -c or SHIPIT_CONFIG. \
             `shipit init` writes a starter; deploy.toml.example and docs/configuration.md \
             describe every key.",
        ),
    ]);
    roff.control("SH", ["NOTES"]);
    if let Some(after) = reference.get_after_help() {
        for line in after.to_string().lines() {
            roff.text([roman(line)]);
            roff.control("PP", []);
        }
    }
    roff.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_covers_every_command_and_option() {
        let page = String::from_utf8(super::render().unwrap()).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH shipit 1"),
            "{page}"
        );
        for text in [
            ".TH shipit 1",
            "shipit STAGE deploy",
            "shipit STAGE exec",
            "shipit STAGE cleanup",
            "shipit STAGE check",
            "shipit init",
            "shipit completions",
            "\\-\\-hosts",
            "\\-\\-roles",
            "\\-\\-rolling",
            "\\-\\-dry\\-run",
            "Exit codes",
        ] {
            assert!(page.contains(text), "no {text:?} in:\n{page}");
        }
    }
}
