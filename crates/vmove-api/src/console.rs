//! `guest_console`: the wire types of a console session and its client side.
//!
//! After the request line and its [`crate::Reply`] (whose result is a [`ConsoleAttached`]),
//! the agent sends [`ConsoleLine`]s, one JSON object per line: console output as it
//! reaches the guest's `serial.log` on that host, each chunk with its byte offset in that
//! file, and finally one `end` line saying why the session ended ([`ConsoleEnd`]). The
//! client sends raw bytes (keystrokes) for the guest's serial port. Either side ends the
//! session by closing the connection.
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};

use crate::client::Conn;
use crate::{AgentClient, ClientError, Request};

/// Longest console line accepted by the client (a data line carries at most
/// [`CONSOLE_CHUNK`] bytes, base64-encoded).
const MAX_LINE: u64 = 64 << 10;

/// Most console bytes in one [`ConsoleLine::Data`].
pub const CONSOLE_CHUNK: usize = 8 << 10;

/// The agent sends a [`ConsoleLine::Beat`] after this long without output.
pub const CONSOLE_BEAT: std::time::Duration = std::time::Duration::from_secs(10);

/// A client that hears nothing (not even a beat) for this long takes the connection as
/// lost (a host that died without closing it).
pub const CONSOLE_SILENCE: std::time::Duration = std::time::Duration::from_secs(35);

/// What of the console log the agent sends before live output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleReplay {
    /// Nothing: output from now on (`"live"`).
    #[default]
    Live,
    /// The last N bytes of the log (`{"tail":N}`, at most [`crate::limits::CONSOLE_REPLAY_BYTES`]).
    Tail(u64),
    /// Everything from this byte offset of this host's `serial.log` on (`{"from":N}`); an
    /// offset past the end means the end. A reattaching client asks for what it has not seen.
    From(u64),
}

/// The reply to `guest_console`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleAttached {
    /// The host serving the session.
    pub host: String,
    /// The guest.
    pub guest: String,
    /// Offset in the host's `serial.log` of the first byte that will be sent.
    pub offset: u64,
    /// Whether keystrokes reach the guest (`false`: another session holds the guest's
    /// input, or its QEMU has no console socket; output is still sent).
    pub writable: bool,
}

/// Why the agent ended a console session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleEnd {
    /// The guest's QEMU here ended after a completed outgoing live migration: the guest
    /// runs on another host now.
    Moved,
    /// The guest was stopped (shut down, stopped or destroyed by an operator).
    Stopped,
    /// The guest's QEMU ended without being asked to.
    Crashed,
    /// The guest's definition left this host without a completed migration seen here (an
    /// offline move, an undefine).
    Gone,
}

/// One line from the agent after the reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConsoleLine {
    /// Console output.
    Data {
        /// Offset of the first byte in the host's `serial.log`.
        offset: u64,
        /// The bytes, base64 (standard alphabet, padded).
        data: String,
    },
    /// Nothing to send for a while: the session is alive.
    Beat,
    /// The last line: the session is over.
    End {
        /// Offset just past the last byte sent (every byte QEMU wrote here was sent).
        offset: u64,
        /// Why.
        reason: ConsoleEnd,
    },
}

impl ConsoleLine {
    /// A data line for `bytes` at `offset`.
    pub fn data(offset: u64, bytes: &[u8]) -> ConsoleLine {
        ConsoleLine::Data { offset, data: base64::engine::general_purpose::STANDARD.encode(bytes) }
    }

    /// The bytes of a data line (`None`: not a data line or not base64).
    pub fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            ConsoleLine::Data { data, .. } => base64::engine::general_purpose::STANDARD.decode(data).ok(),
            ConsoleLine::End { .. } | ConsoleLine::Beat => None,
        }
    }
}

/// The agent's half of a session as the client reads it.
pub struct ConsoleReader {
    host: String,
    lines: BufReader<ReadHalf<Conn>>,
}

/// Where the client writes keystrokes.
pub struct ConsoleWriter {
    host: String,
    w: WriteHalf<Conn>,
}

/// What the client got from one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleRead {
    /// Output at `offset`.
    Data {
        /// Offset of `bytes[0]` in the host's `serial.log`.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The agent ended the session.
    End {
        /// Offset just past the last byte.
        offset: u64,
        /// Why.
        reason: ConsoleEnd,
    },
    /// The connection closed without an `end` line (the agent restarted, the network).
    Lost,
}

