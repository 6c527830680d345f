//! `vmove completions SHELL` (clap_complete) and `vmove manpage [--out DIR]` (clap_mangen):
//! both made from the same command definitions as the parser, so they never drift from it.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::args::{Cli, Shell};
use crate::ctx::Ctx;

/// The completion script for `shell`.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    let gen = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(gen, &mut cmd, "vmove", &mut buf);
    buf
}

/// `vmove completions SHELL`: the script on standard output (with `--json`:
/// `{"shell": .., "script": ..}`).
pub fn completions(ctx: &Ctx, shell: Shell) -> Result<()> {
    let script = completion_script(shell);
    if ctx.json {
        let shell = format!("{shell:?}").to_lowercase();
        crate::out::json(&serde_json::json!({ "shell": shell, "script": String::from_utf8_lossy(&script) }));
        return Ok(());
    }
    std::io::stdout().write_all(&script).context("write the completion script")
}

/// Every manual page: (file name, roff text), `vmove.1` first, then one page per command
/// and subcommand (`vmove-host-drain.1`), hidden commands left out.
pub fn pages() -> Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, "vmove", "vmove", &mut out)?;
    Ok(out)
}

fn walk(cmd: &clap::Command, name: &str, bin: &str, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    let page = cmd.clone().name(name.to_string()).bin_name(bin.to_string()).version(env!("CARGO_PKG_VERSION"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf).with_context(|| format!("render the manual page of {name}"))?;
    out.push((format!("{name}.1"), buf));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        walk(sub, &format!("{name}-{}", sub.get_name()), &format!("{bin} {}", sub.get_name()), out)?;
    }
    Ok(())
}

/// `vmove manpage [--out DIR]`.
pub fn manpages(ctx: &Ctx, dir: Option<&Path>) -> Result<()> {
    let pages = pages()?;
    let Some(dir) = dir else {
        let (_, top) = &pages[0];
        if ctx.json {
            crate::out::json(&serde_json::json!({ "page": "vmove.1", "roff": String::from_utf8_lossy(top) }));
            return Ok(());
        }
        return std::io::stdout().write_all(top).context("write the manual page");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("make {}", dir.display()))?;
    let mut written: Vec<PathBuf> = Vec::new();
    for (file, text) in &pages {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        written.push(path);
    }
    if ctx.json {
        crate::out::json(&serde_json::json!({ "dir": dir, "pages": pages.iter().map(|p| &p.0).collect::<Vec<_>>() }));
    } else {
        println!("{} manual pages written to {} (man -l {}/vmove.1)", written.len(), dir.display(), dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_the_commands_for_every_shell() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let s = String::from_utf8(completion_script(shell)).unwrap();
            for word in ["migrate", "drain", "evacuate", "oedacli", "max-downtime"] {
                assert!(s.contains(word), "{shell:?} completion lacks {word}");
            }
        }
        let bash = String::from_utf8(completion_script(Shell::Bash)).unwrap();
        assert!(bash.contains("complete -F _vmove"), "bash completion registers no function");
        let fish = String::from_utf8(completion_script(Shell::Fish)).unwrap();
        assert!(fish.contains("complete -c vmove"), "fish completion names no command");
        let zsh = String::from_utf8(completion_script(Shell::Zsh)).unwrap();
        assert!(zsh.starts_with("#compdef vmove"), "zsh completion lacks #compdef");
    }

    #[test]
    fn one_manual_page_per_visible_command() {
        let pages = pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(names[0], "vmove.1");
        assert!(String::from_utf8_lossy(&pages.iter().find(|p| p.0 == "vmove-cluster-wait-dead.1").unwrap().1).contains("vmove cluster wait\\-dead"));
        for want in ["vmove-migrate.1", "vmove-host-drain.1", "vmove-job-watch.1", "vmove-completions.1"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("resume")), "hidden test hooks get no page: {names:?}");
        let migrate = String::from_utf8(pages.iter().find(|p| p.0 == "vmove-migrate.1").unwrap().1.clone()).unwrap();
        assert!(migrate.starts_with(".ie"), "not roff: {}", &migrate[..40.min(migrate.len())]);
        assert!(migrate.contains(".TH vmove-migrate 1"), "{}", &migrate[..200.min(migrate.len())]);
        assert!(migrate.contains(env!("CARGO_PKG_VERSION")), "the page carries the version");
        assert!(migrate.contains("max\\-downtime"), "the options are documented");
    }
}
