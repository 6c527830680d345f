//! The OEDACLI language (Oracle Exadata's oedacli; docs/oedacli.md): one line to one [`Command`].
//!
//! Pure: no files, no agents. Keywords, argument names and `MODE=`/`STEPNAME=` values are
//! case-insensitive; other values keep their case. `NAME=value` pairs come in any order and
//! values may be quoted (`NAME="my cluster.toml"`). A leading `oedacli>` prompt is ignored,
//! so that transcripts can be replayed; blank lines and `#` comments are [`Command::Empty`].
//! Every error is a [`ParseError`] that names the offending token and what was expected.
use std::fmt;

use vmove_model::Policy;
use vmove_plan::{Mode, Step};

use crate::request::MigrateCommand;

/// One command of the language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A blank line or a comment.
    Empty,
    /// `LOAD FILE NAME=f`.
    LoadFile {
        /// The file, as given (relative to the current directory).
        name: String,
    },
    /// `MIGRATE GUEST HOSTNAME=g MODE=m SRCHOST=s [TGTHOST=t] [WHERE STEPNAME=x]`.
    MigrateGuest(Migrate),
    /// `SAVE ACTION`.
    SaveAction,
    /// `MERGE ACTIONS`.
    MergeActions,
    /// `SAVE FILE NAME=f`.
    SaveFile {
        /// The file, as given (relative to the current directory).
        name: String,
    },
    /// `DEPLOY ACTIONS`.
    DeployActions,
    /// `LIST ACTIONS`.
    ListActions,
    /// `HELP`.
    Help,
    /// `EXIT` or `QUIT`.
    Exit,
}

/// A `MIGRATE GUEST` action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrate {
    /// `HOSTNAME=`: the guest.
    pub guest: String,
    /// `MODE=`.
    pub mode: Mode,
    /// `SRCHOST=`.
    pub source: String,
    /// `TGTHOST=`. `None` (a vmove extension to Oracle Exadata's oedacli, whole migrations
    /// only): the planner chooses it at MERGE ACTIONS, which then fixes it here.
    pub target: Option<String>,
    /// `WHERE STEPNAME=`: one step only.
    pub step: Option<Step>,
}

impl Migrate {
    /// Whether deploying it moves the guest: a whole migration, or its MIGRATE_GUEST step.
    pub fn moves_guest(&self) -> bool {
        matches!(self.step, None | Some(Step::MigrateGuest))
    }

    /// The target host: `TGTHOST=`, or the one MERGE ACTIONS chose.
    pub fn target_host(&self) -> Result<&str, TargetNotChosen> {
        self.target.as_deref().ok_or(TargetNotChosen)
    }

    /// The migration it asks for, with the policy's parameters: the same command as
    /// `vmove migrate GUEST --from SRCHOST --to TGTHOST --mode MODE [--step STEPNAME]`.
    pub fn command(&self, policy: &Policy) -> Result<MigrateCommand, TargetNotChosen> {
        Ok(MigrateCommand::new(policy, &self.guest, &self.source, self.target_host()?, self.mode, self.step))
    }
}

/// An action without TGTHOST= asked for its target before MERGE ACTIONS chose one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("TGTHOST not given and not chosen yet: expected MERGE ACTIONS first")]
pub struct TargetNotChosen;

impl Migrate {
}

impl fmt::Display for Migrate {
    /// The command as Oracle Exadata's oedacli writes it: `MIGRATE GUEST HOSTNAME=vm1 MODE=offline ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MIGRATE GUEST HOSTNAME={} MODE={} SRCHOST={}",
            quote(&self.guest),
            self.mode.wire_name(),
            quote(&self.source)
        )?;
        if let Some(t) = &self.target {
            write!(f, " TGTHOST={}", quote(t))?;
        }
        if let Some(s) = self.step {
            write!(f, " WHERE STEPNAME={}", s.name())?;
        }
        Ok(())
    }
}

