//! One line from QEMU, classified: greeting, event, reply or something else. Pure, never
//! panics; the connection's reader uses it for every line.

use serde_json::Value;

use crate::error::QmpError;
use crate::types::{Event, Greeting};

/// What one line from QEMU is.
#[derive(Debug)]
pub enum Message {
    /// The server greeting (`{"QMP": ...}`).
    Greeting(Greeting),
    /// An asynchronous event (`{"event": ...}`).
    Event(Event),
    /// A command's answer (`{"return": ...}` or `{"error": ...}`).
    Reply {
        /// The command id it answers, if it carries a numeric one.
        id: Option<u64>,
        /// The `return` value, or QEMU's error.
        result: Result<Value, QmpError>,
    },
    /// Valid JSON that is none of these (ignored by the client).
    Unknown(Value),
}

/// Classifies one line (surrounding whitespace ignored). `Ok(None)` for a blank line,
/// an error for a line that is not JSON.
pub fn parse_line(raw: &[u8]) -> Result<Option<Message>, serde_json::Error> {
    let line = raw.trim_ascii();
    if line.is_empty() {
        return Ok(None);
    }
    let msg: Value = serde_json::from_slice(line)?;
    Ok(Some(classify(msg)))
}

/// Classifies a parsed message. Events come first: an event line is never a reply.
pub fn classify(msg: Value) -> Message {
    if let Some(event) = Event::from_value(&msg) {
        return Message::Event(event);
    }
    if msg.get("return").is_some() || msg.get("error").is_some() {
        let id = msg.get("id").and_then(Value::as_u64);
        return Message::Reply { id, result: reply_result(msg) };
    }
    match Greeting::from_value(&msg) {
        Some(g) => Message::Greeting(g),
        None => Message::Unknown(msg),
    }
}

/// Turns a `{"return":..}` / `{"error":..}` message into a result.
pub(crate) fn reply_result(mut msg: Value) -> Result<Value, QmpError> {
    if let Some(err) = msg.get("error") {
        let field = |name: &str| match err.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        return Err(QmpError::Qemu {
            class: field("class"),
            desc: field("desc"),
        });
    }
    Ok(msg
        .get_mut("return")
        .map(Value::take)
        .unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_qemu_10() {
        let g = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}"#;
        match parse_line(g.as_bytes()) {
            Ok(Some(Message::Greeting(g))) => assert_eq!(g.version.triple(), (10, 0, 2)),
            other => panic!("{other:?}"),
        }
        let e = br#"{"timestamp": {"seconds": 1764547200, "microseconds": 12}, "event": "STOP"}"#;
        assert!(matches!(parse_line(e), Ok(Some(Message::Event(ev))) if ev.is("STOP")));
        match parse_line(br#"{"return": {"status": "running", "running": true}, "id": 7}"#) {
            Ok(Some(Message::Reply { id: Some(7), result: Ok(v) })) => assert_eq!(v["status"], "running"),
            other => panic!("{other:?}"),
        }
        match parse_line(br#"{"id": 8, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#) {
            Ok(Some(Message::Reply { id: Some(8), result: Err(e) })) => assert!(e.is_qemu_class("CommandNotFound")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_line(b"  \r\n"), Ok(None)));
        assert!(parse_line(b"{\"return\"").is_err());
        assert!(matches!(parse_line(b"[1,2]"), Ok(Some(Message::Unknown(_)))));
        assert!(matches!(parse_line(br#"{"return": {}, "id": "x"}"#), Ok(Some(Message::Reply { id: None, .. }))));
    }
}
