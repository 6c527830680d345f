//! The agent's error: a code that decides ([`ErrorCode`], sent on the wire) and a one-line
//! message that informs, with the cause kept as its source.
use vmove_api::{one_line, ClientError, ErrorCode};

/// An error of the agent.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// One line for people.
    pub message: String,
}

/// The agent's result.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> AgentError {
        AgentError { code, message: message.into() }
    }

    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> AgentError {
        AgentError::new(ErrorCode::NotFound, message)
    }

    /// `wrong_state`.
    pub fn wrong_state(message: impl Into<String>) -> AgentError {
        AgentError::new(ErrorCode::WrongState, message)
    }

    /// `busy`.
    pub fn busy(message: impl Into<String>) -> AgentError {
        AgentError::new(ErrorCode::Busy, message)
    }

    /// `internal`.
    pub fn internal(message: impl Into<String>) -> AgentError {
        AgentError::new(ErrorCode::Internal, message)
    }

    /// `host` (a host operation failed), from any error.
    pub fn host(e: impl std::fmt::Display) -> AgentError {
        AgentError::new(ErrorCode::Host, e.to_string())
    }

    /// Whether a peer could not be reached.
    pub fn is_unreachable(&self) -> bool {
        self.code == ErrorCode::Unreachable
    }

    /// The same error with `what: ` in front of its message.
    pub fn context(self, what: impl std::fmt::Display) -> AgentError {
        AgentError { code: self.code, message: format!("{what}: {}", self.message) }
    }
}

/// `.ctx("what")` on results: prefixes the message, keeps the code.
pub trait ResultExt<T> {
    /// Prefixes the error's message with `what`.
    fn ctx(self, what: impl std::fmt::Display) -> Result<T>;
    /// Prefixes the error's message with a lazily built `what`.
    fn with_ctx<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<AgentError>> ResultExt<T> for std::result::Result<T, E> {
    fn ctx(self, what: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(what))
    }
    fn with_ctx<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.into().context(what()))
    }
}

impl From<ClientError> for AgentError {
    fn from(e: ClientError) -> AgentError {
        AgentError::new(e.code(), one_line(&e))
    }
}

impl From<vmove_store::StoreError> for AgentError {
    fn from(e: vmove_store::StoreError) -> AgentError {
        let code = match &e {
            vmove_store::StoreError::Conflict { .. } => ErrorCode::Busy,
            vmove_store::StoreError::InvalidKey { .. } => ErrorCode::InvalidRequest,
            _ => ErrorCode::StateWrite,
        };
        AgentError::new(code, one_line(&e))
    }
}

impl From<vmove_qmp::QmpError> for AgentError {
    fn from(e: vmove_qmp::QmpError) -> AgentError {
        AgentError::new(ErrorCode::Qemu, one_line(&e))
    }
}

impl From<std::io::Error> for AgentError {
    fn from(e: std::io::Error) -> AgentError {
        AgentError::new(ErrorCode::Host, e.to_string())
    }
}

impl From<serde_json::Error> for AgentError {
    fn from(e: serde_json::Error) -> AgentError {
        AgentError::new(ErrorCode::Internal, e.to_string())
    }
}

/// Host operations that failed: code `host`, the message with its causes.
macro_rules! host_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for AgentError {
            fn from(e: $t) -> AgentError {
                AgentError::new(ErrorCode::Host, one_line(&e))
            }
        }
    )*};
}
host_errors!(
    vmove_host::qemu::SpawnError,
    vmove_host::net::NetlinkError,
    vmove_host::tap::TapError,
    vmove_host::qemu_probe::ProbeError,
    vmove_api::tls::TlsError,
    vmove_model::ModelError
);

impl From<AgentError> for vmove_api::WireError {
    fn from(e: AgentError) -> vmove_api::WireError {
        vmove_api::WireError { code: e.code, message: e.message.replace('\n', " ") }
    }
}

/// Returns early with an error of `code`.
macro_rules! fail {
    ($code:ident, $($arg:tt)*) => {
        return Err($crate::error::AgentError::new(vmove_api::ErrorCode::$code, format!($($arg)*)))
    };
}
pub(crate) use fail;
