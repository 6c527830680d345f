//! Raw mode for an interactive console: keystrokes go to the guest as typed (Ctrl-C
//! included), and the terminal's settings come back when the guard drops (normal end,
//! error, or a panic that unwinds).
use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result};
use nix::sys::termios::{self, SetArg, Termios};

/// The terminal in raw mode while this lives.
pub struct RawMode {
    saved: Termios,
}

fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process (nothing in vmove closes it).
    unsafe { BorrowedFd::borrow_raw(0) }
}

impl RawMode {
    /// Puts stdin's terminal in raw mode.
    pub fn enter() -> Result<RawMode> {
        let fd = stdin_fd();
        let saved = termios::tcgetattr(fd.as_fd()).context("read the terminal's settings")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd.as_fd(), SetArg::TCSAFLUSH, &raw).context("put the terminal in raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(stdin_fd(), SetArg::TCSAFLUSH, &self.saved);
    }
}
