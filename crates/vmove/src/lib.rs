//! vmove binaries; see the crates under crates/ for the code.
