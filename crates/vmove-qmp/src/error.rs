//! Error type of the QMP client.

/// Everything that can go wrong talking QMP.
///
/// Messages are kept short: callers usually wrap them with their own
/// context ("migrating vm X: ...").
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be opened, read or written.
    #[error("qmp i/o: {0}")]
    Io(#[from] std::io::Error),

    /// The connection is gone (QEMU exited or closed the monitor) before
    /// the command got its reply.
    #[error("qmp connection closed")]
    Closed,

    /// No reply within the command's timeout. The pending entry has been
    /// removed; a late reply is logged and dropped.
    #[error("qmp command {cmd} timed out")]
    Timeout {
        /// The QMP command name (or "connect" / "greeting").
        cmd: String,
    },

    /// The peer does not speak QMP as expected (bad greeting, ...).
    #[error("qmp protocol: {0}")]
    Protocol(String),

    /// QEMU answered the command with an error object.
    #[error("qemu {class}: {desc}")]
    Qemu {
        /// QAPI error class, e.g. `GenericError`, `CommandNotFound`.
        class: String,
        /// Human readable description from QEMU.
        desc: String,
    },

    /// The reply arrived but could not be decoded into the typed result.
    #[error("qmp reply to {cmd} did not decode: {source}")]
    Decode {
        /// The QMP command name.
        cmd: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

impl QmpError {
    /// True for [`QmpError::Qemu`] with the given error class.
    pub fn is_qemu_class(&self, wanted: &str) -> bool {
        matches!(self, QmpError::Qemu { class, .. } if class == wanted)
    }

    /// True when the connection is gone ([`QmpError::Closed`]).
    pub fn is_closed(&self) -> bool {
        matches!(self, QmpError::Closed)
    }
}
