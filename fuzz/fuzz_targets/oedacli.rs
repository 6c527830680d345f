//! The oedacli lexer and parser, line by line as the script driver feeds it. Errors are
//! fine; they must be one line. A `MIGRATE GUEST` action, written back as oedacli writes it
//! (`LIST ACTIONS`), must parse to the same action.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmove_cli::oedacli_parse::{parse, Command};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for line in text.lines() {
        match parse(line) {
            Ok(Command::MigrateGuest(m)) => {
                let written = m.to_string();
                match parse(&written) {
                    Ok(again) => assert_eq!(again, Command::MigrateGuest(m), "{written}"),
                    Err(e) => panic!("{written:?} does not parse back: {e}"),
                }
            }
            Ok(_) => {}
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "error on more than one line: {msg:?}");
            }
        }
    }
});
