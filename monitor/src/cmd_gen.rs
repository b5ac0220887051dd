//! `twmon completions SHELL` and the hidden `twmon man`: shell completion
//! scripts and manual pages generated from twmon's own command line
//! definition ([`crate::cli::Cli`]), so they cannot drift from it. `cargo
//! xtask dist` runs these to fill the .deb.

use std::io::Write;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};

/// Print the completion script for `args.shell` on stdout.
pub fn completions(args: &CompletionsArgs) -> Result<i32> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "twmon", &mut out);
    write_stdout(&out)
}

/// Print twmon(1) on stdout, or with `--out-dir` write twmon.1 and one page
/// per visible subcommand (twmon-check.1 ...) into that directory.
pub fn man(args: &ManArgs) -> Result<i32> {
    match &args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
            Ok(0)
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            write_stdout(&out)
        }
    }
}

fn write_stdout(bytes: &[u8]) -> Result<i32> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(0),
        // `twmon man | head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_lists_the_subcommands() {
        let mut out = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut out)
            .unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH twmon 1"),
            "{page}"
        );
        for sub in ["check", "watch", "record", "completions"] {
            assert!(page.contains(sub), "man page lacks {sub}");
        }
        // Hidden: a tool for packagers, not for the reader of the page.
        assert!(!page.contains("twmon\\-man"), "{page}");
    }

    #[test]
    fn completion_scripts_know_the_subcommands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "twmon", &mut out);
            let script = String::from_utf8(out).unwrap();
            assert!(
                script.contains("check") && script.contains("reuseaddr"),
                "{shell}: {script}"
            );
        }
    }
}