/// A value as it must be written to parse back. A value with both kinds of quotes is
/// written as adjacent quoted runs (`"a"'"'"b'c"` for `a"b'c`): one word to the lexer.
pub fn quote(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        return v.to_string();
    }
    if !v.contains('"') {
        return format!("\"{v}\"");
    }
    if !v.contains('\'') {
        return format!("'{v}'");
    }
    let mut out = String::new();
    let mut rest = v;
    while let Some(c) = rest.chars().next() {
        // A run of `"` goes in '...', a run of anything else in "...".
        let (q, len) = if c == '"' {
            ('\'', rest.find(|x| x != '"').unwrap_or(rest.len()))
        } else {
            ('"', rest.find('"').unwrap_or(rest.len()))
        };
        out.push(q);
        out.push_str(&rest[..len]);
        out.push(q);
        rest = &rest[len..];
    }
    out
}

/// Why a line is not a command. Every variant names the token and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The first words are no command.
    #[error("unknown command {got:?}: expected {COMMANDS}")]
    UnknownCommand {
        /// The first word, or the first two of a two-word command.
        got: String,
    },
    /// A required argument is missing.
    #[error("{command} needs {key}=")]
    Missing {
        /// The command (`MIGRATE GUEST`, `WHERE`).
        command: &'static str,
        /// The argument's name.
        key: &'static str,
    },
    /// An argument's value is not acceptable.
    #[error("{token}: expected {expected}")]
    BadValue {
        /// The argument as given (`MODE=fast`).
        token: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// A word that the command does not take.
    #[error("{command}: unexpected {token}: expected {expected}")]
    Unexpected {
        /// The command.
        command: &'static str,
        /// The word as given.
        token: String,
        /// What the command takes there.
        expected: &'static str,
    },
    /// An argument given twice.
    #[error("{command}: {token}: {key}= given twice")]
    Duplicate {
        /// The command.
        command: &'static str,
        /// The argument's name.
        key: &'static str,
        /// The second occurrence as given.
        token: String,
    },
    /// A single step without `TGTHOST=`: the planner chooses a target only for a whole
    /// migration.
    #[error("{token}: a single step needs TGTHOST= (the planner chooses the target only for a whole migration)")]
    StepNeedsTarget {
        /// The step as given (`STEPNAME=STOP_GUEST`).
        token: String,
    },
    /// A quote that does not end.
    #[error("{token}: unterminated quote")]
    UnterminatedQuote {
        /// The word from its start to the end of the line.
        token: String,
    },
}

/// Every command, for [`ParseError::UnknownCommand`].
pub const COMMANDS: &str =
    "LOAD FILE, MIGRATE GUEST, SAVE ACTION, MERGE ACTIONS, SAVE FILE, DEPLOY ACTIONS, LIST ACTIONS, HELP or EXIT";
/// `MODE=` values.
pub const MODES: &str = "OFFLINE, OFFLINEFORCE or LIVE";
/// `STEPNAME=` values.
pub const STEPS: &str = "one of STOP_GUEST, CREATE_BRIDGES, DETACH_INTERFACES, DETACH_VOLUMES, ATTACH_VOLUMES, \
                         MIGRATE_GUEST, ATTACH_INTERFACES, STARTUP_GUEST, PRECHECK_LIVEMIGRATION";
/// The steps that `MODE=OFFLINE` and `MODE=OFFLINEFORCE` take.
pub const OFFLINE_STEPS: &str = "a step of the offline plan: STOP_GUEST, CREATE_BRIDGES, DETACH_INTERFACES, \
     DETACH_VOLUMES, ATTACH_VOLUMES, MIGRATE_GUEST, ATTACH_INTERFACES or STARTUP_GUEST \
     (PRECHECK_LIVEMIGRATION needs MODE=LIVE)";
/// The steps that `MODE=LIVE` takes.
pub const LIVE_STEPS: &str = "a step of the live plan: ATTACH_VOLUMES, CREATE_BRIDGES, MIGRATE_GUEST, \
     DETACH_VOLUMES, or PRECHECK_LIVEMIGRATION";
/// What `MIGRATE GUEST` takes.
pub const MIGRATE_ARGS: &str = "HOSTNAME=, MODE=, SRCHOST=, TGTHOST= or WHERE STEPNAME=";
/// What a command without arguments takes.
pub const NOTHING: &str = "nothing more";

/// One word of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    /// As typed, quotes included.
    raw: String,
    /// Quotes removed.
    text: String,
}