impl ConsoleReader {
    /// The next thing the agent says (beats are taken in silently; [`CONSOLE_SILENCE`]
    /// without a line is a lost connection).
    pub async fn next(&mut self) -> Result<ConsoleRead, ClientError> {
        loop {
            let mut buf = String::new();
            let n = match tokio::time::timeout(CONSOLE_SILENCE, (&mut self.lines).take(MAX_LINE).read_line(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) | Err(_) => return Ok(ConsoleRead::Lost),
            };
            if n == 0 || !buf.ends_with('\n') {
                return Ok(ConsoleRead::Lost);
            }
            let line: ConsoleLine =
                serde_json::from_str(buf.trim_end()).map_err(|source| ClientError::Malformed { host: self.host.clone(), source })?;
            match line {
                ConsoleLine::Beat => continue,
                ConsoleLine::End { offset, reason } => return Ok(ConsoleRead::End { offset, reason }),
                ConsoleLine::Data { offset, .. } => {
                    let bytes = line.bytes().ok_or_else(|| ClientError::Remote {
                        host: self.host.clone(),
                        code: crate::ErrorCode::Internal,
                        message: "console data is not base64".into(),
                    })?;
                    return Ok(ConsoleRead::Data { offset, bytes });
                }
            }
        }
    }
}

impl ConsoleWriter {
    /// Sends keystrokes.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let io = |source| ClientError::Io { host: self.host.clone(), addr: ([0, 0, 0, 0], 0).into(), source };
        self.w.write_all(bytes).await.map_err(io)?;
        self.w.flush().await.map_err(io)
    }

    /// Closes the client's side (the agent ends the session).
    pub async fn close(mut self) {
        let _ = self.w.shutdown().await;
    }
}

impl AgentClient {
    /// Opens a console session: the agent's answer, then the two halves of the stream.
    pub async fn console(
        &self,
        name: &str,
        replay: ConsoleReplay,
    ) -> Result<(ConsoleAttached, ConsoleReader, ConsoleWriter), ClientError> {
        let req = Request::GuestConsole { name: name.to_string(), replay };
        let host = self.host().to_string();
        let mut line = serde_json::to_vec(&req).map_err(|source| ClientError::Malformed { host: host.clone(), source })?;
        line.push(b'\n');
        let opened = async {
            let mut c = self.connect().await?;
            c.get_mut().write_all(&line).await.map_err(|e| self.io(e))?;
            c.get_mut().flush().await.map_err(|e| self.io(e))?;
            let mut buf = String::new();
            let n = (&mut c).take(MAX_LINE).read_line(&mut buf).await.map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(ClientError::Closed { host: host.clone(), addr: self.addr() });
            }
            let reply: crate::Reply =
                serde_json::from_str(buf.trim_end()).map_err(|source| ClientError::Malformed { host: host.clone(), source })?;
            let v = self.result(reply)?;
            let a: ConsoleAttached = serde_json::from_value(v)
                .map_err(|source| ClientError::Unexpected { host: host.clone(), op: "guest_console", source })?;
            Ok((a, c))
        };
        let (a, c) = tokio::time::timeout(self.timeout(), opened).await.map_err(|_| self.timed_out())??;
        let (r, w) = tokio::io::split(c);
        Ok((a, ConsoleReader { host: host.clone(), lines: BufReader::new(r) }, ConsoleWriter { host, w }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let d = ConsoleLine::data(7, b"VERIFY OK 3\r\n\x1b[0m");
        let s = serde_json::to_string(&d).unwrap();
        assert!(s.starts_with(r#"{"t":"data","offset":7,"data":""#), "{s}");
        let back: ConsoleLine = serde_json::from_str(&s).unwrap();
        assert_eq!(back.bytes().unwrap(), b"VERIFY OK 3\r\n\x1b[0m");
        let e: ConsoleLine = serde_json::from_str(r#"{"t":"end","offset":9,"reason":"moved"}"#).unwrap();
        assert_eq!(e, ConsoleLine::End { offset: 9, reason: ConsoleEnd::Moved });
        assert!(serde_json::from_str::<ConsoleLine>(r#"{"t":"end","offset":9,"reason":"elsewhere"}"#).is_err());
        assert_eq!(serde_json::to_string(&ConsoleLine::Beat).unwrap(), r#"{"t":"beat"}"#);
        assert_eq!(ConsoleLine::Beat.bytes(), None);
        assert!(serde_json::from_str::<ConsoleLine>(r#"{"t":"data","offset":-1,"data":""}"#).is_err());
        let bad = ConsoleLine::Data { offset: 0, data: "not base64!".into() };
        assert_eq!(bad.bytes(), None);
    }

    #[test]
    fn replay_shapes() {
        assert_eq!(serde_json::to_string(&ConsoleReplay::Live).unwrap(), r#""live""#);
        assert_eq!(serde_json::to_string(&ConsoleReplay::Tail(5)).unwrap(), r#"{"tail":5}"#);
        assert_eq!(serde_json::from_str::<ConsoleReplay>(r#"{"from":12}"#).unwrap(), ConsoleReplay::From(12));
    }
}
