//! The driver: an interactive `oedacli> ` prompt with line editing and history, or a
//! script read from a file or from standard input.
//!
//! Scripts echo each command after `oedacli> `, so that a run reads like an Oracle Exadata oedacli session's
//! transcripts; the first error stops the script (non-zero exit, one line naming the
//! script's line). Interactively an error is printed and the prompt comes back. With
//! `--json` nothing is echoed and every command gives one JSON line:
//! `{"command": "...", "ok": true, ...}` or `{"command": "...", "ok": false, "error": "..."}`.
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use serde_json::{Map, Value};
use tokio::io::AsyncBufReadExt;

use super::parse::{parse, strip_prompt, Command, ParseError};
use super::session::Session;
use crate::ctx::Ctx;
use crate::out::one_line;

/// An error that has already been reported as a JSON line (`--json` scripts): `main`
/// prints it on standard error only.
#[derive(Debug)]
pub struct Reported(pub String);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Reported {}

/// `vmove oedacli [SCRIPT]`: SCRIPT (`-` for standard input); without it, the prompt when
/// standard input is a terminal, else a script from standard input.
pub async fn run(ctx: &Ctx, script: Option<PathBuf>) -> Result<()> {
    let mut session = Session::new(ctx.json);
    match script {
        Some(p) if p.as_os_str() != "-" => {
            let text = std::fs::read_to_string(&p).map_err(|e| anyhow!("{}: {e}", p.display()))?;
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            scripted(&mut session, ctx.json, Source::Lines(lines.into_iter())).await
        }
        None if std::io::stdin().is_terminal() => interactive(&mut session, ctx.json).await,
        _ => {
            let stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            scripted(&mut session, ctx.json, Source::Stdin(stdin)).await
        }
    }
}

enum Source {
    Lines(std::vec::IntoIter<String>),
    Stdin(tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>),
}

impl Source {
    async fn next(&mut self) -> Result<Option<String>> {
        match self {
            Source::Lines(l) => Ok(l.next()),
            Source::Stdin(l) => l.next_line().await.map_err(|e| anyhow!("read standard input: {e}")),
        }
    }
}

/// One JSON line for a command's result.
fn json_line(line: &str, result: std::result::Result<Value, &str>) -> String {
    let mut m = Map::new();
    m.insert("command".into(), Value::from(strip_prompt(line)));
    match result {
        Ok(v) => {
            m.insert("ok".into(), Value::Bool(true));
            if let Value::Object(o) = v {
                m.extend(o);
            }
        }
        Err(e) => {
            m.insert("ok".into(), Value::Bool(false));
            m.insert("error".into(), Value::from(e));
        }
    }
    Value::Object(m).to_string()
}

/// Runs one parsed line and prints its JSON result (`--json`); `Ok(true)` when it ends the
/// session (EXIT, QUIT).
async fn exec_line(s: &mut Session, json: bool, line: &str, parsed: Result<Command, ParseError>) -> Result<bool> {
    let o = s.exec(parsed?).await?;
    if json {
        println!("{}", json_line(line, Ok(o.json)));
    }
    Ok(o.exit)
}

async fn scripted(s: &mut Session, json: bool, mut src: Source) -> Result<()> {
    let mut n = 0;
    while let Some(line) = src.next().await? {
        n += 1;
        let parsed = parse(&line);
        if parsed == Ok(Command::Empty) {
            continue;
        }
        if !json {
            println!("oedacli> {}", strip_prompt(&line));
        }
        match exec_line(s, json, &line, parsed).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                let msg = format!("line {n}: {}", one_line(e));
                if json {
                    println!("{}", json_line(&line, Err(&msg)));
                    return Err(Reported(msg).into());
                }
                return Err(anyhow!(msg));
            }
        }
    }
    Ok(())
}

async fn interactive(s: &mut Session, json: bool) -> Result<()> {
    use rustyline::error::ReadlineError;
    let mut rl = rustyline::DefaultEditor::new().map_err(|e| anyhow!("cannot start the line editor: {e}"))?;
    if !json {
        println!("vmove oedacli: HELP lists the commands, EXIT leaves.");
    }
    loop {
        let line = match tokio::task::block_in_place(|| rl.readline("oedacli> ")) {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(anyhow!("read a command: {e}")),
        };
        let parsed = parse(&line);
        if parsed == Ok(Command::Empty) {
            continue;
        }
        let _ = rl.add_history_entry(line.trim());
        match exec_line(s, json, &line, parsed).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) if json => println!("{}", json_line(&line, Err(&one_line(e)))),
            Err(e) => eprintln!("error: {}", one_line(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_the_command_and_the_result() {
        let ok: Value =
            serde_json::from_str(&json_line("oedacli> SAVE FILE NAME=x.toml", Ok(serde_json::json!({ "file": "/x.toml" })))).unwrap();
        assert_eq!(ok, serde_json::json!({ "command": "SAVE FILE NAME=x.toml", "ok": true, "file": "/x.toml" }));
        let e = json_line("MERGE ACTIONS", Err("line 4: MERGE ACTIONS: no saved actions"));
        assert!(!e.contains('\n'));
        let e: Value = serde_json::from_str(&e).unwrap();
        assert_eq!(e, serde_json::json!({ "command": "MERGE ACTIONS", "ok": false, "error": "line 4: MERGE ACTIONS: no saved actions" }));
    }
}