impl Word {
    /// `(KEY upper-cased, value)` when the word is `KEY=value`.
    fn pair(&self) -> Option<(String, &str)> {
        let (k, v) = self.text.split_once('=')?;
        Some((k.to_ascii_uppercase(), v))
    }

    fn is(&self, keyword: &str) -> bool {
        self.text.eq_ignore_ascii_case(keyword)
    }
}

/// Splits a line into words at unquoted whitespace.
fn words(line: &str) -> Result<Vec<Word>, ParseError> {
    let mut out = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut text = String::new();
        let mut end = line.len();
        while let Some(&(i, c)) = chars.peek() {
            if c.is_whitespace() {
                end = i;
                break;
            }
            chars.next();
            if c == '"' || c == '\'' {
                let mut closed = false;
                for (_, q) in chars.by_ref() {
                    if q == c {
                        closed = true;
                        break;
                    }
                    text.push(q);
                }
                if !closed {
                    return Err(ParseError::UnterminatedQuote { token: line[start..].trim_end().to_string() });
                }
            } else {
                text.push(c);
            }
        }
        out.push(Word { raw: line[start..end].to_string(), text });
    }
    Ok(out)
}

/// Removes a leading `oedacli>` prompt (any case), so that transcripts replay.
pub fn strip_prompt(line: &str) -> &str {
    let t = line.trim();
    match t.get(..8) {
        Some(p) if p.eq_ignore_ascii_case("oedacli>") => t[8..].trim_start(),
        _ => t,
    }
}

/// Parses one line.
pub fn parse(line: &str) -> Result<Command, ParseError> {
    let line = strip_prompt(line);
    if line.is_empty() || line.starts_with('#') {
        return Ok(Command::Empty);
    }
    let w = words(line)?;
    let Some(first) = w.first() else { return Ok(Command::Empty) };
    let verb = first.text.to_ascii_uppercase();
    let second = w.get(1).map(|x| x.text.to_ascii_uppercase());
    let unknown = || {
        let two_word = matches!(verb.as_str(), "LOAD" | "MIGRATE" | "SAVE" | "MERGE" | "DEPLOY" | "LIST");
        let got = match (two_word, w.get(1)) {
            (true, Some(s)) => format!("{} {}", first.raw, s.raw),
            _ => first.raw.clone(),
        };
        ParseError::UnknownCommand { got }
    };
    let (name, rest): (&'static str, &[Word]) = match (verb.as_str(), second.as_deref()) {
        ("LOAD", Some("FILE")) => ("LOAD FILE", &w[2..]),
        ("MIGRATE", Some("GUEST")) => ("MIGRATE GUEST", &w[2..]),
        ("SAVE", Some("ACTION")) => ("SAVE ACTION", &w[2..]),
        ("SAVE", Some("FILE")) => ("SAVE FILE", &w[2..]),
        ("MERGE", Some("ACTIONS")) => ("MERGE ACTIONS", &w[2..]),
        ("DEPLOY", Some("ACTIONS")) => ("DEPLOY ACTIONS", &w[2..]),
        ("LIST", Some("ACTIONS")) => ("LIST ACTIONS", &w[2..]),
        ("HELP", _) => ("HELP", &w[1..]),
        ("EXIT", _) => ("EXIT", &w[1..]),
        ("QUIT", _) => ("QUIT", &w[1..]),
        _ => return Err(unknown()),
    };
    let no_args = |cmd: Command| match rest.first() {
        Some(x) => Err(ParseError::Unexpected { command: name, token: x.raw.clone(), expected: NOTHING }),
        None => Ok(cmd),
    };
    match name {
        "LOAD FILE" => Ok(Command::LoadFile { name: file_arg(name, rest)? }),
        "SAVE FILE" => Ok(Command::SaveFile { name: file_arg(name, rest)? }),
        "MIGRATE GUEST" => migrate(rest).map(Command::MigrateGuest),
        "SAVE ACTION" => no_args(Command::SaveAction),
        "MERGE ACTIONS" => no_args(Command::MergeActions),
        "DEPLOY ACTIONS" => no_args(Command::DeployActions),
        "LIST ACTIONS" => no_args(Command::ListActions),
        "HELP" => no_args(Command::Help),
        _ => no_args(Command::Exit),
    }
}

