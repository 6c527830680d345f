//! Every command and every error of the language, with exact values.
use super::*;

fn mig(guest: &str, mode: Mode, source: &str, target: &str, step: Option<Step>) -> Command {
    Command::MigrateGuest(Migrate { guest: guest.into(), mode, source: source.into(), target: Some(target.into()), step })
}

fn err(line: &str) -> ParseError {
    parse(line).expect_err(line)
}

#[test]
fn the_exadata_examples_parse() {
    // Example 4-29
    assert_eq!(parse("LOAD FILE NAME=exa01.xml"), Ok(Command::LoadFile { name: "exa01.xml".into() }));
    assert_eq!(
        parse("MIGRATE GUEST HOSTNAME=exa01vm01.example.com MODE=offline SRCHOST=exa01adm02.example.com TGTHOST=exa01adm06.example.com"),
        Ok(mig("exa01vm01.example.com", Mode::Offline, "exa01adm02.example.com", "exa01adm06.example.com", None))
    );
    assert_eq!(parse("SAVE ACTION"), Ok(Command::SaveAction));
    assert_eq!(parse("MERGE ACTIONS"), Ok(Command::MergeActions));
    assert_eq!(parse("SAVE FILE NAME=exa01.migration-merged.xml"), Ok(Command::SaveFile { name: "exa01.migration-merged.xml".into() }));
    assert_eq!(parse("DEPLOY ACTIONS"), Ok(Command::DeployActions));
    // Example 4-30
    assert_eq!(
        parse("MIGRATE GUEST HOSTNAME=exa01vm01 MODE=live SRCHOST=exa01adm04 TGTHOST=exa01adm06 WHERE STEPNAME=PRECHECK_LIVEMIGRATION"),
        Ok(mig("exa01vm01", Mode::Live, "exa01adm04", "exa01adm06", Some(Step::PrecheckLiveMigration)))
    );
    // Example 4-31
    assert_eq!(
        parse("MIGRATE GUEST HOSTNAME=exa01vm01 MODE=live SRCHOST=exa01adm04 TGTHOST=exa01adm06"),
        Ok(mig("exa01vm01", Mode::Live, "exa01adm04", "exa01adm06", None))
    );
}

#[test]
fn the_other_commands_parse() {
    assert_eq!(parse("LIST ACTIONS"), Ok(Command::ListActions));
    assert_eq!(parse("HELP"), Ok(Command::Help));
    assert_eq!(parse("EXIT"), Ok(Command::Exit));
    assert_eq!(parse("QUIT"), Ok(Command::Exit));
    assert_eq!(parse(""), Ok(Command::Empty));
    assert_eq!(parse("   \t "), Ok(Command::Empty));
    assert_eq!(parse("# the Exadata guide's example 4-29"), Ok(Command::Empty));
    assert_eq!(parse("oedacli>"), Ok(Command::Empty));
}

#[test]
fn keywords_names_and_modes_are_case_insensitive_values_keep_their_case() {
    assert_eq!(parse("load file name=Lab.toml"), Ok(Command::LoadFile { name: "Lab.toml".into() }));
    assert_eq!(parse("Save Action"), Ok(Command::SaveAction));
    assert_eq!(parse("merge actions"), Ok(Command::MergeActions));
    assert_eq!(parse("deploy Actions"), Ok(Command::DeployActions));
    assert_eq!(parse("list actions"), Ok(Command::ListActions));
    assert_eq!(parse("help"), Ok(Command::Help));
    assert_eq!(parse("exit"), Ok(Command::Exit));
    assert_eq!(parse("quit"), Ok(Command::Exit));
    assert_eq!(parse("save file Name=Out.toml"), Ok(Command::SaveFile { name: "Out.toml".into() }));
    for (m, mode) in [
        ("offline", Mode::Offline),
        ("OFFLINE", Mode::Offline),
        ("offlineforce", Mode::OfflineForce),
        ("OfflineForce", Mode::OfflineForce),
        ("offline-force", Mode::OfflineForce),
        ("LIVE", Mode::Live),
        ("Live", Mode::Live),
    ] {
        assert_eq!(
            parse(&format!("migrate guest hostname=VM1 mode={m} srchost=Host1 tgthost=host2")),
            Ok(mig("VM1", mode, "Host1", "host2", None)),
            "{m}"
        );
    }
    assert_eq!(
        parse("MIGRATE GUEST HOSTNAME=vm1 MODE=offline SRCHOST=host1 TGTHOST=host2 where stepname=stop-guest"),
        Ok(mig("vm1", Mode::Offline, "host1", "host2", Some(Step::StopGuest)))
    );
}

