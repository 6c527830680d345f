//! The escape key: Ctrl-] (0x1d, like `virsh console` and telnet) ends the session when
//! stdin is a terminal.

/// Ctrl-].
pub const ESCAPE: u8 = 0x1d;

/// What to do with a chunk of keystrokes: the bytes to send to the guest (those before the
/// escape), and whether the escape was typed (the rest of the chunk is dropped).
pub fn split_escape(keys: &[u8]) -> (&[u8], bool) {
    match keys.iter().position(|&b| b == ESCAPE) {
        Some(i) => (&keys[..i], true),
        None => (keys, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_anywhere_in_a_chunk() {
        assert_eq!(split_escape(b"ls -l\r"), (&b"ls -l\r"[..], false));
        assert_eq!(split_escape(b"\x1d"), (&b""[..], true));
        assert_eq!(split_escape(b"abc\x1ddef"), (&b"abc"[..], true), "bytes after the escape are not sent");
        assert_eq!(split_escape(b""), (&b""[..], false));
        // Other control keys go to the guest: Ctrl-C, Ctrl-D, Esc (arrow keys), Ctrl-\.
        assert_eq!(split_escape(b"\x03\x04\x1b[A\x1c"), (&b"\x03\x04\x1b[A\x1c"[..], false));
    }
}