/// `NAME=f`, the only argument of `LOAD FILE` and `SAVE FILE`.
fn file_arg(command: &'static str, rest: &[Word]) -> Result<String, ParseError> {
    let mut name = None;
    for x in rest {
        match x.pair() {
            Some((k, v)) if k == "NAME" => {
                if name.is_some() {
                    return Err(ParseError::Duplicate { command, key: "NAME", token: x.raw.clone() });
                }
                if v.is_empty() {
                    return Err(ParseError::BadValue { token: x.raw.clone(), expected: "a file name" });
                }
                name = Some(v.to_string());
            }
            _ => return Err(ParseError::Unexpected { command, token: x.raw.clone(), expected: "NAME=" }),
        }
    }
    name.ok_or(ParseError::Missing { command, key: "NAME" })
}

fn migrate(rest: &[Word]) -> Result<Migrate, ParseError> {
    const CMD: &str = "MIGRATE GUEST";
    // Each argument's value and the word that gave it (for messages).
    type Arg = Option<(String, String)>;
    let (mut guest, mut source, mut target): (Arg, Arg, Arg) = (None, None, None);
    let mut mode: Option<Mode> = None;
    let mut step: Option<(Step, String)> = None;
    let mut i = 0;
    while i < rest.len() {
        let x = &rest[i];
        i += 1;
        if x.is("WHERE") {
            let Some(y) = rest.get(i) else { return Err(ParseError::Missing { command: "WHERE", key: "STEPNAME" }) };
            i += 1;
            match y.pair() {
                Some((k, v)) if k == "STEPNAME" => {
                    if step.is_some() {
                        return Err(ParseError::Duplicate { command: CMD, key: "STEPNAME", token: y.raw.clone() });
                    }
                    let s = Step::parse(v).map_err(|_| ParseError::BadValue { token: y.raw.clone(), expected: STEPS })?;
                    step = Some((s, y.raw.clone()));
                }
                _ => return Err(ParseError::Unexpected { command: "WHERE", token: y.raw.clone(), expected: "STEPNAME=" }),
            }
            continue;
        }
        let unexpected = || ParseError::Unexpected { command: CMD, token: x.raw.clone(), expected: MIGRATE_ARGS };
        let Some((k, v)) = x.pair() else { return Err(unexpected()) };
        let duplicate = |key| ParseError::Duplicate { command: CMD, key, token: x.raw.clone() };
        if k == "MODE" {
            if mode.is_some() {
                return Err(duplicate("MODE"));
            }
            mode = Some(Mode::parse(v).map_err(|_| ParseError::BadValue { token: x.raw.clone(), expected: MODES })?);
            continue;
        }
        let (slot, key, expected) = match k.as_str() {
            "HOSTNAME" => (&mut guest, "HOSTNAME", "a guest name"),
            "SRCHOST" => (&mut source, "SRCHOST", "a host name"),
            "TGTHOST" => (&mut target, "TGTHOST", "a host name"),
            _ => return Err(unexpected()),
        };
        if slot.is_some() {
            return Err(duplicate(key));
        }
        if v.is_empty() {
            return Err(ParseError::BadValue { token: x.raw.clone(), expected });
        }
        *slot = Some((v.to_string(), x.raw.clone()));
    }
    let missing = |key| ParseError::Missing { command: CMD, key };
    let (guest, _) = guest.ok_or(missing("HOSTNAME"))?;
    let mode = mode.ok_or(missing("MODE"))?;
    let (source, _) = source.ok_or(missing("SRCHOST"))?;
    if let Some((s, token)) = &step {
        if !s.valid_for(mode) {
            let expected = if mode.is_live() { LIVE_STEPS } else { OFFLINE_STEPS };
            return Err(ParseError::BadValue { token: token.clone(), expected });
        }
        if target.is_none() {
            return Err(ParseError::StepNeedsTarget { token: token.clone() });
        }
    }
    if let Some((t, token)) = &target {
        if *t == source {
            return Err(ParseError::BadValue { token: token.clone(), expected: "a host other than SRCHOST" });
        }
    }
    let target = target.map(|(t, _)| t);
    Ok(Migrate { guest, mode, source, target, step: step.map(|(s, _)| s) })
}

#[cfg(test)]
mod tests;