#[test]
fn pairs_come_in_any_order_and_values_may_be_quoted() {
    let want = mig("vm 1", Mode::Live, "host1", "host2", Some(Step::MigrateGuest));
    assert_eq!(parse(r#"MIGRATE GUEST TGTHOST=host2 WHERE STEPNAME=MIGRATE_GUEST MODE='live' SRCHOST="host1" HOSTNAME="vm 1""#), Ok(want));
    assert_eq!(parse(r#"LOAD FILE NAME="my lab/cluster.toml""#), Ok(Command::LoadFile { name: "my lab/cluster.toml".into() }));
    assert_eq!(parse("SAVE FILE NAME='it''s'"), Ok(Command::SaveFile { name: "its".into() }));
    assert_eq!(parse("  SAVE   FILE\tNAME=a.toml  "), Ok(Command::SaveFile { name: "a.toml".into() }));
    // A value may contain '='.
    assert_eq!(parse("LOAD FILE NAME=a=b.toml"), Ok(Command::LoadFile { name: "a=b.toml".into() }));
}

#[test]
fn a_transcript_line_replays() {
    assert_eq!(parse("oedacli> LOAD FILE NAME=exa01.xml"), Ok(Command::LoadFile { name: "exa01.xml".into() }));
    assert_eq!(parse("OEDACLI>SAVE ACTION"), Ok(Command::SaveAction));
    assert_eq!(strip_prompt("  oedacli> MERGE ACTIONS "), "MERGE ACTIONS");
    assert_eq!(strip_prompt("MERGE ACTIONS"), "MERGE ACTIONS");
}

#[test]
fn display_writes_the_command_back() {
    let Ok(Command::MigrateGuest(m)) = parse("migrate guest hostname=vm1 mode=OFFLINEFORCE srchost=host1 tgthost=host2 where stepname=stop-guest") else {
        panic!()
    };
    assert_eq!(m.to_string(), "MIGRATE GUEST HOSTNAME=vm1 MODE=offlineforce SRCHOST=host1 TGTHOST=host2 WHERE STEPNAME=STOP_GUEST");
    assert_eq!(parse(&m.to_string()), Ok(Command::MigrateGuest(m)));
    let quoted = Migrate { guest: "vm 1".into(), mode: Mode::Live, source: "a".into(), target: Some("b\"c".into()), step: None };
    assert_eq!(quoted.to_string(), r#"MIGRATE GUEST HOSTNAME="vm 1" MODE=live SRCHOST=a TGTHOST='b"c'"#);
    assert_eq!(parse(&quoted.to_string()), Ok(Command::MigrateGuest(quoted)));
}

#[test]
fn whole_migrations_and_migrate_guest_move_the_guest() {
    let m = |step| Migrate { guest: "g".into(), mode: Mode::Offline, source: "a".into(), target: Some("b".into()), step };
    assert!(m(None).moves_guest());
    assert!(m(Some(Step::MigrateGuest)).moves_guest());
    assert!(!m(Some(Step::StopGuest)).moves_guest());
    assert!(!Migrate { mode: Mode::Live, ..m(Some(Step::PrecheckLiveMigration)) }.moves_guest());
}

#[test]
fn unknown_commands() {
    assert_eq!(err("MIGRATE GEST HOSTNAME=vm1"), ParseError::UnknownCommand { got: "MIGRATE GEST".into() });
    assert_eq!(err("LAOD FILE NAME=x"), ParseError::UnknownCommand { got: "LAOD".into() });
    assert_eq!(err("SAVE"), ParseError::UnknownCommand { got: "SAVE".into() });
    assert_eq!(err("save actions"), ParseError::UnknownCommand { got: "save actions".into() });
    assert_eq!(err("MERGE ACTION"), ParseError::UnknownCommand { got: "MERGE ACTION".into() });
    assert_eq!(err("DEPLOY"), ParseError::UnknownCommand { got: "DEPLOY".into() });
    assert_eq!(err("LIST GUESTS"), ParseError::UnknownCommand { got: "LIST GUESTS".into() });
    assert_eq!(err("LOAD XML NAME=x"), ParseError::UnknownCommand { got: "LOAD XML".into() });
    assert_eq!(err("NAME=x"), ParseError::UnknownCommand { got: "NAME=x".into() });
    assert_eq!(
        err("MIGRATE GEST").to_string(),
        "unknown command \"MIGRATE GEST\": expected LOAD FILE, MIGRATE GUEST, SAVE ACTION, MERGE ACTIONS, SAVE FILE, \
         DEPLOY ACTIONS, LIST ACTIONS, HELP or EXIT"
    );
}

#[test]
fn commands_without_arguments_take_none() {
    for (line, command, token) in [
        ("SAVE ACTION now", "SAVE ACTION", "now"),
        ("MERGE ACTIONS ALL", "MERGE ACTIONS", "ALL"),
        ("DEPLOY ACTIONS ID=3", "DEPLOY ACTIONS", "ID=3"),
        ("LIST ACTIONS x", "LIST ACTIONS", "x"),
        ("HELP MIGRATE", "HELP", "MIGRATE"),
        ("EXIT 0", "EXIT", "0"),
        ("QUIT now", "QUIT", "now"),
    ] {
        assert_eq!(err(line), ParseError::Unexpected { command, token: token.into(), expected: NOTHING }, "{line}");
    }
    assert_eq!(err("SAVE ACTION now").to_string(), "SAVE ACTION: unexpected now: expected nothing more");
}

#[test]
fn file_commands_need_one_name() {
    assert_eq!(err("LOAD FILE"), ParseError::Missing { command: "LOAD FILE", key: "NAME" });
    assert_eq!(err("SAVE FILE"), ParseError::Missing { command: "SAVE FILE", key: "NAME" });
    assert_eq!(err("SAVE FILE").to_string(), "SAVE FILE needs NAME=");
    assert_eq!(err("LOAD FILE NAME="), ParseError::BadValue { token: "NAME=".into(), expected: "a file name" });
    assert_eq!(err("LOAD FILE NAME=\"\""), ParseError::BadValue { token: "NAME=\"\"".into(), expected: "a file name" });
    assert_eq!(err("LOAD FILE NAME=").to_string(), "NAME=: expected a file name");
    assert_eq!(err("LOAD FILE exa01.xml"), ParseError::Unexpected { command: "LOAD FILE", token: "exa01.xml".into(), expected: "NAME=" });
    assert_eq!(err("SAVE FILE FILE=x"), ParseError::Unexpected { command: "SAVE FILE", token: "FILE=x".into(), expected: "NAME=" });
    assert_eq!(err("SAVE FILE FILE=x").to_string(), "SAVE FILE: unexpected FILE=x: expected NAME=");
    assert_eq!(err("SAVE FILE NAME=a NAME=b"), ParseError::Duplicate { command: "SAVE FILE", key: "NAME", token: "NAME=b".into() });
    assert_eq!(err("SAVE FILE NAME=a name=b").to_string(), "SAVE FILE: name=b: NAME= given twice");
}

#[test]
fn migrate_guest_needs_every_argument_but_tgthost() {
    let full = ["HOSTNAME=vm1", "MODE=offline", "SRCHOST=host1", "TGTHOST=host2"];
    for (i, key) in ["HOSTNAME", "MODE", "SRCHOST"].into_iter().enumerate() {
        let mut args = full.to_vec();
        args.remove(i);
        let line = format!("MIGRATE GUEST {}", args.join(" "));
        assert_eq!(err(&line), ParseError::Missing { command: "MIGRATE GUEST", key }, "{line}");
    }
    assert_eq!(err("MIGRATE GUEST"), ParseError::Missing { command: "MIGRATE GUEST", key: "HOSTNAME" });
    assert_eq!(err("MIGRATE GUEST HOSTNAME=vm1 MODE=live TGTHOST=host2").to_string(), "MIGRATE GUEST needs SRCHOST=");
}

#[test]
fn a_whole_migration_may_leave_tgthost_to_the_planner() {
    for (line, mode) in [
        ("MIGRATE GUEST HOSTNAME=vm1 MODE=LIVE SRCHOST=host1", Mode::Live),
        ("migrate guest srchost=host1 mode=offline hostname=vm1", Mode::Offline),
        ("oedacli> MIGRATE GUEST HOSTNAME=vm1 MODE=OFFLINEFORCE SRCHOST=host1", Mode::OfflineForce),
    ] {
        let want = Migrate { guest: "vm1".into(), mode, source: "host1".into(), target: None, step: None };
        assert_eq!(parse(line), Ok(Command::MigrateGuest(want.clone())), "{line}");
        // Written back without TGTHOST=, and that parses to the same action.
        assert_eq!(want.to_string(), format!("MIGRATE GUEST HOSTNAME=vm1 MODE={} SRCHOST=host1", mode.wire_name()));
        assert_eq!(parse(&want.to_string()), Ok(Command::MigrateGuest(want.clone())));
        assert_eq!(want.target_host(), Err(TargetNotChosen));
        assert!(want.command(&vmove_model::Policy::default()).is_err());
    }
}

#[test]
fn a_single_step_needs_tgthost() {
    assert_eq!(
        err("MIGRATE GUEST HOSTNAME=vm1 MODE=offline SRCHOST=host1 WHERE STEPNAME=STOP_GUEST"),
        ParseError::StepNeedsTarget { token: "STEPNAME=STOP_GUEST".into() }
    );
    assert_eq!(
        err("MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1 WHERE STEPNAME=PRECHECK_LIVEMIGRATION").to_string(),
        "STEPNAME=PRECHECK_LIVEMIGRATION: a single step needs TGTHOST= (the planner chooses the target only for a whole migration)"
    );
    // A step the mode does not take is reported as such first.
    assert!(matches!(
        err("MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1 WHERE STEPNAME=STOP_GUEST"),
        ParseError::BadValue { .. }
    ));
}

#[test]
fn migrate_guest_bad_values() {
    let base = "MIGRATE GUEST HOSTNAME=vm1 SRCHOST=host1 TGTHOST=host2";
    assert_eq!(err(&format!("{base} MODE=fast")), ParseError::BadValue { token: "MODE=fast".into(), expected: MODES });
    assert_eq!(err(&format!("{base} MODE=fast")).to_string(), "MODE=fast: expected OFFLINE, OFFLINEFORCE or LIVE");
    // The bad MODE is named even when other arguments are missing.
    assert_eq!(err("MIGRATE GUEST mode=Hot"), ParseError::BadValue { token: "mode=Hot".into(), expected: MODES });
    assert_eq!(err(&format!("{base} MODE=")), ParseError::BadValue { token: "MODE=".into(), expected: MODES });
    assert_eq!(
        err("MIGRATE GUEST HOSTNAME= MODE=live SRCHOST=host1 TGTHOST=host2"),
        ParseError::BadValue { token: "HOSTNAME=".into(), expected: "a guest name" }
    );
    assert_eq!(
        err("MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST='' TGTHOST=host2"),
        ParseError::BadValue { token: "SRCHOST=''".into(), expected: "a host name" }
    );
    assert_eq!(
        err("MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1 TGTHOST="),
        ParseError::BadValue { token: "TGTHOST=".into(), expected: "a host name" }
    );
    assert_eq!(
        err("MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1 tgthost=host1"),
        ParseError::BadValue { token: "tgthost=host1".into(), expected: "a host other than SRCHOST" }
    );
    assert_eq!(
        err("MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1 TGTHOST=host1").to_string(),
        "TGTHOST=host1: expected a host other than SRCHOST"
    );
}

#[test]
fn migrate_guest_unexpected_and_duplicate_arguments() {
    assert_eq!(
        err("MIGRATE GUEST HOSTNAME=vm1 SPEED=9 MODE=live SRCHOST=host1 TGTHOST=host2"),
        ParseError::Unexpected { command: "MIGRATE GUEST", token: "SPEED=9".into(), expected: MIGRATE_ARGS }
    );
    assert_eq!(
        err("MIGRATE GUEST vm1 MODE=live"),
        ParseError::Unexpected { command: "MIGRATE GUEST", token: "vm1".into(), expected: MIGRATE_ARGS }
    );
    assert_eq!(
        err("MIGRATE GUEST vm1").to_string(),
        "MIGRATE GUEST: unexpected vm1: expected HOSTNAME=, MODE=, SRCHOST=, TGTHOST= or WHERE STEPNAME="
    );
    // STEPNAME= belongs after WHERE.
    assert_eq!(
        err("MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1 TGTHOST=host2 STEPNAME=MIGRATE_GUEST"),
        ParseError::Unexpected { command: "MIGRATE GUEST", token: "STEPNAME=MIGRATE_GUEST".into(), expected: MIGRATE_ARGS }
    );
    for (dup, key) in [("HOSTNAME=vm2", "HOSTNAME"), ("mode=live", "MODE"), ("SRCHOST=host3", "SRCHOST"), ("TGTHOST=host3", "TGTHOST")] {
        let line = format!("MIGRATE GUEST HOSTNAME=vm1 MODE=offline SRCHOST=host1 TGTHOST=host2 {dup}");
        assert_eq!(err(&line), ParseError::Duplicate { command: "MIGRATE GUEST", key, token: dup.into() }, "{line}");
    }
    assert_eq!(
        err("MIGRATE GUEST HOSTNAME=vm1 HOSTNAME=vm2").to_string(),
        "MIGRATE GUEST: HOSTNAME=vm2: HOSTNAME= given twice"
    );
}

#[test]
fn where_stepname_errors() {
    let base = "MIGRATE GUEST HOSTNAME=vm1 MODE=offline SRCHOST=host1 TGTHOST=host2";
    assert_eq!(err(&format!("{base} WHERE")), ParseError::Missing { command: "WHERE", key: "STEPNAME" });
    assert_eq!(err(&format!("{base} WHERE")).to_string(), "WHERE needs STEPNAME=");
    assert_eq!(
        err(&format!("{base} WHERE STEP=STOP_GUEST")),
        ParseError::Unexpected { command: "WHERE", token: "STEP=STOP_GUEST".into(), expected: "STEPNAME=" }
    );
    assert_eq!(err(&format!("{base} WHERE STEPNAME=TELEPORT")), ParseError::BadValue { token: "STEPNAME=TELEPORT".into(), expected: STEPS });
    assert!(err(&format!("{base} WHERE STEPNAME=TELEPORT")).to_string().starts_with("STEPNAME=TELEPORT: expected one of STOP_GUEST, "));
    assert_eq!(
        err(&format!("{base} WHERE STEPNAME=STOP_GUEST WHERE STEPNAME=STARTUP_GUEST")),
        ParseError::Duplicate { command: "MIGRATE GUEST", key: "STEPNAME", token: "STEPNAME=STARTUP_GUEST".into() }
    );
    // A step of another mode's plan.
    assert_eq!(
        err(&format!("{base} WHERE STEPNAME=PRECHECK_LIVEMIGRATION")),
        ParseError::BadValue { token: "STEPNAME=PRECHECK_LIVEMIGRATION".into(), expected: OFFLINE_STEPS }
    );
    assert_eq!(
        err("MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1 TGTHOST=host2 WHERE STEPNAME=stop_guest"),
        ParseError::BadValue { token: "STEPNAME=stop_guest".into(), expected: LIVE_STEPS }
    );
    assert!(err("MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1 TGTHOST=host2 WHERE STEPNAME=STARTUP_GUEST")
        .to_string()
        .starts_with("STEPNAME=STARTUP_GUEST: expected a step of the live plan: ATTACH_VOLUMES, "));
}

#[test]
fn unterminated_quotes() {
    assert_eq!(err(r#"LOAD FILE NAME="my lab.toml"#), ParseError::UnterminatedQuote { token: r#"NAME="my lab.toml"#.into() });
    assert_eq!(
        err("MIGRATE GUEST HOSTNAME='vm1 MODE=live"),
        ParseError::UnterminatedQuote { token: "HOSTNAME='vm1 MODE=live".into() }
    );
    assert_eq!(err(r#"SAVE FILE NAME="x"#).to_string(), r#"NAME="x: unterminated quote"#);
}

#[test]
fn every_error_is_one_line() {
    for line in [
        "MIGRATE GEST",
        "SAVE ACTION x",
        "SAVE FILE",
        "LOAD FILE NAME=",
        "MIGRATE GUEST HOSTNAME=vm1 MODE=fast",
        "MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=a TGTHOST=b WHERE STEPNAME=STOP_GUEST",
        "MIGRATE GUEST HOSTNAME=vm1 MODE=offline SRCHOST=a TGTHOST=b WHERE STEPNAME=x",
        "LOAD FILE NAME=\"x",
    ] {
        assert!(!err(line).to_string().contains('\n'), "{line}");
    }
}

/// Found by the fuzzer's round trip (fuzz/corpus/oedacli/crash-both-quotes.oeda): a value
/// with both kinds of quotes was written as `'a"b'c'`, which does not parse back.
#[test]
fn values_with_both_kinds_of_quotes_are_written_back() {
    let line = r#"MIGRATE GUEST HOSTNAME='a"b'"'c" MODE=live SRCHOST=a TGTHOST=b"#;
    let Ok(Command::MigrateGuest(m)) = parse(line) else { panic!("{line}") };
    assert_eq!(m.guest, r#"a"b'c"#);
    assert_eq!(m.to_string(), r#"MIGRATE GUEST HOSTNAME="a"'"'"b'c" MODE=live SRCHOST=a TGTHOST=b"#);
    assert_eq!(parse(&m.to_string()), Ok(Command::MigrateGuest(m)));
    for v in [r#"""#, r#"'"#, r#""'"#, r#"'""'"#, r#"x""y''z"#, r#"" '"#, "plain", "with space", ""] {
        let q = quote(v);
        let line = format!("SAVE FILE NAME={q}");
        let want = if v.is_empty() { Err(ParseError::BadValue { token: format!("NAME={q}"), expected: "a file name" }) } else { Ok(Command::SaveFile { name: v.into() }) };
        assert_eq!(parse(&line), want, "{v:?} written as {q}");
    }
}
