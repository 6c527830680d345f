//! The operator CLI.
fn main() -> std::process::ExitCode {
    vmove_cli::main()
}
